"""`make bench` / `python -m medaid.bench`: start a topology (or target a running one), seed a
population, drive the phases, print a ghz-style report with the money verdict, write JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from medaid.bench.run import Config, render_text, run_bench, write_report
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


def parse(argv: list[str] | None) -> tuple[Config, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="python -m medaid.bench")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight (closed loop)")
    p.add_argument("--rate", type=float, default=0.0, help="open-loop target rate for the settle phase (req/s)")
    p.add_argument("--mix", default=Config.mix, help="mixed phase weights, e.g. settle=60,lookup=15,…")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--population", type=int, default=3000)
    p.add_argument("--phases", default="settle,gateway,transfer,mixed",
                   help="settle (2207 over gRPC), gateway (2207 as HTTP JSON), transfer, mixed")
    p.add_argument("--channels", type=int, default=4, help="client channels to the router")
    p.add_argument("--out", default="build/bench/report.json")
    p.add_argument("--plot", default="", help="settle-phase latency chart: .png/.svg with matplotlib (the `plot` "
                                              "extra), .csv (or no matplotlib) writes seq,latency_ms rows")
    p.add_argument("--target", default="", help="a running topology's state file (make up); default: start one")
    p.add_argument("--cluster", action="store_true", help="run the started topology on a 3-master Redis Cluster")
    p.add_argument("--replicas", type=replica_counts, default={},
                   help="replicas of the started topology, e.g. registry-13=2,wallet=2")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--tls", action="store_true", help="start the topology with mTLS + authorization (as `bench`)")
    p.add_argument("--tls-dir", default="", help="with --target: certificate folder (make certs) to call it over mTLS")
    a = p.parse_args(argv)
    cfg = Config(duration_s=a.duration, concurrency=a.concurrency, rate=a.rate, mix=a.mix, seed=a.seed,
                 population=a.population, phases=tuple(x for x in a.phases.split(",") if x), channels=a.channels,
                 out=a.out, plot=a.plot, quiet=a.quiet)
    return cfg, a


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse(argv)
    echo = start_service("echo", "medaid.bench.echo", [])
    topo = None
    try:
        if args.target:
            state = json.loads(Path(args.target or STATE_FILE).read_text())
            addresses, redis_url = state["addresses"], state["redis_url"]
        else:
            print("starting topology: redis-server, registries 13/11/62/35, wallet, router …", file=sys.stderr)
            # Services log at WARNING under load: a JSON line per request would measure the log pipe.
            topo = Topology.start(clock=DEMO_CLOCK, wallet_policy=str(BENCH_WALLET_POLICY), log_level="WARNING",
                                  tls=args.tls, cluster=args.cluster, replicas=args.replicas or None)
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
        report = asyncio.run(run_bench(cfg, addresses, redis_url, echo.address, tls=tls_config, pids=pids))
    finally:
        echo.stop()
        if topo is not None:
            topo.stop()
    print(render_text(report))
    path = write_report(report, cfg.out)
    print(f"\nreport: {path}")
    return 0 if report["money"]["conserved"] else 3


if __name__ == "__main__":
    sys.exit(main())
