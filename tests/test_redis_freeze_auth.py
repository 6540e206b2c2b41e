"""A frozen Redis and Redis AUTH, against real processes.

Frozen: redis-server stopped with SIGSTOP keeps its TCP connections open and its port accepting
(the kernel completes the handshake), so only a command timeout notices it. The services' client
gives up after --redis-timeout-ms (default 2 s) and every RPC answers UNAVAILABLE with reason
STORE_UNAVAILABLE well inside the caller's deadline, with no hang; after SIGCONT the same processes
serve again.

AUTH: the topology's Redis requires a password (requirepass) that every service reads from a file
(--redis-password-file); a service given a wrong password, or none, stops at start with a message
naming the option instead of serving errors; the cluster client signs in on every node.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis
import redis.asyncio
import uvloop
from grpc_health.v1 import health_pb2
from medaid.common import errors
from medaid.common.fastredis import LeanRedis
from medaid.common.redis_client import client, connect
from medaid.common.redis_server import RedisCluster, RedisServer
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.registry.v1 import registry_pb2_grpc as rpb_grpc
from medaid.topology import DEMO_CLOCK, Topology, start_service
from medaid.wallet.v1 import wallet_pb2 as wpb
from medaid.wallet.v1 import wallet_pb2_grpc as wpb_grpc
from support import credit, enroll, rid

DEADLINE_S = 8.0
PASSWORD = "s3cret with spaces & \"quotes\""


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    t = Topology.start(provinces=("13",), router=False, gateway=False, clock=DEMO_CLOCK, redis_password=PASSWORD)
    try:
        yield t
    finally:
        assert isinstance(t.redis, RedisServer)
        if t.redis.proc is not None and t.redis.proc.poll() is None:
            os.kill(t.redis.proc.pid, signal.SIGCONT)  # never leave a stopped server behind
        codes = t.stop()
        assert set(codes.values()) == {0}, codes


def store_unavailable_within(call: grpc.UnaryUnaryMultiCallable, request: object, limit_s: float) -> float:
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=DEADLINE_S)
    took = time.monotonic() - started
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, (err.value.code(), err.value.details(), took)
    info = errors.error_info(err.value)
    assert info is not None and info.reason == "STORE_UNAVAILABLE", err.value.details()
    assert took < limit_s, f"{took:.1f} s for UNAVAILABLE; the deadline was {DEADLINE_S} s"
    print(f"UNAVAILABLE after {took:.2f} s")
    return took


def health(address: str) -> int:
    with grpc.insecure_channel(address) as ch:
        from grpc_health.v1 import health_pb2_grpc

        return int(health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2).status)


def test_a_sigstopped_redis_gives_unavailable_within_the_deadline_and_serving_after_sigcont(topo: Topology):
    assert isinstance(topo.redis, RedisServer) and topo.redis.proc is not None
    with grpc.insecure_channel(topo.address("registry-13")) as rch, \
            grpc.insecure_channel(topo.address("wallet")) as wch:
        registry, wallet = rpb_grpc.RegistryServiceStub(rch), wpb_grpc.WalletServiceStub(wch)
        helper = enroll(registry, name="张伟")
        credit(registry, helper, 10_000)
        frozen_credit = rpb.CreditAccountRequest(request_id=rid("frozen"), id_number=helper, amount_fen=100,
                                                 kind=rpb.CREDIT_KIND_MONTHLY_CONTRIBUTION, period="202611")
        os.kill(topo.redis.proc.pid, signal.SIGSTOP)
        try:
            # Reads and writes of both services: each within the command timeout (2 s) and a margin.
            store_unavailable_within(registry.GetPerson, rpb.GetPersonRequest(id_number=helper), 4.5)
            store_unavailable_within(registry.CreditAccount, frozen_credit, 4.5)
            store_unavailable_within(wallet.GetWallet, wpb.GetWalletRequest(owner_id_number=helper), 4.5)
            # A second call after the first timed out (a new connection, whose AUTH Redis cannot answer).
            store_unavailable_within(registry.GetPerson, rpb.GetPersonRequest(id_number=helper), 4.5)
            deadline = time.monotonic() + 6
            while health(topo.address("registry-13")) != health_pb2.HealthCheckResponse.NOT_SERVING:
                assert time.monotonic() < deadline, "health still SERVING on a frozen Redis"
                time.sleep(0.2)
        finally:
            os.kill(topo.redis.proc.pid, signal.SIGCONT)
        deadline = time.monotonic() + 10
        while True:
            try:
                again = registry.CreditAccount(frozen_credit, timeout=DEADLINE_S)  # the caller resends
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "the registry did not serve again after SIGCONT"
                time.sleep(0.2)
        # Resent with its request id, the refused credit moves the money once.
        assert again.balance_fen == 10_100
        person = registry.GetPerson(rpb.GetPersonRequest(id_number=helper), timeout=DEADLINE_S).person
        assert person.balance_fen == 10_100
        deadline = time.monotonic() + 10
        while health(topo.address("wallet")) != health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline, "the wallet did not turn SERVING again after SIGCONT"
            time.sleep(0.2)


def test_the_lean_client_times_out_on_a_frozen_redis_and_recovers():
    """The command timeout of the services' single-Redis client, in process: every command waiting on
    the connection fails, none hangs, and the next command after SIGCONT finds Redis on a new one."""
    with RedisServer(appendfsync="no", password=PASSWORD) as server:
        assert server.proc is not None

        async def run() -> None:
            for store in (LeanRedis(server.plain_url, timeout_s=0.5, password=PASSWORD),
                          client(server.url, timeout_s=0.5)):
                assert isinstance(store, LeanRedis)
                await store.set("k", "v")
                os.kill(server.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
                try:
                    started = time.monotonic()
                    waiting = await asyncio.gather(*(store.get("k") for _ in range(5)), return_exceptions=True)
                    assert all(isinstance(r, redis.exceptions.TimeoutError) for r in waiting), waiting
                    assert time.monotonic() - started < 1.5
                finally:
                    os.kill(server.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
                assert await store.get("k") == b"v"
                await store.aclose()

        asyncio.run(run())


def test_pooled_client_times_out_too(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MEDAID_REDIS_CLIENT", "redis-py")
    with RedisServer(appendfsync="no") as server:
        assert server.proc is not None

        async def run() -> None:
            store = client(server.url, timeout_s=0.5)
            assert not isinstance(store, LeanRedis)
            await store.set("k", "v")
            os.kill(server.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
            try:
                started = time.monotonic()
                with pytest.raises(redis.exceptions.TimeoutError):
                    await store.get("k")
                assert time.monotonic() - started < 1.5
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
            assert await store.get("k") == b"v"
            await store.aclose()

        asyncio.run(run())


def test_services_sign_in_with_the_password_from_a_file(topo: Topology):
    assert isinstance(topo.redis, RedisServer)
    assert Path(topo.redis.password_file).read_text() == PASSWORD
    assert topo.redis.password_file in topo.args_for("registry-13")[1]
    assert PASSWORD not in " ".join(topo.args_for("registry-13")[1])  # not on any command line
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=topo.redis.port).ping()  # Redis refuses whoever has no password
    for name in ("registry-13", "wallet"):
        assert topo.services[name].healthy(), name


@pytest.mark.parametrize("password", ["wrong", None], ids=["wrong-password", "no-password"])
def test_a_service_with_refused_credentials_stops_at_start_naming_the_option(
        topo: Topology, tmp_path: Path, password: str | None):
    args = ["--port", "0", "--redis-url", topo.redis.plain_url, "--province", "13", "--clock", DEMO_CLOCK]
    if password is not None:
        (tmp_path / "pw").write_text(password + "\n")
        args += ["--redis-password-file", str(tmp_path / "pw")]
    started = time.monotonic()
    with pytest.raises(RuntimeError) as err:
        start_service("registry-13-bad", "medaid.registry", args, timeout=20)
    assert time.monotonic() - started < 15
    message = str(err.value)
    assert "exited with 1" in message and "Redis refused the credentials" in message, message
    assert "redis_password_file" in message and "wrong" not in message.split("credentials", 1)[1], message


def test_a_start_cancelled_while_redis_answers_stops_the_start(redis_server: RedisServer):
    """`connect` at a service's start, cancelled (Ctrl-C) at every point of its ping in turn, ends
    cancelled each time: on Python 3.11 `asyncio.wait_for` returned the answer of a ping that came
    as the cancellation did, and the service went on to serve with the operator's stop lost."""
    async def run() -> list[int]:
        lost = []
        for k in range(400):
            starting = asyncio.create_task(connect({"redis_url": redis_server.url}, 4))
            for _ in range(k % 40):
                await asyncio.sleep(0)
            asked = starting.cancel()
            try:
                store = await starting
            except asyncio.CancelledError:
                continue
            await store.aclose()
            if asked:
                lost.append(k)
        return lost

    assert asyncio.run(run()) == []


def test_the_cluster_client_signs_in_on_every_node(tmp_path: Path):
    (tmp_path / "pw").write_text(PASSWORD)
    (tmp_path / "bad").write_text("nope")
    with RedisCluster(3, password=PASSWORD) as cluster:
        async def run() -> None:
            cfg = {"redis_url": cluster.plain_url, "redis_password_file": str(tmp_path / "pw"),
                   "redis_timeout_ms": "2000"}
            store = await connect(cfg, 16)
            assert isinstance(store, redis.asyncio.RedisCluster)
            for i in range(30):  # keys on every master
                await store.set(f"k{i}", i)
            assert [int(v) for v in await asyncio.gather(*(store.get(f"k{i}") for i in range(30)))] == list(range(30))
            await store.aclose()
            with pytest.raises(SystemExit, match="Redis refused the credentials"):
                await connect({**cfg, "redis_password_file": str(tmp_path / "bad")}, 16)
            with pytest.raises(SystemExit, match="given twice"):
                await connect({**cfg, "redis_url": cluster.url}, 16)

        asyncio.run(run())


def _cluster_connection_class() -> type[redis.asyncio.Connection]:
    """The class of the connections the services' cluster client opens to its nodes."""
    cluster = client("redis+cluster://127.0.0.1:1,127.0.0.1:2")  # nothing is connected yet
    classes = {node.connection_class for node in cluster.nodes_manager.startup_nodes.values()}
    classes.add(cluster.nodes_manager.connection_kwargs["connection_class"])  # nodes the slot map brings
    assert len(classes) == 1
    return classes.pop()


def test_a_tls_cluster_client_guards_its_node_connections_too():
    from medaid.common.redis_client import GuardedConnection

    cluster = client("rediss+cluster://127.0.0.1:1,127.0.0.1:2?ssl_cert_reqs=none")  # nothing is connected yet
    classes = {node.connection_class for node in cluster.nodes_manager.startup_nodes.values()}
    classes.add(cluster.nodes_manager.connection_kwargs["connection_class"])
    assert len(classes) == 1
    cls = classes.pop()
    assert issubclass(cls, redis.asyncio.SSLConnection) and issubclass(cls, GuardedConnection)


@pytest.mark.parametrize("kind", ["single Redis", "cluster node"])
def test_a_connection_torn_down_while_sending_is_a_connection_error(redis_server: RedisServer, kind: str):
    """The cluster client disconnects every connection when a slot-map reload fails (a master failing
    over); a command on its way to the socket on one of them then found no writer and raised
    AttributeError, which callers answered UNKNOWN. It is a ConnectionError: retried, else UNAVAILABLE."""
    from medaid.common.redis_client import HiredisPackConnection

    cls = HiredisPackConnection if kind == "single Redis" else _cluster_connection_class()

    async def scenario() -> None:
        conn = cls(host="127.0.0.1", port=redis_server.port, socket_timeout=2.0)
        await conn.connect()
        assert conn.is_connected

        async def torn_down() -> None:  # another task's reload closes the connection meanwhile
            await conn.disconnect()

        conn.check_health = torn_down  # type: ignore[method-assign]
        with pytest.raises(redis.exceptions.ConnectionError) as got:
            await conn.send_packed_command(conn.pack_command("PING"))
        assert isinstance(got.value.__cause__, AttributeError)
        assert errors.from_store(got.value) is not None  # what callers answer: UNAVAILABLE
        await conn.disconnect()

    async def closed_transport() -> None:  # under uvloop, as the services run: "the handler is closed"
        conn = cls(host="127.0.0.1", port=redis_server.port, socket_timeout=2.0)
        await conn.connect()

        async def closed_under_us() -> None:
            conn._writer.transport.close()  # type: ignore[union-attr]
            await asyncio.sleep(0)

        conn.check_health = closed_under_us  # type: ignore[method-assign]
        with pytest.raises(redis.exceptions.ConnectionError) as got:
            await conn.send_packed_command(conn.pack_command("PING"))
        assert isinstance(got.value.__cause__, RuntimeError) and "handler is closed" in str(got.value.__cause__)
        await conn.disconnect()

    asyncio.run(scenario())
    uvloop.run(closed_transport())
