"""A failover loses no step of a money flow that was answered: every write is confirmed on a replica.

Redis replication is asynchronous and a flow that spans masters is several scripts, so a master that
died before its replica had a step (a transfer's debit of the sender) used to leave the flow's next
steps standing on the other masters (the transfer accepted, the lot in the recipient's wallet): the
failover created the amount. On a cluster with replicas the services' cluster client now sends
`WAIT 1 <redis_wait_timeout_ms>` behind every write on the write's own connection; a write no replica
confirmed in time is answered UNAVAILABLE / STORE_UNAVAILABLE before the flow goes on, and the resend
(same request id) redoes what the failover lost.

The replica link is cut deterministically: the master's default user loses PSYNC/SYNC (the replica
cannot resync) and its replica connection is killed. A single Redis gets no WAIT at all.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
import redis
from fujian_replicas import process_state
from medaid.bench import money
from medaid.common.redis_client import sync_client
from medaid.common.redis_server import RedisServer
from medaid.registry.keys import Keys
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.registry.v1 import registry_pb2_grpc as rpb_grpc
from medaid.topology import DEMO_CLOCK, Topology
from medaid.wallet.keys import WalletKeys
from medaid.wallet.v1 import wallet_pb2 as wpb
from support import Timeline, balance, credit, enroll, reason, rid, settle_request
from test_cluster import Env

T = 10.0
FUNDS = 100_000
AMOUNT = 30_000


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    topo = Topology.start(provinces=("13", "11"), router=False, gateway=False, cluster=True, clock=DEMO_CLOCK,
                          recovery_grace_ms=1_000, cluster_node_timeout_ms=2_000)
    e = Env(topo, Timeline())
    try:
        yield e
    finally:
        e.close()
        topo.stop()


def waits(nodes: list[RedisServer]) -> int:
    """WAIT commands the nodes have run so far."""
    total = 0
    for node in nodes:
        c = node.connection(socket_timeout=5)
        try:
            total += int(c.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))
        finally:
            c.close()
    return total


def node_at(env: Env, port: int) -> RedisServer:
    return next(n for n in env.cluster.nodes if n.port == port)


def replica_of(env: Env, master: RedisServer) -> RedisServer:
    for n in env.cluster.nodes:
        role = n.connection(socket_timeout=5).execute_command("ROLE")
        if role[0] == b"slave" and int(role[2]) == master.port:
            return n
    raise AssertionError(f"no replica of {master.port}")


def until(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            got = check()
            if got:
                return got
        except (grpc.RpcError, redis.exceptions.RedisError) as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout} s; last {last}")


def answer(call: Callable[[], Any]) -> str:
    try:
        call()
        return "OK"
    except grpc.RpcError as exc:
        return f"{exc.code().name} {reason(exc)}"


def test_with_healthy_replicas_money_flows_and_each_write_waits_for_a_replica(env: Env):
    before = waits(env.cluster.nodes)
    son, mother = env.family()
    t = env.send(son, mother, 1_000)
    env.accept(mother, t.transfer_id)
    assert env.transfer(t.transfer_id).state == wpb.TRANSFER_STATE_COMPLETED
    assert env.bal("13", son) == FUNDS - 1_000
    assert env.lots_for(mother, t.transfer_id) == 1
    assert waits(env.cluster.nodes) > before, "no write of the flow waited for a replica"
    assert money.check(env.r).conserved


def test_a_transfer_step_a_failover_would_lose_is_answered_unavailable_and_the_resend_redoes_it(env: Env):
    k, wk = Keys("13"), WalletKeys()
    # The sender's account on a master that holds none of the wallet's keys of the flow: about one
    # family in fourteen on three masters (the in-flight index is on one of them), so tries enough
    # that no run goes without (0.926 ** 400 ~ 1e-13); a dozen or so are made.
    for _ in range(400):
        son, mother = env.family()
        m1 = env.r.get_node_from_key(k.person(son)).port
        if all(env.r.get_node_from_key(key).port != m1
               for key in (wk.wallet(mother), wk.wallet(son), f"wal:{{s:{son}}}:x", wk.inflight())):
            break
    else:
        raise AssertionError("no sender whose account is alone on its master")
    master = node_at(env, m1)
    replica = replica_of(env, master)
    funds = FUNDS

    def registry_waits_for_the_replica() -> bool:  # its slot map lists a replica once it has synced
        nonlocal funds
        before = waits([master])
        env.credit("13", son, 1)
        funds += 1
        return waits([master]) > before

    until("the registry waiting for the sender's replica", registry_waits_for_the_replica)
    c = master.connection(socket_timeout=5)
    c.execute_command("ACL", "SETUSER", "default", "-psync", "-sync")  # the replica cannot resync ...
    c.execute_command("CLIENT", "KILL", "TYPE", "replica")  # ... once its link is cut
    until("the replica link cut", lambda: c.info("replication")["connected_slaves"] == 0)
    c.close()

    tid, acc = rid("xfer"), rid("acc")
    answers = {"create": answer(lambda: env.send(son, mother, AMOUNT, tid))}
    if answers["create"] == "OK":
        answers["accept"] = answer(lambda: env.accept(mother, tid, acc))

    # The master dies before its replica got the sender's debit; the replica takes over.
    master.kill()
    r = replica.connection(socket_timeout=5)
    r.execute_command("CLUSTER", "FAILOVER", "FORCE")
    until("the replica promoted", lambda: r.execute_command("ROLE")[0] == b"master")
    r.close()
    until("the sender's account served again", lambda: env.bal("13", son) >= 0)

    # Every call resent with its request id until it is answered. The wallet's recovery loop may get
    # to the unanswered transfer first: it finds the sender's debit gone with the failover and fails
    # the transfer before any money moved (TRANSFER_ABANDONED), a final answer as good as the resend's.
    def resend() -> str:
        try:
            env.send(son, mother, AMOUNT, tid)
            return "created"
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and reason(exc) == "TRANSFER_ABANDONED":
                return "abandoned"
            raise

    if until("the transfer created or abandoned", resend) == "created":
        accepted = until("the transfer accepted", lambda: env.accept(mother, tid, acc))
        assert accepted.transfer.state == wpb.TRANSFER_STATE_COMPLETED
        expected = (funds - AMOUNT, AMOUNT)
    else:
        expected = (funds, 0)

    balance = env.bal("13", son)
    w = env.wallet.GetWallet(wpb.GetWalletRequest(owner_id_number=mother), timeout=T)
    received = sum(lot.amount_fen for lot in w.lots if lot.transfer_id == tid)
    assert (balance, received) == expected, "money created or lost by the failover"
    master.start()  # the old master rejoins as a replica of the promoted one
    env.cluster.wait_ok(30)
    rep = money.check(env.r)
    assert rep.conserved, rep.as_dict()
    # What the failover would have lost was never answered OK: the sender's registry could not confirm
    # the debit (STORE_UNAVAILABLE), which the wallet passes on as its registry's (REGISTRY_UNAVAILABLE).
    assert list(answers) == ["create"] and answers["create"] in (
        "UNAVAILABLE REGISTRY_UNAVAILABLE", "UNAVAILABLE STORE_UNAVAILABLE"), answers


def test_a_single_redis_gets_no_wait():
    """The replica setting is for a cluster: a single Redis (the bench's) pays no WAIT, even when asked."""
    topo = Topology.start(provinces=("13",), wallet=False, router=False, gateway=False, clock=DEMO_CLOCK)
    try:
        assert isinstance(topo.redis, RedisServer)
        topo.restart("registry-13", env={"MEDAID_REDIS_WAIT_REPLICAS": "1"})
        with grpc.insecure_channel(topo.address("registry-13")) as ch:
            registry = rpb_grpc.RegistryServiceStub(ch)
            pid = enroll(registry, name="张伟")
            credit(registry, pid, 5_000)
            assert registry.GetPerson(rpb.GetPersonRequest(id_number=pid), timeout=T).person.balance_fen == 5_000
        assert waits([topo.redis]) == 0
    finally:
        topo.stop()


def test_a_replay_is_not_answered_ok_before_a_replica_has_the_write():
    """A resend answered from the request's recorded answer (its claim DONE) is confirmed like a write:
    the first attempt's last step (the answer recorded on the claim's master) that no replica confirmed
    was answered STORE_UNAVAILABLE, and a resend at once, on another registry process (whose connection
    to that master wrote nothing since), must not answer OK while the replica still lacks it: a
    failover then would leave the client holding an OK for what was lost.

    The replica lags while connected (stopped with SIGSTOP; the cluster does not flag it failed within
    its node timeout), so the master still counts it for every write it acknowledged before."""
    topo = Topology.start(provinces=("13",), wallet=False, router=False, gateway=False, cluster=True,
                          clock=DEMO_CLOCK, replicas={"registry-13": 2}, cluster_node_timeout_ms=60_000)
    stopped: list[int] = []
    try:
        assert not isinstance(topo.redis, RedisServer)
        nodes = topo.redis.nodes
        # Stopped once the claim was taken again under the lock (a write on the claim's master), so
        # that the answer recorded at the close is the flow's only write there after the replica stops.
        topo.restart("registry-13#1", env={"MEDAID_FAULT": "stop:settle.after_own_debit"})
        r = sync_client(topo.redis.url)
        k = Keys("13")
        channels = [grpc.insecure_channel(topo.address(n), options=[("grpc.enable_retries", 0)])
                    for n in ("registry-13#1", "registry-13#2")]
        s1, s2 = (rpb_grpc.RegistryServiceStub(ch) for ch in channels)
        pid = enroll(s1)
        credit(s1, pid, FUNDS)
        patient_master = r.get_node_from_key(k.person(pid)).port

        def claim_port(request_id: str) -> int:
            return int(r.get_node_from_key(f"{k.ns}:{{rid:{request_id}}}").port)

        # The claim alone on its master among the flow's keys: the close (recording the answer) is the
        # flow's only write there.
        others = {patient_master, r.get_node_from_key(k.open_settlements()).port}
        sid = next(s for s in (rid("settle") for _ in range(400))
                   if claim_port(s) not in others | {r.get_node_from_key(k.settlement_index(s)).port})
        master = next(n for n in nodes if n.port == claim_port(sid))
        replica = next(n for n in nodes if (lambda role: role[0] == b"slave" and int(role[2]) == master.port)(
            n.connection(socket_timeout=5).execute_command("ROLE")))

        def waits_for_the_replica(stub: rpb_grpc.RegistryServiceStub) -> bool:
            before = waits([master])
            req = next(x for x in (rid("credit") for _ in range(200)) if claim_port(x) == master.port)
            stub.CreditAccount(rpb.CreditAccountRequest(request_id=req, id_number=pid, amount_fen=1,
                                                        kind=rpb.CREDIT_KIND_MONTHLY_CONTRIBUTION,
                                                        period="202611"), timeout=T)
            return waits([master]) > before

        until("registry #1 waiting for the claim master's replica", lambda: waits_for_the_replica(s1))
        until("registry #2 waiting for the claim master's replica", lambda: waits_for_the_replica(s2))
        funds = balance(s2, pid)

        request = settle_request(pid, 5_000, request_id=sid)
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(answer, lambda: s1.Settle(request, timeout=30))
            proc = topo.services["registry-13#1"].proc
            until("registry #1 stalled after its own-account debit", lambda: process_state(proc.pid) == "T")
            os.kill(replica.proc.pid, signal.SIGSTOP)  # the claim's master's replica lags from here on
            stopped.append(replica.proc.pid)
            os.kill(proc.pid, signal.SIGCONT)
            assert first.result() == "UNAVAILABLE STORE_UNAVAILABLE"
        assert r.hget(f"{k.ns}:{{rid:{sid}}}", "state") == b"DONE"  # the answer stands on the master only

        # Resent at once, to the other process: not OK while the replica lacks the recorded answer.
        assert answer(lambda: s2.Settle(request, timeout=T)) == "UNAVAILABLE STORE_UNAVAILABLE"
        os.kill(replica.proc.pid, signal.SIGCONT)
        stopped.clear()
        result = until("the resend answered", lambda: s2.Settle(request, timeout=T).result)
        assert result.settlement_id == sid
        assert result.acct_pay_fen > 0 and balance(s2, pid) == funds - result.acct_pay_fen
        for ch in channels:
            ch.close()
        r.close()
    finally:
        for p in stopped:
            os.kill(p, signal.SIGCONT)
        topo.stop()
