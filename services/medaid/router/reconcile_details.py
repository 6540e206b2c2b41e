"""3202 对明细账: an institution's settlements of a period, one row each, against the platform's
(the period as reconcile.py works it out; docs/reconciliation.md says what each mismatch means)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from medaid.common import errors
from medaid.common import msgid as msgids
from medaid.common.idempotency import validate_request_id
from medaid.registry import validate
from medaid.router.reconcile import (
    CHUNK,
    MAX_ROWS,
    Period,
    check_request,
    detail_figures,
    differences,
    institution_totals,
    period,
    refd_setl_flag,
)
from medaid.router.v1 import router_pb2 as pb

if TYPE_CHECKING:
    from medaid.router.service import Router


def _elsewhere(p: Period, sid: str, row: pb.DetailRow) -> pb.Mismatch:
    """A row the period does not hold: OUT_OF_PERIOD where the platform holds it under the statement's
    selection but dates it in another period (a 2207 at 23:59:59.9 the HIS booked the next day; a refund
    of another day), with the platform's record and so its time; else MISSING_ON_PLATFORM. Never
    "the platform has no such settlement" for one it holds: a HIS that took that at its word would
    collect the bill again."""
    if (h := p.outside.get(sid)) is not None:
        return pb.Mismatch(setl_id=row.setl_id, kind="OUT_OF_PERIOD", platform=h.entry())
    if (h := p.outside_refunds.get(sid)) is not None:
        return pb.Mismatch(setl_id=row.setl_id, kind="OUT_OF_PERIOD", platform=h.refund())
    return pb.Mismatch(setl_id=row.setl_id, kind="MISSING_ON_PLATFORM")


async def reconcile_details(router: Router, req: pb.ReconcileDetailsRequest) -> pb.ReconcileDetailsResponse:
    inst = check_request(req)
    institution_totals(req)
    if not 0 < len(req.rows) <= MAX_ROWS:
        raise errors.invalid("INVALID_DETAIL", f"the detail lists 1..{MAX_ROWS} settlements", field="detail")
    rows: dict[str, pb.DetailRow] = {}  # by the product's id (msgid.py); each names the setl_id it gave
    summed = pb.Totals(fixmedins_setl_cnt=len(req.rows))  # the rows' own totals, for the header
    cash_in_rows = True
    for n, row in enumerate(req.rows, 1):
        validate_request_id(row.setl_id)
        # The row's visit and person, where given, as a 2207 must give them (registry/validate.py).
        if row.psn_no:
            validate.id_number(row.psn_no, "psn_no")
        validate.mdtrt_id(row.mdtrt_id)
        refd_setl_flag(row.refd_setl_flag)
        validate.detail_figures(detail_figures(row), refund_record=row.refd_setl_flag == "1")
        sid = msgids.from_setl_id(inst, row.setl_id)
        if sid in rows:
            raise errors.invalid("INVALID_DETAIL", f"setl_id {row.setl_id} is listed twice", field="detail")
        rows[sid] = row
        summed.medfee_sumamt_fen += row.medfee_sumamt_fen
        summed.fund_pay_sumamt_fen += row.fund_pay_sumamt_fen
        summed.acct_pay_fen += row.acct_pay_fen
        summed.cash_payamt_fen += row.psn_cash_pay_fen
        cash_in_rows = cash_in_rows and row.HasField("psn_cash_pay_fen")
        if n % CHUNK == 0:
            await asyncio.sleep(0)
    # The header (汇总) must be the totals of the rows it comes with; cash only where every row gives it.
    header = differences(req.totals, summed, req.cash_payamt_given and cash_in_rows, "汇总", "明细合计") \
        if req.HasField("totals") else []
    flag = req.statement.refd_setl_flag
    p = await period(router, inst, req.statement, rows)
    platform = p.settlements
    expected = {sid for sid, h in platform.items() if flag != "0" or h.state == "SETTLED"}
    # Refund records (退费记录): an institution that keeps a reversal as a row of its own lists it under
    # the reversal's setl_id (the 2208's, or the 2601's), its figures negative, refd_setl_flag 1. Once it
    # lists one, it is held to every reversal of the period, as 3201 counts them.
    refunds = {msgids.from_setl_id(inst, h.found.reversal_id): h for h in p.reversals} if flag != "0" else {}
    as_records = any(sid in refunds and sid not in platform for sid in rows)
    refunded = {refunds[sid].found.settlement_id for sid in rows if sid in refunds and sid not in platform}
    mismatches: list[pb.Mismatch] = []
    for n, (sid, row) in enumerate(rows.items(), 1):
        if n % CHUNK == 0:
            await asyncio.sleep(0)
        h, sign = platform.get(sid), 1
        if h is None and sid in refunds:  # a refund record
            h, sign = refunds[sid], -1
        if h is None:  # one still being settled or reversed is not missing: the platform holds it, unfinished
            pending = p.pending.get(sid)
            of_refund = p.pending.get(p.pending_refunds.get(sid, ""))
            mismatches.append(pb.Mismatch(setl_id=row.setl_id, kind="IN_PROGRESS", platform=pending.entry())
                              if pending else
                              pb.Mismatch(setl_id=row.setl_id, kind="IN_PROGRESS", platform=of_refund.refund())
                              if of_refund else _elsewhere(p, sid, row))
            continue
        entry = h.entry if sign == 1 else h.refund
        reversed_there, reversed_here = h.state == "REVERSED", row.refd_setl_flag == "1"
        # A settlement whose refund record is listed too stays a settlement in its own row (flag 0 or 1);
        # so does one reversed after the period, refunds counted: it stood at the period's end (as 3201
        # counts it), and its refund is a later period's record, or the row says it is reversed now.
        later = flag != "0" and p.reversed_later(h)
        if sign == 1 and reversed_there != reversed_here and sid not in refunded and not later:
            mismatches.append(pb.Mismatch(setl_id=row.setl_id, kind="REVERSED" if reversed_there else "NOT_REVERSED",
                                          platform=entry()))
        r = h.found.result
        pairs = [("medfee_sumamt", row.medfee_sumamt_fen, sign * h.medfee_fen),
                 ("fund_pay_sumamt", row.fund_pay_sumamt_fen, 0), ("acct_pay", row.acct_pay_fen, sign * r.acct_pay_fen)]
        if row.HasField("acct_mulaid_pay_fen"):
            pairs.append(("acct_mulaid_pay", row.acct_mulaid_pay_fen, sign * r.mulaid_pay_fen))
        if row.HasField("psn_cash_pay_fen"):
            pairs.append(("psn_cash_pay", row.psn_cash_pay_fen, sign * r.cash_pay_fen))
        if row.HasField("wallet_pay_fen"):
            pairs.append(("wallet_pay", row.wallet_pay_fen, sign * r.wallet_pay_fen))
        if sign == -1 and not reversed_here:
            pairs.append(("refd_setl_flag", 0, 1))
        differ = [name for name, a, b in pairs if a != b]
        if differ:
            mismatches.append(pb.Mismatch(setl_id=row.setl_id, kind="AMOUNT_DIFFERS", fields=",".join(differ),
                                          platform=entry()))
        # Whose and which visit, where the row says: another person's or visit's settlement is not this row's.
        visit = h.info.mdtrt_id if h.info else ""
        other = [name for name, given, held in (("psn_no", row.psn_no.upper(), r.patient_id_number),
                                                ("mdtrt_id", row.mdtrt_id, visit)) if given and held and given != held]
        if other:
            mismatches.append(pb.Mismatch(setl_id=row.setl_id, kind="INFO_DIFFERS", fields=",".join(other),
                                          platform=entry()))
    missing = sorted(expected - rows.keys(), key=lambda x: platform[x].found.result.settled_at_unix_ms)
    for n, sid in enumerate(missing, 1):
        if n % CHUNK == 0:
            await asyncio.sleep(0)
        mismatches.append(pb.Mismatch(setl_id=msgids.setl_id(inst, sid), kind="MISSING_AT_INSTITUTION",
                                      platform=platform[sid].entry()))
    if as_records:
        for rid in sorted(refunds.keys() - rows.keys(), key=lambda x: refunds[x].found.reversed_at_unix_ms):
            mismatches.append(pb.Mismatch(setl_id=msgids.setl_id(inst, rid), kind="MISSING_AT_INSTITUTION",
                                          platform=refunds[rid].refund()))
    dscr = ";".join(([f"{len(mismatches)}笔明细不符"] if mismatches else []) + header) or "对账平"
    if p.in_progress:
        dscr += f";平台有{p.in_progress}笔结算正在处理,请稍后重新对账"
    return pb.ReconcileDetailsResponse(
        stmt_rslt="1" if mismatches or header or p.in_progress else "0", stmt_rslt_dscr=dscr,
        platform_cnt=len(expected) + (len(refunds) if as_records else 0),
        institution_cnt=len(rows), mismatches=mismatches, in_progress_cnt=p.in_progress)
