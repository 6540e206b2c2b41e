"""A 冲正 (2601) undoing a reversal frees its request id's claim only as that attempt took it (SPEC §7).

An undo claims its id with its recovery entry and checks its sources before the patient's lock; a
refusal there (or one judged under the lock) drops the claim, so that a resend is judged afresh. The
attempt may have stalled meanwhile while a resend of the same request, on another replica, found the
claim in progress, took it again under the lock, undid the reversal and recorded its answer: that claim
is the resend's now, and the first attempt's refusal must leave it. Two replicas on one Redis, driven
step by step by fault hooks.
"""

from __future__ import annotations

import concurrent.futures
import threading

import grpc
import pytest
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.keys import Keys
from medaid.registry.v1 import registry_pb2 as pb
from support import balance, bind, credit, enroll, reason, rid, settle_request, total_balances
from test_recovery_free_claim import WAIT_S, replica  # noqa: F401  (the fixture)

K = Keys("13")
OWN, HELPER = 1_000, 10_000


def _reversed(stub) -> tuple[str, str, str, str]:
    """A settlement of 4,000 fen (1,000 from the patient's own account, 3,000 from a helper), reversed:
    (patient, helper, settlement id, reversal id)."""
    patient, helper = enroll(stub, birth="19600101"), enroll(stub)
    credit(stub, patient, OWN)
    credit(stub, helper, HELPER)
    bind(stub, helper, patient, relation=cpb.RELATION_CHILD)
    req = settle_request(patient, 4_000)
    assert stub.Settle(req).result.mulaid_pay_fen == 3_000
    rev = rid("2208")
    stub.ReverseSettlement(pb.ReverseSettlementRequest(request_id=rev, settlement_id=req.request_id))
    return patient, helper, req.request_id, rev


def test_an_undo_refused_after_a_resend_undid_it_keeps_the_resends_answer(replica, rdb):  # noqa: F811
    """A 2601 claims its id (a new claim, with its entry), reads the settlement reversed and stalls before
    its check of the sources. A resend of it (the same id and fields, on another replica) finds the claim
    in progress, takes it again under the lock, takes every share again and records RESTORED. The first
    attempt then checks the sources: the patient's own account no longer covers its share (the resend
    took it), but the settlement is no longer the one it read: it is answered under the lock as its
    resend was (RESTORED, once), not refused UNDO_SOURCE_SHORT for an undo its own id made. It must
    leave the claim as the resend answered it: a replay answers RESTORED, and the id sent to undo
    another reversal is refused, not judged afresh (else one request id undoes two reversals)."""
    first, second = replica
    stub = first.stub
    patient, helper, sid, rev = _reversed(stub)
    other_patient, _, _, other_rev = _reversed(stub)
    total = total_balances(rdb)
    req = pb.UndoReversalRequest(request_id=rid("2601"), reversal_id=rev)
    stalled, resume = threading.Event(), threading.Event()

    def writer(point: str) -> None:
        if point == "undo.after_claim" and not stalled.is_set():
            stalled.set()
            assert resume.wait(WAIT_S)

    first.registry.fault_hook = writer
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        sent = pool.submit(lambda: stub.UndoReversal(req, timeout=3 * WAIT_S))
        try:
            assert stalled.wait(WAIT_S), sent.exception()
            resent = second.lt.run(second.registry.undo_reversal(req))
            assert resent.outcome == "RESTORED"
        finally:
            resume.set()
        first_answer = sent.result(timeout=3 * WAIT_S)
    first.registry.fault_hook = None
    assert first_answer == resent  # one request id, one answer
    claim = rdb.hgetall(f"{K.ns}:{{rid:{req.request_id}}}")
    assert claim.get(b"state") == b"DONE" and claim.get(b"fp"), claim
    assert stub.UndoReversal(req, timeout=WAIT_S) == resent  # the first answer, replayed
    other = pb.UndoReversalRequest(request_id=req.request_id, reversal_id=other_rev)
    with pytest.raises(grpc.RpcError) as err:
        stub.UndoReversal(other, timeout=WAIT_S)
    assert reason(err.value) == "IDEMPOTENCY_KEY_REUSED", err.value
    # One undo under the id: the first settlement's 4,000 fen taken again, the other's left reversed.
    assert total_balances(rdb) == total - 4_000
    assert (balance(stub, patient), balance(stub, helper), balance(stub, other_patient)) == (0, HELPER - 3_000, OWN)
    assert stub.GetSettlement(pb.GetSettlementRequest(settlement_id=sid)).result.state == "SETTLED"
    assert rdb.zcard(K.open_settlements()) == 0


def test_an_undo_given_back_leaves_the_claim_another_request_took_since(replica, rdb):  # noqa: F811
    """A 2601 begins (the own share taken again) and stalls; meanwhile the helper pays a bill of their
    own, so its charge falls short: the attempt gives back what it took, leaves the settlement reversed,
    and stalls again before it frees its id. A resend of it, on another replica, is refused by its check
    of the sources and frees the id; the id is then sent, as a corrected request, to undo another
    reversal, which is undone and answered. The first attempt's refusal must leave that claim: a replay
    of it answers as it did, and the first request's fields are refused under the id."""
    first, second = replica
    stub = first.stub
    patient, helper, sid, rev = _reversed(stub)
    other_patient, other_helper, other_sid, other_rev = _reversed(stub)
    total = total_balances(rdb)
    req = pb.UndoReversalRequest(request_id=rid("2601"), reversal_id=rev)
    begun, resume_begun, stalled, resume = (threading.Event() for _ in range(4))

    def writer(point: str) -> None:
        if point == "undo.after_begin" and not begun.is_set():
            begun.set()
            assert resume_begun.wait(WAIT_S)
        elif point == "undo.before_withdraw" and not stalled.is_set():
            stalled.set()
            assert resume.wait(WAIT_S)

    first.registry.fault_hook = writer
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        sent = pool.submit(lambda: stub.UndoReversal(req, timeout=3 * WAIT_S))
        try:
            assert begun.wait(WAIT_S), sent.exception()
            second.lt.run(second.registry.settle(settle_request(helper, HELPER - 1_000)))  # the helper's own bill
            resume_begun.set()
            assert stalled.wait(WAIT_S), sent.exception()
            with pytest.raises(Exception) as resend_err:  # the resend: refused, its id freed
                second.lt.run(second.registry.undo_reversal(req))
            assert getattr(resend_err.value, "reason", "") == "UNDO_SOURCE_SHORT", resend_err.value
            other = pb.UndoReversalRequest(request_id=req.request_id, reversal_id=other_rev)
            answered = second.lt.run(second.registry.undo_reversal(other))
            assert answered.outcome == "RESTORED" and answered.settlement_id == other_sid
        finally:
            resume_begun.set()
            resume.set()
        with pytest.raises(grpc.RpcError) as err:
            sent.result(timeout=3 * WAIT_S)
    first.registry.fault_hook = None
    assert (err.value.code(), reason(err.value)) == (grpc.StatusCode.FAILED_PRECONDITION, "UNDO_SOURCE_SHORT")
    claim = rdb.hgetall(f"{K.ns}:{{rid:{req.request_id}}}")
    assert claim.get(b"state") == b"DONE" and claim.get(b"subject") == other_sid.encode(), claim
    assert stub.UndoReversal(other, timeout=WAIT_S) == answered  # the answer, replayed
    with pytest.raises(grpc.RpcError) as err:
        stub.UndoReversal(req, timeout=WAIT_S)
    assert reason(err.value) == "IDEMPOTENCY_KEY_REUSED", err.value
    # The first settlement left reversed (every fen given back); the other's 4,000 fen taken again once.
    assert total_balances(rdb) == total - (HELPER - 1_000) - 4_000
    assert (balance(stub, patient), balance(stub, helper)) == (OWN, 1_000)
    assert (balance(stub, other_patient), balance(stub, other_helper)) == (0, HELPER - 3_000)
    assert stub.GetSettlement(pb.GetSettlementRequest(settlement_id=sid)).result.state == "REVERSED"
    assert rdb.zcard(K.open_settlements()) == 0
