"""CPU per operation, per process: where a phase's CPU went (Linux /proc; nothing elsewhere).

The harness samples each local process's user+system time (all its threads) around a phase and
divides by the operations completed (and, apart, by the attempts), so every report carries the
profile that bounds throughput on the machine it ran on: a process near 100 % of one core is the
bottleneck; a total near cpu_count × 1 s per second means the machine is. A failure that comes back
at once costs little: per attempt, a phase of fast failures looks cheap; per completed operation,
it costs what it cost to get each result."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process and all its threads; None if it cannot be read."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()  # the command name may contain spaces and parentheses
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass
class CpuMeter:
    """Named processes to account; `start()` then `stop(ops, elapsed_s)` per phase."""

    pids: dict[str, int]
    _before: dict[str, float] = field(default_factory=dict)

    def start(self) -> None:
        self._before = {n: s for n, p in self.pids.items() if (s := cpu_seconds(p)) is not None}

    def stop(self, completed: int, attempts: int, elapsed_s: float) -> dict[str, Any]:
        """{"processes": {name: {"cpu_s", "util_pct", "us_per_op", "us_per_attempt"}}, "total_us_per_op",
        "total_us_per_attempt", "busiest"}: µs per completed operation (None when none completed, like
        rps it counts results) and per attempt (None when none was made)."""
        out: dict[str, dict[str, Any]] = {}
        for name, before in self._before.items():
            after = cpu_seconds(self.pids[name])
            if after is None:
                continue
            used = max(after - before, 0.0)
            out[name] = {"cpu_s": round(used, 3), "util_pct": round(100 * used / elapsed_s, 1) if elapsed_s else 0.0,
                         "us_per_op": round(used / completed * 1e6) if completed else None,
                         "us_per_attempt": round(used / attempts * 1e6) if attempts else None}
        if not out:
            return {}
        busiest = max(out, key=lambda n: out[n]["cpu_s"])
        return {"processes": out,
                "total_us_per_op": sum(int(v["us_per_op"]) for v in out.values()) if completed else None,
                "total_us_per_attempt": sum(int(v["us_per_attempt"]) for v in out.values()) if attempts else None,
                "busiest": busiest}


def busiest_us(cpu: dict[str, Any]) -> tuple[str, int]:
    """The process that spent the most CPU per operation, and that many µs."""
    name = max(cpu["processes"], key=lambda n: cpu["processes"][n]["us_per_op"])
    return name, int(cpu["processes"][name]["us_per_op"])


def ratio_by_busiest(echo: dict[str, Any], phase: dict[str, Any]) -> float | None:
    """The phase's ratio to the echo baseline on a machine where no process waits for a CPU: each
    side's rate is then bounded by its busiest process (a single-threaded event loop at one core),
    at 1 s ÷ that process's CPU per operation. None without CPU figures for both, or where a side
    completed no operation."""
    if not echo or not phase or echo.get("total_us_per_op") is None or phase.get("total_us_per_op") is None:
        return None
    _, e = busiest_us(echo)
    _, p = busiest_us(phase)
    return round(e / p, 3) if e and p else None


def render(phase: str, cpu: dict[str, Any]) -> str:
    if not cpu:
        return ""
    busiest = cpu["processes"][cpu["busiest"]]
    tail = f"(busiest {cpu['busiest']} at {busiest['util_pct']}% of a core)"
    per = "us_per_op" if cpu["total_us_per_op"] is not None else "us_per_attempt"
    ranked = sorted(cpu["processes"].items(), key=lambda kv: -(kv[1][per] or 0))
    parts = "  ".join(f"{n} {v[per]}" for n, v in ranked if v[per])
    if per == "us_per_attempt":
        spent = f"per attempt: {parts}  = {cpu['total_us_per_attempt']}" if cpu["total_us_per_attempt"] else "none made"
        return f"  cpu µs/op {phase}: no operation completed; {spent}  {tail}"
    attempts = ("" if cpu["total_us_per_attempt"] == cpu["total_us_per_op"]
                else f"  ({cpu['total_us_per_attempt']} per attempt)")
    return f"  cpu µs/op {phase}: {parts}  = {cpu['total_us_per_op']}{attempts}  {tail}"
