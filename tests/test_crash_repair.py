"""Crash at every fault point of settlement and reversal, then retry the same request id: the retry
repairs the half-done work, every account moves exactly once, and money is conserved. Also: a paused
lock holder whose lease was overtaken cannot write with its stale fencing token."""

from __future__ import annotations

import json
import time
from typing import Any

import grpc
import pytest
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.service import FAULT_POINTS, InjectedFault
from medaid.registry.v1 import registry_pb2 as pb
from support import balance, bind, credit, enroll, rid, settle_request, snapshot, total_balances

OWN, HELPER_BIG, HELPER_SMALL = 3_000, 50_000, 20_000
AMOUNT = 10_000
CREDITS = OWN + HELPER_BIG + HELPER_SMALL

SETTLE_POINTS = [p for p in FAULT_POINTS if p.startswith("settle.")]
REVERSE_POINTS = [p for p in FAULT_POINTS if p.startswith("reverse.")]
TRANSFER_POINTS = [p for p in FAULT_POINTS if p.startswith("transfer.")]


def test_fault_points_are_all_covered():
    """A fault point added to the registry without a crash test here makes this fail."""
    family = [p for p in FAULT_POINTS if p.startswith(("family.", "premium."))]  # tests/test_family_crash.py
    assert sorted(SETTLE_POINTS + REVERSE_POINTS + TRANSFER_POINTS + family) == sorted(FAULT_POINTS)
    assert SETTLE_POINTS and REVERSE_POINTS
    assert sorted(TRANSFER_POINTS) == ["transfer.after_debit", "transfer.after_refund"]


class FaultOnce:
    """A fault hook that crashes the first time execution passes `point`, then lets everything through."""

    def __init__(self, *points: str) -> None:
        self.pending = list(points)
        self.fired: list[str] = []
        self.seen: list[str] = []

    def __call__(self, point: str) -> None:
        self.seen.append(point)
        if self.pending and point == self.pending[0]:
            self.pending.pop(0)
            self.fired.append(point)
            raise InjectedFault(point)


@pytest.fixture
def family(hebei):
    """Patient: an employee with a small own balance; two helpers, the bigger one pays (LARGEST_BALANCE)."""
    s = hebei.stub
    patient, big, small = enroll(s, birth="19950101"), enroll(s), enroll(s, birth="19700101")
    credit(s, patient, OWN)
    credit(s, big, HELPER_BIG)
    credit(s, small, HELPER_SMALL)
    bind(s, small, patient, relation=cpb.RELATION_CHILD)
    bind(s, big, patient, relation=cpb.RELATION_CHILD)
    # These crash points lie between the staged scripts of the multi-account path (the path a
    # cluster, a wallet payment or a busy lock takes); on one Redis, without a wallet, the same
    # settlement is one atomic script (see test_inline_settlement_crash_then_retry_same_id).
    hebei.registry.atomic = False
    yield hebei, patient, big, small
    hebei.registry.atomic = True


def _ledger(rdb: Any, pid: str) -> list[dict[str, Any]]:
    return [json.loads(e) for e in rdb.lrange(f"reg:13:{{p:{pid}}}:ledger", 0, -1)]


def _entries(rdb: Any, pid: str, sid: str) -> list[tuple[str, int]]:
    return [(e["kind"], e["amount"]) for e in _ledger(rdb, pid) if e["ref"] == sid]


def _crashes(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as ei:
        call()
    assert ei.value.code() in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), ei.value.code()
    return ei.value


def _no_negative(rdb: Any) -> None:
    for key in rdb.scan_iter(match="reg:*:acct"):
        assert int(rdb.hget(key, "bal")) >= 0, key


def _assert_settled_once(s: Any, rdb: Any, patient: str, big: str, small: str, sid: str,
                         result: pb.SettlementResult) -> None:
    assert (result.settlement_id, result.amount_fen) == (sid, AMOUNT)
    assert (result.acct_pay_fen, result.wallet_pay_fen, result.mulaid_pay_fen, result.cash_pay_fen) == \
        (OWN, 0, AMOUNT - OWN, 0)
    assert result.helper_id_number == big and result.helper_reason == ""
    assert (result.balance_after_fen, result.helper_balance_after_fen) == (0, HELPER_BIG - (AMOUNT - OWN))
    assert (balance(s, patient), balance(s, big), balance(s, small)) == (0, HELPER_BIG - (AMOUNT - OWN), HELPER_SMALL)
    assert _entries(rdb, patient, sid) == [("SETTLE_OWN", -OWN)]
    assert _entries(rdb, big, sid) == [("SETTLE_HELPER", -(AMOUNT - OWN))]
    assert _entries(rdb, small, sid) == []
    assert total_balances(rdb) == CREDITS - (result.acct_pay_fen + result.mulaid_pay_fen)
    _no_negative(rdb)
    got = s.GetSettlement(pb.GetSettlementRequest(settlement_id=sid)).result
    assert (got.acct_pay_fen, got.mulaid_pay_fen, got.cash_pay_fen, got.state) == \
        (OWN, AMOUNT - OWN, 0, "SETTLED")
    for pid, role in ((big, "HELPER"), (patient, "MEMBER")):
        recs = s.ListConsumptionRecords(pb.ListConsumptionRecordsRequest(id_number=pid)).records
        assert [(r.settlement_id, r.role, r.mulaid_pay_fen, r.state) for r in recs] == \
            [(sid, role, AMOUNT - OWN, "SETTLED")]


@pytest.mark.parametrize("point", SETTLE_POINTS)
def test_settle_crash_then_retry_same_id(family, rdb, point):
    hebei, patient, big, small = family
    s = hebei.stub
    req = settle_request(patient, AMOUNT)
    hook = FaultOnce(point)
    hebei.registry.fault_hook = hook
    try:
        _crashes(lambda: s.Settle(req))
    finally:
        hebei.registry.fault_hook = None
    assert hook.fired == [point]
    # Whatever the crash left behind, nothing went negative and no fen was created.
    _no_negative(rdb)
    assert total_balances(rdb) in (CREDITS, CREDITS - OWN, CREDITS - AMOUNT)

    first = s.Settle(req).result
    _assert_settled_once(s, rdb, patient, big, small, req.request_id, first)
    # And replays from now on are plain replays.
    assert s.Settle(req).result == first
    _assert_settled_once(s, rdb, patient, big, small, req.request_id, first)


@pytest.mark.parametrize("inline", [True, False])
def test_inline_settlement_crash_then_retry_same_id(family, rdb, inline):
    """The whole waterfall in one script: a crash after it, before the answer is recorded, leaves a
    SETTLED record; the retry answers from it (same result) and moves no further fen."""
    hebei, patient, big, small = family
    hebei.registry.inline_settle = inline
    s = hebei.stub
    req = settle_request(patient, AMOUNT)
    hook = FaultOnce("settle.after_finish")
    hebei.registry.fault_hook = hook
    try:
        _crashes(lambda: s.Settle(req))
    finally:
        hebei.registry.fault_hook = None
    assert hook.fired == ["settle.after_finish"]
    assert total_balances(rdb) == CREDITS - AMOUNT
    first = s.Settle(req).result
    assert (first.acct_pay_fen, first.mulaid_pay_fen, first.helper_id_number) == (OWN, AMOUNT - OWN, big)
    _assert_settled_once(s, rdb, patient, big, small, req.request_id, first)
    assert s.Settle(req).result == first
    _assert_settled_once(s, rdb, patient, big, small, req.request_id, first)


def test_settle_crashes_again_during_each_repair(family, rdb):
    """Crash at one point, then crash the repair at the next point, and so on; the last retry finishes."""
    hebei, patient, big, small = family
    s = hebei.stub
    req = settle_request(patient, AMOUNT)
    for point in SETTLE_POINTS:
        hook = FaultOnce(point)
        hebei.registry.fault_hook = hook
        try:
            _crashes(lambda: s.Settle(req))
        finally:
            hebei.registry.fault_hook = None
        assert hook.fired == [point]
        _no_negative(rdb)
    result = s.Settle(req).result
    _assert_settled_once(s, rdb, patient, big, small, req.request_id, result)


@pytest.mark.parametrize("point", REVERSE_POINTS)
def test_reverse_crash_then_retry_same_id(family, rdb, point):
    hebei, patient, big, small = family
    s = hebei.stub
    sreq = settle_request(patient, AMOUNT)
    settled = s.Settle(sreq).result
    sid = sreq.request_id
    _assert_settled_once(s, rdb, patient, big, small, sid, settled)

    rreq = pb.ReverseSettlementRequest(request_id=rid("rev"), settlement_id=sid)
    hook = FaultOnce(point)
    hebei.registry.fault_hook = hook
    try:
        _crashes(lambda: s.ReverseSettlement(rreq))
    finally:
        hebei.registry.fault_hook = None
    assert hook.fired == [point]
    _no_negative(rdb)
    assert total_balances(rdb) in (CREDITS - AMOUNT, CREDITS - OWN, CREDITS)

    resp = s.ReverseSettlement(rreq)
    assert (resp.settlement_id, resp.reversal_id) == (sid, rreq.request_id)
    assert (resp.acct_refund_fen, resp.wallet_refund_fen, resp.mulaid_refund_fen) == (OWN, 0, AMOUNT - OWN)
    assert resp.helper_id_number == big
    assert (resp.balance_after_fen, resp.helper_balance_after_fen) == (OWN, HELPER_BIG)
    assert s.ReverseSettlement(rreq) == resp
    assert (balance(s, patient), balance(s, big), balance(s, small)) == (OWN, HELPER_BIG, HELPER_SMALL)
    assert _entries(rdb, patient, sid) == [("SETTLE_OWN", -OWN), ("REVERSE_OWN", OWN)]
    assert _entries(rdb, big, sid) == [("SETTLE_HELPER", -(AMOUNT - OWN)), ("REVERSE_HELPER", AMOUNT - OWN)]
    assert _entries(rdb, small, sid) == []
    assert total_balances(rdb) == CREDITS
    assert s.GetSettlement(pb.GetSettlementRequest(settlement_id=sid)).result.state == "REVERSED"
    for pid in (big, patient):
        recs = s.ListConsumptionRecords(pb.ListConsumptionRecordsRequest(id_number=pid)).records
        assert [(r.settlement_id, r.state) for r in recs] == [(sid, "REVERSED")]
    # Another reversal id cannot return the money a second time.
    with pytest.raises(grpc.RpcError) as ei:
        s.ReverseSettlement(pb.ReverseSettlementRequest(request_id=rid("rev"), settlement_id=sid))
    assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert total_balances(rdb) == CREDITS


def test_reverse_crashes_again_during_each_repair(family, rdb):
    hebei, patient, big, small = family
    s = hebei.stub
    sid = s.Settle(settle_request(patient, AMOUNT)).result.settlement_id
    rreq = pb.ReverseSettlementRequest(request_id=rid("rev"), settlement_id=sid)
    for point in REVERSE_POINTS:
        hook = FaultOnce(point)
        hebei.registry.fault_hook = hook
        try:
            _crashes(lambda: s.ReverseSettlement(rreq))
        finally:
            hebei.registry.fault_hook = None
        assert hook.fired == [point]
    s.ReverseSettlement(rreq)
    assert (balance(s, patient), balance(s, big), balance(s, small)) == (OWN, HELPER_BIG, HELPER_SMALL)
    assert _entries(rdb, big, sid) == [("SETTLE_HELPER", -(AMOUNT - OWN)), ("REVERSE_HELPER", AMOUNT - OWN)]
    assert total_balances(rdb) == CREDITS


# --- cross-province transfer steps (called by the national wallet) --------------------------


def test_transfer_debit_crash_then_retry_same_id(family, rdb):
    hebei, patient, big, small = family
    s = hebei.stub
    req = pb.DebitForTransferRequest(transfer_id=rid("xfer"), sender_id_number=big, amount_fen=20_000,
                                     recipient_province="11")
    hook = FaultOnce("transfer.after_debit")
    hebei.registry.fault_hook = hook
    try:
        _crashes(lambda: s.DebitForTransfer(req))
    finally:
        hebei.registry.fault_hook = None
    assert hook.fired == ["transfer.after_debit"]
    resp = s.DebitForTransfer(req)
    assert (resp.balance_after_fen, resp.replayed) == (HELPER_BIG - 20_000, True)
    again = s.DebitForTransfer(req)
    assert (again.balance_after_fen, again.replayed) == (HELPER_BIG - 20_000, True)
    assert balance(s, big) == HELPER_BIG - 20_000
    assert _entries(rdb, big, req.transfer_id) == [("TRANSFER_OUT", -20_000)]
    # 20 000 fen are in flight to the wallet: nothing else moved.
    assert total_balances(rdb) == CREDITS - 20_000
    _no_negative(rdb)


def test_transfer_refund_crash_then_retry_same_id(family, rdb):
    hebei, patient, big, small = family
    s = hebei.stub
    tid = rid("xfer")
    s.DebitForTransfer(pb.DebitForTransferRequest(transfer_id=tid, sender_id_number=big, amount_fen=20_000,
                                                  recipient_province="11"))
    req = pb.RefundTransferRequest(transfer_id=tid, sender_id_number=big, amount_fen=20_000)
    hook = FaultOnce("transfer.after_refund")
    hebei.registry.fault_hook = hook
    try:
        _crashes(lambda: s.RefundTransfer(req))
    finally:
        hebei.registry.fault_hook = None
    assert hook.fired == ["transfer.after_refund"]
    resp = s.RefundTransfer(req)
    assert (resp.refunded_fen, resp.balance_after_fen, resp.replayed) == (20_000, HELPER_BIG, True)
    assert s.RefundTransfer(req).refunded_fen == 20_000
    assert balance(s, big) == HELPER_BIG
    assert _entries(rdb, big, tid) == [("TRANSFER_OUT", -20_000), ("TRANSFER_RETURN", 20_000)]
    assert total_balances(rdb) == CREDITS
    # A late retry of the debit (same transfer id) never takes the money a second time.
    late = pb.DebitForTransferRequest(transfer_id=tid, sender_id_number=big, amount_fen=20_000,
                                      recipient_province="11")
    try:
        assert s.DebitForTransfer(late).replayed is True
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc.code()
    assert balance(s, big) == HELPER_BIG
    assert _entries(rdb, big, tid) == [("TRANSFER_OUT", -20_000), ("TRANSFER_RETURN", 20_000)]


# --- fencing: a paused lock holder -----------------------------------------------------------


def _settle_own_args(token: int, sid: str, patient: str, acct_pay: int) -> list[Any]:
    args: list[Any] = [token, sid, acct_pay, 1]
    for k, v in {"patient": patient, "amount": acct_pay, "acct_pay": acct_pay, "wallet_pay": 0,
                 "mulaid_pay": 0, "helper": "", "cash_pay": 0, "helper_reason": "", "wallet_reason": "",
                 "category": 1, "institution": "H13010100001", "at": 1}.items():
        args += [k, v]
    return args


def test_paused_holder_cannot_write_after_being_overtaken(family, rdb, loop_thread):
    hebei, patient, big, small = family
    reg = hebei.registry
    k = reg.k
    tag = k.person_tag(patient)

    # Holder A takes the patient lock with a short TTL, then "pauses" (GC, network) past it.
    lease_a = loop_thread.run(reg.locks.acquire(tag, 100, 1_000))
    time.sleep(0.2)
    assert rdb.exists(lease_a.key) == 0  # expired
    # Meanwhile a real settlement takes the lock (a newer token) and completes.
    done = hebei.stub.Settle(settle_request(patient, AMOUNT)).result
    assert (done.acct_pay_fen, done.mulaid_pay_fen) == (OWN, AMOUNT - OWN)
    assert int(rdb.get(k.fence(patient))) > lease_a.token

    # A wakes up and tries to open a settlement and debit the own account with its old token.
    credit(hebei.stub, patient, 1_000)
    before = snapshot(rdb)
    sid = rid("stale")
    status, _ = loop_thread.run(reg.lua["settle_open"](
        keys=[k.settlement(patient, sid), k.account(patient), k.ledger(patient), k.fence(patient)],
        args=_settle_own_args(lease_a.token, sid, patient, 1_000)))
    assert status == b"STALE"
    # A's release and extend are no-ops too.
    assert loop_thread.run(reg.locks.release(lease_a)) is False
    assert loop_thread.run(reg.locks.extend(lease_a, 10_000)) is False
    assert snapshot(rdb) == before
    assert balance(hebei.stub, patient) == 1_000

    # Control: the same call with the current token is accepted (so STALE above was the fence, not the args).
    lease_b = loop_thread.run(reg.locks.acquire(tag, 5_000, 1_000))
    status, _ = loop_thread.run(reg.lua["settle_open"](
        keys=[k.settlement(patient, sid), k.account(patient), k.ledger(patient), k.fence(patient)],
        args=_settle_own_args(lease_b.token, sid, patient, 1_000)))
    assert status == b"OK"
    assert balance(hebei.stub, patient) == 0
    assert loop_thread.run(reg.locks.release(lease_b)) is True


def test_crashed_settlement_cannot_be_finished_with_its_stale_token(family, rdb, loop_thread):
    """The attempt that crashed after the own-account debit holds a token; once another holder has taken
    the lock, finishing with that token is refused (STALE) and changes nothing; the retry then finishes."""
    hebei, patient, big, small = family
    reg = hebei.registry
    k = reg.k
    s = hebei.stub
    req = settle_request(patient, AMOUNT)
    sid = req.request_id
    reg.fault_hook = FaultOnce("settle.after_own_debit")
    try:
        _crashes(lambda: s.Settle(req))
    finally:
        reg.fault_hook = None
    rec = {kk.decode(): v for kk, v in rdb.hgetall(k.settlement(patient, sid)).items()}
    assert rec["state"] == b"OPEN"
    old_token = int(rdb.get(k.fence(patient)))  # the crashed attempt's: no holder has taken the lock since

    lease = loop_thread.run(reg.locks.acquire(k.person_tag(patient), 5_000, 1_000))
    assert lease.token > old_token
    before = snapshot(rdb)
    status, *_ = loop_thread.run(reg.lua["settle_finish"](
        keys=[k.settlement(patient, sid), k.fence(patient), k.consumption(patient), k.consumption_index(patient)],
        args=[old_token, 0, "state", "SETTLED", "cash_pay", AMOUNT - OWN, "charges", ""]))
    assert status == b"STALE"
    assert snapshot(rdb) == before
    assert loop_thread.run(reg.locks.release(lease)) is True

    # The real retry finishes it: the helper still pays, once.
    final = s.Settle(req).result
    _assert_settled_once(s, rdb, patient, big, small, sid, final)


def test_crashed_reversal_cannot_be_finished_with_its_stale_token(family, rdb, loop_thread):
    hebei, patient, big, small = family
    reg = hebei.registry
    k = reg.k
    s = hebei.stub
    sid = s.Settle(settle_request(patient, AMOUNT)).result.settlement_id
    rreq = pb.ReverseSettlementRequest(request_id=rid("rev"), settlement_id=sid)
    reg.fault_hook = FaultOnce("reverse.after_begin")
    try:
        _crashes(lambda: s.ReverseSettlement(rreq))
    finally:
        reg.fault_hook = None
    assert rdb.hget(k.settlement(patient, sid), "state") == b"REVERSING"
    old_token = int(rdb.get(k.fence(patient)))  # the crashed reversal's token

    lease = loop_thread.run(reg.locks.acquire(k.person_tag(patient), 5_000, 1_000))
    assert lease.token == old_token + 1
    before = snapshot(rdb)
    status, _ = loop_thread.run(reg.lua["reverse_finish"](
        keys=[k.settlement(patient, sid), k.account(patient), k.ledger(patient), k.fence(patient),
              k.consumption(patient)],
        args=[old_token, sid, OWN, 1, ""]))
    assert status == b"STALE"
    assert snapshot(rdb) == before
    assert balance(s, patient) == 0
    assert loop_thread.run(reg.locks.release(lease)) is True

    resp = s.ReverseSettlement(rreq)
    assert (resp.acct_refund_fen, resp.mulaid_refund_fen) == (OWN, AMOUNT - OWN)
    assert (balance(s, patient), balance(s, big), balance(s, small)) == (OWN, HELPER_BIG, HELPER_SMALL)
    assert total_balances(rdb) == CREDITS
