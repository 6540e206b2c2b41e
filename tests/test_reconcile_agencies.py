"""3201 / 3202 per 结算经办机构 (`setl_optins`): a hospital reconciles separately with each agency that
clears its bills, the agency of the settlement's place of insurance (insuplc_admdvs): a 统筹区's
(130100), a whole province's (130000), or, with none named, every settlement of the period.

Real registries (河北 13, 甘肃 62), wallet, router and Redis, in-process; one hospital in 石家庄 settles
2207s of patients insured in 石家庄 (130100), 唐山 (130200) and 兰州 (620100).
"""

from __future__ import annotations

import datetime as dt
import itertools

import grpc
import pytest
from conftest import LoopThread, National, RunningRouter
from medaid.common.clock import SHANGHAI
from medaid.common.v1 import common_pb2 as cpb
from medaid.router.v1 import router_pb2 as pb
from support import credit, enroll

INST = pb.Institution(fixmedins_code="H13010100077", mdtrtarea_admvs="130100")
T = 10.0
DAY = "2026-11-22"
_seq = itertools.count(1)


def msgid() -> str:
    return f"{INST.fixmedins_code}20261122100000{next(_seq) % 10_000:04d}"


def settle(router: RunningRouter, psn: str, amount: int) -> pb.SetlInfo:
    return router.stub.Settle(pb.SettleRequest(msgid=msgid(), institution=INST, input=pb.SettleInput(
        psn_no=psn, psn_part_amt_fen=amount, medfee_sumamt_fen=amount, acct_used_flag="1",
        category=cpb.CATEGORY_OUTPATIENT)), timeout=T).setlinfo


def total(router: RunningRouter, optins: str, cnt: int, fen: int) -> pb.ReconcileTotalsResponse:
    return router.stub.ReconcileTotals(pb.ReconcileTotalsRequest(
        msgid=msgid(), institution=INST,
        statement=pb.Statement(stmt_begndate=DAY, stmt_enddate=DAY, setl_optins=optins),
        totals=pb.Totals(fixmedins_setl_cnt=cnt, medfee_sumamt_fen=fen, acct_pay_fen=fen)), timeout=T)


def test_each_clearing_agency_reconciles_only_its_own_settlements(
        start_router, national: National, loop_thread: LoopThread):
    router = start_router(batch=False)
    hb, gs = national.reg("13"), national.reg("62")
    local = enroll(hb, region="130100", division="130102")
    tangshan = enroll(hb, region="130200", division="130202")
    lanzhou = enroll(gs, region="620100", division="620102", name="李四")
    for p in (local, tangshan):
        credit(hb, p, 100_000)
    credit(gs, lanzhou, 100_000)
    national.clock.set(int(dt.datetime(2026, 11, 22, 10, tzinfo=SHANGHAI).timestamp() * 1000))
    a, b = settle(router, local, 1_000), settle(router, local, 500)
    c = settle(router, tangshan, 700)
    d = settle(router, lanzhou, 2_000)

    # Each agency's own figures agree; another agency's settlements are not in them.
    for optins, cnt, fen in (("130100", 2, 1_500), ("130200", 1, 700), ("130000", 3, 2_200),
                             ("620100", 1, 2_000), ("620000", 1, 2_000), ("110000", 0, 0), ("", 4, 4_200)):
        got = total(router, optins, cnt, fen)
        assert (got.stmt_rslt, got.stmt_rslt_dscr, got.platform.fixmedins_setl_cnt, got.platform.acct_pay_fen) == \
            ("0", "对账平", cnt, fen), (optins, got)
    # The hospital's whole day named as 石家庄's is off by the other agencies' settlements.
    assert total(router, "130100", 4, 4_200).stmt_rslt == "1"

    # 3202 for 石家庄's agency: its two settlements are the whole detail; another agency's is not its.
    def details(optins: str, *rows: pb.SetlInfo) -> pb.ReconcileDetailsResponse:
        return router.stub.ReconcileDetails(pb.ReconcileDetailsRequest(
            msgid=msgid(), institution=INST,
            statement=pb.Statement(stmt_begndate=DAY, stmt_enddate=DAY, setl_optins=optins),
            rows=[pb.DetailRow(setl_id=s.setl_id, medfee_sumamt_fen=s.medfee_sumamt_fen, acct_pay_fen=s.acct_pay_fen)
                  for s in rows]), timeout=T)

    got = details("130100", a, b)
    assert (got.stmt_rslt, list(got.mismatches), got.platform_cnt) == ("0", [], 2), got
    got = details("620100", d)
    assert (got.stmt_rslt, list(got.mismatches), got.platform_cnt) == ("0", [], 1), got
    got = details("130100", a, b, c)
    assert [(m.setl_id, m.kind) for m in got.mismatches] == [(c.setl_id, "MISSING_ON_PLATFORM")], got

    # 甘肃's registry down: 河北's agencies still reconcile; 兰州's cannot be answered now.
    loop_thread.run(national.registries["62"].server.stop(0))
    got = total(router, "130100", 2, 1_500)
    assert (got.stmt_rslt, got.platform.acct_pay_fen) == ("0", 1_500), got
    assert details("130000", a, b, c).stmt_rslt == "0"
    with pytest.raises(grpc.RpcError) as err:
        total(router, "620100", 1, 2_000)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_malformed_setl_optins_is_refused(start_router):
    router = start_router(batch=False)
    for bad in ("13010", "1301001", "13O100"):
        with pytest.raises(grpc.RpcError) as err:
            total(router, bad, 0, 0)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
