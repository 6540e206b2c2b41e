"""Shared fixtures: a real redis-server on a free port, real gRPC registry servers on loopback.

The gRPC servers run on an asyncio loop in a background thread of the test process (so tests
can reach the `Registry` object to set its clock or fault hook); tests call them through
ordinary synchronous gRPC stubs over TCP, exactly as an integrator would.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
import redis.asyncio as aioredis
from medaid.common.redis_server import RedisServer
from medaid.common.server import start_server
from medaid.directory import Directory
from medaid.registry import policy as policy_mod
from medaid.registry.client import Registries
from medaid.registry.policy import Policy
from medaid.registry.service import Registry
from medaid.registry.servicer import register
from medaid.registry.v1 import registry_pb2_grpc as pb_grpc
from medaid.registry.wallet_port import GrpcWallet
from medaid.router.service import Router
from medaid.router.servicer import register as register_router
from medaid.router.v1 import router_pb2_grpc as router_pb_grpc
from medaid.wallet.service import Wallet
from medaid.wallet.servicer import register as register_wallet
from medaid.wallet.v1 import wallet_pb2_grpc as wallet_pb_grpc
from support import test_clock


class LoopThread:
    """An asyncio loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(autouse=True)
def _process_wide_settings_restored() -> Iterator[None]:
    """A test that runs a tool's `main()` in-process installs uvloop's policy and the services' GC
    thresholds for the whole worker: put both back, so no test depends on which ran before it."""
    policy, thresholds, frozen = asyncio.get_event_loop_policy(), gc.get_threshold(), gc.get_freeze_count()
    yield
    asyncio.set_event_loop_policy(policy)
    gc.set_threshold(*thresholds)
    if gc.get_freeze_count() > frozen:
        gc.unfreeze()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(appendfsync="always")
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def rdb(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A synchronous client on a freshly emptied Redis, for asserting on stored contents."""
    client = redis.Redis(host="127.0.0.1", port=redis_server.port)
    client.flushall()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    try:
        yield lt
    finally:
        lt.stop()


class RunningRegistry:
    def __init__(self, registry: Registry, port: int, server: grpc.aio.Server, client: aioredis.Redis) -> None:
        self.registry = registry
        self.port = port
        self.server = server
        self.client = client
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = pb_grpc.RegistryServiceStub(self.channel)

    @property
    def clock(self) -> Any:
        return self.registry.clock


def policy_for(province: str) -> Policy:
    return policy_mod.load(policy_mod.find_policy_file(province))


@pytest.fixture
def start_registry(
    redis_server: RedisServer, loop_thread: LoopThread, rdb: redis.Redis
) -> Iterator[Callable[..., RunningRegistry]]:
    """Factory: start_registry(province="13", policy=None, clock=None) -> RunningRegistry."""
    started: list[RunningRegistry] = []

    def factory(province: str = "13", policy: Policy | None = None, clock: Any = None) -> RunningRegistry:
        pol = policy or policy_for(province)

        async def boot() -> RunningRegistry:
            client = aioredis.Redis(host="127.0.0.1", port=redis_server.port, max_connections=512)
            reg = Registry(client, pol, clock=clock or test_clock())
            running = await start_server(lambda s: register(s, reg), port=0)
            return RunningRegistry(reg, running.port, running.server, client)

        rr = loop_thread.run(boot())
        started.append(rr)
        return rr

    try:
        yield factory
    finally:
        for rr in started:
            rr.channel.close()

            async def shutdown(rr: RunningRegistry = rr) -> None:
                await rr.server.stop(0)
                await rr.client.aclose()

            loop_thread.run(shutdown())


@pytest.fixture
def hebei(start_registry: Callable[..., RunningRegistry]) -> RunningRegistry:
    return start_registry("13")


class RunningWallet:
    def __init__(self, wallet: Any, port: int, server: grpc.aio.Server, client: aioredis.Redis) -> None:
        self.wallet = wallet
        self.port = port
        self.server = server
        self.client = client
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = wallet_pb_grpc.WalletServiceStub(self.channel)


class National:
    """Registries 13 河北, 11 北京, 62 甘肃 and the national wallet, wired together, one shared clock."""

    def __init__(self, registries: dict[str, RunningRegistry], wallet: RunningWallet, clock: Any) -> None:
        self.registries = registries
        self.wallet = wallet
        self.clock = clock

    def reg(self, province: str) -> Any:
        return self.registries[province].stub


@pytest.fixture
def national(
    redis_server: RedisServer, loop_thread: LoopThread, rdb: redis.Redis, start_registry: Callable[..., RunningRegistry]
) -> Iterator[National]:
    clock = test_clock()
    regs = {p: start_registry(p, clock=clock) for p in ("13", "11", "62")}

    async def boot() -> RunningWallet:
        client = aioredis.Redis(host="127.0.0.1", port=redis_server.port, max_connections=512)
        registries = Registries({p: f"127.0.0.1:{r.port}" for p, r in regs.items()})
        wallet = Wallet(client, registries, clock=clock, recovery_grace_ms=0)
        running = await start_server(lambda s: register_wallet(s, wallet), port=0)
        for r in regs.values():
            r.registry.wallet = GrpcWallet(f"127.0.0.1:{running.port}")
        return RunningWallet(wallet, running.port, running.server, client)

    rw = loop_thread.run(boot())
    try:
        yield National(regs, rw, clock)
    finally:
        rw.channel.close()

        async def shutdown() -> None:
            await rw.server.stop(0)
            await rw.wallet.registries.close()
            for r in regs.values():
                if isinstance(r.registry.wallet, GrpcWallet):
                    await r.registry.wallet.close()
            await rw.client.aclose()

        loop_thread.run(shutdown())


class RunningRouter:
    def __init__(self, router: Router, port: int, server: grpc.aio.Server, client: aioredis.Redis) -> None:
        self.router = router
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.server = server
        self.client = client
        self.channel = grpc.insecure_channel(self.address)
        self.stub = router_pb_grpc.RouterServiceStub(self.channel)


@pytest.fixture
def start_router(
    redis_server: RedisServer, loop_thread: LoopThread, national: National
) -> Iterator[Callable[..., RunningRouter]]:
    """Factory: start_router(batch=True) -> a router in front of `national`'s registries and wallet."""
    started: list[RunningRouter] = []

    def factory(batch: bool = True) -> RunningRouter:
        async def boot() -> RunningRouter:
            client = aioredis.Redis(host="127.0.0.1", port=redis_server.port, max_connections=64)
            registries = Registries({p: f"127.0.0.1:{r.port}" for p, r in national.registries.items()})
            router = Router(Directory(client), registries, wallet_address=f"127.0.0.1:{national.wallet.port}",
                            clock=national.clock, batch=batch)
            running = await start_server(lambda s: register_router(s, router), port=0)
            return RunningRouter(router, running.port, running.server, client)

        rr = loop_thread.run(boot())
        started.append(rr)
        return rr

    try:
        yield factory
    finally:
        for rr in started:
            rr.channel.close()

            async def shutdown(rr: RunningRouter = rr) -> None:
                await rr.server.stop(0)
                await rr.router.close()
                await rr.client.aclose()

            loop_thread.run(shutdown())


ROOT = Path(__file__).resolve().parents[1]
