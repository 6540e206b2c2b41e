"""5203 settlement query, 3201 total reconciliation and the period 3202 (reconcile_details.py) compares
with, for one institution.

Which settlements: the router's per-institution index (index.py). What they are now (amounts,
SETTLED / REVERSED / IN_PROGRESS, when): the registries' records, read with GetSettlements, so a
reconciliation can never disagree with the money. A settlement belongs to the day of its
settlement time and a reversal to the day of its reversal time (Asia/Shanghai).

Figures, in fen: medfee_sumamt as the 2207 sent it; fund_pay_sumamt is always 0 (this product
settles the personally-borne part only); acct_pay is the patient's own personal account (the
helpers' 共济 share is acct_mulaid_pay, the 医保钱包 share wallet_pay); cash is psn_cash_pay. With
refd_setl_flag "1" or "" every settlement of the period counts, and every reversal of the period
counts once more with its amounts negative; with "0" only the settlements that stand now count.
A statement's setl_optins (结算经办机构) selects the settlements of people insured under that agency
(clearing.of_agency); only its province's registry is asked.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from medaid.common import clearing, errors
from medaid.common import msgid as msgids
from medaid.common.clock import SHANGHAI
from medaid.common.idempotency import validate_request_id
from medaid.registry import validate
from medaid.registry.context import MAX_BATCH
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.router.charges import helper_pays
from medaid.router.index import Entry
from medaid.router.v1 import router_pb2 as pb

if TYPE_CHECKING:
    from medaid.router.service import Router

MAX_DAYS = 31
# A 3202 lists up to MAX_ROWS settlements: a large hospital's day, and more than the biggest detail
# file a 9101 can carry (640 KiB zipped). Such a request is some 5–10 MB, so the router takes
# requests up to REQUEST_BYTES (gRPC's default is 4 MiB).
MAX_ROWS = 50_000
REQUEST_BYTES = 16 * 1024 * 1024
# A period is read and compared this many settlements at a time, giving the event loop back in
# between: a large hospital's 3201 / 3202 (tens of thousands of settlements) must not hold up the
# 2207s of every other institution on this router while it is worked out.
CHUNK = 512


def check_request(req: pb.QuerySettlementRequest | pb.ReconcileTotalsRequest | pb.ReconcileDetailsRequest) -> str:
    validate.institution(req.institution.fixmedins_code)
    validate.admdvs(req.institution.mdtrtarea_admvs, "mdtrtarea_admvs", required=True)
    msgids.require(req.msgid)
    return req.institution.fixmedins_code


def _medfee(found: rpb.SettlementLookup, info: Entry | None) -> int:
    """medfee_sumamt as the 2207 sent it (the router's index), else the amount the registry settled."""
    return info.medfee_fen if info else found.result.amount_fen


def _entry(found: rpb.SettlementLookup, info: Entry | None, state: str = "") -> pb.SettlementEntry:
    r = found.result
    e = pb.SettlementEntry(
        setlinfo=pb.SetlInfo(
            setl_id=msgids.setl_id(r.institution_code, r.settlement_id), mdtrt_id=info.mdtrt_id if info else "",
            psn_no=r.patient_id_number,
            medfee_sumamt_fen=_medfee(found, info), psn_part_amt_fen=r.amount_fen,
            acct_pay_fen=r.acct_pay_fen, wallet_pay_fen=r.wallet_pay_fen, acct_mulaid_pay_fen=r.mulaid_pay_fen,
            mulaid_helper_psn_no=r.helper_id_number, psn_cash_pay_fen=r.cash_pay_fen,
            balc_fen=r.balance_after_fen, wallet_balc_fen=r.wallet_balance_after_fen,
            mulaid_reason=r.helper_reason, wallet_reason=r.wallet_reason, insuplc_admdvs=r.insured_region,
            fixmedins_code=r.institution_code, setl_time_unix_ms=r.settled_at_unix_ms,
            mulaid_helpers=helper_pays(r.helper_charges),
            fulamt_ownpay_amt_fen=info.fulamt_ownpay_fen if info else 0,
            overlmt_selfpay_fen=info.overlmt_selfpay_fen if info else 0,
            preselfpay_amt_fen=info.preselfpay_fen if info else 0, inscp_scp_amt_fen=info.inscp_scp_fen if info else 0),
        state=state or r.state, reversal_id=msgids.setl_id(r.institution_code, found.reversal_id),
        reversed_at_unix_ms=found.reversed_at_unix_ms,
        insutype=info.insutype if info else "", med_type=info.med_type if info else "",
        msgid=info.msgid if info else "")
    if e.state == "IN_PROGRESS" and (not found.reversal_id or found.undoing):
        # A 2207 still being settled, or a 2601 still charging a reversed settlement again: the balances
        # after it are not known yet (a 2208 being made leaves the settlement's own, which are).
        _balances_unknown(e.setlinfo)
    return e


def _balances_unknown(s: pb.SetlInfo) -> None:
    """No balance after: a HIS books `balc` as the patient's balance, so one not known yet is left out
    (the gateway answers it null), never answered as 0.00."""
    s.ClearField("balc_fen")
    for helper in s.mulaid_helpers:
        helper.ClearField("balc_fen")


def reversed_entry(result: rpb.SettlementResult, info: Entry | None, reversal_id: str,
                   reversed_at_ms: int) -> pb.SettlementEntry:
    """A settlement as 5203 gives it once `reversal_id` has reversed it (the 2208's answer)."""
    return _entry(rpb.SettlementLookup(settlement_id=result.settlement_id, found=True, result=result,
                                       reversal_id=reversal_id, reversed_at_unix_ms=reversed_at_ms),
                  info, state="REVERSED")


async def _lookups(router: Router, inst: str, sids: list[str], provinces: dict[str, str],
                   anywhere: Iterable[str] = ()) -> dict[str, rpb.SettlementLookup]:
    """The registries' records of `sids` (of this institution only), each asked of its province; one
    whose province is not known (the router's index has no entry of it) of each of `anywhere`."""
    by_province: dict[str, list[str]] = defaultdict(list)
    anywhere = list(anywhere)
    for sid in sids:
        for province in [provinces[sid]] if sid in provinces else anywhere:
            by_province[province].append(sid)
    out: dict[str, rpb.SettlementLookup] = {}
    for province, ids in by_province.items():
        for i in range(0, len(ids), MAX_BATCH):
            resp = await router._registry_call(province, "GetSettlements", rpb.GetSettlementsRequest(
                settlement_ids=ids[i:i + MAX_BATCH]))
            out.update({s.settlement_id: s for s in resp.settlements
                        if s.found and s.result.institution_code == inst})
    return out


# --- 5203 --------------------------------------------------------------------------------------


async def query_settlement(router: Router, req: pb.QuerySettlementRequest) -> pb.QuerySettlementResponse:
    inst = check_request(req)
    pid = validate.id_number(req.psn_no, "psn_no") if req.psn_no else ""
    validate.mdtrt_id(req.mdtrt_id)
    refund = ""  # the reversal id, when the setl_id is a reversal's (a refund's)
    if req.setl_id:
        validate_request_id(req.setl_id)
        sids = [msgids.from_setl_id(inst, req.setl_id)]
        if (reversed_sid := await router.index.reversed_by(inst, sids[0])) is not None:
            refund, sids = sids[0], [reversed_sid]
    elif req.mdtrt_id:
        sids = await router.index.visit(inst, req.mdtrt_id)
    else:
        raise errors.invalid("SETL_ID_REQUIRED", "give setl_id, or mdtrt_id", field="setl_id")
    infos = dict(zip(sids, await router.index.entries(inst, sids), strict=True))
    provinces = {sid: e.province for sid, e in infos.items() if e is not None}
    if pid:  # the person says where to look for a settlement the index does not hold; one it holds stays
        province = await router.province_of(pid, req.insuplc_admdvs)  # in its province after a move
        provinces = {sid: province for sid in sids} | provinces
    # Without the person, one the index does not hold (settled at a registry directly, or its entry lost)
    # is asked of every registry, as a 3202 row of it is: never taken for missing while a registry holds it.
    found = await _lookups(router, inst, sids, provinces, router.registries.addresses)
    # A visit named beside the setl_id must be the settlement's own (the index keeps the 2207's), as in a 2208.
    visit = req.mdtrt_id if req.setl_id else ""
    mine = [sid for sid in sids if sid in found and (not pid or found[sid].result.patient_id_number == pid)
            and not (visit and (info := infos.get(sid)) is not None and info.mdtrt_id and info.mdtrt_id != visit)
            and (not refund or found[sid].reversal_id == refund)]
    if not mine:
        raise errors.not_found("SETTLEMENT_NOT_FOUND", "no settlement of this institution"
                               + (" for this person" if pid else "") + (" of that visit" if visit else "")
                               + " by that setl_id / mdtrt_id")
    standing = [sid for sid in mine if found[sid].result.state == "SETTLED"]
    pick = mine[0] if refund else max(standing or mine, key=lambda sid: found[sid].result.settled_at_unix_ms)
    # A place named is judged as a 2208's and a 2601's: a query naming a place that contradicts the
    # settlement's is refused, not answered as if the place were right.
    held = found[pick].result
    await router._checked_reversal_place(held.patient_id_number, req.insuplc_admdvs, held.insured_region)
    if refund:  # a refund that stands (or is still being made): its record, as the 2208 answers it (3202 too)
        return pb.QuerySettlementResponse(settlement=_Held(found[pick], infos.get(pick)).refund(),
                                          setl_ids=[msgids.setl_id(inst, refund)])
    return pb.QuerySettlementResponse(settlement=_entry(found[pick], infos.get(pick)),
                                      setl_ids=[msgids.setl_id(inst, sid) for sid in mine])


# --- 3201 / 3202: the platform's view of a period --------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Held:
    """A settlement as the platform holds it, for the sums and comparisons of 3201 / 3202. Its full
    entry (`entry()`) is built only where an answer shows it."""

    found: rpb.SettlementLookup
    info: Entry | None

    @property
    def state(self) -> str:
        return self.found.result.state

    @property
    def medfee_fen(self) -> int:
        return _medfee(self.found, self.info)

    def entry(self) -> pb.SettlementEntry:
        return _entry(self.found, self.info)

    def refund(self) -> pb.SettlementEntry:
        """Its reversal as the institution's refund record (退费记录), as the 2208 answered it: the
        reversal's setl_id and time, the settlement's figures negative (the policy ranges the 2207 sent
        too), and the balances right after
        the reversal (the patient's, each helper's) as the registry kept them then. One still being
        made (IN_PROGRESS) has no balances after it yet: none is given (`_balances_unknown`)."""
        e = self.entry()
        s = e.setlinfo
        for name in ("medfee_sumamt_fen", "psn_part_amt_fen", "acct_pay_fen", "wallet_pay_fen", "acct_mulaid_pay_fen",
                     "psn_cash_pay_fen", "fulamt_ownpay_amt_fen", "overlmt_selfpay_fen", "preselfpay_amt_fen",
                     "inscp_scp_amt_fen"):
            setattr(s, name, -getattr(s, name))
        s.balc_fen = self.found.reversal_balance_after_fen
        refunds = list(self.found.reversal_refunds) if self.state == "REVERSED" else [
            rpb.HelperCharge(helper_id_number=c.helper_id_number, amount_fen=c.amount_fen)
            for c in self.found.result.helper_charges]
        del s.mulaid_helpers[:]
        s.mulaid_helpers.extend(helper_pays(refunds))
        for helper in s.mulaid_helpers:
            helper.amount_fen = -helper.amount_fen
        if self.state != "REVERSED":
            _balances_unknown(s)
        e.init_setl_id = s.setl_id
        s.setl_id, s.setl_time_unix_ms, e.msgid = e.reversal_id, e.reversed_at_unix_ms, e.reversal_id
        return e


@dataclass
class Period:
    settlements: dict[str, _Held] = field(default_factory=dict)  # settled in the period, by setl_id
    reversals: list[_Held] = field(default_factory=list)  # reversed in the period
    pending: dict[str, _Held] = field(default_factory=dict)  # still being settled or reversed, by setl_id
    pending_refunds: dict[str, str] = field(default_factory=dict)  # a reversal still being made → its setl_id
    # Listed (a 3202's rows) and held here, under the statement's selection, but dated in another period:
    # settlements by setl_id, refunds (refunds counted) by the reversal's id.
    outside: dict[str, _Held] = field(default_factory=dict)
    outside_refunds: dict[str, _Held] = field(default_factory=dict)
    end_ms: int = 0  # the period's end (exclusive)

    @property
    def in_progress(self) -> int:
        return len(self.pending)

    def reversed_later(self, h: _Held) -> bool:
        """Whether `h`, settled in the period, was reversed only after it: it stood at the period's end,
        and its reversal counts in the period of its own day (refunds counted: 3201)."""
        return h.state == "REVERSED" and h.found.reversed_at_unix_ms >= self.end_ms


def _bounds(st: pb.Statement) -> tuple[int, int]:
    try:
        begin = _dt.date.fromisoformat(st.stmt_begndate)
        end = _dt.date.fromisoformat(st.stmt_enddate)
    except ValueError:
        raise errors.invalid("INVALID_STMT_DATE", "stmt_begndate / stmt_enddate must be yyyy-MM-dd",
                             field="stmt_begndate") from None
    if len(st.stmt_begndate) != 10 or len(st.stmt_enddate) != 10 or end < begin or (end - begin).days >= MAX_DAYS:
        raise errors.invalid("INVALID_STMT_DATE", f"a period is 1..{MAX_DAYS} days, begin <= end (yyyy-MM-dd)",
                             field="stmt_enddate")
    validate.admdvs(st.setl_optins, "setl_optins")
    validate.dictionary_code(st.insutype, "insutype", reason="INVALID_INSUTYPE")
    validate.dictionary_code(st.clr_type, "clr_type", reason="INVALID_CLR_TYPE")
    refd_setl_flag(st.refd_setl_flag)
    start = _dt.datetime.combine(begin, _dt.time(), SHANGHAI)
    stop = _dt.datetime.combine(end + _dt.timedelta(days=1), _dt.time(), SHANGHAI)
    return int(start.timestamp() * 1000), int(stop.timestamp() * 1000)


def _selected(found: rpb.SettlementLookup, info: Entry | None, st: pb.Statement) -> bool:
    """Whether a settlement falls under the statement's insutype and clr_type (the index holds both)
    and is cleared by its setl_optins (the registry's record says where the person is insured)."""
    insutype, med_type = (info.insutype, info.med_type) if info else ("", "")
    return (not st.insutype or insutype == st.insutype) and \
        (not st.clr_type or clearing.clr_type(med_type) == st.clr_type) and \
        clearing.of_agency(found.result.insured_region, st.setl_optins)


async def _held(router: Router, inst: str, st: pb.Statement, part: list[str]
                ) -> tuple[dict[str, Entry | None], dict[str, rpb.SettlementLookup]]:
    """The index entries of settlement ids `part` and the records the registries hold of them."""
    infos = dict(zip(part, await router.index.entries(inst, part), strict=True))
    # Only the province that settled them can hold an agency's settlements: the others are not
    # asked (one that is down does not hold up another agency's reconciliation).
    provinces = {sid: e.province for sid, e in infos.items()
                 if e is not None and (not st.setl_optins or e.province == st.setl_optins[:2])}
    # One the index has no entry of (settled at a registry directly, or the index lost it) may be
    # held by any of them: it is asked of each, rather than taken for missing on the platform.
    unknown = [p for p in router.registries.addresses if not st.setl_optins or p == st.setl_optins[:2]]
    return infos, await _lookups(router, inst, [sid for sid in part if sid in provinces or infos[sid] is None],
                                 provinces, unknown)


async def period(router: Router, inst: str, st: pb.Statement, listed: Iterable[str] = ()) -> Period:
    """The period's settlements and reversals: those the router's index dates in it, the settlements its
    noted reversals name (one whose own entry is lost, or that was settled at a registry directly, is
    still counted in its day beside its refund), and `listed` (a 3202's rows); their records say whether
    they fall in it. A listed one held here but dated in another period is kept apart (`outside`)."""
    begin, end = _bounds(st)
    listed = dict.fromkeys(listed)
    sids = await router.index.settlements_between(inst, begin, end)
    revs = await router.index.reversals_between(inst, begin, end)
    known = set(sids) | {rid for rid, _ in revs}
    sids += [sid for sid in listed if sid not in known]
    reversal_ids: dict[str, list[str]] = defaultdict(list)  # setl_id → the reversal ids dated in the period
    for rid, sid in revs:
        reversal_ids[sid].append(rid)
    out = Period(end_ms=end)
    found_any: set[str] = set()
    every = list(dict.fromkeys(sids + [sid for _, sid in revs]))
    for i in range(0, len(every), CHUNK):  # each chunk's awaits give the event loop back
        infos, found_part = await _held(router, inst, st, every[i:i + CHUNK])
        found_any.update(found_part)
        for sid, found in found_part.items():
            info = infos.get(sid)
            if not _selected(found, info, st):
                continue
            h, r = _Held(found, info), found.result
            if begin <= r.settled_at_unix_ms < end:
                if r.state == "IN_PROGRESS":
                    out.pending[sid] = h
                else:
                    out.settlements[sid] = h
            elif sid in listed:
                out.outside[sid] = h
            if found.reversal_id in reversal_ids.get(sid, ()) and begin <= found.reversed_at_unix_ms < end:
                if r.state == "REVERSED":
                    out.reversals.append(h)
                elif r.state == "IN_PROGRESS":  # a reversal of the period that has not finished yet
                    out.pending[sid] = h
                    out.pending_refunds[msgids.from_setl_id(inst, found.reversal_id)] = sid
    if st.refd_setl_flag != "0":
        await _refunds_outside(router, inst, st, out, [sid for sid in listed if sid not in found_any],
                               begin, end)
    return out


async def _refunds_outside(router: Router, inst: str, st: pb.Statement, out: Period, listed: list[str],
                           begin: int, end: int) -> None:
    """Of listed ids that are no settlement's, the refunds (reversals the router noted) that stand, or are
    being made, and are dated in another period: `out.outside_refunds`."""
    for i in range(0, len(listed), CHUNK):
        part = listed[i:i + CHUNK]
        of = {rid: sid for rid, sid in zip(part, await router.index.reversed_by_many(inst, part), strict=True)
              if sid is not None}
        infos, found = await _held(router, inst, st, list(dict.fromkeys(of.values())))
        for rid, sid in of.items():
            f = found.get(sid)
            if f is not None and f.reversal_id == rid and f.result.state in ("REVERSED", "IN_PROGRESS") \
                    and not begin <= f.reversed_at_unix_ms < end and _selected(f, infos.get(sid), st):
                out.outside_refunds[rid] = _Held(f, infos.get(sid))


async def _totals(p: Period, refd_setl_flag: str) -> pb.Totals:
    t = pb.Totals()
    signed = [(h, 1) for h in p.settlements.values() if refd_setl_flag != "0" or h.state == "SETTLED"]
    if refd_setl_flag != "0":
        signed += [(h, -1) for h in p.reversals]
    for n, (h, sign) in enumerate(signed, 1):
        r = h.found.result
        t.medfee_sumamt_fen += sign * h.medfee_fen
        t.acct_pay_fen += sign * r.acct_pay_fen
        t.acct_mulaid_pay_fen += sign * r.mulaid_pay_fen
        t.wallet_pay_fen += sign * r.wallet_pay_fen
        t.cash_payamt_fen += sign * r.cash_pay_fen
        t.fixmedins_setl_cnt += 1
        if n % CHUNK == 0:
            await asyncio.sleep(0)
    return t


def institution_totals(req: pb.ReconcileTotalsRequest | pb.ReconcileDetailsRequest) -> None:
    """The institution's figures as the interface can carry them (validate.total), each field named."""
    for f in pb.Totals.DESCRIPTOR.fields:
        validate.total(getattr(req.totals, f.name), f"totals.{f.name}")


def _yuan(fen: int) -> str:
    return f"{'-' if fen < 0 else ''}{abs(fen) // 100}.{abs(fen) % 100:02d}"


def differences(mine: pb.Totals, theirs: pb.Totals, cash: bool, mine_zh: str, theirs_zh: str) -> list[str]:
    """The figures of a 3201 / 3202 that differ, in words: the count, medfee_sumamt, fund_pay_sumamt,
    acct_pay, and cash_payamt when `cash` (the institution sent it)."""
    compared = [("fixmedins_setl_cnt", "结算笔数", mine.fixmedins_setl_cnt, theirs.fixmedins_setl_cnt, False),
                ("medfee_sumamt", "医疗费总额", mine.medfee_sumamt_fen, theirs.medfee_sumamt_fen, True),
                ("fund_pay_sumamt", "基金支付总额", mine.fund_pay_sumamt_fen, theirs.fund_pay_sumamt_fen, True),
                ("acct_pay", "个人账户支付", mine.acct_pay_fen, theirs.acct_pay_fen, True)]
    if cash:
        compared.append(("cash_payamt", "现金支付", mine.cash_payamt_fen, theirs.cash_payamt_fen, True))
    return [f"{name}({zh})不符:{mine_zh}{_yuan(a) if money else a},{theirs_zh}{_yuan(b) if money else b}"
            for name, zh, a, b, money in compared if a != b]


async def reconcile_totals(router: Router, req: pb.ReconcileTotalsRequest) -> pb.ReconcileTotalsResponse:
    inst = check_request(req)
    institution_totals(req)
    p = await period(router, inst, req.statement)
    platform = await _totals(p, req.statement.refd_setl_flag)
    diffs = differences(req.totals, platform, req.cash_payamt_given, "机构", "平台")
    if p.in_progress:
        diffs.append(f"平台有{p.in_progress}笔结算正在处理,请稍后重新对账")
    return pb.ReconcileTotalsResponse(stmt_rslt="1" if diffs else "0",
                                      stmt_rslt_dscr=";".join(diffs) if diffs else "对账平", platform=platform,
                                      in_progress_cnt=p.in_progress)


def detail_figures(row: pb.DetailRow) -> dict[str, int | None]:
    """A detail row's figures by field, None for an optional one not given."""
    return {"medfee_sumamt_fen": row.medfee_sumamt_fen, "fund_pay_sumamt_fen": row.fund_pay_sumamt_fen,
            "acct_pay_fen": row.acct_pay_fen,
            "acct_mulaid_pay_fen": row.acct_mulaid_pay_fen if row.HasField("acct_mulaid_pay_fen") else None,
            "psn_cash_pay_fen": row.psn_cash_pay_fen if row.HasField("psn_cash_pay_fen") else None,
            "wallet_pay_fen": row.wallet_pay_fen if row.HasField("wallet_pay_fen") else None}


def refd_setl_flag(flag: str) -> None:
    """退费结算标志, of a statement or of a detail row: 1, 0 or empty, else INVALID_REFD_SETL_FLAG."""
    if flag not in ("", "0", "1"):
        raise errors.invalid("INVALID_REFD_SETL_FLAG", "refd_setl_flag is 1, 0 or empty", field="refd_setl_flag")
