"""Settlement router: 1101 / 2206 / 2207 / 2208 routed to the insuring province's registry; 2601
冲正 (undo.py), 5203 and 3201 / 3202 reconciliation (reconcile.py, reconcile_details.py, over the index in index.py).

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
written (INSURED_PLACE_MISMATCH; medaid.common.validate.insured_place). A 2208 may also name the
settlement's own insured place, which differs from the record once the person has moved province.

`Router` is built in layers: `core.RouterCore` (wiring, routing, the registry call),
`settle.Settling` (2206 / 2207 and their batching), and here 1101, 2208 and the downstream health.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc_health.v1 import health_pb2

from medaid.common import errors, rpc
from medaid.common import msgid as msgids
from medaid.common import validate as validate_place
from medaid.common.idempotency import validate_request_id
from medaid.common.idnumber import mask, parse
from medaid.common.logs import event, scrub
from medaid.common.transport import Passthrough
from medaid.registry import validate
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.router import reconcile, reconcile_details
from medaid.router import undo as undo_mod
from medaid.router.charges import helper_pays
from medaid.router.core import check_institution, validate_msgid
from medaid.router.settle import Settling, settle_fingerprint
from medaid.router.v1 import router_pb2 as pb

__all__ = ["Router", "check_institution", "settle_fingerprint", "validate_msgid"]

log = logging.getLogger("medaid.router")

# How long GetDownstreamHealth waits for one downstream's health check.
_HEALTH_CHECK_S = 1.0


def person_amiss(province: str, pid: str, person: rpb.Person) -> errors.DomainError | None:
    """Why a registry's GetPerson answer is not the person a 1101 asked for (empty, another id number,
    no insured place of its own province, a negative balance), else None. Such an answer is never
    passed on as the patient's, nor checked against the caller's insuplc_admdvs (it would say the
    caller named the wrong place): DOWNSTREAM_ERROR, as settle.amiss for a settlement."""
    region = person.pooling_region
    if person.id_number == pid and len(region) == 6 and region.isdigit() and region[:2] == province \
            and person.balance_fen >= 0:
        return None
    return errors.DomainError(grpc.StatusCode.UNKNOWN, "DOWNSTREAM_ERROR", f"the registry of province {province} "
                              "answered the 1101 with no person or another one: retry with the same msgid",
                              {"province": province})


class Router(Settling):
    """Every RPC of `RouterService` (servicer.py) lands here."""

    # --- 1101 ----------------------------------------------------------------------------

    async def query_person(self, req: pb.QueryPersonRequest) -> pb.QueryPersonResponse:
        check_institution(req.institution)
        validate_msgid(req.msgid)
        if req.mdtrt_cert_type not in ("", "02"):
            raise errors.invalid("UNSUPPORTED_CERT_TYPE", "only mdtrt_cert_type 02 (居民身份证) is served",
                                 field="mdtrt_cert_type")
        pid = validate.id_number(req.mdtrt_cert_no, "mdtrt_cert_no")
        if req.psn_name:  # optional; when given, a name as every name the product takes
            validate.name(req.psn_name, "psn_name")
        province = await self.province_of(pid, req.insuplc_admdvs)
        try:
            person = (await self._registry_call(province, "GetPerson", rpb.GetPersonRequest(id_number=pid))).person
        except (Passthrough, errors.DomainError) as exc:
            raise await self.named_elsewhere(exc, pid, req.insuplc_admdvs) from None
        if (wrong := person_amiss(province, pid, person)) is not None:
            raise wrong
        # The place a 1101 names must be the record's, as a 2206/2207's must (answered per insured place:
        # a moved person's old place answers that place's record, ended).
        validate_place.insured_place(req.insuplc_admdvs, person.pooling_region, who=mask(pid))
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
        # 2208 names the person and comes from an institution: only that person's settlement made by
        # that institution is theirs to reverse (the registry's reversal is keyed by setl_id alone).
        found = (await self._registry_call(province, "GetSettlement", rpb.GetSettlementRequest(
            settlement_id=sid))).result
        if found.patient_id_number != pid or found.institution_code != req.institution.fixmedins_code:
            raise errors.not_found("SETTLEMENT_NOT_FOUND", f"no settlement {req.setl_id} of this person by "
                                   "this institution", field="setl_id")
        await self._checked_reversal_place(pid, req.insuplc_admdvs, found.insured_region)
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
        return await reconcile_details.reconcile_details(self, req)

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
