"""What the gateway answers with: a refusal (`GatewayError`, infcode -1), an answer (`Answer`: the
envelope, or a 9102's file), and times written as the platform writes them (Asia/Shanghai)."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from dataclasses import dataclass

from medaid.common.clock import SHANGHAI


class GatewayError(Exception):
    """An answer with infcode -1: a reason code, where/why for err_msg, and downstream detail."""

    def __init__(self, code: str, context: str = "", *, detail: str = "",
                 metadata: Mapping[str, str] | None = None, retryable: bool = False) -> None:
        super().__init__(f"{code}: {context or detail}")
        self.code = code
        self.context = context
        self.detail = detail
        self.metadata = dict(metadata or {})
        # Resend the same message (same msgid), later: its outcome is unknown (nothing answered, or something
        # failed inside, perhaps after writing) or a service said "not now" (errors.RESEND_CODES).
        self.retryable = retryable


@dataclass
class Answer:
    body: bytes
    infcode: int
    reason: str = ""
    replayed: bool = False
    # A 9102 download is answered with the file: its bytes, this content type and the file's name.
    content_type: str = "application/json"
    filename: str = ""
    # The charset the envelope goes back in: the request's (wire.body_charset).
    charset: str = "utf-8"


# pattern -> (unix second, its text): under load most answers of a second share their timestamps.
_last_second: dict[str, tuple[int, str]] = {}


def fmt_ms(ms: int, pattern: str) -> str:
    """A unix-ms instant in Asia/Shanghai, as `pattern` (strftime, nothing finer than the second)."""
    second = ms // 1000
    last = _last_second.get(pattern)
    if last is not None and last[0] == second:
        return last[1]
    text = _dt.datetime.fromtimestamp(second, SHANGHAI).strftime(pattern)
    _last_second[pattern] = (second, text)
    return text
