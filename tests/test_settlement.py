"""SPEC §4 settlement through gRPC on a real Redis: the payment waterfall, one test per case,
pre-settlement, reversal, consumption records and idempotency by request id.

Every test asserts the exact split (acct/wallet/mulaid/cash, helper, reasons), the balances the
answer reports, and the balances read back through GetPerson / GetAccount.
"""

from __future__ import annotations

import dataclasses

import grpc
import pytest
from conftest import policy_for
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import registry_pb2 as pb
from support import (
    FACE,
    RESIDENT,
    balance,
    bind,
    credit,
    enroll,
    new_id,
    reason,
    rid,
    settle,
    settle_request,
    snapshot,
    total_balances,
)

NEVER = [cpb.CATEGORY_PUBLIC_HEALTH, cpb.CATEGORY_FITNESS, cpb.CATEGORY_WELLNESS, cpb.CATEGORY_CASH_WITHDRAWAL]


# --- helpers local to this file -------------------------------------------------------------------


def split(res: pb.SettlementResult) -> tuple[int, int, int, int, str, str, str]:
    return (res.acct_pay_fen, res.wallet_pay_fen, res.mulaid_pay_fen, res.cash_pay_fen, res.helper_id_number,
            res.helper_reason, res.wallet_reason)


def check(res: pb.SettlementResult, amount: int, expected: tuple[int, int, int, int, str, str, str], *,
          balance_after: int, helper_balance_after: int = 0) -> None:
    assert res.amount_fen == amount
    assert res.acct_pay_fen + res.wallet_pay_fen + res.mulaid_pay_fen + res.cash_pay_fen == amount
    assert split(res) == expected
    assert res.balance_after_fen == balance_after
    assert res.helper_balance_after_fen == helper_balance_after


def account(stub, pid: str) -> pb.GetAccountResponse:
    return stub.GetAccount(pb.GetAccountRequest(id_number=pid))


def assert_balance(stub, pid: str, expected: int) -> None:
    """Read back through both GetPerson and GetAccount."""
    assert balance(stub, pid) == expected
    assert account(stub, pid).balance_fen == expected


def set_status(stub, pid: str, status: int) -> None:
    stub.UpdatePersonStatus(pb.UpdatePersonStatusRequest(request_id=rid("status"), id_number=pid, status=status))


def reverse(stub, sid: str, request_id: str | None = None) -> pb.ReverseSettlementResponse:
    return stub.ReverseSettlement(pb.ReverseSettlementRequest(request_id=request_id or rid("rev"), settlement_id=sid))


def consumption(stub, pid: str) -> list[pb.ConsumptionRecord]:
    return list(stub.ListConsumptionRecords(pb.ListConsumptionRecordsRequest(id_number=pid)).records)


def entries(stub, pid: str) -> list[tuple[str, int, int, str]]:
    """Ledger entries oldest first as (kind, signed amount, balance after, ref)."""
    return [(e.kind, e.amount_fen, e.balance_after_fen, e.ref) for e in reversed(account(stub, pid).entries)]


def employee(stub, amount: int = 0, **kw) -> str:
    pid = enroll(stub, **kw)
    if amount:
        assert credit(stub, pid, amount) == amount
    return pid


def resident(stub, **kw) -> str:
    return enroll(stub, itype=RESIDENT, birth=kw.pop("birth", "20150101"), **kw)


def presettle(stub, patient: str, amount: int, *, use_account: bool = True,
              category: int = cpb.CATEGORY_OUTPATIENT) -> pb.SettlementResult:
    return stub.PreSettle(pb.PreSettleRequest(
        patient_id_number=patient, amount_fen=amount, use_account=use_account, category=category,
        institution_code="H13010100001", institution_admdvs="130100")).result


# --- §4 waterfall, case by case -----------------------------------------------------------------


def test_own_account_only(hebei):
    stub = hebei.stub
    patient = employee(stub, 50_000)
    helper = employee(stub, 90_000)
    bind(stub, helper, patient, cpb.RELATION_SPOUSE)
    res = settle(stub, patient, 12_000)
    # 本人个人账户优先: the richer helper is not touched; wallet step never reached.
    check(res, 12_000, (12_000, 0, 0, 0, "", "", ""), balance_after=38_000)
    assert res.state == "SETTLED" and res.patient_id_number == patient
    assert_balance(stub, patient, 38_000)
    assert_balance(stub, helper, 90_000)
    assert consumption(stub, patient) == [] and consumption(stub, helper) == []


def test_own_account_plus_helper_pays_the_rest(hebei):
    stub = hebei.stub
    patient = employee(stub, 3_000)
    helper = employee(stub, 50_000)
    bind(stub, helper, patient, cpb.RELATION_SPOUSE)
    res = settle(stub, patient, 12_000)
    check(res, 12_000, (3_000, 0, 9_000, 0, helper, "", "WALLET_NOT_OPENED"),
          balance_after=0, helper_balance_after=41_000)
    assert_balance(stub, patient, 0)
    assert_balance(stub, helper, 41_000)


def test_resident_member_helper_pays_all(hebei):
    stub = hebei.stub
    child = resident(stub)
    parent = employee(stub, 20_000)
    bind(stub, parent, child)
    res = settle(stub, child, 20_000)  # exactly the helper's whole balance
    check(res, 20_000, (0, 0, 20_000, 0, parent, "", "WALLET_NOT_OPENED"), balance_after=0,
          helper_balance_after=0)
    assert balance(stub, child) == 0
    assert_balance(stub, parent, 0)


def test_richest_helper_chosen_among_several(hebei):
    stub = hebei.stub
    member = resident(stub)
    h_poor, h_rich, h_mid = employee(stub, 5_000), employee(stub, 30_000), employee(stub, 12_000)
    for hid, rel in ((h_poor, cpb.RELATION_CHILD), (h_rich, cpb.RELATION_SIBLING), (h_mid, cpb.RELATION_GRANDCHILD)):
        bind(stub, hid, member, rel)
    res = settle(stub, member, 10_000)  # h_mid could cover too, but LARGEST_BALANCE picks h_rich
    check(res, 10_000, (0, 0, 10_000, 0, h_rich, "", "WALLET_NOT_OPENED"), balance_after=0,
          helper_balance_after=20_000)
    assert_balance(stub, h_rich, 20_000)
    assert_balance(stub, h_poor, 5_000)
    assert_balance(stub, h_mid, 12_000)


def test_richest_helper_tie_goes_to_earlier_binding(hebei):
    stub = hebei.stub
    member = resident(stub)
    # Enrolled in the opposite order of binding, so neither enrollment nor id order can pass for binding order.
    h_late = employee(stub, 25_000)
    h_early = employee(stub, 25_000)
    assert h_late < h_early
    bind(stub, h_early, member)
    bind(stub, h_late, member)
    res = settle(stub, member, 8_000)
    check(res, 8_000, (0, 0, 8_000, 0, h_early, "", "WALLET_NOT_OPENED"), balance_after=0,
          helper_balance_after=17_000)
    assert_balance(stub, h_early, 17_000)
    assert_balance(stub, h_late, 25_000)


def test_binding_order_policy_picks_first_bound_active_helper(start_registry):
    pol = dataclasses.replace(policy_for("13"), helper_selection="BINDING_ORDER")
    stub = start_registry("13", policy=pol).stub
    member = resident(stub)
    h_first = employee(stub, 80_000)   # bound first, then suspended
    h_second = employee(stub, 11_000)  # first ACTIVE helper in binding order
    h_rich = employee(stub, 90_000)    # richest, bound last
    for hid in (h_first, h_second, h_rich):
        bind(stub, hid, member)
    set_status(stub, h_first, cpb.PERSON_STATUS_SUSPENDED)
    res = settle(stub, member, 10_000)
    check(res, 10_000, (0, 0, 10_000, 0, h_second, "", "WALLET_NOT_OPENED"), balance_after=0,
          helper_balance_after=1_000)
    assert_balance(stub, h_second, 1_000)
    assert_balance(stub, h_first, 80_000)
    assert_balance(stub, h_rich, 90_000)
    # The first ACTIVE helper no longer covers: no fallback to the richer one, all or nothing.
    res2 = settle(stub, member, 5_000)
    check(res2, 5_000, (0, 0, 0, 5_000, "", "HELPER_INSUFFICIENT", "WALLET_NOT_OPENED"), balance_after=0)
    assert_balance(stub, h_second, 1_000)
    assert_balance(stub, h_rich, 90_000)


def test_richest_helper_insufficient_no_pooling(hebei, rdb):
    stub = hebei.stub
    patient = employee(stub, 2_000)
    h1, h2 = employee(stub, 6_000), employee(stub, 7_000)  # 13 000 together would cover the 10 000 left
    bind(stub, h1, patient, cpb.RELATION_SPOUSE)
    bind(stub, h2, patient, cpb.RELATION_CHILD)
    res = settle(stub, patient, 12_000)
    check(res, 12_000, (2_000, 0, 0, 10_000, "", "HELPER_INSUFFICIENT", "WALLET_NOT_OPENED"), balance_after=0)
    assert_balance(stub, patient, 0)
    assert_balance(stub, h1, 6_000)
    assert_balance(stub, h2, 7_000)
    assert [e[0] for e in entries(stub, h1)] == ["CREDIT_MONTHLY_CONTRIBUTION"]
    assert [e[0] for e in entries(stub, h2)] == ["CREDIT_MONTHLY_CONTRIBUTION"]
    assert consumption(stub, h1) == [] and consumption(stub, h2) == [] and consumption(stub, patient) == []
    assert total_balances(rdb) == 13_000


def test_helper_zero_balance(hebei):
    stub = hebei.stub
    member = resident(stub)
    helper = employee(stub)  # 原因三: an employee whose account holds nothing
    bind(stub, helper, member)
    res = settle(stub, member, 4_500)
    check(res, 4_500, (0, 0, 0, 4_500, "", "HELPER_ZERO_BALANCE", "WALLET_NOT_OPENED"), balance_after=0)
    assert_balance(stub, helper, 0)


def test_proxy_only(hebei):
    stub = hebei.stub
    patient = employee(stub, 1_000)
    holder = employee(stub, 60_000)
    stub.BindProxy(pb.BindProxyRequest(request_id=rid("proxy"), holder_id_number=holder,
                                       relative_id_number=patient, relation=cpb.RELATION_CHILD,
                                       relative_verification=FACE))
    res = settle(stub, patient, 5_000)
    # 原因二: a 亲情账户 moves no money between people; the patient's own account pays, then cash.
    check(res, 5_000, (1_000, 0, 0, 4_000, "", "PROXY_ONLY", "WALLET_NOT_OPENED"), balance_after=0)
    assert_balance(stub, patient, 0)
    assert_balance(stub, holder, 60_000)


def test_no_binding_at_all_cash_without_helper_reason(hebei):
    stub = hebei.stub
    patient = resident(stub)
    res = settle(stub, patient, 3_000)
    check(res, 3_000, (0, 0, 0, 3_000, "", "", "WALLET_NOT_OPENED"), balance_after=0)


def test_patient_not_enrolled_not_found(hebei, rdb):
    stub = hebei.stub
    employee(stub, 10_000)
    stranger = new_id()
    before = snapshot(rdb)
    with pytest.raises(grpc.RpcError) as exc:
        settle(stub, stranger, 1_000)
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    assert reason(exc.value) == "PERSON_NOT_FOUND"
    assert snapshot(rdb) == before


@pytest.mark.parametrize("status", [cpb.PERSON_STATUS_SUSPENDED, cpb.PERSON_STATUS_TERMINATED])
def test_patient_not_insured_member_not_insured(hebei, rdb, status):
    stub = hebei.stub
    patient = employee(stub, 10_000)
    helper = employee(stub, 50_000)
    bind(stub, helper, patient, cpb.RELATION_SPOUSE)
    set_status(stub, patient, status)
    before = snapshot(rdb)
    req = settle_request(patient, 1_000)
    with pytest.raises(grpc.RpcError) as exc:
        stub.Settle(req)
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(exc.value) == "MEMBER_NOT_INSURED"
    assert snapshot(rdb) == before
    assert balance(stub, patient) == 10_000 and balance(stub, helper) == 50_000
    if status == cpb.PERSON_STATUS_SUSPENDED:
        # The refusal wrote nothing, so once insured again the same request id is judged afresh.
        set_status(stub, patient, cpb.PERSON_STATUS_ACTIVE)
        res = stub.Settle(req).result
        check(res, 1_000, (1_000, 0, 0, 0, "", "", ""), balance_after=9_000)


def test_suspended_helper_no_active_helper(hebei):
    stub = hebei.stub
    member = resident(stub)
    helper = employee(stub, 50_000)
    bind(stub, helper, member)
    set_status(stub, helper, cpb.PERSON_STATUS_SUSPENDED)
    res = settle(stub, member, 6_000)
    check(res, 6_000, (0, 0, 0, 6_000, "", "NO_ACTIVE_HELPER", "WALLET_NOT_OPENED"), balance_after=0)
    assert_balance(stub, helper, 50_000)
    # The binding stays while suspended: once ACTIVE again the helper pays.
    set_status(stub, helper, cpb.PERSON_STATUS_ACTIVE)
    res2 = settle(stub, member, 6_000)
    check(res2, 6_000, (0, 0, 6_000, 0, helper, "", "WALLET_NOT_OPENED"), balance_after=0,
          helper_balance_after=44_000)
    assert_balance(stub, helper, 44_000)


def test_suspended_richest_helper_skipped_for_active_one(hebei):
    stub = hebei.stub
    member = resident(stub)
    h_rich, h_active = employee(stub, 90_000), employee(stub, 20_000)
    bind(stub, h_rich, member)
    bind(stub, h_active, member)
    set_status(stub, h_rich, cpb.PERSON_STATUS_SUSPENDED)
    res = settle(stub, member, 10_000)
    check(res, 10_000, (0, 0, 10_000, 0, h_active, "", "WALLET_NOT_OPENED"), balance_after=0,
          helper_balance_after=10_000)
    assert_balance(stub, h_rich, 90_000)
    assert_balance(stub, h_active, 10_000)


@pytest.mark.parametrize("use_account", [True, False], ids=["account", "cash"])
@pytest.mark.parametrize("category", NEVER, ids=lambda c: cpb.Category.Name(c))
def test_categories_never_payable(hebei, rdb, category, use_account):
    stub = hebei.stub
    patient = employee(stub, 50_000)
    helper = employee(stub, 50_000)
    bind(stub, helper, patient, cpb.RELATION_SPOUSE)
    before = snapshot(rdb)
    for call in (
        lambda: settle(stub, patient, 1_000, category=category, use_account=use_account),
        lambda: presettle(stub, patient, 1_000, category=category, use_account=use_account),
    ):
        with pytest.raises(grpc.RpcError) as exc:
            call()
        assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason(exc.value) == "CATEGORY_NOT_PAYABLE"
    assert snapshot(rdb) == before
    assert_balance(stub, patient, 50_000)
    assert_balance(stub, helper, 50_000)


def test_checkup_payable_in_hebei_not_in_beijing(start_registry, rdb):
    hebei = start_registry("13").stub
    patient13 = employee(hebei, 10_000)
    res = settle(hebei, patient13, 3_000, category=cpb.CATEGORY_CHECKUP)
    check(res, 3_000, (3_000, 0, 0, 0, "", "", ""), balance_after=7_000)
    assert res.category == cpb.CATEGORY_CHECKUP
    assert_balance(hebei, patient13, 7_000)

    beijing = start_registry("11").stub
    patient11 = employee(beijing, 10_000, region="110000", division="110105")
    before = snapshot(rdb)
    req = pb.SettleRequest(request_id=rid("bj"), patient_id_number=patient11, amount_fen=3_000,
                           use_account=True, category=cpb.CATEGORY_CHECKUP, institution_code="H11010500001",
                           institution_admdvs="110000")
    with pytest.raises(grpc.RpcError) as exc:
        beijing.Settle(req)
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(exc.value) == "CATEGORY_NOT_PAYABLE"
    assert snapshot(rdb) == before
    assert_balance(beijing, patient11, 10_000)
    # An outpatient bill in 北京 is paid as usual.
    req.request_id, req.category = rid("bj"), cpb.CATEGORY_OUTPATIENT
    check(beijing.Settle(req).result, 3_000, (3_000, 0, 0, 0, "", "", ""), balance_after=7_000)


def test_vaccine_payable_only_where_the_policy_lists_it(start_registry, rdb):
    """VACCINE is an optional category: a province that lists it pays it from the accounts (own, then a
    helper), and Diagnose agrees; 河北 does not list it and refuses, writing nothing."""
    with_vaccine = dataclasses.replace(policy_for("13"), payable_categories=policy_for("13").payable_categories
                                       | {"VACCINE"})
    for stub, payable in ((start_registry("13", policy=with_vaccine).stub, True), (start_registry("13").stub, False)):
        member = employee(stub, 1_000)
        helper = employee(stub, 10_000)
        bind(stub, helper, member)
        verdict = stub.Diagnose(pb.DiagnoseRequest(member_id_number=member, helper_id_number=helper,
                                                   category=cpb.CATEGORY_VACCINE))
        assert (verdict.would_pay, [f.code for f in verdict.findings]) == \
            ((True, []) if payable else (False, ["CATEGORY_NOT_PAYABLE"]))
        if payable:
            res = settle(stub, member, 3_000, category=cpb.CATEGORY_VACCINE)
            check(res, 3_000, (1_000, 0, 2_000, 0, helper, "", "WALLET_NOT_OPENED"), balance_after=0,
                  helper_balance_after=8_000)
            continue
        before = snapshot(rdb)
        for call in (settle, presettle):
            with pytest.raises(grpc.RpcError) as exc:
                call(stub, member, 3_000, category=cpb.CATEGORY_VACCINE)
            assert (exc.value.code(), reason(exc.value)) == (grpc.StatusCode.FAILED_PRECONDITION,
                                                             "CATEGORY_NOT_PAYABLE")
        assert snapshot(rdb) == before


@pytest.mark.parametrize("category", [cpb.CATEGORY_INPATIENT, cpb.CATEGORY_PHARMACY,
                                      cpb.CATEGORY_LONG_TERM_CARE_PREMIUM], ids=lambda c: cpb.Category.Name(c))
def test_standard_categories_paid_by_helper(hebei, category):
    stub = hebei.stub
    member = resident(stub)
    helper = employee(stub, 10_000)
    bind(stub, helper, member)
    res = settle(stub, member, 2_500, category=category)
    check(res, 2_500, (0, 0, 2_500, 0, helper, "", "WALLET_NOT_OPENED"), balance_after=0,
          helper_balance_after=7_500)
    assert res.category == category
    assert_balance(stub, helper, 7_500)


def test_resident_premium_is_not_a_bill(hebei, rdb):
    """SPEC §4b: 代缴 of a 城乡居民医保 premium is its own flow (PayResidentPremium), not a bill at a
    hospital: its window, its amount, one payment per payee and year and the list the tax bureau gets
    hold there. Settle and PreSettle refuse the category, whatever the amount, and write nothing."""
    stub = hebei.stub
    member = resident(stub)
    helper = employee(stub, 100_000)
    bind(stub, helper, member)
    before = snapshot(rdb)
    for call in (settle, presettle):
        for amount in (40_000, 99_999):
            with pytest.raises(grpc.RpcError) as exc:
                call(stub, member, amount, category=cpb.CATEGORY_RESIDENT_PREMIUM)
            assert (exc.value.code(), reason(exc.value)) == (grpc.StatusCode.FAILED_PRECONDITION,
                                                             "CATEGORY_NOT_PAYABLE"), exc.value.details()
    assert snapshot(rdb) == before
    assert_balance(stub, helper, 100_000)
    # Diagnose still answers whether the helper could pay the premium (by 代缴).
    verdict = stub.Diagnose(pb.DiagnoseRequest(member_id_number=member, helper_id_number=helper,
                                               category=cpb.CATEGORY_RESIDENT_PREMIUM))
    assert verdict.would_pay


def test_use_account_false_all_cash_account_not_used(hebei):
    stub = hebei.stub
    patient = employee(stub, 50_000)
    helper = employee(stub, 50_000)
    bind(stub, helper, patient, cpb.RELATION_SPOUSE)
    res = settle(stub, patient, 7_000, use_account=False)
    check(res, 7_000, (0, 0, 0, 7_000, "", "ACCOUNT_NOT_USED", ""), balance_after=50_000)
    assert_balance(stub, patient, 50_000)
    assert_balance(stub, helper, 50_000)
    assert [e[0] for e in entries(stub, patient)] == ["CREDIT_MONTHLY_CONTRIBUTION"]


def test_use_account_false_without_helpers_no_reason(hebei):
    stub = hebei.stub
    patient = employee(stub, 50_000)
    res = settle(stub, patient, 7_000, use_account=False)
    check(res, 7_000, (0, 0, 0, 7_000, "", "", ""), balance_after=50_000)
    assert_balance(stub, patient, 50_000)


def test_wallet_not_opened_reported(hebei):
    stub = hebei.stub
    patient = employee(stub, 4_000)
    helper = employee(stub, 30_000)
    bind(stub, helper, patient, cpb.RELATION_PARENT)
    res = settle(stub, patient, 10_000)
    # Step 2 runs between own account and helper; the wallet seam answers "no wallet".
    check(res, 10_000, (4_000, 0, 6_000, 0, helper, "", "WALLET_NOT_OPENED"), balance_after=0,
          helper_balance_after=24_000)
    assert res.wallet_balance_after_fen == 0
    assert_balance(stub, patient, 0)
    assert_balance(stub, helper, 24_000)


def test_helper_partial_policy_richest_helper_pays_part(start_registry):
    pol = dataclasses.replace(policy_for("13"), helper_partial=True)
    stub = start_registry("13", policy=pol).stub
    patient = employee(stub, 2_000)
    h_small, h_big = employee(stub, 3_000), employee(stub, 7_000)
    bind(stub, h_small, patient, cpb.RELATION_SPOUSE)
    bind(stub, h_big, patient, cpb.RELATION_CHILD)
    res = settle(stub, patient, 12_000)
    check(res, 12_000, (2_000, 0, 7_000, 3_000, h_big, "HELPER_INSUFFICIENT", "WALLET_NOT_OPENED"),
          balance_after=0, helper_balance_after=0)
    assert_balance(stub, patient, 0)
    assert_balance(stub, h_big, 0)
    assert_balance(stub, h_small, 3_000)


# --- pre-settlement ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "own, helpers, amount, expected",
    [
        (3_000, [50_000], 12_000, (3_000, 0, 9_000, 0, 0, "", "WALLET_NOT_OPENED")),
        (2_000, [6_000, 7_000], 12_000, (2_000, 0, 0, 10_000, -1, "HELPER_INSUFFICIENT", "WALLET_NOT_OPENED")),
        (20_000, [50_000], 12_000, (12_000, 0, 0, 0, -1, "", "")),
        (0, [0], 12_000, (0, 0, 0, 12_000, -1, "HELPER_ZERO_BALANCE", "WALLET_NOT_OPENED")),
    ],
    ids=["own+helper", "insufficient", "own-only", "zero-balance"],
)
def test_presettle_same_split_moves_nothing(hebei, rdb, own, helpers, amount, expected):
    stub = hebei.stub
    patient = employee(stub, own)
    hids = [employee(stub, bal) for bal in helpers]
    for hid in hids:
        bind(stub, hid, patient, cpb.RELATION_SPOUSE if hid == hids[0] else cpb.RELATION_CHILD)
    before = snapshot(rdb)
    pre = presettle(stub, patient, amount)
    assert snapshot(rdb) == before
    acct, wallet, mulaid, cash, helper_idx, helper_reason, wallet_reason = expected
    helper = hids[helper_idx] if helper_idx >= 0 else ""
    helper_after = helpers[helper_idx] - mulaid if helper_idx >= 0 else 0
    check(pre, amount, (acct, wallet, mulaid, cash, helper, helper_reason, wallet_reason),
          balance_after=own - acct, helper_balance_after=helper_after)
    assert pre.state == "PRE_SETTLEMENT" and pre.settlement_id == ""
    assert_balance(stub, patient, own)
    for hid, bal in zip(hids, helpers, strict=True):
        assert_balance(stub, hid, bal)
    # Settle then does exactly what PreSettle announced.
    res = settle(stub, patient, amount)
    assert split(res) == split(pre)
    assert (res.balance_after_fen, res.helper_balance_after_fen) == (pre.balance_after_fen,
                                                                     pre.helper_balance_after_fen)
    assert_balance(stub, patient, own - acct)
    if helper:
        assert_balance(stub, helper, helper_after)


def test_presettle_refuses_like_settle(hebei, rdb):
    stub = hebei.stub
    patient = employee(stub, 5_000)
    set_status(stub, patient, cpb.PERSON_STATUS_SUSPENDED)
    before = snapshot(rdb)
    with pytest.raises(grpc.RpcError) as exc:
        presettle(stub, patient, 1_000)
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(exc.value) == "MEMBER_NOT_INSURED"
    assert snapshot(rdb) == before


# --- reversal ----------------------------------------------------------------------------------------


def _own_plus_helper_settled(stub):
    patient = employee(stub, 3_000)
    helper = employee(stub, 50_000)
    bind(stub, helper, patient, cpb.RELATION_SPOUSE)
    res = settle(stub, patient, 10_000)
    check(res, 10_000, (3_000, 0, 7_000, 0, helper, "", "WALLET_NOT_OPENED"), balance_after=0,
          helper_balance_after=43_000)
    return patient, helper, res


def test_reversal_returns_every_fen_to_its_source(hebei, rdb):
    stub = hebei.stub
    patient, helper, res = _own_plus_helper_settled(stub)
    sid = res.settlement_id
    assert sid
    rev = reverse(stub, sid, "rev-0001")
    assert (rev.settlement_id, rev.reversal_id) == (sid, "rev-0001")
    assert (rev.acct_refund_fen, rev.wallet_refund_fen, rev.mulaid_refund_fen) == (3_000, 0, 7_000)
    assert rev.helper_id_number == helper
    assert (rev.balance_after_fen, rev.helper_balance_after_fen) == (3_000, 50_000)
    assert rev.reversed_at_unix_ms == hebei.clock.now_ms()
    assert_balance(stub, patient, 3_000)
    assert_balance(stub, helper, 50_000)
    assert total_balances(rdb) == 53_000

    assert entries(stub, patient)[1:] == [("SETTLE_OWN", -3_000, 0, sid), ("REVERSE_OWN", 3_000, 3_000, sid)]
    assert entries(stub, helper)[1:] == [("SETTLE_HELPER", -7_000, 43_000, sid),
                                         ("REVERSE_HELPER", 7_000, 50_000, sid)]
    acct = account(stub, patient)
    assert (acct.credited_total_fen, acct.debited_total_fen) == (6_000, 3_000)
    hacct = account(stub, helper)
    assert (hacct.credited_total_fen, hacct.debited_total_fen) == (57_000, 7_000)
    assert [e.seq for e in reversed(hacct.entries)] == [1, 2, 3]

    got = stub.GetSettlement(pb.GetSettlementRequest(settlement_id=sid)).result
    assert got.state == "REVERSED"
    assert split(got) == split(res)


def test_reversal_twice_with_other_request_id_already_reversed(hebei):
    stub = hebei.stub
    patient, helper, res = _own_plus_helper_settled(stub)
    first = reverse(stub, res.settlement_id, "rev-first")
    ledgers = (entries(stub, patient), entries(stub, helper))
    with pytest.raises(grpc.RpcError) as exc:
        reverse(stub, res.settlement_id, "rev-second")
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(exc.value) == "ALREADY_REVERSED"
    assert_balance(stub, patient, 3_000)
    assert_balance(stub, helper, 50_000)
    assert (entries(stub, patient), entries(stub, helper)) == ledgers
    # The first reversal id still replays its own answer.
    assert reverse(stub, res.settlement_id, "rev-first") == first


def test_reversal_replay_same_request_id_identical_answer(hebei):
    stub = hebei.stub
    patient, helper, res = _own_plus_helper_settled(stub)
    first = reverse(stub, res.settlement_id, "rev-replay")
    hebei.clock.advance(60_000)
    credit(stub, patient, 1_000)  # balances move after the reversal: the replay still answers as before
    again = reverse(stub, res.settlement_id, "rev-replay")
    assert again == first
    assert (again.acct_refund_fen, again.mulaid_refund_fen, again.balance_after_fen) == (3_000, 7_000, 3_000)
    assert_balance(stub, patient, 4_000)
    assert_balance(stub, helper, 50_000)
    assert [k for k, *_ in entries(stub, helper)].count("REVERSE_HELPER") == 1
    assert [k for k, *_ in entries(stub, patient)].count("REVERSE_OWN") == 1


def test_reverse_unknown_settlement_not_found(hebei):
    stub = hebei.stub
    patient = employee(stub, 5_000)
    with pytest.raises(grpc.RpcError) as exc:
        reverse(stub, "no-such-settlement")
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    assert reason(exc.value) == "SETTLEMENT_NOT_FOUND"
    # A request id that is not a settlement (here, a credit) is not a settlement either.
    cred = stub.CreditAccount(pb.CreditAccountRequest(request_id="credit-x", id_number=patient, amount_fen=1,
                                                      kind=pb.CREDIT_KIND_ADJUSTMENT))
    assert cred.balance_fen == 5_001
    with pytest.raises(grpc.RpcError) as exc:
        reverse(stub, "credit-x")
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    assert reason(exc.value) == "SETTLEMENT_NOT_FOUND"
    assert_balance(stub, patient, 5_001)
    with pytest.raises(grpc.RpcError) as exc:
        stub.GetSettlement(pb.GetSettlementRequest(settlement_id="no-such-settlement"))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND


def test_reversal_of_resident_member_helper_only(hebei):
    stub = hebei.stub
    child = resident(stub)
    parent = employee(stub, 9_000)
    bind(stub, parent, child)
    res = settle(stub, child, 9_000)
    check(res, 9_000, (0, 0, 9_000, 0, parent, "", "WALLET_NOT_OPENED"), balance_after=0, helper_balance_after=0)
    rev = reverse(stub, res.settlement_id)
    assert (rev.acct_refund_fen, rev.mulaid_refund_fen, rev.helper_balance_after_fen) == (0, 9_000, 9_000)
    assert_balance(stub, parent, 9_000)
    assert balance(stub, child) == 0


def test_reversal_of_cash_only_settlement_moves_nothing(hebei, rdb):
    stub = hebei.stub
    patient = employee(stub, 5_000)
    res = settle(stub, patient, 2_000, use_account=False)
    rev = reverse(stub, res.settlement_id)
    assert (rev.acct_refund_fen, rev.wallet_refund_fen, rev.mulaid_refund_fen) == (0, 0, 0)
    assert rev.balance_after_fen == 5_000
    assert_balance(stub, patient, 5_000)
    assert [e[0] for e in entries(stub, patient)] == ["CREDIT_MONTHLY_CONTRIBUTION"]
    got = stub.GetSettlement(pb.GetSettlementRequest(settlement_id=res.settlement_id)).result
    assert got.state == "REVERSED"


# --- consumption records --------------------------------------------------------------------------


def test_consumption_records_for_helper_and_member(hebei):
    stub = hebei.stub
    patient, helper, res = _own_plus_helper_settled(stub)
    sid = res.settlement_id
    [hrec] = consumption(stub, helper)
    [mrec] = consumption(stub, patient)
    for rec, role in ((hrec, "HELPER"), (mrec, "MEMBER")):
        assert rec.settlement_id == sid and rec.role == role
        assert (rec.helper_id_number, rec.member_id_number) == (helper, patient)
        assert rec.mulaid_pay_fen == 7_000
        assert rec.category == cpb.CATEGORY_OUTPATIENT
        assert rec.institution_code == "H13010100001"
        assert rec.at_unix_ms == res.settled_at_unix_ms
        assert rec.state == "SETTLED"
    reverse(stub, sid)
    [hrec2] = consumption(stub, helper)
    [mrec2] = consumption(stub, patient)
    assert (hrec2.role, hrec2.state, hrec2.mulaid_pay_fen) == ("HELPER", "REVERSED", 7_000)
    assert (mrec2.role, mrec2.state, mrec2.mulaid_pay_fen) == ("MEMBER", "REVERSED", 7_000)


def test_no_consumption_record_without_mutual_aid(hebei):
    stub = hebei.stub
    patient = employee(stub, 50_000)
    helper = employee(stub, 6_000)
    bind(stub, helper, patient, cpb.RELATION_SPOUSE)
    settle(stub, patient, 5_000)                   # own account covers
    settle(stub, patient, 60_000)                  # helper insufficient
    settle(stub, patient, 1_000, use_account=False)  # cash only
    assert consumption(stub, patient) == []
    assert consumption(stub, helper) == []
    assert_balance(stub, helper, 6_000)


def test_consumption_records_newest_first_across_settlements(hebei):
    stub = hebei.stub
    member = resident(stub)
    helper = employee(stub, 30_000)
    bind(stub, helper, member)
    r1 = settle(stub, member, 1_000, request_id="c-1")
    hebei.clock.advance(1_000)
    r2 = settle(stub, member, 2_000, request_id="c-2", category=cpb.CATEGORY_PHARMACY)
    assert [(c.settlement_id, c.mulaid_pay_fen) for c in consumption(stub, helper)] == [("c-2", 2_000),
                                                                                       ("c-1", 1_000)]
    assert [(c.settlement_id, c.role) for c in consumption(stub, member)] == [("c-2", "MEMBER"), ("c-1", "MEMBER")]
    assert r2.settled_at_unix_ms - r1.settled_at_unix_ms == 1_000
    assert_balance(stub, helper, 27_000)


def test_consumption_records_of_a_period_beyond_the_newest(hebei):
    """A window (since, until) lists the newest `limit` records inside it, however many are newer."""
    stub = hebei.stub
    member = resident(stub)
    helper = employee(stub, 100_000)
    bind(stub, helper, member)
    october = hebei.clock.now_ms()
    for i in range(3):
        settle(stub, member, 1_000 + i, request_id=f"oct-{i}")
        hebei.clock.advance(1_000)
    november = hebei.clock.now_ms() + 30 * 86_400_000
    hebei.clock.set(november)
    for i in range(4):
        settle(stub, member, 2_000 + i, request_id=f"nov-{i}")
        hebei.clock.advance(1_000)

    def listed(who: str, limit: int, since: int = 0, until: int = 0) -> list[str]:
        return [c.settlement_id for c in stub.ListConsumptionRecords(pb.ListConsumptionRecordsRequest(
            id_number=who, limit=limit, since_unix_ms=since, until_unix_ms=until)).records]

    assert listed(member, 2) == ["nov-3", "nov-2"]  # the newest, as before
    assert listed(member, 2, october, november) == ["oct-2", "oct-1"]
    assert listed(helper, 10, october, november) == ["oct-2", "oct-1", "oct-0"]
    assert listed(member, 10, november) == ["nov-3", "nov-2", "nov-1", "nov-0"]
    assert listed(member, 10, 0, october + 1) == ["oct-0"]
    assert listed(member, 10, november + 60_000) == []
    for since, until in ((november, october), (november, november), (-1, 0), (0, -5)):
        with pytest.raises(grpc.RpcError) as err:
            listed(member, 10, since, until)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and reason(err.value) == "INVALID_TIME_RANGE"


# --- idempotency of settlement ---------------------------------------------------------------------


def test_settlement_replay_same_request_id_identical_and_debited_once(hebei, rdb):
    stub = hebei.stub
    patient, helper, res = _own_plus_helper_settled(stub)
    req = settle_request(patient, 10_000, request_id=res.settlement_id)
    credit(stub, patient, 1_000)  # the state moved: a replay must still return the first answer
    hebei.clock.advance(5_000)
    again = stub.Settle(req).result
    assert again == res
    assert_balance(stub, patient, 1_000)
    assert_balance(stub, helper, 43_000)
    assert [k for k, *_ in entries(stub, patient)].count("SETTLE_OWN") == 1
    assert [k for k, *_ in entries(stub, helper)].count("SETTLE_HELPER") == 1
    assert len(consumption(stub, helper)) == 1 and len(consumption(stub, patient)) == 1
    assert total_balances(rdb) == 44_000


def test_settlement_same_request_id_different_amount_rejected(hebei, rdb):
    stub = hebei.stub
    patient, helper, res = _own_plus_helper_settled(stub)
    before = snapshot(rdb)
    for changed in (
        settle_request(patient, 10_001, request_id=res.settlement_id),
        settle_request(patient, 10_000, request_id=res.settlement_id, use_account=False),
        settle_request(patient, 10_000, request_id=res.settlement_id, category=cpb.CATEGORY_PHARMACY),
    ):
        with pytest.raises(grpc.RpcError) as exc:
            stub.Settle(changed)
        assert exc.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert reason(exc.value) == "IDEMPOTENCY_KEY_REUSED"
    assert snapshot(rdb) == before
    assert_balance(stub, patient, 0)
    assert_balance(stub, helper, 43_000)


def test_replayed_settlement_after_reversal_is_not_applied_again(hebei):
    stub = hebei.stub
    patient, helper, res = _own_plus_helper_settled(stub)
    reverse(stub, res.settlement_id)
    again = stub.Settle(settle_request(patient, 10_000, request_id=res.settlement_id)).result
    assert again == res
    assert_balance(stub, patient, 3_000)
    assert_balance(stub, helper, 50_000)
