"""`python -m medaid.bench.seed`: seed a running topology (`make up`) with the harness's population
and print it as JSON. The Locust scenario runs it in a child process: Locust's gevent patches the
standard library, which grpc.aio's event loop must not run under."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from medaid.bench.model import Config, Person, Population
from medaid.bench.options import at_least_one
from medaid.bench.run import Harness


def to_json(pop: Population) -> dict[str, Any]:
    return {"people": [asdict(p) for p in pop.people],
            "senders": [[asdict(s), asdict(r)] for s, r in pop.senders], "credited_fen": pop.credited_fen,
            "run": pop.run}


def from_json(data: dict[str, Any]) -> Population:
    people = [Person(**p) for p in data["people"]]
    senders = [(Person(**s), Person(**r)) for s, r in data["senders"]]
    return Population(people, [p for p in people if p.employee], [p for p in people if p.helpers], senders,
                      int(data["credited_fen"]), int(data.get("run", 0)))


async def seed(cfg: Config, state: dict[str, Any]) -> Population:
    harness = Harness(cfg, state["addresses"], state["redis_url"])
    await harness.open()
    try:
        return await harness.seed_population()
    finally:
        await harness.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m medaid.bench.seed", description=__doc__)
    p.add_argument("--target", default="build/run/topology.json", help="state file written by `make up`")
    p.add_argument("--population", type=at_least_one, default=3000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--concurrency", type=at_least_one, default=64, help="sizes the set of transfer senders")
    a = p.parse_args(argv)
    cfg = Config(population=a.population, seed=a.seed, concurrency=a.concurrency, quiet=True)
    pop = asyncio.run(seed(cfg, json.loads(Path(a.target).read_text())))
    json.dump(to_json(pop), sys.stdout, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
