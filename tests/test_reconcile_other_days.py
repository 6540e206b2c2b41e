"""A 3202 row the platform holds in another period, as a reconciliation clerk meets it at midnight: a
2207 settled at 23:59:59.9 (Beijing) that the hospital system books the next day by its own clock,
reversed at 00:00:00.1 and that refund booked the day before. The platform holds both, dated by its
own times (docs/reconciliation.md): a row of either is OUT_OF_PERIOD with the platform's record and
its time, never MISSING_ON_PLATFORM ("平台无此结算"), which a cashier would take as the bill not paid
and collect again; what the platform truly lacks is still MISSING_ON_PLATFORM.
"""

from __future__ import annotations

import datetime as dt
import itertools

from conftest import National, RunningRouter
from medaid.common.clock import SHANGHAI
from medaid.common.v1 import common_pb2 as cpb
from medaid.router.v1 import router_pb2 as pb
from support import credit, enroll

INST = pb.Institution(fixmedins_code="H13010100055", mdtrtarea_admvs="130100")
T = 10.0
_seq = itertools.count(1)


def at(day: int, hour: int, minute: int = 0, second: int = 0, ms: int = 0) -> int:
    return int(dt.datetime(2026, 11, day, hour, minute, second, tzinfo=SHANGHAI).timestamp() * 1000) + ms


def msgid() -> str:
    return f"{INST.fixmedins_code}20261122100000{next(_seq) % 10_000:04d}"


def details(router: RunningRouter, day: str, *rows: pb.DetailRow, flag: str = "") -> list[tuple[str, str, int]]:
    got = router.stub.ReconcileDetails(pb.ReconcileDetailsRequest(
        msgid=msgid(), institution=INST, rows=rows,
        statement=pb.Statement(stmt_begndate=day, stmt_enddate=day, refd_setl_flag=flag)), timeout=T)
    assert got.stmt_rslt == "1", got
    return [(m.setl_id, m.kind, m.platform.setlinfo.setl_time_unix_ms) for m in got.mismatches]


def test_a_row_the_platform_dates_in_another_day_is_named_with_its_time(start_router, national: National):
    router = start_router(batch=False)
    hb = national.reg("13")
    p = enroll(hb)
    credit(hb, p, 100_000)
    national.clock.set(at(22, 23, 59, 59, 900))
    s = router.stub.Settle(pb.SettleRequest(msgid=msgid(), institution=INST, input=pb.SettleInput(
        psn_no=p, psn_part_amt_fen=2_000, medfee_sumamt_fen=2_000, acct_used_flag="1",
        category=cpb.CATEGORY_OUTPATIENT)), timeout=T).setlinfo
    national.clock.set(at(23, 0, 0, 0, 100))
    r = router.stub.ReverseSettlement(pb.ReverseSettlementRequest(
        msgid=msgid(), institution=INST, setl_id=s.setl_id, psn_no=p), timeout=T)
    national.clock.set(at(23, 10))
    bill = pb.DetailRow(setl_id=s.setl_id, medfee_sumamt_fen=2_000, acct_pay_fen=2_000, refd_setl_flag="1")
    refund = pb.DetailRow(setl_id=r.reversal_id, medfee_sumamt_fen=-2_000, acct_pay_fen=-2_000, refd_setl_flag="1")
    absent = pb.DetailRow(setl_id=msgid(), medfee_sumamt_fen=100, acct_pay_fen=100)
    # The bill listed on the 23rd (with the day's refund): the platform holds it on the 22nd.
    assert details(router, "2026-11-23", bill, refund, absent) == [
        (s.setl_id, "OUT_OF_PERIOD", s.setl_time_unix_ms), (absent.setl_id, "MISSING_ON_PLATFORM", 0)]
    # The refund listed on the 22nd (with the day's bill): the platform dates it on the 23rd.
    bill.refd_setl_flag = "0"
    assert details(router, "2026-11-22", bill, refund) == [(r.reversal_id, "OUT_OF_PERIOD", r.reversed_at_unix_ms)]
    # Refunds left out (refd_setl_flag 0): a refund record is none of the period's rows, as before.
    bill.refd_setl_flag = "1"
    assert details(router, "2026-11-22", bill, refund, flag="0") == [(r.reversal_id, "MISSING_ON_PLATFORM", 0)]
