"""Latency and outcome recording for the load harness (ghz-style summaries)."""

from __future__ import annotations

import contextvars
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# The (status, reason) of the last operation recorded by the current task (a worker reads its own
# outcome: the mixed phase's `all` row records it again, as its operation's row did).
LAST_OUTCOME: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar("last_outcome", default=("OK", ""))


# A business rule said no (gRPC FAILED_PRECONDITION; the gateway's infcode -1): not a failure of the system.
REFUSALS = frozenset({"FAILED_PRECONDITION", "REFUSED"})

# The report's rows that are measured phases (the mixed phase: each of its operations).
MEASURED = ("settle", "settle_half_load", "gateway", "transfer")


@dataclass
class OpStats:
    """Every attempt is recorded; only completed operations (status OK) count as throughput, and the
    latency percentiles are theirs. Refusals (a business rule said no) and errors are reported apart."""

    name: str
    latencies_ms: list[float] = field(default_factory=list)
    ok_latencies_ms: list[float] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)

    def record(self, latency_ms: float, code: str = "OK", reason: str = "") -> None:
        LAST_OUTCOME.set((code, reason))
        self.latencies_ms.append(latency_ms)
        if code == "OK":
            self.ok_latencies_ms.append(latency_ms)
        self.codes[code] += 1
        if reason:
            self.reasons[reason] += 1

    @property
    def count(self) -> int:
        return len(self.latencies_ms)

    @property
    def completed(self) -> int:
        return len(self.ok_latencies_ms)

    @property
    def errors(self) -> int:
        return self.count - self.completed

    def summary(self, elapsed_s: float) -> dict[str, object]:
        lat = sorted(self.ok_latencies_ms)

        def pct(p: float) -> float:
            if not lat:
                return 0.0
            return round(lat[min(len(lat) - 1, max(0, math.ceil(p / 100 * len(lat)) - 1))], 3)

        # The seconds the phase measured (the configured duration or less, or more: the last requests in
        # flight); the rates are the counts over exactly this figure, so a reader can recompute them.
        elapsed = round(elapsed_s, 3)

        def per_s(n: int) -> float:
            return round(n / elapsed, 1) if elapsed > 0 else 0.0

        return {
            "count": self.count,
            "completed": self.completed,
            # Throughput is completed operations only; a refusal is not a transfer or a settlement.
            "rps": per_s(self.completed),
            "attempted_rps": per_s(self.count),
            "elapsed_s": elapsed,
            "errors": self.errors,
            "refused": (refused := sum(n for c, n in self.codes.items() if c in REFUSALS)),
            "failed": self.errors - refused,
            "min_ms": round(lat[0], 3) if lat else 0.0,
            "mean_ms": round(sum(lat) / len(lat), 3) if lat else 0.0,
            "p50_ms": pct(50),
            "p90_ms": pct(90),
            "p95_ms": pct(95),
            "p99_ms": pct(99),
            "max_ms": round(lat[-1], 3) if lat else 0.0,
            "codes": dict(self.codes),
            "reasons": dict(self.reasons),
        }


def validity(report: dict[str, Any], max_failed_pct: float) -> dict[str, Any]:
    """`make bench`'s verdict on its measured rows: each phase of MEASURED, each operation of the mixed
    phase (failed_beyond)."""
    rows = [(k, report[k]) for k in MEASURED if k in report]
    rows += [(f"mixed.{k}", s) for k, s in report.get("mixed", {}).items() if k != "all"]
    return failed_beyond(rows, max_failed_pct)


def failed_beyond(rows: Iterable[tuple[str, Mapping[str, Any]]], max_failed_pct: float) -> dict[str, Any]:
    """A run is a measurement only when no measured row (an OpStats summary) failed (UNAVAILABLE,
    INTERNAL, a deadline: any status but OK and a refusal) beyond `max_failed_pct` % of its attempts
    (Config.max_failed_pct, `--max-failed-pct`). {"valid", "max_failed_pct", "phases_over": {row:
    {"count", "failed", "failed_pct"}}}."""
    over: dict[str, dict[str, Any]] = {}
    for name, s in rows:
        count, failed = int(s["count"]), int(s["failed"])
        if count and 100 * failed / count > max_failed_pct:
            over[name] = {"count": count, "failed": failed, "failed_pct": round(100 * failed / count, 2)}
    return {"valid": not over, "max_failed_pct": max_failed_pct, "phases_over": over}


class Recorder:
    def __init__(self) -> None:
        self.ops: dict[str, OpStats] = {}

    def op(self, name: str) -> OpStats:
        if name not in self.ops:
            self.ops[name] = OpStats(name)
        return self.ops[name]

    def total(self) -> int:
        return sum(o.count for o in self.ops.values())
