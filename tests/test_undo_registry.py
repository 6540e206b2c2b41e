"""Undoing a reversal (冲正 of a 2208) in one registry, in-process: a crash after the own-account share
was taken is finished by a retry or by the recovery loop, forward when every source still covers its
share, back (every fen returned, the settlement left reversed) when one no longer does. No fen is
created or lost on any path."""

from __future__ import annotations

import grpc
import pytest
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.service import InjectedFault
from medaid.registry.v1 import registry_pb2 as pb
from support import balance, bind, credit, enroll, reason, rid, settle_request, snapshot, total_balances

OWN, HELPER = 1_000, 10_000


class CrashAfterBegin:
    def __init__(self) -> None:
        self.fired = False

    def __call__(self, point: str) -> None:
        if point == "undo.after_begin" and not self.fired:
            self.fired = True
            raise InjectedFault(point)


@pytest.fixture
def reversed_settlement(hebei):
    s = hebei.stub
    patient, helper = enroll(s, birth="19600101"), enroll(s)
    credit(s, patient, OWN)
    credit(s, helper, HELPER)
    bind(s, helper, patient, relation=cpb.RELATION_CHILD)
    req = settle_request(patient, 4_000)
    assert s.Settle(req).result.mulaid_pay_fen == 3_000
    rev = rid("2208")
    s.ReverseSettlement(pb.ReverseSettlementRequest(request_id=rev, settlement_id=req.request_id))
    return hebei, patient, helper, req.request_id, rev


def _crash(call) -> None:
    with pytest.raises(grpc.RpcError) as ei:
        call()
    assert ei.value.code() in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)


def _undo_crashed_after_begin(hebei, rev: str) -> pb.UndoReversalRequest:
    """A 2601 of reversal `rev` whose process dies once the own share is taken; the request, to resend."""
    req = pb.UndoReversalRequest(request_id=rid("2601"), reversal_id=rev)
    hebei.registry.fault_hook = CrashAfterBegin()
    try:
        _crash(lambda: hebei.stub.UndoReversal(req))
    finally:
        hebei.registry.fault_hook = None
    return req


def test_undo_crashed_after_begin_is_finished_by_the_retry(reversed_settlement, rdb):
    hebei, patient, helper, sid, rev = reversed_settlement
    total = total_balances(rdb)
    req = _undo_crashed_after_begin(hebei, rev)
    assert total_balances(rdb) == total - OWN  # the own share only, so far
    done = hebei.stub.UndoReversal(req)
    assert (done.outcome, done.acct_pay_fen, done.mulaid_pay_fen) == ("RESTORED", OWN, 3_000)
    assert hebei.stub.UndoReversal(req) == done
    assert (balance(hebei.stub, patient), balance(hebei.stub, helper)) == (0, HELPER - 3_000)
    assert total_balances(rdb) == total - 4_000
    assert hebei.stub.GetSettlement(pb.GetSettlementRequest(settlement_id=sid)).result.state == "SETTLED"
    # Reversed again: the money comes back under the undo's own marks, once.
    again = hebei.stub.ReverseSettlement(pb.ReverseSettlementRequest(request_id=rid("2208"), settlement_id=sid))
    assert (again.acct_refund_fen, again.mulaid_refund_fen) == (OWN, 3_000)
    assert total_balances(rdb) == total


def test_undo_crashed_then_short_is_given_back_by_the_recovery_loop(reversed_settlement, rdb, loop_thread):
    hebei, patient, helper, sid, rev = reversed_settlement
    total = total_balances(rdb)
    req = _undo_crashed_after_begin(hebei, rev)
    # Meanwhile the helper pays a bill of their own: their 3,000 share is no longer there.
    hebei.stub.Settle(settle_request(helper, HELPER - 1_000))
    hebei.clock.advance(60_000)  # past the recovery grace
    counts = loop_thread.run(hebei.registry.recover())
    assert counts.restored == 1
    assert (balance(hebei.stub, patient), balance(hebei.stub, helper)) == (OWN, 1_000)
    assert total_balances(rdb) == total - (HELPER - 1_000)
    got = hebei.stub.GetSettlement(pb.GetSettlementRequest(settlement_id=sid)).result
    assert got.state == "REVERSED"
    # The refused 2601 left no answer: resent, it is judged afresh (and refused: still short).
    with pytest.raises(grpc.RpcError) as ei:
        hebei.stub.UndoReversal(req)
    assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION



def _unbind(stub, helper: str, member: str) -> None:
    stub.UnbindMutualAid(pb.UnbindMutualAidRequest(request_id=rid("unbind"), helper_id_number=helper,
                                                   member_id_number=member))


def test_undo_refused_once_the_helper_has_unbound(reversed_settlement, rdb):
    """No settlement charges a helper for a member once their unbind answered (rules.md): the undo of
    the reversal is refused before anything moves, as when the helper's balance falls short."""
    hebei, patient, helper, sid, rev = reversed_settlement
    _unbind(hebei.stub, helper, patient)
    total, before = total_balances(rdb), snapshot(rdb)
    with pytest.raises(grpc.RpcError) as ei:
        hebei.stub.UndoReversal(pb.UndoReversalRequest(request_id=rid("2601"), reversal_id=rev))
    assert (ei.value.code(), reason(ei.value)) == (grpc.StatusCode.FAILED_PRECONDITION, "UNDO_SOURCE_SHORT")
    assert snapshot(rdb) == before and total_balances(rdb) == total
    assert balance(hebei.stub, helper) == HELPER


def test_undo_cut_by_a_crash_then_the_helper_unbinds_gives_everything_back(reversed_settlement, rdb):
    """The helper unbinds after the undo's own share was taken (its process died, its lock went):
    the retry charges no one and gives the own share back; the settlement stays reversed."""
    hebei, patient, helper, sid, rev = reversed_settlement
    total = total_balances(rdb)
    req = _undo_crashed_after_begin(hebei, rev)
    _unbind(hebei.stub, helper, patient)
    with pytest.raises(grpc.RpcError) as ei:
        hebei.stub.UndoReversal(req)
    assert reason(ei.value) == "UNDO_SOURCE_SHORT"
    assert hebei.stub.GetSettlement(pb.GetSettlementRequest(settlement_id=sid)).result.state == "REVERSED"
    assert (balance(hebei.stub, patient), balance(hebei.stub, helper)) == (OWN, HELPER)
    assert total_balances(rdb) == total


@pytest.mark.parametrize("atomic", [True, False], ids=["atomic", "staged"])
def test_a_late_original_of_a_voided_request_is_refused_as_cancelled(start_registry, rdb, atomic: bool):
    """A 2601 that reached the registry before its 2207 voided the id (CancelRequest → VOIDED): the 2207
    arriving after is refused ORIGINAL_CANCELLED (not IDEMPOTENCY_KEY_REUSED: the hospital must learn
    that its own 冲正 cancelled it), alone or in a batch, on either path, and writes nothing."""
    running = start_registry("13")
    running.registry.atomic = atomic
    s = running.stub
    patient, helper = enroll(s), enroll(s)
    credit(s, patient, 1_000)
    credit(s, helper, 10_000)
    bind(s, helper, patient, relation=cpb.RELATION_SPOUSE)
    never = rid("2207")
    void = s.CancelRequest(pb.CancelRequestRequest(request_id=rid("2601"), original_request_id=never))
    assert void.outcome == "VOIDED"
    before = snapshot(rdb)
    with pytest.raises(grpc.RpcError) as exc:
        s.Settle(settle_request(patient, 3_000, request_id=never))
    assert (exc.value.code(), reason(exc.value)) == (grpc.StatusCode.FAILED_PRECONDITION, "ORIGINAL_CANCELLED")
    assert snapshot(rdb) == before
    batch = s.SettleBatch(pb.SettleBatchRequest(requests=[settle_request(patient, 3_000, request_id=never),
                                                          settle_request(patient, 500)]))
    assert batch.outcomes[0].error.reason == "ORIGINAL_CANCELLED"
    assert batch.outcomes[1].response.result.acct_pay_fen == 500  # its neighbour settles
    assert balance(s, patient) == 500 and balance(s, helper) == 10_000
    # A 2208 whose id a 2601 voided first: the same.
    sid = batch.outcomes[1].response.result.settlement_id
    voided_rev = rid("2208")
    assert s.CancelRequest(pb.CancelRequestRequest(request_id=rid("2601"),
                                                   original_request_id=voided_rev)).outcome == "VOIDED"
    before = snapshot(rdb)
    with pytest.raises(grpc.RpcError) as exc:
        s.ReverseSettlement(pb.ReverseSettlementRequest(request_id=voided_rev, settlement_id=sid))
    assert reason(exc.value) == "ORIGINAL_CANCELLED"
    assert snapshot(rdb) == before and balance(s, patient) == 500


def test_a_cancels_id_reused_for_another_original_is_refused_and_voids_nothing(hebei, rdb):
    """SPEC §7 for CancelRequest's own id: a resend answers the first answer; the same id naming another
    original is refused IDEMPOTENCY_KEY_REUSED and voids nothing, so that original, arriving, settles. The
    void itself is the original's: a 2601 under another id of a voided original answers as the first."""
    s = hebei.stub
    patient = enroll(s)
    credit(s, patient, 1_000)
    cancel, first_orig, other_orig = rid("2601"), rid("2207"), rid("2207")
    req = pb.CancelRequestRequest(request_id=cancel, original_request_id=first_orig)
    first = s.CancelRequest(req)
    assert first.outcome == "VOIDED"
    assert s.CancelRequest(req) == first
    before = snapshot(rdb)
    with pytest.raises(grpc.RpcError) as exc:
        s.CancelRequest(pb.CancelRequestRequest(request_id=cancel, original_request_id=other_orig))
    assert (exc.value.code(), reason(exc.value)) == (grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
    assert snapshot(rdb) == before
    # The other original was never voided: it settles.
    assert s.Settle(settle_request(patient, 300, request_id=other_orig)).result.acct_pay_fen == 300
    assert balance(s, patient) == 700
    # Another 2601 of the voided original: the same answer as the first void, and the original stays refused.
    assert s.CancelRequest(pb.CancelRequestRequest(request_id=rid("2601"), original_request_id=first_orig)) == first
    with pytest.raises(grpc.RpcError) as exc:
        s.Settle(settle_request(patient, 300, request_id=first_orig))
    assert reason(exc.value) == "ORIGINAL_CANCELLED"
    assert balance(s, patient) == 700


def test_a_cancel_that_finds_its_original_used_leaves_its_id_to_the_undo(hebei, rdb):
    """A cancel of an original that settled reports it (USED) and writes nothing: its id is the router's
    reversal's next (the 2601's msgid is both), which then reverses the settlement, and a resend of the
    cancel reports it again."""
    s = hebei.stub
    patient = enroll(s)
    credit(s, patient, 1_000)
    orig = settle_request(patient, 400)
    s.Settle(orig)
    cancel = pb.CancelRequestRequest(request_id=rid("2601"), original_request_id=orig.request_id)
    before = snapshot(rdb)
    used = s.CancelRequest(cancel)
    assert (used.outcome, used.op, used.settlement_id, used.finished) == ("USED", "settle", orig.request_id, True)
    assert snapshot(rdb) == before
    rev = s.ReverseSettlement(pb.ReverseSettlementRequest(request_id=cancel.request_id,
                                                          settlement_id=orig.request_id, cancel=True))
    assert rev.acct_refund_fen == 400 and balance(s, patient) == 1_000
    assert s.CancelRequest(cancel) == used


def test_an_undo_begun_before_records_kept_their_ref_finishes_under_its_old_ref(reversed_settlement, rdb):
    """An undo begun before records kept their attempt's money ref (`restore_ref`) moved the own share
    under `<sid>:u<n>`: resumed, it charges the helper and settles under that ref, and the next
    reversal returns every fen under it."""
    hebei, patient, helper, sid, rev = reversed_settlement
    total = total_balances(rdb)
    req = _undo_crashed_after_begin(hebei, rev)
    assert rdb.hdel(hebei.registry.k.settlement(patient, sid), "restore_ref") == 1
    done = hebei.stub.UndoReversal(req)
    assert (done.outcome, done.acct_pay_fen, done.mulaid_pay_fen) == ("RESTORED", OWN, 3_000)
    assert rdb.hget(hebei.registry.k.settlement(patient, sid), "money_ref") == f"{sid}:u1".encode()
    assert rdb.hexists(hebei.registry.k.applied(helper), f"{sid}:u1")
    again = hebei.stub.ReverseSettlement(pb.ReverseSettlementRequest(request_id=rid("2208"), settlement_id=sid))
    assert (again.acct_refund_fen, again.mulaid_refund_fen) == (OWN, 3_000)
    assert (balance(hebei.stub, patient), balance(hebei.stub, helper)) == (OWN, HELPER)
    assert total_balances(rdb) == total
