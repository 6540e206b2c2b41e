"""The services' own Redis slow, frozen or busy, as the callers of the services meet it.

A Redis busy with a long Lua script refuses every other command with `BUSY` once the script has run
`busy-reply-threshold`: nothing of a refused command was done, so the caller hears UNAVAILABLE /
STORE_UNAVAILABLE (retry with the same request id) as for a Redis that does not answer, never
UNKNOWN / INTERNAL_ERROR ("it may have been done"); the resend moves the money once.

A Redis frozen (SIGSTOP) or slow: each command waits the client's timeout (--redis-timeout-ms, 2 s)
or what the caller's deadline leaves, whichever is shorter (common/store_deadline.py). A caller that
waits less than the timeout hears UNAVAILABLE / STORE_UNAVAILABLE before its deadline — directly, and
through the router, which passes the registry's reason on instead of naming the registry as not
answering — never a bare DEADLINE_EXCEEDED; one that waits longer hears it after the timeout. A short
caller's cut does not cost the callers beside it anything: the shared connection stays open.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import redis
from medaid.common import errors, rpc
from medaid.common.batcher import Batcher
from medaid.common.redis_client import client
from medaid.common.redis_server import RedisCluster, RedisServer
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.registry.v1 import registry_pb2_grpc as rpb_grpc
from medaid.router.v1 import router_pb2 as pb
from medaid.router.v1 import router_pb2_grpc as pb_grpc
from medaid.topology import DEMO_CLOCK, Topology, start_service
from support import RESIDENT, bind, credit, enroll, rid, settle_request
from test_store_outage import Served, assert_store_unavailable, failed, served_alone
from test_wallet_deadlines import stopped, timed

T = 10.0
# A script that keeps Redis busy for about `ARGV[1]` milliseconds (Redis answers nobody else meanwhile;
# the time a script sees advances only while Redis answers BUSY, so the time is only about right).
SLOW_LUA = """
local t = redis.call('TIME')
while true do
  local n = redis.call('TIME')
  if (n[1] - t[1]) * 1000000 + (n[2] - t[2]) >= tonumber(ARGV[1]) * 1000 then return 1 end
end
"""


def busy(served: Served, ms: int) -> threading.Thread:
    """Redis running a script for `ms` milliseconds, from a connection of its own; returns once it runs."""
    side = served.server.connection()
    started = threading.Event()

    def run() -> None:
        started.set()
        try:
            side.eval(SLOW_LUA, 0, ms)
        except redis.exceptions.ResponseError as exc:  # ended by SCRIPT KILL
            assert "killed" in str(exc).lower(), exc
        finally:
            side.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(5)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # until Redis answers BUSY (past busy-reply-threshold)
        try:
            served.admin.ping()
        except redis.exceptions.ResponseError as exc:
            if str(exc).startswith("BUSY"):
                return thread
        except redis.exceptions.TimeoutError:
            pass
    raise AssertionError("Redis never answered BUSY")


@pytest.fixture
def served(loop_thread: Any) -> Iterator[Served]:
    with served_alone(loop_thread) as it:
        yield it


def test_a_redis_busy_with_a_long_script_is_store_unavailable_and_the_resend_moves_money_once(served: Served):
    pid = enroll(served.stub)
    credit = rpb.CreditAccountRequest(request_id=rid("credit"), id_number=pid, amount_fen=5_000,
                                      kind=rpb.CREDIT_KIND_MONTHLY_CONTRIBUTION, period="202611")
    served.admin.config_set("busy-reply-threshold", 100)  # BUSY after 0.1 s of a script, not 5 s
    script = busy(served, 3_000)
    try:
        assert_store_unavailable(failed(served.stub.CreditAccount, credit), str(served.server.port))
        assert_store_unavailable(failed(served.stub.GetPerson, rpb.GetPersonRequest(id_number=pid)),
                                 str(served.server.port))
    finally:
        served.admin.script_kill()  # it wrote nothing: Redis may end it
        script.join(10)
    # The refused credit did nothing; resent, it moves the money once.
    assert served.stub.GetPerson(rpb.GetPersonRequest(id_number=pid), timeout=T).person.balance_fen == 0
    assert served.stub.CreditAccount(credit, timeout=T).balance_fen == 5_000
    assert served.stub.CreditAccount(credit, timeout=T).balance_fen == 5_000
    assert served.stub.GetPerson(rpb.GetPersonRequest(id_number=pid), timeout=T).person.balance_fen == 5_000


def assert_store_unavailable_within(answer: Any, took: float, deadline_s: float) -> None:
    assert isinstance(answer, grpc.RpcError), answer
    info = errors.error_info(answer)
    assert (answer.code(), info.reason if info else None) == (grpc.StatusCode.UNAVAILABLE, errors.STORE_UNAVAILABLE), \
        (answer.code(), answer.details(), took)
    assert took < deadline_s, f"{took:.2f} s for a caller that waits {deadline_s} s"


@pytest.mark.parametrize("deadline_s", [0.5, 1.5])
def test_a_caller_waiting_less_than_the_store_timeout_hears_store_unavailable_before_its_deadline(
        served: Served, deadline_s: float):
    pid = enroll(served.stub)
    credit = rpb.CreditAccountRequest(request_id=rid("credit"), id_number=pid, amount_fen=3_000,
                                      kind=rpb.CREDIT_KIND_MONTHLY_CONTRIBUTION, period="202611")
    assert served.server.proc is not None
    with stopped(served.server.proc.pid):
        for call, request in ((served.stub.GetPerson, rpb.GetPersonRequest(id_number=pid)),
                              (served.stub.CreditAccount, credit),
                              (served.stub.Settle, settle_request(pid, 1_000))):
            took, answer = timed(lambda: call(request, timeout=deadline_s))  # noqa: B023 - called at once
            assert_store_unavailable_within(answer, took, deadline_s)
    # Resent once Redis answers, the credit moves the money once.
    deadline = time.monotonic() + 10
    while True:
        try:
            assert served.stub.CreditAccount(credit, timeout=T).balance_fen == 3_000
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline, exc.details()
            time.sleep(0.1)
    assert served.stub.CreditAccount(credit, timeout=T).balance_fen == 3_000
    assert served.stub.GetPerson(rpb.GetPersonRequest(id_number=pid), timeout=T).person.balance_fen == 3_000


def test_a_caller_waiting_longer_than_the_store_timeout_hears_store_unavailable_after_it(served: Served):
    pid = enroll(served.stub)
    assert served.server.proc is not None
    with stopped(served.server.proc.pid):
        took, answer = timed(lambda: served.stub.GetPerson(rpb.GetPersonRequest(id_number=pid), timeout=8.0))
    assert_store_unavailable_within(answer, took, 8.0)
    assert took > 1.5, f"{took:.2f} s: the 2 s store timeout was cut although the caller allowed 8 s"


def test_a_short_callers_cut_leaves_the_callers_beside_it_their_answers(served: Served):
    """Redis slow for 1 s (stopped, then continued: shorter than the store timeout): a caller that waits
    0.5 s hears STORE_UNAVAILABLE, and callers that wait 8 s, whose commands travel on the same
    connection, get their answers once Redis answers again; nothing is dropped for them."""
    pid = enroll(served.stub)
    results: dict[str, tuple[float, Any]] = {}

    def caller(name: str, deadline_s: float) -> threading.Thread:
        def run() -> None:
            results[name] = timed(lambda: served.stub.GetPerson(rpb.GetPersonRequest(id_number=pid),
                                                                timeout=deadline_s))
        thread = threading.Thread(target=run)
        thread.start()
        return thread

    assert served.server.proc is not None
    with stopped(served.server.proc.pid):
        threads = [caller("long-1", 8.0), caller("short", 0.5), caller("long-2", 8.0)]
        time.sleep(1.0)
    for thread in threads:
        thread.join(15)
    took, answer = results["short"]
    assert_store_unavailable_within(answer, took, 0.5)
    for name in ("long-1", "long-2"):
        took, answer = results[name]
        assert not isinstance(answer, grpc.RpcError), (name, answer.code(), answer.details())
        assert answer.person.id_number == pid and took < 2.0, (name, took)


@pytest.mark.parametrize("kind", ["lean", "pooled", "cluster"])
def test_each_store_client_cuts_a_command_to_the_callers_deadline(kind: str, monkeypatch: pytest.MonkeyPatch):
    """The three clients the services use (one Redis: lean, or pooled for TLS; a cluster): inside a call
    whose caller allows 0.6 s, a command and a pipeline on a frozen Redis fail with redis-py's
    TimeoutError (STORE_UNAVAILABLE) before the caller's deadline, and the client serves again after."""
    if kind == "pooled":
        monkeypatch.setenv("MEDAID_REDIS_CLIENT", "redis-py")
    servers = RedisCluster(3) if kind == "cluster" else RedisServer(appendfsync="no")
    with servers:
        nodes = servers.nodes if isinstance(servers, RedisCluster) else [servers]
        pids = [n.proc.pid for n in nodes if n.proc is not None]

        async def run() -> None:
            store = client(servers.url, timeout_s=2.0)
            await store.set("k:{a}", "v")
            wire = getattr(store, "_wire", None)
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            try:
                for step in (lambda: store.get("k:{a}"), lambda: store.pipeline(transaction=False).get("k:{a}")
                             .get("k:{a}").execute()):
                    started = time.monotonic()
                    with rpc.budget(0.6), pytest.raises(redis.exceptions.TimeoutError):
                        await step()
                    assert time.monotonic() - started < 0.6
            finally:
                for pid in pids:
                    os.kill(pid, signal.SIGCONT)
            assert await store.get("k:{a}") == b"v"
            if kind == "lean":  # only the caller stopped waiting: the shared connection is the same
                assert store._wire is wire
            await store.aclose()

        asyncio.run(run())


def test_a_batch_is_bounded_by_no_single_callers_deadline():
    """A batch's task copies the context of the call that started it: its steps must not carry that
    call's deadline (they serve every waiter, and run on after it has gone)."""
    seen: list[float | None] = []

    async def send(items: list[int]) -> list[int]:
        seen.append(rpc.store_time_left(2.0))
        return items

    async def run() -> None:
        batcher: Batcher[int, int] = Batcher(send)
        with rpc.budget(0.5):
            assert await batcher.submit(1) == 1

    asyncio.run(run())
    assert seen == [None]


HOSPITAL = pb.Institution(fixmedins_code="H13010100001", mdtrtarea_admvs="130100")
_msg = itertools.count(1)


def settle_2207(patient: str, amount: int) -> pb.SettleRequest:
    n = next(_msg)
    return pb.SettleRequest(msgid=f"{HOSPITAL.fixmedins_code}20261122110000{n:04d}", institution=HOSPITAL,
                            input=pb.SettleInput(psn_no=patient, insuplc_admdvs="130100", psn_part_amt_fen=amount,
                                                 acct_used_flag="1", category=cpb.CATEGORY_OUTPATIENT,
                                                 mdtrt_id=f"MZ{n:010d}"))


def test_through_the_router_a_frozen_registry_store_is_named_within_the_hospitals_deadline():
    """The registry's Redis frozen, the router's own store up (a router on another Redis): a hospital
    waiting 1 s, or 6 s, hears STORE_UNAVAILABLE passed on from the registry before its deadline — not
    REGISTRY_UNAVAILABLE, which sends the province IT team to a registry that answers (the router's
    channel does not retry an answer that leaves no time for one) — and the 2207s resent afterwards
    settle once each."""
    topo = Topology.start(provinces=("13",), gateway=False, clock=DEMO_CLOCK)
    spare = RedisServer(appendfsync="no").start()
    router_proc = None
    try:
        router_proc = start_service("router-spare", "medaid.router", [
            "--port", "0", "--redis-url", spare.url, "--clock", DEMO_CLOCK,
            "--registries", f"13={topo.address('registry-13')}"])
        with grpc.insecure_channel(topo.address("registry-13")) as rch, \
                grpc.insecure_channel(router_proc.address) as pch:
            registry, router = rpb_grpc.RegistryServiceStub(rch), pb_grpc.RouterServiceStub(pch)
            helper = enroll(registry, name="张伟")
            patient = enroll(registry, itype=RESIDENT, birth="20160101", name="张小雨")
            credit(registry, helper, 50_000)
            bind(registry, helper, patient)
            router.Settle(settle_2207(patient, 100), timeout=T)
            sent: list[pb.SettleRequest] = []
            answers: list[tuple[float, Any, float]] = []
            assert isinstance(topo.redis, RedisServer) and topo.redis.proc is not None
            with stopped(topo.redis.proc.pid):
                for deadline_s in (1.0, 6.0):
                    request = settle_2207(patient, 100)
                    sent.append(request)
                    query = pb.QueryPersonRequest(msgid=settle_2207(patient, 0).msgid, institution=HOSPITAL,
                                                  mdtrt_cert_type="02", mdtrt_cert_no=patient,
                                                  insuplc_admdvs="130100")
                    for call, req in ((router.Settle, request), (router.QueryPerson, query)):
                        took, answer = timed(lambda: call(req, timeout=deadline_s))  # noqa: B023 - called at once
                        answers.append((took, answer, deadline_s))
            for i, (took, answer, deadline_s) in enumerate(answers):
                if i == 0:
                    # A 2207 travels in a batch that serves several hospitals: it waits for the registry
                    # the router's whole deadline, and the hospital that waits less hears why in time.
                    assert isinstance(answer, grpc.RpcError) and errors.error_info(answer) is not None
                    assert answer.code() == grpc.StatusCode.UNAVAILABLE and took < deadline_s, (took, answer)
                else:
                    assert_store_unavailable_within(answer, took, deadline_s)
            for request in sent:
                deadline = time.monotonic() + 15
                while True:
                    try:
                        router.Settle(request, timeout=T)
                        break
                    except grpc.RpcError as exc:
                        assert exc.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline, \
                            (exc.code(), exc.details())
                        time.sleep(0.2)
            person = registry.GetPerson(rpb.GetPersonRequest(id_number=helper), timeout=T).person
            assert person.balance_fen == 50_000 - 100 * (1 + len(sent))
    finally:
        if topo.redis.proc is not None and topo.redis.proc.poll() is None:
            os.kill(topo.redis.proc.pid, signal.SIGCONT)
        if router_proc is not None:
            router_proc.stop()
        spare.cleanup()
        codes = topo.stop()
        assert set(codes.values()) == {0}, codes
