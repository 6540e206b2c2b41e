"""冲正 (2601) in the registry: void a request that never arrived, and undo a reversal.

**Cancel** (`CancelRequest`): an id this registry never saw is voided for good in one script
(request_void.lua): its claim gets a fingerprint no request has, so a late original is refused by
the ordinary reused-id check and writes nothing. An id it saw is reported (settle or reverse, which
settlement, finished or not) so the router can undo it: a settlement by reversing it, a reversal
by `UndoReversal`.

The void is the cancel's write, so the cancel's own request id is claimed first (the ordinary claim,
fingerprinted over the original it names): a resend answers VOIDED as the first time, and the same id
naming another original is refused IDEMPOTENCY_KEY_REUSED and voids nothing. The void itself is the
original's, once: another cancel id of an original voided already answers VOIDED too (its id claimed
the same way), and a cancel resent after an earlier release voided its original without claiming the
cancel's id is answered VOIDED and claims it now. A report (USED) writes nothing and claims nothing: the
router's 2601 goes on under the same id (the reversal's, the undo's), and a resend reports afresh
(`finished` as it stands then).

**Undo a reversal** (`UndoReversal`) takes back exactly what the reversal returned, from the same
accounts, or moves nothing. Under the patient's fenced lock, after a check that writes nothing:

1. restore_begin.lua: the own-account share is taken again and the record is RESTORING under a new
   money ref (`new_attempt_ref`: a digest of the settlement id and the attempt's number, which no
   client's request id is; every move of this attempt is marked with it, once);
2. each helper's share (settle_charge.lua, under the attempt's money ref), or in a pooled province
   the family account's (family_charge.lua: the same contributors and amounts as before, planned by
   `rules.family_step`, else none), then the wallet's (a new spend with the ref as id);
3. restore_finish.lua: SETTLED, the money now under the new ref, so the next reversal returns it.

A settlement that a 2601 冲正 of the settlement itself reversed, or found reversed, stays reversed: its
reversal is refused ORIGINAL_CANCELLED (`cancelled_by`, kept by reverse_begin.lua; restore_begin.lua
judges it under the fence), so that 2601's answer holds whichever came first.

If a source no longer covers its share at step 2 (it changed since the check), the refusal is
recorded first (restore_abort.lua 'mark'), then what this attempt took goes back (restore_return.lua,
family_refund.lua, the wallet's `cancel_spend`) and the record is REVERSED again ('finish'). A refused attempt's ref is
never used again. An attempt whose process died is resumed by the recovery loop (entry
`U|<patient>|<sid>|<request id>`, written with the request id's claim and again under the lock) with
the same `drive`, forward or, once marked refused, back; one that died before step 1 has its id freed.
"""

from __future__ import annotations

import logging
from typing import Any

from medaid.common import errors, metrics
from medaid.common.errors import DomainError
from medaid.common.idempotency import VOID, ClaimRead, fingerprint, validate_request_id
from medaid.common.lock import Lease
from medaid.common.logs import event
from medaid.common.rpc import derived_id
from medaid.common.scripts import ScriptSet
from medaid.common.v1 import common_pb2 as cpb
from medaid.common.values import text
from medaid.registry import reversal, rules
from medaid.registry.context import Context, Opening, Taken, lock_lost
from medaid.registry.family import Family
from medaid.registry.records import SettlementRecord, consumption_field, consumption_json
from medaid.registry.store import Store
from medaid.registry.v1 import registry_pb2 as pb

log = logging.getLogger("medaid.registry")

SCRIPTS = ["request_void", "restore_begin", "restore_return", "restore_finish", "restore_abort"]


def open_entry(pid: str, sid: str, request_id: str) -> str:
    """The recovery index entry of 冲正 `request_id` undoing settlement `sid`'s reversal (written with the
    id's claim; entries written before they named the id are `U|<patient>|<settlement>`)."""
    return f"U|{pid}|{sid}|{request_id}"


def new_attempt_ref(province: str, sid: str, attempt: int) -> str:
    """The money ref of the `attempt`-th undo of settlement `sid`'s reversals: every move of that attempt
    (the own account's, each helper's or the family account's, the wallet's spend, whose request id it
    is) is made once under it, and the next reversal returns the money under it. A digest of the three
    (the wallet serves every province), so that it is no client's request id (a settlement's, a
    credit's: each is a mark on the same accounts) and is apart from every other attempt's;
    restore_begin.lua keeps it in the record."""
    return derived_id("undo", province, sid, str(attempt))


def attempt_ref(rec: SettlementRecord) -> str:
    """The money ref of the undo attempt in progress (or the last one), as its record keeps it; a
    record begun before refs were kept has `<sid>:u<n>`."""
    return rec.restore_ref or f"{rec.sid}:u{rec.restores}"


def cancelled(rec: SettlementRecord) -> errors.DomainError:
    """A reversal of a settlement that a 2601 冲正 of the settlement itself cancelled: it stays reversed, as
    that 2601 answered (records.SettlementRecord.cancelled_by, restore_begin.lua)."""
    return errors.refused("ORIGINAL_CANCELLED", f"settlement {rec.sid} was cancelled by a 2601 冲正; its reversal "
                          "stays", field="omsgid")


def _short(source: str, why: str) -> errors.DomainError:
    return errors.refused("UNDO_SOURCE_SHORT", f"the reversal cannot be undone: {why}", source=source)


class Undo:
    def __init__(self, ctx: Context, store: Store, family: Family | None = None) -> None:
        self.ctx = ctx
        self.store = store
        self.family = family
        self.k = ctx.k
        self.lua = ScriptSet(ctx.r, "medaid.registry", SCRIPTS)

    # --- cancel ---------------------------------------------------------------------------

    async def cancel_request(self, req: pb.CancelRequestRequest) -> pb.CancelRequestResponse:
        validate_request_id(req.request_id)
        validate_request_id(req.original_request_id)
        ctx, orig = self.ctx, req.original_request_id
        # The domain index first: a settlement with this id is found even if its claim were gone.
        pid = await self.store.patient_of(orig)
        if pid:
            rec = await self.store.record(pid, orig)
            return pb.CancelRequestResponse(outcome="USED", op="settle", settlement_id=orig,
                                            finished=rec is not None and rec.state != "OPEN")
        async with ctx.r.pipeline(transaction=False) as p:
            ctx.idem.queue_read(p, orig)
            [raw] = await p.execute()
        seen = ClaimRead.of(raw)
        if seen.fp and seen.fp != VOID:  # a report, before this id is claimed: it is the 2601's next request's
            return _used(orig, seen.op, seen.subject, seen.state)
        fp = fingerprint(req)
        claim = await ctx.idem.begin(req.request_id, fp, "cancel", orig, ctx.clock.now_ms())
        if claim.state == "DONE":
            return claim.answer(pb.CancelRequestResponse)
        reply = await self.lua["request_void"](keys=[ctx.idem.key(orig)], args=[req.request_id, ctx.clock.now_ms()])
        if text(reply[0]) == "VOIDED":
            event(log, "request voided", original=orig, by=req.request_id)
            return await ctx.idem.record(req.request_id, pb.CancelRequestResponse(outcome="VOIDED"))
        # The original arrived meanwhile: reported, and this id's claim goes as this request took it.
        await ctx.idem.release(req.request_id, fp, claim.attempt)
        return _used(orig, *(text(x) for x in reply[1:]))

    # --- undo a reversal ---------------------------------------------------------------------

    async def undo_reversal(self, req: pb.UndoReversalRequest) -> pb.UndoReversalResponse:
        validate_request_id(req.request_id)
        validate_request_id(req.reversal_id)
        ctx, k = self.ctx, self.k
        op, sid = await ctx.idem.subject(req.reversal_id)
        if op != "reverse":
            raise errors.not_found("REVERSAL_NOT_FOUND", f"no reversal {req.reversal_id}", field="omsgid")
        pid = await self.store.patient_of(sid)
        if not pid:
            raise errors.not_found("SETTLEMENT_NOT_FOUND", f"no settlement {sid}")
        # The id claimed with an entry that names it, so that the recovery loop finishes the undo or,
        # should this process die before it begins, frees the id.
        entry = open_entry(pid, sid, req.request_id)
        claim, mark, [raw] = await ctx.claim_announced(entry, req, "undo_reversal", sid,
                                                       reads=lambda p: p.hgetall(k.settlement(pid, sid)))
        if claim.state == "DONE":
            return claim.answer(pb.UndoReversalResponse)
        ctx.fault("undo.after_claim")  # tests: a request stalled (or killed) before the patient's lock
        opening = Opening(held=mark, entry=entry, request=req, op="undo_reversal", subject=sid,
                          claimed=(entry, claim.attempt))
        try:
            # A refusal writes nothing, not even the patient's fence: the sources are checked before the
            # lock is taken (and each is checked again by the script that takes it).
            rec = SettlementRecord.parse(raw)
            if rec is not None and rec.cancelled_by:  # for good: refused before the lock, writing nothing
                raise cancelled(rec)
            if rec is not None and rec.state == "REVERSED" and rec.reversal_id == req.reversal_id:
                try:
                    await self._check(rec)
                except DomainError:
                    # Read before the check: another 冲正 may have undone the reversal since, charging the very
                    # sources checked. Then this one is answered under the lock (ALREADY_RESTORED), not refused.
                    if await self._still_reversed(pid, sid, rec):
                        raise
            lease = await ctx.acquire(pid)
            try:
                return await self._locked(pid, sid, req, lease, entry, opening)
            finally:
                await ctx.locks.release(lease)
        except DomainError as exc:
            if opening.opened:  # a refusal `drive` dropped the claim for; else the loop finishes it
                if exc.retryable:
                    raise exc.after_effects() from exc
                raise
            await ctx.unclaim(entry, opening.held, req.request_id, exc, claim.state, opening.taken())
            raise

    async def _locked(self, pid: str, sid: str, req: pb.UndoReversalRequest, lease: Lease, entry: str,
                      opening: Opening) -> pb.UndoReversalResponse:
        ctx, k = self.ctx, self.k
        [raw] = await ctx.hold_reading(opening, reads=lambda p: p.hgetall(k.settlement(pid, sid)))
        rec = SettlementRecord.parse(raw)
        assert rec is not None
        if rec.state == "RESTORING":
            if rec.restore_id != req.request_id:
                raise errors.unavailable("UNDO_IN_PROGRESS", f"another 冲正 ({rec.restore_id}) is undoing this "
                                         "reversal; retry shortly")
            opening.opened = True  # this request's own undo, resumed
            return await self.drive(rec, lease, entry, opening.held, opening.taken())
        if rec.cancelled_by:  # a 2601 of the settlement itself cancelled it meanwhile
            raise cancelled(rec)
        if rec.reversal_id != req.reversal_id or rec.state == "SETTLED":
            # That reversal is no longer in force: an earlier 冲正 undid it.
            return await ctx.answer(entry, opening.held, req.request_id,
                                    response_of(rec, req.reversal_id, "ALREADY_RESTORED"))
        if rec.state == "REVERSING":
            raise errors.unavailable("SETTLEMENT_IN_PROGRESS", "the reversal has not finished; retry shortly")
        await self._check(rec)
        ctx.fault("undo.before_begin")  # tests: a holder stalled between its read and restore_begin
        now = ctx.clock.now_ms()
        ref = new_attempt_ref(ctx.policy.province, sid, rec.restores + 1)
        status, detail, _after = await self.lua["restore_begin"](
            keys=[k.settlement(pid, sid), k.person(pid), k.account(pid), k.ledger(pid), k.fence(pid)],
            args=[lease.token, req.request_id, req.reversal_id, now, ref])
        status = text(status)
        if status not in ("OK", "RESUME"):
            # Nothing taken. Overtaken (STALE), this holder leaves its entry to the loop, which frees the id
            # under the lock when it finds no undo by it; a refusal judged under the fence withdraws it
            # with the claim (`Context.unclaim`).
            if status in ("INACTIVE", "SHORT"):
                ctx.fault("undo.before_withdraw")  # tests: a holder stalled past its lock here
            if status == "STALE":
                raise lock_lost()
            if status == "CANCELLED":
                raise cancelled(rec)
            if status == "INACTIVE":
                raise errors.refused("MEMBER_NOT_INSURED", "the patient's insurance is not active: their accounts "
                                     "cannot pay again (原因一)")
            if status == "SHORT":
                raise _short("acct_pay", f"the personal account holds {text(detail)} fen, less than {rec.acct_pay}")
            raise errors.unavailable("SETTLEMENT_IN_PROGRESS", f"the settlement is {text(detail)}; retry shortly")
        opening.opened = True
        started = await self.store.record(pid, sid)
        assert started is not None
        return await self.drive(started, lease, entry, opening.held, opening.taken())

    async def _still_reversed(self, pid: str, sid: str, rec: SettlementRecord) -> bool:
        """Whether the settlement is still as `rec` read it: reversed by the same reversal, never restored since."""
        now = SettlementRecord.parse(await self.ctx.r.hgetall(self.k.settlement(pid, sid)))
        return now is not None and (now.state, now.reversal_id, now.restores) == (rec.state, rec.reversal_id,
                                                                                  rec.restores)

    async def _check(self, rec: SettlementRecord) -> None:
        """Every source still covers its share (read only: a refusal here writes nothing)."""
        helpers = [] if rec.family_id else [c.helper_id for c in rec.charges]
        async with self.ctx.r.pipeline(transaction=False) as p:
            self.store.queue_person(p, rec.patient)
            for hid in helpers:
                p.hget(self.k.person(hid), "status")
                p.hget(self.k.account(hid), "bal")
                p.zscore(self.k.helpers_of(rec.patient), hid)
            fields, bal, *rows = await p.execute()
        patient = self.store.person_view(rec.patient, fields, bal)
        if patient is None or not patient.active:
            raise errors.refused("MEMBER_NOT_INSURED", "the patient's insurance is not active: their accounts "
                                 "cannot pay again (原因一)")
        if rec.acct_pay > patient.balance:
            raise _short("acct_pay", f"the personal account holds {patient.balance} fen, less than {rec.acct_pay}")
        if rec.family_id:
            takes, why = await self._plan_family(rec)
            if not takes:
                raise _short("acct_mulaid_pay", _family_short(rec, why))
        for i, c in enumerate([] if rec.family_id else rec.charges):
            status, hbal, bound = rows[3 * i], rows[3 * i + 1], rows[3 * i + 2]
            if bound is None:  # unbound since: no settlement charges them for this member (rules.md)
                raise _short("acct_mulaid_pay", f"helper {c.helper_id[:6]}… no longer binds the patient")
            if text(status or b"") != "ACTIVE":
                raise _short("acct_mulaid_pay", f"helper {c.helper_id[:6]}… is no longer active")
            if int(hbal or 0) < c.amount:
                raise _short("acct_mulaid_pay", f"helper {c.helper_id[:6]}… holds less than {c.amount} fen")
        if rec.wallet_pay > 0:  # from the very lots the reversed spend took (see `_take`)
            why = await self.ctx.wallet.can_restore(rec.wallet_spend, rec.patient, rec.wallet_pay, rec.category,
                                                    rec.place)
            if why:
                raise _short("wallet_pay", f"the 医保钱包 cannot pay {rec.wallet_pay} fen here again from the "
                             f"quota that paid it ({why})")

    async def drive(self, rec: SettlementRecord, lease: Lease, entry: str, mark: Any,
                    taken: Taken | None = None) -> pb.UndoReversalResponse:
        """Take a RESTORING record to SETTLED, or (a source fell short) back to REVERSED and refuse. The
        undo's request id (the record's `restore_id`) gets the answer, or its claim goes with the
        refusal, before `entry` goes under `mark`, the holder's (`Context.withdraw`: a resend may have
        written it again since), so that the id is never left in progress without an entry. `taken`:
        the claim as the request driving it last took it (None: the recovery loop, which reads it under
        the lock it holds); the refusal frees the claim only while it still stands so (`Context.unclaim`)."""
        ctx, k, sid, pid = self.ctx, self.k, rec.sid, rec.patient
        ref, now = attempt_ref(rec), ctx.clock.now_ms()
        ctx.fault("undo.after_begin")  # tests: a crash once the own share is taken (tests/test_undo_registry.py)
        reason, afters = rec.restore_refused, dict[str, int]()
        if not reason:
            reason, afters = await self._take(rec, ref, now)
        if reason:
            if taken is None:  # read before restore_abort.lua, whose fence says the lock was still this holder's
                taken = await self._claim_of_entry(entry, mark, rec)
            await self._give_back(rec, ref, now, reason, lease)
            ctx.fault("undo.before_withdraw")
            source = reason.split(":", 1)[0]
            refusal = _short(source, reason.split(":", 1)[1] if ":" in reason else reason)
            await ctx.unclaim(entry, mark, rec.restore_id, refusal, "PENDING", taken)
            event(log, "undo refused", patient=pid, settlement=sid, ref=ref, reason=reason)
            raise refusal
        member = [x for c in rec.charges for x in (consumption_field(sid, c.helper_id),
                                                    consumption_json(rec, c, "MEMBER", "SETTLED"))]
        reply = await self.lua["restore_finish"](keys=[k.settlement(pid, sid), k.fence(pid), k.consumption(pid)],
                                                 args=[lease.token, rec.restore_id, now, ref, len(rec.charges),
                                                       *member])
        status = text(reply[0])
        if status == "STALE":
            raise lock_lost()
        if status not in ("OK", "DONE"):
            raise AssertionError(f"undo of the reversal of {sid} found state {text(reply[1])}")
        if status == "OK":  # settled again, counted once
            metrics.restored_money(rec.acct_pay, rec.wallet_pay, rec.mulaid_pay, rec.cash_pay)
        async with ctx.r.pipeline(transaction=False) as p:
            p.hgetall(k.settlement(pid, sid))
            p.hget(k.account(pid), "bal")
            raw, bal = await p.execute()
        done = SettlementRecord.parse(raw)
        assert done is not None
        ctx.fault("undo.before_withdraw")
        answer = await ctx.answer(entry, mark, rec.restore_id,
                                  response_of(done, done.reversal_id, "RESTORED", int(bal or 0), afters))
        event(log, "reversal undone", patient=pid, settlement=sid, ref=ref, acct_pay=rec.acct_pay,
              wallet_pay=rec.wallet_pay, mulaid_pay=rec.mulaid_pay)
        return answer

    async def _claim_of_entry(self, entry: str, mark: Any, rec: SettlementRecord) -> Taken:
        """The claim of the undo `rec` names, as it stands while in progress for the request of `entry`, at
        `mark` (`Context.pending`); else one nothing is freed under (no claim has an empty fingerprint)."""
        read = await self.ctx.pending(entry, mark, rec.restore_id, ("undo_reversal",), rec.sid)
        return Taken("", "", "") if read is None else Taken(read.fp, read.entry, read.attempt)

    def _family(self, rec: SettlementRecord) -> Family:
        if self.family is None:
            raise AssertionError(f"settlement {rec.sid} names a family account in a province without them")
        return self.family

    async def _plan_family(self, rec: SettlementRecord) -> tuple[tuple[rules.LotTake, ...], str]:
        """The family account's share planned again: the same contributors and amounts, or nothing."""
        return await self._family(rec).plan_charge(rec.family_id, rec.patient, rec.mulaid_pay, _category(rec),
                                                   split=_split(rec))

    async def _take(self, rec: SettlementRecord, ref: str, now: int) -> tuple[str, dict[str, int]]:
        """Charge each helper (or the family account) and the wallet again, once per ref; '' or why a
        source fell short, and each helper's (contributor's) balance after their charge."""
        ctx, k, sid = self.ctx, self.k, rec.sid
        afters: dict[str, int] = {}
        if rec.family_id:
            _, taken, why = await self._family(rec).charge(rec.family_id, ref, rec.patient, rec.mulaid_pay,
                                                           _category(rec), split=_split(rec))
            if sum(c.amount for c in taken) < rec.mulaid_pay:
                return f"acct_mulaid_pay:{_family_short(rec, why)}", afters
            afters = {c.helper_id: c.balance_after for c in taken}
        elif rec.charges:
            # Still bound (an unbind waits for the patient's lock, which this holds): an unbound helper is
            # never charged for this member again (rules.md), whatever the reversal returned to them.
            async with ctx.r.pipeline(transaction=False) as p:
                for c in rec.charges:
                    p.zscore(k.helpers_of(rec.patient), c.helper_id)
                bound = await p.execute()
            for c, score in zip(rec.charges, bound, strict=True):
                if score is None:
                    return f"acct_mulaid_pay:helper {c.helper_id[:6]}… no longer binds the patient", afters
            async with ctx.r.pipeline(transaction=False) as p:
                for c in rec.charges:
                    hid = c.helper_id
                    await ctx.lua["settle_charge"](  # the same once-per-ref charge as a settlement's
                        keys=[k.person(hid), k.account(hid), k.ledger(hid), k.applied(hid), k.consumption(hid)],
                        args=[ref, c.amount, now, consumption_field(sid, hid),
                              consumption_json(rec, c, "HELPER", "SETTLED")], client=p)
                replies = await p.execute()
            for c, (status, after) in zip(rec.charges, replies, strict=True):
                if text(status) not in ("OK", "DUP"):
                    return f"acct_mulaid_pay:helper {c.helper_id[:6]}… no longer covers {c.amount} fen", afters
                afters[c.helper_id] = int(text(after))
        if rec.wallet_pay > 0:
            # The same lots and amounts as the spend the reversal refunded (`wallet_spend`, the money
            # still under its ref while RESTORING), as a helper's share is the same helper's: never
            # another sender's quota, nor quota whose relationship ended (it went home).
            # Cleared in the month the reversal it undoes was counted out in (the reversal's time): a
            # 3201 counts neither once the reversal is undone, and the clearing nets to 0 there too.
            after = await ctx.wallet.debit(ref, rec.patient, rec.wallet_pay, rec.category, rec.place,
                                           restores=rec.wallet_spend, settled_at=rec.reversed_at)
            if after is None:
                return f"wallet_pay:the 医保钱包's lots that paid {rec.wallet_pay} fen no longer hold it", afters
        return "", afters

    async def _give_back(self, rec: SettlementRecord, ref: str, now: int, reason: str, lease: Lease) -> None:
        """Record the refusal, return what this attempt took (each once), leave the record REVERSED."""
        ctx, k, sid, pid = self.ctx, self.k, rec.sid, rec.patient
        abort_keys = [k.settlement(pid, sid), k.account(pid), k.ledger(pid), k.fence(pid)]
        status = text((await self.lua["restore_abort"](
            keys=abort_keys, args=[lease.token, rec.restore_id, now, reason, "mark", ref]))[0])
        if status == "STALE":
            raise lock_lost()
        if status == "DONE":
            return
        if rec.family_id:
            await self._family(rec).refund_charge(rec.family_id, ref, "FAMILY_REVERSAL")
        elif rec.charges:
            async with ctx.r.pipeline(transaction=False) as p:
                for c in rec.charges:
                    hid = c.helper_id
                    await self.lua["restore_return"](
                        keys=[k.account(hid), k.ledger(hid), k.applied(hid), k.consumption(hid)],
                        args=[ref, c.amount, now, consumption_field(sid, hid),
                              consumption_json(rec, c, "HELPER", "REVERSED")], client=p)
                await p.execute()
        if rec.wallet_pay > 0:
            await ctx.wallet.cancel_spend(ref, pid, settled_at=rec.reversed_at)
        status = text((await self.lua["restore_abort"](
            keys=abort_keys, args=[lease.token, rec.restore_id, now, reason, "finish", ref]))[0])
        if status == "STALE":
            raise lock_lost()


def _used(orig: str, op: str, subject: str, state: str) -> pb.CancelRequestResponse:
    """A cancel's report of an original this registry saw (its claim's operation, subject and state)."""
    if op not in ("settle", "reverse"):
        raise errors.refused("ORIGINAL_NOT_CANCELLABLE", f"request {orig} was a {op}, not a settlement or a "
                             "reversal", field="omsgid")
    return pb.CancelRequestResponse(outcome="USED", op=op, settlement_id=orig if op == "settle" else subject,
                                    finished=state == "DONE")


def _category(rec: SettlementRecord) -> str:
    return cpb.Category.Name(rec.category).removeprefix("CATEGORY_")  # type: ignore[arg-type]


def _split(rec: SettlementRecord) -> tuple[rules.Charge, ...]:
    return tuple(rules.Charge(c.helper_id, c.amount) for c in rec.charges)


def _family_short(rec: SettlementRecord, why: str) -> str:
    return (f"the family account no longer pays {rec.mulaid_pay} fen from the same contributors "
            f"({why or 'FAMILY_CHANGED'})")


def response_of(rec: SettlementRecord, reversal_id: str, outcome: str, balance_after: int = 0,
                helper_afters: dict[str, int] | None = None) -> pb.UndoReversalResponse:
    """An undo's answer; `helper_afters`: each helper's (contributor's) balance after this undo charged them."""
    afters = helper_afters or {}
    return pb.UndoReversalResponse(
        settlement_id=rec.sid, reversal_id=reversal_id, outcome=outcome, acct_pay_fen=rec.acct_pay,
        wallet_pay_fen=rec.wallet_pay, mulaid_pay_fen=rec.mulaid_pay,
        helper_charges=[pb.HelperCharge(helper_id_number=c.helper_id, amount_fen=c.amount,
                                        balance_after_fen=max(afters.get(c.helper_id, 0), 0)) for c in rec.charges],
        balance_after_fen=balance_after, restored_at_unix_ms=rec.restored_at)


def lookup(sid: str, rec: SettlementRecord | None) -> pb.SettlementLookup:
    """GetSettlements' answer for one id: the record as it stands now."""
    if rec is None:
        return pb.SettlementLookup(settlement_id=sid, found=False)
    result = rec.result()
    if rec.state == "REVERSING":
        # Begun, not finished (a share not yet returned: the wallet down, its process died): its 2208
        # has not answered, and the balances after it are not known yet. The reversal doing it, and the
        # time it is dated by once the recovery loop has finished it (`Reversals.drive`).
        result.state = "IN_PROGRESS"
        return pb.SettlementLookup(settlement_id=sid, found=True, result=result, reversal_id=rec.reversal_id,
                                   reversed_at_unix_ms=rec.reversal_started_at)
    if rec.state == "RESTORING":
        # A 2601 is undoing the reversal: it stands again if the undo fails (a source short), and goes if
        # it succeeds, so it is named (a reconciliation of its day is not done until the undo is).
        result.state = "IN_PROGRESS"
        return pb.SettlementLookup(settlement_id=sid, found=True, result=result, reversal_id=rec.reversal_id,
                                   reversed_at_unix_ms=rec.reversed_at, undoing=True)
    if rec.state == "OPEN":
        result.state = "IN_PROGRESS"
    elif rec.state == "REVERSED":
        result.state = "REVERSED"
    if result.state != "REVERSED":
        return pb.SettlementLookup(settlement_id=sid, found=True, result=result)
    # The balances after, as the 2208 answered them.
    refund = reversal.response_of(rec, [])
    return pb.SettlementLookup(settlement_id=sid, found=True, result=result, reversal_id=rec.reversal_id,
                               reversed_at_unix_ms=rec.reversed_at,
                               reversal_balance_after_fen=refund.balance_after_fen,
                               reversal_refunds=refund.helper_refunds)
