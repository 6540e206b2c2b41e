"""公民身份号码 (GB 11643-1999): validation, derived facts and masking."""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass
from functools import lru_cache
from operator import mul

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK_MAP = "10X98765432"
_SHAPE = re.compile(r"^[0-9]{17}[0-9X]\Z")
# GB/T 2260 province-level codes (first two digits of a division code).
PROVINCE_CODES = frozenset(
    {
        "11", "12", "13", "14", "15", "21", "22", "23", "31", "32", "33", "34", "35", "36", "37",
        "41", "42", "43", "44", "45", "46", "50", "51", "52", "53", "54", "61", "62", "63", "64",
        "65", "71", "81", "82",
    }
)


class InvalidIdNumber(ValueError):
    """Raised with a human-readable explanation of what is wrong."""


@dataclass(frozen=True)
class IdFacts:
    id_number: str
    division: str
    birth_date: _dt.date
    sex: str  # "M" / "F"

    def age_on(self, day: _dt.date) -> int:
        years = day.year - self.birth_date.year
        if (day.month, day.day) < (self.birth_date.month, self.birth_date.day):
            years -= 1
        return years


def check_character(first17: str) -> str:
    """ISO 7064 MOD 11-2 check character for the first 17 digits."""
    if len(first17) != len(_WEIGHTS):
        raise ValueError(f"check_character takes 17 digits, not {len(first17)}")
    return _CHECK_MAP[sum(map(mul, map(int, first17), _WEIGHTS)) % 11]


@lru_cache(maxsize=65536)
def parse(id_number: str) -> IdFacts:
    """Validate an 18-character id number and return what it says; raise InvalidIdNumber.
    Cached: the same people settle again and again, and the answer never changes (exceptions are
    not cached, so a bad id is re-examined each time)."""
    if not isinstance(id_number, str) or not _SHAPE.match(id_number):
        raise InvalidIdNumber("id number must be 17 digits followed by a digit or X (18 characters)")
    if id_number[:2] not in PROVINCE_CODES:
        raise InvalidIdNumber(f"unknown province code {id_number[:2]!r} in division code")
    try:  # the shape says these are 8 digits: YYYYMMDD, a calendar date or refused
        birth = _dt.date(int(id_number[6:10]), int(id_number[10:12]), int(id_number[12:14]))
    except ValueError as exc:
        raise InvalidIdNumber("birth date in id number is not a calendar date") from exc
    if birth.year < 1890:
        raise InvalidIdNumber("birth date in id number is implausibly early")
    expected = check_character(id_number[:17])
    if id_number[17] != expected:
        raise InvalidIdNumber("check character does not match (ISO 7064 MOD 11-2)")
    sex = "M" if int(id_number[16]) % 2 == 1 else "F"
    return IdFacts(id_number=id_number, division=id_number[:6], birth_date=birth, sex=sex)


def normalise_id_number(value: str) -> str:
    """Upper-case a trailing check character `x` (GB 11643 writes it `X`); nothing else changes,
    so a malformed value stays malformed for `parse` to refuse."""
    return value[:-1] + "X" if value.endswith("x") else value


def make(division: str, birth: str, seq: str) -> str:
    """Build a valid id number from a 6-digit division, YYYYMMDD birth date and 3-digit sequence."""
    first17 = f"{division}{birth}{seq}"
    if len(first17) != 17 or not first17.isdigit():
        raise ValueError("division 6 digits, birth 8 digits, sequence 3 digits")
    return first17 + check_character(first17)


def mask(id_number: str) -> str:
    """130102********123X: keep the 6-digit division and the last 4 characters."""
    if len(id_number) == 18:
        return id_number[:6] + "*" * 8 + id_number[14:]
    if len(id_number) <= 4:
        return "*" * len(id_number)
    return id_number[:2] + "*" * (len(id_number) - 4) + id_number[-2:]


def mask_name(name: str) -> str:
    """张三丰 → 张**: keep the family name's first character only."""
    if not name:
        return name
    return name[0] + "*" * (len(name) - 1)
