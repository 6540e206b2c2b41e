"""3201 / 3202 reconciliation and 9101 / 9102 files at the gateway: the national messages in and out,
the router's ReconcileTotals / ReconcileDetails behind them (docs/reconciliation.md), and the files
kept in the gateway's Redis (files.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from medaid.common import msgid as msgids
from medaid.common.logs import event
from medaid.gateway import files
from medaid.gateway import schemas as s
from medaid.gateway import schemas_reconcile as rs
from medaid.gateway.amounts import fen_to_yuan
from medaid.gateway.answers import Answer, GatewayError, fmt_ms
from medaid.gateway.reasons import zh
from medaid.router.v1 import router_pb2 as pb

if TYPE_CHECKING:
    from medaid.gateway.service import Gateway

log = logging.getLogger("medaid.gateway")

# A 3202 result file's memo for each kind of mismatch (router/reconcile_details.py names them).
_MISMATCH_ZH = {
    "MISSING_ON_PLATFORM": "平台无此结算",
    "MISSING_AT_INSTITUTION": "平台有此结算,机构明细中没有",
    "AMOUNT_DIFFERS": "金额不符",
    "INFO_DIFFERS": "人员编号或就诊ID不符",
    "REVERSED": "平台已撤销,机构明细列为有效",
    "NOT_REVERSED": "平台有效,机构明细列为已撤销",
    "IN_PROGRESS": "平台结算正在处理,请稍后重新对账",
    "OUT_OF_PERIOD": "平台有此笔,但按平台时间不属于本对账期间,请计入平台时间所在日期的对账",
}


# --- 3201 / 3202 对账 ------------------------------------------------------------------------------


def _statement(d: rs.Statement) -> pb.Statement:
    return pb.Statement(stmt_begndate=d.stmt_begndate, stmt_enddate=d.stmt_enddate, insutype=d.insutype,
                        clr_type=d.clr_type, setl_optins=d.setl_optins, refd_setl_flag=d.refd_setl_flag)


def _totals(d: rs.Statement) -> pb.Totals:
    """The institution's figures of a 3201, or the header of a 3202."""
    return pb.Totals(medfee_sumamt_fen=d.medfee_sumamt, fund_pay_sumamt_fen=d.fund_pay_sumamt or 0,
                     acct_pay_fen=d.acct_pay or 0, cash_payamt_fen=d.cash_payamt or 0,
                     fixmedins_setl_cnt=d.fixmedins_setl_cnt)


async def reconcile_totals(gw: Gateway, env: s.Envelope, inp: rs.Input3201) -> tuple[BaseModel, list[str]]:
    d = inp.data
    resp = await gw._call("ReconcileTotals", pb.ReconcileTotalsRequest(
        msgid=env.msgid, institution=gw._institution(env), statement=_statement(d), totals=_totals(d),
        cash_payamt_given=d.cash_payamt is not None), rs.Input3201)
    t = resp.platform
    return rs.Output3201(
        stmtinfo=rs.StmtInfo(setl_optins=d.setl_optins, stmt_rslt=resp.stmt_rslt,
                             stmt_rslt_dscr=resp.stmt_rslt_dscr),
        medaid_ext=rs.ReconcileExt(platform=rs.PlatformTotals(
            fixmedins_setl_cnt=t.fixmedins_setl_cnt, medfee_sumamt=t.medfee_sumamt_fen,
            fund_pay_sumamt=t.fund_pay_sumamt_fen, acct_pay=t.acct_pay_fen, acct_mulaid_pay=t.acct_mulaid_pay_fen,
            wallet_pay=t.wallet_pay_fen, cash_payamt=t.cash_payamt_fen, in_progress_cnt=resp.in_progress_cnt))), []


def _details_bytes(req: pb.ReconcileDetailsRequest, given: list[rs.DetailRowIn]) -> bytes:
    """`req` with the detail's rows added, serialized."""
    for row in given:
        r = req.rows.add(setl_id=row.setl_id, mdtrt_id=row.mdtrt_id, psn_no=row.psn_no,
                         medfee_sumamt_fen=row.medfee_sumamt, fund_pay_sumamt_fen=row.fund_pay_sumamt or 0,
                         acct_pay_fen=row.acct_pay or 0, refd_setl_flag=row.refd_setl_flag)
        if row.acct_mulaid_pay is not None:
            r.acct_mulaid_pay_fen = row.acct_mulaid_pay
        if row.psn_cash_pay is not None:
            r.psn_cash_pay_fen = row.psn_cash_pay
        if row.wallet_pay is not None:
            r.wallet_pay_fen = row.wallet_pay
    return req.SerializeToString()


def _mismatches(resp: pb.ReconcileDetailsResponse) -> list[rs.MismatchOut]:
    return [rs.MismatchOut(
        setl_id=m.setl_id, stmt_rslt_type=m.kind, fields=m.fields, setl_stas=m.platform.state,
        medfee_sumamt=m.platform.setlinfo.medfee_sumamt_fen, acct_pay=m.platform.setlinfo.acct_pay_fen,
        acct_mulaid_pay=m.platform.setlinfo.acct_mulaid_pay_fen,
        psn_cash_pay=m.platform.setlinfo.psn_cash_pay_fen, wallet_pay=m.platform.setlinfo.wallet_pay_fen,
        setl_time=_time(m.platform.setlinfo.setl_time_unix_ms))
        for m in resp.mismatches]


def _time(ms: int) -> str:
    """The platform's time of a settlement or refund (yyyy-MM-dd HH:mm:ss, Beijing), '' for none."""
    return fmt_ms(ms, "%Y-%m-%d %H:%M:%S") if ms else ""


async def reconcile_details(gw: Gateway, env: s.Envelope, inp: rs.Input3202) -> tuple[BaseModel, list[str]]:
    """A detail of up to 50,000 rows (a large hospital's day) is read, converted and answered in a
    worker thread, so that the gateway's event loop keeps serving other institutions meanwhile
    (Python switches threads every few milliseconds)."""
    d = inp.data
    if inp.detail:
        given = inp.detail
    elif inp.fsUploadIn is not None:  # the detail file sent with the 3202, as a 9101 would have uploaded it
        _own_file(env, inp.fsUploadIn)
        given = await _rows(inp.fsUploadIn.in_)
    else:
        given = await detail_file(gw, env, d.file_qury_no)
    request = pb.ReconcileDetailsRequest(msgid=env.msgid, institution=gw._institution(env), statement=_statement(d),
                                         totals=_totals(d), cash_payamt_given=d.cash_payamt is not None)
    answer = await gw._call("ReconcileDetails", await asyncio.to_thread(_details_bytes, request, given),
                            rs.Input3202, call=gw.details_bytes)
    resp = await asyncio.to_thread(pb.ReconcileDetailsResponse.FromString, answer)
    detail = await asyncio.to_thread(_mismatches, resp)
    fileinfo = await result_file(gw, env, {row.setl_id: row for row in given}, resp.mismatches)
    return rs.Output3202(
        stmtinfo=rs.StmtInfo(setl_optins=d.setl_optins, stmt_rslt=resp.stmt_rslt,
                             stmt_rslt_dscr=resp.stmt_rslt_dscr), fileinfo=fileinfo,
        detail=detail, medaid_ext=rs.DetailExt(platform_cnt=resp.platform_cnt,
                                               fixmedins_setl_cnt=resp.institution_cnt,
                                               in_progress_cnt=resp.in_progress_cnt)), []


async def detail_file(gw: Gateway, env: s.Envelope, no: str) -> list[rs.DetailRowIn]:
    """The rows of the detail file this institution uploaded with 9101 (files.py gives the layout)."""
    try:
        _, data = await files.get(gw.redis, no, env.fixmedins_code)
    except files.FileProblem as exc:
        raise GatewayError(exc.code, exc.context) from None
    return await _rows(data)


async def _rows(data: bytes) -> list[rs.DetailRowIn]:
    """A detail file's rows (files.py gives the layout); a file without one is refused."""
    try:
        rows: list[rs.DetailRowIn] = await asyncio.to_thread(files.detail_rows, data, rs.DetailRowIn)
    except files.FileProblem as exc:
        raise GatewayError(exc.code, exc.context) from None
    if not rows:
        raise GatewayError("INVALID_DETAIL_FILE", "明细文件中没有结算")
    return rows


async def result_file(gw: Gateway, env: s.Envelope, given: Mapping[str, rs.DetailRowIn],
                      mismatches: Any) -> rs.FileInfo:
    """The 3202's result file, kept for 9102: one line per mismatch (files.RESULT_COLUMNS)."""
    no = files.query_no(msgids.scoped(env.fixmedins_code, env.msgid))
    name = f"{env.msgid}.txt"
    data = await asyncio.to_thread(_result_zip, env.fixmedins_code, name, given, mismatches)
    await files.put(gw.redis, no, env.fixmedins_code, name + ".zip", data, gw.settings.file_ttl_s)
    return rs.FileInfo(file_qury_no=no, filename=name + ".zip", dld_endtime=dld_endtime(gw))


def _result_zip(inst: str, name: str, given: Mapping[str, rs.DetailRowIn], mismatches: Any) -> bytes:
    lines = []
    for m in mismatches:
        held, row = m.platform.setlinfo, given.get(m.setl_id)
        on_platform = bool(m.platform.state)
        sid = m.setl_id
        msgid = m.platform.msgid or (sid[len(inst):] if sid.startswith(inst) and len(sid) == len(inst) + 30
                                     else sid)
        memo = f"{m.kind}: {_MISMATCH_ZH.get(m.kind, zh(m.kind))}" + (f"({m.fields})" if m.fields else "")
        if m.kind == "OUT_OF_PERIOD":
            memo += f"(平台时间{_time(held.setl_time_unix_ms)})"
        if on_platform:
            figures = (held.medfee_sumamt_fen, 0, held.acct_pay_fen)  # no fund pays here (reconciliation.md)
            who = (held.psn_no, held.mdtrt_id)
        else:
            figures = (row.medfee_sumamt, row.fund_pay_sumamt or 0, row.acct_pay or 0) if row else (0, 0, 0)
            who = (row.psn_no, row.mdtrt_id) if row else ("", "")
        refd = "1" if m.platform.state == "REVERSED" else (row.refd_setl_flag if row and not on_platform else "0")
        lines.append([*who, sid, msgid, "1", refd, memo, *(f"{fen_to_yuan(f):.2f}" for f in figures)])
    return files.result_file(name, lines)


def dld_endtime(gw: Gateway) -> str:
    """When a file written now expires (a 9101 or 3202 answer's dld_endtime)."""
    return fmt_ms(gw.clock.now_ms() + gw.settings.file_ttl_s * 1000, "%Y-%m-%d %H:%M:%S")


# --- 9101 / 9102 文件 ---------------------------------------------------------------------------------


def _own_file(env: s.Envelope, f: rs.FsUploadIn) -> None:
    """A file sent (9101, or with a 3202) names the sending institution, if it names one."""
    if f.fixmedins_code and f.fixmedins_code != env.fixmedins_code:
        raise GatewayError("INSTITUTION_MISMATCH", f"input.fsUploadIn.fixmedins_code {f.fixmedins_code}")


async def upload(gw: Gateway, env: s.Envelope, inp: rs.Input9101) -> tuple[BaseModel, list[str]]:
    f = inp.fsUploadIn
    _own_file(env, f)
    no = files.query_no(msgids.scoped(env.fixmedins_code, env.msgid))
    await files.put(gw.redis, no, env.fixmedins_code, f.filename, f.in_, gw.settings.file_ttl_s)
    event(log, "9101", msgid=env.msgid, file_qury_no=no, size=len(f.in_))
    return rs.Output9101(file_qury_no=no, filename=f.filename, dld_endtime=dld_endtime(gw)), []


async def download(gw: Gateway, env: s.Envelope, inp: rs.Input9102, received_ms: int) -> Answer:
    try:
        filename, data = await files.get(gw.redis, inp.fsDownloadIn.file_qury_no, env.fixmedins_code)
    except files.FileProblem as exc:
        raise GatewayError(exc.code, exc.context) from None
    gw._log(env.infno, env.msgid, 0, "", received_ms)
    return Answer(data, 0, content_type="application/octet-stream", filename=filename)
