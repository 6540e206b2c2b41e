"""2601 冲正 at the router: undo an institution's 2207 or 2208 whose answer was lost.

1. The original msgid's claim is read, and voided if nobody claimed it (msgid_void.lua): an
   original that never arrived is remembered, and refused (ORIGINAL_CANCELLED) if it comes later.
   A claim for another transaction or person refuses the 2601 (ORIGINAL_MISMATCH); a msgid that
   is another institution's, and not this one's too, refuses it (ORIGINAL_OF_ANOTHER_INSTITUTION).
2. The registry holding the original's settlement is asked (CancelRequest; the router's index says
   which, also after the person moved province; else the insuring one): an id it never saw is
   voided there too (a safety net for callers that reach it directly), and then the router's claim
   of it as well (one an attempt took before a crash); an id it saw says what it did.
3. A 2207 is reversed (the 2601's id is the reversal's id), or answered ALREADY_REVERSED when another
   reversal has it, also one that got there while this 2601 was under way; either way the registry keeps
   the settlement cancelled (`cancel`), and no 2601 of a 2208 restores it since, whatever the timing. A
   2208 is undone (UndoReversal: the same accounts pay again, or the 2601 is refused with the source
   that no longer covers it, or ORIGINAL_CANCELLED once a 2601 of its 2207 cancelled the settlement).
4. Once undone, the original's claim is voided for good: a late duplicate of it is refused
   instead of being answered as if it still stood. The claim names the first 2601 that voided it;
   a later 2601 of the same original changes nothing there (msgid_void.lua).

An insuplc_admdvs the 2601 names is checked as a 2208's (the settlement's own insured place or the
one insuring the person now; for an original that never arrived, the person's record in the province
it names), else INSURED_PLACE_MISMATCH before anything is written.

The 2601 itself is idempotent by its own msgid (a claim like every other message's), and a
refusal by a rule frees it, as for a 2207.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import grpc

from medaid.common import errors
from medaid.common import msgid as msgids
from medaid.common import validate as validate_place
from medaid.common.idnumber import mask
from medaid.common.logs import event
from medaid.common.transport import Passthrough
from medaid.registry import validate
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.router.charges import helper_pays
from medaid.router.v1 import router_pb2 as pb

if TYPE_CHECKING:
    from medaid.router.service import Router

log = logging.getLogger("medaid.router")


def _mismatch(what: str) -> errors.DomainError:
    return errors.refused("ORIGINAL_MISMATCH", f"omsgid {what}", field="omsgid")


async def undo(router: Router, req: pb.UndoRequest) -> pb.UndoResponse:
    validate.institution(req.institution.fixmedins_code)
    validate.admdvs(req.institution.mdtrtarea_admvs, "mdtrtarea_admvs", required=True)
    msgids.require(req.msgid)
    msgids.require(req.omsgid, "omsgid")
    if req.oinfno not in ("2207", "2208"):
        raise errors.invalid("UNSUPPORTED_OINFNO", "oinfno is 2207 (settlement) or 2208 (reversal)", field="oinfno")
    if req.omsgid == req.msgid:  # a 2601 built from its original's envelope, its msgid left as it was
        raise errors.invalid("OMSGID_IS_THIS_MSGID", "omsgid is the msgid of the transaction to undo, not this "
                             "one: the 2601 needs a msgid of its own", field="omsgid")
    pid = validate.id_number(req.psn_no, "psn_no")
    inst = req.institution.fixmedins_code
    undo_id, orig = msgids.scoped(inst, req.msgid), msgids.scoped(inst, req.omsgid)
    seen = bool(await router.directory.client.exists(router.claims.key(orig)))  # this institution's message
    if not seen and orig != req.omsgid and await router.directory.client.exists(router.claims.key(req.omsgid)):
        # A msgid in another institution's own shape that it used, and this one did not: not its to undo.
        raise errors.DomainError(grpc.StatusCode.PERMISSION_DENIED, "ORIGINAL_OF_ANOTHER_INSTITUTION",
                                 f"omsgid {req.omsgid} is another institution's", {"field": "omsgid"})
    insuring = await router.province_of(pid, req.insuplc_admdvs)
    if req.insuplc_admdvs and not seen:
        # An original the router never saw: the place named is checked against the person's record there,
        # as a 2207's would be, before the 2601 voids anything (one it saw: against its settlement, below).
        validate_place.insured_place(req.insuplc_admdvs, await router._record_place(insuring, pid), who=mask(pid))

    fingerprint = f"2601:{pid}:{req.oinfno}:{orig}"

    async def work() -> pb.UndoResponse:
        before = await router.claims.void(orig, undo_id, always=False)
        settlement = orig if req.oinfno == "2207" else ""  # the settlement the original was of
        if before and not before.startswith("void:"):
            kind, person = router.claims.parse(before)
            if kind != req.oinfno or person != pid:
                raise _mismatch(f"{req.omsgid} was a {kind} for another person or transaction")
            if kind == "2208":  # '2208:<psn>:<setl_id>'
                settlement = before.split(":", 2)[2]
        elif req.oinfno == "2208":  # voided by an earlier 2601 of it: the index names what it reversed
            settlement = await router.index.reversed_by(inst, orig) or ""
        # The province that holds the settlement (the router's index), which stays the one that settled
        # it when the person has moved since; else the one insuring the person now.
        [entry] = await router.index.entries_of([(inst, settlement)]) if settlement else [None]
        province = entry.province if entry is not None else insuring
        cancel = await router._registry_call(province, "CancelRequest", rpb.CancelRequestRequest(
            request_id=undo_id, original_request_id=orig))
        if cancel.outcome == "VOIDED":
            # The registry never saw the original, or freed it unsettled after a crash while the router's
            # claim stayed (the outcome unknown to it): the registry refuses it from now on, and so does
            # the router, resent as it was or with other fields.
            await router.claims.void(orig, undo_id, always=True)
            event(log, "2601", outcome="VOIDED", msgid=req.msgid, omsgid=req.omsgid, fixmedins=inst)
            return pb.UndoResponse(outcome="VOIDED")
        if cancel.op != ("settle" if req.oinfno == "2207" else "reverse"):
            raise _mismatch(f"{req.omsgid} was a {cancel.op}, not a {req.oinfno}")
        if not cancel.finished:
            raise errors.unavailable("ORIGINAL_IN_PROGRESS", f"{req.omsgid} is still being processed; send this "
                                     "2601 again shortly")
        [found] = (await router._registry_call(province, "GetSettlements", rpb.GetSettlementsRequest(
            settlement_ids=[cancel.settlement_id]))).settlements
        if not found.found or found.result.patient_id_number != pid or found.result.institution_code != inst:
            raise _mismatch(f"{req.omsgid} is not this person's transaction at this institution")
        # As in a 2208: the settlement's own insured place, or the one insuring the person now.
        await router._checked_reversal_place(pid, req.insuplc_admdvs, found.result.insured_region)
        if req.oinfno == "2208":
            by = await router.claims.voided_by(cancel.settlement_id)
            # An earlier 2601 cancelled the settlement itself: it must not stand again (the registry judges it,
            # also for one under way now; a settlement cancelled before it kept that is judged here). A resend
            # of this 2601 once it was answered is not a new undo: the registry answers it as the first time.
            if by and not await router.claims.answered(undo_id, fingerprint):
                raise errors.refused("ORIGINAL_CANCELLED", f"settlement {cancel.settlement_id} was cancelled by the "
                                     f"2601 {by}; its reversal stays", field="omsgid")
            out = await _restore(router, province, inst, undo_id, orig)
        else:  # reversed by this 2601, or ALREADY_REVERSED by another: the registry cancels it for good either way
            out = await _reverse(router, province, inst, undo_id, cancel.settlement_id, fingerprint)
        await router.claims.void(orig, undo_id, always=True)
        event(log, "2601", outcome=out.outcome, msgid=req.msgid, omsgid=req.omsgid, fixmedins=inst,
              setl_id=out.setl_id)
        return out

    return await router.claims.call(undo_id, fingerprint, work)


async def _reverse(router: Router, province: str, inst: str, undo_id: str, sid: str,
                   fingerprint: str) -> pb.UndoResponse:
    await router.index.note_reversal(inst, undo_id, sid, router.clock.now_ms())
    try:
        r = await router._registry_call(province, "ReverseSettlement", rpb.ReverseSettlementRequest(
            request_id=undo_id, settlement_id=sid, cancel=True))
    except Passthrough as exc:
        if errors.status_reason(exc.status) != "ALREADY_REVERSED":
            raise
        # Another reversal (a 2208, another 2601) took the settlement after it was read: answered as the
        # one found reversed already, whatever the timing; this 2601 reversed nothing, so its note goes.
        await router.index.forget([(undo_id, fingerprint)])
        return pb.UndoResponse(outcome="ALREADY_REVERSED", setl_id=msgids.setl_id(inst, sid))
    await router.index.note_reversal(inst, undo_id, sid, r.reversed_at_unix_ms)
    return pb.UndoResponse(outcome="REVERSED", setl_id=msgids.setl_id(inst, sid), acct_pay_fen=r.acct_refund_fen,
                           wallet_pay_fen=r.wallet_refund_fen, acct_mulaid_pay_fen=r.mulaid_refund_fen,
                           mulaid_helper_psn_no=r.helper_id_number, mulaid_helpers=helper_pays(r.helper_refunds))


async def _restore(router: Router, province: str, inst: str, undo_id: str, reversal_id: str) -> pb.UndoResponse:
    r = await router._registry_call(province, "UndoReversal", rpb.UndoReversalRequest(
        request_id=undo_id, reversal_id=reversal_id))
    if r.outcome != "RESTORED":  # ALREADY_RESTORED: an earlier 2601 charged them; this one moved nothing
        return pb.UndoResponse(outcome=r.outcome, setl_id=msgids.setl_id(inst, r.settlement_id))
    return pb.UndoResponse(outcome=r.outcome, setl_id=msgids.setl_id(inst, r.settlement_id),
                           acct_pay_fen=r.acct_pay_fen,
                           wallet_pay_fen=r.wallet_pay_fen, acct_mulaid_pay_fen=r.mulaid_pay_fen,
                           mulaid_helper_psn_no=r.helper_charges[0].helper_id_number if r.helper_charges else "",
                           mulaid_helpers=helper_pays(r.helper_charges))
