"""A death and an enrolment of one person in two provinces (SPEC §5b: a death is final): whatever order
they reach the national person directory in, it never calls the dead person ACTIVE.

Real registries 13 河北 and 11 北京 and Redis; 11 runs on an event loop of its own, so that a death
recorded in 13 can land in the middle of 11's enrolment."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from conftest import LoopThread, RunningRegistry, policy_for
from medaid.common.redis_server import RedisServer
from medaid.common.server import start_server
from medaid.common.v1 import common_pb2 as cpb
from medaid.directory import Directory
from medaid.registry.service import Registry
from medaid.registry.servicer import register
from medaid.registry.v1 import registry_pb2 as pb
from support import enroll, new_id, rid, test_clock

DEAD = [b"13", b"DECEASED"]


@pytest.fixture
def beijing_apart(redis_server: RedisServer) -> Iterator[RunningRegistry]:
    """Registry 11 on a loop of its own (a fault hook of its may wait for a call another registry serves)."""
    lt = LoopThread()

    async def boot() -> RunningRegistry:
        client = aioredis.Redis(host="127.0.0.1", port=redis_server.port, max_connections=64)
        reg = Registry(client, policy_for("11"), clock=test_clock())
        running = await start_server(lambda s: register(s, reg), port=0)
        return RunningRegistry(reg, running.port, running.server, client)

    rr = lt.run(boot())
    try:
        yield rr
    finally:
        rr.channel.close()

        async def shutdown() -> None:
            await rr.server.stop(0)
            await rr.client.aclose()

        lt.run(shutdown())
        lt.stop()


def enrol_in_beijing(stub: Any, pid: str) -> pb.EnrollPersonResponse:
    return stub.EnrollPerson(pb.EnrollPersonRequest(
        request_id=rid("enroll"), id_number=pid, name="张三", insurance_type=cpb.INSURANCE_TYPE_EMPLOYEE,
        pooling_region="110000"))


def record_death(stub: Any, pid: str) -> pb.RecordDeathResponse:
    return stub.RecordDeath(pb.RecordDeathRequest(
        request_id=rid("death"), id_number=pid, heir_id_number=new_id("130102", "19850101"), heir_name="张继承",
        date_of_death="20261121"))


def directory_of(rdb: Any, pid: str) -> list[bytes]:
    return rdb.hmget(f"dir:{{psn:{pid}}}", ["province", "status"])


def test_a_death_recorded_in_a_province_that_does_not_hold_the_entry_takes_it(
        start_registry: Callable[..., RunningRegistry], beijing_apart: RunningRegistry, rdb: Any, loop_thread: Any):
    """Insured in 13, then enrolled in 11 too (the entry is 11's, 13 noted beside it); 13 records the
    death. The directory says DECEASED (1101/2207 without insuplc_admdvs, a 亲情账户 or a bind reading it
    must not take the dead person for ACTIVE, nor for insured anywhere), however 11 holds them until it
    records the death as well; 11's later death, or a late ACTIVE, leaves it so."""
    running = start_registry("13")
    hebei, beijing = running.stub, beijing_apart.stub
    pid = enroll(hebei)
    enrol_in_beijing(beijing, pid)
    assert directory_of(rdb, pid) == [b"11", b"ACTIVE"]
    record_death(hebei, pid)
    assert directory_of(rdb, pid) == DEAD
    assert loop_thread.run(Directory(running.client).insured_province(pid)) == ""
    beijing.UpdatePersonStatus(pb.UpdatePersonStatusRequest(request_id=rid("status"), id_number=pid,
                                                            status=cpb.PERSON_STATUS_SUSPENDED))
    beijing.UpdatePersonStatus(pb.UpdatePersonStatusRequest(request_id=rid("status"), id_number=pid,
                                                            status=cpb.PERSON_STATUS_ACTIVE))
    assert directory_of(rdb, pid) == DEAD
    record_death(beijing, pid)
    assert directory_of(rdb, pid) == DEAD


def test_a_death_landing_in_the_middle_of_another_provinces_enrolment_is_not_undone(
        start_registry: Callable[..., RunningRegistry], beijing_apart: RunningRegistry, rdb: Any):
    """11's enrolment found no death in the directory; 13 records the death before 11 writes the person.
    The enrolment's tell of ACTIVE, arriving after the death, must not take the entry back: the
    directory stays DECEASED where the death was recorded."""
    hebei, beijing = start_registry("13").stub, beijing_apart.stub
    pid = enroll(hebei)
    died: list[Any] = []

    def death_meanwhile(point: str) -> None:
        if point == "enroll.after_entry" and not died:
            died.append(record_death(hebei, pid).person.status)

    beijing_apart.registry.fault_hook = death_meanwhile
    try:
        answer = enrol_in_beijing(beijing, pid)
    except grpc.RpcError as exc:
        answer = exc
    finally:
        beijing_apart.registry.fault_hook = None
    assert died == [cpb.PERSON_STATUS_DECEASED]
    assert directory_of(rdb, pid) == DEAD, answer
