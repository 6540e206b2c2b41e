"""A request that fails must not take away the recovery entry another request still needs (SPEC §7).

Two 福建 registry replicas on one Redis, both with a recovery grace longer than any step here, so
that no pass runs while the scene is set. A first request leaves its flow half done (MEDAID_FAULT:
killed after its first effect, its lock left to expire); a second request on the same payee and year
(another request id), or a resend of the same id, is then refused or told to retry. Afterwards
registry-35#2 runs with a 1 s grace, and its recovery loop alone (no resend) must finish the first
request's flow: every fen where it belongs, nothing in flight, money conserved to the fen.
"""

from __future__ import annotations

import concurrent.futures
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import fujian_replicas
import grpc
import pytest
from fujian_replicas import QUIET, RECOVER, T, process_state
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.keys import Keys
from medaid.registry.v1 import family_pb2 as fpb
from medaid.registry.v1 import premium_pb2 as ppb
from medaid.registry.v1 import registry_pb2 as pb
from medaid.registry.v1 import registry_pb2_grpc as pb_grpc
from support import FACE, RESIDENT, reason, rid

pytestmark = pytest.mark.slow

K = Keys("35")


class Env(fujian_replicas.Env):
    def quiet(self) -> None:
        """registry-35#2 without a recovery pass (an earlier test left its loop running, `recover`): a
        scene whose first attempt dies on registry-35#1 is not finished by the loop while it is set."""
        self.restart("registry-35#2", QUIET)

    def recover(self) -> None:
        """Both replicas back without faults; registry-35#2's recovery loop with a 1 s grace."""
        self.restart("registry-35#1", QUIET)
        self.restart("registry-35#2", RECOVER)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    yield from fujian_replicas.started(Env, {"registry-35#1": QUIET, "registry-35#2": QUIET})


def _wait(read: Callable[[], Any], done: Callable[[Any], bool], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def _recovered(env: Env, read: Callable[[], Any], want: Any) -> tuple[Any, list[bytes]]:
    """`read()` and the recovery index's entries, once `read()` is `want` and no entry is left, or as they
    stand after 25 s: the loop records a flow's final state, then answers its request id, and withdraws
    the entry last, so a state read as final may still have its entry for a few round trips."""
    def both() -> tuple[Any, list[bytes]]:
        value = read()
        with env.redis() as r:
            return value, r.zrange(fujian_replicas.OPEN, 0, -1)

    return _wait(both, lambda v: v == (want, []), 25)  # type: ignore[no-any-return]


def _pay(payer: str, payee: str, op: str) -> Callable[[pb_grpc.RegistryServiceStub], Any]:
    return lambda s: s.PayResidentPremium(ppb.PayResidentPremiumRequest(
        request_id=op, payer_id_number=payer, payee_id_number=payee, relation=cpb.RELATION_SIBLING,
        year="2027", source=ppb.PREMIUM_SOURCE_ACCOUNT), timeout=3 * T)


def _cancel(payee: str, op: str) -> Callable[[pb_grpc.RegistryServiceStub], Any]:
    return lambda s: s.CancelResidentPremium(ppb.CancelResidentPremiumRequest(
        request_id=op, payee_id_number=payee, year="2027"), timeout=3 * T)


def _premium_state(env: Env, payee: str) -> str:
    with env.redis() as r:
        return (r.hget(K.premium(payee, "2027"), "state") or b"").decode()


def test_payment_refused_as_already_paid_leaves_the_half_done_payment_to_recovery(env):
    """Two siblings pay their sister's 2027 premium at once. B's checks pass before A opens its payment;
    A debits its payer's account and dies; B, refused PREMIUM_ALREADY_PAID by A's PENDING record, must
    not take away the entry under which the loop finishes A's payment."""
    a_payer, b_payer = env.enroll(220_000), env.enroll(220_000, birth="19820101")
    sister = env.enroll(itype=RESIDENT, birth="19600101")
    b_op = rid("premB")
    env.restart("registry-35#1", {**QUIET, "MEDAID_FAULT": "stop:premium.before_open"})
    proc1 = env.topo.services["registry-35#1"].proc
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        sent = pool.submit(_pay(b_payer, sister, b_op), env.stub("registry-35#1", retries=False))
        try:
            assert _wait(lambda: process_state(proc1.pid), lambda s: s == "T", 10) == "T", sent
            env.crash("registry-35#2", "premium.after_debit", _pay(a_payer, sister, rid("premA")))
            proc1.send_signal(signal.SIGCONT)
            with pytest.raises(grpc.RpcError) as err:
                sent.result(timeout=3 * T)
            assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS, err.value
            assert reason(err.value) == "PREMIUM_ALREADY_PAID"
        finally:
            proc1.send_signal(signal.SIGCONT)
    assert _premium_state(env, sister) == "PENDING"
    env.recover()

    def paid() -> tuple[int, int, str]:
        return env.balance(a_payer), env.balance(b_payer), _premium_state(env, sister)

    want = (220_000 - 40_000, 220_000, "PAID")
    assert _recovered(env, paid, want) == (want, [])
    env.settled()


def test_cancel_refused_leaves_the_half_done_cancellation_to_recovery(env):
    """A cancellation gives the premium back to the payer's account and dies before it marks the
    record CANCELLED; a second cancellation (another request id), refused PREMIUM_NOT_PAID, must not
    take away the entry under which the loop finishes the first."""
    payer, sister = env.enroll(220_000), env.enroll(itype=RESIDENT, birth="19600101")
    _pay(payer, sister, rid("prem"))(env.stub("registry-35#1"))
    env.crash("registry-35#2", "premium.after_cancel_refund", _cancel(sister, rid("cancelA")))
    with pytest.raises(grpc.RpcError) as err:
        _cancel(sister, rid("cancelB"))(env.stub("registry-35#1", retries=False))
    assert reason(err.value) == "PREMIUM_NOT_PAID", err.value
    assert _premium_state(env, sister) == "CANCELLING"
    env.recover()

    def cancelled() -> tuple[int, str]:
        return env.balance(payer), _premium_state(env, sister)

    assert _recovered(env, cancelled, (220_000, "CANCELLED")) == ((220_000, "CANCELLED"), [])
    env.settled()



def test_resend_told_family_busy_leaves_the_earlier_attempts_returns_to_recovery(env):
    """A member leaves; the attempt takes his share out of the family account and dies before it is
    credited. The client resends the same request id while another change holds the family's lock:
    FAMILY_BUSY. The resend must not take away the entry under which the loop pays the share back."""
    env.quiet()
    creator, son = env.enroll(320_000), env.enroll(300_000, birth="19900101")
    s = env.stub()
    fid = s.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
        request_id=rid("fam"), creator_id_number=creator, commitment=FACE, initial_transfer_fen=100_000),
        timeout=T).account.family_id
    s.InviteMember(fpb.InviteMemberRequest(request_id=rid("inv"), family_id=fid, creator_id_number=creator,
                                           member_id_number=son, relation=cpb.RELATION_CHILD), timeout=T)
    s.RespondToInvitation(fpb.RespondToInvitationRequest(request_id=rid("acc"), family_id=fid, member_id_number=son,
                                                         accept=True, verification=FACE), timeout=T)
    s.TransferIntoFamilyAccount(fpb.TransferIntoFamilyAccountRequest(
        request_id=rid("hb"), family_id=fid, contributor_id_number=son, amount_fen=50_000), timeout=T)
    op = rid("leave")

    def leave(stub: pb_grpc.RegistryServiceStub) -> Any:
        return stub.LeaveFamilyAccount(fpb.LeaveFamilyAccountRequest(
            request_id=op, family_id=fid, member_id_number=son), timeout=3 * T)

    env.crash("registry-35#1", "family.after_end", leave)
    release = env.hold_lock(K.family_lock_tag(fid))
    try:
        with pytest.raises(grpc.RpcError) as err:
            leave(env.stub("registry-35#2", retries=False))
        assert reason(err.value) == "FAMILY_BUSY", err.value
        # Read while the lock is held: once it is free the loop may pay the share back at any moment.
        assert env.balance(son) == 250_000  # his share is out of the family account, not yet back
    finally:
        release()
    env.recover()

    def shares() -> tuple[int, int]:
        account = env.stub().GetFamilyAccount(fpb.GetFamilyAccountRequest(family_id=fid), timeout=T).account
        return env.balance(son), account.balance_fen

    assert _recovered(env, shares, (300_000, 100_000)) == ((300_000, 100_000), [])
    env.settled()


def test_resend_told_patient_busy_leaves_the_earlier_attempts_transfer_to_recovery(env):
    """A 划拨: the attempt debits the contributor's account and dies before the family account is
    credited. The client resends the same request id while another operation holds the contributor's
    lock: PATIENT_BUSY. The resend must not take away the entry under which the loop credits it."""
    env.quiet()
    creator = env.enroll(320_000)
    s = env.stub()
    fid = s.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
        request_id=rid("fam"), creator_id_number=creator, commitment=FACE), timeout=T).account.family_id
    op = rid("hb")

    def transfer(stub: pb_grpc.RegistryServiceStub) -> Any:
        return stub.TransferIntoFamilyAccount(fpb.TransferIntoFamilyAccountRequest(
            request_id=op, family_id=fid, contributor_id_number=creator, amount_fen=30_000), timeout=3 * T)

    env.crash("registry-35#1", "family.after_debit", transfer)
    release = env.hold_lock(K.person_tag(creator))
    try:
        with pytest.raises(grpc.RpcError) as err:
            transfer(env.stub("registry-35#2", retries=False))
        assert reason(err.value) == "PATIENT_BUSY", err.value
        # Read while the lock is held: once it is free the loop may credit the family at any moment.
        assert env.balance(creator) == 290_000  # debited, not yet in the family account
    finally:
        release()
    env.recover()

    def moved() -> tuple[int, int]:
        account = env.stub().GetFamilyAccount(fpb.GetFamilyAccountRequest(family_id=fid), timeout=T).account
        return env.balance(creator), account.balance_fen

    assert _recovered(env, moved, (290_000, 30_000)) == ((290_000, 30_000), [])
    env.settled()


def _reversed_settlement(env: Env, funds: int = 50_000) -> tuple[str, str, str, int]:
    """A 福建 patient (`funds`) paid ¥40 of an outpatient bill from their account, then reversed (2208)."""
    patient = env.enroll(funds)
    s = env.stub()
    sid = rid("2207")
    got = s.Settle(pb.SettleRequest(request_id=sid, patient_id_number=patient, amount_fen=4_000, use_account=True,
                                    category=cpb.CATEGORY_OUTPATIENT, institution_code="H35020000001",
                                    institution_admdvs="350200"), timeout=T).result
    assert got.acct_pay_fen > 0, got
    rev = rid("2208")
    s.ReverseSettlement(pb.ReverseSettlementRequest(request_id=rev, settlement_id=sid), timeout=T)
    assert env.balance(patient) == funds
    return patient, sid, rev, int(got.acct_pay_fen)


def _undo(rev: str, op: str) -> Callable[[pb_grpc.RegistryServiceStub], Any]:
    return lambda s: s.UndoReversal(pb.UndoReversalRequest(request_id=op, reversal_id=rev), timeout=3 * T)


def _settlement_state(env: Env, patient: str, sid: str) -> str:
    with env.redis() as r:
        return (r.hget(K.settlement(patient, sid), "state") or b"").decode()


def test_undo_overtaken_past_its_lock_leaves_the_other_undos_restore_to_recovery(env):
    """Two 冲正 of the same 2208 (two request ids). B holds the patient's lock, reads the record and
    stalls past the lock's expiry; D takes the lock, takes the own-account share again (RESTORING) and
    dies. B, resumed, finds the record RESTORING by D: it must not take away the entry `U|<patient>|
    <settlement>` under which the loop finishes D's undo."""
    patient, sid, rev, acct_pay = _reversed_settlement(env)
    env.restart("registry-35#1", {**QUIET, "MEDAID_FAULT": "stop:undo.before_begin"})
    proc1 = env.topo.services["registry-35#1"].proc
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        sent = pool.submit(_undo(rev, rid("2601B")), env.stub("registry-35#1", retries=False))
        try:
            assert _wait(lambda: process_state(proc1.pid), lambda s: s == "T", 10) == "T", sent
            time.sleep(1)  # D's wait for the lock outlasts B's lease
            env.crash("registry-35#2", "undo.after_begin", _undo(rev, rid("2601D")))
            assert _settlement_state(env, patient, sid) == "RESTORING"
            proc1.send_signal(signal.SIGCONT)
            with pytest.raises(grpc.RpcError) as err:
                sent.result(timeout=3 * T)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
            assert reason(err.value) == "LOCK_LOST"
        finally:
            proc1.send_signal(signal.SIGCONT)
    with env.redis() as r:  # D's own-account share taken, the undo not finished
        assert int(r.hget(K.account(patient), "bal") or 0) == 50_000 - acct_pay
    env.recover()

    def restored() -> tuple[int, str]:
        return env.balance(patient), _settlement_state(env, patient, sid)

    want = (50_000 - acct_pay, "SETTLED")
    assert _recovered(env, restored, want) == (want, [])
    env.settled()


def test_undo_refused_short_then_overtaken_leaves_the_other_undos_restore_to_recovery(env):
    """B, a 冲正 of a 2208, is refused UNDO_SOURCE_SHORT under the patient's lock (the patient paid a
    sister's premium from the account meanwhile, under the sister's lock) and stalls past the lock's
    expiry before it withdraws the settlement's entry. The patient is credited; D, another 冲正 of the
    same 2208, takes the own-account share again (RESTORING) and dies. B's withdrawal must not take
    away the entry under which the loop finishes D."""
    patient, sid, rev, acct_pay = _reversed_settlement(env, 43_000)
    sister = env.enroll(itype=RESIDENT, birth="19600101")
    env.restart("registry-35#1", {**QUIET, "MEDAID_FAULT": "stop:undo.before_begin,stop:undo.before_withdraw"})
    proc1 = env.topo.services["registry-35#1"].proc
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        sent = pool.submit(_undo(rev, rid("2601B")), env.stub("registry-35#1", retries=False))
        try:
            assert _wait(lambda: process_state(proc1.pid), lambda s: s == "T", 10) == "T", sent
            _pay(patient, sister, rid("prem"))(env.stub())
            low = env.balance(patient)
            assert low < acct_pay, low
            proc1.send_signal(signal.SIGCONT)
            assert _wait(lambda: process_state(proc1.pid), lambda s: s == "T", 10) == "T", (
                sent.exception(timeout=1) if sent.done() else sent)
            env.stub().CreditAccount(pb.CreditAccountRequest(
                request_id=rid("credit"), id_number=patient, amount_fen=10_000,
                kind=pb.CREDIT_KIND_MONTHLY_CONTRIBUTION, period="202612"), timeout=T)
            env.credited += 10_000
            env.crash("registry-35#2", "undo.after_begin", _undo(rev, rid("2601D")))
            assert _settlement_state(env, patient, sid) == "RESTORING"
            proc1.send_signal(signal.SIGCONT)
            with pytest.raises(grpc.RpcError) as err:
                sent.result(timeout=3 * T)
            assert reason(err.value) == "UNDO_SOURCE_SHORT", err.value
        finally:
            proc1.send_signal(signal.SIGCONT)
    env.recover()

    def restored() -> tuple[int, str]:
        return env.balance(patient), _settlement_state(env, patient, sid)

    want = (low + 10_000 - acct_pay, "SETTLED")
    assert _recovered(env, restored, want) == (want, [])
    env.settled()


def _reverse(sid: str, op: str) -> Callable[[pb_grpc.RegistryServiceStub], Any]:
    return lambda s: s.ReverseSettlement(pb.ReverseSettlementRequest(request_id=op, settlement_id=sid),
                                         timeout=3 * T)


def test_reversal_overtaken_leaves_the_next_2208s_reversal_to_recovery(env):
    """Two 2208 of one settlement (two request ids). A takes the patient's lock and stalls past its
    expiry; B takes the lock next. A, resumed, is told LOCK_LOST by reverse_begin (B holds the fence)
    and stalls again; B marks the record REVERSING and dies. A must not take away the entry
    `R|<patient>|<settlement>` under which the loop finishes B's reversal."""
    patient = env.enroll(50_000)
    sid = rid("2207")
    got = env.stub().Settle(pb.SettleRequest(
        request_id=sid, patient_id_number=patient, amount_fen=4_000, use_account=True,
        category=cpb.CATEGORY_OUTPATIENT, institution_code="H35020000001", institution_admdvs="350200"),
        timeout=T).result
    assert got.acct_pay_fen > 0, got
    env.restart("registry-35#1", {**QUIET, "MEDAID_FAULT": "stop:reverse.before_begin,stop:reverse.before_withdraw"})
    env.restart("registry-35#2", {**QUIET, "MEDAID_FAULT": "stop:reverse.before_begin,reverse.after_begin"})
    proc1, proc2 = env.topo.services["registry-35#1"].proc, env.topo.services["registry-35#2"].proc
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        sent_a = pool.submit(_reverse(sid, rid("2208A")), env.stub("registry-35#1", retries=False))
        try:
            assert _wait(lambda: process_state(proc1.pid), lambda s: s == "T", 10) == "T", sent_a
            sent_b = pool.submit(_reverse(sid, rid("2208B")), env.stub("registry-35#2", retries=False))
            # B waits for the lock until A's lease has expired, takes it, and stalls before it begins.
            assert _wait(lambda: process_state(proc2.pid), lambda s: s == "T", 15) == "T", sent_b
            proc1.send_signal(signal.SIGCONT)  # A: told LOCK_LOST (or stalled before a withdrawal)
            _wait(lambda: sent_a.done() or process_state(proc1.pid) == "T", bool, 10)
            proc2.send_signal(signal.SIGCONT)  # B: REVERSING, then killed
            proc2.wait(timeout=10)
            assert proc2.returncode == -signal.SIGKILL
            proc1.send_signal(signal.SIGCONT)
            with pytest.raises(grpc.RpcError) as err:
                sent_a.result(timeout=3 * T)
            assert reason(err.value) == "LOCK_LOST", err.value
        finally:
            proc1.send_signal(signal.SIGCONT)
    assert _settlement_state(env, patient, sid) == "REVERSING"
    with env.redis() as r:  # B's reversal begun, the own-account share not yet back
        assert int(r.hget(K.account(patient), "bal") or 0) == 50_000 - got.acct_pay_fen
    env.recover()

    def reversed_() -> tuple[int, str]:
        return env.balance(patient), _settlement_state(env, patient, sid)

    assert _recovered(env, reversed_, (50_000, "REVERSED")) == ((50_000, "REVERSED"), [])
    env.settled()


def test_recovery_pass_stalled_past_its_lock_leaves_a_later_transfer_to_recovery(env):
    """A 划拨 writes its entry and stalls before the contributor's lock. A recovery pass takes the lock,
    finds no debit, and stalls past the lock's expiry before it drops the entry. The 划拨, resumed, takes
    the lock, writes the entry again, debits the contributor and dies. The pass, resumed, must not take
    away the entry under which the 划拨 is finished."""
    creator = env.enroll(320_000)
    fid = env.stub().CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
        request_id=rid("fam"), creator_id_number=creator, commitment=FACE), timeout=T).account.family_id

    def transfer(stub: pb_grpc.RegistryServiceStub) -> Any:
        return stub.TransferIntoFamilyAccount(fpb.TransferIntoFamilyAccountRequest(
            request_id=rid("hb"), family_id=fid, contributor_id_number=creator, amount_fen=30_000), timeout=3 * T)

    env.restart("registry-35#1", {**QUIET, "MEDAID_FAULT": "stop:family.after_transfer_entry,family.after_debit"})
    proc1 = env.topo.services["registry-35#1"].proc
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        sent = pool.submit(transfer, env.stub("registry-35#1", retries=False))
        proc2 = None
        try:
            assert _wait(lambda: process_state(proc1.pid), lambda s: s == "T", 10) == "T", sent
            env.restart("registry-35#2", {**RECOVER, "MEDAID_FAULT": "stop:recovery.before_drop"})
            proc2 = env.topo.services["registry-35#2"].proc
            assert _wait(lambda: process_state(proc2.pid), lambda s: s == "T", 15) == "T"
            proc1.send_signal(signal.SIGCONT)  # waits for the pass's lock to expire, debits, dies
            proc1.wait(timeout=25)
            assert proc1.returncode == -signal.SIGKILL
            with pytest.raises(grpc.RpcError):
                sent.result(timeout=1)
        finally:
            proc1.send_signal(signal.SIGCONT)
            if proc2 is not None:
                proc2.send_signal(signal.SIGCONT)
    assert env.balance(creator) == 290_000  # debited, not yet in the family account

    def moved() -> tuple[int, int]:
        account = env.stub().GetFamilyAccount(fpb.GetFamilyAccountRequest(family_id=fid), timeout=T).account
        return env.balance(creator), account.balance_fen

    assert _recovered(env, moved, (290_000, 30_000)) == ((290_000, 30_000), [])
    env.recover()
    env.settled()
