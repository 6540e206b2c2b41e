"""Injectable time source, so tests can set the hour (night window, daily limits, expiry)."""

from __future__ import annotations

import datetime as _dt
import re
import time
from zoneinfo import ZoneInfo

SHANGHAI = ZoneInfo("Asia/Shanghai")


_MONTH = re.compile(r"([0-9]{4})-(0[1-9]|1[0-2])")


def month_bounds(month: str) -> tuple[int, int]:
    """'2026-11' (yyyy-MM, ASCII digits) as [its first instant, the next month's first instant) in unix
    ms, Beijing time, from no earlier than 0 (the services take no instant before it: 1970-01 begins at
    0); ValueError for anything else, and for a month wholly before 1970 in Beijing time."""
    m = _MONTH.fullmatch(month)
    year, mon = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    if not 1 <= year <= 9998 or not 1 <= mon <= 12:
        raise ValueError(f"not a month (yyyy-MM): {month!r}")
    start = _dt.datetime(year, mon, 1, tzinfo=SHANGHAI)
    end = _dt.datetime(year + mon // 12, mon % 12 + 1, 1, tzinfo=SHANGHAI)
    if end.timestamp() <= 0:
        raise ValueError(f"a month before 1970: {month!r}")
    return max(int(start.timestamp() * 1000), 0), int(end.timestamp() * 1000)


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


class StartedClock(Clock):
    """Starts at a given instant and runs at real speed: lets a separate process (tests, demos)
    live at, say, 10:00 Asia/Shanghai whatever the wall clock says."""

    def __init__(self, start_ms: int) -> None:
        self._start_ms = start_ms
        self._t0 = time.monotonic_ns()

    def now_ms(self) -> int:
        return self._start_ms + (time.monotonic_ns() - self._t0) // 1_000_000


def from_spec(spec: str) -> Clock:
    """'system' (default) or 'start:<ISO 8601 instant>' (see StartedClock)."""
    if not spec or spec == "system":
        return Clock()
    if spec.startswith("start:"):
        instant = _dt.datetime.fromisoformat(spec.removeprefix("start:"))
        if instant.tzinfo is None:
            instant = instant.replace(tzinfo=SHANGHAI)
        return StartedClock(int(instant.timestamp() * 1000))
    raise ValueError(f"unknown clock spec {spec!r}")


def shanghai(ms: int) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(ms / 1000, SHANGHAI)
