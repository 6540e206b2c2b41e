"""`make bench` / `python -m medaid.bench`: start a topology (or target a running one), seed a
population, drive the phases, print a ghz-style report with the money verdict, write JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from medaid.bench.model import MIX_KINDS, Config, mix_weights
from medaid.bench.options import at_least_one, failed_pct, open_loop_rate, seconds
from medaid.bench.report import render_text, write_report
from medaid.bench.run import run_bench
from medaid.common import tls
from medaid.common.paths import policies_dir
from medaid.common.server import install_uvloop
from medaid.topology import DEMO_CLOCK, STATE_FILE, Topology, start_service

BENCH_WALLET_POLICY = policies_dir() / "wallet-bench.toml"


def replica_counts(value: str) -> dict[str, int]:
    """'registry-13=2,wallet=2' → {'registry-13': 2, 'wallet': 2}; a usage error (exit 2) when malformed."""
    out: dict[str, int] = {}
    for item in filter(None, (p.strip() for p in value.split(","))):
        name, _, count = item.partition("=")
        if not name or not count.isdigit() or int(count) < 1:
            raise argparse.ArgumentTypeError(f"{item!r}: want <service>=<replicas, at least 1>")
        out[name] = int(count)
    return out


def mix_option(value: str) -> str:
    """The `--mix` text, checked now (a usage error, exit 2) rather than after seeding."""
    try:
        mix_weights(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def phase_list(value: str) -> tuple[str, ...]:
    """'settle,gateway' → ('settle', 'gateway'); a usage error for a phase the bench does not have."""
    chosen = tuple(dict.fromkeys(x.strip() for x in value.split(",") if x.strip()))
    unknown = [x for x in chosen if x not in Config.phases]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"{value!r}: phases from {','.join(Config.phases)}")
    return chosen


def parse(argv: list[str] | None) -> tuple[Config, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="python -m medaid.bench")
    p.add_argument("--duration", type=seconds, default=10.0, help="seconds per phase")
    p.add_argument("--concurrency", type=at_least_one, default=64, help="requests in flight (closed loop)")
    p.add_argument("--rate", type=open_loop_rate, default=0.0,
                   help="open-loop target rate for the settle phase (req/s; 0: closed loop)")
    p.add_argument("--mix", type=mix_option, default=Config.mix,
                   help=f"mixed phase weights, names from {','.join(MIX_KINDS)}, e.g. settle=60,lookup=15")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--population", type=at_least_one, default=3000)
    p.add_argument("--provinces", type=province_list, default=Config.provinces,
                   help="provinces of the population, from 13,11,62,35 (13 and 11 always; default all four)")
    p.add_argument("--phases", type=phase_list, default=None,
                   help="settle (2207 over gRPC), half (after a closed-loop settle: 2207 in an open loop at half "
                        "the settle phase's rate), gateway (2207 as HTTP JSON), transfer, mixed (default: all; "
                        "with --rate, all but half)")
    p.add_argument("--channels", type=at_least_one, default=4, help="client channels to the router")
    p.add_argument("--out", default="build/bench/report.json")
    p.add_argument("--plot", default="", help="settle-phase latency chart: .png/.svg with matplotlib (the `plot` "
                                              "extra), .csv (or no matplotlib) writes seq,latency_ms rows")
    p.add_argument("--target", default="", help="a running topology's state file (make up); default: start one")
    p.add_argument("--cluster", action="store_true", help="run the started topology on a 3-master Redis Cluster")
    p.add_argument("--replicas", type=replica_counts, default={},
                   help="replicas of the started topology, e.g. registry-13=2,wallet=2")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--max-failed-pct", type=failed_pct, default=Config.max_failed_pct,
                   help="exit 4 when a measured phase's failures (refusals excluded) exceed this %% of its "
                        "attempts (default %(default)s)")
    p.add_argument("--tls", action="store_true", help="start the topology with mTLS + authorization (as `bench`)")
    p.add_argument("--tls-dir", default="", help="with --target: certificate folder (make certs) to call it over mTLS")
    p.add_argument("--metrics", choices=("on", "off", "compare"), default="on",
                   help="the started topology's Prometheus metrics; compare: run the bench with them off, then "
                        "on, and report their CPU cost per operation")
    a = p.parse_args(argv)
    a.phases_given = a.phases is not None
    if a.phases is None:  # the default: every phase, but `half` needs a closed-loop settle phase
        a.phases = tuple(x for x in Config.phases if x != "half" or not a.rate)
    elif "half" in a.phases and ("settle" not in a.phases or a.rate):
        p.error("--phases half: runs after a closed-loop settle phase, at half its rate (give settle, without --rate)")
    if a.metrics != "on" and a.target:
        p.error("--metrics off/compare starts its own topologies; it cannot be used with --target")
    # What shapes the topology the bench starts does nothing to a running one: say so.
    started_only = [f for f, given in (("--cluster", a.cluster), ("--replicas", a.replicas), ("--tls", a.tls)) if given]
    if started_only and a.target:
        p.error(f"{', '.join(started_only)}: for the topology the bench starts, not with --target "
                "(over mTLS to a running one: --tls-dir)")
    if a.tls_dir and not a.target:
        p.error("--tls-dir: with --target only, to call a running topology over mTLS (the topology the bench "
                "starts: --tls)")
    cfg = Config(duration_s=a.duration, concurrency=a.concurrency, rate=a.rate, mix=a.mix, seed=a.seed,
                 population=a.population, provinces=a.provinces,
                 phases=a.phases, channels=a.channels, out=a.out, plot=a.plot,
                 quiet=a.quiet, max_failed_pct=a.max_failed_pct)
    return cfg, a


def province_list(value: str) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(x.strip() for x in value.split(",") if x.strip()))
    if not set(chosen) <= set(Config.provinces) or not {"13", "11"} <= set(chosen):
        raise argparse.ArgumentTypeError(f"{value!r}: some of 13,11,62,35, with 13 and 11 among them")
    return chosen


def metrics_cost(off: dict[str, Any], on: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per phase: CPU µs per operation (all processes) without and with metrics, and the difference."""
    out: dict[str, dict[str, float]] = {}
    for phase in ("settle", "gateway", "transfer", "mixed"):
        a, b = off.get(phase, {}), on.get(phase, {})
        if phase == "mixed":
            a, b = a.get("all", {}), b.get("all", {})
        us_off, us_on = a.get("cpu", {}).get("total_us_per_op"), b.get("cpu", {}).get("total_us_per_op")
        if us_off and us_on:
            out[phase] = {"off_us_per_op": us_off, "on_us_per_op": us_on, "delta_us_per_op": us_on - us_off,
                          "delta_pct": round(100 * (us_on - us_off) / us_off, 1)}
    return out


def render_cost(cost: dict[str, dict[str, float]]) -> str:
    lines = ["", "  metrics CPU cost (µs per operation, all processes; off → on):"]
    for phase, c in cost.items():
        lines.append(f"    {phase:<9}{c['off_us_per_op']:>7} → {c['on_us_per_op']:<7} "
                     f"{c['delta_us_per_op']:+} µs ({c['delta_pct']:+} %)")
    return "\n".join(lines)


def target_state(path: str) -> dict[str, Any]:
    """The state file `--target` names (what `make up` writes): its addresses and Redis URL; ValueError,
    saying what is wrong, when there is none or it is not a topology's state."""
    try:
        state = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"--target {path}: no such state file (`make up` writes {STATE_FILE})") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"--target {path}: cannot read it as a topology's state file ({exc})") from None
    if not isinstance(state, dict) or not isinstance(state.get("addresses"), dict) \
            or not isinstance(state.get("redis_url"), str) or "router" not in state["addresses"]:
        raise ValueError(f"--target {path}: not a topology's state file (no addresses with a router, or no "
                         f"redis_url; `make up` writes {STATE_FILE})")
    return state


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse(argv)
    if args.target:  # checked before anything starts: a usage error, as the options are
        try:
            args.state = target_state(args.target)
            if args.phases_given and "gateway" in cfg.phases and "gateway" not in args.state["addresses"]:
                raise ValueError(f"--phases gateway: --target {args.target} names no gateway (leave gateway "
                                 "out of --phases)")
        except ValueError as exc:
            print(f"python -m medaid.bench: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    if args.metrics != "compare":
        report = run_once(cfg, args, metrics=args.metrics == "on")
    else:
        print("metrics compare: a run with metrics off, then one with metrics on", file=sys.stderr)
        off = run_once(cfg, args, metrics=False)
        report = run_once(cfg, args, metrics=True)
        report["metrics_cost"] = metrics_cost(off, report)
        report["metrics_off"] = {k: off[k] for k in ("settle", "gateway", "transfer", "mixed", "money", "validity")
                                 if k in off}
    print(render_text(report) + (render_cost(report["metrics_cost"]) if "metrics_cost" in report else ""))
    path = write_report(report, cfg.out)
    print(f"\nreport: {path}")
    runs = [report, report.get("metrics_off", {})]
    if not all(r.get("money", {}).get("conserved", True) for r in runs):
        return 3
    if not all(r.get("validity", {}).get("valid", True) for r in runs):
        return 4  # no measurement: a phase failed beyond --max-failed-pct
    return 0


def run_once(cfg: Config, args: argparse.Namespace, *, metrics: bool) -> dict[str, Any]:
    echo = start_service("echo", "medaid.bench.echo", [])
    topo = None
    try:
        if args.target:
            state = args.state
            addresses, redis_url = state["addresses"], state["redis_url"]
        else:
            print("starting topology: redis-server, registries 13/11/62/35, wallet, router …", file=sys.stderr)
            # Services log at WARNING under load: a JSON line per request would measure the log pipe.
            topo = Topology.start(clock=DEMO_CLOCK, wallet_policy=str(BENCH_WALLET_POLICY), log_level="WARNING",
                                  tls=args.tls, cluster=args.cluster, replicas=args.replicas or None,
                                  metrics=metrics)
            addresses = {n: topo.address(n) for n in {name.split("#")[0] for name in topo.ports}}
            redis_url = topo.redis.url
        tls_config = topo.tls("bench") if topo is not None else (
            tls.load("bench", tls_dir=args.tls_dir) if args.tls_dir else None)
        install_uvloop()
        pids = {"echo": echo.proc.pid}
        if topo is not None:
            pids.update({name: svc.proc.pid for name, svc in topo.services.items()})
            for i, node in enumerate(getattr(topo.redis, "nodes", None) or [topo.redis]):
                if getattr(node, "proc", None) is not None:
                    pids["redis" if i == 0 and not args.cluster else f"redis-{i}"] = node.proc.pid
        elif args.target:
            pids.update({name: int(pid) for name, pid in state.get("pids", {}).items() if pid})
        report = asyncio.run(run_bench(cfg, addresses, redis_url, echo.address, tls=tls_config, pids=pids,
                                       institution_tokens=topo.institution_tokens if topo is not None else None))
        # A running topology's metrics are what its state file says (`make up` names their endpoints);
        # nothing said: unknown (null).
        report["config"]["metrics"] = ("on" if metrics else "off") if topo is not None else (
            "on" if args.state.get("metrics") else None)
    finally:
        echo.stop()
        if topo is not None:
            topo.stop()
    return report


if __name__ == "__main__":
    sys.exit(main())
