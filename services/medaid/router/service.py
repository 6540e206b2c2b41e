"""Settlement router: 1101 / 2206 / 2207 / 2208 routed to the insuring province's registry; 2601
冲正 (undo.py), 5203 and 3201 / 3202 reconciliation (reconcile.py, over the index in index.py).

The router keeps no money state. `msgid` is passed to the registry as the request id, so a
resent 2207 is answered from the registry's idempotency record and settles once. Each registry
only sees its own ids, so the router remembers which transaction and person a 2207/2208 msgid was
first routed for (`rtr:{mid:<msgid>}`) and refuses the same msgid for another one
(IDEMPOTENCY_KEY_REUSED) instead of letting a second province act on it. A message a registry
refuses by a rule wrote nothing there, so the router drops its claim too (see MsgidClaims) and
the corrected message may use the same msgid. A refusal from a registry is passed through with
its google.rpc.Status unchanged (same code, same ErrorInfo); a registry that does not answer
becomes UNAVAILABLE / REGISTRY_UNAVAILABLE.

The insured place a 2206/2207 answers (insuplc_admdvs) is the person's 统筹区 as their registry
holds it; an insuplc_admdvs the caller gives is checked against that record before anything is
written (INSURED_PLACE_MISMATCH).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2
from grpc_status import rpc_status
from redis.asyncio.cluster import RedisCluster

from medaid.common import errors, rpc, tracing
from medaid.common import msgid as msgids
from medaid.common.batcher import unpack_outcome
from medaid.common.clock import Clock
from medaid.common.idempotency import validate_request_id
from medaid.common.idnumber import mask, parse
from medaid.common.logs import event, scrub
from medaid.common.transport import Passthrough
from medaid.common.v1 import common_pb2 as cpb
from medaid.directory import Directory
from medaid.registry import validate
from medaid.registry.client import Registries
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.router import reconcile
from medaid.router import undo as undo_mod
from medaid.router.batcher import Pending, SettleBatcher, SettleOutcome
from medaid.router.charges import helper_pays
from medaid.router.claims import REFUSED_BY_RULE, MsgidClaims
from medaid.router.index import Entry, SettlementIndex
from medaid.router.v1 import router_pb2 as pb

log = logging.getLogger("medaid.router")

T = TypeVar("T")

def settle_fingerprint(pid: str, req: pb.SettleRequest) -> str:
    """What a 2207's msgid is claimed with: the transaction, the person, and a digest of everything else
    the message says (the visit, the amounts, the med_type …), so that a msgid resent with any field
    changed is refused IDEMPOTENCY_KEY_REUSED instead of answered and indexed as the first (SPEC §7).
    `MsgidClaims.parse` reads the person back."""
    body = pb.SettleRequest()
    body.CopyFrom(req)
    body.msgid = ""
    body.input.psn_no = pid  # as normalised: an id number's 'x' and 'X' are the same message
    return f"2207:{pid}|{hashlib.sha256(body.SerializeToString(deterministic=True)).hexdigest()[:20]}"


def validate_msgid(msgid: str) -> None:
    """Any 30 characters of [0-9A-Za-z] (medaid.common.msgid); the institution scopes it."""
    msgids.require(msgid)


def check_institution(inst: pb.Institution) -> None:
    validate.institution(inst.fixmedins_code)
    validate.admdvs(inst.mdtrtarea_admvs, "mdtrtarea_admvs", required=True)


# Registry refusals that mean "a rule said no, nothing was written": the claim of such an attempt
# is dropped. Any other failure (UNAVAILABLE, DEADLINE_EXCEEDED, UNKNOWN, INTERNAL …) leaves the
# outcome unknown, and ALREADY_EXISTS says the msgid already has an effect there: those keep it.
# The internal outcome of a batch item whose msgid's first attempt went to another province.
_HELD_ELSEWHERE = "HELD_ELSEWHERE"
# How long GetDownstreamHealth waits for one downstream's health check.
_HEALTH_CHECK_S = 1.0


class Router:
    def __init__(self, directory: Directory, registries: Registries, *, wallet_address: str = "",
                 clock: Clock | None = None, deadline_s: float = rpc.DEFAULT_DEADLINE_S, batch: bool = True) -> None:
        self.directory = directory
        self.index = SettlementIndex(directory.client)
        # On one Redis the claim script also writes a 2207's index entry (index.py).
        self._cluster = isinstance(directory.client, RedisCluster)
        self.claims = MsgidClaims(directory.client, on_freed=self.index.forget, deadline_s=deadline_s)
        self.registries = registries
        # Person look-ups for the insured place travel on channels of their own: sharing one with
        # SettleBatch, round robin over a province's replicas would hand every settlement to one
        # replica and every look-up to the other.
        self._lookups = Registries(registries.addresses, deadline_s=registries.deadline_s, wait_for_ready=True)
        self.clock = clock or Clock()
        self.deadline_s = deadline_s
        self.wallet_address = wallet_address
        # 2207s to one province share SettleBatch calls (see batcher.py).
        self.batch = batch
        self._batchers: dict[str, SettleBatcher] = {}
        self._wallet_stub: Any = None
        self._wallet_channel: grpc.aio.Channel | None = None

    def _wallet(self) -> Any:
        if not self.wallet_address:
            return None
        if self._wallet_stub is None:
            from medaid.wallet.v1 import wallet_pb2, wallet_pb2_grpc

            name = wallet_pb2.DESCRIPTOR.services_by_name["WalletService"].full_name
            self._wallet_channel = rpc.channel(self.wallet_address, [name])
            self._wallet_stub = wallet_pb2_grpc.WalletServiceStub(self._wallet_channel)
        return self._wallet_stub

    async def close(self) -> None:
        await self.registries.close()
        await self._lookups.close()
        if self._wallet_channel is not None:
            await self._wallet_channel.close()

    # --- routing -------------------------------------------------------------------------

    async def province_of(self, psn_no: str, insuplc_admdvs: str) -> str:
        if insuplc_admdvs:
            validate.admdvs(insuplc_admdvs, "insuplc_admdvs")
            province = insuplc_admdvs[:2]
        else:
            found = await self.directory.lookup(psn_no)
            if found is None:
                raise errors.not_found("PERSON_NOT_FOUND", f"no province insures {mask(psn_no)}")
            province = found[0]
        if province not in self.registries.addresses:
            raise errors.invalid("UNKNOWN_INSURED_PLACE", f"no registry serves province {province}",
                                 field="insuplc_admdvs")
        return province

    async def holding_province(self, inst: str, sid: str, pid: str, insuplc_admdvs: str) -> tuple[str, Entry | None]:
        """Where a message about settlement `sid` (its 2207, resent, or its 2208) goes, and the router's
        index entry of it: the province that settled it, also once the person has moved since (a
        resent 2207 is answered there as the first time, not settled again where they are insured
        now); else the one insuring the person."""
        insuring, [entry] = await asyncio.gather(self.province_of(pid, insuplc_admdvs),
                                                 self.index.entries_of([(inst, sid)]))
        return (entry.province if entry is not None else insuring), entry

    @staticmethod
    def _registry_unavailable(province: str) -> errors.DomainError:
        return errors.unavailable("REGISTRY_UNAVAILABLE", f"the registry of province {province} is not "
                                  "answering; retry the same msgid later", province=province)

    async def _registry_call(self, province: str, method: str, request: Any, *, timeout: float | None = None) -> Any:
        """A call to a province's registry; `timeout` None: the router's deadline, cut to what the call
        being served has left (rpc.budget). It waits, within its deadline, for a registry that is not
        connected (wait_for_ready): one back from a restart is reached by the next call, where gRPC's
        default would fail every call at once until the channel's reconnect backoff, grown during the
        outage, ran out (seconds of REGISTRY_UNAVAILABLE from a registry that answers). A registry that
        stays down is REGISTRY_UNAVAILABLE at the deadline, as one that does not answer always was."""
        stub = self.registries.stub(province)
        try:
            return await getattr(stub, method)(request, timeout=rpc.time_left(self.deadline_s)
                                               if timeout is None else timeout, wait_for_ready=True)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) \
                    and errors.error_info(exc) is None:
                raise self._registry_unavailable(province) from None
            status = rpc_status.from_call(exc)  # type: ignore[arg-type]  # an AioRpcError serves (see errors.py)
            if status is None:
                raise errors.DomainError(exc.code(), "DOWNSTREAM_ERROR", exc.details() or "") from None
            raise Passthrough(rpc_status.to_status(status)) from None

    # --- 1101 ----------------------------------------------------------------------------

    async def query_person(self, req: pb.QueryPersonRequest) -> pb.QueryPersonResponse:
        check_institution(req.institution)
        validate_msgid(req.msgid)
        if req.mdtrt_cert_type not in ("", "02"):
            raise errors.invalid("UNSUPPORTED_CERT_TYPE", "only mdtrt_cert_type 02 (居民身份证) is served",
                                 field="mdtrt_cert_type")
        pid = validate.id_number(req.mdtrt_cert_no, "mdtrt_cert_no")
        if len(req.psn_name) > validate.MAX_NAME:
            raise errors.invalid("INVALID_NAME", "psn_name too long", field="psn_name")
        province = await self.province_of(pid, req.insuplc_admdvs)
        person = (await self._registry_call(province, "GetPerson", rpb.GetPersonRequest(id_number=pid))).person
        if req.psn_name and req.psn_name != person.name:
            raise errors.refused("NAME_MISMATCH", "psn_name does not match the insured person's name")
        bindings = await self._registry_call(province, "ListBindings", rpb.ListBindingsRequest(id_number=pid))
        facts = parse(pid)
        insu = pb.InsuInfo(balc_fen=person.balance_fen, insutype=person.insurance_type,
                           psn_insu_stas=person.status,
                           insuplc_admdvs=person.pooling_region)
        await self._wallet_part(insu, pid)
        event(log, "1101", id_number=pid, province=province, fixmedins=req.institution.fixmedins_code)
        return pb.QueryPersonResponse(
            baseinfo=pb.BaseInfo(psn_no=pid, certno=pid, psn_name=person.name,
                                 gend="1" if facts.sex == "M" else "2",
                                 brdy=facts.birth_date.isoformat(),
                                 age=facts.age_on(self.clock.today())),
            insuinfo=[insu],
            helpers=[pb.BoundHelper(psn_no=b.helper_id_number, relation=b.relation) for b in bindings.as_member],
        )

    async def _wallet_part(self, insu: pb.InsuInfo, pid: str) -> None:
        """The 医保钱包 fields of a 1101. The person is the registry's to answer: a wallet that does
        not answer (down, its Redis down, a wrong certificate …) leaves its part unknown
        (`wallet_reason` WALLET_UNAVAILABLE) rather than failing every 1101 in the country, and what
        it answered is logged here, where an operator looks for it."""
        wallet = self._wallet()
        if wallet is None:
            return
        from medaid.wallet.v1 import wallet_pb2

        try:
            w = await wallet.GetWallet(wallet_pb2.GetWalletRequest(owner_id_number=pid),
                                      timeout=rpc.time_left(self.deadline_s))
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return  # no wallet
            info = errors.error_info(exc)
            log.warning("1101 answered without the wallet", extra={"fields": {
                "id_number": pid, "code": exc.code().name, "reason": info.reason if info is not None else "",
                "error": scrub(exc.details() or "")}})
            insu.wallet_reason = "WALLET_UNAVAILABLE"
            return
        insu.wallet_opened = True
        insu.wallet_balc_fen = w.wallet.balance_fen
        insu.wallet_use_place_admdvs = w.wallet.use_place_admdvs

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
        if i.acct_used_flag not in ("0", "1"):
            raise errors.invalid("INVALID_ACCT_USED_FLAG", "acct_used_flag is '1' (use the account) or '0'",
                                 field="acct_used_flag")
        validate.enum_name(cpb.Category, i.category, "CATEGORY_", "category")
        validate.mdtrt_id(i.mdtrt_id)
        validate.dictionary_code(i.insutype, "insutype", reason="INVALID_INSUTYPE")
        validate.dictionary_code(i.med_type, "med_type", reason="INVALID_MED_TYPE")
        return pid, i.acct_used_flag == "1"

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

    async def _checked_place(self, province: str, pid: str, given: str) -> str:
        """The caller's insuplc_admdvs once it agrees with the person's registry record ("" when none
        was given). Checked before anything is written; a person the registry does not know is left
        to the registry's own refusal."""
        if not given:
            return ""
        try:
            async with asyncio.timeout(rpc.time_left(self.deadline_s)):
                person = await self._lookups.person(province, pid)
        except TimeoutError:
            raise self._registry_unavailable(province) from None
        if person is not None and person.pooling_region != given:
            raise errors.refused("INSURED_PLACE_MISMATCH", f"insuplc_admdvs {given} is not where {mask(pid)} is "
                                 f"insured ({person.pooling_region}); send theirs or leave it empty",
                                 field="insuplc_admdvs")
        return given

    async def presettle(self, req: pb.PreSettleRequest) -> pb.PreSettleResponse:
        pid, use_account = self._settle_input(req)
        province = await self.province_of(pid, req.input.insuplc_admdvs)
        resp = await self._registry_call(province, "PreSettle", rpb.PreSettleRequest(
            patient_id_number=pid, amount_fen=req.input.psn_part_amt_fen, use_account=use_account,
            category=req.input.category, institution_code=req.institution.fixmedins_code,
            institution_admdvs=req.institution.mdtrtarea_admvs, insured_region=req.input.insuplc_admdvs))
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
        if self.batch:
            resp = await self._batched_settle(province, Pending(item, entry, fp))
        else:
            async def work() -> rpb.SettleResponse:
                await self.index.note_settlements([(sid, entry)], self.clock.now_ms())
                return await self._registry_call(province, "Settle", item)  # type: ignore[no-any-return]

            resp = await self.claims.call(sid, fp, work)
            await self.index.settled(inst, sid, entry, resp.result.settled_at_unix_ms)
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
                        outcomes[i] = unpack_outcome(outcome)
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
        await self.claims.finish_many([], [(sid, pending.fingerprint)])
        await self.index.settled_many([(sid, dataclasses.replace(pending.entry, province=province),
                                        resp.result.settled_at_unix_ms)])
        return resp

    # --- 2208 ----------------------------------------------------------------------------

    async def reverse(self, req: pb.ReverseSettlementRequest) -> pb.ReverseSettlementResponse:
        check_institution(req.institution)
        validate_msgid(req.msgid)
        validate_request_id(req.setl_id)
        pid = validate.id_number(req.psn_no, "psn_no")
        validate.mdtrt_id(req.mdtrt_id)
        inst, rid = req.institution.fixmedins_code, msgids.scoped(req.institution.fixmedins_code, req.msgid)
        sid = msgids.from_setl_id(inst, req.setl_id)
        province, entry = await self.holding_province(inst, sid, pid, req.insuplc_admdvs)
        await self._checked_place(province, pid, req.insuplc_admdvs)
        # 2208 names the person and comes from an institution: only that person's settlement made by
        # that institution is theirs to reverse (the registry's reversal is keyed by setl_id alone).
        found = (await self._registry_call(province, "GetSettlement", rpb.GetSettlementRequest(
            settlement_id=sid))).result
        if found.patient_id_number != pid or found.institution_code != req.institution.fixmedins_code:
            raise errors.not_found("SETTLEMENT_NOT_FOUND", f"no settlement {req.setl_id} of this person by "
                                   "this institution", field="setl_id")
        if req.mdtrt_id:  # a visit named must be the settlement's own (the index keeps the 2207's)
            if entry is not None and entry.mdtrt_id and entry.mdtrt_id != req.mdtrt_id:
                raise errors.not_found("SETTLEMENT_NOT_FOUND", f"no settlement {req.setl_id} of the visit "
                                       f"{req.mdtrt_id}", field="mdtrt_id")

        async def work() -> rpb.ReverseSettlementResponse:
            await self.index.note_reversal(inst, rid, sid, self.clock.now_ms())
            return await self._registry_call(  # type: ignore[no-any-return]
                province, "ReverseSettlement", rpb.ReverseSettlementRequest(request_id=rid, settlement_id=sid))

        resp = await self.claims.call(rid, f"2208:{pid}:{sid}", work)
        await self.index.note_reversal(inst, rid, sid, resp.reversed_at_unix_ms)
        event(log, "2208", id_number=pid, province=province, msgid=req.msgid, setl_id=req.setl_id)
        return pb.ReverseSettlementResponse(
            setl_id=msgids.setl_id(inst, resp.settlement_id), reversal_id=msgids.setl_id(inst, resp.reversal_id),
            acct_refund_fen=resp.acct_refund_fen,
            wallet_refund_fen=resp.wallet_refund_fen, mulaid_refund_fen=resp.mulaid_refund_fen,
            mulaid_helper_psn_no=resp.helper_id_number, balc_fen=resp.balance_after_fen,
            mulaid_helpers=helper_pays(resp.helper_refunds), reversed_at_unix_ms=resp.reversed_at_unix_ms,
            original=reconcile.reversed_entry(found, entry, resp.reversal_id, resp.reversed_at_unix_ms))

    # --- 2601 / 5203 / 3201 / 3202 (undo.py, reconcile.py) -------------------------------------

    async def undo(self, req: pb.UndoRequest) -> pb.UndoResponse:
        return await undo_mod.undo(self, req)

    async def query_settlement(self, req: pb.QuerySettlementRequest) -> pb.QuerySettlementResponse:
        return await reconcile.query_settlement(self, req)

    async def reconcile_totals(self, req: pb.ReconcileTotalsRequest) -> pb.ReconcileTotalsResponse:
        return await reconcile.reconcile_totals(self, req)

    async def reconcile_details(self, req: pb.ReconcileDetailsRequest) -> pb.ReconcileDetailsResponse:
        return await reconcile.reconcile_details(self, req)

    # --- health --------------------------------------------------------------------------

    async def downstream_health(self, req: pb.GetDownstreamHealthRequest) -> pb.GetDownstreamHealthResponse:
        targets = [(f"registry-{p}", a) for p, a in sorted(self.registries.addresses.items())]
        if self.wallet_address:
            targets.append(("wallet", self.wallet_address))
        # One line per replica of a replicated service (registry-13#1, registry-13#2 …).
        targets = [(f"{name}#{i}" if len(reps) > 1 else name, rep)
                   for name, address in targets for reps in [rpc.replicas(address)] for i, rep in enumerate(reps, 1)]
        # Every downstream is asked at once, each check within its own second (cut to what the caller
        # allows): hung registries cost the answer one check, not one second each.
        timeout = rpc.time_left(_HEALTH_CHECK_S)

        async def serving(address: str) -> bool:
            async with rpc.plain_channel(address) as ch:  # TLS when this process has an identity
                try:
                    resp = await rpc.health_check(ch)(health_pb2.HealthCheckRequest(), timeout=timeout)
                except grpc.aio.AioRpcError:
                    return False
                return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

        answers = await asyncio.gather(*(serving(address) for _, address in targets))
        return pb.GetDownstreamHealthResponse(downstream=[
            pb.DownstreamHealth(name=name, address=address, serving=up)
            for (name, address), up in zip(targets, answers, strict=True)])
