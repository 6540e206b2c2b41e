"""Pure 医保钱包 rules (SPEC §5): limits, the night window, acceptance deadline, lot consumption."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import grpc

from medaid.common import errors
from medaid.common.clock import SHANGHAI, shanghai
from medaid.common.paths import policies_dir
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.policy import NEAR_KIN, NEVER_PAYABLE, PolicyError, boolean, integer, read_file


@dataclass(frozen=True)
class WalletPolicy:
    max_transfer_fen: int = 200_000
    daily_transfers: int = 3
    night_start_hour: int = 22
    night_end_hour: int = 6
    accept_by_hour: int = 6
    one_pending_per_sender: bool = True
    # Rollout is per 统筹区: the 6-digit regions where the wallet is live; empty means all.
    wallet_live_regions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 < self.max_transfer_fen <= 2**52:
            raise PolicyError("max_transfer_fen must be a positive amount in fen")
        if not 1 <= self.daily_transfers <= 10**6:
            raise PolicyError("daily_transfers must be between 1 and 1000000")
        for knob in ("night_start_hour", "night_end_hour", "accept_by_hour"):
            if not 0 <= getattr(self, knob) <= 23:
                raise PolicyError(f"{knob} must be an hour from 0 to 23")
        bad = [r for r in self.wallet_live_regions if len(r) != 6 or not r.isdigit()]
        if bad:
            raise PolicyError(f"wallet_live_regions must list 6-digit 统筹区 codes, not {bad}")

    def live(self, region: str) -> bool:
        return not self.wallet_live_regions or region in self.wallet_live_regions


def load_policy(path: str | Path) -> WalletPolicy:
    """The wallet policy in `path`; a misspelt knob, a value of the wrong TOML type or out of range is a
    PolicyError naming the file (the wallet does not start)."""
    return read_file(path, _policy_of, (f.name for f in fields(WalletPolicy)))


def _policy_of(data: dict[str, object]) -> WalletPolicy:
    d = WalletPolicy()
    regions = data.get("wallet_live_regions", [])
    if not isinstance(regions, list) or not all(isinstance(r, str | int) and not isinstance(r, bool)
                                                for r in regions):
        raise PolicyError("wallet_live_regions must be a TOML array of 6-digit 统筹区 codes")
    return WalletPolicy(
        max_transfer_fen=integer(data, "max_transfer_fen", d.max_transfer_fen),
        daily_transfers=integer(data, "daily_transfers", d.daily_transfers),
        night_start_hour=integer(data, "night_start_hour", d.night_start_hour),
        night_end_hour=integer(data, "night_end_hour", d.night_end_hour),
        accept_by_hour=integer(data, "accept_by_hour", d.accept_by_hour),
        one_pending_per_sender=boolean(data, "one_pending_per_sender", d.one_pending_per_sender),
        wallet_live_regions=tuple(str(r) for r in regions),
    )


def default_policy_file() -> Path:
    return policies_dir() / "wallet.toml"


def shanghai_day(ms: int) -> str:
    return shanghai(ms).strftime("%Y%m%d")


def shanghai_month(ms: int) -> str:
    return shanghai(ms).strftime("%Y%m")


# How far ahead of the wallet's clock a registry's clock may be: a settlement's time sent with a spend
# (`clearing_at_unix_ms`) later than the wallet's now by more is refused.
CLOCK_SKEW_MS = 5 * 60_000


def began_by(began_ms: int, event_at_ms: int) -> bool:
    """Whether a wallet relationship (a transfer, a lot) begun at `began_ms` is one an ending for an
    event at `event_at_ms` ends (SPEC §5, §5b): it began by then (0: a time not kept, so long ago). An
    event time of 0 ends every one. lots_release.lua's `by` is this rule for the lots."""
    return event_at_ms == 0 or began_ms <= event_at_ms


# How long the wallet keeps when a person's relationships ended (`Keys.ended`): longer than a
# transfer stays in flight (its accept deadline is 06:00 the next day).
ENDED_KEEP_S = 3 * 86_400


def ended_by_event(created_ms: int, ended_at_ms: list[int]) -> bool:
    """Whether a transfer created at `created_ms` is a relationship that an end of a side's
    relationships for an event at one of `ended_at_ms` (0: none kept) ended (`began_by`)."""
    return any(at > 0 and began_by(created_ms, at) for at in ended_at_ms)


def onward_origins(parts: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    """The people whose relationships an onward transfer's quota belongs to, besides its sender:
    each part's funding employee (its sending province, when they funded it) and each wallet that
    passed that quota on before (`chain`: its province, "" when not kept, and when it got it), as
    (person, province, began) for `began_by`. lots_release.lua's SENDER match is this rule for lots."""
    origins: list[tuple[str, str, int]] = []
    for p in parts:
        origins.append((p["sender"], p.get("sprov") or "", int(p.get("funded") or 0)))
        for c in p.get("chain") or []:
            origins.append((c["via"], c.get("vprov") or "", int(c.get("vbegan") or 0)))
    return origins


def origin_ended(origin_province: str, began_ms: int, province: str, event_at_ms: int) -> bool:
    """Whether an end of an origin's relationships as an insured person of `province` ("": every
    one) for an event at `event_at_ms` (0: every relationship) takes quota of that origin kept with
    `origin_province` ("": not kept, any) and begun at `began_ms`."""
    of_province = not origin_province or province in ("", origin_province)
    return of_province and began_by(began_ms, event_at_ms)


def clearing_month(settled_at_ms: int, now_ms: int) -> str:
    """The month a wallet share, or its refund, clears in (SPEC §5 monthly clearing): the month,
    Asia/Shanghai, of the settlement event it belongs to as the registry records it (a 2207's
    settlement time, a 2208's reversal time: what a 3201 counts it by), however late the wallet
    writes it; `settled_at_ms` 0 (a premium, a caller that does not say) is the wallet's own time."""
    return shanghai_month(settled_at_ms or now_ms)


def refund_month(spend_month: str, refunded_at_ms: int, now_ms: int, *, cancel: bool = False) -> str:
    """The month a refund of a spend counted in `spend_month` is counted out in (SPEC §5 monthly
    clearing). A cancellation (`RefundWalletSpend.cancel_if_absent`: the spend undone as one that
    should not have been made) in the spend's own month, so that it nets to nothing there whenever
    the undo runs. Any other refund in the month of its own settlement event (`clearing_month`: a
    2208's reversal time), but never before the spend's month: a caller whose clock is behind the one
    that settled dates it earlier, and refusing it would leave that caller resending for ever, while a
    line counted out of a month where nothing was spent would not reconcile."""
    if cancel:
        return spend_month
    return max(clearing_month(refunded_at_ms, now_ms), spend_month)


def in_night_window(policy: WalletPolicy, ms: int) -> bool:
    hour = shanghai(ms).hour
    if policy.night_start_hour > policy.night_end_hour:
        return hour >= policy.night_start_hour or hour < policy.night_end_hour
    return policy.night_start_hour <= hour < policy.night_end_hour


def accept_deadline(policy: WalletPolicy, created_ms: int) -> int:
    """06:00 Asia/Shanghai of the day after the transfer was created."""
    day = shanghai(created_ms).date() + _dt.timedelta(days=1)
    deadline = _dt.datetime.combine(day, _dt.time(policy.accept_by_hour), tzinfo=SHANGHAI)
    return int(deadline.timestamp() * 1000)


# SPEC §5: "Each transfer needs face or 医保码-password verification": a counter check (窗口核验) is not one.
TRANSFER_VERIFICATIONS = frozenset({cpb.VERIFICATION_METHOD_FACE, cpb.VERIFICATION_METHOD_MEDICARE_CODE_PASSWORD})


def check_transfer(policy: WalletPolicy, *, relation: str, amount: int, now_ms: int, verified: bool) -> None:
    """Rules that need no stored state; raise the first that refuses. Transfers inside one province
    are allowed as well as across provinces (SPEC §5: the national figures count 省内 and 跨省)."""
    if relation not in NEAR_KIN:
        raise errors.refused("NOT_NEAR_KIN", f"{relation} is not a near-kin relation (配偶/父母/子女/兄弟姐妹/"
                             "祖父母/外祖父母/孙子女/外孙子女)")
    if not verified:
        raise errors.refused("VERIFICATION_REQUIRED", "each transfer needs face or 医保码-password verification")
    if amount > policy.max_transfer_fen:
        raise errors.refused("AMOUNT_OVER_LIMIT", f"at most {policy.max_transfer_fen} fen per transfer",
                             limit_fen=str(policy.max_transfer_fen))
    if in_night_window(policy, now_ms):
        raise errors.refused(
            "OUTSIDE_TRANSFER_HOURS",
            f"no transfers between {policy.night_start_hour:02d}:00 and {policy.night_end_hour:02d}:00 "
            "Asia/Shanghai",
            night_start_hour=f"{policy.night_start_hour:02d}", night_end_hour=f"{policy.night_end_hour:02d}",
        )


def check_live(policy: WalletPolicy, *, sender_region: str, recipient_region: str) -> None:
    """The wallet must be live in both sides' 统筹区 (rollout per 统筹区)."""
    for side, region in (("sender", sender_region), ("recipient", recipient_region)):
        if not policy.live(region):
            raise errors.refused("WALLET_NOT_LIVE", f"the 医保钱包 is not live yet in the {side}'s 统筹区 {region}",
                                 region=region)


def check_use_place(regions: Mapping[str, frozenset[str]], province: str, use_place: str) -> None:
    """The use-place (使用地) is a 统筹区 of the province where the owner is insured, as that
    province's policy names them (`regions`: province → its 统筹区)."""
    if use_place[:2] != province:
        raise errors.invalid("USE_PLACE_OUTSIDE_PROVINCE", "the use-place must be a pooling region of the "
                             "province where the owner is insured", field="use_place_admdvs")
    if use_place not in regions.get(province, frozenset()):
        raise errors.invalid("UNKNOWN_REGION", f"use_place_admdvs {use_place} is not a 统筹区 of province "
                             f"{province}", field="use_place_admdvs")


def owner_must_be_active(category: str) -> bool:
    """Only ACTIVE people pay (SPEC §1), from a wallet as from an account. A 居民医保 premium is the one
    exception: it reaches the wallet only through the insuring registry's PayResidentPremium, which lets
    a resident pay their own premium before they are ACTIVE (paying it is what makes them insured) and
    applies its payer rules itself."""
    return category != "RESIDENT_PREMIUM"


def check_owner_may_pay(category: str, *, active: bool) -> None:
    if owner_must_be_active(category) and not active:
        raise errors.refused("OWNER_NOT_INSURED", "the wallet owner is not an ACTIVE insured person: only ACTIVE "
                             "people may pay")


def check_spend_category(category: str) -> None:
    if category in NEVER_PAYABLE:
        raise errors.refused("CATEGORY_NOT_PAYABLE", f"wallet quota cannot pay {category}; it cannot be "
                             "withdrawn as cash", category=category)


def check_acting_province(acting: str | None, province: str) -> None:
    """A province's registry spends, refunds, ends and notes wallets for its own province only (SPEC §5:
    quota is spent at the use-place, whose province's registry settles it). `acting`: the caller's
    province by its certificate (`authz.acting_province`), '' when it names none, None without
    identities (plaintext development: no check). `province`: the province the call acts for ('' when
    it names none, e.g. every relationship of a person). Refused before anything is written."""
    if acting is None or (acting and acting == province):
        return
    raise errors.DomainError(
        grpc.StatusCode.PERMISSION_DENIED, "REGISTRY_OUTSIDE_PROVINCE",
        f"a registry acts on wallets for its own province only: the caller serves "
        f"{acting or 'no province'}, the request is for {province or 'every province'}",
        {"caller_province": acting, "province": province})
