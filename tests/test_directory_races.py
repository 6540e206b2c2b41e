"""The national person directory under status changes of one person finished at once (SPEC §5b): two
registry processes of one province (or a request and the recovery loop) each write their change under
the person's lock, then tell the directory the person as the registry holds them. The directory ends
with what the registry ends with, whichever tell reaches it last.

Real registries (the `national` fixture), real Redis and gRPC over loopback."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from conftest import LoopThread, National
from medaid.common.server import start_server
from medaid.common.v1 import common_pb2 as cpb
from medaid.directory import Directory
from medaid.registry.service import Registry
from medaid.registry.servicer import register
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.registry.v1 import registry_pb2_grpc as pb_grpc
from medaid.registry.wallet_port import GrpcWallet
from support import enroll, rid

ACTIVE, SUSPENDED, TERMINATED = cpb.PERSON_STATUS_ACTIVE, cpb.PERSON_STATUS_SUSPENDED, cpb.PERSON_STATUS_TERMINATED


def registry_status(national: National, prov: str, pid: str) -> str:
    st = national.reg(prov).GetPerson(rpb.GetPersonRequest(id_number=pid)).person.status
    return cpb.PersonStatus.Name(st).removeprefix("PERSON_STATUS_")


class SlowDirectory(Directory):
    """The directory with its first tell held on the way (a slow network hop, a paused process) until
    `go` is set: the tell read before a later change reaches the directory after that change's tell."""

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self.held_one = asyncio.Event()
        self.go = asyncio.Event()
        self.first = True

    async def status_changed(self, *args: Any, **kwargs: Any) -> None:
        if self.first:
            self.first = False
            self.held_one.set()
            await self.go.wait()
        await super().status_changed(*args, **kwargs)


@pytest.mark.parametrize(("first", "second"), [(SUSPENDED, ACTIVE), (ACTIVE, SUSPENDED)])
def test_a_status_tell_overtaken_by_a_later_change_leaves_the_directory_with_the_later(
        national: National, rdb: Any, loop_thread: Any, first: int, second: int):
    """The first change's tell is held on its way; the second change is written and told meanwhile;
    then the first tell arrives. The registry holds the second status: so does the directory (a 1101
    without insuplc_admdvs, a 亲情账户 or wallet check reads it)."""
    running = national.registries["13"]
    pid = enroll(national.reg("13"))
    if first == ACTIVE:
        national.reg("13").UpdatePersonStatus(rpb.UpdatePersonStatusRequest(
            request_id=rid("s"), id_number=pid, status=SUSPENDED))
    plain = running.registry.ctx.directory
    slow = loop_thread.run(_make_slow(running.client))
    running.registry.ctx.directory = slow
    try:
        async def race() -> None:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
                stub = pb_grpc.RegistryServiceStub(ch)
                one = asyncio.ensure_future(stub.UpdatePersonStatus(rpb.UpdatePersonStatusRequest(
                    request_id=rid("s"), id_number=pid, status=first), timeout=20))
                await asyncio.wait_for(slow.held_one.wait(), 20)
                await stub.UpdatePersonStatus(rpb.UpdatePersonStatusRequest(
                    request_id=rid("s"), id_number=pid, status=second), timeout=20)
                slow.go.set()
                await one

        loop_thread.run(race())
    finally:
        running.registry.ctx.directory = plain
    want = cpb.PersonStatus.Name(second).removeprefix("PERSON_STATUS_")
    assert registry_status(national, "13", pid) == want
    assert rdb.hmget(f"dir:{{psn:{pid}}}", ["province", "status"]) == [b"13", want.encode()]


async def _make_slow(client: Any) -> SlowDirectory:
    return SlowDirectory(client)


def test_many_concurrent_status_pairs_on_two_registry_processes_leave_the_directory_as_the_registry(
        national: National, rdb: Any, loop_thread: Any, redis_server: Any):
    """Two registry processes of 河北 (one Redis) each get one of a pair of status changes of the same
    person, at once, for many people and in both orders (SUSPENDED/ACTIVE, and a move of province
    racing a re-activation). After each round every person's directory entry says what the registry
    says."""
    reg = national.registries["13"]
    second_loop = LoopThread()

    async def boot() -> Any:
        client = aioredis.Redis(host="127.0.0.1", port=redis_server.port, max_connections=256)
        registry = Registry(client, reg.registry.policy, clock=national.clock)
        registry.wallet = GrpcWallet(f"127.0.0.1:{national.wallet.port}")
        return await start_server(lambda s: register(s, registry), port=0), client, registry

    server, client, registry = second_loop.run(boot())
    try:
        pids = [enroll(national.reg("13")) for _ in range(40)]
        pairs = [((SUSPENDED, ""), (ACTIVE, "")), ((ACTIVE, ""), (SUSPENDED, "")),
                 ((TERMINATED, "11"), (ACTIVE, "")), ((ACTIVE, ""), (TERMINATED, "11"))]

        def send(lt: LoopThread, port: int, reqs: list[tuple[str, int, str]]) -> Any:
            async def go() -> list[Any]:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                    stub = pb_grpc.RegistryServiceStub(ch)

                    async def one(pid: str, st: int, moved_to: str) -> Any:
                        try:
                            return await stub.UpdatePersonStatus(rpb.UpdatePersonStatusRequest(
                                request_id=rid("s"), id_number=pid, status=st, moved_to_province=moved_to), timeout=30)
                        except grpc.aio.AioRpcError as exc:  # a SUSPENDED after TERMINATED is refused
                            return exc.code()
                    return await asyncio.gather(*(one(*q) for q in reqs))
            return asyncio.run_coroutine_threadsafe(go(), lt.loop)

        for n in range(6):
            left, right = [], []
            for i, pid in enumerate(pids):
                a, b = pairs[(i + n) % len(pairs)]
                left.append((pid, *a))
                right.append((pid, *b))
            one, two = send(loop_thread, reg.port, left), send(second_loop, server.port, right)
            one.result(60), two.result(60)
            for pid in pids:
                status = registry_status(national, "13", pid)
                assert rdb.hget(f"dir:{{psn:{pid}}}", "status") == status.encode(), f"round {n}: {pid} {status}"
                if status == "TERMINATED":  # back for the next round
                    national.reg("13").UpdatePersonStatus(rpb.UpdatePersonStatusRequest(
                        request_id=rid("s"), id_number=pid, status=ACTIVE))
    finally:
        async def shutdown() -> None:
            await server.server.stop(0)
            await registry.wallet.close()
            await client.aclose()

        second_loop.run(shutdown())
        second_loop.stop()
