"""A 2601 冲正 of a 2207 across a rolling upgrade: a router of an earlier release reversed the settlement
for the 2601 without saying it was a 冲正 (no `ReverseSettlementRequest.cancel`), and the answer was
lost; the hospital resends the 2601, now served by an upgraded router, which says so. It is the same
request: answered as the first time (REVERSED), never IDEMPOTENCY_KEY_REUSED, and nothing moves twice.
"""

from __future__ import annotations

import itertools

from conftest import National
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.router.v1 import router_pb2 as pb
from support import balance, settled_at_router

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
