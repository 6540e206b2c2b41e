"""A 代缴 record's ids and times (SPEC §4b): its recovery entry, the ids its money moves under (once
per premium id, apart from every client's request id), when it was paid and cancelled, and the
insurance year it names. Pure: no Redis, no gRPC (premiums.py drives the flow)."""

from __future__ import annotations

import re

from medaid.common import errors
from medaid.common.rpc import derived_id
from medaid.registry import validate


def entry_of(payee: str, year: str, request_id: str) -> str:
    """The recovery entry of request `request_id`'s payment or cancellation of (payee, year)."""
    return f"P|{payee}|{year}|{request_id}"


_MONEY_REF = re.compile(r"prem-[0-9a-f]{40}")


def money_ref(province: str, premium_id: str) -> str:
    """The id under which a 代缴's money moves (the account debit, the family charge, the wallet spend)
    are made once: a digest of the province and the premium id, so that no other request id (a
    settlement's, a credit's, each an id the client chose) can be it, nor another province's 代缴 of
    the same id at the wallet, which serves every province. The record keeps it (`mref`)."""
    return derived_id("prem", province, premium_id)


def money_ref_of(rec: dict[str, str]) -> str:
    """A premium record's money ref; a record opened before records kept one moved its money under
    `prem:<premium id>`."""
    return rec.get("mref") or f"prem:{rec['id']}"


def is_money_ref(ref: str) -> bool:
    """Whether `ref` is a `money_ref` (a family account's history tells 代缴 from bills by it)."""
    return _MONEY_REF.fullmatch(ref) is not None


def paid_time(rec: dict[str, str]) -> int:
    """The time of a premium record's payment: when it began (premium_open.lua `at`), however late it is
    finished (the recovery loop, days later): its paid_at, what the tax bureau is handed, and the month
    its wallet spend clears in (SPEC §5 monthly clearing) are one. 0 for a record opened before records
    kept it: paid when finished, its wallet spend cleared when the wallet wrote it."""
    return int(rec.get("at") or 0)


def cancel_time(rec: dict[str, str]) -> int:
    """The time of a premium record's cancellation: when it began (premium_cancel.lua `cancel_at`), as
    `paid_time` is the payment's: its cancelled_at and the month its wallet refund clears in. 0 for a
    cancellation begun before records kept it."""
    return int(rec.get("cancel_at") or 0)


def refund_ref(premium_id: str) -> str:
    """The id of a cancelled 代缴's return to a personal account, likewise apart from client ids."""
    return derived_id("premrev", premium_id)


def validate_year(year: str) -> str:
    """An insurance year: a year YYYY (`validate.calendar_year`) from 2000 to 2100."""
    validate.calendar_year(year, "year", "INVALID_YEAR")
    if not "2000" <= year <= "2100":
        raise errors.invalid("INVALID_YEAR", "year must be an insurance year YYYY", field="year")
    return year
