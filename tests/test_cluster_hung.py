"""Two of a cluster's three masters hung at once (SIGSTOP: their ports accept, nothing answers).

operations.md, "Timeouts": a call answers within the Redis command timeout, inside the 3 s deadline
services give each other — the hung masters' keys `UNAVAILABLE` / `STORE_UNAVAILABLE`, the healthy
master's in round trips. Each timeout has the next call reload the slot map; redis-py asks the
nodes for it in a random order, and the client used to put only the *last* node to fail last: after
a timeout on one hung master, a reload asked the other one first half the time, so the calls
waiting on it (the healthy master's keys too) waited a whole timeout, and a call for a hung
master's key two (4.1 s with the 2 s default, past the deadline). Every node that failed recently
is asked last now, and only when no other answers.

The clusters here have no replicas and a long `cluster-node-timeout`: with two of three masters
unreachable for `cluster-node-timeout`, the healthy master finds itself in a minority and refuses
everything (CLUSTERDOWN) until they come back, whatever the client does; these tests are about the
time before that.
"""

from __future__ import annotations

import os
import signal
import time

import grpc
import pytest
import redis
from medaid.common.redis_server import RedisCluster
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.registry.v1 import registry_pb2_grpc as rpb_grpc
from medaid.topology import DEMO_CLOCK
from support import enroll, reason, rid

NODE_TIMEOUT_MS = 120_000  # the cluster does not flag the hung masters failed while a test runs


def _freeze(cluster: RedisCluster, ports: list[int], sig: int) -> None:
    for node in cluster.nodes:
        if node.port in ports:
            assert node.proc is not None
            os.kill(node.proc.pid, sig)


def test_two_hung_masters_cost_their_keys_one_timeout_and_the_healthy_master_none():
    """The client alone: every call for a hung master's key fails after one command timeout (each
    preceded by a slot-map reload), and the healthy master's keys, a single command and a pipeline,
    answer in round trips right after each of those timeouts."""
    import asyncio

    from medaid.common.redis_client import BoundedRedisCluster, client

    # The services' default timeout. A reload asking a hung master costs a whole timeout; the bounds
    # leave the healthy master's calls three quarters of one (a reload reconnects every connection:
    # tenths of a second on a loaded host) and the hung masters' calls half of one beyond their own,
    # which is the callers' 3 s deadline.
    timeout_s = 2.0
    rounds = 6  # per hung master: the old client met a slow reload with probability 1/2 each time
    with RedisCluster(3, node_timeout_ms=NODE_TIMEOUT_MS) as cluster:
        async def run() -> None:
            store = client(cluster.url, 16, timeout_s=timeout_s)
            assert isinstance(store, BoundedRedisCluster)
            await store.initialize()
            by_port: dict[int, list[str]] = {}
            for key in (f"k:{i}" for i in range(600)):
                by_port.setdefault(store.get_node_from_key(key).port, []).append(key)
            assert len(by_port) == 3
            hung, healthy = sorted(by_port)[:2], sorted(by_port)[2]
            await asyncio.gather(*(store.set(k, 1) for keys in by_port.values() for k in keys[:10]))
            _freeze(cluster, hung, signal.SIGSTOP)
            slow: list[str] = []
            try:
                for round_ in range(rounds):
                    for port in hung:
                        started = time.monotonic()
                        with pytest.raises(redis.exceptions.TimeoutError):
                            await store.get(by_port[port][0])
                        took = time.monotonic() - started
                        if took > 1.5 * timeout_s:
                            slow.append(f"round {round_}: hung master's key {took:.2f} s")
                        assert store._initialize, "a timeout no longer reloads the slot map: this tests nothing"
                        started = time.monotonic()
                        pipe = store.pipeline(transaction=False)
                        for k in by_port[healthy][5:10]:
                            pipe.get(k)
                        got = await asyncio.gather(*(store.get(k) for k in by_port[healthy][:5]), pipe.execute())
                        took = time.monotonic() - started
                        assert got == [b"1"] * 5 + [[b"1"] * 5]
                        if took > 0.75 * timeout_s:
                            slow.append(f"round {round_}: healthy master's keys {took:.2f} s")
            finally:
                _freeze(cluster, hung, signal.SIGCONT)
            assert not slow, f"calls waited on a reload asking a hung master: {slow}"
            got = await asyncio.gather(*(store.get(k) for keys in by_port.values() for k in keys[:10]))
            assert got == [b"1"] * 30
            await store.aclose()

        asyncio.run(run())


def test_a_registry_with_two_hung_masters_answers_every_call_inside_the_deadline():
    """A registry with the default Redis timeout (2 s), called with the 3 s deadline services give each
    other: every credit for a person on a hung master answers UNAVAILABLE / STORE_UNAVAILABLE (never
    DEADLINE_EXCEEDED), every read of a person on the healthy master answers OK; once the masters go
    on, every credit resent with its request id counts exactly once."""
    from medaid.common.redis_client import sync_client
    from medaid.registry.keys import Keys
    from medaid.topology import start_service

    deadline_s, rounds, amount, start_fen = 3.0, 6, 100, 10_000
    with RedisCluster(3, node_timeout_ms=NODE_TIMEOUT_MS) as cluster:
        svc = start_service("registry-hung", "medaid.registry", [
            "--port", "0", "--redis-url", cluster.plain_url, "--clock", DEMO_CLOCK, "--metrics-port", "off",
            "--province", "13", "--redis-timeout-ms", "2000"])
        r = sync_client(cluster.url)
        try:
            with grpc.insecure_channel(svc.address) as ch:
                registry = rpb_grpc.RegistryServiceStub(ch)
                people = [enroll(registry, name="孙丽") for _ in range(30)]
                port = {pid: r.get_node_from_key(Keys("13").person(pid)).port for pid in people}
                masters = sorted(set(port.values()))
                assert len(masters) == 3
                hung, healthy_port = masters[:2], masters[2]
                on_hung = {p: [pid for pid in people if port[pid] == p] for p in hung}
                healthy = [pid for pid in people if port[pid] == healthy_port]
                assert all(on_hung.values()) and healthy
                sent: list[rpb.CreditAccountRequest] = []
                for pid in people:
                    req = rpb.CreditAccountRequest(request_id=rid("hung0"), id_number=pid, amount_fen=start_fen,
                                                   kind=rpb.CREDIT_KIND_MONTHLY_CONTRIBUTION, period="202611")
                    registry.CreditAccount(req, timeout=deadline_s)
                    sent.append(req)

                wrong: list[str] = []
                _freeze(cluster, hung, signal.SIGSTOP)
                try:
                    for i in range(rounds):
                        for p in hung:
                            pid = on_hung[p][i % len(on_hung[p])]
                            req = rpb.CreditAccountRequest(request_id=rid("hung"), id_number=pid, amount_fen=amount,
                                                           kind=rpb.CREDIT_KIND_MONTHLY_CONTRIBUTION, period="202611")
                            sent.append(req)
                            started = time.monotonic()
                            try:
                                registry.CreditAccount(req, timeout=deadline_s)
                                wrong.append(f"credit on a hung master: OK after {time.monotonic() - started:.2f} s")
                            except grpc.RpcError as exc:
                                got = f"{exc.code().name} {reason(exc)}"
                                if got != "UNAVAILABLE STORE_UNAVAILABLE":
                                    wrong.append(f"credit on a hung master: {got} after "
                                                 f"{time.monotonic() - started:.2f} s")
                            # Reads only: a write's request-id claim has a slot of its own, maybe a hung one's.
                            for pid in healthy[:3]:
                                started = time.monotonic()
                                try:
                                    registry.GetPerson(rpb.GetPersonRequest(id_number=pid), timeout=deadline_s)
                                except grpc.RpcError as exc:
                                    wrong.append(f"read on the healthy master: {exc.code().name} {reason(exc)} "
                                                 f"after {time.monotonic() - started:.2f} s")
                finally:
                    _freeze(cluster, hung, signal.SIGCONT)
                assert wrong == [], wrong

                # Everything settles: each credit resent with its request id, each counted once.
                for req in sent:
                    registry.CreditAccount(req, timeout=10)
                for pid in people:
                    want = sum(req.amount_fen for req in sent if req.id_number == pid)
                    got = registry.GetPerson(rpb.GetPersonRequest(id_number=pid), timeout=10).person.balance_fen
                    assert got == want, (pid, got, want)
        finally:
            r.close()
            assert svc.stop() == 0
