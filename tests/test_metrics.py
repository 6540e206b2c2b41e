"""Prometheus metrics (docs/operations.md "Metrics"): every process serves /metrics on a port of its
own, and the counters move with the traffic, with the right labels.

A real topology (redis-server, registries 13 and 11, wallet, router, gateway, each its own process);
the metrics are scraped over HTTP before and after each action and compared."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
import yaml
from medaid.common import errors, fastredis
from medaid.common.fastredis import LeanRedis
from medaid.common.redis_server import RedisServer
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.topology import DEMO_CLOCK, Topology, prometheus_targets, start_service
from medaid.wallet.v1 import wallet_pb2 as wpb
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from support import bind, credit, dead_port, enroll, fund_wallet, new_id, rid, settle
from test_gateway import Env, data_2207, envelope, family, post_raw

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family_ in text_string_to_metric_families(text) for s in family_.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


class Scrapes:
    """Every process's metrics, taken again on `take()`."""

    def __init__(self, topo: Topology) -> None:
        self.ports = {n: s.metrics_port for n, s in topo.services.items()}
        self.before: dict[str, Samples] = {}
        self.after: dict[str, Samples] = {}

    def take(self) -> None:
        self.before, self.after = self.after, {n: scrape(p) for n, p in self.ports.items()}

    def delta(self, process: str, name: str, **labels: str) -> float:
        return value(self.after[process], name, **labels) - value(self.before.get(process, {}), name, **labels)

    def settled_delta(self, process: str, name: str, expected: float, **labels: str) -> float:
        """`delta` once it reaches `expected` (or 2 s passed): a refused call's status reaches its caller
        before the server's interceptor counts it, so a scrape right after can be a moment early."""
        deadline = time.monotonic() + 2.0
        while (got := self.delta(process, name, **labels)) != expected and time.monotonic() < deadline:
            time.sleep(0.02)
            self.after[process] = scrape(self.ports[process])
        return got


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    topo = Topology.start(provinces=("13", "11"), clock=DEMO_CLOCK)
    e = Env(topo)
    try:
        yield e
    finally:
        e.close()
        topo.stop()


@pytest.fixture
def scrapes(env: Env) -> Scrapes:
    s = Scrapes(env.topo)
    s.take()
    return s


def test_every_process_serves_metrics_on_a_port_of_its_own(env: Env):
    ports = {n: s.metrics_port for n, s in env.topo.services.items()}
    assert set(ports) == {"registry-13", "registry-11", "wallet", "router", "gateway"}
    assert all(ports.values()) and len(set(ports.values())) == len(ports)
    assert not set(ports.values()) & set(env.topo.ports.values())
    for name, port in ports.items():
        names = {n for n, _ in scrape(port)}
        assert "medaid_redis_roundtrip_seconds_count" in names, name  # each talks to its Redis


def test_each_process_exports_its_own_service_metrics_only(env: Env):
    """A gauge without labels reads 0 wherever it is registered: the wallet's money in flight must come
    from the wallets alone, or `max(…)` shows 0 while every wallet is down."""
    wallet_only = {"medaid_wallet_transfers_in_flight", "medaid_wallet_money_in_flight_fen"}
    for name, svc in env.topo.services.items():
        names = {n for n, _ in scrape(svc.metrics_port)}
        if name == "wallet":
            assert wallet_only <= names
        else:
            assert not wallet_only & names, f"{name} exports {sorted(wallet_only & names)}"


def test_a_2207_through_the_gateway_moves_every_hops_counters(env: Env, scrapes: Scrapes):
    _, child = family(env)
    message = envelope("2207", data_2207(child, "12.34"))
    env.post(message).ok()
    scrapes.take()
    ok = {"code": "OK", "reason": ""}
    assert scrapes.delta("gateway", "medaid_gateway_messages_total", infno="2207", infcode="0", reason="") == 1
    assert scrapes.delta("gateway", "medaid_gateway_duration_seconds_count", infno="2207", infcode="0") == 1
    assert scrapes.delta("router", "medaid_rpc_requests_total", method="RouterService/Settle", **ok) == 1
    assert scrapes.delta("router", "medaid_rpc_duration_seconds_count", method="RouterService/Settle", **ok) == 1
    assert scrapes.delta("router", "medaid_batch_items_count", batcher="settle") == 1
    assert scrapes.delta("router", "medaid_batch_items_sum", batcher="settle") == 1
    assert scrapes.delta("registry-13", "medaid_rpc_requests_total", method="RegistryService/SettleBatch", **ok) == 1
    assert scrapes.delta("registry-13", "medaid_settlements_total", outcome="settled", path="atomic", reason="") == 1
    assert scrapes.delta("registry-13", "medaid_settled_fen_total", source="helper") == 1234  # the helper paid all
    assert scrapes.delta("registry-13", "medaid_redis_roundtrip_seconds_count") >= 2
    assert scrapes.delta("registry-11", "medaid_settlements_total", outcome="settled", path="atomic", reason="") == 0

    # The same message again: the gateway answers it from its store, nothing is settled twice.
    env.post(message).ok()
    scrapes.take()
    assert scrapes.delta("gateway", "medaid_gateway_messages_total", infno="2207", infcode="0", reason="") == 1
    assert scrapes.delta("router", "medaid_rpc_requests_total", method="RouterService/Settle", **ok) == 0
    assert scrapes.delta("registry-13", "medaid_settlements_total", outcome="settled", path="atomic", reason="") == 0


def test_refusals_are_counted_by_status_code_and_reason(env: Env, scrapes: Scrapes):
    env.post(envelope("9999", {})).refused("UNSUPPORTED_INFNO")
    with pytest.raises(grpc.RpcError) as caught:
        env.hebei.Settle(rpb.SettleRequest(request_id=rid("bad"), patient_id_number=new_id(), amount_fen=0))
    info = errors.error_info(caught.value)
    assert info is not None and info.reason
    scrapes.take()
    # a caller's own infno text is no label value (bounded series): every unserved one is "other"
    assert scrapes.delta("gateway", "medaid_gateway_messages_total", infno="other", infcode="-1",
                         reason="UNSUPPORTED_INFNO") == 1
    assert scrapes.settled_delta("registry-13", "medaid_rpc_requests_total", 1, method="RegistryService/Settle",
                                 code=caught.value.code().name, reason=info.reason) == 1
    assert scrapes.delta("registry-13", "medaid_settlements_total", outcome="refused", path="",
                         reason=info.reason) == 1


def test_wallet_transfers_are_counted_by_state(env: Env, scrapes: Scrapes):
    recipient = enroll(env.hebei, name="李桂兰", birth="19500101")
    sender = enroll(env.beijing, name="李明", birth="19800101", region="110000", division="110105")
    credit(env.beijing, sender, 50_000)
    t = fund_wallet(env.wallet, sender, recipient, 4_000, accept=False)
    scrapes.take()
    assert scrapes.delta("wallet", "medaid_wallet_transfers_total", state="CREATED") == 1
    assert scrapes.delta("wallet", "medaid_wallet_transfers_total", state="PENDING_ACCEPT") == 1
    assert scrapes.delta("wallet", "medaid_batch_items_count", batcher="debit") == 1
    assert scrapes.delta("registry-11", "medaid_rpc_requests_total", method="RegistryService/DebitForTransferBatch",
                         code="OK", reason="") == 1
    # The maintenance pass (every 200 ms here) reports the transfer waiting for acceptance as in flight.
    deadline = time.monotonic() + 5
    while value(scrape(scrapes.ports["wallet"]), "medaid_wallet_money_in_flight_fen") < 4_000:
        assert time.monotonic() < deadline, "money in flight never reported"
        time.sleep(0.1)
    env.wallet.AcceptTransfer(wpb.AcceptTransferRequest(request_id=rid("accept"), transfer_id=t.transfer_id,
                                                        recipient_id_number=recipient))
    scrapes.take()
    assert scrapes.delta("wallet", "medaid_wallet_transfers_total", state="COMPLETED") == 1
    assert scrapes.delta("wallet", "medaid_rpc_requests_total", method="WalletService/AcceptTransfer",
                         code="OK", reason="") == 1


def test_reversed_money_is_counted_by_source_so_net_settled_is_settled_minus_reversed(env: Env,
                                                                                    scrapes: Scrapes):
    """Counters never go down: a reversal counts its money in medaid_reversed_fen_total by the source
    it goes back to, once; an undone reversal counts it as settled again."""
    member, helper = enroll(env.hebei, name="王芳"), enroll(env.hebei, name="王强")
    credit(env.hebei, member, 1_000)
    credit(env.hebei, helper, 10_000)
    bind(env.hebei, helper, member, cpb.RELATION_SPOUSE)
    sid = rid("2207")
    settle(env.hebei, member, 4_000, request_id=sid)  # own 1,000, helper 3,000
    scrapes.take()
    assert scrapes.delta("registry-13", "medaid_settled_fen_total", source="account") == 1_000
    assert scrapes.delta("registry-13", "medaid_settled_fen_total", source="helper") == 3_000
    rev = rpb.ReverseSettlementRequest(request_id=rid("2208"), settlement_id=sid)
    env.hebei.ReverseSettlement(rev)
    env.hebei.ReverseSettlement(rev)  # a resend moves nothing and counts nothing
    scrapes.take()
    assert scrapes.delta("registry-13", "medaid_reversed_fen_total", source="account") == 1_000
    assert scrapes.delta("registry-13", "medaid_reversed_fen_total", source="helper") == 3_000
    assert scrapes.delta("registry-13", "medaid_settled_fen_total", source="helper") == 0
    env.hebei.UndoReversal(rpb.UndoReversalRequest(request_id=rid("2601"), reversal_id=rev.request_id))
    scrapes.take()
    assert scrapes.delta("registry-13", "medaid_settled_fen_total", source="account") == 1_000
    assert scrapes.delta("registry-13", "medaid_settled_fen_total", source="helper") == 3_000
    assert scrapes.delta("registry-13", "medaid_reversed_fen_total", source="helper") == 0


def test_metrics_port_off_serves_nothing_and_the_service_still_runs(redis_server: RedisServer):
    svc = start_service("router", "medaid.router", ["--port", "0", "--redis-url", redis_server.url,
                                                    "--metrics-port", "off"])
    try:
        assert svc.metrics_port == 0
        assert svc.healthy()
    finally:
        assert svc.stop() == 0


def test_make_up_writes_prometheus_targets_that_answer(tmp_path: Path):
    """`make up` (python -m medaid.topology up) leaves file_sd targets for Prometheus beside its state;
    MEDAID_LOG_LEVEL sets every process's log level."""
    run = [sys.executable, "-m", "medaid.topology"]
    subprocess.run([*run, "up"], cwd=tmp_path, check=True, capture_output=True, timeout=120,
                   env={**os.environ, "MEDAID_LOG_LEVEL": "warning"})
    try:
        state = json.loads((tmp_path / "build/run/topology.json").read_text())
        status = subprocess.run([*run, "status"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and "DOWN" not in status.stdout, status.stdout  # all serving
        for name, pid in state["pids"].items():
            if name != "redis":
                args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                assert args[args.index(b"--log-level") + 1] == b"WARNING", name
        assert '"level": "info"' not in (tmp_path / "build/run/registry-13.log").read_text()
        targets = json.loads((tmp_path / "build/run/prometheus-targets.json").read_text())
        assert targets == prometheus_targets(state["metrics"])
        services = {t["labels"]["service"] for t in targets}
        assert services == {"registry-13", "registry-11", "registry-62", "registry-35", "wallet", "router", "gateway",
                            "console"}
        for t in targets:
            (address,) = t["targets"]
            assert scrape(int(address.rsplit(":", 1)[1])), t
    finally:
        subprocess.run([*run, "down"], cwd=tmp_path, check=True, capture_output=True, timeout=60)
    assert not (tmp_path / "build/run/prometheus-targets.json").exists()


def test_redis_round_trips_and_their_failures_are_measured(redis_server: RedisServer):
    """In this process: the services' own Redis client times each round trip and counts each failed one."""
    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    async def ping(url: str) -> None:
        client = LeanRedis(url)
        try:
            await client.ping()
        finally:
            await client.aclose()

    before = sample("medaid_redis_roundtrip_seconds_count")
    asyncio.run(ping(redis_server.url))
    assert sample("medaid_redis_roundtrip_seconds_count") == before + 1
    failed = sample("medaid_redis_errors_total", error="ConnectionError")
    with pytest.raises(redis.exceptions.ConnectionError):
        asyncio.run(ping(f"redis://127.0.0.1:{dead_port()}/0"))  # nothing listens there
    assert sample("medaid_redis_errors_total", error="ConnectionError") == failed + 1 + fastredis.RETRIES
    assert sample("medaid_redis_roundtrip_seconds_count") == before + 1  # a failed one is no round trip


def test_a_failed_wallet_maintenance_pass_is_counted_as_the_registrys_are(redis_server: RedisServer):
    """medaid_recovery_actions_total{action="pass_failed"}: a wallet pass that raises (here an in-flight
    entry whose metadata does not parse) is counted, as a registry's failed recovery pass is."""
    svc = start_service("wallet", "medaid.wallet", ["--port", "0", "--redis-url", redis_server.url,
                                                    "--maintenance-interval-ms", "100", "--recovery-grace-ms", "0"])
    try:
        r = redis.Redis.from_url(redis_server.url)
        r.zadd("wal:{idx}:inflight", {"T-unreadable": 0})
        r.hset("wal:{idx}:inflight_meta", "T-unreadable", "{not json")
        deadline = time.monotonic() + 10
        while value(scrape(svc.metrics_port), "medaid_recovery_actions_total", action="pass_failed") < 2:
            assert time.monotonic() < deadline, "failed maintenance passes not counted"
            time.sleep(0.1)
        r.delete("wal:{idx}:inflight", "wal:{idx}:inflight_meta")
    finally:
        assert svc.stop() == 0
    assert any("maintenance pass failed" in line for line in svc.log_lines)


def test_transfers_the_wallet_s_maintenance_leaves_for_later_are_counted_as_deferred(redis_server: RedisServer):
    """medaid_recovery_actions_total{action="deferred"} on the wallet: a transfer whose debit the sender's
    registry does not take (here nothing listens at its address) is left for a later pass, pass after
    pass: counted as a registry's deferred recovery entries are, for the same alert, not only logged."""
    dead_registry = f"127.0.0.1:{dead_port()}"
    sender, recipient, tid = new_id(), new_id(), rid("xfer")
    fields = {"tid": tid, "sender": sender, "sender_province": "13", "recipient": recipient,
              "recipient_province": "13", "relation": "PARENT", "amount": "1000", "created_at": "0",
              "day": "1970-01-01", "source": "ACCOUNT"}
    r = redis.Redis.from_url(redis_server.url)
    svc = start_service("wallet", "medaid.wallet", ["--port", "0", "--redis-url", redis_server.url,
                                                    "--registries", f"13={dead_registry}",
                                                    "--maintenance-interval-ms", "100", "--recovery-grace-ms", "0"])
    try:
        r.set(f"wal:{{t:{tid}}}:to", recipient)
        r.hset(f"wal:{{w:{recipient}}}:xfer:{tid}", mapping={**fields, "state": "CREATED"})
        r.hset("wal:{idx}:inflight_meta", tid, json.dumps(fields))
        r.zadd("wal:{idx}:inflight", {tid: 0})
        deadline = time.monotonic() + 20
        while value(scrape(svc.metrics_port), "medaid_recovery_actions_total", action="deferred") < 2:
            assert time.monotonic() < deadline, "deferred transfers not counted"
            time.sleep(0.1)
        assert r.hget(f"wal:{{w:{recipient}}}:xfer:{tid}", "state") == b"CREATED"  # still waiting, untouched
    finally:
        r.delete("wal:{idx}:inflight", "wal:{idx}:inflight_meta", f"wal:{{t:{tid}}}:to",
                 f"wal:{{w:{recipient}}}:xfer:{tid}")
        assert svc.stop() == 0
    assert any("recovery deferred" in line for line in svc.log_lines)


def _bounded_label_values() -> dict[str, Any]:
    """What each label of a medaid_* series may hold: a set from the code, or an anchored pattern."""
    import re as re_
    from typing import get_args

    from medaid.common import metrics
    from medaid.gateway.openapi import TRANSACTIONS
    from medaid.gateway.reasons import REASON_ZH
    from medaid.registry.v1 import family_pb2, premium_pb2, registry_pb2
    from medaid.router.v1 import router_pb2
    from medaid.wallet.v1 import wallet_pb2

    methods = {f"{svc.name}/{m.name}" for mod in (registry_pb2, family_pb2, premium_pb2, router_pb2, wallet_pb2)
               for svc in mod.DESCRIPTOR.services_by_name.values() for m in svc.methods}
    buckets = {str(float(b)) for b in (*metrics.LATENCY_BUCKETS, *metrics.REDIS_BUCKETS, *metrics.BATCH_BUCKETS)}
    closed: set[str] = set()
    for labels in metrics.CLOSED_LABELS.values():
        for values in labels.values():
            closed |= values
    return {
        "method": methods, "code": {c.name for c in grpc.StatusCode}, "reason": set(REASON_ZH) | {""},
        "infno": set(TRANSACTIONS) | {"other", "-"}, "infcode": {"0", "-1"},
        "kind": set(get_args(metrics.ReasonKind)),
        "batcher": {"settle", "person", "debit"}, "le": buckets | {"+Inf"},
        "error": re_.compile(r"[A-Z][A-Za-z]{2,40}"),  # an exception class's name
        **{label: closed | {""} for label in ("outcome", "path", "source", "state", "action")},
    }


def test_every_label_value_of_every_medaid_series_comes_from_a_bounded_set(env: Env):
    """Label cardinality: a label never takes a request id, a msgid, an id number, a person's name or a
    caller's free text, whatever callers send. A small real workload, hostile input included (an
    infno, a msgid and a reason field made up by the caller, a name and an id number where none
    belongs, a body that is no JSON), then every process's /metrics: every label value of every
    medaid_* series is one the code names, or matches a short anchored pattern."""
    import re as re_

    helper, child = family(env)
    env.post(envelope("2207", data_2207(child, "12.34"))).ok()
    env.post(envelope("2207", data_2207(child, "1.00"), msgid="H13010100001" + "20261122" + "张三" + "x" * 40))
    env.post(envelope("110一", {"psn_no": helper}))
    env.post(envelope(child, {}))
    env.post(envelope("2207", data_2207(child, "5.00", psn_name="欧阳建国", reason="MADE_UP_BY_CALLER")))
    env.post(envelope("2207", data_2207(new_id(), "5.00")))  # nobody
    env.post(envelope("1101", {"mdtrt_cert_type": "02", "mdtrt_cert_no": f"欧阳建国{helper}"}))
    post_raw(env.url, b'{"infno": "2207", "msgid": "' + helper.encode() + b'"')
    with pytest.raises(grpc.RpcError):
        env.hebei.Settle(rpb.SettleRequest(request_id=f"free text {helper}", patient_id_number=child[:-1] + "Z",
                                           amount_fen=-1))
    with pytest.raises(grpc.RpcError):
        credit(env.hebei, new_id(), 100)
    pattern = _bounded_label_values()
    time.sleep(0.5)  # the last refusals' counts (a refusal reaches its caller a moment before it is counted)
    unbounded, seen = [], set()
    for process, port in {n: s.metrics_port for n, s in env.topo.services.items()}.items():
        for (name, labels), _ in scrape(port).items():
            if not name.startswith("medaid_"):
                continue
            for label, got in labels:
                seen.add((process, label, got))
                allowed = pattern.get(label)
                ok = (allowed.fullmatch(got) is not None if isinstance(allowed, re_.Pattern)
                      else allowed is not None and got in allowed)
                if not ok:
                    unbounded.append(f"{process} {name} {label}={got!r}")
    assert not unbounded, "\n".join(sorted(set(unbounded)))
    # The hostile input was answered and counted (refusals by reason at the gateway and the registry).
    assert len({got for process, label, got in seen if process == "gateway" and label == "reason" and got}) >= 3, seen
    assert {("gateway", "infno", "other"), ("gateway", "infno", "-")} <= seen, seen
    assert any(p == "registry-13" and label == "reason" and got for p, label, got in seen), seen


def test_a_registrys_half_done_entries_and_the_oldest_ones_time_are_exported(redis_server: RedisServer):
    """medaid_recovery_entries and medaid_recovery_oldest_entry_timestamp_seconds: what a registry's
    recovery index holds and when its oldest entry was written, read at each pass, so that half-done state
    older than the grace is seen whatever keeps it there (a live lock, here; a pass that never runs, a loop
    that died). The time, not an age: an age set by the pass itself froze at its last reading when a pass
    hung, and the alert (`time() - …`) never saw it grow. Both read 0 once the index is empty."""
    pid, sid = new_id("620102", "19800101"), rid("setl")
    entry = f"S|{pid}|{sid}"
    written_ms = int(time.time() * 1000) - 600_000  # ten minutes old
    r = redis.Redis.from_url(redis_server.url)
    r.zadd("reg:62:{open}:setl", {entry: written_ms})
    r.set(f"reg:62:{{p:{pid}}}:lock", "someone-else", px=60_000)  # a live request holds the patient
    svc = start_service("registry-62", "medaid.registry", ["--port", "0", "--redis-url", redis_server.url,
                                                           "--province", "62", "--recovery-interval-ms", "100"])
    try:
        deadline = time.monotonic() + 10
        while value(scrape(svc.metrics_port), "medaid_recovery_actions_total", action="deferred") < 2:
            assert time.monotonic() < deadline, "the held entry was not deferred"
            time.sleep(0.1)
        samples = scrape(svc.metrics_port)
        assert value(samples, "medaid_recovery_entries") == 1
        assert value(samples, "medaid_recovery_oldest_entry_timestamp_seconds") == written_ms / 1000
        # One metric for it: no age set by the pass, that would freeze with it.
        assert not any(name == "medaid_recovery_oldest_entry_age_seconds" for name, _ in samples)
        alerts = yaml.safe_load((Path(__file__).resolve().parents[1] / "deploy/prometheus/alerts.yml").read_text())
        rule = next(rule for group in alerts["groups"] for rule in group["rules"]
                    if rule["alert"] == "MedaidRecoveryEntryOld")
        assert re.sub(r"\s+", " ", rule["expr"]).startswith(
            "time() - min by (service) (medaid_recovery_oldest_entry_timestamp_seconds > 0) > "), rule["expr"]
        r.zrem("reg:62:{open}:setl", entry)
        deadline = time.monotonic() + 10
        while value(samples := scrape(svc.metrics_port), "medaid_recovery_entries") != 0:
            assert time.monotonic() < deadline, "an empty index not seen"
            time.sleep(0.1)
        assert value(samples, "medaid_recovery_oldest_entry_timestamp_seconds") == 0
    finally:
        r.zrem("reg:62:{open}:setl", entry)
        r.delete(f"reg:62:{{p:{pid}}}:lock")
        assert svc.stop() == 0
