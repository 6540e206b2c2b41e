"""A Redis that answers but refuses writes, made real on the test's own Valkey: `READONLY` (the
services' store demoted to a replica, as after a failover), `OOM` (`maxmemory` under `noeviction`),
`MISCONF` (a snapshot that cannot be written, `stop-writes-on-bgsave-error`) and `NOREPLICAS`
(`min-replicas-to-write` with no replica). Every service (registry, wallet, router, gateway) answers
a write UNAVAILABLE / STORE_UNAVAILABLE (the gateway a retryable infcode -1), writes nothing, and the
same requests resent once the store writes again move the money once. Health (docs/operations.md):
SERVING while PING answers (READONLY, OOM, NOREPLICAS: reads still answer), NOT_SERVING under
MISCONF, which refuses PING too."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2
from medaid.common.redis_server import RedisServer
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.router.v1 import router_pb2 as pb
from medaid.router.v1 import router_pb2_grpc as pb_grpc
from medaid.topology import DEMO_CLOCK, Topology
from medaid.wallet.v1 import wallet_pb2 as wpb
from support import FACE, credit, enroll, fund_wallet, rid
from test_gateway import Env, data_2207, envelope
from test_store_outage import (
    _healthz,
    assert_retryable_store_answer,
    assert_store_unavailable,
    failed,
    health,
    wait_health,
)

HOSPITAL = pb.Institution(fixmedins_code="H13010100001", mdtrtarea_admvs="130100")
_msg = iter(range(1, 10_000))


def msgid() -> str:
    return f"{HOSPITAL.fixmedins_code}20261122113000{next(_msg):04d}"


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    topo = Topology.start(provinces=("13", "11"), clock=DEMO_CLOCK)
    e = Env(topo)
    try:
        yield e
    finally:
        e.close()
        topo.stop()


def _wait(check: Callable[[], bool], what: str, within_s: float = 10) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


class Refusal:
    """One way of making the topology's Redis refuse writes, and of ending it."""

    def __init__(self, kind: str, topo: Topology) -> None:
        self.kind, self.topo = kind, topo
        self.r = topo.redis.connection()
        self.other: RedisServer | None = None
        self.dir = ""

    def start(self) -> None:
        if self.kind == "oom":
            self.r.config_set("maxmemory-policy", "noeviction")
            self.r.config_set("maxmemory", 1)
        elif self.kind == "noreplicas":
            self.r.config_set("min-replicas-to-write", 1)
        elif self.kind == "misconf":
            # A directory where the snapshot goes: BGSAVE cannot rename its file there (root included)
            self.dir = os.path.join(self.topo.redis.data_dir, "dump.rdb")
            os.mkdir(self.dir)
            self.r.config_set("save", "3600 1")
            self.r.bgsave()
            _wait(lambda: self.r.info("persistence")["rdb_last_bgsave_status"] == "err", "BGSAVE did not fail")
        else:  # readonly: a copy promoted, this one demoted to its replica (a failover the services missed)
            self.other = RedisServer(appendfsync="no", password=self.topo.redis.password).start()
            o = self.other.connection()
            o.replicaof("127.0.0.1", self.topo.redis.port)
            _wait(lambda: o.info("replication").get("master_link_status") == "up", "the copy did not sync")
            o.replicaof("NO", "ONE")
            self.r.replicaof("127.0.0.1", self.other.port)
            _wait(lambda: self.r.info("replication").get("master_link_status") == "up", "not demoted")
            o.close()

    def end(self) -> None:
        if self.kind == "oom":
            self.r.config_set("maxmemory", 0)
        elif self.kind == "noreplicas":
            self.r.config_set("min-replicas-to-write", 0)
        elif self.kind == "misconf":
            os.rmdir(self.dir)
            self.r.bgsave()
            _wait(lambda: self.r.info("persistence")["rdb_last_bgsave_status"] == "ok", "BGSAVE did not succeed")
            self.r.config_set("save", "")
        else:
            self.r.replicaof("NO", "ONE")
            assert self.other is not None
            self.other.cleanup()
        self.r.close()


def _dump(r: redis.Redis) -> dict[bytes, Any]:
    return {k: (r.type(k), r.dump(k)) for k in r.scan_iter(count=1000)}


@pytest.mark.parametrize("kind", ["readonly", "oom", "misconf", "noreplicas"])
def test_writes_refused_are_store_unavailable_everywhere_and_resends_move_money_once(env: Env, kind: str):
    topo = env.topo
    helper, patient = enroll(env.hebei, name="张伟"), enroll(env.hebei, name="张小雨")
    credit(env.hebei, helper, 50_000)
    credit(env.hebei, patient, 3_000)
    sender = enroll(env.beijing, name="李娜", region="110000", division="110105")
    credit(env.beijing, sender, 90_000)
    fund_wallet(env.wallet, sender, patient, 4_000)
    router = pb_grpc.RouterServiceStub(grpc.insecure_channel(topo.address("router")))
    grpc_addresses = [topo.address(n) for n in ("registry-13", "registry-11", "wallet", "router")]

    xfer = wpb.CreateTransferRequest(
        request_id=rid("xfer"), sender_id_number=sender, sender_province="11", recipient_id_number=patient,
        relation=cpb.RELATION_PARENT, amount_fen=2_000, verification=FACE)
    credit_req = rpb.CreditAccountRequest(request_id=rid("credit"), id_number=helper, amount_fen=700,
                                          kind=rpb.CREDIT_KIND_MONTHLY_CONTRIBUTION, period="202611")
    settle = pb.SettleRequest(msgid=msgid(), institution=HOSPITAL, input=pb.SettleInput(
        psn_no=patient, psn_part_amt_fen=5_000, acct_used_flag="1", category=cpb.CATEGORY_OUTPATIENT,
        mdtrt_id=f"MZ{next(_msg):08d}"))
    message = envelope("2207", data_2207(patient, "12.00"))
    time.sleep(1)  # the maintenance and recovery passes idle
    fault = Refusal(kind, topo)
    fault.start()
    before = _dump(env.r)
    try:
        assert_store_unavailable(failed(env.wallet.CreateTransfer, xfer))
        assert_store_unavailable(failed(env.hebei.CreditAccount, credit_req))
        assert_store_unavailable(failed(router.Settle, settle))
        assert_retryable_store_answer(env.post(message).json, str(topo.redis.port))
        # Reads still answer.
        assert env.wallet.GetWallet(wpb.GetWalletRequest(owner_id_number=patient)).wallet.balance_fen == 4_000
        serving = health_pb2.HealthCheckResponse
        want = serving.NOT_SERVING if kind == "misconf" else serving.SERVING  # MISCONF refuses PING too
        wait_health(grpc_addresses, want, 5)
        assert {a: health(a) for a in grpc_addresses} == dict.fromkeys(grpc_addresses, want)
        assert _healthz(topo.address("gateway"))[0] == (503 if kind == "misconf" else 200)
        assert _dump(env.r) == before, "a refused write left something behind"
    finally:
        fault.end()
    wait_health(grpc_addresses, health_pb2.HealthCheckResponse.SERVING, 5)
    # The same requests resent: each done once.
    t = env.wallet.CreateTransfer(xfer).transfer
    assert env.wallet.CreateTransfer(xfer).transfer.transfer_id == t.transfer_id
    assert env.hebei.CreditAccount(credit_req).balance_fen == 50_700
    assert env.hebei.CreditAccount(credit_req).balance_fen == 50_700
    s = router.Settle(settle).setlinfo
    assert router.Settle(settle).setlinfo == s
    out = env.post(message).ok()
    assert env.post(message).ok() == out
    env.wallet.AcceptTransfer(wpb.AcceptTransferRequest(request_id=rid("accept"), transfer_id=t.transfer_id,
                                                        recipient_id_number=patient))
    people = {p: env.hebei.GetPerson(rpb.GetPersonRequest(id_number=p)).person.balance_fen for p in (helper, patient)}
    wallet = env.wallet.GetWallet(wpb.GetWalletRequest(owner_id_number=patient)).wallet.balance_fen
    sender_left = env.beijing.GetPerson(rpb.GetPersonRequest(id_number=sender)).person.balance_fen
    assert sender_left == 90_000 - 6_000, sender_left
    spent = 50_700 + 3_000 + 6_000 - people[helper] - people[patient] - wallet
    gw = out["setlinfo"]
    gw_fen = sum(int(Decimal(str(gw.get(k) or 0)) * 100) for k in ("acct_pay", "acct_mulaid_pay", "wallet_pay"))
    assert spent == s.acct_pay_fen + s.wallet_pay_fen + s.acct_mulaid_pay_fen + gw_fen == 6_200, (spent, s, gw)


@pytest.mark.parametrize("kind", ["readonly", "oom"])
def test_a_transfer_whose_store_refuses_writes_mid_saga_is_finished_once_the_store_writes(env: Env, kind: str):
    """The sender's registry has debited the transfer when the wallet's store starts refusing writes
    (a failover to a replica, memory full): the create is answered UNAVAILABLE / STORE_UNAVAILABLE,
    the maintenance passes fail meanwhile (one warning), and once the store writes again the pass
    finishes the transfer: the resend answers it, the accept credits it, the money moves once."""
    topo = env.topo
    patient = enroll(env.hebei, name="王芳")
    sender = enroll(env.beijing, name="王磊", region="110000", division="110105")
    credit(env.beijing, sender, 30_000)
    fund_wallet(env.wallet, sender, patient, 1_000)
    xfer = wpb.CreateTransferRequest(
        request_id=rid("xfer"), sender_id_number=sender, sender_province="11", recipient_id_number=patient,
        relation=cpb.RELATION_PARENT, amount_fen=2_500, verification=FACE)
    svc = topo.restart("wallet", env={"MEDAID_FAULT": "stop:transfer.after_debit"})
    fault = Refusal(kind, topo)
    answer: dict[str, Any] = {}

    def create() -> None:
        try:
            answer["ok"] = env.wallet.CreateTransfer(xfer, timeout=60)
        except grpc.RpcError as exc:
            answer["err"] = exc

    def sender_balance() -> int:
        return int(env.beijing.GetPerson(rpb.GetPersonRequest(id_number=sender)).person.balance_fen)

    caller = threading.Thread(target=create)
    try:
        caller.start()
        _wait(lambda: sender_balance() == 30_000 - 1_000 - 2_500, "the registry did not debit the transfer")
        _wait(lambda: _state(svc.proc.pid) == "T", "the wallet did not stop after the debit")
        fault.start()
        svc.proc.send_signal(signal.SIGCONT)
        caller.join(30)
        assert "err" in answer, answer
        assert_store_unavailable(answer["err"])
        time.sleep(1)  # maintenance passes meet the refusal
    finally:
        svc.proc.send_signal(signal.SIGCONT)
        fault.end()
        caller.join(30)
    deadline = time.monotonic() + 20
    while True:  # the pass (2 s grace) or the resend finishes it
        t = env.wallet.CreateTransfer(xfer, timeout=10).transfer
        if t.state == wpb.TRANSFER_STATE_PENDING_ACCEPT:
            break
        assert time.monotonic() < deadline, t
        time.sleep(0.5)
    env.wallet.AcceptTransfer(wpb.AcceptTransferRequest(request_id=rid("accept"), transfer_id=t.transfer_id,
                                                        recipient_id_number=patient))
    assert env.wallet.GetWallet(wpb.GetWalletRequest(owner_id_number=patient)).wallet.balance_fen == 3_500
    assert sender_balance() == 30_000 - 3_500
    lines = [json.loads(line) for line in svc.log_lines if line.startswith("{\"ts\"")]
    skipped = [o for o in lines if o["msg"] == "maintenance passes skipped: the store cannot serve"]
    assert [o["level"] for o in skipped] == ["warning"], skipped
    topo.restart("wallet")


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        return f.read().rsplit(")", 1)[1].split()[0]
