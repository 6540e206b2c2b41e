"""3201 / 3202 of settlements the router's index has no entry of: one settled at a registry directly
(not through the router), and one whose entry the router's Redis lost, then reversed through the
router. The registries hold both, with the money: a 3202 row of either is compared with the
registry's record, never answered MISSING_ON_PLATFORM (a HIS that took that at its word would
collect the bill a second time), and the reversal the router noted counts in its day.
"""

from __future__ import annotations

import itertools

import redis
from conftest import National, RunningRouter
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.router.v1 import router_pb2 as pb
from support import balance, credit, enroll

INST = pb.Institution(fixmedins_code="H13010100077", mdtrtarea_admvs="130100")
T = 10.0
_seq = itertools.count(1)


def msgid() -> str:
    return f"{INST.fixmedins_code}20261122100000{next(_seq) % 10_000:04d}"


def settle(router: RunningRouter, psn: str, amount: int) -> pb.SetlInfo:
    return router.stub.Settle(pb.SettleRequest(msgid=msgid(), institution=INST, input=pb.SettleInput(
        psn_no=psn, psn_part_amt_fen=amount, medfee_sumamt_fen=amount, acct_used_flag="1",
        category=cpb.CATEGORY_OUTPATIENT)), timeout=T).setlinfo


def test_a_3202_finds_settlements_the_router_index_lacks_at_the_registry(
        start_router, national: National, rdb: redis.Redis):
    router = start_router(batch=False)
    hb = national.reg("13")
    p = enroll(hb)
    credit(hb, p, 100_000)
    lost = settle(router, p, 1_000)
    kept = settle(router, p, 500)
    # The router's Redis lost the first settlement's entry (restored from an older snapshot) …
    index = f"rtr:{{inst:{INST.fixmedins_code}}}"
    rdb.hdel(f"{index}:info", lost.setl_id)
    rdb.zrem(f"{index}:setl", lost.setl_id)
    # … and another was settled at the registry directly, for this institution.
    direct = hb.Settle(rpb.SettleRequest(
        request_id=msgid(), patient_id_number=p, amount_fen=300, use_account=True,
        category=cpb.CATEGORY_OUTPATIENT, institution_code=INST.fixmedins_code, institution_admdvs="130100")).result
    refund = router.stub.ReverseSettlement(pb.ReverseSettlementRequest(
        msgid=msgid(), institution=INST, setl_id=lost.setl_id, psn_no=p), timeout=T)
    assert refund.acct_refund_fen == 1_000 and balance(hb, p) == 100_000 - 500 - 300

    rows = [pb.DetailRow(setl_id=lost.setl_id, medfee_sumamt_fen=1_000, acct_pay_fen=1_000, refd_setl_flag="1"),
            pb.DetailRow(setl_id=kept.setl_id, medfee_sumamt_fen=500, acct_pay_fen=500, refd_setl_flag="0"),
            pb.DetailRow(setl_id=direct.settlement_id, medfee_sumamt_fen=300, acct_pay_fen=300),
            pb.DetailRow(setl_id=refund.reversal_id, medfee_sumamt_fen=-1_000, acct_pay_fen=-1_000,
                         refd_setl_flag="1")]
    got = router.stub.ReconcileDetails(pb.ReconcileDetailsRequest(
        msgid=msgid(), institution=INST, statement=pb.Statement(stmt_begndate="2026-11-22",
                                                                stmt_enddate="2026-11-22"), rows=rows), timeout=T)
    assert (got.stmt_rslt, [(m.setl_id, m.kind) for m in got.mismatches]) == ("0", []), got
    assert got.platform_cnt == 4
    # A row the platform really lacks is still named so, and a wrong amount still differs.
    rows[2].acct_pay_fen = 299
    rows.append(pb.DetailRow(setl_id=msgid(), medfee_sumamt_fen=100, acct_pay_fen=100))
    got = router.stub.ReconcileDetails(pb.ReconcileDetailsRequest(
        msgid=msgid(), institution=INST, statement=pb.Statement(stmt_begndate="2026-11-22",
                                                                stmt_enddate="2026-11-22"), rows=rows), timeout=T)
    assert [(m.setl_id, m.kind) for m in got.mismatches] == [
        (direct.settlement_id, "AMOUNT_DIFFERS"), (rows[-1].setl_id, "MISSING_ON_PLATFORM")], got
    # 3201 counts the reversal the router noted and the settlement it names (settled that day, though its
    # entry is lost). It cannot find the one settled at the registry directly, which nothing names:
    # docs/reconciliation.md, limits.
    t = router.stub.ReconcileTotals(pb.ReconcileTotalsRequest(
        msgid=msgid(), institution=INST, statement=pb.Statement(
            stmt_begndate="2026-11-22", stmt_enddate="2026-11-22")), timeout=T).platform
    assert (t.fixmedins_setl_cnt, t.medfee_sumamt_fen, t.acct_pay_fen) == (3, 1_000 + 500 - 1_000, 1_000 + 500 - 1_000)


def test_a_3201_counts_the_settlement_of_a_reversal_it_counts_when_its_entry_is_lost(
        start_router, national: National, rdb: redis.Redis):
    """A settlement whose index entry the router's Redis lost, reversed through the router the same day:
    the reversal is noted, and names the settlement. The day's refund is counted, so is the settlement it
    reverses (settled that day, by its record): never a refund without the bill, which no HIS can match."""
    router = start_router(batch=False)
    hb = national.reg("13")
    p = enroll(hb)
    credit(hb, p, 10_000)
    lost = settle(router, p, 1_000)
    index = f"rtr:{{inst:{INST.fixmedins_code}}}"
    rdb.hdel(f"{index}:info", lost.setl_id)
    rdb.zrem(f"{index}:setl", lost.setl_id)
    refund = router.stub.ReverseSettlement(pb.ReverseSettlementRequest(
        msgid=msgid(), institution=INST, setl_id=lost.setl_id, psn_no=p), timeout=T)
    for flag, want in (("1", (2, 0, 0)), ("", (2, 0, 0)), ("0", (0, 0, 0))):
        got = router.stub.ReconcileTotals(pb.ReconcileTotalsRequest(
            msgid=msgid(), institution=INST, statement=pb.Statement(
                stmt_begndate="2026-11-22", stmt_enddate="2026-11-22", refd_setl_flag=flag),
            totals=pb.Totals(fixmedins_setl_cnt=want[0], medfee_sumamt_fen=want[1], acct_pay_fen=want[2])),
            timeout=T)
        t = got.platform
        assert (t.fixmedins_setl_cnt, t.medfee_sumamt_fen, t.acct_pay_fen) == want, (flag, got)
        assert got.stmt_rslt == "0", (flag, got.stmt_rslt_dscr)
    # A detail that lists the refund record and leaves out the bill it reverses is told so.
    got = router.stub.ReconcileDetails(pb.ReconcileDetailsRequest(
        msgid=msgid(), institution=INST, statement=pb.Statement(stmt_begndate="2026-11-22", stmt_enddate="2026-11-22"),
        rows=[pb.DetailRow(setl_id=refund.reversal_id, medfee_sumamt_fen=-1_000, acct_pay_fen=-1_000,
                           refd_setl_flag="1")]), timeout=T)
    assert [(m.setl_id, m.kind) for m in got.mismatches] == [(lost.setl_id, "MISSING_AT_INSTITUTION")], got
