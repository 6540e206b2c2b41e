"""The national wallet stopped behind a running router and gateway.

A 1101 is answered from the person's province registry; the wallet is one part of it. While the
wallet does not answer, every hospital must still be able to look a person up: the answer says the
wallet part is unknown (`wallet_reason` WALLET_UNAVAILABLE) instead of refusing the whole 1101, and
the router logs the wallet's own code and reason (the id number masked). A 2206 / 2207 of a person
without a wallet does not need the wallet at all (the registry knows who has one); one that would
pay from a wallet refuses WALLET_UNAVAILABLE, retryable, and writes nothing.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator

import grpc
import pytest
from medaid.common import errors, rpc
from medaid.common.v1 import common_pb2 as cpb
from medaid.gateway import reasons
from medaid.router.v1 import router_pb2 as pb
from medaid.router.v1 import router_pb2_grpc as pb_grpc
from medaid.topology import DEMO_CLOCK, Topology
from medaid.wallet.v1 import wallet_pb2 as wpb
from support import FACE, balance, credit, enroll, rid, unmasked_id_numbers
from test_gateway import HOSPITAL, Env, data_1101, data_2207, envelope

INSTITUTION = pb.Institution(fixmedins_code=HOSPITAL, mdtrtarea_admvs="130100")
_seq = iter(range(1, 10_000))


def msgid() -> str:
    return f"{HOSPITAL}20261122160000{next(_seq):04d}"


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    topo = Topology.start(provinces=("13", "11"), clock=DEMO_CLOCK)
    e = Env(topo)
    try:
        yield e
    finally:
        e.close()
        codes = topo.stop()
        assert codes["gateway"] == 0 and codes["router"] == 0, codes


@pytest.fixture(scope="module")
def people(env: Env) -> tuple[str, str]:
    """(someone with a 医保钱包 of ¥50.00 and ¥1.00 in their own account, someone without a wallet)."""
    with_wallet = enroll(env.hebei, name="王芳")
    without = enroll(env.hebei, name="赵强")
    credit(env.hebei, with_wallet, 100)
    credit(env.hebei, without, 100)
    env.wallet.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=with_wallet, province="13",
                                                use_place_admdvs="130100", real_name=FACE))
    sender = enroll(env.hebei, name="王建国", birth="19550101")
    credit(env.hebei, sender, 10_000)
    env.wallet.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=sender, province="13",
                                                use_place_admdvs="130100", real_name=FACE))
    t = env.wallet.CreateTransfer(wpb.CreateTransferRequest(
        request_id=rid("xfer"), sender_id_number=sender, sender_province="13", recipient_id_number=with_wallet,
        relation=cpb.RELATION_PARENT, amount_fen=5_000, verification=FACE)).transfer
    env.wallet.AcceptTransfer(wpb.AcceptTransferRequest(request_id=rid("accept"), transfer_id=t.transfer_id,
                                                        recipient_id_number=with_wallet))
    # The registry has the wallet's note (its waterfall asks the wallet only for those who have one).
    deadline = time.monotonic() + 10
    while True:
        s = env.post(envelope("2206", data_2207(with_wallet, "2.00"))).ok()["setlinfo"]
        if s["wallet_pay"] > 0:
            break
        assert time.monotonic() < deadline, s
        time.sleep(0.2)
    return with_wallet, without


@pytest.fixture
def wallet_down(env: Env) -> Iterator[None]:
    """The wallet process stopped for the duration of the test, then started again on its port."""
    env.topo.services["wallet"].stop()
    try:
        yield
    finally:
        env.topo.restart("wallet")


@pytest.fixture
def wallet_frozen(env: Env) -> Iterator[None]:
    """The wallet process stopped with SIGSTOP (its port accepts, nothing answers) for the test."""
    pid = env.topo.services["wallet"].proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def query(env: Env, pid: str) -> pb.QueryPersonResponse:
    with grpc.insecure_channel(env.topo.address("router")) as ch:
        return pb_grpc.RouterServiceStub(ch).QueryPerson(pb.QueryPersonRequest(
            msgid=msgid(), institution=INSTITUTION, mdtrt_cert_type="02", mdtrt_cert_no=pid), timeout=10)


def test_a_1101_is_answered_from_the_registry_while_the_wallet_is_down(env: Env, people: tuple[str, str],
                                                                       wallet_down: None):
    with_wallet, without = people
    for pid, name in ((with_wallet, "王芳"), (without, "赵强")):
        [insu] = query(env, pid).insuinfo
        assert (insu.balc_fen, insu.insuplc_admdvs, insu.wallet_reason) == (100, "130100", "WALLET_UNAVAILABLE")
        assert (insu.wallet_opened, insu.wallet_balc_fen, insu.wallet_use_place_admdvs) == (False, 0, "")

        a = env.post(envelope("1101", data_1101(pid, name)))
        out = a.ok()
        assert out["baseinfo"]["psn_name"] == name
        [insu_out] = out["insuinfo"]
        assert insu_out["balc"] == 1 and insu_out["insuplc_admdvs"] == "130100"
        assert insu_out["medaid_ext"]["wallet_reason"] == "WALLET_UNAVAILABLE"
        assert insu_out["medaid_ext"]["wallet_msg"] == reasons.PERSON_WALLET_ZH["WALLET_UNAVAILABLE"]
        assert a.json["warn_msg"].startswith("WALLET_UNAVAILABLE: 医保钱包服务暂时无应答"), a.json["warn_msg"]
    # The router says what the wallet answered, with the person masked.
    lines = [json.loads(line) for line in env.topo.services["router"].log_lines if line.startswith("{")]
    noted = [x for x in lines if x.get("msg") == "1101 answered without the wallet"]
    assert len(noted) >= 2, lines[-5:]
    assert noted[-1]["code"] == "UNAVAILABLE"
    assert not unmasked_id_numbers("\n".join(env.topo.services["router"].log_lines))


def test_a_1101_says_the_wallet_part_is_known_when_the_wallet_answers(env: Env, people: tuple[str, str]):
    with_wallet, without = people
    deadline = time.monotonic() + 10  # a wallet just started again is reached within the reconnect backoff
    while (insu := query(env, with_wallet).insuinfo[0]).wallet_reason:
        assert time.monotonic() < deadline, insu
        time.sleep(0.2)
    assert (insu.wallet_opened, insu.wallet_balc_fen, insu.wallet_reason) == (True, 5_000, "")
    [insu] = query(env, without).insuinfo
    assert (insu.wallet_opened, insu.wallet_reason) == (False, "")


def test_a_2206_or_2207_without_a_wallet_does_not_need_the_wallet(env: Env, people: tuple[str, str],
                                                                   wallet_down: None):
    with_wallet, without = people
    for infno in ("2206", "2207"):
        s = env.post(envelope(infno, data_2207(without, "3.00"))).ok()["setlinfo"]
        assert (s["acct_pay"], s["wallet_pay"], s["psn_cash_pay"]) == (1, 0, 2)
        assert s["medaid_ext"]["wallet_reason"] == "WALLET_NOT_OPENED"
    assert balance(env.hebei, without) == 0
    # Someone whose wallet would pay: refused, retryable, nothing written (their own account untouched).
    for infno in ("2206", "2207"):
        a = env.post(envelope(infno, data_2207(with_wallet, "3.00")))
        a.refused("WALLET_UNAVAILABLE")
        assert a.output["medaid_ext"]["retryable"] is True
    assert balance(env.hebei, with_wallet) == 100



def test_a_frozen_wallet_is_named_within_the_routers_deadline_and_the_resend_settles_once(
        env: Env, people: tuple[str, str], wallet_frozen: None):
    """The registry asks the wallet within what the router's call allows it (rpc.budget), so the router
    hears WALLET_UNAVAILABLE from the registry before its own deadline, not the registry itself taken
    for the one that did not answer (REGISTRY_UNAVAILABLE)."""
    with_wallet, _ = people
    before = balance(env.hebei, with_wallet)
    req = pb.SettleRequest(msgid=msgid(), institution=INSTITUTION, input=pb.SettleInput(
        psn_no=with_wallet, psn_part_amt_fen=300, acct_used_flag="1", category=cpb.CATEGORY_OUTPATIENT,
        mdtrt_id="MZ0000000301"))
    with grpc.insecure_channel(env.topo.address("router")) as ch:
        router = pb_grpc.RouterServiceStub(ch)
        for call, message in ((router.PreSettle, pb.PreSettleRequest(msgid=msgid(), institution=INSTITUTION,
                                                                      input=req.input)), (router.Settle, req)):
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as ei:
                call(message, timeout=10)
            elapsed = time.monotonic() - started
            info = errors.error_info(ei.value)
            assert (ei.value.code(), info.reason if info else None) == \
                (grpc.StatusCode.UNAVAILABLE, "WALLET_UNAVAILABLE"), (ei.value.code(), ei.value.details())
            assert elapsed < rpc.DEFAULT_DEADLINE_S + 0.5, elapsed
        os.kill(env.topo.services["wallet"].proc.pid, signal.SIGCONT)
        deadline = time.monotonic() + 15
        while True:
            try:
                s = router.Settle(req, timeout=10).setlinfo
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, (exc.code(), exc.details())
                assert time.monotonic() < deadline, "the wallet did not answer again after SIGCONT"
                time.sleep(0.2)
        assert (s.acct_pay_fen, s.wallet_pay_fen, s.psn_cash_pay_fen) == (before, 300 - before, 0)
        assert router.Settle(req, timeout=10).setlinfo == s
    assert balance(env.hebei, with_wallet) == 0
