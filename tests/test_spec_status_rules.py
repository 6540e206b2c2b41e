"""SPEC §1/§3/§3b: "Only ACTIVE people may bind, pay or receive", for each status a person can leave
ACTIVE for — SUSPENDED, TERMINATED, DECEASED (RecordDeath) — on the real registries of 河北 (13) and
甘肃 (62): as a patient (PreSettle, Settle, Diagnose), as a helper or member of a new binding, as
the creator of a family account, as a contributor (划拨) and as an invitee accepting. Each refusal
says why and writes nothing; a SUSPENDED helper's binding stays but pays nothing."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import registry_pb2 as pb
from support import RESIDENT, balance, bind, credit, enroll, reason, rid, settle, snapshot
from test_family import GS, accept, create, huabo, invite

FP = grpc.StatusCode.FAILED_PRECONDITION
STATUSES = ["SUSPENDED", "TERMINATED", "DECEASED"]
HB = {"region": "130100", "division": "130102"}


def leave_active(stub: Any, pid: str, status: str, place: dict[str, str]) -> None:
    if status == "DECEASED":
        heir = enroll(stub, birth="19700101", **place)
        stub.RecordDeath(pb.RecordDeathRequest(request_id=rid("death"), id_number=pid, heir_id_number=heir,
                                               heir_name="李四", date_of_death="20261101"))
    else:
        stub.UpdatePersonStatus(pb.UpdatePersonStatusRequest(
            request_id=rid("st"), id_number=pid, status=getattr(cpb, f"PERSON_STATUS_{status}")))


def refused(rdb: Any, call: Any, why: str) -> None:
    before = snapshot(rdb)
    with pytest.raises(grpc.RpcError) as ei:
        call()
    assert (ei.value.code(), reason(ei.value)) == (FP, why), ei.value.details()
    assert snapshot(rdb) == before, f"refused {why} wrote to Redis"


@pytest.mark.parametrize("status", STATUSES)
def test_a_person_not_active_can_neither_be_paid_for_nor_bind_in_hebei(start_registry, rdb, status):
    stub = start_registry("13").stub
    person, other = enroll(stub), enroll(stub, birth="19850101")
    credit(stub, person, 5_000)
    credit(stub, other, 5_000)
    leave_active(stub, person, status, HB)
    req = dict(patient_id_number=person, amount_fen=100, use_account=True, category=cpb.CATEGORY_OUTPATIENT,
               institution_code="H13010100001", institution_admdvs="130100")
    refused(rdb, lambda: stub.PreSettle(pb.PreSettleRequest(**req)), "MEMBER_NOT_INSURED")
    refused(rdb, lambda: stub.Settle(pb.SettleRequest(request_id=rid("s"), **req)), "MEMBER_NOT_INSURED")
    refused(rdb, lambda: stub.Settle(pb.SettleRequest(request_id=rid("s"), **{**req, "use_account": False})),
            "MEMBER_NOT_INSURED")
    refused(rdb, lambda: bind(stub, person, other), "HELPER_NOT_ACTIVE")
    refused(rdb, lambda: bind(stub, other, person), "MEMBER_NOT_INSURED")
    codes = [f.code for f in stub.Diagnose(pb.DiagnoseRequest(member_id_number=person,
                                                              helper_id_number=other)).findings]
    assert "MEMBER_NOT_INSURED" in codes
    d = stub.Diagnose(pb.DiagnoseRequest(member_id_number=other, helper_id_number=person))
    assert not d.would_pay and "HELPER_NOT_ACTIVE" in [f.code for f in d.findings]


def test_a_suspended_helper_keeps_the_binding_and_pays_again_once_active(start_registry, rdb):
    stub = start_registry("13").stub
    helper, member = enroll(stub), enroll(stub, itype=RESIDENT, birth="20150101")
    credit(stub, helper, 1_000)
    bind(stub, helper, member)
    stub.UpdatePersonStatus(pb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=helper,
                                                         status=cpb.PERSON_STATUS_SUSPENDED))
    res = settle(stub, member, 1_000)
    assert (res.mulaid_pay_fen, res.cash_pay_fen, res.helper_reason) == (0, 1_000, "NO_ACTIVE_HELPER")
    assert balance(stub, helper) == 1_000
    stub.UpdatePersonStatus(pb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=helper,
                                                         status=cpb.PERSON_STATUS_ACTIVE))
    res = settle(stub, member, 1_000)
    assert (res.mulaid_pay_fen, res.cash_pay_fen, res.helper_reason) == (1_000, 0, "")


@pytest.mark.parametrize("status", STATUSES)
def test_a_person_not_active_can_neither_create_fund_nor_join_a_family_account(start_registry, rdb, status):
    stub = start_registry("62").stub
    creator, other = enroll(stub, **GS), enroll(stub, birth="19850101", **GS)
    credit(stub, creator, 5_000)
    credit(stub, other, 5_000)
    fid = create(stub, other).family_id
    invite(stub, fid, other, creator)  # an adult: INVITED until they accept with face verification
    leave_active(stub, creator, status, GS)
    refused(rdb, lambda: create(stub, creator), "HELPER_NOT_ACTIVE")
    if status == "SUSPENDED":  # a TERMINATED or dead person's invitation ended with them
        refused(rdb, lambda: accept(stub, fid, creator), "MEMBER_NOT_INSURED")
    req = dict(patient_id_number=creator, amount_fen=100, use_account=True, category=cpb.CATEGORY_OUTPATIENT,
               institution_code="H62010000001", institution_admdvs="620100")
    refused(rdb, lambda: stub.PreSettle(pb.PreSettleRequest(**req)), "MEMBER_NOT_INSURED")
    refused(rdb, lambda: stub.Settle(pb.SettleRequest(request_id=rid("s"), **req)), "MEMBER_NOT_INSURED")


def test_a_suspended_creator_may_not_fund_but_their_share_still_pays(start_registry, rdb):
    stub = start_registry("62").stub
    creator, kid = enroll(stub, **GS), enroll(stub, itype=RESIDENT, birth="20150101", **GS)
    credit(stub, creator, 5_000)
    fid = create(stub, creator, initial_transfer_fen=1_000).family_id
    invite(stub, fid, creator, kid)
    stub.UpdatePersonStatus(pb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=creator,
                                                         status=cpb.PERSON_STATUS_SUSPENDED))
    refused(rdb, lambda: huabo(stub, fid, creator, 1), "HELPER_NOT_ACTIVE")
    res = settle(stub, kid, 1_000)
    assert (res.mulaid_pay_fen, res.cash_pay_fen, res.helper_reason) == (1_000, 0, "")


def test_beijing_caps_a_helper_at_eight_members_a_suspended_one_keeps_the_seat(start_registry, rdb):
    """北京's policy file: max_members = 8. A SUSPENDED member's binding stays and keeps its seat; a
    TERMINATED member's binding ends and frees it (SPEC §3)."""
    stub = start_registry("11").stub
    place = {"region": "110000", "division": "110105"}
    helper = enroll(stub, **place)
    members = [enroll(stub, itype=RESIDENT, birth="20150101", **place) for _ in range(9)]
    for m in members[:8]:
        bind(stub, helper, m)
    refused(rdb, lambda: bind(stub, helper, members[8]), "MEMBER_LIMIT_REACHED")
    stub.UpdatePersonStatus(pb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=members[0],
                                                         status=cpb.PERSON_STATUS_SUSPENDED))
    refused(rdb, lambda: bind(stub, helper, members[8]), "MEMBER_LIMIT_REACHED")
    stub.UpdatePersonStatus(pb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=members[1],
                                                         status=cpb.PERSON_STATUS_TERMINATED))
    assert bind(stub, helper, members[8]).binding.active
