"""The registry's recovery loop: no half-done settlement or reversal outlives it (SPEC §7).

Every staged settlement and every reversal puts an entry in `Keys.open_settlements()` before its
first write and removes it after its last. One pass (a fenced singleton across replicas) takes
each entry older than the grace period, takes the patient's fenced lock — so a paused original
holder can no longer write — and finishes what the entry names with the same code a live request
runs (`Staged.drive`, `Reversals.drive`, `Undo.drive`): an OPEN record is settled (a share that
can no longer be taken falls to cash), a REVERSING one reversed, a RESTORING one (冲正 of a
reversal) restored or, when a source fell short, given back and left reversed. An entry whose request
wrote nothing (its record never opened; a 2208 that never marked the record REVERSING, a 2601 that
never marked it RESTORING: their entries name their request id) is dropped with its pending claim, so
a resend of that request is judged afresh and a 2601 of it voids it; should the request itself have
been only stalled, it puts both back under the lock before it writes anything.

A bind, a family invitation or a creation claims its id with its entry (`B|…`, `F|…`), writes both
again just before its write (`Context.write_announced`) and withdraws the entry once its answer is
recorded, after reading its people again. For one that died in between, the pass does that read
(`Bindings.end_if_ended`, `Family.end_if_ended`): a place written after a status change, move or
death looked for the places to end is ended as that event would have (SPEC §3, §3b, §5b), the shares
returned; no lock is needed, as ending an ended place, or none, changes nothing. Its request id is
then answered as the request answers it, or freed where its write was refused or never came
(`Context.settle_claimed`): never left in progress. A 亲情账户 addition (`Q|`) is finished the same way:
written after a side's death looked for the 亲情账户 to end, it is undone and its id freed
(`Proxies.recover_proxy`).

A 划拨 (`X|`), shares returned (`L|`) and a 代缴 or its cancellation (`P|`) that the pass finishes have
their request id answered the same way, from what stands once finished, with the request's own answer
(`FamilyMoney.transfer_answer`, `FamilyMoney.leaving_answer`, `Premiums.answer_of`), before the entry goes.
So do an enrolment, a status change, a move and a death whose written event the pass finishes (`E|`):
`People.enroll_answer`, `People.status_answer`, `LifeCycle.move_answer`, `LifeCycle.death_answer`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import cast

from google.protobuf.message import Message

from medaid.common import metrics, tracing
from medaid.common.errors import DomainError
from medaid.common.logs import PassFailures
from medaid.common.values import text
from medaid.registry.bindings import Bindings
from medaid.registry.context import Context
from medaid.registry.engine import Engine
from medaid.registry.family import Family
from medaid.registry.lifecycle import LifeCycle
from medaid.registry.people import People
from medaid.registry.premiums import Premiums
from medaid.registry.reversal import Reversals, response_of
from medaid.registry.store import Store
from medaid.registry.undo import Undo
from medaid.registry.wallet_port import WALLET_REFUSED_REGISTRY

log = logging.getLogger("medaid.registry")

LEASE_MS = 5_000
# The operation an `E|<person>|<event>|<request id>|…` entry's request id was claimed for, for the events
# whose request claims its id with the entry and again under the lock (`Context.once_announced`): only
# those may have it freed, since a stalled request of another takes no claim back before it writes.
LIFE_OPS = {"status": "status", "move": "move_region", "death": "death", "enroll": "enroll"}
DEFAULT_GRACE_MS = 15_000


@dataclass
class RecoveryCounts:
    settled: int = 0
    reversed: int = 0
    restored: int = 0
    dropped: int = 0
    deferred: int = 0
    ran: bool = True
    family: int = 0  # 划拨, family returns and 代缴 finished
    # status changes, moves and deaths whose consequences were finished, and the bindings and family
    # places written beside one whose writer died before reading its people again
    lifecycle: int = 0
    # Deferred because the wallet refused this registry's certificate (not an outage: it lasts until the
    # certificate is fixed), with the last such refusal's metadata and the entries it held up.
    wallet_refused: int = 0
    refusal: dict[str, str] = field(default_factory=dict)
    refused_entries: list[str] = field(default_factory=list)

    def note_refusal(self, entry: str, exc: DomainError) -> None:
        """Counted when `exc` is the wallet refusing this registry's certificate."""
        if exc.reason == WALLET_REFUSED_REGISTRY:
            self.wallet_refused += 1
            self.refusal = dict(exc.metadata)
            if entry:
                self.refused_entries.append(entry)


class Recovery:
    def __init__(self, ctx: Context, store: Store, engine: Engine, reversals: Reversals,
                 grace_ms: int = DEFAULT_GRACE_MS, undo: Undo | None = None, family: Family | None = None,
                 premiums: Premiums | None = None, people: People | None = None,
                 lifecycle: LifeCycle | None = None, bindings: Bindings | None = None) -> None:
        self.family = family
        self.bindings = bindings
        self.premiums = premiums
        self.people = people
        self.lifecycle = lifecycle
        self.ctx = ctx
        self.store = store
        self.engine = engine
        self.reversals = reversals
        self.grace_ms = grace_ms
        self.undo = undo or Undo(ctx, store, family)

    async def run_once(self) -> RecoveryCounts:
        ctx = self.ctx
        counts = RecoveryCounts()
        if self.premiums is not None:  # payees of a premium paid before its insurance year, once it starts
            try:
                await self.premiums.lift_due()
            except DomainError as exc:  # the directory or the wallet did not answer: the next pass
                counts.note_refusal("", exc)
                log.warning("premium lifts deferred", extra={"fields": {"reason": exc.reason}})
        now = ctx.clock.now_ms()
        cutoff = now - self.grace_ms
        # An idle pass only reads: the singleton's lease is taken when there is something to finish. What it
        # reads, the index's size and its oldest entry's time, is exported on every replica, so that half-done
        # state older than the grace is seen whatever keeps it there (docs/operations.md, the alerts).
        oldest = cast(list[tuple[bytes, float]], await ctx.r.zrange(ctx.k.open_settlements(), 0, 0, withscores=True))
        entries = int(await ctx.r.zcard(ctx.k.open_settlements())) if oldest else 0
        metrics.recovery_index(entries, oldest[0][1] if oldest else 0)
        if not oldest or oldest[0][1] > cutoff:
            self._report(counts)
            return counts
        lease = await ctx.locks.try_acquire(ctx.k.recovery_tag(), LEASE_MS)
        if lease is None:  # another replica is running the pass
            counts.ran = False
            self._report(counts)
            return counts
        try:
            # Each entry with its score, the mark under which the pass takes it away (Context.withdraw):
            # the pass's locks may expire while it works, and an attempt that took one since and wrote
            # the entry again (a score of its own) keeps it.
            due = cast(list[tuple[bytes, float]], await ctx.r.zrangebyscore(
                ctx.k.open_settlements(), "-inf", cutoff, withscores=True))
            # A creation's entry (`F|`) waits for its initial 划拨's (`X|`, written after it): family
            # places go last, so the pass that finishes the 划拨 answers the creation too (a stable sort:
            # oldest first otherwise).
            due.sort(key=lambda item: item[0].startswith(b"F|"))
            for raw, score in due:
                if not await ctx.locks.extend(lease, LEASE_MS):
                    break  # another replica took over
                try:
                    # Its lines and its calls (the wallet's spend of a settlement) are the request's: its id
                    # and its origin (tracing.acting_for), so a grep of a msgid finds what recovery did for it.
                    with tracing.acting_for(_request_of(text(raw))):
                        await self._one(text(raw), score, counts)
                except DomainError as exc:
                    counts.deferred += 1
                    counts.note_refusal(text(raw), exc)
                    log.warning("recovery deferred", extra={"fields": {"entry": text(raw), "reason": exc.reason}})
        finally:
            await ctx.locks.release(lease)
        self._report(counts)
        return counts

    @staticmethod
    def _report(counts: RecoveryCounts) -> None:
        """The pass's counts as metrics, and a log line for what it finished. While the wallet refuses this
        registry's certificate, an error line each pass: a misconfiguration that no waiting cures
        (docs/operations.md), told apart from a wallet that does not answer."""
        metrics.recovery({"settled": counts.settled, "reversed": counts.reversed, "restored": counts.restored,
                          "dropped": counts.dropped, "deferred": counts.deferred, "family": counts.family,
                          "lifecycle": counts.lifecycle, "wallet_refused": counts.wallet_refused})
        if counts.settled or counts.reversed or counts.dropped or counts.family or counts.lifecycle:
            log.info("recovery", extra={"fields": {"settled": counts.settled, "reversed": counts.reversed,
                                                   "dropped": counts.dropped, "family": counts.family,
                                                   "lifecycle": counts.lifecycle}})
        if counts.wallet_refused:
            log.error("wallet refused this registry's certificate", extra={"fields": {
                "wallet_refused": counts.wallet_refused, "wallet_reason": counts.refusal.get("wallet_reason", ""),
                "caller_province": counts.refusal.get("caller_province", ""),
                "entries": counts.refused_entries[:10],
                "fix": "give this registry the certificate registry-<province> of its own province"}})

    async def _one(self, entry: str, mark: float, counts: RecoveryCounts) -> None:
        ctx, k = self.ctx, self.ctx.k
        kind, pid, sid = entry.split("|", 2)
        if kind == "E":  # an enrolment, status change, move or death a request left half done
            if await self._life_event(entry, mark, pid, *sid.split("|", 2)):
                counts.lifecycle += 1
            else:
                counts.deferred += 1
            return
        if kind in ("B", "F", "Q"):  # a binding, a family place or a 亲情账户 whose writer died before its second read
            if kind == "B" and self.bindings is not None:
                await self.bindings.recover_place(entry, mark)
            elif kind == "Q" and self.bindings is not None:
                await self.bindings.proxies.recover_proxy(entry, mark)
            elif kind == "F" and self.family is not None:
                if not await self.family.recover_place(entry, mark):  # its initial 划拨 is finished first
                    counts.deferred += 1
                    return
            else:
                raise AssertionError(f"recovery entry {entry} names nothing this registry finishes")
            counts.lifecycle += 1
            return
        if kind in ("X", "L", "P"):  # a 划拨, family shares being returned, a 代缴 or its cancellation
            part = self.premiums if kind == "P" else self.family
            if part is not None and await part.recover(entry, mark):
                counts.family += 1
            else:
                counts.deferred += 1
            return
        # A reversal's and an undo's entry name their request id (`R|<patient>|<settlement>|<id>`; one
        # written before they did has none); a settlement's id is the settlement's.
        sid, _, rid = sid.partition("|")
        patient_lock = await ctx.locks.try_acquire(k.person_tag(pid), ctx.lock_ttl_ms)
        if patient_lock is None:  # a live request holds it: it is not abandoned
            counts.deferred += 1
            return
        try:
            rec = await self.store.record(pid, sid)
            if kind == "S" and rec is not None and rec.state == "OPEN":
                final = await self.engine.staged.drive(rec, patient_lock)
                await self.engine.staged.close(final, patient_lock, entry, mark)
                counts.settled += 1
            elif (kind == "R" and rec is not None and rec.state in ("REVERSING", "REVERSED")
                  and rid in ("", rec.reversal_id)):
                # REVERSED: its process died before the 2208's answer was recorded; driven again, every
                # step finds itself done and the answer is recorded (Reversals.drive).
                await self.reversals.drive(rec, patient_lock, entry, mark)
                if rec.state == "REVERSING":
                    counts.reversed += 1
            elif kind == "R" and rec is not None and rid and rid == rec.reversal_id:
                # Reversed, and undone since: the 2208 was done; its answer, where none was recorded.
                if text(await ctx.r.hget(ctx.idem.key(rid), "state") or b"") == "PENDING":
                    await ctx.idem.record(rid, response_of(rec, []))
                await ctx.withdraw(entry, mark)
            elif kind == "U" and rec is not None and rec.state == "RESTORING" and rid in ("", rec.restore_id):
                try:  # the undo's answer (or refusal) is recorded before its entry goes (Undo.drive)
                    await self.undo.drive(rec, patient_lock, entry, mark)
                except DomainError as exc:
                    if exc.retryable:
                        raise
                counts.restored += 1
            else:
                # Nothing of this request was written (no record; the record not reversed, or not being
                # restored, by it): it stopped before its first write, or was refused. Its claim goes with
                # the entry, and before it (`_drop`).
                await self._drop(entry, mark, *self._claim_of(kind, pid, sid, rid))
                if rec is None or rid:
                    counts.dropped += 1
        finally:
            await ctx.locks.release(patient_lock)

    @staticmethod
    def _claim_of(kind: str, pid: str, sid: str, rid: str) -> tuple[str, str, str]:
        """The request id an entry names, with the operation and subject its claim was taken for ('' where
        the entry names none)."""
        if kind == "S":
            return sid, "settle", pid
        return rid, {"R": "reverse", "U": "undo_reversal"}.get(kind, ""), sid

    async def _drop(self, entry: str, mark: float, request_id: str, op: str, subject: str) -> None:
        """An entry whose request wrote nothing dropped, under the patient's lock, with its request id's
        claim (`Context.drop_claimed`). A resend is then judged afresh, and a 2601 of it voids it."""
        await self.ctx.drop_claimed(entry, mark, request_id, (op,) if op else (), subject)

    async def _life_event(self, entry: str, mark: float, pid: str, op: str, request_id: str, arg: str) -> bool:
        """Finish what follows a written enrolment, status change, move or death: each step is once per
        request id, so running it beside a live resend, or again, changes nothing twice. An entry whose
        event the person's history (for an enrolment, the person's record) does not hold was left by a
        request that stopped before writing it, or that is stalled and may still write it: dropped under
        the person's fenced lock (a resend does it all). The request writes its entry again under that
        lock and its event fenced by it (`Context.life_event`), so an event is never written without
        its entry: what follows it is finished by the request or by this loop, which then answers its
        request id as the request would (`Context.settle_claimed`). False when a live request holds the
        lock."""
        lease = await self.ctx.locks.try_acquire(self.ctx.k.person_tag(pid), self.ctx.lock_ttl_ms)
        if lease is None:
            return False
        try:
            written = await self._event_written(pid, op, request_id, entry)
            if not written:  # its id freed with the entry (the claim's operation is the entry's)
                await self.ctx.drop_claimed(entry, mark, request_id, (LIFE_OPS.get(op, ""),), pid)
        finally:
            await self.ctx.locks.release(lease)
        if not written:
            return True
        if written == "other":
            # The id's event is a corrected resend's, written after this entry's request lost the id (it
            # stalled past the grace): finished by that resend with its own values, never with this
            # entry's (another heir, region or status). Only the stale entry goes.
            await self.ctx.withdraw(entry, mark)
            return True
        response: Message
        if op == "enroll" and self.people is not None:
            await self.people.finish_enroll(pid)
            response = await self.people.enroll_answer(pid)
        elif op == "status" and self.people is not None:
            status, _, moved_to = arg.partition(">")
            response = await self.people.status_answer(
                pid, await self.people.finish_status(pid, request_id, status, moved_to))
        elif op == "move" and self.lifecycle is not None:
            response = await self.lifecycle.move_answer(pid, *await self.lifecycle.finish_move(pid, request_id, arg))
        elif op == "death" and self.lifecycle is not None:
            ended, returned, _, paid = await self.lifecycle.finish_death(pid, request_id, arg)
            response = await self.lifecycle.death_answer(pid, ended, returned, paid)
        else:
            raise AssertionError(f"recovery entry {entry} names nothing this registry finishes")
        # Its request id answered as the request answers it, from what stands now (never left in progress:
        # a resend replays this answer), then the entry withdrawn (Context.settle_claimed).
        await self.ctx.settle_claimed(entry, mark, request_id, LIFE_OPS[op], pid, response)
        return True

    async def _event_written(self, pid: str, op: str, request_id: str, entry: str) -> str:
        """Whether request `request_id` wrote its life event ('' no, 'own', or 'other': under another
        entry, `Lifecycle.happened`): an enrolment the person's record (its entry names no values), any
        other an event of the person's history."""
        if op == "enroll":  # no history event: the person's record says
            return "own" if self.people is not None and await self.people.enrolled_by(pid, request_id) else ""
        return await self.lifecycle.happened(pid, request_id, entry) if self.lifecycle is not None else ""

    async def loop(self, interval_s: float) -> None:
        failures = PassFailures(log, "recovery")  # a store that cannot serve: one line per streak
        while True:
            await asyncio.sleep(interval_s)
            tracing.start()  # each pass its own trace: its calls to the wallet and its log lines share it
            try:
                await self.run_once()
            except Exception as exc:  # noqa: BLE001 - the loop outlives a failed pass (e.g. Redis down)
                metrics.recovery({"pass_failed": 1})
                failures.failed(exc)
            else:
                failures.succeeded()


def _request_of(entry: str) -> str:
    """The request id an entry of the recovery index finishes ('' for the kinds that name none alone): a
    settlement's (`S|<patient>|<settlement>`), a reversal's or an undo's (`R|`/`U|<patient>|<settlement>|<id>`;
    one written before they named it, the settlement's), a life event's (`E|<person>|<op>|<id>|<arg>`)."""
    kind, _, rest = entry.partition("|")
    _, _, rest = rest.partition("|")
    parts = rest.split("|")
    if kind == "S":
        return parts[0]
    if kind in ("R", "U"):
        return parts[1] if len(parts) > 1 and parts[1] else parts[0]
    if kind == "E" and len(parts) > 1:
        return parts[1]
    return ""
