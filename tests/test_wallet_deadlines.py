"""The wallet's answers within its caller's deadline.

A registry that does not answer (stopped with SIGSTOP: its port accepts, nothing answers), or the
store that does not: a caller of the wallet whose deadline is shorter than the 3 s services give each
other, or only a little longer, hears UNAVAILABLE with the reason (REGISTRY_UNAVAILABLE,
STORE_UNAVAILABLE) before its deadline, never a bare DEADLINE_EXCEEDED; once everything answers again,
the resend with the same request id finishes the transfer once and no fen is lost or made.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from medaid.common import errors, rpc
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import registry_pb2_grpc as rpb_grpc
from medaid.topology import DEMO_CLOCK, Topology
from medaid.wallet.v1 import wallet_pb2 as wpb
from medaid.wallet.v1 import wallet_pb2_grpc as wpb_grpc
from support import FACE, balance, credit, enroll, rid

# A caller that waits exactly the services' own deadline, and one that waits a little longer.
CALLER_DEADLINES_S = (rpc.DEFAULT_DEADLINE_S, rpc.DEFAULT_DEADLINE_S + 2.0)


class Env:
    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.channels = [grpc.insecure_channel(topo.address(name)) for name in ("registry-13", "wallet")]
        self.hebei = rpb_grpc.RegistryServiceStub(self.channels[0])
        self.wallet = wpb_grpc.WalletServiceStub(self.channels[1])

    def close(self) -> None:
        for ch in self.channels:
            ch.close()


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    topo = Topology.start(provinces=("13",), router=False, clock=DEMO_CLOCK)
    e = Env(topo)
    try:
        yield e
    finally:
        e.close()
        for pid in (topo.services["registry-13"].proc.pid, topo.redis.proc.pid if topo.redis.proc else 0):
            if pid:
                try:
                    os.kill(pid, signal.SIGCONT)  # never leave a stopped process behind
                except ProcessLookupError:
                    pass
        topo.stop()


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    """The process stopped (SIGSTOP) for the duration of a `with`."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.monotonic()
    try:
        answer = fn()
    except grpc.RpcError as exc:
        answer = exc
    return time.monotonic() - started, answer


def assert_unavailable(answer: Any, reasons: tuple[str, ...]) -> None:
    assert isinstance(answer, grpc.RpcError), answer
    info = errors.error_info(answer)
    assert answer.code() == grpc.StatusCode.UNAVAILABLE and info is not None and info.reason in reasons, \
        (answer.code(), answer.details())


def family(env: Env) -> tuple[str, str]:
    """(a sender with ¥100.00 in their account and a wallet, a recipient with a wallet)."""
    sender = enroll(env.hebei, name="王建国", birth="19550101")
    recipient = enroll(env.hebei, name="王芳")
    credit(env.hebei, sender, 10_000)
    for who in (sender, recipient):
        env.wallet.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=who, province="13",
                                                    use_place_admdvs="130100", real_name=FACE), timeout=10)
    return sender, recipient


def finish(env: Env, req: wpb.CreateTransferRequest) -> wpb.Transfer:
    """The same request resent until the wallet answers it; the transfer as it ends (accepted when it waits)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            t = env.wallet.CreateTransfer(req, timeout=10).transfer
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, (exc.code(), exc.details())
            assert time.monotonic() < deadline, "the transfer did not finish once everything answered again"
            time.sleep(0.3)
    if t.state == wpb.TRANSFER_STATE_PENDING_ACCEPT:
        t = env.wallet.AcceptTransfer(wpb.AcceptTransferRequest(
            request_id=rid("accept"), transfer_id=t.transfer_id, recipient_id_number=req.recipient_id_number),
            timeout=10).transfer
    return t


def wallet_balance(env: Env, who: str) -> int:
    return int(env.wallet.GetWallet(wpb.GetWalletRequest(owner_id_number=who), timeout=10).wallet.balance_fen)


def transfer_while_frozen(env: Env, pid: int, reasons: tuple[str, ...], caller_deadline_s: float) -> None:
    """A transfer sent while process `pid` is frozen is answered UNAVAILABLE with one of `reasons` before
    the caller's deadline; resent once everything answers, it ends and the money adds up."""
    sender, recipient = family(env)
    req = wpb.CreateTransferRequest(request_id=rid("xfer"), sender_id_number=sender, sender_province="13",
                                    recipient_id_number=recipient, relation=cpb.RELATION_PARENT, amount_fen=3_000,
                                    verification=FACE)
    with stopped(pid):
        elapsed, answer = timed(lambda: env.wallet.CreateTransfer(req, timeout=caller_deadline_s))
    assert_unavailable(answer, reasons)
    assert elapsed < caller_deadline_s, elapsed
    t = finish(env, req)
    assert t.state in (wpb.TRANSFER_STATE_COMPLETED, wpb.TRANSFER_STATE_RETURNED, wpb.TRANSFER_STATE_FAILED), t
    moved = 3_000 if t.state == wpb.TRANSFER_STATE_COMPLETED else 0
    assert (balance(env.hebei, sender), wallet_balance(env, recipient)) == (10_000 - moved, moved)


@pytest.mark.parametrize("caller_deadline_s", CALLER_DEADLINES_S)
def test_a_transfer_whose_registry_is_frozen_is_answered_within_the_callers_deadline(
        env: Env, caller_deadline_s: float):
    transfer_while_frozen(env, env.topo.services["registry-13"].proc.pid, ("REGISTRY_UNAVAILABLE",),
                          caller_deadline_s)


@pytest.mark.parametrize("caller_deadline_s", CALLER_DEADLINES_S)
def test_a_transfer_whose_store_is_frozen_is_answered_within_the_callers_deadline(
        env: Env, caller_deadline_s: float):
    assert env.topo.redis.proc is not None
    transfer_while_frozen(env, env.topo.redis.proc.pid, (errors.STORE_UNAVAILABLE, "REGISTRY_UNAVAILABLE"),
                          caller_deadline_s)


@pytest.mark.parametrize("caller_deadline_s", CALLER_DEADLINES_S)
def test_an_accept_whose_registry_is_frozen_is_answered_within_the_callers_deadline(
        env: Env, caller_deadline_s: float):
    sender, recipient = family(env)
    t = env.wallet.CreateTransfer(wpb.CreateTransferRequest(
        request_id=rid("xfer"), sender_id_number=sender, sender_province="13", recipient_id_number=recipient,
        relation=cpb.RELATION_PARENT, amount_fen=2_000, verification=FACE), timeout=10).transfer
    accept = wpb.AcceptTransferRequest(request_id=rid("accept"), transfer_id=t.transfer_id,
                                       recipient_id_number=recipient)
    with stopped(env.topo.services["registry-13"].proc.pid):
        elapsed, answer = timed(lambda: env.wallet.AcceptTransfer(accept, timeout=caller_deadline_s))
    assert_unavailable(answer, ("REGISTRY_UNAVAILABLE",))
    assert elapsed < caller_deadline_s, elapsed
    deadline = time.monotonic() + 20
    while True:
        try:
            done = env.wallet.AcceptTransfer(accept, timeout=10).transfer
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, (exc.code(), exc.details())
            assert time.monotonic() < deadline, "the accept did not finish once the registry answered again"
            time.sleep(0.3)
    assert done.state == wpb.TRANSFER_STATE_COMPLETED
    assert (balance(env.hebei, sender), wallet_balance(env, recipient)) == (8_000, 2_000)
