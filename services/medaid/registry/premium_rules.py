"""Pure rules of 代缴 (SPEC §4b): paying a near-kin's 城乡居民医保 contribution. No Redis, no gRPC."""

from __future__ import annotations

import calendar
import datetime as _dt

from medaid.common import errors
from medaid.common.clock import SHANGHAI
from medaid.common.errors import DomainError
from medaid.registry import family_rules, rules
from medaid.registry.policy import Policy

SOURCES = ("ACCOUNT", "FAMILY_ACCOUNT", "WALLET")
OWN = "UNSPECIFIED"  # the relation kept for one's own premium (RELATION_UNSPECIFIED in answers)


# Where one's own premium may come from: one's 医保钱包 quota (SPEC §5: wallet money pays 居民医保
# premiums) and a family account one is a member of (SPEC §3b: it pays its members' resident premium,
# a 临时成员's and nothing else of theirs). Never one's personal account: a resident has none.
OWN_SOURCES = ("WALLET", "FAMILY_ACCOUNT")


def own_payment(payer_id: str, payee_id: str, source: str, relation: int) -> bool:
    """A resident paying their own premium (`OWN_SOURCES`), under the same window, amount and
    once-a-year rules as a 代缴, naming no relation; any other payment to oneself is SELF_PAYMENT."""
    if payer_id != payee_id:
        return False
    if source not in OWN_SOURCES:
        raise errors.invalid("SELF_PAYMENT", "代缴 from a personal account is for a near-kin; a resident pays "
                             "their own premium from their 医保钱包 (source WALLET) or from a family account "
                             "they are a member of (source FAMILY_ACCOUNT)", field="payee_id_number")
    if relation:
        raise errors.invalid("INVALID_RELATION", "one's own premium names no relation", field="relation")
    return True


def window(policy: Policy, year: str) -> tuple[_dt.date, _dt.date]:
    """The first and last day (Asia/Shanghai) on which insurance year `year` can be paid or cancelled."""
    before = int(year) - 1
    start = day_of(before, policy.premium_window_start)
    end = day_of(before, policy.premium_window_end)
    if policy.premium_extension_end:
        end = day_of(int(year), policy.premium_extension_end)
    return start, end


def day_of(year: int, month_day: str) -> _dt.date:
    """The day MM-DD of `year`; a policy's 02-29 (the end of February) is 02-28 outside leap years."""
    month, day = int(month_day[:2]), int(month_day[3:])
    if (month, day) == (2, 29) and not calendar.isleap(year):
        day = 28
    return _dt.date(year, month, day)


def year_start_ms(year: str) -> int:
    """The first instant (unix ms, Asia/Shanghai) of insurance year `year`: a payee whose premium is paid
    in the collection window before it is insured by that payment from then on, one paid inside the
    year (the extended period) at once (SPEC §4b: paying makes them insured for the year)."""
    return int(_dt.datetime(int(year), 1, 1, tzinfo=SHANGHAI).timestamp() * 1000)


def in_window(policy: Policy, year: str, today: _dt.date) -> bool:
    """Whether insurance year `year` can be paid or cancelled on `today`."""
    start, end = window(policy, year)
    return start <= today <= end


def payable_year(policy: Policy, today: _dt.date) -> str:
    """The insurance year a 代缴 pays on `today`: inside its window (next year's from the window's start
    in the year before, this year's in an extended period) with a premium set; the earlier one should
    two be; '' when none is."""
    for year in (str(today.year), str(today.year + 1)):
        if in_window(policy, year, today) and year in policy.resident_premium_fen:
            return year
    return ""


def check_window(policy: Policy, year: str, today: _dt.date) -> None:
    if not in_window(policy, year, today):
        start, end = window(policy, year)
        raise errors.refused("OUTSIDE_PREMIUM_WINDOW", f"{policy.name} collects the {year} premium from {start} to "
                             f"{end}; today is {today}", window_start=start.isoformat(), window_end=end.isoformat())


def amount_for(policy: Policy, year: str) -> int:
    fen = policy.resident_premium_fen.get(year)
    if fen is None:
        raise errors.refused("PREMIUM_NOT_SET", f"{policy.name} has no resident premium for {year} in its policy")
    return fen


def check_payee(policy: Policy, payer_id: str, payee: rules.PersonView | None, payee_id: str,
                relation: str, directory_province: str = "") -> None:
    """The payee: a near-kin (or the payer, `OWN`) insured (or enrolling) as RESIDENT here; they need not
    be ACTIVE yet, but cannot have died, nor be insured in another province (moved there, or as the
    national person directory says, `directory_province`, for one not ACTIVE here)."""
    if payer_id == payee_id and relation != OWN:
        raise errors.invalid("SELF_PAYMENT", "代缴 is for a near-kin: a payer cannot pay their own premium here")
    if relation != OWN:
        rules.check_relation(policy, relation)
    if payee is not None and payee.status == "DECEASED":
        raise errors.refused("PERSON_DECEASED", "the payee's death is recorded: there is no premium to pay")
    elsewhere = rules.member_elsewhere(policy, payee, "", directory_province)
    if elsewhere:
        raise errors.refused("CROSS_PROVINCE", f"the payee is insured in province {elsewhere}, not {policy.name}: "
                             "their premium is paid there (from here, a 医保钱包 transfer can help)",
                             member_province=elsewhere)
    if payee is None:
        raise errors.refused("MEMBER_NOT_INSURED", f"the payee is not enrolled in {policy.name}; enrol them as a "
                             "resident first")
    if payee.insurance_type != "RESIDENT":
        raise errors.refused("PAYEE_NOT_RESIDENT", "the payee is not insured as a resident (城乡居民医保)")


def check_payer(policy: Policy, source: str, payer: rules.PersonView | None, amount: int, *,
                own: bool = False, payee_region: str = "") -> None:
    """The payer: ACTIVE whatever the source (a family account's member too), and their own money: an
    employee's personal account, or anyone's 医保钱包; one's own premium (from one's wallet or a family
    account) ACTIVE or not yet: paying it is what makes them insured. A personal account pays for a
    payee of another 统筹区 only where the province allows cross-region 共济 (`rules.regions_apart`, as
    for a binding; a family account follows the same rule through `rules.family_step`). A family
    account's money is checked where it is read."""
    check_payer_insured(policy, payer, own=own)
    assert payer is not None
    if source == "ACCOUNT":
        if not payer.has_account:
            raise errors.refused("HELPER_NOT_EMPLOYEE", "the payer has no personal account")
        if payee_region and rules.regions_apart(policy, payer.region, payee_region):
            raise errors.refused("DIFFERENT_POOLING_REGION", f"{policy.name} has no cross-region 共济: a personal "
                                 "account pays the premium of a near-kin of its own 统筹区 only")
        if payer.balance < amount:
            raise errors.refused("INSUFFICIENT_BALANCE", "the personal account holds less than the premium",
                                 balance_fen=str(payer.balance))
    if source == "WALLET" and not payer.wallet_place:
        raise errors.refused("WALLET_NOT_OPENED", "the payer has no 医保钱包")


def check_payer_insured(policy: Policy, payer: rules.PersonView | None, *, own: bool = False) -> None:
    """The payer is enrolled here and may pay (`payer_may_pay`), whatever their money."""
    if payer is None:
        raise errors.refused("HELPER_NOT_INSURED", f"the payer is not enrolled in {policy.name}")
    if not payer_may_pay(payer, own=own):
        raise errors.refused("HELPER_NOT_ACTIVE", f"the payer's insurance is {payer.status}, not ACTIVE")


def payer_may_pay(payer: rules.PersonView | None, *, own: bool) -> bool:
    """Only an ACTIVE payer pays (SPEC §1); a resident's own premium from their wallet excepted."""
    return payer is not None and (payer.active or own)


def check_canceller(payer_id: str, record_payer: str) -> None:
    """A cancel naming the payer it acts for (`payer_id`; the console and the CLI always name one)
    cancels only a payment that person made: another's is refused, so that a desk acting for the wrong
    person never takes a payee's coverage away. One naming no payer is an operator's, of whichever
    payment the payee has for the year."""
    if payer_id and payer_id != record_payer:
        raise errors.refused("NOT_THE_PAYER", "this premium was paid by someone else; only its payer's "
                             "cancel returns it", field="payer_id_number")


def cancel_in_progress(year: str) -> DomainError:
    """A payment that meets the payee's record of the year CANCELLED by a cancellation not yet answered
    (its process was told FAMILY_BUSY, or died, after cancelling): a new record would replace the one by
    which that cancellation's resend, or the recovery loop, knows what it cancelled, and the resend
    would cancel the new payment. Retryable: resent with the same request id once it is answered."""
    return errors.unavailable("PREMIUM_CANCEL_IN_PROGRESS", f"a cancellation of the {year} premium of this payee "
                              "is still being finished; retry the payment with the same request id once it is")


def payment_in_progress(year: str) -> DomainError:
    """A cancellation that meets the payment it would cancel still PENDING (a live payment, or one the
    recovery loop is to finish): nothing to cancel yet, and perhaps never (a payment dropped for want
    of money). Retryable: resent with the same request id once the payment is finished, the
    cancellation is judged on its outcome (cancelled, or PREMIUM_NOT_PAID)."""
    return errors.unavailable("PREMIUM_PAYMENT_IN_PROGRESS", f"the {year} premium of this payee is still being "
                              "paid; retry the cancellation with the same request id once it is finished")


def check_family_payer(policy: Policy, family_state: str, payer_state: str, payer_temporary: bool = False,
                       *, own: bool = False) -> None:
    """代缴 from a family account: an ACTIVE account that the payer is a MEMBER of. A 福建 临时成员
    (joined without face verification; the account pays their own resident premium, nothing else,
    SPEC §3b) pays only their own (`own`), never another's. What it pays for the payee is the
    waterfall's rule (`rules.family_step`, the premium whole), refused by `family_refusal`."""
    if family_state != "ACTIVE":
        raise family_rules.structure_error("FAMILY_NOT_ACTIVE", policy)
    if payer_state != "MEMBER":
        raise family_rules.structure_error("NOT_A_MEMBER", policy)
    if payer_temporary and not own:
        raise errors.refused("TEMPORARY_MEMBER", "a temporary member (临时成员) may use the family account only for "
                             "their own resident premium")


_SHORT = ("FAMILY_INSUFFICIENT", "the family account holds less than the premium")
FAMILY_REFUSALS = {
    "NOT_FAMILY_MEMBER": ("NOT_FAMILY_MEMBER", "the payee is not a member of this family account"),
    "FAMILY_ZERO_BALANCE": _SHORT,  # a premium is paid whole: an empty account is one that holds too little
    "FAMILY_INSUFFICIENT": _SHORT,
}


def family_refusal(why: str) -> DomainError:
    """The refusal of a 代缴 that `rules.family_step` (reason `why`) lets the account not pay in full."""
    code, message = FAMILY_REFUSALS.get(why, (why, "the family account does not pay this payee's premium"))
    return errors.refused(code, message)
