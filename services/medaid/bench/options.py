"""The load-testing tools' option checks, shared by `python -m medaid.bench`, `medaid.bench.reconcile`
and `medaid.bench.seed`: a value a tool cannot run is a usage error (exit 2), before anything starts."""

from __future__ import annotations

import argparse
import math


def _number(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: not a number") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"{value!r}: want a finite number")
    return number


def seconds(value: str) -> float:
    """`--duration`: a finite number of seconds above 0 (a phase of no time measures nothing)."""
    if (number := _number(value)) <= 0:
        raise argparse.ArgumentTypeError(f"{value!r}: want seconds above 0")
    return number


def open_loop_rate(value: str) -> float:
    """`make bench --rate`: requests a second, finite and not negative (0: the closed loop). A negative,
    infinite or NaN rate never reaches the end of the phase: the open loop would schedule sends forever."""
    if (number := _number(value)) < 0:
        raise argparse.ArgumentTypeError(f"{value!r}: want a rate of 0 (closed loop) or more")
    return number


def send_rate(value: str) -> float:
    """A rate of an open loop that has no closed loop to fall back on (`medaid.bench.reconcile --rate`):
    requests a second, finite and above 0."""
    if (number := open_loop_rate(value)) == 0:
        raise argparse.ArgumentTypeError(f"{value!r}: want a rate above 0 (requests a second)")
    return number


def at_least_one(value: str) -> int:
    """A whole number, 1 or more (`--concurrency`, `--channels`, `--population`, `--settlements`, …)."""
    if not value.strip().isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: want a whole number, 1 or more")
    return int(value)


def not_negative(value: str) -> int:
    """A whole number, 0 or more (`medaid.bench.reconcile --gateway-rows`, 0: skip)."""
    if not value.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{value!r}: want a whole number, 0 or more")
    return int(value)


def failed_pct(value: str) -> float:
    """`--max-failed-pct`: a share of attempts, 0 to 100; a usage error otherwise."""
    try:
        pct = float(value)
    except ValueError:
        pct = -1.0
    if not 0.0 <= pct <= 100.0:
        raise argparse.ArgumentTypeError(f"{value!r}: want a percentage from 0 to 100")
    return pct
