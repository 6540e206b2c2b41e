"""Insured people and their personal accounts: enrolment, status changes, credits, reads."""

from __future__ import annotations

import json
import logging
from typing import Any

from medaid.common import errors
from medaid.common.errors import DomainError
from medaid.common.idnumber import mask
from medaid.common.logs import event
from medaid.common.transport import store_error
from medaid.common.v1 import common_pb2 as cpb
from medaid.common.values import decode_hash, text
from medaid.registry import rules, validate
from medaid.registry.bindings import Bindings
from medaid.registry.context import Context, Judge, Opening, check_batch, error_item, filled, in_order, lock_lost
from medaid.registry.family import Family
from medaid.registry.store import Store
from medaid.registry.v1 import registry_pb2 as pb

log = logging.getLogger("medaid.registry")

CREDIT_REFUSALS = {
    "PERSON_NOT_ACTIVE": "only an ACTIVE insured person's account can be credited",
    "NO_PERSONAL_ACCOUNT": "this person has no personal account (resident or flexible tier 1)",
    "BALANCE_LIMIT": "the credit would take the balance past the supported maximum",
}


def status_entry(pid: str, request_id: str, status: str, moved_to: str) -> str:
    """The recovery index entry of a status change whose consequences are not all done yet."""
    return f"E|{pid}|status|{request_id}|{status}>{moved_to}"


def already_enrolled(pid: str) -> DomainError:
    return errors.exists("ALREADY_ENROLLED", f"{mask(pid)} is already enrolled")


def enroll_entry(pid: str, request_id: str) -> str:
    """The recovery index entry of an enrolment whose indexes are not written yet."""
    return f"E|{pid}|enroll|{request_id}|"


def status_change(pid: str, status: str, moved_to: str) -> Judge:
    """The rule of a change to `status` (`moved_to`: the province a TERMINATED person went to, '' none) for
    `Context.write_event`: refused for a dead person, a suspension of a terminated one and another
    province than a recorded move; the same status again (the same termination, SUSPENDED of a
    suspended person, ACTIVE of an active one) has nothing to write (None)."""
    def judge(row: dict[str, str]) -> tuple[dict[str, str], dict[str, Any]] | None:
        current, went = row["status"], row.get("moved_to", "")
        if current == "TERMINATED" and status == "TERMINATED":
            if went and moved_to and moved_to != went:
                # A recorded move is what routing, the wallet following its owner and the other
                # province act on: another province named afterwards is refused (a correction is
                # made explicitly: ACTIVE, then TERMINATED with the right province).
                raise errors.refused("MOVE_ALREADY_RECORDED", f"{mask(pid)} is TERMINATED with a move to "
                                     f"{went} recorded, not to {moved_to}", moved_to_province=went)
            if not moved_to or moved_to == went:
                # The same termination again (a batch of events replayed with new request ids): nothing
                # written, the recorded move kept.
                return None
            # TERMINATED with no move recorded, the province they went to learned since: recorded.
        if current == "DECEASED":
            raise errors.refused("PERSON_DECEASED", f"the death of {mask(pid)} is recorded: no status change")
        if current == "TERMINATED" and status == "SUSPENDED":
            # Suspension pauses an insurance (ACTIVE ↔ SUSPENDED, SPEC §5b); a terminated person has none
            # here (one who moved province is insured there): a late report of it would undo the
            # termination and forget the move. Enrolled again (ACTIVE), they may be suspended.
            raise errors.refused("PERSON_NOT_INSURED", f"{mask(pid)} is TERMINATED: nothing to suspend")
        if current == status != "TERMINATED":
            # SUSPENDED of a suspended person, ACTIVE of an active one (a batch replayed with new request
            # ids): no change, nothing written, as the same termination again.
            return None
        return ({"status": status, "moved_to": moved_to},
                {"kind": "STATUS", "detail": status + (f"→{moved_to}" if moved_to else "")})
    return judge


class People:
    def __init__(self, ctx: Context, store: Store, bindings: Bindings, family: Family | None = None) -> None:
        self.ctx = ctx
        self.store = store
        self.bindings = bindings
        self.family = family
        self.k = ctx.k

    async def enroll(self, req: pb.EnrollPersonRequest) -> pb.EnrollPersonResponse:
        pid = validate.born_by(validate.id_number(req.id_number, "id_number"), "id_number",
                               today=self.ctx.clock.today())
        validate.name(req.name)
        itype = validate.enum_name(cpb.InsuranceType, req.insurance_type, "INSURANCE_TYPE_", "insurance_type")
        if itype == "FLEXIBLE" and req.flexible_tier not in (1, 2):
            raise errors.invalid("INVALID_FLEXIBLE_TIER", "FLEXIBLE needs flexible_tier 1 or 2")
        if itype != "FLEXIBLE" and req.flexible_tier != 0:
            raise errors.invalid("INVALID_FLEXIBLE_TIER", "flexible_tier applies to FLEXIBLE only")
        validate.admdvs(req.pooling_region, "pooling_region", required=True)
        policy = self.ctx.policy
        if not policy.region_allowed(req.pooling_region):
            raise errors.invalid("UNKNOWN_REGION", f"pooling_region {req.pooling_region} is not a 统筹区 of "
                                 f"{policy.name}", field="pooling_region")
        view = rules.PersonView(pid, itype, req.flexible_tier, "ACTIVE", req.pooling_region, policy.province)

        # The recovery loop finishes the indexes should this request stop after the person is written (a
        # resend of this request id finishes them too); it drops an entry whose request wrote no person,
        # and frees its id (the id is claimed with the entry).
        entry = enroll_entry(pid, req.request_id)

        async def work(opening: Opening) -> pb.EnrollPersonResponse:
            fields = {"id": pid, "name": req.name, "itype": itype, "tier": req.flexible_tier, "status": "ACTIVE",
                      "region": req.pooling_region, "moved_to": "", "enrolled_at": self.ctx.clock.now_ms()}
            args: list[Any] = ["1" if view.has_account else "0", req.request_id]
            for key, value in fields.items():
                args += [key, value]
            # A refusal found before the lock writes nothing, not even the lock's fence (enroll.lua
            # checks it again, atomically, under the lock).
            # (A person written before enrolments kept their request id has an `id` and no `enroll_rid`.)
            written, enrolled_by = await self.ctx.r.hmget(self.k.person(pid), ["id", "enroll_rid"])
            if written is not None and text(enrolled_by or b"") != req.request_id:
                raise already_enrolled(pid)
            if written is None and await self.recorded_dead(pid):
                raise errors.refused("PERSON_DECEASED", f"the death of {mask(pid)} is recorded by another "
                                     "province: a death is final, no enrolment")
            self.ctx.fault("enroll.after_entry")
            async with self.ctx.life_event(pid, entry, opening) as (lease, _):
                created = int(await self.ctx.lua["enroll"](
                    keys=[self.k.person(pid), self.k.account(pid), lease.fence_key],
                    args=[*args[:2], lease.token, *args[2:]]))
            if created == -1:
                raise lock_lost()
            if created == 0:  # its claim and entry dropped (Context.once_announced)
                raise already_enrolled(pid)
            # Created now or by this request's earlier attempt: either way the rest follows.
            opening.opened = True
            self.ctx.fault("enroll.after_person")
            try:  # the entry goes once the answer is recorded (Context.once_announced)
                await self.finish_enroll(pid)
            except Exception as exc:  # the person exists: a retry of this request id finishes it
                found = store_error(exc)
                raise (found.after_effects() if found is not None else exc) from exc
            event(log, "enrolled", id_number=pid, name=req.name, itype=itype, region=req.pooling_region)
            return await self.enroll_answer(pid)

        return await self.ctx.once_announced(req, "enroll", pid, pb.EnrollPersonResponse,  # type: ignore[no-any-return]
                                             entry, work)

    async def finish_enroll(self, pid: str) -> None:
        """What follows a written enrolment (a resend and the recovery loop run it again): the province's
        index of people and the national person directory, told the person as this province holds them
        now: one finished after they moved away (or died) is not claimed back as ACTIVE here."""
        await self.ctx.r.sadd(self.k.people_index(), pid)
        await self.ctx.tell_directory(pid)

    async def recorded_dead(self, pid: str) -> bool:
        """Whether the national person directory records the person's death (SPEC §5b: a death is final),
        recorded by any province's registry."""
        found = await self.ctx.directory.lookup(pid)
        return found is not None and found[1] == "DECEASED"

    async def enroll_answer(self, pid: str) -> pb.EnrollPersonResponse:
        """A written enrolment's answer once what follows it is finished: the person as they stand. The
        request's, and the recovery loop's for one it finishes (recovery.py)."""
        return pb.EnrollPersonResponse(person=await self.store.person_pb(pid))

    async def enrolled_by(self, pid: str, request_id: str) -> bool:
        """Whether the person's record was written by enrolment request `request_id`."""
        return text(await self.ctx.r.hget(self.k.person(pid), "enroll_rid") or b"") == request_id

    async def finish_status(self, pid: str, request_id: str, status: str, moved_to: str) -> list[pb.Binding]:
        """What follows a written status change, each step once per request id (a resend and the recovery
        loop run it again): the national directory, and for TERMINATED the person's bindings, family
        memberships and wallet relationships end, those begun by the event (finished late, after the person
        was ACTIVE again, it leaves what they began since). Returns the bindings the event ended, by this
        run and any earlier one."""
        await self.ctx.timed_event(pid)
        await self.ctx.tell_directory(pid)
        await self.ctx.note_wallet_status(pid)
        if status != "TERMINATED":
            return []
        suffix = rules.termination_reason(moved_to)
        ended = await self.bindings.end_all_of(pid, suffix, request_id, await self.ctx.event_at(pid, request_id))
        if self.family is not None and self.ctx.policy.pooled:  # SPEC §3b, §5b
            await self.family.end_memberships_of(pid, suffix, request_id)
        # Their wallet relationships end, from either side: quota they sent comes home, quota they
        # hold goes back to the funding employees (SPEC §5).
        await self.ctx.end_wallet_relationships("rel", request_id, pid, suffix)
        return ended

    async def status_answer(self, pid: str, ended: list[pb.Binding]) -> pb.UpdatePersonStatusResponse:
        """A status change's answer once what follows it is finished: the person as they stand, the
        bindings `ended` by that run (`finish_status`). The request's, and the recovery loop's for one it
        finishes (recovery.py)."""
        return pb.UpdatePersonStatusResponse(person=await self.store.person_pb(pid), ended_bindings=ended)

    async def _finish_answered(self, pid: str, request_id: str, status: str,
                               moved_to: str) -> pb.UpdatePersonStatusResponse:
        """What follows a status change request `request_id` wrote, finished, and its answer."""
        try:
            ended = await self.finish_status(pid, request_id, status, moved_to)
        except DomainError as exc:
            raise exc.after_effects() from exc
        # The entry goes once the answer is recorded (Context.once_announced).
        event(log, "status changed", id_number=pid, status=status, moved_to=moved_to, bindings_ended=len(ended))
        return await self.status_answer(pid, ended)

    async def update_status(self, req: pb.UpdatePersonStatusRequest) -> pb.UpdatePersonStatusResponse:
        pid = validate.id_number(req.id_number, "id_number")
        status = validate.enum_name(cpb.PersonStatus, req.status, "PERSON_STATUS_", "status")
        if status == "DECEASED":
            raise errors.invalid("USE_RECORD_DEATH", "a death is recorded with RecordDeath (it pays the account "
                                 "out to the heir)", field="status")
        moved_to = req.moved_to_province
        if moved_to:
            validate.province(moved_to, "moved_to_province")
            if status != "TERMINATED":
                raise errors.invalid("INVALID_STATUS", "moving province requires status TERMINATED")
            if moved_to == self.ctx.policy.province:
                raise errors.invalid("INVALID_PROVINCE", "moved_to_province is this province")
        occurred_at = validate.event_time(req.occurred_at_unix_ms, "occurred_at_unix_ms",
                                          now_ms=self.ctx.clock.now_ms())

        entry = status_entry(pid, req.request_id, status, moved_to)

        async def work(opening: Opening) -> pb.UpdatePersonStatusResponse:
            row = decode_hash(await self.ctx.r.hgetall(self.k.person(pid)))
            if not row:
                raise self.ctx.not_enrolled(pid)
            if await self.ctx.event_at(pid, req.request_id):
                # A resend of a change this request wrote (its process died, or the wallet did not answer,
                # before what follows was finished): finished now, under the entry with this attempt's
                # mark, and answered with what this run ended, as a resend of a move or a death is.
                opening.held = await self.ctx.announce_held(entry)
                opening.opened = True
                return await self._finish_answered(pid, req.request_id, status, moved_to)
            judge = in_order(pid, occurred_at, status_change(pid, status, moved_to))
            if judge(row) is None:
                # Nothing to write (the same status again), found before the lock: the person as they
                # are, not even the lock's fence written (the entry goes with the answer:
                # Context.once_announced). Judged again under the lock, with the same rule.
                return await self.status_answer(pid, [])
            # What follows the status is finished by the recovery loop should this request not: the entry
            # (written with the id's claim), then the status with an event naming this request, which
            # tells the loop the change was made (recovery.py).
            self.ctx.fault("status.after_entry")
            async with self.ctx.life_event(pid, entry, opening) as (lease, _):
                if not await self.ctx.write_event(lease, pid, req.request_id, judge, entry):
                    return await self.status_answer(pid, [])
                opening.opened = True
                self.ctx.fault("status.after_write")
            return await self._finish_answered(pid, req.request_id, status, moved_to)

        return await self.ctx.once_announced(req, "status", pid, pb.UpdatePersonStatusResponse,  # type: ignore[no-any-return]
                                             entry, work)

    async def get_person(self, req: pb.GetPersonRequest) -> pb.GetPersonResponse:
        pid = validate.id_number(req.id_number, "id_number")
        return pb.GetPersonResponse(person=await self.store.person_pb(pid))

    async def get_persons(self, req: pb.GetPersonsRequest) -> pb.GetPersonsResponse:
        """Each item is exactly a GetPerson; all of them read in one round trip."""
        check_batch(len(req.id_numbers), "id numbers")
        outcomes: list[pb.PersonOutcome | None] = [None] * len(req.id_numbers)
        valid: list[tuple[int, str]] = []
        for i, raw_id in enumerate(req.id_numbers):
            try:
                valid.append((i, validate.id_number(raw_id, "id_numbers")))
            except DomainError as exc:
                outcomes[i] = pb.PersonOutcome(error=error_item(exc))
        async with self.ctx.r.pipeline(transaction=False) as p:
            for _, pid in valid:
                self.store.queue_person_pb(p, pid)
            replies = await p.execute()
        for n, (i, pid) in enumerate(valid):
            try:
                outcomes[i] = pb.PersonOutcome(person=self.store.person_from(pid, replies[2 * n], replies[2 * n + 1]))
            except DomainError as exc:
                outcomes[i] = pb.PersonOutcome(error=error_item(exc))
        return pb.GetPersonsResponse(outcomes=filled(outcomes))

    async def credit(self, req: pb.CreditAccountRequest) -> pb.CreditAccountResponse:
        pid = validate.id_number(req.id_number, "id_number")
        validate.amount(req.amount_fen)
        kind = validate.enum_name(pb.CreditKind, req.kind, "CREDIT_KIND_", "kind")
        if req.period:
            validate.calendar_month(req.period, "period", "INVALID_PERIOD")

        async def work() -> pb.CreditAccountResponse:
            if not await self.store.exists(pid):
                raise self.ctx.not_enrolled(pid)
            k = self.k
            status, entry = await self.ctx.lua["credit"](
                keys=[k.person(pid), k.account(pid), k.ledger(pid), k.applied(pid)],
                args=[req.request_id, req.amount_fen, f"CREDIT_{kind}", self.ctx.clock.now_ms(),
                      rules.MAX_BALANCE_FEN])
            if text(status) == "ERR":
                code = text(entry)
                raise errors.refused(code, CREDIT_REFUSALS[code])
            e = json.loads(text(entry))
            event(log, "credited", id_number=pid, amount_fen=req.amount_fen, balance_fen=e["bal"])
            return pb.CreditAccountResponse(balance_fen=e["bal"], entry=ledger_pb(e))

        return await self.ctx.once(req, "credit", pid, pb.CreditAccountResponse, work)  # type: ignore[no-any-return]

    async def get_account(self, req: pb.GetAccountRequest) -> pb.GetAccountResponse:
        pid = validate.id_number(req.id_number, "id_number")
        limit = req.ledger_limit or 50
        if not 0 < limit <= 500:
            raise errors.invalid("INVALID_LIMIT", "ledger_limit must be 1..500", field="ledger_limit")
        person = await self.store.person(pid)
        if person is None:
            raise self.ctx.not_enrolled(pid)
        if not person.has_account:
            raise errors.refused("NO_PERSONAL_ACCOUNT", "this person has no personal account")
        async with self.ctx.r.pipeline(transaction=False) as p:
            p.hgetall(self.k.account(pid))
            p.lrange(self.k.ledger(pid), -limit, -1)
            acct_raw, entries = await p.execute()
        acct = decode_hash(acct_raw)
        return pb.GetAccountResponse(
            id_number=pid, balance_fen=int(acct["bal"]), credited_total_fen=int(acct["credited"]),
            debited_total_fen=int(acct["debited"]), entries=[ledger_pb(json.loads(text(e))) for e in reversed(entries)],
        )


def ledger_pb(e: dict[str, Any]) -> pb.LedgerEntry:
    return pb.LedgerEntry(seq=e["seq"], kind=e["kind"], amount_fen=e["amount"], balance_after_fen=e["bal"],
                          ref=e["ref"], at_unix_ms=e["at"])
