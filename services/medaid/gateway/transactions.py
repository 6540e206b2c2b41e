"""The transactions the gateway answers through the router, national message in, national answer out:
1101 人员信息获取, 2206 预结算 / 2207 结算, 2208 结算撤销, 2601 冲正 and 5203 结算信息查询. Each handler
is called by `Gateway.handle` (service.py) once the message has been read, checked and found new;
sign-in is in credentials.py, 3201 / 3202 / 9101 / 9102 in reconcile.py."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from medaid.common import clearing
from medaid.common import msgid as msgids
from medaid.common.v1 import common_pb2 as cpb
from medaid.gateway import answer_store, fields
from medaid.gateway import schemas as s
from medaid.gateway import schemas_person as ps
from medaid.gateway import schemas_settle as ss
from medaid.gateway.answers import GatewayError, fmt_ms
from medaid.gateway.context import note
from medaid.gateway.reasons import OUTCOME_ZH, PERSON_WALLET_ZH, mulaid_zh, operator_message, zh
from medaid.router.v1 import router_pb2 as pb

if TYPE_CHECKING:
    from medaid.gateway.service import Gateway

# 险种类型 (insutype) and 人员参保状态 (psn_insu_stas) codes of the national dictionary.
INSUTYPE = {cpb.INSURANCE_TYPE_EMPLOYEE: "310", cpb.INSURANCE_TYPE_FLEXIBLE: "310",
            cpb.INSURANCE_TYPE_RESIDENT: "390"}
PSN_INSU_STAS = {cpb.PERSON_STATUS_ACTIVE: "1", cpb.PERSON_STATUS_SUSPENDED: "2",
                 cpb.PERSON_STATUS_TERMINATED: "4", cpb.PERSON_STATUS_DECEASED: "4"}  # a death ends it: 终止
PSN_CERT_TYPE_ID_CARD = "01"  # 居民身份证(户口簿)


def _helper_pays(pays: Iterable[pb.HelperPay], sign: int = 1) -> list[ss.HelperPayOut]:
    """Every helper of a 共济 share as the answer lists them (`sign` -1: a refund, negative like its total)."""
    return [ss.HelperPayOut(psn_no=h.psn_no, amount=sign * h.amount_fen,
                            balc=h.balc_fen if h.HasField("balc_fen") else None) for h in pays]


# --- 1101 ------------------------------------------------------------------------------------------


async def person(gw: Gateway, env: s.Envelope, inp: ps.Input1101) -> tuple[BaseModel, list[str]]:
    d = inp.data
    if d.mdtrt_cert_no and d.mdtrt_cert_type in ("", "02"):
        id_number = d.mdtrt_cert_no  # 02: 居民身份证号
    elif d.certno and d.psn_cert_type in ("", PSN_CERT_TYPE_ID_CARD):
        id_number = d.certno  # the person's 居民身份证号 given beside an 01/03 credential
    elif d.certno:  # certno is another document's number: it is psn_cert_type that is not served
        raise GatewayError("UNSUPPORTED_CERT_TYPE", f"input.data.psn_cert_type {d.psn_cert_type}")
    else:
        raise GatewayError("UNSUPPORTED_CERT_TYPE", f"input.data.mdtrt_cert_type {d.mdtrt_cert_type}")
    # The router names the number it takes mdtrt_cert_no, wherever the message had it.
    sent_in = "mdtrt_cert_no" if id_number == d.mdtrt_cert_no else "certno"
    resp = await gw._call("QueryPerson", pb.QueryPersonRequest(
        msgid=env.msgid, institution=gw._institution(env), mdtrt_cert_type="02", mdtrt_cert_no=id_number,
        psn_name=d.psn_name, insuplc_admdvs=env.insuplc_admdvs), ps.Input1101, sent_as={"mdtrt_cert_no": sent_in})
    b = resp.baseinfo
    out = ps.Output1101(
        baseinfo=ps.BaseInfoOut(psn_no=b.psn_no, psn_cert_type=PSN_CERT_TYPE_ID_CARD, certno=b.certno,
                               psn_name=b.psn_name, gend=b.gend, naty="", brdy=b.brdy, age=b.age),
        insuinfo=[ps.InsuInfoOut(
            balc=i.balc_fen, insutype=INSUTYPE.get(i.insutype, ""), psn_type="",
            psn_insu_stas=PSN_INSU_STAS.get(i.psn_insu_stas, ""), psn_insu_date="", paus_insu_date="",
            cvlserv_flag="", insuplc_admdvs=i.insuplc_admdvs, emp_name="",
            medaid_ext=ps.InsuInfoExt(wallet_opened=i.wallet_opened, wallet_balc=i.wallet_balc_fen,
                                     wallet_use_place_admdvs=i.wallet_use_place_admdvs,
                                     wallet_reason=i.wallet_reason,
                                     wallet_msg=PERSON_WALLET_ZH.get(i.wallet_reason, zh(i.wallet_reason))
                                     if i.wallet_reason else ""),
        ) for i in resp.insuinfo],
        idetinfo=[],
        medaid_ext=ps.PersonExt(mulaid_helpers=[
            ps.MulaidHelperOut(psn_no=h.psn_no, relation=cpb.Relation.Name(h.relation).removeprefix("RELATION_"))
            for h in resp.helpers]),
    )
    # The front desk reads warn_msg: the wallet part of the answer is unknown.
    unknown = dict.fromkeys(i.wallet_reason for i in resp.insuinfo if i.wallet_reason)
    return out, [f"{code}: {PERSON_WALLET_ZH.get(code, zh(code))}" for code in unknown]


# --- 2206 / 2207 ------------------------------------------------------------------------------------


def _settle_input(d: ss.Data2207, env: s.Envelope) -> pb.SettleInput:
    return pb.SettleInput(
        psn_no=d.psn_no, insuplc_admdvs=env.insuplc_admdvs, psn_part_amt_fen=d.settled_fen,
        medfee_sumamt_fen=d.medfee_sumamt, acct_used_flag=d.acct_used_flag,
        category=cpb.Category.Value("CATEGORY_" + ss.MED_TYPES[d.med_type]), mdtrt_id=d.mdtrt_id,
        insutype=d.insutype, med_type=d.med_type, fulamt_ownpay_amt_fen=d.fulamt_ownpay_amt or 0,
        overlmt_selfpay_fen=d.overlmt_selfpay or 0, preselfpay_amt_fen=d.preselfpay_amt or 0,
        inscp_scp_amt_fen=d.inscp_scp_amt or 0)

def setlinfo(r: pb.SetlInfo, insutype: str, med_type: str, env: s.Envelope
              ) -> tuple[ss.Output2207, list[str]]:
    """setlinfo of a 2206 / 2207 and, from the settlement's record, of a 5203: one format, so that a
    5203 answers field by field what the 2207 answered."""
    if r.acct_pay_fen + r.wallet_pay_fen + r.acct_mulaid_pay_fen + r.psn_cash_pay_fen != r.psn_part_amt_fen:
        raise AssertionError(f"settlement {r.setl_id} does not add up")
    # warn_msg: why part of the bill falls to cash (no 共济, no wallet), for the front desk; the words
    # for 共济 say whether it paid part of the bill or nothing.
    mulaid_msg = mulaid_zh(r.mulaid_reason, r.acct_mulaid_pay_fen) if r.mulaid_reason else ""
    warnings = [operator_message(code, words=words) for code, words in
                ((r.mulaid_reason, mulaid_msg), (r.wallet_reason, ""))
                if code and r.psn_cash_pay_fen > 0]
    info = ss.SetlInfoOut(
        setl_id=r.setl_id, mdtrt_id=r.mdtrt_id, psn_no=r.psn_no, psn_cert_type=PSN_CERT_TYPE_ID_CARD,
        certno=r.psn_no, insutype=insutype, med_type=med_type,
        setl_time=fmt_ms(r.setl_time_unix_ms, "%Y-%m-%d %H:%M:%S") if r.setl_time_unix_ms else "",
        medfee_sumamt=r.medfee_sumamt_fen, fulamt_ownpay_amt=r.fulamt_ownpay_amt_fen,
        overlmt_selfpay=r.overlmt_selfpay_fen, preselfpay_amt=r.preselfpay_amt_fen,
        inscp_scp_amt=r.inscp_scp_amt_fen, fund_pay_sumamt=0, hifp_pay=0,
        psn_part_amt=r.psn_part_amt_fen, acct_pay=r.acct_pay_fen, acct_mulaid_pay=r.acct_mulaid_pay_fen,
        psn_cash_pay=r.psn_cash_pay_fen, hosp_part_amt=0,
        balc=r.balc_fen if r.HasField("balc_fen") else None,
        medins_setl_id=env.msgid if r.setl_id else "", clr_optins=clearing.clr_optins(r.insuplc_admdvs),
        clr_way="", clr_type=clearing.clr_type(med_type),
        wallet_pay=r.wallet_pay_fen,
        medaid_ext=ss.SetlInfoExt(
            mulaid_psn_no=r.mulaid_helper_psn_no, mulaid_helpers=_helper_pays(r.mulaid_helpers),
            mulaid_reason=r.mulaid_reason,
            mulaid_msg=mulaid_msg, wallet_reason=r.wallet_reason,
            wallet_msg=zh(r.wallet_reason) if r.wallet_reason else "", insuplc_admdvs=r.insuplc_admdvs,
            acct_pay_includes_mulaid=False),
    )
    return ss.Output2207(setlinfo=info, setldetail=[]), warnings

async def _settle_call(gw: Gateway, method: str, request: Any, d: ss.Data2207) -> Any:
    """PreSettle / Settle. The router names the amount it settles psn_part_amt; a message without that
    extension sent it as medfee_sumamt, and a refusal of it names the field the message has. An amount
    over one operation's limit says the limit the refusal carries (metadata `limit_fen`)."""
    return await gw._call(method, request, ss.Input2207,
                          sent_as={"psn_part_amt": "medfee_sumamt"} if d.psn_part_amt is None else None)

async def presettle(gw: Gateway, env: s.Envelope, inp: ss.Input2207) -> tuple[BaseModel, list[str]]:
    resp = await _settle_call(gw, "PreSettle", pb.PreSettleRequest(
        msgid=env.msgid, institution=gw._institution(env), input=_settle_input(inp.data, env)), inp.data)
    return setlinfo(resp.setlinfo, inp.data.insutype, inp.data.med_type, env)

async def settle(gw: Gateway, env: s.Envelope, inp: ss.Input2207) -> tuple[BaseModel, list[str]]:
    resp = await _settle_call(gw, "Settle", pb.SettleRequest(
        msgid=env.msgid, institution=gw._institution(env), input=_settle_input(inp.data, env)), inp.data)
    note(id_number=inp.data.psn_no, setl_id=resp.setlinfo.setl_id)
    return setlinfo(resp.setlinfo, inp.data.insutype, inp.data.med_type, env)


# --- 2208 ------------------------------------------------------------------------------------------


async def reverse(gw: Gateway, env: s.Envelope, inp: ss.Input2208) -> tuple[BaseModel, list[str]]:
    d = inp.data
    resp = await gw._call("ReverseSettlement", pb.ReverseSettlementRequest(
        msgid=env.msgid, institution=gw._institution(env), setl_id=d.setl_id, psn_no=d.psn_no,
        insuplc_admdvs=env.insuplc_admdvs, mdtrt_id=d.mdtrt_id), ss.Input2208)
    note(id_number=d.psn_no, setl_id=d.setl_id)
    o = resp.original
    if resp.acct_refund_fen + resp.wallet_refund_fen + resp.mulaid_refund_fen + o.setlinfo.psn_cash_pay_fen \
            != o.setlinfo.psn_part_amt_fen:
        raise AssertionError(f"reversal {resp.reversal_id} does not add up")
    out = ss.Output2208(setlinfo=ss.ReversalOut(
        setl_id=resp.reversal_id, init_setl_id=resp.setl_id, mdtrt_id=o.setlinfo.mdtrt_id or d.mdtrt_id,
        psn_no=d.psn_no, psn_cert_type=PSN_CERT_TYPE_ID_CARD, certno=d.psn_no, insutype=o.insutype,
        med_type=o.med_type,
        setl_time=fmt_ms(resp.reversed_at_unix_ms or gw.clock.now_ms(), "%Y-%m-%d %H:%M:%S"),
        medfee_sumamt=-o.setlinfo.medfee_sumamt_fen, fulamt_ownpay_amt=-o.setlinfo.fulamt_ownpay_amt_fen,
        overlmt_selfpay=-o.setlinfo.overlmt_selfpay_fen, preselfpay_amt=-o.setlinfo.preselfpay_amt_fen,
        inscp_scp_amt=-o.setlinfo.inscp_scp_amt_fen, fund_pay_sumamt=0, hifp_pay=0,
        psn_part_amt=-o.setlinfo.psn_part_amt_fen, acct_pay=-resp.acct_refund_fen,
        acct_mulaid_pay=-resp.mulaid_refund_fen, psn_cash_pay=-o.setlinfo.psn_cash_pay_fen, hosp_part_amt=0,
        balc=resp.balc_fen, medins_setl_id=env.msgid, clr_optins=clearing.clr_optins(o.setlinfo.insuplc_admdvs),
        clr_way="", clr_type=clearing.clr_type(o.med_type),
        wallet_pay=-resp.wallet_refund_fen,
        medaid_ext=ss.ReversalExt(mulaid_psn_no=resp.mulaid_helper_psn_no,
                                 mulaid_helpers=_helper_pays(resp.mulaid_helpers, sign=-1))),
        setldetail=[])
    return out, []


# --- 2601 冲正 ----------------------------------------------------------------------------------


async def undo(gw: Gateway, env: s.Envelope, inp: ss.Input2601) -> tuple[BaseModel, list[str]]:
    d = inp.data
    # A msgid this gateway answered as another transaction (a 1101, 2206, 5203 …) is no 2207 or 2208
    # that never arrived: refused before the router would void it and so block its own resend.
    original = msgids.scoped(env.fixmedins_code, d.omsgid)
    stored = await answer_store.stored_record(gw.redis, original)
    kind = stored.get("infno", "")
    if kind and kind != d.oinfno:
        raise GatewayError("ORIGINAL_MISMATCH",
                           f"{fields.place(ss.Input2601, 'omsgid')} {d.omsgid} 是 {kind} 交易,不是 {d.oinfno}")
    resp = await gw._call("Undo", pb.UndoRequest(
        msgid=env.msgid, institution=gw._institution(env), psn_no=d.psn_no,
        insuplc_admdvs=env.insuplc_admdvs, omsgid=d.omsgid, oinfno=d.oinfno), ss.Input2601)
    # The original's stored answer (if the gateway answered it, and the answer was lost on the way)
    # must not be replayed as if it still stood: a resend of it is refused from now on, naming the
    # 2601 that cancelled it; a later 2601 of it changed nothing and leaves that record as it is.
    if stored.get("fp") != answer_store.CANCELLED:
        await answer_store.cancel(gw.redis, original, env.msgid, gw.settings.msgid_ttl_s)
    note(omsgid=d.omsgid, oinfno=d.oinfno, outcome=resp.outcome)
    warnings = [] if resp.outcome in ("REVERSED", "RESTORED") else [
        f"{resp.outcome}: {OUTCOME_ZH.get(resp.outcome, '')}"]
    return ss.Output2601(medaid_ext=ss.UndoExt(
        outcome=resp.outcome, setl_id=resp.setl_id, acct_pay=resp.acct_pay_fen, wallet_pay=resp.wallet_pay_fen,
        acct_mulaid_pay=resp.acct_mulaid_pay_fen, mulaid_psn_no=resp.mulaid_helper_psn_no,
        mulaid_helpers=_helper_pays(resp.mulaid_helpers))), warnings


# --- 5203 结算信息查询 ------------------------------------------------------------------------------


async def query(gw: Gateway, env: s.Envelope, inp: ss.Input5203) -> tuple[BaseModel, list[str]]:
    d = inp.data
    resp = await gw._call("QuerySettlement", pb.QuerySettlementRequest(
        msgid=env.msgid, institution=gw._institution(env), psn_no=d.psn_no,
        insuplc_admdvs=env.insuplc_admdvs, setl_id=d.setl_id, mdtrt_id=d.mdtrt_id), ss.Input5203)
    e = resp.settlement
    r = e.setlinfo
    out, _ = setlinfo(r, e.insutype, e.med_type, env)
    out.setlinfo.medins_setl_id = e.msgid
    out.setlinfo.refd_setl_flag = "1" if e.init_setl_id else "0"  # a refund record names what it refunded
    return ss.Output5203(setlinfo=out.setlinfo, setldetail=[], medaid_ext=ss.QueryExt(
        setl_stas=e.state, reversal_id=e.reversal_id,
        reversed_time=fmt_ms(e.reversed_at_unix_ms, "%Y-%m-%d %H:%M:%S") if e.reversed_at_unix_ms else "",
        setl_ids=list(resp.setl_ids), init_setl_id=e.init_setl_id)), []
