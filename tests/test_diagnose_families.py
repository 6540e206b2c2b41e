"""Diagnose agrees with Settle in a pooled province (SPEC §3b, §4) where a member belongs to several
family accounts (福建 is not exclusive): the waterfall pays a member's bill from one family account
only (`family_reads.family_view`), so asked about the creator of another account the member has
joined, Diagnose must not say it would pay. Real 福建 registry over gRPC, real Redis."""

from __future__ import annotations

from medaid.common.v1 import common_pb2 as cpb
from medaid.gateway.reasons import REASON_ZH
from medaid.registry.v1 import registry_pb2 as pb
from support import RESIDENT, credit, enroll, rid
from test_family import FJ, account, create, invite, shares


def settle_request(patient: str, amount: int) -> pb.SettleRequest:
    return pb.SettleRequest(request_id=rid("settle"), patient_id_number=patient, amount_fen=amount, use_account=True,
                            category=cpb.CATEGORY_OUTPATIENT, institution_code="H35020000001",
                            institution_admdvs="350200")


def test_a_member_of_two_funded_accounts_is_paid_by_one_and_diagnose_says_which(start_registry, rdb):
    stub = start_registry("35").stub
    aunt, parent = enroll(stub, **FJ), enroll(stub, **FJ)
    kid = enroll(stub, itype=RESIDENT, birth="20150101", **FJ)
    for creator in (aunt, parent):
        credit(stub, creator, 300_000)
    first = create(stub, aunt, initial_transfer_fen=50_000).family_id
    second = create(stub, parent, initial_transfer_fen=50_000).family_id
    invite(stub, first, aunt, kid, cpb.RELATION_SIBLING)  # under 16: full members at once, of both
    invite(stub, second, parent, kid, cpb.RELATION_CHILD)
    verdicts = {who: stub.Diagnose(pb.DiagnoseRequest(member_id_number=kid, helper_id_number=who))
                for who in (aunt, parent)}
    res = stub.Settle(settle_request(kid, 5_000)).result
    assert res.family_id == first and [(c.helper_id_number, c.amount_fen) for c in res.helper_charges] == [
        (aunt, 5_000)]
    assert shares(account(stub, second)) == {parent: 50_000}
    assert verdicts[aunt].would_pay and not verdicts[aunt].findings
    passed = verdicts[parent]
    assert not passed.would_pay
    assert [f.code for f in passed.findings] == ["OTHER_FAMILY_FIRST"]
    assert passed.binding_kind == pb.BINDING_KIND_MUTUAL_AID
    assert "另一个家庭共济账户" in passed.findings[0].message and "OTHER_FAMILY_FIRST" in REASON_ZH
    # Once the first account is empty, the second pays, and Diagnose says so.
    stub.Settle(settle_request(kid, 45_000))
    assert stub.Diagnose(pb.DiagnoseRequest(member_id_number=kid, helper_id_number=parent)).would_pay
    res = stub.Settle(settle_request(kid, 1_000)).result
    assert (res.family_id, res.mulaid_pay_fen) == (second, 1_000)
