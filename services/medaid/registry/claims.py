"""Request-id claims and the recovery index's entries (SPEC §7): a flow's id claimed with its entry, taken
again under its lock, answered or dropped, and the recovery loop's side of the same (take-over, free,
answer); what a refusal leaves (nothing) and what a crash leaves (an entry that leads the loop back)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf.message import Message

from medaid.common.errors import DomainError
from medaid.common.idempotency import Claim, ClaimRead, Finish, fingerprint, validate_request_id
from medaid.common.redis_client import barrier
from medaid.common.values import text
from medaid.registry.context_core import ContextCore, lock_lost

M = TypeVar("M", bound=Message)

# How long a recovery loop's take-over of a bind's or a family place's entry is kept (Context.fence_place):
# far past any stall of its writer.
PLACE_FENCE_TTL_MS = 24 * 3600 * 1000


class Claims(ContextCore):
    """The claim and recovery-entry handling of `Context`."""

    async def once(self, request: Any, op: str, subject: str, response_type: Any,
                   work: Callable[[], Any]) -> Any:
        return await self.idem.run(request, op, subject, response_type, work, self.clock.now_ms())

    async def announce_held(self, entry: str, client: Any = None) -> Any:
        """A flow's recovery entry written again once the flow holds the fenced lock under which the
        recovery loop looks for the flow's first effect and, finding none, drops the entry (the request
        stopped before writing anything). A request stalled past the grace between its first write of
        the entry and the lock may have lost the entry so; written again here, it stands when the first
        fenced effect is written: a loop that takes the lock later finds the effect and finishes the
        flow, and one that took it in between made this holder's token stale, so that no effect is
        written at all (SPEC §7: no half-done state outlives recovery). Returns this holder's mark on
        the entry, for `withdraw` (open_entry.lua). `client`: queued on that pipeline instead (the mark
        is then its reply there)."""
        return await self.lua["open_entry"](keys=[self.k.open_settlements()], args=["hold", entry, self.clock.now_ms()],
                                            client=client)

    async def write_announced(self, opening: Opening, entry: str, script: str, keys: list[str],
                              args: list[Any]) -> Any:
        """A write (`script`) whose place a life event may have missed: a bind, an invitation, a creation
        (SPEC §3, §3b, §5b), under `once_announced`. An event writes the person, then ends the places it
        finds; the writer reads the people again after its write and ends a place the event missed. The
        entry `entry` (`B|…`, `F|…`, naming the 统筹区 the write was checked on) leads the recovery loop to
        that second read should the writer die before it: the loop runs the same rule, then answers the
        id and withdraws the entry. The entry and the id's claim are taken again first (`hold`: a loop
        that found nothing written while the request stalled may have freed both), one round trip before
        the write; an entry the request was claimed with that names another 统筹区 (the people read
        since) is withdrawn once the new one stands. The script is given the entry's fence
        (`Keys.place_fence`) and this holder's mark last: it writes nothing once the loop took the entry
        over at that mark (`fence_place`), and this request is told to resend (LOCK_LOST, its claim left
        as it stands). Returns the script's reply."""
        held = await self.hold_as(opening, entry)
        self.fault("place.before_write")  # tests: a writer stalled past the grace after taking both again
        reply = await self.lua[script](keys=[*keys, self.k.place_fence(entry)], args=[*args, held])
        if text(reply[0]) == "ERR" and text(reply[1]) == "FENCED":
            raise lock_lost().after_effects()  # nothing written; the claim is the loop's or a resend's now
        return reply

    async def hold_as(self, opening: Opening, entry: str) -> Any:
        """`hold` of `opening`'s claim with its entry now named `entry` (`place_entry`, the 统筹区 read
        since may differ); the entry the request was claimed with, where it differs, is withdrawn once
        the new one stands. Returns this holder's mark (`write_announced`, and a creation with an initial
        划拨, which holds both under the creator's lock before its debit: `Family.create`)."""
        first, mark = opening.entry, opening.held
        opening.entry = entry
        held = await self.hold(opening)
        if first != entry and mark is not None:
            await self.withdraw(first, mark)
        return held

    async def fence_place(self, entry: str, mark: Any) -> None:
        """The recovery loop's take-over of a bind's, an invitation's or a creation's entry (`B|`, `F|`) as
        it read it (`mark`), before it looks for the request's write: a holder of that mark, stalled since
        it took its claim again (`write_announced`), writes nothing after this, so that what the loop
        finds is all there will be, and an id it frees has no write landing behind it. A holder that took
        the entry again since has a mark of its own, and its claim a new attempt the loop does not free."""
        await self.r.set(self.k.place_fence(entry), mark_of(mark), px=PLACE_FENCE_TTL_MS)

    def withdrawal(self, entry: str, mark: Any) -> Callable[[Any], Awaitable[None]]:
        """`withdraw` of `entry` under `mark` as the `then` of an `idempotency.Finish`: queued on the
        pipeline that records the request's answer, after it (`barrier` on a cluster), so that the id
        is never left in progress once the entry is gone."""
        async def writes(pipe: Any) -> None:
            await self.withdraw(entry, mark, client=pipe)
        return writes

    async def withdraw(self, entry: str, mark: Any, client: Any = None) -> Any:
        """A flow's entry taken away by the holder whose `announce_held` answered `mark` (or by the
        recovery loop, whose mark is the entry's score as it read it), once the flow is refused with
        nothing open or finished; kept if a later holder wrote it again meanwhile (this one's lock
        expired, and the entry, a request id's or a settlement's, is now another attempt's, which may
        have begun under it). 1 if removed, else 0; `client`: queued on that pipeline instead."""
        return await self.lua["open_entry"](keys=[self.k.open_settlements()], args=["withdraw", entry, mark_of(mark)],
                                            client=client)

    async def claim_announced(self, entry: str, request: Any, op: str, subject: str,
                              reads: Callable[[Any], None] | None = None,
                              fp: str | None = None) -> tuple[Claim, Any, list[Any]]:
        """A request's id claimed together with its flow's recovery entry `entry`, which names the id: a
        process that dies before the flow's first write leaves both, and the recovery loop frees the
        claim (a 2601 of the request then voids it, a resend with corrected fields is judged afresh)
        instead of leaving it in progress with nothing leading back to it. The entry first (on a cluster
        `barrier` has it written before the claim is taken), then `reads`, then the claim: one round trip
        on one Redis. Returns the claim, this request's mark on the entry (None where an entry stood
        already: an earlier attempt's, left to the loop) and what `reads` read. A reused id, or one
        answered already, leaves no entry of this request's behind. `fp`: the request's fingerprint,
        where it is not `fingerprint(request)` (a 2207's leaves out fields that do not name the bill)."""
        request_id = request.request_id
        validate_request_id(request_id)  # before anything is written (the entry names it)
        now = self.clock.now_ms()
        async with self.r.pipeline(transaction=False) as p:
            p.zadd(self.k.open_settlements(), {entry: now}, nx=True)
            first = await barrier(p)
            if reads is not None:
                reads(p)  # plain commands before the script (fastredis)
            await self.idem.queue_begin(p, request_id, fp or fingerprint(request), op, subject, now, entry)
            added, *fetched, raw = [*first, *await p.execute()]
        mark = now if added else None
        try:
            claim = self.idem.parse_claim(request_id, raw)
        except DomainError:
            if mark is not None:
                await self.withdraw(entry, mark)
            raise
        if claim.state == "DONE" and mark is not None:
            await self.withdraw(entry, mark)
        return claim, mark, fetched

    async def retake_held(self, pipe: Any, entry: str, request: Any, op: str, subject: str,
                          fp: str | None = None) -> list[Any]:
        """Under the lock the flow's writes are fenced by: its entry written again with this holder's mark
        (`announce_held`) and its id claimed again, queued on `pipe` (replies: the mark, then the claim's
        for `Idempotency.parse_claim`). A recovery pass frees both when the request stalls between its
        claim and the lock; what it writes now must stay findable by the loop, and a request whose id was
        taken since by another request, or voided by a 2601, writes nothing (REUSED). The entry first
        (`barrier` on a cluster: the claim is taken again only once the entry stands); returns the replies
        of what `barrier` sent (see there), `fp` as in `claim_announced`. The claim taken again names
        `entry` and gets a new attempt number: a loop that read it before, to free it, frees it no more
        (`free_claim`), so that what this holder writes next never stands without its claim."""
        await self.announce_held(entry, client=pipe)
        first = await barrier(pipe)
        await self.idem.queue_begin(pipe, request.request_id, fp or fingerprint(request), op, subject,
                                    self.clock.now_ms(), entry, hold=True)
        return first

    async def unclaim(self, entry: str, mark: Any, request_id: str, exc: DomainError, claim_state: str,
                      taken: Taken | None = None) -> None:
        """A flow under `claim_announced` refused before its first write: its claim dropped where the
        refusal drops it (`Idempotency.drops_claim`; never another request's), then its entry withdrawn
        under `mark`, this request's, in one round trip (`barrier` on a cluster). The entry goes only
        with the claim, or when the claim is not this request's: a claim in progress never outlives the
        entry that leads the loop back to it. A holder told LOCK_LOST leaves the claim and the entry to
        the loop, which judges them under the lock: the newer holder may be a resend of this very request,
        whose claim (answered, or in progress) it now is. One that never held the entry (`mark` None)
        leaves the entry to the loop. `taken`: the claim as this attempt last took it; the claim is then
        dropped only while it still stands so (idem_free.lua): a resend that took it again under the lock
        since (a new attempt number), and answered it or is writing, keeps it. (None: dropped as it stands.)"""
        # The id itself taken by another request, or voided by a 冲正 (`idempotency.reused`, naming it); not a
        # refusal of what the request names (ORIGINAL_CANCELLED for a settlement a 2601 cancelled).
        not_ours = exc.reason == "IDEMPOTENCY_KEY_REUSED" or (exc.reason == "ORIGINAL_CANCELLED"
                                                              and exc.metadata.get("request_id") == request_id)
        drop = not not_ours and exc.reason != "LOCK_LOST" and self.idem.drops_claim(exc, claim_state)
        withdraw = mark is not None and exc.reason != "LOCK_LOST" and (drop or not_ours)
        if not (drop or withdraw):
            return
        async with self.r.pipeline(transaction=False) as p:
            if drop and taken is not None:
                await self.idem.queue_release(p, request_id, taken.fp, taken.attempt, taken.entry)
            elif drop:
                p.delete(self.idem.key(request_id))
            await barrier(p)
            if withdraw:
                await self.withdraw(entry, mark, client=p)
            await p.execute()

    async def answer(self, entry: str, mark: Any, request_id: str, response: M,
                     then: Callable[[Any], Awaitable[None]] | None = None) -> M:
        """A flow's answer recorded for `request_id` (the first recorded stays, and is returned), then its
        entry withdrawn under `mark` (none where `mark` is None: the entry is an earlier attempt's, left
        to the loop) and `then` queued (other entries' withdrawals): one round trip on one Redis
        (`barrier` on a cluster), the answer first, so that the id is never left in progress once an
        entry that leads back to it is gone."""
        async with self.r.pipeline(transaction=False) as p:
            await self.idem.queue_finish(p, request_id, response)
            first = await barrier(p)
            if mark is not None:
                await self.withdraw(entry, mark, client=p)
            if then is not None:
                await then(p)
            recorded, *_ = [*first, *await p.execute()]
        return self.idem.recorded(recorded, response)

    async def once_announced(self, request: Any, op: str, subject: str, response_type: Any, entry: str,
                             work: Callable[[Opening], Any]) -> Any:
        """`once` for a multi-step flow under recovery entry `entry`, which names the request id: the id
        claimed with the entry (`claim_announced`), so that a process that dies before the flow's first
        write leaves both and the recovery loop frees the id (`drop_claimed`) instead of leaving it in
        progress with nothing leading back to it. `work` takes the flow's `Opening` and, once it holds the
        lock its writes are fenced by, calls `hold` (the entry and the claim taken again) and sets
        `opened` with its first write. A refusal before that drops the claim, then the entry
        (`unclaim`); one after it is judged as `Idempotency.run` judges it. Its answer (`work`'s reply, or
        a `Finish` whose `then` goes after it) is recorded, then the entry withdrawn (`answer`): a flow
        never withdraws its own entry before its answer stands, so that its id is never left in progress
        with nothing leading the loop back to it."""
        claim, mark, _ = await self.claim_announced(entry, request, op, subject)
        if claim.state == "DONE":
            return claim.answer(response_type)
        opening = Opening(held=mark, entry=entry, request=request, op=op, subject=subject,
                          claimed=(entry, claim.attempt))
        try:
            response = await work(opening)
        except DomainError as exc:
            if not opening.opened:
                await self.unclaim(entry, opening.held, request.request_id, exc, claim.state, opening.taken())
            elif opening.finished:  # refused with its effects finished: the claim goes, then the entry
                await self.unclaim(opening.entry, opening.held, request.request_id, exc, claim.state,
                                   opening.taken())
            elif self.idem.drops_claim(exc, claim.state):
                taken = opening.taken()
                await self.idem.release(request.request_id, taken.fp, taken.attempt, taken.entry)
            raise
        self.fault("flow.before_answer")  # tests: a process that dies with the flow done, unanswered
        if isinstance(response, Finish):
            return await self.answer(opening.entry, opening.held, request.request_id, response.response,
                                     response.then)
        return await self.answer(opening.entry, opening.held, request.request_id, response)

    async def hold(self, opening: Opening) -> Any:
        """Under the lock the flow of `opening` (`once_announced`) is fenced by: its entry and its id's
        claim taken again (`retake_held`), in one round trip; sets and returns this holder's mark. An id
        taken meanwhile by another request, or voided, is refused (REUSED / ORIGINAL_CANCELLED), and the
        entry, which may be that request's too, is left to the loop."""
        await self.hold_reading(opening)
        return opening.held

    async def hold_reading(self, opening: Opening, reads: Callable[[Any], None] | None = None) -> list[Any]:
        """`hold`, with `reads` (plain commands, before the scripts: fastredis) in the same round trip;
        returns what they read. Sets `held` only once the claim is this request's, so that a refusal
        (`unclaim`) never withdraws an entry that names the request which now holds the id."""
        async with self.r.pipeline(transaction=False) as p:
            if reads is not None:
                reads(p)
            first = await self.retake_held(p, opening.entry, opening.request, opening.op, opening.subject)
            *fetched, mark, raw_claim = [*first, *await p.execute()]
        opening.held = None
        claim = self.idem.parse_claim(opening.request.request_id, raw_claim)
        opening.held, opening.claimed = mark, (opening.entry, claim.attempt)
        return fetched

    async def drop_claimed(self, entry: str, mark: Any, request_id: str, ops: tuple[str, ...], subject: str) -> None:
        """An entry whose request wrote nothing dropped by the recovery loop, under the lock the request's
        writes are fenced by, with its request id's claim (`free_claim`), the claim first: a pass that dies
        in between leaves the entry, which the next pass drops, never a claim in progress that nothing
        leads back to."""
        await self.free_claim(entry, mark, request_id, ops, subject)
        self.fault("recovery.mid_drop")  # tests: a pass that dies between the claim and the entry
        await self.withdraw(entry, mark)

    async def free_claim(self, entry: str, mark: Any, request_id: str, ops: tuple[str, ...], subject: str) -> None:
        """The claim of `request_id`, whose entry `entry` the recovery loop found with nothing of the request
        written under the lock, freed: only while the entry still carries `mark` (an attempt that wrote it
        again since holds both, and takes both again under the lock: `hold`), and only a claim in progress
        (not an answered or voided one) taken for this very request (`pending`). The delete compares the
        claim with what was read, on the claim's own key (`Idempotency.free`): a request that takes no lock
        (a bind) and takes its claim again in between keeps it. A resend is then judged afresh."""
        self.fault("recovery.before_drop")  # tests: a pass stalled past the lock here
        read = await self.pending(entry, mark, request_id, ops, subject)
        if read is not None:
            self.fault("recovery.claim_checked")  # tests: a writer that takes its claim again here
            await self.idem.free(request_id, read)

    async def in_progress(self, entry: str, mark: Any, request_id: str, ops: tuple[str, ...], subject: str) -> bool:
        """Whether `request_id`'s claim is in progress for the request of entry `entry` (`pending`)."""
        return await self.pending(entry, mark, request_id, ops, subject) is not None

    async def pending(self, entry: str, mark: Any, request_id: str, ops: tuple[str, ...],
                      subject: str) -> ClaimRead | None:
        """`request_id`'s claim, as read, where it is in progress (not answered, voided or freed) for the
        request of entry `entry`: taken for an operation of `ops` on `subject`, with that entry (the one it
        was last taken with: a claim taken by another request with the id since, under an entry of its own,
        is not this entry's; a claim written before claims named their entry names none), while the entry
        still carries `mark` (no attempt wrote it again since). What the recovery loop may then free
        (`free_claim`) or answer (`settle_claimed`); else None. The claim is read before the entry (`barrier`
        on a cluster), so that a holder that writes the entry again and then takes the claim again is never
        read as the claim taken again beside the entry as it was."""
        if not request_id or not ops:
            return None
        async with self.r.pipeline(transaction=False) as p:
            self.idem.queue_read(p, request_id)
            first = await barrier(p)
            p.zscore(self.k.open_settlements(), entry)
            raw, score = [*first, *await p.execute()]
        claim = ClaimRead.of(raw)
        if (score == mark and claim.state == "PENDING" and claim.op in ops and claim.subject == subject
                and claim.entry in ("", entry)):
            return claim
        return None

    async def settle_claimed(self, entry: str, mark: Any, request_id: str, op: str, subject: str,
                             response: Message | None) -> None:
        """The recovery loop's end of the entry of a request that takes no lock (a bind, an invitation, a
        creation: `write_announced`), once it did what the request had left: the request id's claim, while
        still in progress for this request (`in_progress`), answered with `response`, the answer the
        request would have given from what stands now (`answer`: the first answer recorded stays, so a
        writer or a resend that records one later replays this one), or freed where nothing of the
        request stands (`response` None: `drop_claimed`, as the request drops it when its write is
        refused); then the entry withdrawn. So no id is left in progress for good (SPEC §7)."""
        if response is None:
            await self.drop_claimed(entry, mark, request_id, (op,), subject)
        elif await self.in_progress(entry, mark, request_id, (op,), subject):
            await self.answer(entry, mark, request_id, response)
        else:
            await self.withdraw(entry, mark)

    async def entries_from(self, prefix: str, opening: Opening) -> list[tuple[str, float]]:
        """The recovery index's entries that begin with `prefix` (one request's: `B|…`, `F|…` up to its
        request id), each with its score, the mark under which `withdraw` takes it away: what a resend
        finishes as the recovery loop would (`Bindings.finish_own`, `Family.own_creation`). The entry
        this attempt wrote itself (`opening`'s, under `once_announced`) is left out: it is the resend's,
        withdrawn with its answer. The prefix is of id numbers, family ids and a request id: no glob
        characters."""
        return [(text(raw), float(score)) async for raw, score in
                self.r.zscan_iter(self.k.open_settlements(), match=f"{prefix}*")
                if not (opening.held is not None and text(raw) == opening.entry)]

    @contextlib.asynccontextmanager
    async def announced(self, entry: str) -> AsyncIterator[Opening]:
        """A multi-step flow under `entry` of the recovery index (`Keys.open_settlements()`), written
        before its first effect so that the recovery loop finishes it if this process dies. The flow
        sets `held` to its mark on the entry (`announce_held`) once it holds the lock its effects are
        fenced by, and `opened` once its first
        effect is written. A refusal before that is raised as it is; it withdraws the entry (nothing
        to finish) only when the flow held the lock and did not lose it: only the holder can tell that
        nothing is open, and busy or overtaken the entry may be an earlier attempt's (the same request
        id) whose first effect is written, which the recovery loop judges under the lock. A refusal
        after the first effect is raised `after_effects` (its request-id claim stays: the recovery
        loop finishes the flow, and a resend finds it)."""
        await self.r.zadd(self.k.open_settlements(), {entry: self.clock.now_ms()}, nx=True)
        opening = Opening()
        try:
            yield opening
        except DomainError as exc:
            if opening.opened:
                raise exc.after_effects() from exc
            if opening.held is not None and exc.reason != "LOCK_LOST":
                await self.withdraw(entry, opening.held)
            raise


@dataclass
class Opening:
    """Whether a flow under `Context.announced` has taken its lock and written its first effect."""

    held: Any = None  # the holder's mark on the entry (Context.announce_held)
    opened: bool = False
    # Under Context.once_announced: the flow's effects are finished, so that a refusal now (a 划拨
    # refunded, a 代缴 dropped) drops the claim, then the entry (Context.unclaim), as an answer goes first.
    finished: bool = False
    # Under Context.once_announced: the entry, the request and what its id was claimed for (Context.hold).
    entry: str = ""
    request: Any = None
    op: str = ""
    subject: str = ""
    # The entry and the attempt number the claim was last taken with by this request (found, or taken
    # again: `Context.hold`): what alone its refusal frees (`Context.unclaim`), never a claim a resend
    # took again since.
    claimed: tuple[str, str] = ("", "")

    def taken(self) -> Taken:
        """The claim as this request last took it (under `Context.once_announced`)."""
        return Taken(fingerprint(self.request), *self.claimed)


@dataclass(frozen=True)
class Taken:
    """A request id's claim as an attempt took it: its fingerprint, the recovery entry and the attempt
    number it was last taken with (idem_free.lua compares the claim with these before it deletes it)."""

    fp: str
    entry: str
    attempt: str


def mark_of(score: Any) -> str:
    """A mark on a recovery entry as open_entry.lua compares it: what 'hold' answered, or the entry's
    score as ZRANGEBYSCORE / ZSCORE read it (a float)."""
    if isinstance(score, float) and score.is_integer():
        return str(int(score))
    return text(score)


