"""Is this host short of CPU? Linux pressure stall information (PSI): the share of recent time in
which some runnable task waited for a CPU.

The router's settle batches linger for company only then (common/batcher.py): where CPU is what
limits throughput, fuller batches spend less of it per settlement; where CPUs sit idle and latency
limits a closed loop instead, waiting for company would only add latency. Read lazily (at most once
per `interval_s`, when asked), from the process's cgroup (`/sys/fs/cgroup/cpu.pressure`, a container's
own share) or the whole host (`/proc/pressure/cpu`). Where neither exists the answer is always no.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

PATHS = (Path("/sys/fs/cgroup/cpu.pressure"), Path("/proc/pressure/cpu"))


def _stalled_us(path: Path) -> int | None:
    """The cumulative `some total=` (microseconds) of a PSI file, or None when it cannot be read."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith("some "):
                return int(line.rsplit("total=", 1)[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class CpuPressure:
    def __init__(self, threshold: float = 0.2, interval_s: float = 0.2, paths: tuple[Path, ...] = PATHS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.interval_s = interval_s
        self._clock = clock
        self._path = next((p for p in paths if _stalled_us(p) is not None), None)
        self._last = (clock(), _stalled_us(self._path) if self._path is not None else 0)
        self._busy = False

    @property
    def available(self) -> bool:
        return self._path is not None

    def busy(self) -> bool:
        """True while, over the last interval, some task waited for a CPU at least `threshold` of the time."""
        if self._path is None:
            return False
        now = self._clock()
        since = now - self._last[0]
        if since >= self.interval_s:
            stalled = _stalled_us(self._path)
            if stalled is None:
                return False
            self._busy = (stalled - (self._last[1] or 0)) / 1e6 / since >= self.threshold
            self._last = (now, stalled)
        return self._busy
