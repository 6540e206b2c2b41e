"""3201 / 3202 across day and month boundaries (Asia/Shanghai) and reversals of an earlier period.

Real registries, wallet, router and Redis, in-process, on one clock the tests move: a settlement
belongs to the Beijing day of its settlement time, a reversal to the day of its reversal time, so a
period's figures do not change when a settlement of it is reversed in a later period (refunds
counted, refd_setl_flag 1 or empty), and 3202 agrees with 3201 on the same period.
"""

from __future__ import annotations

import datetime as dt
import itertools

from conftest import National, RunningRouter
from medaid.common.clock import SHANGHAI
from medaid.common.v1 import common_pb2 as cpb
from medaid.router.v1 import router_pb2 as pb
from support import credit, enroll

INST = pb.Institution(fixmedins_code="H13010100088", mdtrtarea_admvs="130100")
T = 10.0
_seq = itertools.count(1)


def at(month: int, day: int, hour: int, minute: int = 0) -> int:
    return int(dt.datetime(2026, month, day, hour, minute, tzinfo=SHANGHAI).timestamp() * 1000)


def msgid() -> str:
    return f"{INST.fixmedins_code}20261122100000{next(_seq) % 10_000:04d}"


def settle(router: RunningRouter, psn: str, amount: int) -> pb.SetlInfo:
    return router.stub.Settle(pb.SettleRequest(msgid=msgid(), institution=INST, input=pb.SettleInput(
        psn_no=psn, psn_part_amt_fen=amount, medfee_sumamt_fen=amount, acct_used_flag="1",
        category=cpb.CATEGORY_OUTPATIENT)), timeout=T).setlinfo


def statement(begin: str, end: str, flag: str = "") -> pb.Statement:
    return pb.Statement(stmt_begndate=begin, stmt_enddate=end, refd_setl_flag=flag)


def totals(router: RunningRouter, begin: str, end: str, flag: str = "") -> tuple[int, int]:
    t = router.stub.ReconcileTotals(pb.ReconcileTotalsRequest(
        msgid=msgid(), institution=INST, statement=statement(begin, end, flag)), timeout=T).platform
    return t.fixmedins_setl_cnt, t.acct_pay_fen


def test_a_settlement_reversed_in_a_later_month_stands_in_its_own_months_3201_and_3202(
        start_router, national: National):
    """A 2207 at 23:30 on 31 October (Beijing; 15:30 UTC), another at 00:30 on 1 November (still 31
    October in UTC), the first reversed by a 2208 on 2 November. October counts the first as it
    stood at the month's end, whether the 3202 lists it as standing (a hospital system that keeps the
    refund as a record of its own, in November's detail) or as reversed since; November counts the
    second and the refund, negative. 3201 and 3202 agree on each month."""
    router = start_router(batch=False)
    hb = national.reg("13")
    p = enroll(hb)
    credit(hb, p, 100_000)
    national.clock.set(at(10, 31, 23, 30))
    october = settle(router, p, 1_000)
    national.clock.set(at(11, 1, 0, 30))
    november = settle(router, p, 2_000)
    national.clock.set(at(11, 2, 10))
    refund = router.stub.ReverseSettlement(pb.ReverseSettlementRequest(
        msgid=msgid(), institution=INST, setl_id=october.setl_id, psn_no=p), timeout=T)
    assert totals(router, "2026-10-31", "2026-10-31") == (1, 1_000)
    assert totals(router, "2026-10-01", "2026-10-31") == (1, 1_000)
    assert totals(router, "2026-11-01", "2026-11-01") == (1, 2_000)
    assert totals(router, "2026-11-01", "2026-11-30") == (2, 1_000)

    def details(begin: str, end: str, *rows: tuple[str, int, str]) -> pb.ReconcileDetailsResponse:
        return router.stub.ReconcileDetails(pb.ReconcileDetailsRequest(
            msgid=msgid(), institution=INST, statement=statement(begin, end), rows=[
                pb.DetailRow(setl_id=s, medfee_sumamt_fen=fen, acct_pay_fen=fen, refd_setl_flag=flag)
                for s, fen, flag in rows]), timeout=T)

    for flag in ("0", "1"):  # as it stood at October's end, or as it stands now
        got = details("2026-10-01", "2026-10-31", (october.setl_id, 1_000, flag))
        assert (got.stmt_rslt, [(m.setl_id, m.kind) for m in got.mismatches]) == ("0", []), got
    got = details("2026-11-01", "2026-11-30", (november.setl_id, 2_000, "0"), (refund.reversal_id, -1_000, "1"))
    assert (got.stmt_rslt, list(got.mismatches)) == ("0", []), got
    # A settlement reversed inside the period and listed as standing is still a mismatch.
    national.clock.set(at(11, 3, 9))
    third = settle(router, p, 3_000)
    router.stub.ReverseSettlement(pb.ReverseSettlementRequest(
        msgid=msgid(), institution=INST, setl_id=third.setl_id, psn_no=p), timeout=T)
    got = details("2026-11-03", "2026-11-03", (third.setl_id, 3_000, "0"))
    assert [(m.setl_id, m.kind) for m in got.mismatches] == [(third.setl_id, "REVERSED")], got
