"""A resend of a 2207 whose registry died, refused before it paid anything, leaves its id to recovery.

A 2207 that would pay from the patient's 医保钱包 (own account ¥1.00, wallet ¥50.00) takes the staged
path: it claims its id with a recovery entry, and its registry is killed (MEDAID_FAULT, SIGKILL) right
after, before anything is paid. The hospital resends while the wallet is down: the resend takes the
patient's lock, asks the wallet, and is refused WALLET_UNAVAILABLE (retryable), having written nothing.
The id's claim is then the crashed attempt's and stays in progress, so the entry that leads the
recovery loop back to it must stay too: the loop, alone (no further resend), frees the id, and a 2601
of it voids it. Taking the entry away while keeping the claim left the id "still being processed" for
good.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import grpc
import pytest
import redis
from medaid.common import errors
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.keys import Keys
from medaid.registry.v1 import registry_pb2 as pb
from medaid.registry.v1 import registry_pb2_grpc as pb_grpc
from medaid.topology import DEMO_CLOCK, Topology
from medaid.wallet.v1 import wallet_pb2 as wpb
from medaid.wallet.v1 import wallet_pb2_grpc as wpb_grpc
from support import FACE, Timeline, balance, credit, enroll, rid, settle_request

pytestmark = pytest.mark.slow

K = Keys("13")
T = 10.0
QUIET = {"MEDAID_RECOVERY_GRACE_MS": "600000"}
RECOVER = {"MEDAID_RECOVERY_GRACE_MS": "1000"}


class Env:
    def __init__(self, topo: Topology) -> None:
        self.topo, self.timeline = topo, Timeline()

    def restart(self, name: str, env: dict[str, str]) -> None:
        """On the demo timeline, continued: a restarted process does not go back in time."""
        self.topo.clock = self.timeline.spec()
        self.topo.restart(name, env=env)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    topo = Topology.start(provinces=("13",), router=False, gateway=False, clock=DEMO_CLOCK)
    try:
        yield Env(topo)
    finally:
        topo.stop()


def test_a_resend_refused_before_paying_leaves_the_crashed_attempts_id_to_recovery(env: Env):
    r = redis.Redis(host="127.0.0.1", port=env.topo.redis.port, socket_timeout=10)
    address = env.topo.address("registry-13")
    with grpc.insecure_channel(address) as ch, grpc.insecure_channel(env.topo.address("wallet")) as wch:
        registry = pb_grpc.RegistryServiceStub(ch)
        patient = enroll(registry, name="王芳")
        credit(registry, patient, 100)
        wallet = wpb_grpc.WalletServiceStub(wch)
        sender = enroll(registry, name="王建国", birth="19550101")
        credit(registry, sender, 10_000)
        for owner in (patient, sender):
            wallet.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=owner, province="13",
                                                    use_place_admdvs="130100", real_name=FACE), timeout=T)
        t = wallet.CreateTransfer(wpb.CreateTransferRequest(
            request_id=rid("xfer"), sender_id_number=sender, sender_province="13", recipient_id_number=patient,
            relation=cpb.RELATION_PARENT, amount_fen=5_000, verification=FACE), timeout=T).transfer
        wallet.AcceptTransfer(wpb.AcceptTransferRequest(request_id=rid("accept"), transfer_id=t.transfer_id,
                                                        recipient_id_number=patient), timeout=T)
        deadline = time.monotonic() + 10
        while not r.hget(K.person(patient), "wallet_place"):  # the registry has the wallet's note
            assert time.monotonic() < deadline
            time.sleep(0.1)
    sid = rid("2207")
    try:
        env.restart("registry-13", {**QUIET, "MEDAID_FAULT": "settle.after_claim"})
        proc = env.topo.services["registry-13"].proc
        with grpc.insecure_channel(address, options=[("grpc.enable_retries", 0)]) as ch:
            with pytest.raises(grpc.RpcError):
                pb_grpc.RegistryServiceStub(ch).Settle(settle_request(patient, 300, request_id=sid), timeout=T)
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL, "the registry should have died after the claim"
        assert r.hget(f"{K.ns}:{{rid:{sid}}}", "state") == b"PENDING"

        env.topo.services["wallet"].stop()
        env.restart("registry-13", QUIET)
        with grpc.insecure_channel(address) as ch:
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.RegistryServiceStub(ch).Settle(settle_request(patient, 300, request_id=sid), timeout=T)
        info = errors.error_info(err.value)
        assert (err.value.code(), info.reason if info else None) == \
            (grpc.StatusCode.UNAVAILABLE, "WALLET_UNAVAILABLE"), err.value

        env.restart("registry-13", RECOVER)  # the recovery loop alone, no resend
        deadline = time.monotonic() + 20
        while r.exists(f"{K.ns}:{{rid:{sid}}}") and time.monotonic() < deadline:
            time.sleep(0.2)
        with grpc.insecure_channel(address) as ch:
            registry = pb_grpc.RegistryServiceStub(ch)
            got = registry.CancelRequest(pb.CancelRequestRequest(request_id=rid("2601"), original_request_id=sid),
                                         timeout=T)
            assert got.outcome == "VOIDED", f"the id is left in progress with no recovery entry: {got}"
            assert balance(registry, patient) == 100
    finally:
        if env.topo.services["wallet"].proc.poll() is not None:
            env.topo.restart("wallet")
        env.restart("registry-13", {})
        r.close()
