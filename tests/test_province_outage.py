"""One province's registry frozen (SIGSTOP: its port accepts, nothing answers) behind a running router.

The router gives every call to a registry its deadline (3 s). 2207s to one province travel as
SettleBatch calls, one batch on its way at a time, so a 2207 that arrives while a batch is stuck
waits for it: that wait counts against the same deadline, and the hospital hears the router's
retryable UNAVAILABLE / REGISTRY_UNAVAILABLE within it, never a bare DEADLINE_EXCEEDED of its own
client. Other provinces settle as usual meanwhile, and once the registry answers again each msgid,
resent unchanged, settles once.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from medaid.common import errors, rpc
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.registry.v1 import registry_pb2_grpc as rpb_grpc
from medaid.router.v1 import router_pb2 as pb
from medaid.router.v1 import router_pb2_grpc as pb_grpc
from medaid.topology import DEMO_CLOCK, Topology
from support import RESIDENT, bind, credit, enroll

HOSPITAL = pb.Institution(fixmedins_code="H13010100001", mdtrtarea_admvs="130100")
# A hospital's own deadline: longer than the router's, shorter than two of them.
CLIENT_DEADLINE_S = rpc.DEFAULT_DEADLINE_S * 1.6
_seq = iter(range(1, 10_000))


def msgid() -> str:
    return f"{HOSPITAL.fixmedins_code}20261122140000{next(_seq):04d}"


def settle_2207(patient: str, amount: int, mid: str, insuplc: str) -> pb.SettleRequest:
    return pb.SettleRequest(msgid=mid, institution=HOSPITAL, input=pb.SettleInput(
        psn_no=patient, insuplc_admdvs=insuplc, psn_part_amt_fen=amount, acct_used_flag="1",
        category=cpb.CATEGORY_OUTPATIENT, mdtrt_id=f"MZ{mid[-8:]}"))


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    t = Topology.start(provinces=("13", "11", "62"), wallet=False, gateway=False, clock=DEMO_CLOCK)
    try:
        yield t
    finally:
        for name in ("registry-11", "registry-62"):
            svc = t.services.get(name)
            if svc is not None and svc.proc.poll() is None:
                os.kill(svc.proc.pid, signal.SIGCONT)  # never leave a stopped process behind
        codes = t.stop()
        assert set(codes.values()) == {0}, codes


def timed(call: grpc.UnaryUnaryMultiCallable, request: pb.SettleRequest) -> tuple[float, object]:
    started = time.monotonic()
    try:
        answer: object = call(request, timeout=CLIENT_DEADLINE_S)
    except grpc.RpcError as exc:
        answer = exc
    return time.monotonic() - started, answer


def test_2207s_queued_behind_a_frozen_province_answer_within_the_routers_deadline(topo: Topology):
    with grpc.insecure_channel(topo.address("registry-13")) as c13, \
            grpc.insecure_channel(topo.address("registry-11")) as c11, \
            grpc.insecure_channel(topo.address("router")) as crt:
        hebei, beijing, router = rpb_grpc.RegistryServiceStub(c13), rpb_grpc.RegistryServiceStub(c11), \
            pb_grpc.RouterServiceStub(crt)
        h13 = enroll(hebei, name="张伟")
        p13 = enroll(hebei, itype=RESIDENT, birth="20160101", name="张小雨")
        h11 = enroll(beijing, name="李伟", region="110000", division="110101")
        p11 = enroll(beijing, itype=RESIDENT, birth="20160101", name="李小雨", region="110000", division="110101")
        for registry, helper, patient in ((hebei, h13, p13), (beijing, h11, p11)):
            credit(registry, helper, 50_000)
            bind(registry, helper, patient)
        frozen = topo.services["registry-11"].proc.pid
        sent = [settle_2207(p11, 1_000 + i, msgid(), "110000") for i in range(3)]
        os.kill(frozen, signal.SIGSTOP)
        try:
            with ThreadPoolExecutor(len(sent)) as pool:
                waiting = []
                for req in sent:  # the first leaves at once, the others queue behind its batch
                    waiting.append(pool.submit(timed, router.Settle, req))
                    time.sleep(0.3)
                # Another province is not held up by the frozen one.
                elapsed, other = timed(router.Settle, settle_2207(p13, 500, msgid(), ""))
                assert isinstance(other, pb.SettleResponse), other
                assert other.setlinfo.acct_mulaid_pay_fen == 500 and elapsed < 1.5, elapsed
                answers = [f.result() for f in waiting]
        finally:
            os.kill(frozen, signal.SIGCONT)
        for req, (elapsed, answer) in zip(sent, answers, strict=True):
            assert isinstance(answer, grpc.RpcError), (req.msgid, answer)
            info = errors.error_info(answer)
            assert (answer.code(), info.reason if info else None) == \
                (grpc.StatusCode.UNAVAILABLE, "REGISTRY_UNAVAILABLE"), (req.msgid, answer.code(), answer.details())
            assert elapsed < rpc.DEFAULT_DEADLINE_S + 1.0, (req.msgid, elapsed)
        # Back: each message, resent unchanged, settles once.
        deadline = time.monotonic() + 15
        for req in sent:
            while True:
                try:
                    s = router.Settle(req, timeout=CLIENT_DEADLINE_S).setlinfo
                    break
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, (exc.code(), exc.details())
                    assert time.monotonic() < deadline, "province 11 did not settle again after SIGCONT"
                    time.sleep(0.2)
            assert (s.setl_id, s.acct_mulaid_pay_fen) == (req.msgid, req.input.psn_part_amt_fen)
            assert router.Settle(req, timeout=CLIENT_DEADLINE_S).setlinfo == s
        helper = beijing.GetPerson(rpb.GetPersonRequest(id_number=h11), timeout=CLIENT_DEADLINE_S).person
        assert helper.balance_fen == 50_000 - sum(r.input.psn_part_amt_fen for r in sent)


def test_downstream_health_names_every_hung_registry_within_one_check(topo: Topology):
    """Two provinces hang at once (SIGSTOP: their ports accept, nothing answers), as in a partition of
    the machines that host them. GetDownstreamHealth asks every downstream at the same time, each
    check bounded by its 1 s timeout, so the operator hears which ones are down after about one
    check, not one second per hung registry, and inside a deadline that two checks in a row outlast."""
    frozen = [topo.services[name].proc.pid for name in ("registry-11", "registry-62")]
    with grpc.insecure_channel(topo.address("router")) as crt:
        router = pb_grpc.RouterServiceStub(crt)
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            health = router.GetDownstreamHealth(pb.GetDownstreamHealthRequest(), timeout=1.8)
            elapsed = time.monotonic() - started
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        assert {d.name: d.serving for d in health.downstream} == \
            {"registry-11": False, "registry-13": True, "registry-62": False}
        assert elapsed < 1.5, elapsed
        # Back: every registry answers its check again.
        again = router.GetDownstreamHealth(pb.GetDownstreamHealthRequest(), timeout=CLIENT_DEADLINE_S)
        assert all(d.serving for d in again.downstream), again
