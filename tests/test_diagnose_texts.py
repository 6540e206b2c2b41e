"""What Diagnose says to a front desk (SPEC §4 diagnosis) fits the person's state: a helper who died
is not told to restore their insurance. Real 北京 registry over gRPC, real Redis."""

from __future__ import annotations

import dataclasses
from typing import Any

from conftest import policy_for
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import registry_pb2 as pb
from support import RESIDENT, bind, credit, enroll, new_id, rid


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


def said(stub: Any, member: str, helper: str, **kw: Any) -> dict[str, str]:
    d = stub.Diagnose(pb.DiagnoseRequest(member_id_number=member, helper_id_number=helper, **kw))
    return {f.code: f.message for f in d.findings}


def complete(findings: dict[str, str], pooled: bool) -> None:
    """Each finding says what is wrong, what it means for this visit's bill (本次) and a next step
    (请… / 可… after the ';'), in the words of the province's model: a pooled province's 共济 is the
    family account, not a bound helper's personal account."""
    for code, message in findings.items():
        head, _, step = message.partition(";")
        assert "本次" in head and step and ("请" in step or "可" in step), (code, message)
        if pooled:
            assert "绑定" not in message and "共济人账户" not in message, (code, message)
        else:
            assert "家庭共济账户" not in message, (code, message)


def test_every_binding_finding_says_what_it_means_for_the_bill_and_what_to_do(start_registry, rdb):
    """河北 and 北京 (BIND_AND_DEDUCT): each cause set up for real, as a front desk meets it."""
    for province, place in (("13", dict(region="130100", division="130102")),
                            ("11", dict(region="110000", division="110101"))):
        stub = start_registry(province).stub
        kid = enroll(stub, itype=RESIDENT, birth="20150101", **place)
        helper, empty, resident = enroll(stub, **place), enroll(stub, **place), enroll(stub, itype=RESIDENT, **place)
        credit(stub, helper, 3_000)
        complete(said(stub, kid, new_id(place["division"])), pooled=False)  # not insured here, not bound
        complete(said(stub, kid, resident), pooled=False)
        bind(stub, empty, kid)
        complete(said(stub, kid, empty), pooled=False)  # 原因三
        complete(said(stub, kid, helper, category=cpb.CATEGORY_FITNESS), pooled=False)
        complete(said(stub, kid, helper, member_insured_admdvs="620100"), pooled=False)  # 原因四
        bind(stub, helper, kid)
        for status in (cpb.PERSON_STATUS_SUSPENDED, cpb.PERSON_STATUS_TERMINATED):
            other = enroll(stub, **place)
            bind(stub, other, kid)
            stub.UpdatePersonStatus(pb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=other, status=status))
            complete(said(stub, kid, other), pooled=False)
        stub.UpdatePersonStatus(pb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=kid,
                                                             status=cpb.PERSON_STATUS_SUSPENDED))
        complete(said(stub, kid, helper), pooled=False)  # 原因一
    apart = dataclasses.replace(policy_for("13"), cross_region_allowed=False)
    stub = start_registry("13", policy=apart).stub
    kid = enroll(stub, itype=RESIDENT, birth="20150101", region="130200", division="130202")
    found = said(stub, kid, enroll(stub))
    assert "DIFFERENT_POOLING_REGION" in found and "原因四" in found["DIFFERENT_POOLING_REGION"], found
    complete(found, pooled=False)


def test_every_family_account_finding_says_what_it_means_for_the_bill_and_what_to_do(start_registry, rdb):
    """甘肃 and 福建 (POOLED_ACCOUNT): no account, not invited, invited, empty, dissolved, 临时成员."""
    from test_family import FJ, GS, create, invite
    for province, place in (("62", GS), ("35", FJ)):
        stub = start_registry(province).stub
        creator = enroll(stub, **place)
        credit(stub, creator, 300_000)
        kid = enroll(stub, itype=RESIDENT, birth="20150101", **place)
        grandma = enroll(stub, itype=RESIDENT, birth="19500101", **place)
        complete(said(stub, kid, creator), pooled=True)
        fid = create(stub, creator).family_id
        complete(said(stub, kid, creator), pooled=True)
        invite(stub, fid, creator, kid)
        invite(stub, fid, creator, grandma, cpb.RELATION_PARENT)
        complete(said(stub, kid, creator), pooled=True)  # empty: 原因三
        complete(said(stub, grandma, creator), pooled=True)
        complete(said(stub, kid, creator, category=cpb.CATEGORY_FITNESS), pooled=True)
        complete(said(stub, kid, creator, member_insured_admdvs="110000"), pooled=True)
        stub.UpdatePersonStatus(pb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=kid,
                                                             status=cpb.PERSON_STATUS_SUSPENDED))
        complete(said(stub, kid, creator), pooled=True)
    apart = dataclasses.replace(policy_for("62"), cross_region_allowed=False)
    stub = start_registry("62", policy=apart).stub
    creator = enroll(stub, **GS)
    kid = enroll(stub, itype=RESIDENT, birth="20150101", region="620200", division="620202")
    create(stub, creator)  # an invitation across 统筹区 is refused here: the finding says why, beside it
    found = said(stub, kid, creator)
    assert "DIFFERENT_POOLING_REGION" in found and "原因四" in found["DIFFERENT_POOLING_REGION"], found
    complete(found, pooled=True)


def test_a_member_who_died_is_not_asked_to_restore_their_insurance(start_registry, rdb):
    """A patient who died in hospital: the death recorded, the bill comes after. The member cannot be
    paid for (原因一), but the desk is not told to have them enrol or restore their insurance."""
    for province, place in (("11", dict(region="110000", division="110101")), ("62", dict(region="620100",
                                                                                       division="620102"))):
        stub = start_registry(province).stub
        member, helper, heir = enroll(stub, **place), enroll(stub, **place), enroll(stub, **place)
        stub.RecordDeath(pb.RecordDeathRequest(request_id=rid("death"), id_number=member, heir_id_number=heir,
                                               heir_name="李四", date_of_death="20261120"))
        told = said(stub, member, helper)["MEMBER_NOT_INSURED"]
        assert "已死亡" in told and "恢复" not in told and "参保登记" not in told, told
        complete({"MEMBER_NOT_INSURED": told}, pooled=province == "62")
