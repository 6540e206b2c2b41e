"""A reversal the registry died in leaves no request id in progress after recovery (SPEC §7).

Two 福建 registry replicas on one Redis, quiet (a long recovery grace) while the scene is set. A 2208
is sent once to registry-35#1, which is killed (MEDAID_FAULT, SIGKILL) at a step of the reversal;
then registry-35#2 runs with a 1 s grace and its recovery loop alone (no resend) must bring the
2208's request id to a final state: answered where the reversal was done, free where it never began.
A 2601 of the lost 2208 asks the registry about it (CancelRequest) and must get a final answer, not
"still being processed" forever; money is conserved to the fen and nothing stays in the index. So
too for a 2601 that undoes a 2208 (UndoReversal): one killed before it took anything back leaves its
id free for a resend with corrected fields.
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
from support import FACE, RESIDENT, new_id, reason, rid

pytestmark = pytest.mark.slow

K = Keys("35")


Env = fujian_replicas.Env


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    yield from fujian_replicas.started(Env, {"registry-35#1": QUIET, "registry-35#2": QUIET})


def _settled_bill(env: Env) -> tuple[str, str, int]:
    """A 福建 patient (¥500) who paid ¥40 of an outpatient bill from their account."""
    patient = env.enroll(50_000)
    sid = rid("2207")
    got = env.stub().Settle(pb.SettleRequest(
        request_id=sid, patient_id_number=patient, amount_fen=4_000, use_account=True,
        category=cpb.CATEGORY_OUTPATIENT, institution_code="H35020000001", institution_admdvs="350200"),
        timeout=T).result
    assert got.acct_pay_fen == 4_000, got
    return patient, sid, int(got.acct_pay_fen)


def _reverse(sid: str, op: str) -> Callable[[pb_grpc.RegistryServiceStub], Any]:
    return lambda s: s.ReverseSettlement(pb.ReverseSettlementRequest(request_id=op, settlement_id=sid),
                                         timeout=3 * T)


def _recovered(env: Env, timeout: float = 25) -> None:
    """The recovery loop has taken every entry away (or `timeout` has passed); then the money check."""
    deadline = time.monotonic() + timeout
    with env.redis() as r:
        while r.zcard(fujian_replicas.OPEN) and time.monotonic() < deadline:
            time.sleep(0.2)
    env.settled()


def _cancel_until_final(env: Env, original: str, timeout: float = 25) -> pb.CancelRequestResponse:
    """The registry's answer to a 2601 of `original`, asked until it is final (VOIDED, or USED and
    finished) or `timeout` has passed: the recovery loop alone must get it there."""
    deadline = time.monotonic() + timeout
    while True:
        got = env.stub().CancelRequest(pb.CancelRequestRequest(request_id=rid("2601"), original_request_id=original),
                                       timeout=T)
        if got.outcome == "VOIDED" or got.finished or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


@pytest.mark.parametrize("point", ["reverse.before_withdraw", "reverse.after_finish"])
def test_reversal_done_before_the_crash_is_answered_after_recovery(env, point):
    """The 2208 returned every fen and marked the record REVERSED, then its registry died before the
    answer was recorded. After recovery (no resend) the 2208's id is finished, so a 2601 of it can undo
    it; a resend of the 2208 gets the reversal's answer and moves nothing."""
    patient, sid, acct_pay = _settled_bill(env)
    rev = rid("2208")
    env.crash("registry-35#1", point, _reverse(sid, rev))
    assert env.balance(patient) == 50_000  # every fen back before the crash
    env.restart("registry-35#1", QUIET)
    env.restart("registry-35#2", RECOVER)
    try:
        got = _cancel_until_final(env, rev)
        assert (got.outcome, got.op, got.settlement_id, got.finished) == ("USED", "reverse", sid, True), got
        again = _reverse(sid, rev)(env.stub())
        assert (again.reversal_id, again.acct_refund_fen) == (rev, acct_pay), again
        assert env.balance(patient) == 50_000
        _recovered(env)
    finally:
        env.restart("registry-35#2", QUIET)




def test_settlement_dropped_by_a_pass_that_died_leaves_its_id_free(env):
    """A 2207 finds its patient busy, claims its id and writes its entry for the staged path, and its
    registry dies before it takes the lock: nothing was paid. The recovery pass that drops it dies too,
    between the entry and the claim. After the next pass (no resend) the id is in progress no more: a
    2601 of it voids it (the original did nothing), and the patient's account is untouched."""
    patient = env.enroll(50_000)
    sid = rid("2207")

    def settle(stub: pb_grpc.RegistryServiceStub) -> Any:
        return stub.Settle(pb.SettleRequest(
            request_id=sid, patient_id_number=patient, amount_fen=4_000, use_account=True,
            category=cpb.CATEGORY_OUTPATIENT, institution_code="H35020000001", institution_admdvs="350200"),
            timeout=3 * T)

    release = env.hold_lock(K.person_tag(patient))
    try:
        env.crash("registry-35#1", "settle.after_claim", settle)
    finally:
        release()
    with env.redis() as r:
        assert r.zscore(fujian_replicas.OPEN, f"S|{patient}|{sid}") is not None
    env.restart("registry-35#1", QUIET)
    env.restart("registry-35#2", {**RECOVER, "MEDAID_FAULT": "recovery.mid_drop"})
    proc = env.topo.services["registry-35#2"].proc
    proc.wait(timeout=25)
    assert proc.returncode == -signal.SIGKILL, "the pass should have died between the entry and the claim"
    env.restart("registry-35#2", RECOVER)
    try:
        got = _cancel_until_final(env, sid)
        assert got.outcome == "VOIDED", got
        assert env.balance(patient) == 50_000
        _recovered(env)
    finally:
        env.restart("registry-35#2", QUIET)


def test_reversal_that_never_began_leaves_its_id_free_after_recovery(env):
    """The 2208 took the patient's lock and wrote its recovery entry, then its registry died before it
    marked the record REVERSING: nothing was returned. After recovery (no resend) the settlement stands
    and the 2208's id is in progress no more: a 2601 of it voids it (the original did nothing)."""
    patient, sid, acct_pay = _settled_bill(env)
    rev = rid("2208")
    env.crash("registry-35#1", "reverse.before_begin", _reverse(sid, rev))
    assert env.balance(patient) == 50_000 - acct_pay
    env.restart("registry-35#1", QUIET)
    env.restart("registry-35#2", RECOVER)
    try:
        got = _cancel_until_final(env, rev)
        assert got.outcome == "VOIDED", got
        assert env.balance(patient) == 50_000 - acct_pay
        result = env.stub().GetSettlement(pb.GetSettlementRequest(settlement_id=sid), timeout=T).result
        assert result.state == "SETTLED", result
        _recovered(env)
    finally:
        env.restart("registry-35#2", QUIET)


def _stopped(proc: Any, timeout: float = 10) -> bool:
    """Whether `proc` stopped itself at a `stop:` fault point within `timeout`."""
    deadline = time.monotonic() + timeout
    while process_state(proc.pid) != "T":
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_reversal_stalled_before_its_lock_is_freed_and_then_writes_nothing(env):
    """The 2208 claims its id and its registry stalls before it takes the patient's lock, past the
    recovery grace. The loop (no resend) frees the id: a 2601 of it voids it. The 2208, resumed, takes
    the lock, finds its id voided and is refused ORIGINAL_CANCELLED: nothing is returned, the settlement
    stands and nothing is left in the recovery index."""
    patient, sid, acct_pay = _settled_bill(env)
    rev = rid("2208")
    env.restart("registry-35#1", {**QUIET, "MEDAID_FAULT": "stop:reverse.after_claim"})
    env.restart("registry-35#2", RECOVER)
    proc1 = env.topo.services["registry-35#1"].proc
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            sent = pool.submit(_reverse(sid, rev), env.stub("registry-35#1", retries=False))
            try:
                assert _stopped(proc1), sent
                got = _cancel_until_final(env, rev)
                assert got.outcome == "VOIDED", got
                proc1.send_signal(signal.SIGCONT)
                with pytest.raises(grpc.RpcError) as err:
                    sent.result(timeout=3 * T)
                assert reason(err.value) == "ORIGINAL_CANCELLED", err.value
            finally:
                proc1.send_signal(signal.SIGCONT)
        assert env.balance(patient) == 50_000 - acct_pay
        result = env.stub().GetSettlement(pb.GetSettlementRequest(settlement_id=sid), timeout=T).result
        assert result.state == "SETTLED", result
        _recovered(env)
    finally:
        env.restart("registry-35#1", QUIET)
        env.restart("registry-35#2", QUIET)


def _undo(rev: str, op: str) -> Callable[[pb_grpc.RegistryServiceStub], Any]:
    return lambda s: s.UndoReversal(pb.UndoReversalRequest(request_id=op, reversal_id=rev), timeout=3 * T)


def _reversed_bill(env: Env) -> tuple[str, str, int]:
    """A 福建 patient (¥500) who paid ¥40 of an outpatient bill from their account, then reversed it
    (2208); the patient, the 2208's id and what the account paid."""
    patient, sid, acct_pay = _settled_bill(env)
    rev = rid("2208")
    _reverse(sid, rev)(env.stub())
    assert env.balance(patient) == 50_000
    return patient, rev, acct_pay


def test_undo_that_never_began_leaves_its_id_free_after_recovery(env):
    """A 2601 undoing a 2208 took the patient's lock and claimed its id again, then its registry died
    before it took anything back. After recovery (no resend) the reversal stands and the 2601's id is
    free: sent again with a corrected original (another 2208), it undoes that one, and only that one."""
    patient, rev, _ = _reversed_bill(env)
    other, rev2, acct_pay2 = _reversed_bill(env)
    undo = rid("2601")
    env.crash("registry-35#1", "undo.before_begin", _undo(rev, undo))
    env.restart("registry-35#1", QUIET)
    env.restart("registry-35#2", RECOVER)
    try:
        _recovered(env)
        assert env.balance(patient) == 50_000
        got = _undo(rev2, undo)(env.stub())
        assert (got.outcome, got.reversal_id, got.acct_pay_fen) == ("RESTORED", rev2, acct_pay2), got
        assert (env.balance(patient), env.balance(other)) == (50_000, 50_000 - acct_pay2)
        _recovered(env)
    finally:
        env.restart("registry-35#2", QUIET)


def _pay_premium(payer: str, payee: str, op: str, relation: int) -> Callable[[pb_grpc.RegistryServiceStub], Any]:
    return lambda s: s.PayResidentPremium(ppb.PayResidentPremiumRequest(
        request_id=op, payer_id_number=payer, payee_id_number=payee, relation=relation, year="2027",
        source=ppb.PREMIUM_SOURCE_ACCOUNT), timeout=3 * T)


def _family(env: Env, initial: int = 100_000) -> tuple[str, str]:
    """A 福建 family account and its creator (¥3,200), who put `initial` into it."""
    creator = env.enroll(320_000)
    fid = env.stub().CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
        request_id=rid("fam"), creator_id_number=creator, commitment=FACE, initial_transfer_fen=initial),
        timeout=T).account.family_id
    return creator, fid


def _member(env: Env, fid: str, creator: str) -> str:
    """A son (¥3,000) who joined family account `fid`."""
    son = env.enroll(300_000, birth="19950101")
    s = env.stub()
    s.InviteMember(fpb.InviteMemberRequest(request_id=rid("inv"), family_id=fid, creator_id_number=creator,
                                           member_id_number=son, relation=cpb.RELATION_CHILD), timeout=T)
    s.RespondToInvitation(fpb.RespondToInvitationRequest(request_id=rid("acc"), family_id=fid,
                                                         member_id_number=son, accept=True, verification=FACE),
                          timeout=T)
    return son


@pytest.mark.parametrize("point", ["premium.before_open", "premium.after_entry"])
def test_premium_payment_that_never_opened_leaves_its_id_free_after_recovery(env, point):
    """A 代缴 claimed its id, then its registry died before it opened the payment: nothing was paid. After
    recovery (no resend) the id is free: sent again with a corrected relation, the payment is judged
    afresh and paid once."""
    payer, sister = env.enroll(220_000), env.enroll(itype=RESIDENT, birth="19600101")
    op = rid("prem")
    env.crash("registry-35#1", point, _pay_premium(payer, sister, op, cpb.RELATION_CHILD))
    env.restart("registry-35#1", QUIET)
    env.restart("registry-35#2", RECOVER)
    try:
        _recovered(env)
        assert env.balance(payer) == 220_000
        got = _pay_premium(payer, sister, op, cpb.RELATION_SIBLING)(env.stub()).premium
        assert (got.premium_id, got.state, got.relation) == (op, "PAID", cpb.RELATION_SIBLING), got
        assert env.balance(payer) == 220_000 - got.amount_fen
        _recovered(env)
    finally:
        env.restart("registry-35#2", QUIET)


def test_premium_cancellation_that_never_began_leaves_its_id_free_after_recovery(env):
    """A cancellation of a 代缴 claimed its id and wrote its entry, then its registry died before it began:
    the premium stays paid. After recovery the id is free: sent for the payee meant (another one), it
    cancels that payment."""
    payer = env.enroll(220_000)
    sister, brother = env.enroll(itype=RESIDENT, birth="19600101"), env.enroll(itype=RESIDENT, birth="19620101")
    for payee in (sister, brother):
        _pay_premium(payer, payee, rid("prem"), cpb.RELATION_SIBLING)(env.stub())
    op = rid("cancel")

    def cancel(payee: str) -> Callable[[pb_grpc.RegistryServiceStub], Any]:
        return lambda s: s.CancelResidentPremium(ppb.CancelResidentPremiumRequest(
            request_id=op, payee_id_number=payee, year="2027"), timeout=3 * T)

    env.crash("registry-35#1", "premium.after_entry", cancel(sister))
    env.restart("registry-35#1", QUIET)
    env.restart("registry-35#2", RECOVER)
    try:
        _recovered(env)
        got = cancel(brother)(env.stub()).premium
        assert (got.payee_id_number, got.state) == (brother, "CANCELLED"), got
        _recovered(env)
    finally:
        env.restart("registry-35#2", QUIET)


def test_family_transfer_that_never_debited_leaves_its_id_free_after_recovery(env):
    """A 划拨 claimed its id and wrote its entry, then its registry died before the debit. After recovery
    the id is free: sent again with the corrected amount, it moves that amount once."""
    creator, fid = _family(env, initial=0)  # one 划拨 a month
    op = rid("hb")

    def transfer(amount: int) -> Callable[[pb_grpc.RegistryServiceStub], Any]:
        return lambda s: s.TransferIntoFamilyAccount(fpb.TransferIntoFamilyAccountRequest(
            request_id=op, family_id=fid, contributor_id_number=creator, amount_fen=amount), timeout=3 * T)

    env.crash("registry-35#1", "family.after_transfer_entry", transfer(30_000))
    env.restart("registry-35#1", QUIET)
    env.restart("registry-35#2", RECOVER)
    try:
        _recovered(env)
        assert (env.balance(creator), env.account(fid).balance_fen) == (320_000, 0)
        transfer(20_000)(env.stub())
        assert (env.balance(creator), env.account(fid).balance_fen) == (300_000, 20_000)
        _recovered(env)
    finally:
        env.restart("registry-35#2", QUIET)


def test_leave_that_never_began_leaves_its_id_free_after_recovery(env):
    """A member's leave claimed its id and wrote its entry, then its registry died before the membership
    ended. After recovery the id is free: sent again for the member meant, that one leaves with their
    share."""
    creator, fid = _family(env)
    son, daughter = _member(env, fid, creator), _member(env, fid, creator)
    op = rid("leave")

    def leave(member: str) -> Callable[[pb_grpc.RegistryServiceStub], Any]:
        return lambda s: s.LeaveFamilyAccount(fpb.LeaveFamilyAccountRequest(
            request_id=op, family_id=fid, member_id_number=member), timeout=3 * T)

    env.crash("registry-35#1", "family.after_entry", leave(son))
    env.restart("registry-35#1", QUIET)
    env.restart("registry-35#2", RECOVER)
    try:
        _recovered(env)
        leave(daughter)(env.stub())
        members = {m.id_number: m.state for m in env.account(fid).members}
        want = (fpb.MEMBERSHIP_STATE_MEMBER, fpb.MEMBERSHIP_STATE_ENDED)
        assert (members.get(son), members.get(daughter)) == want, members
        _recovered(env)
    finally:
        env.restart("registry-35#2", QUIET)


def test_status_change_that_never_wrote_leaves_its_id_free_after_recovery(env):
    """A status change claimed its id and wrote its entry, then its registry died before it wrote the
    status. After recovery the id is free: sent again with the corrected status, that one is written."""
    person = env.enroll(10_000)
    op = rid("status")

    def update(status: int) -> Callable[[pb_grpc.RegistryServiceStub], Any]:
        return lambda s: s.UpdatePersonStatus(pb.UpdatePersonStatusRequest(
            request_id=op, id_number=person, status=status), timeout=3 * T)

    env.crash("registry-35#1", "status.after_entry", update(cpb.PERSON_STATUS_TERMINATED))
    env.restart("registry-35#1", QUIET)
    env.restart("registry-35#2", RECOVER)
    try:
        _recovered(env)
        got = update(cpb.PERSON_STATUS_SUSPENDED)(env.stub()).person
        assert got.status == cpb.PERSON_STATUS_SUSPENDED, got
        _recovered(env)
    finally:
        env.restart("registry-35#2", QUIET)


def test_move_that_never_wrote_leaves_its_id_free_after_recovery(env):
    """A move to another 统筹区 claimed its id and wrote its entry, then its registry died before it wrote
    the move. After recovery the id is free: sent again with the corrected region, that move is written."""
    person = env.enroll(10_000)
    op = rid("move")

    def move(region: str) -> Callable[[pb_grpc.RegistryServiceStub], Any]:
        return lambda s: s.MovePoolingRegion(pb.MovePoolingRegionRequest(
            request_id=op, id_number=person, pooling_region=region), timeout=3 * T)

    env.crash("registry-35#1", "move.after_entry", move("350500"))
    env.restart("registry-35#1", QUIET)
    env.restart("registry-35#2", RECOVER)
    try:
        _recovered(env)
        assert move("350100")(env.stub()).person.pooling_region == "350100"
        _recovered(env)
    finally:
        env.restart("registry-35#2", QUIET)


def test_death_that_never_wrote_leaves_its_id_free_after_recovery(env):
    """A death claimed its id and wrote its entry, then its registry died before it wrote the death.
    After recovery the id is free: sent again with the corrected heir, that heir is paid out."""
    person, wrong, heir = env.enroll(10_000), env.enroll(), env.enroll()
    op = rid("death")

    def death(to: str) -> Callable[[pb_grpc.RegistryServiceStub], Any]:
        return lambda s: s.RecordDeath(pb.RecordDeathRequest(
            request_id=op, id_number=person, heir_id_number=to, heir_name="张继承", date_of_death="20261121"),
            timeout=3 * T)

    env.crash("registry-35#1", "death.after_entry", death(wrong))
    env.restart("registry-35#1", QUIET)
    env.restart("registry-35#2", RECOVER)
    try:
        _recovered(env)
        got = death(heir)(env.stub())
        assert (got.person.status, got.paid_out_fen) == (cpb.PERSON_STATUS_DECEASED, 10_000), got
        assert env.stub().GetPerson(pb.GetPersonRequest(id_number=person), timeout=T).person.heir_id_number == heir
        _recovered(env)
    finally:
        env.restart("registry-35#2", QUIET)


def test_enrolment_that_never_wrote_leaves_its_id_free_after_recovery(env):
    """An enrolment claimed its id and wrote its entry, then its registry died before it wrote the person.
    After recovery the id is free: sent again with the corrected name, that person is enrolled."""
    person = new_id("350203", "19800101")
    op = rid("enroll")

    def enroll(name: str) -> Callable[[pb_grpc.RegistryServiceStub], Any]:
        return lambda s: s.EnrollPerson(pb.EnrollPersonRequest(
            request_id=op, id_number=person, name=name, insurance_type=cpb.INSURANCE_TYPE_EMPLOYEE,
            pooling_region="350200"), timeout=3 * T)

    env.crash("registry-35#1", "enroll.after_entry", enroll("张三丰"))
    env.restart("registry-35#1", QUIET)
    env.restart("registry-35#2", RECOVER)
    try:
        _recovered(env)
        assert enroll("张三")(env.stub()).person.name == "张三"
        _recovered(env)
    finally:
        env.restart("registry-35#2", QUIET)


def test_death_stalled_past_the_grace_is_not_finished_with_its_heir_after_a_corrected_resend(env):
    """A death claimed its id and wrote its entry (naming its heir), then its registry stalled before
    the person's lock, past the recovery grace: the loop dropped the entry and freed the id, and the
    death was sent again with the corrected heir, which was paid out. The first attempt, resumed, is
    refused (its id is the resend's) and writes its entry again on its way: the loop must take that
    entry away without finishing the death with the first attempt's heir."""
    person, wrong, heir = env.enroll(10_000), env.enroll(), env.enroll()
    op = rid("death")

    def death(to: str) -> Callable[[pb_grpc.RegistryServiceStub], Any]:
        return lambda s: s.RecordDeath(pb.RecordDeathRequest(
            request_id=op, id_number=person, heir_id_number=to, heir_name="张继承", date_of_death="20261121"),
            timeout=3 * T)

    env.restart("registry-35#1", {**QUIET, "MEDAID_FAULT": "stop:death.after_entry"})
    env.restart("registry-35#2", RECOVER)
    proc1 = env.topo.services["registry-35#1"].proc
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            sent = pool.submit(death(wrong), env.stub("registry-35#1", retries=False))
            try:
                assert _stopped(proc1), sent
                _recovered(env)  # the stalled attempt's entry dropped, its id freed
                got = death(heir)(env.stub("registry-35#2"))
                assert (got.person.status, got.paid_out_fen) == (cpb.PERSON_STATUS_DECEASED, 10_000), got
                proc1.send_signal(signal.SIGCONT)
                with pytest.raises(grpc.RpcError) as err:
                    sent.result(timeout=3 * T)
                assert reason(err.value) == "IDEMPOTENCY_KEY_REUSED", err.value
            finally:
                proc1.send_signal(signal.SIGCONT)
        _recovered(env)
        after = env.stub().GetPerson(pb.GetPersonRequest(id_number=person), timeout=T).person
        assert (after.heir_id_number, after.paid_out_fen) == (heir, 10_000), after
    finally:
        env.restart("registry-35#1", QUIET)
        env.restart("registry-35#2", QUIET)


def test_undo_refused_its_reused_id_leaves_the_resends_entry_to_the_loop(env):
    """A 2601 undoing a 2208 claimed its id and its registry stalled before the patient's lock, past the
    grace: the loop freed the id. The 2601 was sent again with a corrected original (the settlement's
    later 2208, so the same entry) and its registry died between its claim and the lock. The first
    attempt, resumed, is refused (its id is the resend's) and must leave the entry, the resend's too, to
    the loop: the loop then frees the resend's id, which is judged afresh when sent again; no fen moves."""
    patient, sid, acct_pay = _settled_bill(env)
    rev1, rev2, undo = rid("2208"), rid("2208"), rid("2601")
    _reverse(sid, rev1)(env.stub())
    got = _undo(rev1, rid("2601"))(env.stub())
    assert got.outcome == "RESTORED", got
    _reverse(sid, rev2)(env.stub())
    assert env.balance(patient) == 50_000
    env.restart("registry-35#1", {**QUIET, "MEDAID_FAULT": "stop:undo.after_claim"})
    env.restart("registry-35#2", RECOVER)
    proc1 = env.topo.services["registry-35#1"].proc
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            sent = pool.submit(_undo(rev1, undo), env.stub("registry-35#1", retries=False))
            try:
                assert _stopped(proc1), sent
                _recovered(env)  # the stalled attempt's entry dropped, its id freed
                env.crash("registry-35#2", "undo.after_claim", _undo(rev2, undo))
                proc1.send_signal(signal.SIGCONT)
                with pytest.raises(grpc.RpcError) as err:
                    sent.result(timeout=3 * T)
                assert reason(err.value) == "IDEMPOTENCY_KEY_REUSED", err.value
            finally:
                proc1.send_signal(signal.SIGCONT)
        env.restart("registry-35#2", RECOVER)
        _recovered(env)
        assert env.balance(patient) == 50_000
        got = _undo(rev1, undo)(env.stub())  # the id is free: judged afresh, not REUSED
        assert (got.outcome, got.reversal_id) == ("ALREADY_RESTORED", rev1), got
        assert env.balance(patient) == 50_000
        result = env.stub().GetSettlement(pb.GetSettlementRequest(settlement_id=sid), timeout=T).result
        assert result.state == "REVERSED", result
        _recovered(env)
    finally:
        env.restart("registry-35#1", QUIET)
        env.restart("registry-35#2", QUIET)
