"""Locust scenario for the JSON gateway: hospitals sending 2207s in the national envelope.

Needs the `locust` extra (pip install 'medaid-gongji[locust]') and a running topology (`make up`):

    GW=$(.venv/bin/python -c 'import json; print(json.load(open("build/run/topology.json"))["addresses"]["gateway"])')
    .venv/bin/locust -f services/medaid/bench/locustfile.py --headless -u 64 -r 16 -t 30s --host "http://$GW"

It seeds the same population as `make bench` (medaid.bench.seed, in a child process) before the
first user starts, sends the same 2207 messages (medaid.bench.gateway), counts a settlement only when the
gateway answers infcode 0, and at the end prints the same money verdict; a drift makes the
process exit 3. Each run is counted in the topology's Redis like `make bench`'s (people and msgids
of its own). MEDAID_TOPOLOGY names another state file; MEDAID_BENCH_POPULATION/SEED size it.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

from locust import HttpUser, between, events, task

from medaid.bench import gateway, money, seed
from medaid.bench.model import Config
from medaid.bench.population import Msgids
from medaid.bench.run import Harness
from medaid.common.redis_client import sync_client

STATE = Path(os.environ.get("MEDAID_TOPOLOGY", "build/run/topology.json"))
_shared: dict[str, Any] = {}


@events.test_start.add_listener
def seed_population(environment: Any, **_: Any) -> None:
    state = json.loads(STATE.read_text())
    cfg = Config(population=int(os.environ.get("MEDAID_BENCH_POPULATION", "3000")),
                 seed=int(os.environ.get("MEDAID_BENCH_SEED", "1")), quiet=True)
    # The tallies are compared with what the ledgers gained during this run (the topology may have
    # served runs before), as `make bench --target` does.
    client = sync_client(state["redis_url"])
    try:
        before = money.check(client)
    finally:
        client.close()
    done = subprocess.run([sys.executable, "-m", "medaid.bench.seed", "--target", str(STATE),
                           "--population", str(cfg.population), "--seed", str(cfg.seed)],
                          check=True, capture_output=True, text=True)
    population = seed.from_json(json.loads(done.stdout))
    harness = Harness(cfg, state["addresses"], state["redis_url"])
    # The run the seeding counted (bench:runs): msgids of its own, as its people are.
    harness.run, harness.msgids = population.run, Msgids(cfg.seed, population.run)
    _shared.update(harness=harness, population=population, redis_url=state["redis_url"], before=before)


@events.test_stop.add_listener
def verdict(environment: Any, **_: Any) -> None:
    harness: Harness = _shared["harness"]
    client = sync_client(_shared["redis_url"])
    try:
        v = money.check(client, expected_credits_fen=_shared["population"].credited_fen,
                        expected_settled_fen=harness.settled_fen, before=_shared["before"])
    finally:
        client.close()
    print(f"MONEY: conserved={v.conserved} drift={v.drift_fen} fen negative balances={v.negative_balances}")
    if not v.conserved:
        environment.process_exit_code = 3


class Hospital(HttpUser):
    wait_time = between(0, 0)

    @task
    def settle_2207(self) -> None:
        harness: Harness = _shared["harness"]
        req = harness._settle_request(_shared["population"], random.random() < 0.5)
        i = req.institution
        body = gateway.envelope_2207(req.msgid, i.fixmedins_code, i.mdtrtarea_admvs, req.input.psn_no,
                                     req.input.insuplc_admdvs, req.input.psn_part_amt_fen)
        with self.client.post(gateway.CALL_PATH, json=body, name="2207", catch_response=True) as resp:
            status, reason, fen = gateway.read_answer(resp.content) if resp.status_code == 200 else ("HTTP", "", 0)
            if status == "OK":
                harness.settled_fen += fen
                resp.success()
            else:
                resp.failure(reason or f"HTTP {resp.status_code}")
