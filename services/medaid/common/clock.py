"""Injectable time source, so tests can set the hour (night window, daily limits, expiry)."""

from __future__ import annotations

import datetime as _dt
import time
from zoneinfo import ZoneInfo

SHANGHAI = ZoneInfo("Asia/Shanghai")


class Clock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def today(self) -> _dt.date:
        """Today's date in Asia/Shanghai (the national business day)."""
        return _dt.datetime.fromtimestamp(self.now_ms() / 1000, SHANGHAI).date()


class FixedClock(Clock):
    """A clock a test moves by hand."""

    def __init__(self, now_ms: int) -> None:
        self._now_ms = now_ms

    def now_ms(self) -> int:
        return self._now_ms

    def set(self, now_ms: int) -> None:
        self._now_ms = now_ms

    def advance(self, ms: int) -> None:
        self._now_ms += ms
