"""Pure unit tests of `medaid.wallet.rules` (SPEC §5), no Redis and no gRPC: the 22:00-06:00 night
window, the 06:00-next-day acceptance deadline, oldest-lot-first consumption, the order of the
stateless transfer checks, and loading the wallet policy file."""

from __future__ import annotations

import dataclasses
import datetime as dt

import grpc
import pytest
from medaid.common.clock import SHANGHAI
from medaid.common.errors import DomainError
from medaid.registry.policy import PolicyError
from medaid.wallet import rules
from medaid.wallet.rules import WalletPolicy

FP = grpc.StatusCode.FAILED_PRECONDITION
POLICY = WalletPolicy()


def ms(day: int, hour: int, minute: int = 0, second: int = 0, month: int = 11, year: int = 2026) -> int:
    """Epoch ms of a wall-clock time in Asia/Shanghai."""
    return int(dt.datetime(year, month, day, hour, minute, second, tzinfo=SHANGHAI).timestamp() * 1000)


# --- night window (no transfers 22:00-06:00 Asia/Shanghai) ------------------------------------


@pytest.mark.parametrize(("hour", "minute", "second", "night"), [
    (21, 59, 59, False),
    (21, 59, 0, False),
    (22, 0, 0, True),
    (23, 59, 59, True),
    (0, 0, 0, True),
    (0, 30, 0, True),
    (5, 59, 0, True),
    (5, 59, 59, True),
    (6, 0, 0, False),
    (6, 0, 1, False),
    (10, 0, 0, False),
])
def test_night_window_boundaries(hour, minute, second, night):
    assert rules.in_night_window(POLICY, ms(22, hour, minute, second)) is night


def test_night_window_is_shanghai_time_not_utc():
    # 14:00 UTC is 22:00 in Shanghai: night. 22:00 UTC is 06:00 the next day in Shanghai: day.
    utc_14 = int(dt.datetime(2026, 11, 22, 14, 0, tzinfo=dt.UTC).timestamp() * 1000)
    utc_22 = int(dt.datetime(2026, 11, 22, 22, 0, tzinfo=dt.UTC).timestamp() * 1000)
    assert rules.in_night_window(POLICY, utc_14) is True
    assert rules.in_night_window(POLICY, utc_22) is False


def test_night_window_follows_policy_hours():
    pol = dataclasses.replace(POLICY, night_start_hour=23, night_end_hour=7)
    assert rules.in_night_window(pol, ms(22, 22, 30)) is False
    assert rules.in_night_window(pol, ms(22, 23, 0)) is True
    assert rules.in_night_window(pol, ms(23, 6, 59)) is True
    assert rules.in_night_window(pol, ms(23, 7, 0)) is False
    # A window that does not wrap midnight.
    day_pol = dataclasses.replace(POLICY, night_start_hour=1, night_end_hour=5)
    assert rules.in_night_window(day_pol, ms(22, 0, 59)) is False
    assert rules.in_night_window(day_pol, ms(22, 1, 0)) is True
    assert rules.in_night_window(day_pol, ms(22, 4, 59)) is True
    assert rules.in_night_window(day_pol, ms(22, 5, 0)) is False


# --- acceptance deadline: 06:00 the next day ------------------------------------------------------


def test_accept_deadline_for_a_transfer_at_21_00():
    assert rules.accept_deadline(POLICY, ms(22, 21, 0)) == ms(23, 6, 0)


def test_accept_deadline_for_a_transfer_at_00_30():
    # 00:30 on the 22nd belongs to the 22nd: returned by 06:00 on the 23rd (29.5 hours later).
    assert rules.accept_deadline(POLICY, ms(22, 0, 30)) == ms(23, 6, 0)


@pytest.mark.parametrize(("created", "deadline"), [
    (ms(22, 6, 0), ms(23, 6, 0)),
    (ms(22, 10, 0), ms(23, 6, 0)),
    (ms(22, 21, 59, 59), ms(23, 6, 0)),
    (ms(30, 12, 0), ms(1, 6, 0, month=12)),            # month end
    (ms(31, 12, 0, month=12), ms(1, 6, 0, month=1, year=2027)),  # year end
])
def test_accept_deadline_crosses_month_and_year(created, deadline):
    assert rules.accept_deadline(POLICY, created) == deadline


def test_accept_deadline_is_exact_epoch_value():
    # 2026-11-23 06:00 +08:00 == 2026-11-22 22:00 UTC
    assert rules.accept_deadline(POLICY, ms(22, 10, 0)) == 1_795_384_800_000
    assert rules.accept_deadline(dataclasses.replace(POLICY, accept_by_hour=8), ms(22, 10, 0)) == ms(23, 8, 0)


def test_shanghai_day_and_month_use_shanghai_time():
    utc_1630 = int(dt.datetime(2026, 11, 30, 16, 30, tzinfo=dt.UTC).timestamp() * 1000)  # 00:30 Dec 1 Shanghai
    assert rules.shanghai_day(utc_1630) == "20261201"
    assert rules.shanghai_month(utc_1630) == "202612"
    assert rules.shanghai_month(ms(30, 23, 59, 59)) == "202611"


# --- stateless transfer checks, in order ---------------------------------------------------------------

OK = dict(relation="PARENT", amount=200_000, now_ms=ms(22, 10, 0), verified=True)


def _refusal(**overrides: object) -> str:
    with pytest.raises(DomainError) as ei:
        rules.check_transfer(POLICY, **{**OK, **overrides})  # type: ignore[arg-type]
    assert ei.value.code == FP
    return ei.value.reason


def test_check_transfer_accepts_a_valid_transfer():
    assert rules.check_transfer(POLICY, **OK) is None  # type: ignore[arg-type]
    for relation in ("SPOUSE", "PARENT", "CHILD", "SIBLING", "GRANDPARENT", "MATERNAL_GRANDPARENT",
                     "GRANDCHILD", "MATERNAL_GRANDCHILD"):
        rules.check_transfer(POLICY, **{**OK, "relation": relation})  # type: ignore[arg-type]


def test_check_transfer_each_rule():
    assert _refusal(relation="PARENT_IN_LAW") == "NOT_NEAR_KIN"
    assert _refusal(relation="CHILD_IN_LAW") == "NOT_NEAR_KIN"
    assert _refusal(relation="SIBLING_IN_LAW") == "NOT_NEAR_KIN"
    assert _refusal(verified=False) == "VERIFICATION_REQUIRED"
    assert _refusal(amount=200_001) == "AMOUNT_OVER_LIMIT"
    assert _refusal(now_ms=ms(22, 22, 0)) == "OUTSIDE_TRANSFER_HOURS"
    assert _refusal(now_ms=ms(23, 5, 59)) == "OUTSIDE_TRANSFER_HOURS"


def test_check_transfer_order_first_failing_rule_wins():
    everything_wrong = dict(relation="PARENT_IN_LAW", verified=False, amount=200_001, now_ms=ms(22, 23, 0))
    assert _refusal(**everything_wrong) == "NOT_NEAR_KIN"
    everything_wrong["relation"] = "CHILD"
    assert _refusal(**everything_wrong) == "VERIFICATION_REQUIRED"
    everything_wrong["verified"] = True
    assert _refusal(**everything_wrong) == "AMOUNT_OVER_LIMIT"
    everything_wrong["amount"] = 1
    assert _refusal(**everything_wrong) == "OUTSIDE_TRANSFER_HOURS"
    everything_wrong["now_ms"] = ms(22, 6, 0)
    rules.check_transfer(POLICY, **{**OK, **everything_wrong})  # type: ignore[arg-type]


def test_check_transfer_amount_limit_follows_policy():
    pol = dataclasses.replace(POLICY, max_transfer_fen=50_000)
    rules.check_transfer(pol, **{**OK, "amount": 50_000})  # type: ignore[arg-type]
    with pytest.raises(DomainError) as ei:
        rules.check_transfer(pol, **{**OK, "amount": 50_001})  # type: ignore[arg-type]
    assert ei.value.reason == "AMOUNT_OVER_LIMIT"
    assert ei.value.metadata["limit_fen"] == "50000"


@pytest.mark.parametrize("category", ["CASH_WITHDRAWAL", "PUBLIC_HEALTH", "FITNESS", "WELLNESS"])
def test_spend_category_never_payable(category):
    with pytest.raises(DomainError) as ei:
        rules.check_spend_category(category)
    assert (ei.value.code, ei.value.reason) == (FP, "CATEGORY_NOT_PAYABLE")


@pytest.mark.parametrize("category", ["OUTPATIENT", "INPATIENT", "PHARMACY", "RESIDENT_PREMIUM",
                                      "LONG_TERM_CARE_PREMIUM"])
def test_spend_category_payable(category):
    assert rules.check_spend_category(category) is None


# --- policy file -----------------------------------------------------------------------------------------


def test_load_policy_shipped_file_has_spec_defaults():
    pol = rules.load_policy(rules.default_policy_file())
    assert pol == WalletPolicy(max_transfer_fen=200_000, daily_transfers=3, night_start_hour=22, night_end_hour=6,
                               accept_by_hour=6, one_pending_per_sender=True)
    assert rules.default_policy_file().name == "wallet.toml"
    assert rules.default_policy_file().is_file()


def test_load_policy_custom_values(tmp_path):
    f = tmp_path / "wallet.toml"
    f.write_text('max_transfer_fen = 100000\ndaily_transfers = 5\nnight_start_hour = 23\n'
                 'one_pending_per_sender = false\n', encoding="utf-8")
    pol = rules.load_policy(f)
    assert pol.max_transfer_fen == 100_000
    assert pol.daily_transfers == 5
    assert pol.night_start_hour == 23
    assert pol.one_pending_per_sender is False
    # Keys not in the file keep their defaults.
    assert (pol.night_end_hour, pol.accept_by_hour) == (6, 6)


@pytest.mark.parametrize(("text", "problem"), [
    ('something_else = "x"\n', "unknown knob something_else"),
    ("daily_transfer = 10\n", "unknown knob daily_transfer"),  # misspelt: would leave the default 3
    ("max_transfer_fen = -1\n", "max_transfer_fen must be"),
    ("max_transfer_fen = 0\n", "max_transfer_fen must be"),
    ("daily_transfers = 0\n", "daily_transfers must be"),
    ("night_start_hour = 25\n", "night_start_hour must be"),
    ("accept_by_hour = -1\n", "accept_by_hour must be"),
    ('one_pending_per_sender = "false"\n', "one_pending_per_sender must be a TOML bool"),  # truthy string
    ('max_transfer_fen = "200000"\n', "max_transfer_fen must be a TOML int"),
    ("max_transfer_fen = 2000.0\n", "max_transfer_fen must be a TOML int"),
    ("one_pending_per_sender = 1\n", "one_pending_per_sender must be a TOML bool"),
    ('wallet_live_regions = ["13010"]\n', "wallet_live_regions"),
    ('wallet_live_regions = "130100"\n', "wallet_live_regions"),
    ("max_transfer_fen = \n", "not valid TOML"),
], ids=["unknown", "misspelt", "negative_cap", "zero_cap", "zero_daily", "hour_25", "negative_hour", "string_bool",
        "string_int", "float_fen", "int_bool", "short_region", "regions_not_a_list", "broken_toml"])
def test_load_policy_refuses_a_bad_file_naming_it(tmp_path, text, problem):
    """A wallet policy is configuration: a misspelt knob or a value out of range stops the wallet at start
    (naming the file), rather than leaving the default or refusing every transfer."""
    f = tmp_path / "wallet.toml"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(PolicyError) as err:
        rules.load_policy(f)
    assert str(err.value).startswith(f"policy file {f}: ") and problem in str(err.value)


def test_load_policy_empty_file_is_the_default(tmp_path):
    f = tmp_path / "wallet.toml"
    f.write_text("# nothing\n", encoding="utf-8")
    assert rules.load_policy(f) == WalletPolicy()


def test_check_live_both_sides_regions():
    """Rollout per 统筹区 (policy wallet_live_regions; empty = everywhere)."""
    rules.check_live(POLICY, sender_region="130100", recipient_region="110000")
    pol = dataclasses.replace(POLICY, wallet_live_regions=("130100", "110000"))
    rules.check_live(pol, sender_region="130100", recipient_region="110000")
    for sender_region, recipient_region in (("130200", "110000"), ("130100", "620100")):
        with pytest.raises(DomainError) as ei:
            rules.check_live(pol, sender_region=sender_region, recipient_region=recipient_region)
        assert (ei.value.code, ei.value.reason) == (FP, "WALLET_NOT_LIVE")


def test_live_regions_load_from_the_policy_file(tmp_path):
    path = tmp_path / "wallet.toml"
    path.write_text('wallet_live_regions = ["130100", 110000]\n', encoding="utf-8")
    assert rules.load_policy(path).wallet_live_regions == ("130100", "110000")
    assert rules.load_policy(rules.default_policy_file()).wallet_live_regions == ()


def test_use_place_is_a_pooling_region_of_the_province():
    regions = {"13": frozenset({"130100", "130200"}), "11": frozenset({"110000"})}
    rules.check_use_place(regions, "13", "130200")
    rules.check_use_place(regions, "11", "110000")
    for province, place, why in (("13", "110000", "USE_PLACE_OUTSIDE_PROVINCE"), ("13", "139999", "UNKNOWN_REGION"),
                                 ("11", "119999", "UNKNOWN_REGION"), ("62", "620100", "UNKNOWN_REGION")):
        with pytest.raises(DomainError) as ei:
            rules.check_use_place(regions, province, place)
        assert (ei.value.code, ei.value.reason) == (grpc.StatusCode.INVALID_ARGUMENT, why)


def test_the_saga_page_lists_every_reason_a_transfer_is_refused_with():
    """docs/wallet-saga.md's refusal table is where an integrator reads why a transfer or an accept
    was refused: every reason the create and accept paths raise (the wallet's checks, its limits
    script, the debit refusals that fail a transfer) is in it."""
    import inspect
    import re
    from pathlib import Path

    from medaid.wallet import core
    from medaid.wallet.transfers import Transfers

    root = Path(__file__).resolve().parents[1]
    section = (root / "docs" / "wallet-saga.md").read_text(encoding="utf-8").split("## Refusals", 1)[1]
    documented = set(re.findall(r"`([A-Z][A-Z_]+)`", section))
    paths = [Transfers.create_transfer, Transfers._admit_transfer, Transfers._recipient_at_home,
             Transfers._active_recipient, Transfers._drive_new_transfer, Transfers._step_debit_wallet,
             Transfers.accept, Transfers._refuse_accept,
             rules.check_transfer, rules.check_live, rules.check_use_place]
    source = "".join(inspect.getsource(f) for f in paths)
    raised = set(re.findall(r'errors\.\w+\(\s*"([A-Z_]+)"', source))
    lua = root / "services" / "medaid" / "wallet" / "lua"
    for script in ("reserve.lua", "wallet_xfer_out.lua"):
        raised |= set(re.findall(r"'ERR', '([A-Z_]+)'", (lua / script).read_text()))
    raised = (raised - {"NO_WALLET"}) | set(core.DEFINITIVE_DEBIT_REFUSALS)  # NO_WALLET: SENDER_NO_WALLET
    assert raised - documented == set(), "docs/wallet-saga.md's Refusals table lacks these"
