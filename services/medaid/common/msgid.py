"""The national `msgid`: its accepted shape and the id it becomes inside the product.

The interface documents `msgid` as fixmedins_code (12) + yyyyMMddHHmmss (14) + sequence (4), but
hospital systems in production also send other 30-character ids (an upper-case uuid4 hex cut to 30,
a vendor's own counter). Any 30 characters of `[0-9A-Za-z]` are accepted, and a msgid is the
idempotency key **per institution**: two hospitals may send the same one.

Inside the product the key is `scoped(fixmedins_code, msgid)`: the msgid itself when it already
starts with the institution's code (the documented shape, so settlement ids stay the msgids they
always were), else the code followed by the msgid (42 characters). Either way the id starts with
the sending institution's code, so ids of different institutions never meet, and within one
institution the two shapes differ in length, so they never meet either.

An institution is told the id as its `setl_id` without the code put in front (`setl_id`): always its
own 30-character msgid, since the interface declares `setl_id` 字符型(30) and hospital systems keep
it in such a column. A `setl_id` it names is scoped again (`from_setl_id`); the longer id works too.
"""

from __future__ import annotations

import re

from medaid.common import errors

MSGID_RE = re.compile(r"^[0-9A-Za-z]{30}\Z")


def valid(msgid: str) -> bool:
    return bool(MSGID_RE.match(msgid or ""))


def scoped(fixmedins_code: str, msgid: str) -> str:
    """The product's id for an institution's msgid (the registries' request and settlement id)."""
    return msgid if msgid.startswith(fixmedins_code) else fixmedins_code + msgid


def setl_id(fixmedins_code: str, sid: str) -> str:
    """The `setl_id` an institution is told for the product's id `sid`: the msgid it sent."""
    if len(sid) == len(fixmedins_code) + 30 and sid.startswith(fixmedins_code):
        return sid[len(fixmedins_code):]
    return sid


def from_setl_id(fixmedins_code: str, setl_id: str) -> str:
    """The product's id for a `setl_id` an institution names (a 30-character one, or the whole id)."""
    return scoped(fixmedins_code, setl_id) if valid(setl_id) else setl_id


def require(msgid: str, field: str = "msgid") -> None:
    """INVALID_MSGID unless `msgid` is 30 characters of [0-9A-Za-z]."""
    if not valid(msgid):
        raise errors.invalid("INVALID_MSGID", f"{field} must be 30 characters of 0-9 A-Z a-z", field=field)
