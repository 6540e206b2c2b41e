"""SPEC §4's waterfall at its boundaries, on the real registries of 河北 (13) and 北京 (11) as their
policy files ship them, and a 河北 variant with `helper_partial`: a bill the own account covers
exactly, a helper whose balance is exactly the remainder and one fen short, zero balances, ties,
helpers together enough but none alone (never pooled in 河北), helpers in turn (北京) with an empty
first filing. For each case PreSettle (2206) announces the split and writes nothing, Settle does
exactly that, and Diagnose of each helper agrees with who can be charged."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from conftest import policy_for
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import registry_pb2 as pb
from support import EMPLOYEE, RESIDENT, balance, bind, credit, enroll, rid, snapshot

PLACE = {"11": ("110000", "110101", "H11010500001"), "13": ("130100", "130102", "H13010100001")}
POLICIES = {
    "13": policy_for("13"),
    "11": policy_for("11"),
    "13-partial": dataclasses.replace(policy_for("13"), helper_partial=True),
}

# (policy, own balance or None for a resident patient, helpers' balances in filing order, bill)
#   -> (acct_pay, ((helper index, amount), ...), cash_pay, helper_reason)
CASES = [
    # 河北: LARGEST_BALANCE, all or nothing.
    ("13", 1_000, (500,), 1_000, (1_000, (), 0, "")),  # own covers exactly: no helper asked
    ("13", 1_000, (500,), 1_500, (1_000, ((0, 500),), 0, "")),  # helper exactly the remainder
    ("13", 1_000, (500,), 1_501, (1_000, (), 501, "HELPER_INSUFFICIENT")),  # one fen short
    ("13", 0, (0,), 1, (0, (), 1, "HELPER_ZERO_BALANCE")),
    ("13", None, (1,), 1, (0, ((0, 1),), 0, "")),  # resident patient, one fen
    ("13", 0, (500, 500), 500, (0, ((0, 500),), 0, "")),  # tie: the earlier filing
    ("13", 0, (500, 499), 501, (0, (), 501, "HELPER_INSUFFICIENT")),  # enough together, never pooled
    ("13", 0, (0, 300), 300, (0, ((1, 300),), 0, "")),  # the richest, filed second
    ("13", 0, (0, 0), 300, (0, (), 300, "HELPER_ZERO_BALANCE")),
    # 河北 with helper_partial: the richest pays what it has.
    ("13-partial", 100, (200, 300), 401, (100, ((1, 300),), 1, "HELPER_INSUFFICIENT")),
    ("13-partial", 100, (200, 300), 400, (100, ((1, 300),), 0, "")),
    # 北京: FILING_ORDER, in turn.
    ("11", 0, (0, 500), 500, (0, ((1, 500),), 0, "")),  # the first filing empty: the second pays
    ("11", 0, (300, 200), 500, (0, ((0, 300), (1, 200)), 0, "")),  # together exactly
    ("11", 0, (300, 200), 501, (0, ((0, 300), (1, 200)), 1, "HELPER_INSUFFICIENT")),
    ("11", 0, (0, 0), 500, (0, (), 500, "HELPER_ZERO_BALANCE")),
    ("11", 100, (100,), 100, (100, (), 0, "")),
    ("11", 100, (300, 700), 400, (100, ((0, 300),), 0, "")),  # the first covers exactly: second untouched
]


@pytest.mark.parametrize("atomic", [True, False], ids=["atomic", "staged"])
@pytest.mark.parametrize(("mode", "own", "helpers", "amount", "want"), CASES)
def test_presettle_settle_and_diagnose_agree_at_the_boundaries(start_registry, rdb, mode, own, helpers, amount,
                                                               want, atomic):
    policy = POLICIES[mode]
    running = start_registry(policy.province, policy=policy)
    running.registry.atomic = atomic
    stub = running.stub
    region, division, institution = PLACE[policy.province]
    patient = enroll(stub, itype=RESIDENT if own is None else EMPLOYEE, region=region, division=division,
                     birth="19550101")
    if own:
        credit(stub, patient, own)
    ids = []
    for bal in helpers:
        hid = enroll(stub, region=region, division=division)
        if bal:
            credit(stub, hid, bal)
        bind(stub, hid, patient)
        ids.append(hid)
    acct, charged, cash, why = want
    expect = (acct, tuple((ids[i], a) for i, a in charged), cash, why)

    def split(res: Any) -> tuple[int, tuple[tuple[str, int], ...], int, str]:
        assert res.acct_pay_fen + res.wallet_pay_fen + res.mulaid_pay_fen + res.cash_pay_fen == amount
        assert res.mulaid_pay_fen == sum(c.amount_fen for c in res.helper_charges)
        return (res.acct_pay_fen, tuple((c.helper_id_number, c.amount_fen) for c in res.helper_charges),
                res.cash_pay_fen, res.helper_reason)

    before = snapshot(rdb)
    pre = stub.PreSettle(pb.PreSettleRequest(patient_id_number=patient, amount_fen=amount, use_account=True,
                                             category=cpb.CATEGORY_OUTPATIENT, institution_code=institution,
                                             institution_admdvs=region)).result
    assert snapshot(rdb) == before, "PreSettle wrote"
    assert split(pre) == expect

    # Diagnose before the bill: a helper would pay iff it has money and (in turn, or) it goes first.
    payers = {ids[i] for i, _ in charged}
    for i, hid in enumerate(ids):
        d = stub.Diagnose(pb.DiagnoseRequest(member_id_number=patient, helper_id_number=hid))
        codes = [f.code for f in d.findings]
        assert d.helper_balance_fen == helpers[i]
        if hid in payers:
            assert d.would_pay and codes == [], (hid, codes)
        if helpers[i] == 0:
            assert not d.would_pay and "HELPER_ZERO_BALANCE" in codes

    res = stub.Settle(pb.SettleRequest(request_id=rid("settle"), patient_id_number=patient, amount_fen=amount,
                                       use_account=True, category=cpb.CATEGORY_OUTPATIENT,
                                       institution_code=institution, institution_admdvs=region)).result
    assert split(res) == expect
    # PreSettle announced the very answer, balances after included.
    pre.settlement_id, pre.state = res.settlement_id, res.state
    assert pre == res
    assert res.helper_id_number == (expect[1][0][0] if expect[1] else "")
    assert res.helper_balance_after_fen == (res.helper_charges[0].balance_after_fen if expect[1] else 0)
    assert res.balance_after_fen == (own or 0) - acct
    for i, hid in enumerate(ids):
        paid = dict(expect[1]).get(hid, 0)
        assert balance(stub, hid) == helpers[i] - paid
    for c in res.helper_charges:
        assert c.balance_after_fen == balance(stub, c.helper_id_number)
    if own is not None:
        assert balance(stub, patient) == own - acct


@pytest.mark.parametrize("mode", ["11", "13"])
def test_a_binding_filed_again_after_an_unbind_counts_from_its_new_filing(start_registry, rdb, mode):
    """docs/rules.md §4: the filing (备案) order is that of the binding as it stands now. 北京: A filed,
    B filed, A unbound and filed again: B is used first. 河北: A and B with the same largest balance,
    A filed again: the tie goes to B. PreSettle, Settle and Diagnose all say so."""
    policy = POLICIES[mode]
    stub = start_registry(policy.province).stub
    region, division, institution = PLACE[policy.province]
    member = enroll(stub, itype=RESIDENT, region=region, division=division, birth="20150101")
    a, b = (enroll(stub, region=region, division=division) for _ in range(2))
    for helper in (a, b):
        credit(stub, helper, 600)
        bind(stub, helper, member)
    stub.UnbindMutualAid(pb.UnbindMutualAidRequest(request_id=rid("unbind"), helper_id_number=a,
                                                   member_id_number=member))
    bind(stub, a, member)
    req = dict(patient_id_number=member, amount_fen=600, use_account=True, category=cpb.CATEGORY_OUTPATIENT,
               institution_code=institution, institution_admdvs=region)
    pre = stub.PreSettle(pb.PreSettleRequest(**req)).result
    first = {h: stub.Diagnose(pb.DiagnoseRequest(member_id_number=member, helper_id_number=h)) for h in (a, b)}
    assert first[b].would_pay
    if not policy.helpers_in_turn:
        assert [f.code for f in first[a].findings] == ["OTHER_HELPER_FIRST"]
    res = stub.Settle(pb.SettleRequest(request_id=rid("settle"), **req)).result
    for r in (pre, res):
        assert [(c.helper_id_number, c.amount_fen) for c in r.helper_charges] == [(b, 600)]
    assert (balance(stub, a), balance(stub, b)) == (600, 0)
