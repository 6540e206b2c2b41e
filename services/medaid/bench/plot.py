"""The settle phase's latencies for a reader: a chart with matplotlib (the `plot` extra), else CSV."""

from __future__ import annotations

import csv
from pathlib import Path


def write_csv(latencies_ms: list[float], path: Path) -> Path:
    """One row per completed request, in completion order: `seq,latency_ms`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["seq", "latency_ms"])
        w.writerows((i, round(v, 3)) for i, v in enumerate(latencies_ms, 1))
    return path


def latency_chart(latencies_ms: list[float], path: str, title: str = "settle (2207) latency") -> Path:
    """A histogram with labelled axes and the p50/p99 marked, as PNG (or SVG/PDF by suffix) when
    matplotlib is installed; a `.csv` path, or no matplotlib, writes the CSV instead (same stem)."""
    out = Path(path)
    if out.suffix == ".csv":
        return write_csv(latencies_ms, out)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return write_csv(latencies_ms, out.with_suffix(".csv"))
    lat = sorted(latencies_ms)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if lat:
        hi = lat[min(len(lat) - 1, int(len(lat) * 0.999))] or 1.0
        ax.hist([v for v in lat if v <= hi], bins=60, color="#4670b4")
        for q, colour in ((0.5, "#2a9d3a"), (0.99, "#c82828")):
            v = lat[min(len(lat) - 1, int(len(lat) * q))]
            ax.axvline(v, color=colour, linestyle="--", label=f"p{int(q * 100)} = {v:.1f} ms")
        ax.legend()
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("requests")
    ax.set_title(f"{title}: {len(lat)} completed requests")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
