"""Life-cycle events a province handles daily (SPEC §5b): a move to another 统筹区 of the province,
and death with the personal account inherited. Status changes and moving province stay in people.py.

Each event is idempotent by request id and safe to re-drive after a crash: every step behind the
claim is keyed by it (binding ends, the wallet's relationship ends by derived ids, the payout pays
whatever balance is left), so a resend finishes what a dead process left half-done.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from medaid.common import errors
from medaid.common.errors import DomainError
from medaid.common.idempotency import reused
from medaid.common.idnumber import mask
from medaid.common.logs import event
from medaid.common.values import decode_hash, text
from medaid.registry import rules, validate
from medaid.registry.bindings import Bindings
from medaid.registry.context import Context, Judge, Opening, in_order
from medaid.registry.family import Family
from medaid.registry.store import Store
from medaid.registry.v1 import registry_pb2 as pb

log = logging.getLogger("medaid.registry")

# Crash points of the death flow (kill -9 tables); kept apart from the settlement engine's FAULT_POINTS.
FAULT_POINTS = ("death.after_status", "death.after_wallet", "death.after_payout")


def moving(pid: str, request_id: str, region: str) -> Judge:
    """The rule of a move to `region` (`Context.write_event`): refused for a person not insured here
    (TERMINATED, DECEASED) and to the region they are in; the new region and the MOVED_REGION event."""
    def judge(row: dict[str, str]) -> tuple[dict[str, str], dict[str, Any]]:
        if row["status"] in ("TERMINATED", "DECEASED"):
            raise errors.refused("PERSON_NOT_INSURED", f"{mask(pid)} is {row['status']}: nothing to move")
        if row["region"] == region:
            raise errors.refused("SAME_REGION", f"{mask(pid)} is insured in {region} already")
        return ({"region": region, "region_rid": request_id},
                {"kind": "MOVED_REGION", "detail": f"{row['region']}→{region}"})
    return judge


def dying(pid: str, req: pb.RecordDeathRequest, heir: str) -> Judge:
    """The rule of a death (`Context.write_event`): refused once a death is recorded; the status, the heir
    and the DECEASED event."""
    def judge(row: dict[str, str]) -> tuple[dict[str, str], dict[str, Any]]:
        if row["status"] == "DECEASED":
            raise errors.refused("PERSON_DECEASED", f"the death of {mask(pid)} is already recorded")
        return ({"status": "DECEASED", "death_rid": req.request_id, "died_on": req.date_of_death, "heir": heir,
                 "heir_name": req.heir_name}, {"kind": "DECEASED", "detail": req.date_of_death})
    return judge


class LifeCycle:
    def __init__(self, ctx: Context, store: Store, bindings: Bindings, family: Family | None = None) -> None:
        self.ctx = ctx
        self.store = store
        self.bindings = bindings
        self.family = family
        self.k = ctx.k

    # --- history -------------------------------------------------------------------------

    def queue_event(self, pipe: Any, pid: str, kind: str, detail: str, request_id: str = "") -> None:
        """An event of GetPerson's history; `request_id`: the request that made it (the recovery loop
        tells by it whether a life-cycle event was written, recovery.py)."""
        pipe.rpush(self.k.history(pid), json.dumps({"kind": kind, "detail": detail, "at": self.ctx.clock.now_ms(),
                                                    "rid": request_id}))

    async def happened(self, pid: str, request_id: str, entry: str = "") -> str:
        """Whether the person's history holds an event written by request `request_id`: '' none; 'own' one
        written under recovery entry `entry` (or one that names no entry); 'other' only ones written under
        another entry — the request id freed by the loop and taken by a corrected resend, whose values
        differ from this entry's (the entry names the move's region, the heir, the status)."""
        found = ""
        for raw in await self.ctx.r.lrange(self.k.history(pid), 0, -1):
            event = json.loads(text(raw))
            if event.get("rid") == request_id:
                if not entry or event.get("e", entry) == entry:
                    return "own"
                found = "other"
        return found

    async def get_person(self, req: pb.GetPersonRequest) -> pb.GetPersonResponse:
        pid = validate.id_number(req.id_number, "id_number")
        async with self.ctx.r.pipeline(transaction=False) as p:
            self.store.queue_person_pb(p, pid)
            p.lrange(self.k.history(pid), 0, -1)
            raw, acct, events = await p.execute()
        return pb.GetPersonResponse(
            person=self.store.person_from(pid, raw, acct),
            history=[pb.PersonEvent(kind=e["kind"], detail=e["detail"], at_unix_ms=e["at"])
                     for e in (json.loads(text(x)) for x in events)])

    # --- 统筹区 move inside the province -------------------------------------------------

    async def move_region(self, req: pb.MovePoolingRegionRequest) -> pb.MovePoolingRegionResponse:
        pid = validate.id_number(req.id_number, "id_number")
        validate.admdvs(req.pooling_region, "pooling_region", required=True)
        policy = self.ctx.policy
        if not policy.region_allowed(req.pooling_region):
            raise errors.invalid("UNKNOWN_REGION", f"pooling_region {req.pooling_region} is not a 统筹区 of "
                                 f"{policy.name}", field="pooling_region")
        occurred_at = validate.event_time(req.occurred_at_unix_ms, "occurred_at_unix_ms",
                                          now_ms=self.ctx.clock.now_ms())

        entry = f"E|{pid}|move|{req.request_id}|{req.pooling_region}"

        async def work(opening: Opening) -> pb.MovePoolingRegionResponse:
            row = decode_hash(await self.ctx.r.hgetall(self.k.person(pid)))
            if not row:
                raise self.ctx.not_enrolled(pid)
            # A resend of this very move finds its own effect and finishes it: its event on the history,
            # even where a later move took the person on, or back (`region_rid` names the newest move only;
            # a move written before events named their request has no event to find).
            written = await self.happened(pid, req.request_id, entry)
            if written == "other":  # the id's move is another request's, whose values differ (`happened`)
                raise reused(req.request_id)
            if written or row.get("region_rid") == req.request_id:
                # The entry, under this attempt's mark, until what follows is finished.
                opening.held = await self.ctx.announce_held(entry)
                opening.opened = True
            else:
                judge = in_order(pid, occurred_at, moving(pid, req.request_id, req.pooling_region))
                judge(row)  # refused here, before the lock, writes nothing; judged again under it
                self.ctx.fault("move.after_entry")
                async with self.ctx.life_event(pid, entry, opening) as (lease, _):
                    await self.ctx.write_event(lease, pid, req.request_id, judge, entry)
                    opening.opened = True
            try:
                ended, returned = await self.finish_move(pid, req.request_id, req.pooling_region)
            except DomainError as exc:
                raise exc.after_effects() from exc
            # The entry goes once the answer is recorded (Context.once_announced).
            event(log, "moved region", id_number=pid, region=req.pooling_region, bindings_ended=len(ended),
                  wallet_returned_fen=returned)
            return await self.move_answer(pid, ended, returned)

        # The id claimed with the move's entry, so that the loop frees it should this process die before
        # the move is written.
        return await self.ctx.once_announced(req, "move_region", pid,  # type: ignore[no-any-return]
                                             pb.MovePoolingRegionResponse, entry, work)

    async def move_answer(self, pid: str, ended: list[pb.Binding], returned: int) -> pb.MovePoolingRegionResponse:
        """A move's answer once what follows it is finished: the person as they stand, the bindings `ended`
        by the move and the quota `returned` by that run (`finish_move`). The request's, and the recovery
        loop's for one it finishes (recovery.py)."""
        return pb.MovePoolingRegionResponse(person=await self.store.person_pb(pid), ended_bindings=ended,
                                            wallet_returned_fen=returned)

    async def finish_move(self, pid: str, request_id: str, region: str) -> tuple[list[pb.Binding], int]:
        """What follows a written move, once per request id (a resend and the recovery loop run it again):
        bindings and family-account memberships that 共济 within one 统筹区 cannot keep end, and the
        wallet relationships end (SPEC §5). Returns the bindings the move ended (by any run of it) and the
        quota this run returned."""
        await self.ctx.timed_event(pid)
        ended = await self._end_cross_region(pid, region, request_id)
        if self.family is not None and self.ctx.policy.pooled:
            await self.family.end_cross_region_memberships(pid, region, request_id)
        returned = await self.ctx.end_wallet_relationships("mvr", request_id, pid, "MOVED_REGION")
        return ended, returned

    async def _end_cross_region(self, pid: str, region: str, request_id: str) -> list[pb.Binding]:
        """The bindings a move to `region` leaves with their sides apart (`rules.regions_apart`), bound by
        the move (`Bindings.end_as_event`)."""
        ended: list[pb.Binding] = []
        r = self.ctx.r
        by = await self.ctx.event_at(pid, request_id)
        for helper, member, side in await self.bindings.sides_of(pid):
            other = member if side == "HELPER" else helper
            if not rules.regions_apart(self.ctx.policy, text(await r.hget(self.k.person(other), "region") or b""),
                                       region):
                continue
            binding = await self.bindings.end_as_event(helper, member, f"{side}_MOVED_REGION", request_id, by,
                                                       locked=True)
            if binding is not None:
                ended.append(binding)
        return ended

    # --- death ---------------------------------------------------------------------------

    async def record_death(self, req: pb.RecordDeathRequest) -> pb.RecordDeathResponse:
        pid = validate.id_number(req.id_number, "id_number")
        heir = validate.id_number(req.heir_id_number, "heir_id_number")
        if heir == pid:
            raise errors.invalid("INVALID_HEIR", "the heir cannot be the deceased", field="heir_id_number")
        if req.heir_name:
            validate.name(req.heir_name, "heir_name")
        validate.life_date(req.date_of_death, "date_of_death", id_number=pid, today=self.ctx.clock.today())
        entry = f"E|{pid}|death|{req.request_id}|{heir}"

        async def work(opening: Opening) -> pb.RecordDeathResponse:
            row = decode_hash(await self.ctx.r.hgetall(self.k.person(pid)))
            if not row:
                raise self.ctx.not_enrolled(pid)
            if row.get("death_rid") == req.request_id:  # a resend: finish what this request began, under
                opening.held = await self.ctx.announce_held(entry)  # the entry with this attempt's mark
                opening.opened = True
            else:
                judge = dying(pid, req, heir)
                judge(row)  # refused here, before the lock, writes nothing; judged again under it
                # First the status: from here on nothing new comes in (settlement, credits, binds and
                # transfers need ACTIVE), so what the steps below send home is all there is.
                self.ctx.fault("death.after_entry")
                async with self.ctx.life_event(pid, entry, opening) as (lease, _):
                    await self.ctx.write_event(lease, pid, req.request_id, judge, entry)
                    opening.opened = True
                self.ctx.fault("death.after_status")
            try:
                ended, returned, now_paid, paid = await self.finish_death(pid, req.request_id, heir)
            except DomainError as exc:
                raise exc.after_effects() from exc
            # The entry goes once the answer is recorded (Context.once_announced).
            event(log, "death recorded", id_number=pid, heir=heir, paid_out_fen=paid, bindings_ended=len(ended),
                  wallet_returned_fen=returned, paid_now_fen=now_paid)
            return await self.death_answer(pid, ended, returned, paid)

        # The id claimed with the death's entry, so that the loop frees it should this process die before
        # the death is written.
        return await self.ctx.once_announced(req, "death", pid, pb.RecordDeathResponse,  # type: ignore[no-any-return]
                                             entry, work)

    async def death_answer(self, pid: str, ended: list[pb.Binding], returned: int,
                           paid: int) -> pb.RecordDeathResponse:
        """A death's answer once what follows it is finished: the person as they stand, the bindings `ended`
        and the quota `returned` by that run, what the heir was `paid` in all (`finish_death`). The
        request's, and the recovery loop's for one it finishes (recovery.py)."""
        return pb.RecordDeathResponse(person=await self.store.person_pb(pid), ended_bindings=ended,
                                      wallet_returned_fen=returned, paid_out_fen=paid)

    async def finish_death(self, pid: str, request_id: str, heir: str) -> tuple[list[pb.Binding], int, int, int]:
        """What follows a written death, once per request id (a resend and the recovery loop run it again):
        the directory, bindings, 亲情账户, family memberships and wallet relationships end, then the account is
        paid out to the heir. Returns the bindings the death ended (by any run of it), the quota returned
        by this run, what it
        paid out and what the heir was paid in all."""
        await self.ctx.timed_event(pid)
        # A person who moved province before dying keeps the move in the directory, as in the registry.
        await self.ctx.tell_directory(pid)
        await self.ctx.note_wallet_status(pid)
        ended = await self.bindings.end_all_of(pid, "DECEASED", request_id, await self.ctx.event_at(pid, request_id))
        await self.bindings.proxies.end_proxies_of(pid, request_id)
        await self.end_family_memberships(pid, request_id)
        # Lots the person sent come home to this account before the payout; lots they held go back
        # to their senders.
        returned = await self.ctx.end_wallet_relationships("death", request_id, pid, "DECEASED")
        self.ctx.fault("death.after_wallet")
        now_paid, paid = await self._pay_out(pid, heir, request_id)
        return ended, returned, now_paid, paid

    async def end_family_memberships(self, pid: str, request_id: str) -> None:
        """On death the person's family-account memberships end, and a family account they created is
        dissolved with every share returned (SPEC §3b, §5b); each step once per request id."""
        if self.family is not None and self.ctx.policy.pooled:
            await self.family.end_memberships_of(pid, "DECEASED", request_id)

    async def _pay_out(self, pid: str, heir: str, ref: str) -> tuple[int, int]:
        now_paid, total = await self.ctx.lua["inherit"](
            keys=[self.k.person(pid), self.k.account(pid), self.k.ledger(pid)],
            args=[ref, heir, self.ctx.clock.now_ms()])
        if int(now_paid):
            async with self.ctx.r.pipeline(transaction=False) as p:
                self.queue_event(p, pid, "PAYOUT", f"{heir}:{int(now_paid)}")
                await p.execute()
        self.ctx.fault("death.after_payout")
        return int(now_paid), int(total)
