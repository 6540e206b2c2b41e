"""A 2601 冲正 of a 2207 across a rolling upgrade: a router of an earlier release reversed the settlement
for the 2601 without saying it was a 冲正 (no `ReverseSettlementRequest.cancel`), and the answer was
lost; the hospital resends the 2601, now served by an upgraded router, which says so. It is the same
request: answered as the first time (REVERSED), never IDEMPOTENCY_KEY_REUSED, and nothing moves twice.
"""

from __future__ import annotations

import itertools

import grpc
import pytest
from conftest import National
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.router.v1 import router_pb2 as pb
from support import balance, credit, enroll, reason, rid, settle_request, settled_at_router

INST = pb.Institution(fixmedins_code="H13010100077", mdtrtarea_admvs="130100")
T = 10.0
_seq = itertools.count(1)


def msgid() -> str:
    return f"{INST.fixmedins_code}20261122120000{next(_seq) % 10_000:04d}"


def test_a_2601_resent_through_an_upgraded_router_gets_its_first_answer(start_router, national: National):
    router = start_router(batch=False)
    hb = national.reg("13")
    p, s = settled_at_router(router.stub, hb, INST, msgid())
    undo = msgid()
    # What the earlier router asked of the registry for this 2601 (the reversal's id is the 2601's msgid).
    first = hb.ReverseSettlement(rpb.ReverseSettlementRequest(request_id=undo, settlement_id=s.setl_id))
    assert balance(hb, p) == 100_000
    again = hb.ReverseSettlement(rpb.ReverseSettlementRequest(request_id=undo, settlement_id=s.setl_id, cancel=True))
    assert again == first
    out = router.stub.Undo(pb.UndoRequest(msgid=undo, institution=INST, psn_no=p, omsgid=s.setl_id, oinfno="2207"),
                           timeout=T)
    assert (out.outcome, out.setl_id, out.acct_pay_fen) == ("REVERSED", s.setl_id, 1_000), out
    assert balance(hb, p) == 100_000


def test_a_void_left_by_an_earlier_release_is_answered_to_its_resent_cancel(hebei, rdb):
    """An earlier release voided an original without claiming the cancel's own id (the original's claim,
    as request_void.lua writes it, is all it left). The same cancel resent, by a router of either release,
    is answered VOIDED as the first time; its id is held from then on, and the original stays refused."""
    s = hebei.stub
    cancel, orig = rid("2601"), rid("2207")
    rdb.hset(f"reg:13:{{rid:{orig}}}", mapping={"fp": "void", "op": "void", "subject": cancel, "state": "VOID",
                                                 "at": "1"})
    req = rpb.CancelRequestRequest(request_id=cancel, original_request_id=orig)
    assert s.CancelRequest(req).outcome == "VOIDED"
    assert s.CancelRequest(req).outcome == "VOIDED"
    with pytest.raises(grpc.RpcError) as exc:
        s.CancelRequest(rpb.CancelRequestRequest(request_id=cancel, original_request_id=rid("2207")))
    assert reason(exc.value) == "IDEMPOTENCY_KEY_REUSED"
    patient = enroll(s)
    credit(s, patient, 1_000)
    with pytest.raises(grpc.RpcError) as exc:
        s.Settle(settle_request(patient, 300, request_id=orig))
    assert reason(exc.value) == "ORIGINAL_CANCELLED"
    assert balance(s, patient) == 1_000
