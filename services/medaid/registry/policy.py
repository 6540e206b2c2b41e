"""Province policy: the knobs of SPEC §3–4, loaded from a TOML file under deploy/policies/."""

from __future__ import annotations

import datetime as _dt
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TypeVar

from medaid.common.paths import policies_dir

BASE_RELATIONS = frozenset({"SPOUSE", "PARENT", "CHILD"})
EXTENDED_RELATIONS = frozenset(
    {"SIBLING", "GRANDPARENT", "MATERNAL_GRANDPARENT", "GRANDCHILD", "MATERNAL_GRANDCHILD"}
)
NEAR_KIN = BASE_RELATIONS | EXTENDED_RELATIONS
IN_LAW_RELATIONS = frozenset({"PARENT_IN_LAW", "CHILD_IN_LAW", "SIBLING_IN_LAW"})

ALWAYS_PAYABLE = frozenset(
    {"OUTPATIENT", "INPATIENT", "PHARMACY", "RESIDENT_PREMIUM", "LONG_TERM_CARE_PREMIUM"}
)
OPTIONAL_PAYABLE = frozenset({"CHECKUP", "VACCINE"})
NEVER_PAYABLE = frozenset({"PUBLIC_HEALTH", "FITNESS", "WELLNESS", "CASH_WITHDRAWAL"})

HELPER_SELECTIONS = ("LARGEST_BALANCE", "FILING_ORDER")
# SPEC §3: a province runs exactly one 家庭共济 model.
MODELS = ("BIND_AND_DEDUCT", "POOLED_ACCOUNT")
# Older policy files call 备案 order BINDING_ORDER.
_SELECTION_ALIASES = {"BINDING_ORDER": "FILING_ORDER"}


T = TypeVar("T")


class PolicyError(ValueError):
    pass


@dataclass(frozen=True)
class Policy:
    province: str
    name: str
    regions: dict[str, str]
    relations: frozenset[str] = NEAR_KIN
    max_members: int = 8
    cross_region_allowed: bool = True
    exclusive: bool = False
    face_verification_age: int = 16
    helper_selection: str = "LARGEST_BALANCE"
    helper_partial: bool = False
    # Several helpers, each in `helper_selection` order paying what it can (北京 "按备案顺序").
    helpers_in_turn: bool = False
    payable_categories: frozenset[str] = field(default=ALWAYS_PAYABLE)
    # The pooled family account (SPEC §3b); its knobs are read only where model = POOLED_ACCOUNT.
    model: str = "BIND_AND_DEDUCT"
    # 福建: members with a personal account may 划拨 too (甘肃: the creator only).
    member_contributions: bool = False
    # 福建: a 划拨 may only take the part of the contributor's balance above this floor (¥2,000).
    keep_min_balance_fen: int = 0
    # 福建: 划拨 per contributor per calendar month (Asia/Shanghai); 0 = unlimited (甘肃).
    transfers_per_month: int = 0
    # 回拨: a contributor may take their own unspent share back at any time.
    contributor_withdrawal: bool = False
    # 福建 临时成员: join without face verification; the account pays only their resident premium.
    temporary_members: bool = False
    # How long an invitation stays open (SPEC is silent: 7 days).
    invitation_ttl_ms: int = 7 * 24 * 3600 * 1000
    # 代缴 (SPEC §4b): the collection window for insurance year Y runs from `premium_window_start` to
    # `premium_window_end` (MM-DD) of year Y-1, plus an extended period up to `premium_extension_end`
    # (MM-DD of year Y; '' = none); the individual contribution per insurance year, in fen.
    premium_window_start: str = "09-01"
    premium_window_end: str = "12-31"
    premium_extension_end: str = ""
    resident_premium_fen: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.province) != 2 or not self.province.isdigit():
            raise PolicyError("province must be a 2-digit code")
        if not self.regions:
            raise PolicyError("policy names no pooling regions")
        for code in self.regions:
            if len(code) != 6 or not code.isdigit() or code[:2] != self.province:
                raise PolicyError(f"region {code!r} is not a 6-digit code of province {self.province}")
        if not self.relations <= NEAR_KIN:
            raise PolicyError(f"relations outside the near-kin set: {sorted(self.relations - NEAR_KIN)}")
        if not 1 <= self.max_members <= 100:
            raise PolicyError("max_members must be between 1 and 100")
        if self.helper_selection in _SELECTION_ALIASES:
            object.__setattr__(self, "helper_selection", _SELECTION_ALIASES[self.helper_selection])
        if self.helper_selection not in HELPER_SELECTIONS:
            raise PolicyError(f"helper_selection must be one of {HELPER_SELECTIONS}")
        if not self.payable_categories <= ALWAYS_PAYABLE | OPTIONAL_PAYABLE:
            raise PolicyError("payable_categories may only add CHECKUP and VACCINE to the standard set")
        if missing := sorted(ALWAYS_PAYABLE - self.payable_categories):  # SPEC §4: paid in every province
            raise PolicyError(f"payable_categories lacks {', '.join(missing)}: every province pays "
                              f"{', '.join(sorted(ALWAYS_PAYABLE))}; a province may add CHECKUP and VACCINE")
        if self.model not in MODELS:
            raise PolicyError(f"model must be one of {MODELS}")
        if not 0 <= self.face_verification_age <= 120:
            raise PolicyError("face_verification_age must be between 0 and 120")
        if not 0 <= self.keep_min_balance_fen <= 2**52:
            raise PolicyError("keep_min_balance_fen must be a non-negative amount in fen")
        if not 0 <= self.transfers_per_month <= 1000:
            raise PolicyError("transfers_per_month must be between 0 (unlimited) and 1000")
        if self.invitation_ttl_ms <= 0:
            raise PolicyError("invitation_ttl_ms must be positive")
        for knob in ("premium_window_start", "premium_window_end", "premium_extension_end"):
            value = getattr(self, knob)
            if (value or knob != "premium_extension_end") and not _month_day(value):
                raise PolicyError(f"{knob} must be a date MM-DD, not {value!r}")
        if self.premium_window_start > self.premium_window_end:
            raise PolicyError("premium_window_start must not come after premium_window_end")
        for year, fen in self.resident_premium_fen.items():
            if not (len(year) == 4 and year.isdigit()) or isinstance(fen, bool) or not isinstance(fen, int) \
                    or not 0 < fen <= 10**8:
                raise PolicyError(f"resident_premium_fen: {year!r} = {fen!r} is not YYYY = a positive amount in fen")
        pooled_only = {"member_contributions": self.member_contributions,
                       "keep_min_balance_fen": self.keep_min_balance_fen,
                       "transfers_per_month": self.transfers_per_month,
                       "contributor_withdrawal": self.contributor_withdrawal,
                       "temporary_members": self.temporary_members}
        if not self.pooled:
            set_knobs = sorted(k for k, v in pooled_only.items() if v)
            if set_knobs:
                raise PolicyError(f"{', '.join(set_knobs)} apply to model POOLED_ACCOUNT only")
        elif self.helpers_in_turn or self.helper_partial:
            raise PolicyError("helpers_in_turn and helper_partial apply to model BIND_AND_DEDUCT only")

    @property
    def pooled(self) -> bool:
        """SPEC §3b: members spend from a family account funded by 划拨."""
        return self.model == "POOLED_ACCOUNT"

    def region_allowed(self, code: str) -> bool:
        return code in self.regions

    def category_payable(self, category: str) -> bool:
        return category in self.payable_categories


def _month_day(value: str) -> bool:
    """MM-DD of a date that exists in a leap year (02-29 allowed)."""
    try:
        _dt.date(2024, int(value[:2]), int(value[3:]))
    except (ValueError, IndexError):
        return False
    return len(value) == 5 and value[2] == "-"


def knob(data: dict[str, object], key: str, kind: type, default: object) -> object:
    """A knob of exactly the TOML type expected: "false" (a string) must never read as True."""
    value = data.get(key, default)
    # bool is an int in Python: keep `true` out of integer knobs and `1` out of boolean ones.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise PolicyError(f"{key} must be a TOML {kind.__name__}, not {type(value).__name__} {value!r}")
    return value


def integer(data: dict[str, object], key: str, default: int) -> int:
    value = knob(data, key, int, default)
    assert isinstance(value, int)
    return value


def boolean(data: dict[str, object], key: str, default: bool) -> bool:
    return knob(data, key, bool, default) is True


def _str(data: dict[str, object], key: str, default: str) -> str:
    return str(knob(data, key, str, default))


def _names(data: dict[str, object], key: str, default: frozenset[str]) -> frozenset[str]:
    value = data.get(key, sorted(default))
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"{key} must be a TOML array of strings")
    return frozenset(value)


def _premiums(data: dict[str, object]) -> dict[str, int]:
    value = data.get("resident_premium_fen", {})
    if not isinstance(value, dict):
        raise PolicyError("resident_premium_fen must be a table of \"YYYY\" = fen")
    return {str(k): v for k, v in value.items()}


def read_file(path: str | Path, parse: Callable[[dict[str, object]], T], knobs: Iterable[str]) -> T:
    """A policy TOML file (a province's, the wallet's) made a value by `parse`: any problem, a knob not
    among `knobs` included, is a PolicyError that names the file."""
    try:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"not valid TOML: {exc}") from exc
        unknown = sorted(set(data) - set(knobs))
        if unknown:  # a misspelt knob would otherwise leave the default without a word
            raise PolicyError(f"unknown knob {', '.join(unknown)}")
        return parse(data)
    except (PolicyError, OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"policy file {path}: {exc}") from exc


def load(path: str | Path) -> Policy:
    """The policy in `path`; any problem is a PolicyError that names the file and the knob."""
    return read_file(path, _parse, (f.name for f in fields(Policy)))


def _parse(data: dict[str, object]) -> Policy:
    try:
        regions = data["regions"]
        if not isinstance(regions, dict):
            raise PolicyError("regions must be a table of code = name")
        return Policy(
            province=str(data["province"]),
            name=str(data.get("name", data["province"])),
            regions={str(k): str(v) for k, v in regions.items()},
            relations=_names(data, "relations", NEAR_KIN),
            max_members=integer(data, "max_members", 8),
            cross_region_allowed=boolean(data, "cross_region_allowed", True),
            exclusive=boolean(data, "exclusive", False),
            face_verification_age=integer(data, "face_verification_age", 16),
            helper_selection=_str(data, "helper_selection", "LARGEST_BALANCE"),
            helper_partial=boolean(data, "helper_partial", False),
            helpers_in_turn=boolean(data, "helpers_in_turn", False),
            payable_categories=_names(data, "payable_categories", ALWAYS_PAYABLE),
            model=_str(data, "model", "BIND_AND_DEDUCT"),
            member_contributions=boolean(data, "member_contributions", False),
            keep_min_balance_fen=integer(data, "keep_min_balance_fen", 0),
            transfers_per_month=integer(data, "transfers_per_month", 0),
            contributor_withdrawal=boolean(data, "contributor_withdrawal", False),
            temporary_members=boolean(data, "temporary_members", False),
            invitation_ttl_ms=integer(data, "invitation_ttl_ms", 7 * 24 * 3600 * 1000),
            premium_window_start=_str(data, "premium_window_start", "09-01"),
            premium_window_end=_str(data, "premium_window_end", "12-31"),
            premium_extension_end=_str(data, "premium_extension_end", ""),
            resident_premium_fen=_premiums(data),
        )
    except KeyError as exc:
        raise PolicyError(f"lacks {exc}") from exc


def default_policy_dir() -> Path:
    """deploy/policies, or its copy inside an installed wheel (overridable with MEDAID_POLICY_FILE per process)."""
    return policies_dir()


def find_policy_file(province: str, directory: Path | None = None) -> Path:
    directory = directory or default_policy_dir()
    matches = sorted(directory.glob(f"{province}-*.toml"))
    if not matches:
        raise PolicyError(f"no policy file for province {province} in {directory}")
    if len(matches) > 1:  # which one rules must never depend on how names sort: say which to keep
        raise PolicyError(f"{len(matches)} policy files for province {province} in {directory}: "
                          f"{', '.join(m.name for m in matches)}; keep one, or name it with --policy-file")
    return matches[0]


def load_for(province: str, path: str | Path | None = None, directory: Path | None = None) -> Policy:
    """The policy of `province`: the file given, else the one found for it (`find_policy_file`). A file
    that names another province is refused: its rules, regions and key space are not this province's."""
    path = path or find_policy_file(province, directory)
    policy = load(path)
    if policy.province != province:
        raise PolicyError(f"policy file {path}: it is the policy of province {policy.province}, "
                          f"not of province {province}")
    return policy


def regions_by_province(provinces: Iterable[str], directory: Path | None = None) -> dict[str, frozenset[str]]:
    """The 统筹区 of each province as its policy file names them: what the national wallet accepts
    as a use-place (使用地). A province without a policy file fails here, at start."""
    return {p: frozenset(load_for(p, directory=directory).regions) for p in provinces}
