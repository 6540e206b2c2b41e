"""SPEC §4 payment waterfall as pure rules: `rules.plan_settlement`, `choose_helper`, `check_category`,
and the family-account step (`rules.family_step`, SPEC §3b).

No Redis, no gRPC: every case of the waterfall, one test each, with exact splits.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from medaid.common.errors import DomainError
from medaid.registry import rules
from medaid.registry.policy import ALWAYS_PAYABLE, NEVER_PAYABLE, Policy, find_policy_file, load
from medaid.registry.rules import HelperCandidate, Plan, choose_helper, plan_settlement

HEBEI = load(find_policy_file("13"))
BEIJING = load(find_policy_file("11"))
BINDING_ORDER = dataclasses.replace(HEBEI, helper_selection="FILING_ORDER")
PARTIAL = dataclasses.replace(HEBEI, helper_partial=True)

PATIENT_RESIDENT = {"has_own_account": False, "own_balance": 0}


def h(pid: str, balance: int, seq: int, active: bool = True) -> HelperCandidate:
    return HelperCandidate(id_number=pid, balance=balance, seq=seq, active=active)


def plan(policy: Policy = HEBEI, *, amount: int, use_account: bool = True, own_balance: int = 0,
         has_own_account: bool = True, wallet_balance: int | None = None,
         helpers: list[HelperCandidate] | None = None, proxy_only: bool = False) -> Plan:
    p = plan_settlement(policy, amount=amount, use_account=use_account, own_balance=own_balance,
                        has_own_account=has_own_account, wallet_balance=wallet_balance,
                        helpers=helpers or [], proxy_only=proxy_only)
    assert p.acct_pay + p.wallet_pay + p.mulaid_pay + p.cash_pay == amount
    assert min(p.acct_pay, p.wallet_pay, p.mulaid_pay, p.cash_pay) >= 0
    return p


def split(p: Plan) -> tuple[int, int, int, int, str, str, str]:
    return (p.acct_pay, p.wallet_pay, p.mulaid_pay, p.cash_pay, p.helper_id, p.helper_reason, p.wallet_reason)


# --- the policies the unit tests rely on ------------------------------------------------------


def test_policy_defaults_are_the_spec_defaults():
    assert (HEBEI.helper_selection, HEBEI.helpers_in_turn, HEBEI.helper_partial) == ("LARGEST_BALANCE", False, False)
    # 北京 uses its helpers' accounts in 备案 order, each in turn (SPEC §4).
    assert (BEIJING.helper_selection, BEIJING.helpers_in_turn, BEIJING.helper_partial) == ("FILING_ORDER", True,
                                                                                            False)
    assert "CHECKUP" in HEBEI.payable_categories
    assert "CHECKUP" not in BEIJING.payable_categories


# --- 1. own personal account ---------------------------------------------------------------------


def test_own_account_only_pays_everything():
    p = plan(amount=12_000, own_balance=50_000, helpers=[h("H1", 90_000, 1)])
    # 本人个人账户优先: a richer bound helper is not touched and the wallet is never asked.
    assert split(p) == (12_000, 0, 0, 0, "", "", "")


def test_own_account_exactly_equal_to_amount():
    p = plan(amount=12_000, own_balance=12_000, helpers=[h("H1", 0, 1)])
    assert split(p) == (12_000, 0, 0, 0, "", "", "")


def test_own_account_partial_without_helpers_rest_is_cash():
    p = plan(amount=12_000, own_balance=2_000)
    assert split(p) == (2_000, 0, 0, 10_000, "", "", "WALLET_NOT_OPENED")


def test_patient_without_personal_account_pays_nothing_from_own():
    # A resident has no account: even a (bogus) balance is not used.
    p = plan(amount=5_000, own_balance=7_000, has_own_account=False)
    assert split(p) == (0, 0, 0, 5_000, "", "", "WALLET_NOT_OPENED")


# --- 3. one helper, all or nothing ------------------------------------------------------------


def test_own_plus_helper_pays_the_rest_in_full():
    p = plan(amount=12_000, own_balance=3_000, helpers=[h("H1", 9_000, 1)])
    assert split(p) == (3_000, 0, 9_000, 0, "H1", "", "WALLET_NOT_OPENED")


def test_resident_member_helper_pays_everything():
    p = plan(amount=12_000, **PATIENT_RESIDENT, helpers=[h("H1", 50_000, 1)])
    assert split(p) == (0, 0, 12_000, 0, "H1", "", "WALLET_NOT_OPENED")


def test_richest_helper_chosen_among_several():
    helpers = [h("H1", 5_000, 1), h("H2", 30_000, 2), h("H3", 12_000, 3)]
    p = plan(amount=10_000, **PATIENT_RESIDENT, helpers=helpers)
    # H3 would also cover 10 000, but the policy is LARGEST_BALANCE.
    assert split(p) == (0, 0, 10_000, 0, "H2", "", "WALLET_NOT_OPENED")
    assert choose_helper(HEBEI, helpers) == helpers[1]


def test_richest_helper_tie_goes_to_earlier_binding():
    # List order and id order both disagree with binding order: only `seq` may decide.
    helpers = [h("A-late", 20_000, 7), h("Z-early", 20_000, 3), h("M-poor", 1_000, 1)]
    assert choose_helper(HEBEI, helpers).id_number == "Z-early"
    p = plan(amount=15_000, **PATIENT_RESIDENT, helpers=helpers)
    assert split(p) == (0, 0, 15_000, 0, "Z-early", "", "WALLET_NOT_OPENED")


def test_binding_order_policy_picks_first_bound_active_helper():
    helpers = [h("H-rich", 90_000, 5), h("H-second", 11_000, 2), h("H-first-suspended", 50_000, 1, active=False)]
    assert choose_helper(BINDING_ORDER, helpers).id_number == "H-second"
    p = plan(BINDING_ORDER, amount=10_000, **PATIENT_RESIDENT, helpers=helpers)
    assert split(p) == (0, 0, 10_000, 0, "H-second", "", "WALLET_NOT_OPENED")


def test_binding_order_first_helper_insufficient_no_fallback_to_richer():
    helpers = [h("H-rich", 90_000, 5), h("H-first", 4_000, 2)]
    p = plan(BINDING_ORDER, amount=10_000, **PATIENT_RESIDENT, helpers=helpers)
    assert split(p) == (0, 0, 0, 10_000, "", "HELPER_INSUFFICIENT", "WALLET_NOT_OPENED")


def test_richest_helper_insufficient_no_pooling_from_several():
    helpers = [h("H1", 6_000, 1), h("H2", 7_000, 2), h("H3", 5_000, 3)]  # sum 18 000 would cover
    p = plan(amount=12_000, own_balance=2_000, helpers=helpers)
    assert split(p) == (2_000, 0, 0, 10_000, "", "HELPER_INSUFFICIENT", "WALLET_NOT_OPENED")


def test_richest_helper_one_fen_short_pays_nothing():
    p = plan(amount=10_000, **PATIENT_RESIDENT, helpers=[h("H1", 9_999, 1)])
    assert split(p) == (0, 0, 0, 10_000, "", "HELPER_INSUFFICIENT", "WALLET_NOT_OPENED")


def test_helper_zero_balance():
    p = plan(amount=10_000, **PATIENT_RESIDENT, helpers=[h("H1", 0, 1)])
    assert split(p) == (0, 0, 0, 10_000, "", "HELPER_ZERO_BALANCE", "WALLET_NOT_OPENED")


def test_all_helpers_zero_balance():
    p = plan(amount=10_000, own_balance=1_000, helpers=[h("H1", 0, 1), h("H2", 0, 2)])
    assert split(p) == (1_000, 0, 0, 9_000, "", "HELPER_ZERO_BALANCE", "WALLET_NOT_OPENED")


def test_proxy_only_reason_when_no_mutual_aid_binding():
    p = plan(amount=10_000, **PATIENT_RESIDENT, proxy_only=True)
    assert split(p) == (0, 0, 0, 10_000, "", "PROXY_ONLY", "WALLET_NOT_OPENED")


def test_no_binding_at_all_has_no_helper_reason():
    p = plan(amount=10_000, **PATIENT_RESIDENT)
    assert split(p) == (0, 0, 0, 10_000, "", "", "WALLET_NOT_OPENED")


def test_suspended_helper_no_active_helper():
    p = plan(amount=10_000, **PATIENT_RESIDENT, helpers=[h("H1", 50_000, 1, active=False)])
    assert split(p) == (0, 0, 0, 10_000, "", "NO_ACTIVE_HELPER", "WALLET_NOT_OPENED")
    assert choose_helper(HEBEI, [h("H1", 50_000, 1, active=False)]) is None


def test_suspended_richest_helper_is_skipped_for_an_active_one():
    helpers = [h("H-suspended", 90_000, 1, active=False), h("H-active", 20_000, 2)]
    p = plan(amount=10_000, **PATIENT_RESIDENT, helpers=helpers)
    assert split(p) == (0, 0, 10_000, 0, "H-active", "", "WALLET_NOT_OPENED")


# --- use_account (acct_used_flag) ---------------------------------------------------------------


def test_use_account_false_all_cash_account_not_used_when_helpers_bound():
    p = plan(amount=10_000, use_account=False, own_balance=50_000, wallet_balance=50_000,
             helpers=[h("H1", 50_000, 1)])
    assert split(p) == (0, 0, 0, 10_000, "", "ACCOUNT_NOT_USED", "")


def test_use_account_false_without_helpers_has_no_reason():
    p = plan(amount=10_000, use_account=False, own_balance=50_000)
    assert split(p) == (0, 0, 0, 10_000, "", "", "")


# --- 2. own wallet (the seam) -------------------------------------------------------------------


def test_wallet_not_opened_is_reported_when_the_wallet_step_is_reached():
    p = plan(amount=10_000, own_balance=4_000, wallet_balance=None, helpers=[h("H1", 50_000, 1)])
    assert split(p) == (4_000, 0, 6_000, 0, "H1", "", "WALLET_NOT_OPENED")


def test_wallet_step_pays_before_helper_when_a_wallet_is_open():
    p = plan(amount=10_000, own_balance=4_000, wallet_balance=2_500, helpers=[h("H1", 50_000, 1)])
    assert split(p) == (4_000, 2_500, 3_500, 0, "H1", "", "WALLET_INSUFFICIENT")


def test_wallet_covers_the_rest_helper_untouched():
    p = plan(amount=10_000, own_balance=4_000, wallet_balance=8_000, helpers=[h("H1", 50_000, 1)])
    assert split(p) == (4_000, 6_000, 0, 0, "", "", "")


def test_wallet_zero_balance_reason():
    p = plan(amount=10_000, **PATIENT_RESIDENT, wallet_balance=0)
    assert split(p) == (0, 0, 0, 10_000, "", "", "WALLET_ZERO_BALANCE")


# --- helper_partial policy knob -----------------------------------------------------------------


def test_helper_partial_policy_lets_richest_helper_pay_part():
    helpers = [h("H1", 3_000, 1), h("H2", 7_000, 2)]
    p = plan(PARTIAL, amount=12_000, own_balance=2_000, helpers=helpers)
    # Still one helper only (the richest), never pooled with H1.
    assert split(p) == (2_000, 0, 7_000, 3_000, "H2", "HELPER_INSUFFICIENT", "WALLET_NOT_OPENED")


def test_helper_partial_policy_still_pays_in_full_when_covered():
    p = plan(PARTIAL, amount=12_000, own_balance=2_000, helpers=[h("H1", 30_000, 1)])
    assert split(p) == (2_000, 0, 10_000, 0, "H1", "", "WALLET_NOT_OPENED")


def test_helper_partial_policy_zero_balance_still_pays_nothing():
    p = plan(PARTIAL, amount=12_000, **PATIENT_RESIDENT, helpers=[h("H1", 0, 1)])
    assert split(p) == (0, 0, 0, 12_000, "", "HELPER_ZERO_BALANCE", "WALLET_NOT_OPENED")


# --- categories ---------------------------------------------------------------------------------


@pytest.mark.parametrize("category", sorted(NEVER_PAYABLE))
@pytest.mark.parametrize("policy", [HEBEI, BEIJING, dataclasses.replace(HEBEI, payable_categories=ALWAYS_PAYABLE)],
                         ids=["13", "11", "13-standard"])
def test_categories_never_payable(policy, category):
    with pytest.raises(DomainError) as exc:
        rules.check_category(policy, category)
    assert exc.value.reason == "CATEGORY_NOT_PAYABLE"


@pytest.mark.parametrize("category", sorted(ALWAYS_PAYABLE))
def test_standard_categories_payable_everywhere(category):
    for policy in (HEBEI, BEIJING):
        rules.check_category(policy, category)


def test_checkup_payable_in_hebei_not_in_beijing():
    rules.check_category(HEBEI, "CHECKUP")
    with pytest.raises(DomainError) as exc:
        rules.check_category(BEIJING, "CHECKUP")
    assert exc.value.reason == "CATEGORY_NOT_PAYABLE"
    with pytest.raises(DomainError):
        rules.check_category(HEBEI, "VACCINE")  # not in 河北's list either


def test_a_policy_cannot_make_never_payable_categories_payable():
    from medaid.registry.policy import PolicyError

    with pytest.raises(PolicyError):
        dataclasses.replace(HEBEI, payable_categories=ALWAYS_PAYABLE | {"FITNESS"})


# --- the invariant --------------------------------------------------------------------------------


def test_plan_refuses_a_split_that_does_not_add_up():
    with pytest.raises(AssertionError):
        Plan(amount=100, acct_pay=50, wallet_pay=0, charges=(), cash_pay=49, helper_reason="", wallet_reason="")
    with pytest.raises(AssertionError):
        Plan(amount=100, acct_pay=150, wallet_pay=0, charges=(), cash_pay=-50, helper_reason="", wallet_reason="")
    with pytest.raises(AssertionError):  # a charge of nothing is no charge
        Plan(amount=100, acct_pay=100, wallet_pay=0, charges=(rules.Charge("H", 0),), cash_pay=0,
             helper_reason="", wallet_reason="")


helper_st = st.lists(
    st.tuples(st.integers(0, 100_000), st.booleans()), max_size=6
).map(lambda rows: [h(f"H{i}", bal, i + 1, active) for i, (bal, active) in enumerate(rows)])


@settings(max_examples=300, deadline=None)
@given(
    amount=st.integers(1, 200_000),
    use_account=st.booleans(),
    own=st.integers(0, 100_000),
    has_account=st.booleans(),
    wallet=st.one_of(st.none(), st.integers(0, 50_000)),
    helpers=helper_st,
    proxy=st.booleans(),
    partial=st.booleans(),
    order=st.booleans(),
)
def test_waterfall_properties(amount, use_account, own, has_account, wallet, helpers, proxy, partial, order):
    policy = dataclasses.replace(HEBEI, helper_partial=partial,
                                 helper_selection="FILING_ORDER" if order else "LARGEST_BALANCE")
    p = plan(policy, amount=amount, use_account=use_account, own_balance=own, has_own_account=has_account,
             wallet_balance=wallet, helpers=helpers, proxy_only=proxy)
    if not use_account:
        assert (p.acct_pay, p.wallet_pay, p.mulaid_pay, p.cash_pay) == (0, 0, 0, amount)
        return
    # Own account first, and as much as it can.
    assert p.acct_pay == (min(own, amount) if has_account else 0)
    # Wallet next, as much as it can.
    assert p.wallet_pay == min(wallet or 0, amount - p.acct_pay)
    remaining = amount - p.acct_pay - p.wallet_pay
    active = [x for x in helpers if x.active]
    if p.mulaid_pay:
        chosen = next(x for x in helpers if x.id_number == p.helper_id)
        assert chosen.active and p.mulaid_pay <= chosen.balance
        if order:
            assert chosen.seq == min(x.seq for x in active)
        else:
            assert chosen.balance == max(x.balance for x in active)
        if not partial:
            assert p.mulaid_pay == remaining  # all or nothing
    else:
        assert p.helper_id == ""
    # Never more than one helper's balance, so never pooled.
    if active and remaining > 0:
        best = choose_helper(policy, helpers)
        assert best is not None
        assert p.mulaid_pay <= best.balance
        if best.balance >= remaining:
            assert p.mulaid_pay == remaining and p.cash_pay == 0


# --- helper modes (SPEC §4): 备案 order, helpers in turn --------------------------------------------

IN_TURN = dataclasses.replace(HEBEI, helper_selection="FILING_ORDER", helpers_in_turn=True)
IN_TURN_LARGEST = dataclasses.replace(HEBEI, helpers_in_turn=True)


def charges(p: Plan) -> list[tuple[str, int]]:
    return [(c.helper_id, c.amount) for c in p.charges]


def test_helpers_in_turn_each_pays_what_it_can_in_filing_order():
    helpers = [h("H1", 3_000, 1), h("H2", 10_000, 2), h("H3", 50_000, 3)]
    p = plan(IN_TURN, amount=20_000, **PATIENT_RESIDENT, helpers=helpers)
    assert charges(p) == [("H1", 3_000), ("H2", 10_000), ("H3", 7_000)]
    assert (p.mulaid_pay, p.cash_pay, p.helper_reason, p.helper_id) == (20_000, 0, "", "H1")


def test_helpers_in_turn_stop_once_the_bill_is_covered():
    helpers = [h("H1", 30_000, 1), h("H2", 10_000, 2)]
    p = plan(IN_TURN, amount=20_000, **PATIENT_RESIDENT, helpers=helpers)
    assert charges(p) == [("H1", 20_000)]


def test_helpers_in_turn_not_covering_leave_the_rest_to_cash():
    helpers = [h("H1", 3_000, 1), h("H2", 0, 2), h("H3", 4_000, 3, active=False)]
    p = plan(IN_TURN, amount=20_000, **PATIENT_RESIDENT, helpers=helpers)
    assert charges(p) == [("H1", 3_000)]  # H2 holds nothing, H3 is not ACTIVE
    assert (p.cash_pay, p.helper_reason) == (17_000, "HELPER_INSUFFICIENT")


def test_helpers_in_turn_all_empty_is_zero_balance():
    p = plan(IN_TURN, amount=1_000, **PATIENT_RESIDENT, helpers=[h("H1", 0, 1), h("H2", 0, 2)])
    assert (charges(p), p.cash_pay, p.helper_reason) == ([], 1_000, "HELPER_ZERO_BALANCE")


def test_helpers_in_turn_by_largest_balance_take_the_richest_first():
    helpers = [h("H1", 3_000, 1), h("H2", 10_000, 2), h("H3", 5_000, 3)]
    p = plan(IN_TURN_LARGEST, amount=14_000, **PATIENT_RESIDENT, helpers=helpers)
    assert charges(p) == [("H2", 10_000), ("H3", 4_000)]


def test_filing_order_without_turns_uses_the_first_filed_helper_only():
    helpers = [h("H1", 3_000, 1), h("H2", 50_000, 2)]
    p = plan(BINDING_ORDER, amount=10_000, **PATIENT_RESIDENT, helpers=helpers)
    assert (charges(p), p.cash_pay, p.helper_reason) == ([], 10_000, "HELPER_INSUFFICIENT")


def test_older_policy_files_binding_order_reads_as_filing_order():
    assert dataclasses.replace(HEBEI, helper_selection="BINDING_ORDER").helper_selection == "FILING_ORDER"


@settings(max_examples=300, deadline=None)
@given(amount=st.integers(1, 200_000), own=st.integers(0, 100_000), wallet=st.one_of(st.none(), st.integers(0, 50_000)),
       helpers=helper_st, largest=st.booleans())
def test_helpers_in_turn_properties(amount, own, wallet, helpers, largest):
    policy = IN_TURN_LARGEST if largest else IN_TURN
    p = plan(policy, amount=amount, own_balance=own, wallet_balance=wallet, helpers=helpers)
    remaining = amount - p.acct_pay - p.wallet_pay
    by_id = {x.id_number: x for x in helpers}
    # Each charged helper is ACTIVE, pays at most their balance, appears once, in the policy's order.
    assert len({c.helper_id for c in p.charges}) == len(p.charges)
    order = [x.id_number for x in rules.helper_order(policy, helpers)]
    assert [c.helper_id for c in p.charges] == [i for i in order if i in {c.helper_id for c in p.charges}]
    for c in p.charges:
        assert by_id[c.helper_id].active and 0 < c.amount <= by_id[c.helper_id].balance
    # Exactly min(remaining, what the ACTIVE helpers hold) is paid by helpers.
    held = sum(max(x.balance, 0) for x in helpers if x.active)
    assert p.mulaid_pay == min(remaining, held)
    assert p.cash_pay == remaining - p.mulaid_pay


# --- the family-account step (SPEC §3b, POOLED_ACCOUNT) --------------------------------------------

GANSU = load(find_policy_file("62"))


def fam(*lots: tuple[int, str, int], active: bool = True, temporary: bool = False) -> rules.FamilyView:
    return rules.FamilyView("F1", active, temporary, tuple(rules.Lot(seq, c, amount) for seq, c, amount in lots))


def test_family_step_takes_lots_oldest_first_whatever_order_they_are_read_in():
    takes, why = rules.family_step(GANSU, 900, fam((7, "B", 500), (3, "A", 300), (9, "A", 400)), "OUTPATIENT")
    assert [(t.seq, t.contributor, t.remaining, t.amount) for t in takes] == [(3, "A", 300, 300), (7, "B", 500, 500),
                                                                            (9, "A", 400, 100)]
    assert why == ""
    assert rules.by_contributor(takes) == (rules.Charge("A", 400), rules.Charge("B", 500))


def test_family_step_pays_what_the_account_holds_and_says_why_not_all():
    takes, why = rules.family_step(GANSU, 1_000, fam((1, "A", 300), (2, "B", 200)), "OUTPATIENT")
    assert (sum(t.amount for t in takes), why) == (500, "FAMILY_INSUFFICIENT")


@pytest.mark.parametrize("view, category, why", [
    (None, "OUTPATIENT", ""),
    (fam((1, "A", 300), active=False), "OUTPATIENT", "NOT_FAMILY_MEMBER"),
    (fam((1, "A", 300), temporary=True), "OUTPATIENT", "TEMPORARY_MEMBER"),
    (fam(), "OUTPATIENT", "FAMILY_ZERO_BALANCE"),
])
def test_family_step_takes_nothing_and_says_why(view, category, why):
    assert rules.family_step(GANSU, 100, view, category) == ((), why)


def test_a_family_account_pays_nothing_for_a_member_of_another_region_where_the_province_forbids_it():
    """SPEC §3b `cross_region_allowed = false`: the creator's and the member's 统筹区 part them."""
    apart = dataclasses.replace(fam((1, "A", 300)), creator_region="620100", member_region="620500")
    closed = dataclasses.replace(GANSU, cross_region_allowed=False)
    assert rules.family_step(closed, 100, apart, "OUTPATIENT") == ((), "DIFFERENT_POOLING_REGION")
    assert not rules.family_may_pay(closed, apart) and rules.family_may_pay(GANSU, apart)
    assert rules.by_contributor(rules.family_step(GANSU, 100, apart, "OUTPATIENT")[0]) == (rules.Charge("A", 100),)


def test_a_temporary_member_may_pay_their_resident_premium():
    takes, why = rules.family_step(GANSU, 100, fam((1, "A", 300), temporary=True), "RESIDENT_PREMIUM")
    assert (rules.by_contributor(takes), why) == ((rules.Charge("A", 100),), "")


def test_the_plan_carries_the_lots_its_family_charges_come_from():
    p = plan_settlement(GANSU, amount=1_000, use_account=True, own_balance=200, has_own_account=True,
                        wallet_balance=None, helpers=[], proxy_only=False, category="OUTPATIENT",
                        family=fam((2, "B", 500), (1, "A", 100)))
    assert (p.acct_pay, p.mulaid_pay, p.cash_pay) == (200, 600, 200)
    assert (p.helper_reason, p.family_id) == ("FAMILY_INSUFFICIENT", "F1")
    assert p.charges == rules.by_contributor(p.lot_takes) == (rules.Charge("A", 100), rules.Charge("B", 500))


@given(lots=st.lists(st.tuples(st.integers(0, 50), st.sampled_from("ABC"), st.integers(0, 1_000)), max_size=8,
                     unique_by=lambda x: x[0]),
       amount=st.integers(1, 5_000))
def test_family_step_properties(lots, amount):
    view = fam(*lots)
    takes, why = rules.family_step(GANSU, amount, view, "OUTPATIENT")
    paid = sum(t.amount for t in takes)
    assert paid == (min(amount, view.balance) if view.balance > 0 else 0)
    assert why == ("FAMILY_ZERO_BALANCE" if view.balance <= 0 else "" if paid == amount else "FAMILY_INSUFFICIENT")
    assert [t.seq for t in takes] == sorted(t.seq for t in takes)
    held = {seq: (c, a) for seq, c, a in lots}
    for i, t in enumerate(takes):
        assert (t.contributor, t.remaining) == held[t.seq] and 0 < t.amount <= t.remaining
        assert t.amount == t.remaining or i == len(takes) - 1  # only the last lot is taken in part
    # every lot older than the last one taken from, that held money, was emptied
    if takes:
        assert all(seq in {t.seq for t in takes} for seq, _, a in lots if a > 0 and seq < takes[-1].seq)
    assert sum(c.amount for c in rules.by_contributor(takes)) == paid


@pytest.mark.parametrize("policy", [HEBEI, BEIJING, PARTIAL], ids=["largest", "in-turn", "partial"])
def test_no_cross_region_passes_a_helper_of_another_region_over_as_diagnose_says(policy):
    """SPEC §3 `cross_region_allowed = false`: a helper of another 统筹区 (a binding filed while the
    province allowed it) pays nothing, the one rule `regions_apart` that Diagnose asks too."""
    closed = dataclasses.replace(policy, cross_region_allowed=False)
    far = HelperCandidate("FAR", 90_000, 1, True, region="130100")
    near = HelperCandidate("NEAR", 5_000, 2, True, region="130200")

    def split(p: Policy, helpers: list[HelperCandidate]) -> tuple[list[tuple[str, int]], str]:
        pl = plan_settlement(p, amount=4_000, use_account=True, own_balance=0, has_own_account=False,
                             wallet_balance=None, helpers=helpers, proxy_only=False, region="130200")
        return [(c.helper_id, c.amount) for c in pl.charges], pl.helper_reason

    assert split(closed, [far]) == ([], "DIFFERENT_POOLING_REGION")
    assert split(closed, [far, near]) == ([("NEAR", 4_000)], "")
    assert split(policy, [far, near])[0][0][0] == "FAR"  # allowed: the far helper pays as before
    finding = rules.diagnose(closed, member=rules.PersonView("M", "RESIDENT", 0, "ACTIVE", "130200", "13"),
                             helper=rules.PersonView("FAR", "EMPLOYEE", 0, "ACTIVE", "130100", "13", balance=90_000),
                             mutual_aid_bound=True, proxy_bound=False, category="", member_insured_admdvs="")
    assert [f.code for f in finding] == ["DIFFERENT_POOLING_REGION"]
