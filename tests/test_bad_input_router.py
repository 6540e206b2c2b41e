"""SPEC §7 bad input at the router (the gRPC side of 2206 / 2207): every amount and text field of a
settlement message is checked before anything is written, with INVALID_ARGUMENT and a reason
naming the field; what the router stores (its index, read by 5203 / 3201 / 3202) is only ever
what it would accept again."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from medaid.common.errors import error_info
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.rules import MAX_AMOUNT_FEN
from medaid.router.v1 import router_pb2 as pb
from support import RESIDENT, bind, credit, enroll, snapshot

HEBEI = pb.Institution(fixmedins_code="H13010100001", mdtrtarea_admvs="130100")
_seq = itertools.count(1)


def msgid() -> str:
    return f"{HEBEI.fixmedins_code}20261122103000{next(_seq):04d}"


@pytest.fixture
def world(national: Any, start_router: Callable[..., Any]) -> tuple[Any, str]:
    r13 = national.reg("13")
    helper = enroll(r13)
    child = enroll(r13, itype=RESIDENT, birth="20150101")
    credit(r13, helper, 100_000)
    bind(r13, helper, child)
    return start_router(), child


def settle_input(patient: str, **kw: Any) -> pb.SettleInput:
    fields: dict[str, Any] = dict(psn_no=patient, psn_part_amt_fen=500, medfee_sumamt_fen=800, acct_used_flag="1",
                                  category=cpb.CATEGORY_OUTPATIENT, mdtrt_id="MD0001", insutype="310", med_type="11")
    fields.update(kw)
    return pb.SettleInput(**fields)


def refused(rdb: Any, call: Callable[[], Any], want: tuple[str, str]) -> None:
    before = snapshot(rdb)
    with pytest.raises(grpc.RpcError) as ei:
        call()
    info = error_info(ei.value)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (ei.value.code(), ei.value.details())
    assert info is not None and (info.reason, info.metadata.get("field")) == want, (info, ei.value.details())
    assert snapshot(rdb) == before, "a refused message wrote to Redis"


RANGE_FIELDS = ("fulamt_ownpay_amt_fen", "overlmt_selfpay_fen", "preselfpay_amt_fen", "inscp_scp_amt_fen")
OUT_OF_RANGE = [
    ("medfee_sumamt_fen", MAX_AMOUNT_FEN + 1, "AMOUNT_TOO_LARGE"),
    ("medfee_sumamt_fen", 2**63 - 1, "AMOUNT_TOO_LARGE"),
    *[(f, v, "INVALID_AMOUNT") for f in RANGE_FIELDS for v in (-1, -(2**63))],
    *[(f, v, "AMOUNT_TOO_LARGE") for f in RANGE_FIELDS for v in (MAX_AMOUNT_FEN + 1, 2**63 - 1)],
]


@pytest.mark.parametrize("rpc", ["Settle", "PreSettle"])
def test_settlement_amounts_out_of_range_are_refused(world, rdb, rpc):
    """medfee_sumamt and the policy ranges (全自费, 超限价, 先行自付, 符合范围) are amounts like psn_part_amt:
    never negative, never above one operation's limit. Stored as sent, one medfee_sumamt of 2**63-1
    made the institution's 3201 fail for the whole period (its sum left int64)."""
    router, child = world
    request = pb.SettleRequest if rpc == "Settle" else pb.PreSettleRequest
    for field, value, reason in OUT_OF_RANGE:
        req = request(msgid=msgid(), institution=HEBEI, input=settle_input(child, **{field: value}))
        refused(rdb, lambda req=req: getattr(router.stub, rpc)(req, timeout=10), (reason, field))


def test_settlement_amounts_at_the_limit_settle_and_reconcile(world, rdb):
    """Control: the largest accepted figures settle, and the day's 3201 adds them up."""
    router, child = world
    big = {f: MAX_AMOUNT_FEN for f in ("medfee_sumamt_fen", *RANGE_FIELDS)}
    for _ in range(3):
        router.stub.Settle(pb.SettleRequest(msgid=msgid(), institution=HEBEI, input=settle_input(child, **big)),
                           timeout=10)
    totals = router.stub.ReconcileTotals(pb.ReconcileTotalsRequest(
        msgid=msgid(), institution=HEBEI,
        statement=pb.Statement(stmt_begndate="2026-11-22", stmt_enddate="2026-11-22")), timeout=10)
    assert totals.platform.medfee_sumamt_fen == 3 * MAX_AMOUNT_FEN


TEXTS = [
    ("mdtrt_id", "M" * 65, "INVALID_MDTRT_ID"),
    ("mdtrt_id", "MD\x000001", "INVALID_MDTRT_ID"),
    ("mdtrt_id", "MD0001\n", "INVALID_MDTRT_ID"),
    ("mdtrt_id", "   ", "INVALID_MDTRT_ID"),
    ("insutype", "3" * 300, "INVALID_INSUTYPE"),
    ("insutype", "31\x000", "INVALID_INSUTYPE"),
    ("insutype", "  ", "INVALID_INSUTYPE"),
    ("med_type", "1" * 7, "INVALID_MED_TYPE"),
    ("med_type", "1\t", "INVALID_MED_TYPE"),
]


@pytest.mark.parametrize("rpc", ["Settle", "PreSettle"])
def test_settlement_texts_the_router_keeps_are_checked(world, rdb, rpc):
    """mdtrt_id, insutype and med_type go into the router's index (5203 finds a visit by its mdtrt_id, 3201
    selects by insutype and med_type): one that is blank, too long or holds a control character is
    refused, naming the field, and nothing is written."""
    router, child = world
    request = pb.SettleRequest if rpc == "Settle" else pb.PreSettleRequest
    for field, value, reason in TEXTS:
        req = request(msgid=msgid(), institution=HEBEI, input=settle_input(child, **{field: value}))
        refused(rdb, lambda req=req: getattr(router.stub, rpc)(req, timeout=10), (reason, field))


def test_a_visit_named_in_5203_or_2208_is_checked_as_in_2207(world, rdb):
    router, child = world
    setl_id = router.stub.Settle(pb.SettleRequest(msgid=msgid(), institution=HEBEI, input=settle_input(child)),
                                 timeout=10).setlinfo.setl_id
    for value in ("M" * 65, "MD\x000001"):
        q = pb.QuerySettlementRequest(msgid=msgid(), institution=HEBEI, psn_no=child, setl_id=setl_id, mdtrt_id=value)
        refused(rdb, lambda q=q: router.stub.QuerySettlement(q, timeout=10), ("INVALID_MDTRT_ID", "mdtrt_id"))
        r = pb.ReverseSettlementRequest(msgid=msgid(), institution=HEBEI, psn_no=child, setl_id=setl_id,
                                        mdtrt_id=value)
        refused(rdb, lambda r=r: router.stub.ReverseSettlement(r, timeout=10), ("INVALID_MDTRT_ID", "mdtrt_id"))


def _rows(n: int, **figures: int) -> list[pb.DetailRow]:
    return [pb.DetailRow(setl_id=f"{HEBEI.fixmedins_code}20261122103000{i:04d}", **figures) for i in range(n)]


DETAIL_ROWS = [
    # Each figure below the limit of int64, their sum past it: the header's sums must not leave int64.
    ("two rows of int64 max", _rows(2, medfee_sumamt_fen=2**63 - 1), ("AMOUNT_TOO_LARGE", "medfee_sumamt_fen")),
    ("a thousand rows near 10**16", _rows(1000, acct_pay_fen=10**16 - 1), ("AMOUNT_TOO_LARGE", "acct_pay_fen")),
    ("a refund record below -MAX", _rows(1, psn_cash_pay_fen=-MAX_AMOUNT_FEN - 1, refd_setl_flag="1"),
     ("AMOUNT_TOO_LARGE", "psn_cash_pay_fen")),
    ("a negative figure on a settlement's row", _rows(1, medfee_sumamt_fen=-5),
     ("INVALID_AMOUNT", "medfee_sumamt_fen")),
    ("a negative optional figure", _rows(1, acct_mulaid_pay_fen=-1), ("INVALID_AMOUNT", "acct_mulaid_pay_fen")),
]


@pytest.mark.parametrize(("label", "rows", "want"), DETAIL_ROWS, ids=[c[0] for c in DETAIL_ROWS])
def test_detail_rows_out_of_range_are_refused(world, rdb, label, rows, want):
    """A 3202 row's figures are a settlement's (never above one operation's limit) or a refund record's
    (the same, negative): one out of range is refused naming the field, before the rows are summed
    for the header (whose sums must stay within int64), and a negative figure only on a refund record
    (docs/reconciliation.md)."""
    router, _ = world
    req = pb.ReconcileDetailsRequest(msgid=msgid(), institution=HEBEI, rows=rows, totals=pb.Totals(),
                                     statement=pb.Statement(stmt_begndate="2026-11-22", stmt_enddate="2026-11-22"))
    refused(rdb, lambda: router.stub.ReconcileDetails(req, timeout=20), want)


def test_detail_refund_record_at_the_limit_is_compared(world):
    """Control: a refund record's figures down to -MAX are read, and compared (not found here)."""
    router, _ = world
    req = pb.ReconcileDetailsRequest(
        msgid=msgid(), institution=HEBEI, rows=_rows(1, medfee_sumamt_fen=-MAX_AMOUNT_FEN, refd_setl_flag="1"),
        statement=pb.Statement(stmt_begndate="2026-11-22", stmt_enddate="2026-11-22"))
    resp = router.stub.ReconcileDetails(req, timeout=20)
    assert [m.kind for m in resp.mismatches] == ["MISSING_ON_PLATFORM"]


STATEMENT_CODES = [("insutype", v, "INVALID_INSUTYPE") for v in ("3" * 10_240, "31\x000", "  ", "310\n")] + \
    [("clr_type", v, "INVALID_CLR_TYPE") for v in ("1" * 10_240, "1\x001", " ", "11\n")]


@pytest.mark.parametrize("rpc", ["ReconcileTotals", "ReconcileDetails"])
def test_statement_codes_are_checked(world, rdb, rpc):
    """A 3201 / 3202 statement's insutype and clr_type are dictionary codes as in a 2207: oversize,
    blank or holding a control character, they are refused naming the field."""
    router, child = world
    for field, value, reason in STATEMENT_CODES:
        st = pb.Statement(stmt_begndate="2026-11-22", stmt_enddate="2026-11-22", **{field: value})
        if rpc == "ReconcileTotals":
            req: Any = pb.ReconcileTotalsRequest(msgid=msgid(), institution=HEBEI, statement=st, totals=pb.Totals())
        else:
            req = pb.ReconcileDetailsRequest(msgid=msgid(), institution=HEBEI, statement=st, totals=pb.Totals(),
                                             rows=_rows(1, medfee_sumamt_fen=1))
        refused(rdb, lambda req=req: getattr(router.stub, rpc)(req, timeout=10), (reason, field))


def test_an_amount_over_the_limit_says_the_limit(world, rdb):
    """AMOUNT_TOO_LARGE carries the limit it applied (ErrorInfo metadata `limit_fen`), so the gateway
    and any gRPC client say it from the refusal: a 2206/2207's amounts and a 3202 row's figures alike."""
    router, child = world
    calls: list[Callable[[], Any]] = []
    for field in ("psn_part_amt_fen", "medfee_sumamt_fen", *RANGE_FIELDS):
        inp = settle_input(child, **{field: MAX_AMOUNT_FEN + 1})
        if field == "psn_part_amt_fen":
            inp.medfee_sumamt_fen = 0
        calls.append(lambda inp=inp: router.stub.Settle(pb.SettleRequest(msgid=msgid(), institution=HEBEI,
                                                                         input=inp), timeout=10))
        calls.append(lambda inp=inp: router.stub.PreSettle(pb.PreSettleRequest(msgid=msgid(), institution=HEBEI,
                                                                               input=inp), timeout=10))
    for rows in (_rows(1, acct_pay_fen=MAX_AMOUNT_FEN + 1),
                 _rows(1, psn_cash_pay_fen=-MAX_AMOUNT_FEN - 1, refd_setl_flag="1")):
        req = pb.ReconcileDetailsRequest(msgid=msgid(), institution=HEBEI, rows=rows, totals=pb.Totals(),
                                         statement=pb.Statement(stmt_begndate="2026-11-22",
                                                                stmt_enddate="2026-11-22"))
        calls.append(lambda req=req: router.stub.ReconcileDetails(req, timeout=20))
    before = snapshot(rdb)
    for call in calls:
        with pytest.raises(grpc.RpcError) as ei:
            call()
        info = error_info(ei.value)
        assert info is not None and info.reason == "AMOUNT_TOO_LARGE", ei.value.details()
        assert info.metadata.get("limit_fen") == str(MAX_AMOUNT_FEN), (info, ei.value.details())
    assert snapshot(rdb) == before


@pytest.mark.parametrize("rpc", ["Settle", "PreSettle"])
def test_an_acct_used_flag_padded_with_invisible_characters_is_refused(world, rdb, rpc):
    """acct_used_flag decides whether the accounts pay: "1"/"0" or "01"/"00", surrounding ASCII spaces
    ignored. A control character, a no-break or an ideographic space around it is no flag, as in
    every other field: INVALID_ACCT_USED_FLAG, and nothing is written."""
    router, child = world
    request = pb.SettleRequest if rpc == "Settle" else pb.PreSettleRequest
    for value in ("\u00a01", "1\u3000", "\x1f1", "0\x1c", "\u20281", "1\x85", "\u20030"):
        req = request(msgid=msgid(), institution=HEBEI, input=settle_input(child, acct_used_flag=value))
        refused(rdb, lambda req=req: getattr(router.stub, rpc)(req, timeout=10),
                ("INVALID_ACCT_USED_FLAG", "acct_used_flag"))
    # Control: ASCII spaces around a flag are ignored, as they always were.
    req = request(msgid=msgid(), institution=HEBEI, input=settle_input(child, acct_used_flag=" 01 "))
    assert getattr(router.stub, rpc)(req, timeout=10).setlinfo.acct_mulaid_pay_fen == 500


def test_a_1101_name_holding_an_invisible_character_is_bad_input_not_another_name(world, rdb):
    """psn_name of a 1101 is checked as every name the product takes (registry.validate.name): one holding
    a control, format or wide-space character (张\\u200b三 shows as 张三) is INVALID_NAME, not a
    NAME_MISMATCH against the record, and nothing is written."""
    router, child = world
    for value in ("张\u200b三", "张三\x00", "\u202e张三", "张\u3000三", "张\u00a0三", "\ufeff张三", "  "):
        req = pb.QueryPersonRequest(msgid=msgid(), institution=HEBEI, mdtrt_cert_type="02", mdtrt_cert_no=child,
                                    psn_name=value)
        refused(rdb, lambda req=req: router.stub.QueryPerson(req, timeout=10), ("INVALID_NAME", "psn_name"))
    # Control: the record's name as it is, and no name at all, are answered.
    for value in ("张三", ""):
        req = pb.QueryPersonRequest(msgid=msgid(), institution=HEBEI, mdtrt_cert_type="02", mdtrt_cert_no=child,
                                    psn_name=value)
        assert router.stub.QueryPerson(req, timeout=10).baseinfo.psn_no == child


NO_PROVINCE = ("999999", "000000", "990100", "001000", "200100")  # the first two digits name no province


def test_an_admdvs_of_no_province_is_refused(world, rdb):
    """An admdvs code is a GB/T 2260 division: six digits whose first two name a province (the list
    validate.province takes). 999999 or 000000 as the institution's place (mdtrtarea_admvs), the place
    of insurance (insuplc_admdvs) or a statement's agency (setl_optins) is an unknown code: refused
    UNKNOWN_REGION naming the field, as enrolling in 999999 is, and nothing is written."""
    router, child = world
    s = router.stub
    setl_id = s.Settle(pb.SettleRequest(msgid=msgid(), institution=HEBEI, input=settle_input(child)),
                       timeout=10).setlinfo.setl_id
    totals = pb.Totals()
    day = dict(stmt_begndate="2026-11-22", stmt_enddate="2026-11-22")
    for code in NO_PROVINCE:
        inst = pb.Institution(fixmedins_code=HEBEI.fixmedins_code, mdtrtarea_admvs=code)
        calls: list[tuple[Callable[[], Any], str]] = [
            (lambda i=inst: s.Settle(pb.SettleRequest(msgid=msgid(), institution=i, input=settle_input(child)),
                                     timeout=10), "mdtrtarea_admvs"),
            (lambda i=inst: s.PreSettle(pb.PreSettleRequest(msgid=msgid(), institution=i,
                                                            input=settle_input(child)), timeout=10),
             "mdtrtarea_admvs"),
            (lambda i=inst: s.QueryPerson(pb.QueryPersonRequest(msgid=msgid(), institution=i, mdtrt_cert_type="02",
                                                                mdtrt_cert_no=child), timeout=10), "mdtrtarea_admvs"),
            (lambda i=inst: s.QuerySettlement(pb.QuerySettlementRequest(msgid=msgid(), institution=i, psn_no=child,
                                                                        setl_id=setl_id), timeout=10),
             "mdtrtarea_admvs"),
            (lambda i=inst: s.ReverseSettlement(pb.ReverseSettlementRequest(msgid=msgid(), institution=i,
                                                                            psn_no=child, setl_id=setl_id),
                                                timeout=10), "mdtrtarea_admvs"),
            (lambda i=inst: s.ReconcileTotals(pb.ReconcileTotalsRequest(msgid=msgid(), institution=i, totals=totals,
                                                                        statement=pb.Statement(**day)), timeout=10),
             "mdtrtarea_admvs"),
            (lambda c=code: s.Settle(pb.SettleRequest(msgid=msgid(), institution=HEBEI,
                                                      input=settle_input(child, insuplc_admdvs=c)), timeout=10),
             "insuplc_admdvs"),
            (lambda c=code: s.ReconcileTotals(pb.ReconcileTotalsRequest(
                msgid=msgid(), institution=HEBEI, totals=totals, statement=pb.Statement(setl_optins=c, **day)),
                timeout=10), "setl_optins"),
        ]
        for call, field in calls:
            refused(rdb, call, ("UNKNOWN_REGION", field))


WIDE_CODES = [("insutype", v, "INVALID_INSUTYPE") for v in ("31１", "３１０", "Ｘ10")] + \
    [("med_type", v, "INVALID_MED_TYPE") for v in ("１１", "1１")]


@pytest.mark.parametrize("rpc", ["Settle", "PreSettle"])
def test_a_dictionary_code_in_full_width_digits_is_refused(world, rdb, rpc):
    """insutype and med_type are national dictionary codes, ASCII digits: "31１" (an input method's
    full-width digit) is no code of the dictionary, and stored as sent it matched no 3201 selecting
    insutype 310. Refused naming the field, and nothing is written."""
    router, child = world
    request = pb.SettleRequest if rpc == "Settle" else pb.PreSettleRequest
    for field, value, reason in WIDE_CODES:
        req = request(msgid=msgid(), institution=HEBEI, input=settle_input(child, **{field: value}))
        refused(rdb, lambda req=req: getattr(router.stub, rpc)(req, timeout=10), (reason, field))


@pytest.mark.parametrize("rpc", ["ReconcileTotals", "ReconcileDetails"])
def test_a_statement_code_in_full_width_digits_is_refused(world, rdb, rpc):
    router, _ = world
    for field, value, reason in (("insutype", "31１", "INVALID_INSUTYPE"), ("clr_type", "１1", "INVALID_CLR_TYPE")):
        st = pb.Statement(stmt_begndate="2026-11-22", stmt_enddate="2026-11-22", **{field: value})
        if rpc == "ReconcileTotals":
            req: Any = pb.ReconcileTotalsRequest(msgid=msgid(), institution=HEBEI, statement=st, totals=pb.Totals())
        else:
            req = pb.ReconcileDetailsRequest(msgid=msgid(), institution=HEBEI, statement=st, totals=pb.Totals(),
                                             rows=_rows(1, medfee_sumamt_fen=1))
        refused(rdb, lambda req=req: getattr(router.stub, rpc)(req, timeout=10), (reason, field))


@pytest.mark.parametrize("rpc", ["Settle", "PreSettle"])
def test_a_med_type_outside_the_dictionary_is_refused_as_the_gateway_refuses_it(world, rdb, rpc):
    """med_type is a code of the 医疗类别 dictionary the product serves (11–14, 21, 41): one outside it
    ("99", "15", "31") is UNSUPPORTED_MED_TYPE over gRPC as through the gateway, naming the field, and
    nothing is written; stored, it was reconciled as 清算类别 99 其他. None at all ('') stays allowed."""
    router, child = world
    request = pb.SettleRequest if rpc == "Settle" else pb.PreSettleRequest
    for value in ("99", "15", "31", "011"):
        req = request(msgid=msgid(), institution=HEBEI, input=settle_input(child, med_type=value))
        refused(rdb, lambda req=req: getattr(router.stub, rpc)(req, timeout=10), ("UNSUPPORTED_MED_TYPE", "med_type"))
    for value in ("", "14"):  # control
        req = request(msgid=msgid(), institution=HEBEI, input=settle_input(child, med_type=value))
        assert getattr(router.stub, rpc)(req, timeout=10).setlinfo.psn_part_amt_fen == 500
