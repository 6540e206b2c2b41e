"""What every part of the registry shares: its Redis, policy, keys, scripts, clock and seams (context_core.py),
the request-id claims and recovery entries (claims.py), and here the tells to the national person
directory and the wallet, and the life-cycle events written under the person's lock."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from medaid.common import errors
from medaid.common.idnumber import mask
from medaid.common.lock import Lease
from medaid.common.rpc import derived_id
from medaid.common.values import decode_hash, text
from medaid.registry.claims import Claims, Opening, Taken, mark_of
from medaid.registry.context_core import (
    FAULT_POINTS,
    LOCK_TTL_MS,
    LOCK_WAIT_MS,
    MAX_BATCH,
    SCRIPTS,
    InjectedFault,
    check_batch,
    enum_value,
    error_item,
    filled,
    lock_lost,
)

__all__ = ["FAULT_POINTS", "LOCK_TTL_MS", "LOCK_WAIT_MS", "MAX_BATCH", "SCRIPTS", "Context", "InjectedFault",
           "Judge", "Opening", "Taken", "check_batch", "enum_value", "error_item", "filled", "in_order", "lock_lost",
           "mark_of"]

log = logging.getLogger("medaid.registry")

# A life-cycle flow's rule (`Context.write_event`): the person's row → the fields and the history event to
# write, None where there is nothing to write; it raises the flow's refusal.
Judge = Callable[[dict[str, str]], "tuple[dict[str, str], dict[str, Any]] | None"]


def in_order(pid: str, occurred_at: int, judge: Judge) -> Judge:
    """`judge` (a status change's or a move's rule) for an event that happened at `occurred_at` in the
    province's source system (unix ms; 0: not given). One order per person for these events: one dated
    before the newest dated event taken for them (`occurred_at` on the person) is refused
    EVENT_OUT_OF_ORDER, after the flow's own refusals; a dated one taken keeps its date as the newest,
    even when it changes nothing (a resumption of an ACTIVE person: a fields-only write with no event,
    so that the suspension it overtook is refused when it arrives). Undated events are taken in the
    order they arrive and leave the newest date as it is."""
    if not occurred_at:
        return judge

    def ordered(row: dict[str, str]) -> tuple[dict[str, str], dict[str, Any]] | None:
        judged = judge(row)
        newest = int(row.get("occurred_at") or 0)
        if occurred_at < newest:
            raise errors.refused("EVENT_OUT_OF_ORDER", f"the event of {mask(pid)} happened at {occurred_at}, "
                                 f"before the newest one taken ({newest}): resend events in the order they "
                                 "happened", last_occurred_at_unix_ms=str(newest))
        if occurred_at == newest:
            return judged
        fields, event = judged if judged is not None else ({}, {})
        return {**fields, "occurred_at": str(occurred_at)}, event
    return ordered


class Context(Claims):
    """One per registry process: the shared state and claims, the tells to the directory and the wallet,
    and the life-cycle events."""

    async def tell_directory(self, pid: str) -> None:
        """The national person directory told the person as this province holds them now (status and
        recorded move), not as the event being finished wrote them: a resend or the recovery loop
        finishing an event after a later one was made must not tell it a status the registry left. The
        status is read with its version (`sv`, lua/_prelude.lua person_set), by which the directory keeps
        the newer of two tells that cross on their way (directory.py): every status told goes this way."""
        status, moved_to, version = (text(x or b"") for x in await self.r.hmget(
            self.k.person(pid), ["status", "moved_to", "sv"]))
        await self.directory.status_changed(pid, self.policy.province, status, moved_to, int(version or 0))

    async def note_wallet_status(self, pid: str) -> None:
        """A person with a 医保钱包 (NoteWallet reached this registry) changed status: the wallet keeps
        it, so that only an ACTIVE owner spends from it (SPEC §1), whoever asks it to pay."""
        if await self.r.hget(self.k.person(pid), "wallet_place"):
            await self.wallet.note_status(pid, self.policy.province)

    async def end_wallet_relationships(self, prefix: str, request_id: str, pid: str, reason: str) -> int:
        """The person's wallet relationships end (SPEC §5, §5b) for the life-cycle event that request
        `request_id` wrote (a move, a termination, a death: `reason`), as a step of that request
        (`wallet_step_id`); fen returned. The wallet is told when the event happened, as the person's
        history records it, so that an end that arrives late (the wallet could not be reached, the
        recovery loop finishes it) leaves a relationship begun after the event; a resend and the loop
        send the same time."""
        return await self.wallet.end_relationships(self.wallet_step_id(prefix, request_id), pid, reason,
                                                   self.policy.province, await self.event_at(pid, request_id))

    async def event_at(self, pid: str, request_id: str) -> int:
        """When the newest event request `request_id` wrote on the person's history happened (unix ms,
        `write_event`); 0 when there is none."""
        for raw in reversed(await self.r.lrange(self.k.history(pid), 0, -1)):
            written = json.loads(text(raw))
            if written.get("rid") == request_id:
                return int(written.get("at") or 0)
        return 0

    def wallet_step_id(self, prefix: str, request_id: str) -> str:
        """The wallet's request id for a step this registry takes for its client's `request_id`: the
        wallet serves every province, whose clients choose their ids apart, so the id is a digest of
        the province and the request id (two provinces' equal ids are two steps)."""
        return derived_id(prefix, self.policy.province, request_id)

    @contextlib.asynccontextmanager
    async def life_event(self, pid: str, entry: str, opening: Opening | None = None
                         ) -> AsyncIterator[tuple[Lease, Any]]:
        """The person's fenced lock for writing a life-cycle event (enrolment, status change, move,
        death) whose entry `entry` (`E|…`) the request wrote before: the entry is written again under
        the lock (`announce_held`), the event is written fenced by it (`write_event`, enroll.lua), and
        the recovery loop drops an entry whose event it does not find only under the same lock. So
        the event is never written without its entry, and what follows it is finished by the request
        or by the loop (SPEC §7). Released before what follows, which takes locks of its own. Yields the
        lease and this holder's mark on the entry (`withdraw`). `opening`: a request's under
        `once_announced`, whose claim is taken again with the entry (`hold`)."""
        lease = await self.acquire(pid)
        try:
            mark = await self.hold(opening) if opening is not None else await self.announce_held(entry)
            yield lease, mark
        finally:
            await self.locks.release(lease)

    async def write_event(self, lease: Lease, pid: str, request_id: str, judge: Judge, entry: str = "") -> bool:
        """A life-cycle event of request `request_id` written under `lease` (`life_event`), as `judge` (the
        flow's one rule) decides it on the person as read under the lock: it raises the flow's refusal,
        answers None where there is nothing to write (False is returned), or the person's fields and the
        event for their history (GetPerson's, lifecycle.py), written at once; nothing when a newer holder
        took the lock; the fields alone where the event is empty (`in_order`), answered False as nothing
        follows. The flow runs the same rule on its read before the lock, to refuse there without
        taking the lock (a refusal writes nothing, not even the lock's fence); judged again here, two
        requests that read the person before either wrote (two moves to one 统筹区, a termination and a
        death) are judged one after the other, as they would be sent so: the second refused, or found
        with nothing to write, its fence counter taken and nothing else written.
        `entry`: the recovery entry of the request writing it, kept on the event, so that the loop
        finishes an entry only with the values of the request that wrote the event (`Lifecycle.happened`).
        The event's time (`at`, the time the wallet is told: `event_at`) is taken again once the write
        landed (life_event_at.lua): a wallet transfer whose checks read the person ACTIVE just before the
        write was created before that time, so the end of the relationships takes it (`rules.began_by`)
        instead of leaving it to wait until 06:00. An event its request wrote already (a duplicate of the
        request that read the person before the first attempt wrote, and waited for the lock meanwhile)
        is not written again: found under the lock every such event is written under, so one request id
        writes one event, and what follows runs as for a resend (True).
        Should the request stop between the write and that second time (crash point `event.before_time`),
        an event that leaves the person not ACTIVE is marked (`u`) and timed by the next holder of the
        person's lock (`time_stopped`): what finishes it, or the next event, which times it first."""
        await self.time_stopped(lease, pid)
        if await self.event_at(pid, request_id):
            return True
        judged = judge(decode_hash(await self.r.hgetall(self.k.person(pid))))
        if judged is None:
            return False
        fields, event = judged
        if not event:  # fields only (`in_order`: the newest date of an event that changes nothing)
            written = await self.lua["life_event"](keys=[self.k.person(pid), self.k.history(pid), lease.fence_key],
                                                   args=[lease.token, "", *(x for kv in fields.items() for x in kv)])
            if int(written) != 1:
                raise lock_lost()
            return False
        event = {**event, "rid": request_id, **({"e": entry} if entry else {})}
        untimed = {"u": 1} if fields.get("status", "ACTIVE") != "ACTIVE" else {}
        written_event = json.dumps({**event, "at": self.clock.now_ms(), **untimed})
        args: list[Any] = [lease.token, written_event]
        for key, value in fields.items():
            args += [key, value]
        history = self.k.history(pid)
        written = await self.lua["life_event"](keys=[self.k.person(pid), history, lease.fence_key], args=args)
        if int(written) != 1:
            raise lock_lost()
        self.fault("event.before_time")
        timed = await self.lua["life_event_at"](keys=[history, lease.fence_key], args=[
            lease.token, written_event, json.dumps({**event, "at": self.clock.now_ms()})])
        if int(timed) != 1:
            raise lock_lost()
        return True

    async def time_stopped(self, lease: Lease, pid: str) -> None:
        """The time of an event on the person's history whose request stopped between the write and the
        time taken again (`write_event`, marked `u`), taken now under `lease`: by the next holder of the
        person's lock, so before anything reads the time (`timed_event`) and before the next event. A
        time taken later is the one the request would have taken only for an event that leaves the person
        not ACTIVE (the only ones marked): until their next event, which times this one first, nothing of
        this province begins with them (a transfer, a binding or a family place needs them ACTIVE), so
        what began by the write and what began by now are the same. A 统筹区 move leaves them ACTIVE in
        the new 统筹区: it keeps the time taken before the write (docs/wallet-and-life-cycle.md)."""
        history = self.k.history(pid)
        for raw in await self.r.lrange(history, 0, -1):
            written = json.loads(text(raw))
            if written.pop("u", None) is None:
                continue
            timed = await self.lua["life_event_at"](keys=[history, lease.fence_key], args=[
                lease.token, text(raw), json.dumps({**written, "at": self.clock.now_ms()})])
            if int(timed) != 1:
                raise lock_lost()

    async def timed_event(self, pid: str) -> None:
        """What follows a life-cycle event (the request, a resend, the recovery loop) begins here: an event
        of the person left untimed by a request that stopped (`time_stopped`) is timed first, under the
        person's lock, taken only where there is one."""
        if any("u" in json.loads(text(raw)) for raw in await self.r.lrange(self.k.history(pid), 0, -1)):
            lease = await self.acquire(pid)
            try:
                await self.time_stopped(lease, pid)
            finally:
                await self.locks.release(lease)
