"""Listings a page at a time, as Google APIs page (AIP-158): `page_size` (with `limit`, its older name)
and `page_token` in, `next_page_token` out.

A token is the place of the last item a page listed (its order key, as text fields), so the next page
begins strictly after it whatever was written in between. It carries a digest of the question (the
listing and whom it is about): one given for another is refused, not answered wrongly; and a check
digest, so that one cut short or edited is refused too (INVALID_PAGE_TOKEN, nothing written). It holds
no id number, so it may be logged and put in a link.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence

from medaid.common import errors

_VERSION = "1"
_MAX_TOKEN = 256  # characters: a token made here is at most about 210 (a 64-character id in it)


def digest(*parts: str, size: int) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:size]


def question(*parts: str) -> str:
    """What a token is for: the listing and its parameters (never the page size, which may change)."""
    return digest(*parts, size=16)


def page_size(page_size: int, limit: int, default: int, maximum: int) -> int:
    """page_size, or `limit` (its older name), or the default; INVALID_LIMIT out of 1..maximum."""
    if page_size and limit and page_size != limit:
        raise errors.invalid("INVALID_LIMIT", "page_size and limit (its older name) differ", field="page_size")
    size = page_size or limit or default
    if not 0 < size <= maximum:
        raise errors.invalid("INVALID_LIMIT", f"page_size must be 1..{maximum}",
                             field="page_size" if page_size else "limit")
    return size


def seal(asked: str, place: Sequence[str]) -> str:
    """The token of the place `place` (the last field may hold ':') in the listing `asked`."""
    body = ":".join([asked, *place])
    raw = f"{_VERSION}:{digest(body, size=12)}:{body}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def unseal(token: str, asked: str, fields: int, service: str) -> list[str]:
    """The `fields` fields of the place a token names in the listing `asked`, else INVALID_PAGE_TOKEN
    (`service`: who gives tokens, for the message)."""
    if len(token) > _MAX_TOKEN or not token.isascii():
        raise not_ours(service)
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True).decode("ascii")
    except (binascii.Error, ValueError):
        raise not_ours(service) from None
    version, check, body = (raw.split(":", 2) + ["", ""])[:3]
    parts = body.split(":", fields)
    if version != _VERSION or check != digest(body, size=12) or len(parts) != fields + 1 \
            or not is_hex(parts[0], 16):
        raise not_ours(service)
    if parts[0] != asked:
        raise _refused("was given for another listing, person or period")
    return parts[1:]


def not_ours(service: str) -> errors.DomainError:
    """INVALID_PAGE_TOKEN for a token `service` did not give (or one naming a place its listing lacks)."""
    return _refused(f"is not one this {service} gave")


def _refused(why: str) -> errors.DomainError:
    return errors.invalid("INVALID_PAGE_TOKEN", f"page_token {why}: give the next_page_token of the page "
                          "before unchanged, or none for the first page", field="page_token")


def is_hex(s: str, size: int) -> bool:
    return len(s) == size and all(c in "0123456789abcdef" for c in s)


def is_count(s: str) -> bool:
    return 0 < len(s) <= 18 and s.isdigit() and s.isascii()
