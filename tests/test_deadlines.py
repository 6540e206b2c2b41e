"""Deadlines and retries from the hospital through the gateway and the router to a registry.

A province registry frozen with SIGSTOP (its port accepts, nothing answers), or slow (behind a relay
that holds every request byte for a while, as a congested link would), behind a healthy router:
the hospital must hear why — UNAVAILABLE / REGISTRY_UNAVAILABLE, retryable — within its own deadline,
whether it calls the router over gRPC with a deadline shorter than the router's, or sends the message
over HTTP to the gateway (which retries the router within its own deadline). Never a bare
DEADLINE_EXCEEDED, and never ROUTER_UNAVAILABLE while the router answers.
"""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from medaid.common import errors, rpc
from medaid.common.transport import Passthrough, call_or_abort
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.router.v1 import router_pb2 as pb
from medaid.router.v1 import router_pb2_grpc as pb_grpc
from medaid.topology import DEMO_CLOCK, SECURITY_ENV, Topology, start_service
from support import RESIDENT, bind, credit, enroll
from test_gateway import BEIJING_HOSPITAL, Env, data_2207, envelope, new_msgid

HOSPITAL = pb.Institution(fixmedins_code=BEIJING_HOSPITAL, mdtrtarea_admvs="110000")
GATEWAY_DEADLINE_S = 10.0  # the gateway's default --deadline-s
_seq = iter(range(1, 10_000))


def msgid() -> str:
    return f"{BEIJING_HOSPITAL}20261122150000{next(_seq):04d}"


class SlowLink:
    """A TCP relay in front of a service that passes every byte sent to it on `delay_s` seconds after
    it came (0: at once); answers come back at once. Each call through it takes `delay_s` longer."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.delay_s = 0.0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            host, port = self.upstream.rsplit(":", 1)
            server = socket.create_connection((host, int(port)))
            self._sockets += [client, server]
            held: queue.Queue[tuple[float, bytes]] = queue.Queue()
            threading.Thread(target=self._read, args=(client, held), daemon=True).start()
            threading.Thread(target=self._write, args=(held, server), daemon=True).start()
            threading.Thread(target=self._copy, args=(server, client), daemon=True).start()

    def _read(self, src: socket.socket, held: queue.Queue[tuple[float, bytes]]) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            held.put((time.monotonic() + self.delay_s, data))
            if not data:
                return

    @staticmethod
    def _write(held: queue.Queue[tuple[float, bytes]], dst: socket.socket) -> None:
        while True:
            due, data = held.get()
            time.sleep(max(0.0, due - time.monotonic()))
            try:
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
            except OSError:
                return

    @staticmethod
    def _copy(src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        for s in self._sockets:
            s.close()


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    topo = Topology.start(provinces=("13", "11"), clock=DEMO_CLOCK)
    e = Env(topo)
    link = SlowLink(topo.address("registry-11"))
    e.slow_link = link  # type: ignore[attr-defined]
    try:
        # The router reaches province 11 through the relay (on the same port: the gateway knows it there).
        module, args = topo.args_for("router")
        at = args.index("--registries") + 1
        args[at] = args[at].replace(f"11={topo.address('registry-11')}", f"11={link.address}")
        topo.services["router"].stop()
        topo.services["router"] = start_service("router", module, args, env={k: "" for k in SECURITY_ENV})
        yield e
    finally:
        link.close()
        svc = topo.services.get("registry-11")
        if svc is not None and svc.proc.poll() is None:
            os.kill(svc.proc.pid, signal.SIGCONT)  # never leave a stopped process behind
        e.close()
        codes = topo.stop()
        assert set(codes.values()) == {0}, codes


@pytest.fixture(scope="module")
def beijing_family(env: Env) -> tuple[str, str]:
    helper = enroll(env.beijing, name="李伟", region="110000", division="110101")
    child = enroll(env.beijing, itype=RESIDENT, birth="20160101", name="李小雨", region="110000", division="110101")
    credit(env.beijing, helper, 50_000)
    bind(env.beijing, helper, child)
    return helper, child


class Frozen:
    """Province 11's registry stopped (SIGSTOP) for the duration of a `with`."""

    def __init__(self, env: Env) -> None:
        self.pid = env.topo.services["registry-11"].proc.pid

    def __enter__(self) -> Frozen:
        os.kill(self.pid, signal.SIGSTOP)
        return self

    def __exit__(self, *exc: object) -> None:
        os.kill(self.pid, signal.SIGCONT)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.monotonic()
    try:
        answer = fn()
    except grpc.RpcError as exc:
        answer = exc
    return time.monotonic() - started, answer


def assert_registry_unavailable(answer: Any) -> None:
    assert isinstance(answer, grpc.RpcError), answer
    info = errors.error_info(answer)
    assert (answer.code(), info.reason if info else None) == \
        (grpc.StatusCode.UNAVAILABLE, "REGISTRY_UNAVAILABLE"), (answer.code(), answer.details())
    assert info is not None and info.metadata["province"] == "11"


def test_a_hospital_deadline_shorter_than_the_routers_still_hears_the_reason(env: Env,
                                                                           beijing_family: tuple[str, str]):
    helper, child = beijing_family
    short = rpc.DEFAULT_DEADLINE_S * 0.6  # a hospital that waits less than the router would for a registry
    with grpc.insecure_channel(env.topo.address("router")) as ch:
        router = pb_grpc.RouterServiceStub(ch)
        settle = pb.SettleRequest(msgid=msgid(), institution=HOSPITAL, input=pb.SettleInput(
            psn_no=child, insuplc_admdvs="110000", psn_part_amt_fen=700, acct_used_flag="1",
            category=cpb.CATEGORY_OUTPATIENT, mdtrt_id="MZ0000000001"))
        person = pb.QueryPersonRequest(msgid=msgid(), institution=HOSPITAL, mdtrt_cert_type="02",
                                       mdtrt_cert_no=helper, insuplc_admdvs="110000")
        with Frozen(env):
            answers = [timed(lambda: router.Settle(settle, timeout=short)),
                       timed(lambda: router.QueryPerson(person, timeout=short))]
        for elapsed, answer in answers:
            assert_registry_unavailable(answer)
            assert elapsed < short + 0.5, elapsed
        # Once the registry answers again, the same msgid settles once.
        deadline = time.monotonic() + 15
        while True:
            try:
                s = router.Settle(settle, timeout=5).setlinfo
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, (exc.code(), exc.details())
                assert time.monotonic() < deadline, "province 11 did not settle again after SIGCONT"
                time.sleep(0.2)
        assert (s.setl_id, s.acct_mulaid_pay_fen) == (settle.msgid, 700)


def test_a_2207_sent_to_the_gateway_for_a_frozen_province_names_the_province(env: Env,
                                                                            beijing_family: tuple[str, str]):
    _, child = beijing_family
    msg = envelope("2207", data_2207(child, "9.00"), fixmedins=BEIJING_HOSPITAL, insuplc="110000",
                   msgid=new_msgid(BEIJING_HOSPITAL))
    with Frozen(env):
        elapsed, answer = timed(lambda: env.post(msg))
    answer.refused("REGISTRY_UNAVAILABLE")
    assert answer.output["medaid_ext"]["retryable"] is True
    assert answer.output["medaid_ext"]["metadata"]["province"] == "11"
    assert elapsed < GATEWAY_DEADLINE_S + 0.5, elapsed
    # The hospital resends the same message once the province answers; the 2207 the frozen registry
    # still held is settled once, whichever of the two reached it first.
    deadline = time.monotonic() + 15
    while (again := env.post(msg)).infcode != 0:
        again.refused("REGISTRY_UNAVAILABLE")
        assert time.monotonic() < deadline, "province 11 did not settle again after SIGCONT"
        time.sleep(0.2)
    setlinfo = again.ok()["setlinfo"]
    assert (setlinfo["acct_mulaid_pay"], env.post(msg).ok()["setlinfo"]) == (Decimal("9.00"), setlinfo)


def test_a_2208_whose_registry_is_slow_answers_within_the_hospitals_deadline(env: Env,
                                                                           beijing_family: tuple[str, str]):
    """A 2208 asks the registry twice (the settlement, then its reversal): each call within the router's
    3 s, both together not within the hospital's deadline. The hospital hears REGISTRY_UNAVAILABLE in
    time, and its resend reverses the settlement once."""
    helper, child = beijing_family
    link: SlowLink = env.slow_link  # type: ignore[attr-defined]
    hospital_deadline_s = rpc.DEFAULT_DEADLINE_S + 0.5
    with grpc.insecure_channel(env.topo.address("router")) as ch:
        router = pb_grpc.RouterServiceStub(ch)
        before = env.beijing.GetPerson(rpb.GetPersonRequest(id_number=helper), timeout=5).person.balance_fen
        settled = router.Settle(pb.SettleRequest(msgid=msgid(), institution=HOSPITAL, input=pb.SettleInput(
            psn_no=child, insuplc_admdvs="110000", psn_part_amt_fen=1_200, acct_used_flag="1",
            category=cpb.CATEGORY_OUTPATIENT, mdtrt_id="MZ0000000002")), timeout=5).setlinfo
        assert settled.acct_mulaid_pay_fen == 1_200
        reverse = pb.ReverseSettlementRequest(msgid=msgid(), institution=HOSPITAL, setl_id=settled.setl_id,
                                              psn_no=child)
        link.delay_s = rpc.DEFAULT_DEADLINE_S * 0.6
        try:
            elapsed, answer = timed(lambda: router.ReverseSettlement(reverse, timeout=hospital_deadline_s))
        finally:
            link.delay_s = 0.0
        assert_registry_unavailable(answer)
        assert elapsed < hospital_deadline_s, elapsed
        time.sleep(rpc.DEFAULT_DEADLINE_S * 0.6)  # what was held reaches the registry
        first = router.ReverseSettlement(reverse, timeout=5)
        assert (first.mulaid_refund_fen, router.ReverseSettlement(reverse, timeout=5)) == (1_200, first)
        after = env.beijing.GetPerson(rpb.GetPersonRequest(id_number=helper), timeout=5).person.balance_fen
        assert after == before


def test_the_gateway_does_not_retry_what_the_router_already_retried(env: Env, beijing_family: tuple[str, str]):
    """The router gives a frozen registry its whole deadline (its own retries within it) before it answers
    REGISTRY_UNAVAILABLE: the gateway passes that on at once instead of asking the router again three
    times, so the hospital hears it after one router deadline, not after its own 10 s. The resend of
    the same msgid once the registry answers again settles once."""
    helper, child = beijing_family
    before = env.beijing.GetPerson(rpb.GetPersonRequest(id_number=helper), timeout=5).person.balance_fen
    msg = envelope("2207", data_2207(child, "6.00"), fixmedins=BEIJING_HOSPITAL, insuplc="110000",
                   msgid=new_msgid(BEIJING_HOSPITAL))
    with Frozen(env):
        elapsed, answer = timed(lambda: env.post(msg))
        assert "暂时无应答" in answer.refused("REGISTRY_UNAVAILABLE")
        assert answer.output["medaid_ext"]["retryable"] is True
        assert elapsed < rpc.DEFAULT_DEADLINE_S + 1.5, elapsed
    deadline = time.monotonic() + 15
    while (answer := env.post(msg)).infcode != 0:
        answer.refused("REGISTRY_UNAVAILABLE")
        assert time.monotonic() < deadline, "province 11 did not settle again after SIGCONT"
        time.sleep(0.2)
    s = answer.ok()["setlinfo"]
    assert (s["setl_id"], s["acct_mulaid_pay"]) == (msg["msgid"], 6)
    assert env.post(msg).raw == answer.raw
    after = env.beijing.GetPerson(rpb.GetPersonRequest(id_number=helper), timeout=5).person.balance_fen
    assert before - after == 600


def test_only_answers_that_already_include_the_downstream_retries_tell_the_caller_not_to_retry():
    """Over the channel every service calls another with (rpc.channel: retries UNAVAILABLE): a service
    that answers REGISTRY_UNAVAILABLE or WALLET_UNAVAILABLE, its own or passed on from further down,
    or WALLET_BUSY (after waiting for the wallet's lock until the deadline was near), is asked once;
    contention met without a wait (CONTENDED) and a store outage are retried as before."""
    answers = {
        "REGISTRY_UNAVAILABLE": errors.unavailable("REGISTRY_UNAVAILABLE", "frozen", province="11"),
        "WALLET_UNAVAILABLE": Passthrough(errors.unavailable("WALLET_UNAVAILABLE", "down").to_status()),
        "CONTENDED": errors.unavailable("CONTENDED", "busy"),
        "WALLET_BUSY": Passthrough(errors.unavailable("WALLET_BUSY", "busy").to_status()),
        errors.STORE_UNAVAILABLE: errors.unavailable(errors.STORE_UNAVAILABLE, errors.STORE_UNAVAILABLE_MESSAGE),
    }
    attempts: dict[str, int] = {}

    class Answering(health_pb2_grpc.HealthServicer):
        async def Check(self, request: Any, context: Any) -> Any:
            attempts[request.service] = attempts.get(request.service, 0) + 1

            async def fail() -> Any:
                raise answers[request.service]
            return await call_or_abort(context, fail)

    async def run() -> dict[str, tuple[grpc.StatusCode, str]]:
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(Answering(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        heard = {}
        try:
            for name in answers:  # a channel each: retry throttling counts failures per channel
                async with rpc.channel(f"127.0.0.1:{port}", ["grpc.health.v1.Health"]) as ch:
                    try:
                        await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=name),
                                                                   timeout=5)
                    except grpc.aio.AioRpcError as exc:
                        info = errors.error_info(exc)
                        heard[name] = (exc.code(), info.reason if info else "")
        finally:
            await server.stop(None)
        return heard

    heard = asyncio.run(run())
    assert heard == {name: (grpc.StatusCode.UNAVAILABLE, name) for name in answers}
    assert attempts == {"REGISTRY_UNAVAILABLE": 1, "WALLET_UNAVAILABLE": 1, "CONTENDED": 4, "WALLET_BUSY": 1,
                        errors.STORE_UNAVAILABLE: 4}
