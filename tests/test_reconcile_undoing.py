"""A reversal that a 2601 冲正 is undoing (the record RESTORING: its process died after taking the
own-account share back) as a reconciliation clerk sees it. Whether the reversal still stands depends
on how the undo ends (a source short puts it back to REVERSED), so the day it is dated in is not 平
until the undo is finished: 3201 counts it in progress, a 3202 row of its refund record is
IN_PROGRESS (not MISSING_ON_PLATFORM), and 5203 of the refund answers IN_PROGRESS without balances.
Once the 2601 is resent and finishes, the refund no longer stands and the day is 平 without it.
"""

from __future__ import annotations

import itertools

import grpc
import pytest
from conftest import National, RunningRouter
from medaid.registry.service import InjectedFault
from medaid.router.v1 import router_pb2 as pb
from support import balance, settled_at_router

INST = pb.Institution(fixmedins_code="H13010100077", mdtrtarea_admvs="130100")
T = 10.0
DAY_MS = 86_400_000
_seq = itertools.count(1)


def msgid() -> str:
    return f"{INST.fixmedins_code}20261122110000{next(_seq) % 10_000:04d}"


def totals(router: RunningRouter, day: str, count: int = 0, fen: int = 0) -> pb.ReconcileTotalsResponse:
    return router.stub.ReconcileTotals(pb.ReconcileTotalsRequest(
        msgid=msgid(), institution=INST, statement=pb.Statement(stmt_begndate=day, stmt_enddate=day),
        totals=pb.Totals(fixmedins_setl_cnt=count, medfee_sumamt_fen=fen, acct_pay_fen=fen)), timeout=T)


def test_a_reversal_being_undone_keeps_its_day_open_until_the_undo_is_done(start_router, national: National):
    router = start_router(batch=False)
    hb = national.reg("13")
    p, s = settled_at_router(router.stub, hb, INST, msgid())
    national.clock.advance(DAY_MS)  # the 2208 is the next day's
    rev = msgid()
    router.stub.ReverseSettlement(pb.ReverseSettlementRequest(msgid=rev, institution=INST, setl_id=s.setl_id,
                                                              psn_no=p), timeout=T)
    assert totals(router, "2026-11-23", 1, -1_000).stmt_rslt == "0"

    def crash(point: str) -> None:
        if point == "undo.after_begin":
            raise InjectedFault(point)

    undo = pb.UndoRequest(msgid=msgid(), institution=INST, psn_no=p, omsgid=rev, oinfno="2208")
    national.registries["13"].registry.fault_hook = crash
    try:
        with pytest.raises(grpc.RpcError):
            router.stub.Undo(undo, timeout=T)
    finally:
        national.registries["13"].registry.fault_hook = None
    assert balance(hb, p) == 99_000  # the own share is taken again; the helpers' (none) and the end are not

    for count, fen in ((1, -1_000), (0, 0)):  # neither the refund counted nor left out is 平 meanwhile
        got = totals(router, "2026-11-23", count, fen)
        assert (got.stmt_rslt, got.in_progress_cnt) == ("1", 1), got
        assert "正在处理" in got.stmt_rslt_dscr
    details = router.stub.ReconcileDetails(pb.ReconcileDetailsRequest(
        msgid=msgid(), institution=INST, statement=pb.Statement(stmt_begndate="2026-11-23", stmt_enddate="2026-11-23"),
        rows=[pb.DetailRow(setl_id=rev, medfee_sumamt_fen=-1_000, acct_pay_fen=-1_000, refd_setl_flag="1")]),
        timeout=T)
    assert [(m.setl_id, m.kind) for m in details.mismatches] == [(rev, "IN_PROGRESS")], details
    refund = router.stub.QuerySettlement(pb.QuerySettlementRequest(msgid=msgid(), institution=INST, psn_no=p,
                                                                   setl_id=rev), timeout=T).settlement
    assert (refund.state, refund.setlinfo.setl_id, refund.setlinfo.HasField("balc_fen")) == ("IN_PROGRESS", rev, False)
    own = router.stub.QuerySettlement(pb.QuerySettlementRequest(msgid=msgid(), institution=INST, psn_no=p,
                                                                setl_id=s.setl_id), timeout=T).settlement
    assert (own.state, own.setlinfo.HasField("balc_fen")) == ("IN_PROGRESS", False)

    assert router.stub.Undo(undo, timeout=T).outcome == "RESTORED"
    assert balance(hb, p) == 99_000
    got = totals(router, "2026-11-23")
    assert (got.stmt_rslt, got.in_progress_cnt, got.platform.fixmedins_setl_cnt) == ("0", 0, 0), got
    assert totals(router, "2026-11-22", 1, 1_000).stmt_rslt == "0"
