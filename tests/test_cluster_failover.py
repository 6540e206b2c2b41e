"""A Redis Cluster that survives a node, and fresh processes on it.

Three masters with a replica each; a master killed -9 under a light load of money writes (account
credits through a registry process).

While the master is down, writes whose keys live on the other masters keep succeeding
(`cluster-require-full-coverage no`); its replica is promoted (automatic failover) and its slots
serve again; and every credit that was acknowledged is in the balances afterwards, none twice:
resending every credit with its request id, refused ones included, leaves each balance at exactly
what the acknowledged and resent credits add up to.

A freshly started registry answers a concurrent first burst of calls without an error, four times;
and the failures of one call stay with it: a caller cancelled while the cluster client reloads its
slot map, or a pipeline that retries after meeting a dead master, leaves the connections of the other
calls open (redis-py closes them all, and those calls then fail inside it, answered UNKNOWN); a
frozen master costs its calls one command timeout, a pipeline's and a MULTI/EXEC's too, and the
other masters' calls none (the slot-map reload each timeout brings asks the frozen master last).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import grpc
import pytest
import redis
from medaid.common.redis_server import CLUSTER_SLOTS, RedisCluster
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.registry.v1 import registry_pb2_grpc as rpb_grpc
from medaid.topology import DEMO_CLOCK, Topology
from support import credit, enroll, reason, rid

PEOPLE = 12
AMOUNT = 100
ROUNDS = 12  # timeouts on a frozen master, each followed by a slot-map reload: (2/3)**12 < 1 % of missing a bad one


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    t = Topology.start(provinces=("13",), wallet=False, router=False, gateway=False, clock=DEMO_CLOCK,
                       cluster=True, cluster_node_timeout_ms=2000)
    try:
        yield t
    finally:
        t.stop()


def slots_served(cluster: RedisCluster) -> int:
    for node in cluster.masters_now():
        c = node.connection(socket_timeout=1)
        try:
            info = c.execute_command("CLUSTER", "INFO").decode()
            if "cluster_state:ok" in info:
                return sum(int(r[1]) - int(r[0]) + 1 for r in c.execute_command("CLUSTER", "SLOTS"))
        except redis.exceptions.RedisError:
            continue
        finally:
            c.close()
    return 0


def test_a_master_killed_under_load_fails_over_and_loses_nothing_acknowledged(topo: Topology):
    cluster = topo.redis
    assert isinstance(cluster, RedisCluster) and cluster.replicas >= 1
    with grpc.insecure_channel(topo.address("registry-13")) as ch:
        registry = rpb_grpc.RegistryServiceStub(ch)
        people = [enroll(registry, name="张伟") for _ in range(PEOPLE)]
        for pid in people:
            credit(registry, pid, 10_000)
        sent: list[rpb.CreditAccountRequest] = []
        acked: dict[str, int] = dict.fromkeys(people, 10_000)
        outcomes: list[tuple[float, bool]] = []  # (when, acknowledged)
        wrong: list[tuple[str, str]] = []  # refusals other than UNAVAILABLE (asserted empty below)
        stop = threading.Event()

        lock = threading.Lock()

        def load(offset: int) -> None:
            i = offset
            while not stop.is_set():
                pid = people[i % PEOPLE]
                req = rpb.CreditAccountRequest(request_id=rid("fo"), id_number=pid, amount_fen=AMOUNT,
                                               kind=rpb.CREDIT_KIND_MONTHLY_CONTRIBUTION, period="202611")
                sent.append(req)
                try:
                    registry.CreditAccount(req, timeout=5)
                    with lock:
                        acked[pid] += AMOUNT
                    outcomes.append((time.monotonic(), True))
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:  # an assert here would only warn
                        wrong.append((exc.code().name, exc.details() or ""))
                    outcomes.append((time.monotonic(), False))
                i += 3
                time.sleep(0.01)

        workers = [threading.Thread(target=load, args=(k,), daemon=True) for k in range(3)]
        for worker in workers:
            worker.start()
        time.sleep(1.0)
        victim = cluster.masters_now()[0]
        killed_at = time.monotonic()
        victim.kill()
        deadline = killed_at + 30
        while slots_served(cluster) != CLUSTER_SLOTS or len(cluster.masters_now()) < cluster.masters:
            assert time.monotonic() < deadline, "no failover within 30 s"
            time.sleep(0.1)
        failed_over_at = time.monotonic()
        # Load on the promoted replica: at least 20 writes sent from a second after the failover on (a
        # condition, not a time: a loaded host sends fewer a second).
        deadline = time.monotonic() + 60
        while sum(1 for t, _ in list(outcomes) if t > failed_over_at + 1.0) < 20:
            assert time.monotonic() < deadline, "fewer than 20 writes answered within 60 s of the failover"
            time.sleep(0.1)
        stop.set()
        for worker in workers:
            worker.join(10)

        assert wrong == [], f"a failing write must be answered UNAVAILABLE: {wrong[:3]}"
        during = [ok for t, ok in outcomes if killed_at < t < failed_over_at]
        after = [ok for t, ok in outcomes if t > failed_over_at + 1.0]
        assert any(during), "no write succeeded while the master was down: healthy slots stopped too"
        assert after and all(after[-20:]), "writes still fail after the failover"
        print(f"failover {failed_over_at - killed_at:.1f} s; during it {sum(during)}/{len(during)} writes acknowledged")

        # Nothing acknowledged was lost: each balance holds at least its acknowledged credits ...
        balances = {pid: registry.GetPerson(rpb.GetPersonRequest(id_number=pid), timeout=5).person.balance_fen
                    for pid in people}
        for pid in people:
            assert balances[pid] >= acked[pid], (pid, balances[pid], acked[pid])
        # ... and resending every credit by its request id counts each exactly once.
        for req in sent:
            registry.CreditAccount(req, timeout=5)
        per_person = {pid: 10_000 + AMOUNT * sum(1 for r in sent if r.id_number == pid) for pid in people}
        for pid in people:
            got = registry.GetPerson(rpb.GetPersonRequest(id_number=pid), timeout=5).person.balance_fen
            assert got == per_person[pid], (pid, got, per_person[pid])
    victim.start()  # the old master rejoins as a replica of the promoted one
    cluster.wait_ok(30)


def test_a_fresh_process_serves_its_first_concurrent_burst_on_a_cluster(topo: Topology):
    """A process's first burst used to race the cluster client's first topology load ("handler is
    closed", answered UNKNOWN): the service now loads the slot map before it takes calls."""
    from concurrent.futures import ThreadPoolExecutor

    from medaid.topology import start_service

    module, args = topo.args_for("registry-13")
    args[args.index("--port") + 1] = "0"
    with grpc.insecure_channel(topo.address("registry-13")) as ch:
        people = [enroll(rpb_grpc.RegistryServiceStub(ch), name="李娜") for _ in range(8)]
    for attempt in range(4):
        svc = start_service(f"registry-fresh-{attempt}", module, args)
        try:
            with grpc.insecure_channel(svc.address) as ch:
                stub = rpb_grpc.RegistryServiceStub(ch)

                def call(i: int, stub: rpb_grpc.RegistryServiceStub = stub) -> str:
                    try:
                        if i % 2:
                            stub.GetPerson(rpb.GetPersonRequest(id_number=people[i % 8]), timeout=10)
                        else:
                            stub.CreditAccount(rpb.CreditAccountRequest(
                                request_id=rid("fresh"), id_number=people[i % 8], amount_fen=1,
                                kind=rpb.CREDIT_KIND_MONTHLY_CONTRIBUTION, period="202611"), timeout=10)
                        return "OK"
                    except grpc.RpcError as exc:
                        return f"{exc.code().name}: {exc.details()}"

                with ThreadPoolExecutor(32) as pool:
                    answers = list(pool.map(call, range(64)))
            assert answers == ["OK"] * 64, [a for a in answers if a != "OK"][:5]
        finally:
            assert svc.stop() == 0


def test_a_cancelled_caller_does_not_tear_down_the_cluster_clients_connections(topo: Topology):
    """The cause of a fresh process's failing first burst: redis-py closes every connection of every node
    when its slot-map initialisation ends in an exception, a cancellation too (a call's deadline, a
    health ping's timeout), under the feet of the calls using them. The services' cluster client runs
    the initialisation as a task of its own: a cancelled caller leaves it to finish, connections intact."""
    import asyncio

    from medaid.common.redis_client import BoundedRedisCluster, client

    async def run() -> None:
        store = client(topo.redis.url, 16)
        assert isinstance(store, BoundedRedisCluster)
        await store.initialize()
        await asyncio.gather(*(store.set(f"fresh:{i}", i) for i in range(20)))  # connections on every master
        in_use = [c for node in store.get_primaries() for c in node._connections]
        assert in_use and all(c.is_connected for c in in_use)
        for _ in range(5):
            store._initialize = True  # what redis-py sets after a connection error or MOVED
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(store.initialize(), 0.0001)  # a caller whose deadline passes
            await asyncio.sleep(0.3)
            assert store._initialize is False, "the initialisation was cancelled with its caller"
            assert all(c.is_connected for c in in_use), "a cancelled caller closed the other calls' connections"
        assert [int(v) for v in await asyncio.gather(*(store.get(f"fresh:{i}") for i in range(20)))] == list(range(20))
        await store.aclose()

    asyncio.run(run())


def test_a_frozen_node_fails_its_calls_once_and_a_pipeline_retry_keeps_other_connections():
    """On a cluster of its own (no replicas): a SIGSTOPped master's keys fail with one command timeout,
    not one per retry, while the other masters answer; a pipeline that meets a dead master
    retries with a fresh slot map without closing the connections other calls are using (redis-py's
    pipeline closes the whole client before it retries). A pipeline or MULTI/EXEC meeting the frozen node
    fails after one timeout too; the other masters' calls, right after each timeout, answer in round trips."""
    import asyncio
    import os
    import signal

    from medaid.common.redis_client import BoundedRedisCluster, client

    # A command sent again after its timeout would wait a second timeout on the frozen node, so each bound
    # below is two timeouts: what the client promises (one) with a whole timeout of margin for a loaded host.
    timeout_s = 1.0
    with RedisCluster(3) as cluster:
        async def run() -> None:
            store = client(cluster.url, 16, timeout_s=timeout_s)
            assert isinstance(store, BoundedRedisCluster)
            await store.initialize()
            victim_port = store.get_node_from_key("frozen").port
            victim = next(n for n in cluster.nodes if n.port == victim_port)
            assert victim.proc is not None
            others = [k for k in (f"other:{i}" for i in range(200)) if store.get_node_from_key(k).port != victim_port]
            await asyncio.gather(store.set("frozen", 1), *(store.set(k, 1) for k in others[:20]))
            os.kill(victim.proc.pid, signal.SIGSTOP)
            try:
                # Each timeout on the frozen node has the next call reload the slot map; the calls for the
                # other masters' slots wait on that reload. redis-py asks the nodes for the map in a random
                # order: one reload in three asked the frozen node first, and those calls waited a whole
                # timeout. The node that failed is asked last now, so they answer in round trips. Over
                # ROUNDS reloads, a bound of a fraction of the timeout on every round (a reload asking the
                # frozen node costs at least one timeout), and a tighter one on their mean.
                waits: list[float] = []
                for _ in range(ROUNDS):
                    started = time.monotonic()
                    with pytest.raises(redis.exceptions.TimeoutError):
                        await store.get("frozen")
                    assert time.monotonic() - started < 2 * timeout_s, "a timed-out command was sent again"
                    assert store._initialize, "a timeout no longer reloads the slot map: the rounds test nothing"
                    started = time.monotonic()
                    pipe = store.pipeline(transaction=False)
                    for k in others[10:20]:
                        pipe.get(k)
                    got = await asyncio.gather(*(store.get(k) for k in others[:10]), pipe.execute())
                    waits.append(time.monotonic() - started)
                    assert got == [b"1"] * 10 + [[b"1"] * 10]
                slow = [round(w, 2) for w in waits if w >= timeout_s / 2]
                assert not slow, f"calls for healthy masters waited on a reload asking the frozen node: {slow} s"
                assert sum(waits) / ROUNDS < timeout_s / 5, waits
                # A pipeline's share (a batch, a transfer's steps) and a MULTI/EXEC on it too, once the slot map
                # is reloaded: redis-py's pipelines sent them again after a timeout, up to three times, past
                # every caller's deadline.
                for transaction in (False, True):
                    pipe = store.pipeline(transaction=transaction)
                    pipe.get("frozen")
                    pipe.set("{frozen}:pipelined", 2)  # the frozen node runs it once it goes on
                    started = time.monotonic()
                    with pytest.raises(redis.exceptions.TimeoutError):
                        await pipe.execute()
                    assert time.monotonic() - started < 2 * timeout_s, \
                        f"a timed-out {'transaction' if transaction else 'pipeline'} was sent again"
            finally:
                os.kill(victim.proc.pid, signal.SIGCONT)
            assert await store.get("frozen") == b"1"

            healthy = [c for node in store.get_primaries() if node.port != victim_port for c in node._connections]
            assert healthy and all(c.is_connected for c in healthy)
            victim.kill()
            pipe = store.pipeline(transaction=False)
            pipe.get("frozen")
            with pytest.raises(redis.exceptions.RedisError):
                await pipe.execute()
            assert all(c.is_connected for c in healthy), "a pipeline's retry closed other calls' connections"
            assert [v for v in await asyncio.gather(*(store.get(k) for k in others[:20]))] == [b"1"] * 20
            await store.aclose()

        asyncio.run(run())


def test_a_frozen_master_costs_a_service_one_timeout_on_its_keys_and_nothing_on_the_others():
    """operations.md, a registry on a cluster with one master frozen (SIGSTOP): a credit whose person
    lives there answers UNAVAILABLE / STORE_UNAVAILABLE after one command timeout, every time; reads
    of the people on the other masters answer in round trips, also right after each of
    those timeouts, when the client reloads its slot map (it used to ask the frozen master for it one
    time in three, and they then waited a whole timeout)."""
    import os
    import signal

    from medaid.common.redis_client import sync_client
    from medaid.registry.keys import Keys
    from medaid.topology import start_service

    timeout_s = 1.0
    with RedisCluster(3) as cluster:
        svc = start_service("registry-frozen", "medaid.registry", [
            "--port", "0", "--redis-url", cluster.plain_url, "--clock", DEMO_CLOCK, "--metrics-port", "off",
            "--province", "13", "--redis-timeout-ms", str(int(timeout_s * 1000)), "--redis-wait-timeout-ms", "200"])
        r = sync_client(cluster.url)
        try:
            with grpc.insecure_channel(svc.address) as ch:
                registry = rpb_grpc.RegistryServiceStub(ch)
                people = [enroll(registry, name="赵敏") for _ in range(24)]
                port = {pid: r.get_node_from_key(Keys("13").person(pid)).port for pid in people}
                victim_port = port[people[0]]
                victim = next(n for n in cluster.nodes if n.port == victim_port)
                healthy = [pid for pid in people if port[pid] != victim_port]
                assert victim.proc is not None and len({port[pid] for pid in healthy}) == 2

                def credit_req(pid: str) -> rpb.CreditAccountRequest:
                    return rpb.CreditAccountRequest(request_id=rid("frz"), id_number=pid, amount_fen=AMOUNT,
                                                    kind=rpb.CREDIT_KIND_MONTHLY_CONTRIBUTION, period="202611")

                os.kill(victim.proc.pid, signal.SIGSTOP)
                waits: list[float] = []
                try:
                    for _ in range(ROUNDS):
                        started = time.monotonic()
                        with pytest.raises(grpc.RpcError) as err:
                            registry.CreditAccount(credit_req(people[0]), timeout=5)
                        took = time.monotonic() - started
                        assert (err.value.code(), reason(err.value)) == (grpc.StatusCode.UNAVAILABLE,
                                                                         "STORE_UNAVAILABLE")
                        assert took < 2 * timeout_s, f"the frozen master's key answered after {took:.2f} s"
                        # Reads only: a write's request-id claim has a slot of its own, maybe the frozen one's.
                        started = time.monotonic()
                        for pid in healthy[:6]:
                            registry.GetPerson(rpb.GetPersonRequest(id_number=pid), timeout=5)
                        waits.append(time.monotonic() - started)
                finally:
                    os.kill(victim.proc.pid, signal.SIGCONT)
                slow = [round(w, 2) for w in waits if w >= timeout_s / 2]
                assert not slow, f"the other masters' calls waited on a reload asking the frozen master: {slow} s"
                assert sum(waits) / ROUNDS < timeout_s / 5, waits
        finally:
            r.close()
            assert svc.stop() == 0


def test_a_process_started_while_the_master_of_slot_0_is_down_serves_the_other_masters():
    """redis-py reads the command table from its default node, the first master of the slot map, when
    it loads the map: while that master was down (before its replica took over), a process starting
    then (or a client reloading the map) failed every call, the other masters' keys included; during
    a failover that showed as a whole window of STORE_UNAVAILABLE. Now it asks the next master."""
    import asyncio

    from medaid.common.redis_client import client
    from redis.cluster import key_slot

    slot_0 = next(k for k in (f"s0:{i}" for i in range(10**6)) if key_slot(k.encode()) == 0)
    with RedisCluster(3) as cluster:
        async def run() -> None:
            before = client(cluster.url, 16, timeout_s=0.5)
            victim_port = (await before.initialize()).get_node_from_key(slot_0).port
            others = [k for k in (f"other:{i}" for i in range(200))
                      if before.get_node_from_key(k).port != victim_port][:10]
            await before.aclose()
            next(n for n in cluster.nodes if n.port == victim_port).kill()
            fresh = client(cluster.url, 16, timeout_s=0.5)  # a service (re)started while that master is down
            await asyncio.gather(*(fresh.set(k, 2) for k in others))
            assert [v for v in await asyncio.gather(*(fresh.get(k) for k in others))] == [b"2"] * 10
            with pytest.raises(redis.exceptions.ConnectionError):
                await fresh.get(slot_0)
            await fresh.aclose()

        asyncio.run(run())


def test_a_master_refusing_writes_for_want_of_replicas_is_answered_store_unavailable(topo: Topology):
    """operations.md: with `min-replicas-to-write`, a master whose replicas lag refuses writes (NOREPLICAS),
    answered UNAVAILABLE / STORE_UNAVAILABLE and resent with the same request id. That held for a single
    script but not where the refused script was queued on a pipeline (a transfer's debit, a SettleBatch):
    the client words that reply "Command # 1 (…) of pipeline caused error: ('NOREPLICAS …',)", and the
    call was answered UNKNOWN, which no caller retries."""
    from google.rpc import code_pb2
    from medaid.common.redis_client import sync_client
    from medaid.registry.keys import Keys
    from support import settle_request

    r = sync_client(topo.redis.url)
    with grpc.insecure_channel(topo.address("registry-13")) as ch:
        registry = rpb_grpc.RegistryServiceStub(ch)
        pid = enroll(registry, name="王芳")
        credit(registry, pid, 10_000)
        port = r.get_node_from_key(Keys("13").person(pid)).port
        master = next(n for n in topo.redis.nodes if n.port == port).connection(socket_timeout=5)
        debit = rpb.DebitForTransferRequest(transfer_id=rid("xfer"), sender_id_number=pid, amount_fen=1_000,
                                            recipient_province="11")
        batch = rpb.SettleBatchRequest(requests=[settle_request(pid, 500)])
        calls: dict[str, Callable[[], object]] = {
            "CreditAccount": lambda: registry.CreditAccount(rpb.CreditAccountRequest(
                request_id="norepl-credit-" + pid, id_number=pid, amount_fen=100,
                kind=rpb.CREDIT_KIND_MONTHLY_CONTRIBUTION, period="202611"), timeout=5),
            "DebitForTransfer": lambda: registry.DebitForTransfer(debit, timeout=5),
            "SettleBatch": lambda: registry.SettleBatch(batch, timeout=5).outcomes[0],
        }
        master.config_set("min-replicas-to-write", 2)  # it has one replica: every write is refused
        try:
            answers = {}
            for name, call in calls.items():
                try:
                    got = call()
                    answers[name] = (f"item {code_pb2.Code.Name(got.error.code)} {got.error.reason}"
                                     if isinstance(got, rpb.SettleOutcome) else "OK")
                except grpc.RpcError as exc:
                    answers[name] = f"{exc.code().name} {reason(exc)}"
        finally:
            master.config_set("min-replicas-to-write", 0)
            master.close()
        assert answers == {"CreditAccount": "UNAVAILABLE STORE_UNAVAILABLE",
                           "DebitForTransfer": "UNAVAILABLE STORE_UNAVAILABLE",
                           "SettleBatch": "item UNAVAILABLE STORE_UNAVAILABLE"}, answers
        # Nothing was written; the resends move the money once.
        assert registry.GetPerson(rpb.GetPersonRequest(id_number=pid), timeout=5).person.balance_fen == 10_000
        calls["CreditAccount"]()
        assert registry.DebitForTransfer(debit, timeout=5).balance_after_fen == 9_100
        assert calls["SettleBatch"]().response.result.amount_fen == 500
        assert registry.GetPerson(rpb.GetPersonRequest(id_number=pid), timeout=5).person.balance_fen == 8_600
    r.close()
