"""`medaid testid`: valid GB 11643 id numbers for tests and walkthroughs (no service is called)."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from medaid.cli.base import Client, Result, UsageError
from medaid.common.idnumber import PROVINCE_CODES, make


def test_ids(region: str, born: str, sex: str, count: int = 1, seq: int = 0) -> list[str]:
    """`count` id numbers of people born on `born` (YYYY-MM-DD) in `region`, of sex M or F.
    The 17th digit is odd for men, even for women; sequences start at `seq` (default the first of that sex)."""
    if len(region) != 6 or not region.isdigit() or region[:2] not in PROVINCE_CODES:
        raise UsageError(f"region {region!r}: a 6-digit division code of a province, e.g. 130100")
    try:
        birth = dt.date.fromisoformat(born)
    except ValueError:
        raise UsageError(f"born {born!r}: a date YYYY-MM-DD") from None
    if sex.upper() not in ("M", "F"):
        raise UsageError(f"sex {sex!r}: M or F")
    parity = 1 if sex.upper() == "M" else 0
    first = seq or (1 if parity else 2)
    if first % 2 != parity:
        raise UsageError(f"sequence {first}: odd for M, even for F")
    if count < 1 or first + 2 * (count - 1) > 999:
        raise UsageError("count: 1 to 500 id numbers of one sex, region and birth date")
    return [make(region, birth.strftime("%Y%m%d"), f"{first + 2 * i:03d}") for i in range(count)]


class _Ids:
    def __init__(self, ids: list[str]) -> None:
        self.ids = ids


def testid(args: argparse.Namespace, _: Client | None) -> Result:
    ids = test_ids(args.region, args.born, args.sex, args.count, args.seq)
    return _Ids(ids), ids


def register(add: Any) -> None:
    sp = add("testid", testid, "print valid test id numbers (check digit included); calls no service",
             offline=True)
    sp.add_argument("--region", required=True, help="6-digit division code, e.g. 130100 (石家庄), 110105, 620102")
    sp.add_argument("--born", required=True, help="birth date YYYY-MM-DD (under 16 binds without face "
                                                  "verification)")
    sp.add_argument("--sex", required=True, help="M | F")
    sp.add_argument("--count", type=int, default=1, help="how many (consecutive sequence numbers)")
    sp.add_argument("--seq", type=int, default=0, help="first 3-digit sequence number (odd for M, even for F)")
