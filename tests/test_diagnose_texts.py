"""What Diagnose says to a front desk (SPEC §4 diagnosis) fits the person's state: a helper who died
is not told to restore their insurance. Real 北京 registry over gRPC, real Redis."""

from __future__ import annotations

from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import registry_pb2 as pb
from support import RESIDENT, bind, credit, enroll, rid


def test_a_dead_helper_is_said_to_have_died_not_asked_to_restore_insurance(start_registry, rdb):
    stub = start_registry("11").stub
    place = dict(region="110000", division="110101")
    member = enroll(stub, itype=RESIDENT, birth="19500101", **place)
    helper, heir = enroll(stub, **place), enroll(stub, **place)
    credit(stub, helper, 3_000)
    bind(stub, helper, member)
    stub.RecordDeath(pb.RecordDeathRequest(request_id=rid("death"), id_number=helper, heir_id_number=heir,
                                           heir_name="李四", date_of_death="20261120"))
    d = stub.Diagnose(pb.DiagnoseRequest(member_id_number=member, helper_id_number=helper))
    assert not d.would_pay
    found = {f.code: f.message for f in d.findings}
    assert "已死亡" in found["HELPER_NOT_ACTIVE"] and "恢复" not in found["HELPER_NOT_ACTIVE"], found
    other = enroll(stub, **place)
    stub.UpdatePersonStatus(pb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=other,
                                                         status=cpb.PERSON_STATUS_SUSPENDED))
    d = stub.Diagnose(pb.DiagnoseRequest(member_id_number=member, helper_id_number=other))
    assert "恢复正常参保" in {f.code: f.message for f in d.findings}["HELPER_NOT_ACTIVE"]


def test_a_helper_who_moved_province_is_pointed_to_the_wallet_not_asked_to_restore_insurance(start_registry, rdb):
    """SPEC §5b: a helper who moved to another province is TERMINATED here with that province noted, and
    every binding ended; in-province 共济 cannot come back by restoring the insurance here, only the
    医保钱包's cross-province transfer can serve (§5). Diagnose says so."""
    stub = start_registry("11").stub
    place = dict(region="110000", division="110101")
    member = enroll(stub, itype=RESIDENT, birth="19500101", **place)
    helper = enroll(stub, **place)
    credit(stub, helper, 3_000)
    bind(stub, helper, member)
    stub.UpdatePersonStatus(pb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=helper,
                                                         status=cpb.PERSON_STATUS_TERMINATED, moved_to_province="13"))
    d = stub.Diagnose(pb.DiagnoseRequest(member_id_number=member, helper_id_number=helper))
    assert not d.would_pay
    told = {f.code: f.message for f in d.findings}["HELPER_NOT_ACTIVE"]
    assert "河北" in told and "医保钱包" in told and "恢复" not in told, told
