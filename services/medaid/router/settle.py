"""2206 / 2207 through the router: the message checked, the settlement routed to the insuring
province (a resend to the one holding its first attempt) and its msgid claimed with a fingerprint
of the message. 2207s to one province share SettleBatch calls (batcher.py): the batch's claims and
index entries in one round trip, each item its own outcome; a resend whose first attempt went to
another province is settled there. One by one (`batch` off), each 2207 is claimed and sent alone."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
from typing import Any

import grpc

from medaid.common import errors, rpc, tracing
from medaid.common import msgid as msgids
from medaid.common import validate as common_validate
from medaid.common.batcher import unpack_outcome
from medaid.common.logs import event
from medaid.common.transport import Passthrough
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry import validate
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.router.batcher import Pending, SettleBatcher, SettleOutcome
from medaid.router.charges import helper_pays
from medaid.router.claims import REFUSED_BY_RULE
from medaid.router.core import RouterCore, check_institution, validate_msgid
from medaid.router.index import Entry
from medaid.router.v1 import router_pb2 as pb

log = logging.getLogger("medaid.router")


def settle_fingerprint(pid: str, req: pb.SettleRequest) -> str:
    """What a 2207's msgid is claimed with: the transaction, the person, and a digest of everything else
    the message says (the visit, the amounts, the med_type …), so that a msgid resent with any field
    changed is refused IDEMPOTENCY_KEY_REUSED instead of answered and indexed as the first (SPEC §7).
    `MsgidClaims.parse` reads the person back."""
    body = pb.SettleRequest()
    body.CopyFrom(req)
    body.msgid = ""
    body.input.psn_no = pid  # as normalised: an id number's 'x' and 'X' are the same message
    body.input.acct_used_flag = common_validate.flag(req.input.acct_used_flag) or ""  # "01" and "1" too
    return f"2207:{pid}|{hashlib.sha256(body.SerializeToString(deterministic=True)).hexdigest()[:20]}"


def amiss(province: str, request: rpb.SettleRequest | rpb.PreSettleRequest,
          result: rpb.SettlementResult) -> errors.DomainError | None:
    """Why a registry's answer to a 2206 / 2207 is not a split of the bill asked for (another person,
    another amount or settlement, a negative part, parts or helper shares that do not add up), else
    None. Such an answer is never passed on as a settlement the hospital would book: DOWNSTREAM_ERROR
    (UNKNOWN: a 2207 may have settled there, and its msgid stays bound for a resend)."""
    parts = (result.acct_pay_fen, result.wallet_pay_fen, result.mulaid_pay_fen, result.cash_pay_fen)
    charges = [c.amount_fen for c in result.helper_charges]
    if result.patient_id_number == request.patient_id_number and result.amount_fen == request.amount_fen \
            and result.settlement_id == getattr(request, "request_id", result.settlement_id) \
            and min(*parts, *charges) >= 0 and sum(parts) == request.amount_fen \
            and (not charges or sum(charges) == result.mulaid_pay_fen):
        return None
    return errors.DomainError(grpc.StatusCode.UNKNOWN, "DOWNSTREAM_ERROR", f"the registry of province {province} "
                              "answered with a split that is not this bill's; it may have settled: retry with the "
                              "same msgid", {"province": province})


# The internal outcome of a batch item whose msgid's first attempt went to another province.
_HELD_ELSEWHERE = "HELD_ELSEWHERE"


class Settling(RouterCore):
    """2206 and 2207: presettle, settle, the batched path and the resend held by another province."""

    # --- 2206 / 2207 ---------------------------------------------------------------------

    def _settle_input(self, req: Any) -> tuple[str, bool]:
        check_institution(req.institution)
        validate_msgid(req.msgid)
        i = req.input
        pid = validate.id_number(i.psn_no, "psn_no")
        validate.amount(i.psn_part_amt_fen, "psn_part_amt_fen")
        # Figures the router keeps for 5203 / 3201 / 3202 (0: not given); their sums must stay amounts too.
        for name in ("medfee_sumamt_fen", "fulamt_ownpay_amt_fen", "overlmt_selfpay_fen", "preselfpay_amt_fen",
                     "inscp_scp_amt_fen"):
            validate.amount_or_zero(getattr(i, name), name)
        if i.medfee_sumamt_fen and i.medfee_sumamt_fen < i.psn_part_amt_fen:
            raise errors.invalid("INVALID_AMOUNT", "medfee_sumamt must be at least psn_part_amt",
                                 field="medfee_sumamt_fen")
        use_account = common_validate.acct_used_flag(i.acct_used_flag) == "1"
        validate.enum_name(cpb.Category, i.category, "CATEGORY_", "category")
        validate.mdtrt_id(i.mdtrt_id)
        validate.dictionary_code(i.insutype, "insutype", reason="INVALID_INSUTYPE")
        validate.dictionary_code(i.med_type, "med_type", reason="INVALID_MED_TYPE")
        common_validate.med_type(i.med_type)
        return pid, use_account

    @staticmethod
    def _setlinfo(result: rpb.SettlementResult, req: Any, province_admdvs: str) -> pb.SetlInfo:
        return pb.SetlInfo(
            setl_id=msgids.setl_id(req.institution.fixmedins_code, result.settlement_id),
            mdtrt_id=req.input.mdtrt_id, psn_no=result.patient_id_number,
            medfee_sumamt_fen=req.input.medfee_sumamt_fen or result.amount_fen, psn_part_amt_fen=result.amount_fen,
            acct_pay_fen=result.acct_pay_fen, wallet_pay_fen=result.wallet_pay_fen,
            acct_mulaid_pay_fen=result.mulaid_pay_fen, mulaid_helper_psn_no=result.helper_id_number,
            psn_cash_pay_fen=result.cash_pay_fen, balc_fen=result.balance_after_fen,
            wallet_balc_fen=result.wallet_balance_after_fen, mulaid_reason=result.helper_reason,
            wallet_reason=result.wallet_reason, insuplc_admdvs=province_admdvs,
            fixmedins_code=req.institution.fixmedins_code, setl_time_unix_ms=result.settled_at_unix_ms,
            mulaid_helpers=helper_pays(result.helper_charges),
            fulamt_ownpay_amt_fen=req.input.fulamt_ownpay_amt_fen, overlmt_selfpay_fen=req.input.overlmt_selfpay_fen,
            preselfpay_amt_fen=req.input.preselfpay_amt_fen, inscp_scp_amt_fen=req.input.inscp_scp_amt_fen,
        )
    async def presettle(self, req: pb.PreSettleRequest) -> pb.PreSettleResponse:
        pid, use_account = self._settle_input(req)
        province = await self.province_of(pid, req.input.insuplc_admdvs)
        ask = rpb.PreSettleRequest(
            patient_id_number=pid, amount_fen=req.input.psn_part_amt_fen, use_account=use_account,
            category=req.input.category, institution_code=req.institution.fixmedins_code,
            institution_admdvs=req.institution.mdtrtarea_admvs, insured_region=req.input.insuplc_admdvs)
        try:
            resp = await self._registry_call(province, "PreSettle", ask)
        except (Passthrough, errors.DomainError) as exc:
            raise await self.named_elsewhere(exc, pid, req.input.insuplc_admdvs) from None
        if (wrong := amiss(province, ask, resp.result)) is not None:
            raise wrong
        place = resp.result.insured_region
        return pb.PreSettleResponse(setlinfo=self._setlinfo(resp.result, req, place))

    async def settle(self, req: pb.SettleRequest) -> pb.SettleResponse:
        pid, use_account = self._settle_input(req)
        inst = req.institution.fixmedins_code
        sid = msgids.scoped(inst, req.msgid)
        # A resend goes where its first attempt was settled, also once the person has moved province
        # since (answered there, not settled again). Batched, the msgid's claim tells a resend from a
        # first attempt, and only a resend's entry is read (`_held_elsewhere`); one by one, every
        # 2207's is.
        if self.batch:
            province = await self.province_of(pid, req.input.insuplc_admdvs)
        else:
            province, _ = await self.holding_province(inst, sid, pid, req.input.insuplc_admdvs)
        i = req.input
        entry = Entry(msgid=req.msgid, province=province, psn_no=pid, mdtrt_id=i.mdtrt_id, insutype=i.insutype,
                      med_type=i.med_type, medfee_fen=i.medfee_sumamt_fen or i.psn_part_amt_fen,
                      fulamt_ownpay_fen=i.fulamt_ownpay_amt_fen, overlmt_selfpay_fen=i.overlmt_selfpay_fen,
                      preselfpay_fen=i.preselfpay_amt_fen, inscp_scp_fen=i.inscp_scp_amt_fen)
        # The registry checks a given insuplc_admdvs against the patient's record (INSURED_PLACE_MISMATCH).
        item = rpb.SettleRequest(
            request_id=sid, patient_id_number=pid, amount_fen=req.input.psn_part_amt_fen,
            use_account=use_account, category=req.input.category,
            institution_code=inst, institution_admdvs=req.institution.mdtrtarea_admvs,
            insured_region=req.input.insuplc_admdvs, traceparent=tracing.traceparent())
        fp = settle_fingerprint(pid, req)
        try:
            if self.batch:
                resp = await self._batched_settle(province, Pending(item, entry, fp))
            else:
                async def work() -> rpb.SettleResponse:
                    await self.index.note_settlements([(sid, entry)], self.clock.now_ms())
                    answer: rpb.SettleResponse = await self._registry_call(province, "Settle", item)
                    if (wrong := amiss(province, item, answer.result)) is not None:
                        raise wrong  # the claim stays: not a refusal by a rule
                    return answer

                resp = await self.claims.call(sid, fp, work)
                await self.index.settled(inst, sid, entry, resp.result.settled_at_unix_ms)
        except (Passthrough, errors.DomainError) as exc:  # a refusal by rule left its msgid free (claims.py)
            raise await self.named_elsewhere(exc, pid, req.input.insuplc_admdvs) from None
        event(log, "2207", id_number=pid, province=province, msgid=req.msgid,
              mdtrtarea=req.institution.mdtrtarea_admvs)
        place = resp.result.insured_region
        return pb.SettleResponse(setlinfo=self._setlinfo(resp.result, req, place))

    async def _batched_settle(self, province: str, pending: Pending) -> rpb.SettleResponse:
        batcher = self._batchers.get(province)
        if batcher is None:
            async def send(items: list[Pending], province: str = province) -> list[SettleOutcome]:
                requests = [x.request for x in items]
                # The batch's msgid claims in one pipeline; a reused msgid fails only its own item.
                claims = [(x.request.request_id, x.fingerprint) for x in items]
                # Indexed once claimed and before any registry can act on them (index.py): on one Redis
                # by the claim script itself, on a cluster right after the claims.
                noted_ms = self.clock.now_ms()
                notes = [None if self._cluster else self.index.note_call(x.request.request_id, x.entry, noted_ms)
                         for x in items]
                claimed = await self.claims.claim_and_note(claims, notes)
                # Each item's answer: its claim's refusal, else (None until it comes) the registry's.
                outcomes: list[SettleOutcome | None] = [e for e, _ in claimed]
                fresh = {r.request_id for r, (_, wrote) in zip(requests, claimed, strict=True) if wrote}
                send_idx = [i for i, e in enumerate(outcomes) if e is None]
                if send_idx:
                    if self._cluster:
                        noted = [(requests[i].request_id, items[i].entry) for i in send_idx]
                        fresh = {sid for (sid, _), wrote in zip(
                            noted, await self.index.note_settlements(noted, noted_ms), strict=True) if wrote}
                    # A resend whose first attempt went to another province goes there (_batched_settle).
                    elsewhere = await self._held_elsewhere(province, [
                        requests[i].request_id for i in send_idx if requests[i].request_id not in fresh])
                    for i in send_idx:
                        if (other := elsewhere.get(requests[i].request_id)) is not None:
                            outcomes[i] = errors.DomainError(grpc.StatusCode.ABORTED, _HELD_ELSEWHERE,
                                                             f"settled by province {other}", {"province": other})
                    send_idx = [i for i in send_idx if requests[i].request_id not in elsewhere]
                if send_idx:
                    try:
                        # One call for several 2207s: the router's whole deadline, whoever came first.
                        resp = await self._registry_call(province, "SettleBatch", rpb.SettleBatchRequest(
                            requests=[requests[i] for i in send_idx]), timeout=self.deadline_s)
                    except Passthrough as exc:  # the whole batch refused
                        if exc.status.code in REFUSED_BY_RULE:
                            await self.claims.release_many([claims[i] for i in send_idx])
                        raise
                    for i, outcome in zip(send_idx, resp.outcomes, strict=True):
                        answer = unpack_outcome(outcome)
                        outcomes[i] = amiss(province, requests[i], answer.result) or answer \
                            if isinstance(answer, rpb.SettleResponse) else answer
                    # An entry an earlier attempt left, or one dated far from its settlement, is
                    # replaced (index.py); the batch's in one round trip, usually none at all.
                    await self.index.settled_many([
                        (sid, items[i].entry, at) for i in send_idx
                        if isinstance(answer := outcomes[i], rpb.SettleResponse)
                        for sid in [requests[i].request_id] for at in [answer.result.settled_at_unix_ms]
                        if sid not in fresh or not self.index.dated_well(noted_ms, at)])
                    # Items a rule refused leave their claims before anyone hears the refusal; settled
                    # ones bind theirs for good.
                    await self.claims.finish_many(
                        [claims[i] for i in send_idx if isinstance(refusal := outcomes[i], errors.DomainError)
                         and refusal.code in REFUSED_BY_RULE],
                        [claims[i] for i in send_idx if isinstance(outcomes[i], rpb.SettleResponse)])
                # Every item has its answer by now (the batcher checks that one comes per item).
                return [o for o in outcomes if o is not None]

            batcher = self._batchers[province] = SettleBatcher(send)
        # One batch is on its way at a time, so a 2207 may first wait for the one before it: the wait
        # counts against the deadline of the call to the registry (and the caller's), and a 2207 still
        # queued when it runs out leaves no batch (it wrote nothing, not even its claim).
        try:
            async with asyncio.timeout(rpc.time_left(self.deadline_s)):
                return await batcher.settle(pending)
        except TimeoutError:
            raise self._registry_unavailable(province) from None
        except errors.DomainError as exc:
            if exc.reason != _HELD_ELSEWHERE:
                raise
            return await self._settle_where_held(exc.metadata["province"], pending)

    async def _held_elsewhere(self, province: str, resent: list[str]) -> dict[str, str]:
        """Of the settlement ids of resent 2207s (their msgids claimed before), those whose first
        attempt the index notes as sent to another province than `province`, with that province."""
        if not resent:
            return {}
        entries = await self.index.entries_of([(sid[:12], sid) for sid in resent])
        return {sid: e.province for sid, e in zip(resent, entries, strict=True)
                if e is not None and e.province != province}

    async def _settle_where_held(self, province: str, pending: Pending) -> rpb.SettleResponse:
        """A resent 2207 (its msgid already claimed by this attempt) sent to the province that holds
        its first attempt, which answers it as it did then or finishes it."""
        sid = pending.request.request_id
        try:
            resp: rpb.SettleResponse = await self._registry_call(province, "Settle", pending.request)
        except Passthrough as exc:
            if exc.status.code in REFUSED_BY_RULE:
                await self.claims.release_many([(sid, pending.fingerprint)])
            raise
        if (wrong := amiss(province, pending.request, resp.result)) is not None:
            raise wrong
        await self.claims.finish_many([], [(sid, pending.fingerprint)])
        await self.index.settled_many([(sid, dataclasses.replace(pending.entry, province=province),
                                        resp.result.settled_at_unix_ms)])
        return resp
