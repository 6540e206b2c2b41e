"""SPEC §4 rules pinned on the real registries of the four shipped policy files: the categories each
province's file lets the accounts pay (CHECKUP, VACCINE only where listed; PUBLIC_HEALTH, FITNESS,
WELLNESS, CASH_WITHDRAWAL never), each refusal writing nothing; and the helper order when the
filing order and the id numbers disagree: a tie on LARGEST_BALANCE goes to the earlier filing (备案),
and a binding filed again after an unbinding is a new, later filing (河北 ties, 北京 in turn)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from conftest import policy_for
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import registry_pb2 as pb
from support import EMPLOYEE, RESIDENT, balance, credit, enroll, reason, rid, snapshot

PLACE = {"13": ("130100", "130102", "H13010100001"), "11": ("110000", "110105", "H11010500001"),
         "62": ("620100", "620102", "H62010000001"), "35": ("350200", "350203", "H35020000001")}
OPTIONAL = ("CHECKUP", "VACCINE")
NEVER = ("PUBLIC_HEALTH", "FITNESS", "WELLNESS", "CASH_WITHDRAWAL")


def settle_req(province: str, patient: str, amount: int, category: str) -> pb.SettleRequest:
    region, _, institution = PLACE[province]
    return pb.SettleRequest(request_id=rid("settle"), patient_id_number=patient, amount_fen=amount, use_account=True,
                            category=getattr(cpb, f"CATEGORY_{category}"), institution_code=institution,
                            institution_admdvs=region)


def person(stub: Any, province: str, **kw: Any) -> str:
    region, division, _ = PLACE[province]
    return enroll(stub, region=region, division=division, **kw)


@pytest.mark.parametrize("province", sorted(PLACE))
@pytest.mark.parametrize("category", OPTIONAL + NEVER)
def test_each_province_pays_the_categories_its_policy_file_lists(start_registry, rdb, province, category):
    stub = start_registry(province).stub
    patient = person(stub, province)
    credit(stub, patient, 5_000)
    if category in policy_for(province).payable_categories:
        assert category not in NEVER
        res = stub.Settle(settle_req(province, patient, 3_000, category)).result
        assert (res.acct_pay_fen, res.cash_pay_fen, res.category) == (3_000, 0, getattr(cpb, f"CATEGORY_{category}"))
        assert balance(stub, patient) == 2_000
        return
    before = snapshot(rdb)
    with pytest.raises(grpc.RpcError) as ei:
        stub.Settle(settle_req(province, patient, 3_000, category))
    assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION, ei.value.details()
    assert reason(ei.value) == "CATEGORY_NOT_PAYABLE"
    assert snapshot(rdb) == before
    assert balance(stub, patient) == 5_000


def test_the_shipped_files_differ_where_the_provinces_do():
    """河北 lists CHECKUP; no shipped province lists VACCINE; 北京 pays helpers in turn in 备案 order."""
    assert "CHECKUP" in policy_for("13").payable_categories
    assert all("CHECKUP" not in policy_for(p).payable_categories for p in ("11", "62", "35"))
    assert all("VACCINE" not in policy_for(p).payable_categories for p in PLACE)
    bj, hb = policy_for("11"), policy_for("13")
    assert (bj.helper_selection, bj.helpers_in_turn, bj.helper_partial) == ("FILING_ORDER", True, False)
    assert (hb.helper_selection, hb.helpers_in_turn, hb.helper_partial) == ("LARGEST_BALANCE", False, False)
    assert (hb.max_members, policy_for("62").max_members, policy_for("35").max_members) == (8, 7, 8)
    assert policy_for("62").exclusive and not any(policy_for(p).exclusive for p in ("11", "13", "35"))


def bind(stub: Any, helper: str, member: str) -> None:
    stub.BindMutualAid(pb.BindMutualAidRequest(
        request_id=rid("bind"), helper_id_number=helper, member_id_number=member, relation=cpb.RELATION_CHILD))


def unbind(stub: Any, helper: str, member: str) -> None:
    stub.UnbindMutualAid(pb.UnbindMutualAidRequest(request_id=rid("unbind"), helper_id_number=helper,
                                                   member_id_number=member))


@pytest.mark.parametrize("province", ["13", "11"])
def test_a_tie_goes_to_the_earlier_filing_not_the_smaller_id_number(start_registry, province):
    """Two helpers with equal balances, the later-enrolled one (a larger id number) filed first: it pays
    (河北: the tie; 北京: 备案 order). Unbound and bound again, it is filed last and the other pays."""
    stub = start_registry(province).stub
    member = person(stub, province, itype=RESIDENT, birth="20150101")
    first_enrolled = person(stub, province, itype=EMPLOYEE)
    later_enrolled = person(stub, province, itype=EMPLOYEE)
    assert first_enrolled < later_enrolled
    for h in (first_enrolled, later_enrolled):
        credit(stub, h, 1_000)
    bind(stub, later_enrolled, member)
    bind(stub, first_enrolled, member)
    res = stub.Settle(settle_req(province, member, 400, "OUTPATIENT")).result
    assert [(c.helper_id_number, c.amount_fen) for c in res.helper_charges] == [(later_enrolled, 400)]
    assert res.helper_id_number == later_enrolled
    credit(stub, later_enrolled, 400)  # 1,000 each again
    unbind(stub, later_enrolled, member)
    bind(stub, later_enrolled, member)  # now filed after first_enrolled
    res = stub.Settle(settle_req(province, member, 400, "OUTPATIENT")).result
    assert [(c.helper_id_number, c.amount_fen) for c in res.helper_charges] == [(first_enrolled, 400)]
    assert (balance(stub, first_enrolled), balance(stub, later_enrolled)) == (600, 1_000)
