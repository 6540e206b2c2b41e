"""The staged settlement path: under the patient's fenced lock, one slot at a time, so it runs on a
Redis Cluster too, and so a wallet (another service) can pay a share.

    settle_open.lua    the record OPEN with the plan, the own-account debit (fenced)
    wallet debit       once per settlement id (SpendWallet); not enough left: that share is cash
    settle_charge.lua  each helper, once per mark (records.charge_marks); one that cannot pay is VOID
    settle_extend.lua  short of the plan (a VOID charge, a wallet share not taken): the rest planned
                       again by the same rule of the helpers that have not paid (in turn, 北京: of
                       every helper, one charged already included), at what each holds now (one
                       found short included: it pays what it still holds where the rule lets a
                       helper pay part), who join the record (fenced) before they are charged;
                       what no one can pay is cash; a helper charged twice is one share
    settle_finish.lua  the record SETTLED with what was paid, the member's consumption records (fenced)

An entry in `Keys.open_settlements()` is written with the claim, before the first effect, and
removed with the answer; the recovery loop finishes what a dead process left OPEN with `drive`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

from medaid.common import errors
from medaid.common.errors import DomainError
from medaid.common.lock import Lease
from medaid.common.redis_client import barrier
from medaid.common.v1 import common_pb2 as cpb
from medaid.common.values import text
from medaid.registry import rules
from medaid.registry.context import Context, Taken, lock_lost
from medaid.registry.family import Family
from medaid.registry.outcomes import Item, failed, item_failure, log_settled, replay, settled
from medaid.registry.planning import Planner
from medaid.registry.records import ChargeDone, SettlementRecord, charge_marks, consumption_field, consumption_json
from medaid.registry.store import Store
from medaid.registry.v1 import registry_pb2 as pb

MAX_CONFLICTS = 3  # plans made again when the own balance moved under the lock
MAX_ASKS = 3  # charges of one helper asked for one settlement (each but the last found short)


def shares(done: list[ChargeDone], planned: tuple[ChargeDone, ...]) -> tuple[ChargeDone, ...]:
    """The charges taken, one per helper with their whole share (a helper asked again paid in several
    charges) and the balance after their last, in the order the plan named the helpers: what the
    record, the answer, the consumption records and a reversal know of each helper."""
    order = {c.helper_id: i for i, c in reversed(list(enumerate(planned)))}
    whole: dict[str, ChargeDone] = {}
    for c in done:
        seen = whole.get(c.helper_id)
        whole[c.helper_id] = c if seen is None else replace(c, amount=seen.amount + c.amount)
    return tuple(sorted(whole.values(), key=lambda c: order.get(c.helper_id, len(order))))


def one_each(charges: tuple[ChargeDone, ...]) -> list[ChargeDone]:
    """The charges up to the first helper named again: charged together, each knowing what the
    helper's charges before it took (`Staged._charge_helpers`)."""
    seen: set[str] = set()
    for i, c in enumerate(charges):
        if c.helper_id in seen:
            return list(charges[:i])
        seen.add(c.helper_id)
    return list(charges)


def open_entry(pid: str, sid: str) -> str:
    """The recovery index entry of a settlement in progress."""
    return f"S|{pid}|{sid}"


class Staged:
    def __init__(self, ctx: Context, store: Store, planner: Planner, family: Family | None = None) -> None:
        self.ctx = ctx
        self.store = store
        self.planner = planner
        self.family = family
        self.k = ctx.k

    async def settle_into(self, it: Item, outcomes: list[pb.SettleOutcome | None]) -> None:
        """`settle`, its outcome (refusal or failure included) put in the batch's place."""
        try:
            outcomes[it.index] = await self.settle(it)
        except DomainError as exc:
            outcomes[it.index] = failed(exc)
        except Exception as exc:  # noqa: BLE001 - one item's failure must not fail its neighbours
            outcomes[it.index] = failed(item_failure(exc))

    async def settle(self, it: Item) -> pb.SettleOutcome:
        """One settlement, staged under the patient's lock: claim, open (or resume), drive, close."""
        sid, pid, ctx = it.req.request_id, it.pid, self.ctx
        entry = open_entry(pid, sid)
        def reads(p: Any) -> None:
            p.exists(self.k.settlement(pid, sid))
            self.store.queue_person(p, pid)

        # The recovery loop finds it from here on: the entry first, then the claim (Context.claim_announced).
        claim, held, [recorded, fields, bal] = await ctx.claim_announced(
            entry, it.req, "settle", pid, fp=it.fp, reads=reads)
        if claim.state == "DONE":
            return replay(claim, await self.store.record(pid, sid))
        if claim.state == "NEW" and not recorded:
            # Never tried before: the bill and the patient are judged on what the claim's round trip read,
            # by the rule `open` runs again under the lock (`Planner.payable`), so that a refusal writes
            # nothing, the lock's fence counter included. Only a patient whose status or place changed
            # between this read and the lock is refused there, their fence counted on. (A record standing
            # without its claim is answered from under the lock, as it was settled.)
            try:
                self.planner.payable(it.req, pid, self.store.person_view(pid, fields, bal))
            except DomainError as exc:
                await ctx.unclaim(entry, held, sid, exc, claim.state, Taken(it.fp, entry, claim.attempt))
                raise
        ctx.fault("settle.after_claim")
        opened = False
        mark = None  # this holder's mark on the entry (Context.announce_held)
        taken = Taken(it.fp, entry, claim.attempt)  # the claim as this request last took it (Context.unclaim)
        try:
            lease = await ctx.acquire(pid)
            try:
                async with ctx.r.pipeline(transaction=False) as p:
                    # The entry and the claim again, under the lock: a recovery pass drops both when this
                    # request stalls before the lock, and what it opens now must stay findable by the
                    # loop and keep its request's fingerprint (REUSED: another request took the id). The
                    # entry with this holder's mark, under which alone it takes the entry away.
                    p.hgetall(self.k.settlement(pid, sid))  # plain commands before scripts (fastredis)
                    first = await ctx.retake_held(p, entry, it.req, "settle", pid, fp=it.fp)
                    raw, held, raw_claim = [*first, *await p.execute()]
                taken = Taken(it.fp, entry, ctx.idem.parse_claim(sid, raw_claim).attempt)
                mark = held  # only once the claim is this request's (REUSED: the entry may be the other's)
                rec = SettlementRecord.parse(raw)
                if rec is None:
                    rec = await self.open(it, lease)
                opened = True
                rec = await self.drive(rec, lease)
                await self.close(rec, lease, entry, mark, it.fp)
            finally:
                await ctx.locks.release(lease)
        except DomainError as exc:
            if opened:
                raise exc.after_effects() from exc
            # Nothing was written: leave no trace. Only the lock's holder can tell that nothing is open.
            # Busy or overtaken, this request leaves the entry: it may be an earlier attempt's whose
            # record is OPEN, or a duplicate's that is opening it now; the recovery loop judges it under
            # the lock. The entry goes only with the claim (Context.unclaim).
            await ctx.unclaim(entry, mark, sid, exc, claim.state, taken)
            raise
        ctx.fault("settle.after_finish")
        return settled(rec)

    async def open(self, it: Item, lease: Lease) -> SettlementRecord:
        """Plan under the lock and open the record with the own-account debit (settle_open.lua)."""
        k, pid = self.k, it.pid
        for _ in range(MAX_CONFLICTS):
            patient, plan, _, _ = await self.planner.read_and_plan(it.req, pid)
            rec = self.planner.record_of(it.req, pid, patient, plan, "OPEN")
            async with self.ctx.r.pipeline(transaction=False) as p:
                # The settlement index goes with the record, so GetSettlement and 2208 find an OPEN
                # record (and answer SETTLEMENT_IN_PROGRESS) instead of reporting it unknown: the
                # index first (one round trip on one Redis; `barrier` on a cluster).
                p.set(k.settlement_index(rec.sid), pid)
                await barrier(p)
                await self.ctx.lua["settle_open"](
                    keys=[k.settlement(pid, rec.sid), k.account(pid), k.ledger(pid), k.fence(pid)],
                    args=[lease.token, rec.sid, rec.acct_pay, rec.at, *rec.args(without=("own_bal_after",))],
                    client=p)
                *_, (status, detail) = await p.execute()
            status = text(status)
            if status == "STALE":
                raise lock_lost()
            if status == "OK":
                return replace(rec, own_bal_after=int(text(detail)))
            if status == "EXISTS":
                found = await self.store.record(pid, rec.sid)
                assert found is not None
                return found
            # SHORT: the patient's own balance moved (they are also someone's helper): plan again.
        raise errors.unavailable("CONTENDED", "balances kept changing; retry with the same request id")

    async def drive(self, rec: SettlementRecord, lease: Lease) -> SettlementRecord:
        """Take an OPEN record to SETTLED: the wallet, then each helper (each once per settlement
        id; what cannot be taken is planned again among the helpers that have not paid, and what no one
        pays falls to cash), then the record. A final record is returned as is."""
        if rec.state != "OPEN":
            return rec
        ctx, pid = self.ctx, rec.patient
        ctx.fault("settle.after_own_debit")
        wallet_pay, wallet_after, wallet_reason = rec.wallet_pay, rec.wallet_bal_after, rec.wallet_reason
        if wallet_pay > 0:
            # No fence reaches the wallet service: renew the lease first, so a holder that stalled
            # past its lock (the recovery loop may have settled this meanwhile with the wallet's
            # share as cash) spends no quota that the record would never show.
            if not await ctx.locks.extend(lease, ctx.lock_ttl_ms):
                raise lock_lost()
            # What the wallet holds now, up to the planned share (SPEC §4 step 2: min(balance, amount)):
            # quota spent elsewhere since planning (passed on, a premium, a lot gone home) leaves the
            # wallet paying what is left, and the rest is planned again below.
            # Cleared in the settlement's month (its time, `rec.at`), whenever this runs: a recovery
            # pass finishing it days later included.
            spent = await ctx.wallet.debit_up_to(rec.wallet_spend, pid, wallet_pay, rec.category, rec.place,
                                                 settled_at=rec.at)
            if isinstance(spent, str):  # it pays nothing here: its share falls to the steps after it
                # Barred first (undone, should a stalled holder's debit have got in since): a holder
                # that stalls between its lease renewal and its debit cannot spend it afterwards.
                await ctx.wallet.cancel_spend(rec.wallet_spend, pid, settled_at=rec.at)
                wallet_pay, wallet_reason = 0, spent
            else:
                if spent[0] < wallet_pay:
                    wallet_reason = "WALLET_INSUFFICIENT"
                wallet_pay, wallet_after = spent
        ctx.fault("settle.after_wallet_debit")
        if rec.family_id and self.family is not None:  # SPEC §3b: the family account is step 3
            # of all the steps before it left (a wallet that paid less than planned included)
            taken, why = await self._charge_family(rec, rec.amount - rec.acct_pay - wallet_pay)
            return await self._finish(rec, lease, wallet_pay, wallet_after, wallet_reason, taken, why)
        done: list[ChargeDone] = []
        helper_reason = rec.helper_reason
        asked = 0  # the record's charges before this index were asked in this drive
        first = True
        # Short of what was planned (a charge could not be taken, or the wallet paid less): the rule
        # is asked again for the rest, of the helpers that have not paid, at what each holds now — a
        # helper whose charge could not be taken included, up to MAX_ASKS asks per settlement.
        short = wallet_pay < rec.wallet_pay
        while True:
            while first or asked < len(rec.charges):
                # A helper named again (a re-drive of a record extended before a crash) waits for the
                # outcome of their earlier charge: their consumption record says their whole share.
                todo = one_each(rec.charges[asked:])
                marks = charge_marks(rec.sid, rec.charges)[asked:asked + len(todo)]
                replies = await self._charge_helpers(rec, todo, marks, index=first, done=done)
                first = False
                for c, (status, detail) in zip(todo, replies, strict=True):
                    status = text(status)
                    if status in ("OK", "DUP"):
                        done.append(replace(c, balance_after=int(text(detail))))
                    else:  # the helper's balance or status changed since planning
                        short = True
                        helper_reason = "NO_ACTIVE_HELPER" if status == "INACTIVE" else "HELPER_INSUFFICIENT"
                asked += len(todo)
            rest = rec.amount - rec.acct_pay - wallet_pay - sum(c.amount for c in done)
            if not short or rest <= 0:
                break
            asked_now, more, why = await self._helpers_again(rec, rest, done)
            short = False
            if asked_now:  # the rule's answer for the rest stands (else the charge's failure does)
                helper_reason = why
            if not more:
                break
            extended = await self._extend(rec, lease, more)
            if extended is None:  # finished meanwhile by another holder (the recovery loop): its answer
                found = await self.store.record(pid, rec.sid)
                assert found is not None
                return found
            rec = extended
        ctx.fault("settle.after_helper_debit")
        return await self._finish(rec, lease, wallet_pay, wallet_after, wallet_reason, shares(done, rec.charges),
                                  helper_reason)

    async def _charge_helpers(self, rec: SettlementRecord, charges: list[ChargeDone], marks: list[str], *,
                              index: bool = False, done: list[ChargeDone] | None = None) -> list[Any]:
        """Each charge once per mark (settle_charge.lua, `records.charge_marks`): its status and the
        balance after. `index`: the settlement's index entry goes in the same round trip (the first
        charges). `done`: the charges taken already; a helper among them who is charged again (北京's
        turns asked again) keeps one consumption record, with their whole share."""
        if not charges and not index:
            return []
        ctx, k, sid = self.ctx, self.k, rec.sid
        async with ctx.r.pipeline(transaction=False) as p:
            if index:
                p.set(k.settlement_index(sid), rec.patient)
            for c, mark in zip(charges, marks, strict=True):
                hid = c.helper_id
                before = sum(d.amount for d in done or () if d.helper_id == hid)
                keys = [k.person(hid), k.account(hid), k.ledger(hid), k.applied(hid), k.consumption(hid)]
                if not before:  # the record's name is indexed once, with the helper's first charge
                    keys.append(k.consumption_index(hid))
                await ctx.lua["settle_charge"](
                    keys=keys,
                    args=[mark, c.amount, ctx.clock.now_ms(), consumption_field(sid, hid),
                          consumption_json(rec, replace(c, amount=before + c.amount), "HELPER", "SETTLED")],
                    client=p)
            replies = list(await p.execute())
        return replies[1:] if index else replies

    async def _helpers_again(self, rec: SettlementRecord, rest: int,
                             done: list[ChargeDone]) -> tuple[bool, tuple[rules.Charge, ...], str]:
        """Step 3 for what is still to pay, by the rule (rules.helper_step), of the helpers bound now
        that have not paid (in turn: every helper bound, one that paid included), each at what they
        hold now: a helper whose charge could not be taken is
        asked again for what they still hold (北京's turns, a partial helper), up to MAX_ASKS times;
        where one helper pays (not in turn), one that paid already ends it. Returns whether any
        helper was left to ask, the charges, and why they do not cover it all."""
        if done and not self.ctx.policy.helpers_in_turn:
            return False, (), ""
        # In turn, a helper who paid already is asked again too: an earlier one found short leaves more
        # to the later ones than the plan gave them (the charges went out together).
        asks = Counter(c.helper_id for c in rec.charges)
        helpers, proxies = await self.store.helper_candidates(rec.patient)
        left = [h for h in helpers if asks[h.id_number] < MAX_ASKS]
        if not left:
            return False, (), ""
        return True, *rules.helper_step(self.ctx.policy, rest, left, proxies,
                                        paid=sum(c.amount for c in done), region=rec.region)

    async def _extend(self, rec: SettlementRecord, lease: Lease,
                      more: tuple[rules.Charge, ...]) -> SettlementRecord | None:
        """The new charges join the OPEN record before any is charged (settle_extend.lua); None when the
        record is final already (another holder finished it: nothing is charged)."""
        reply = await self.ctx.lua["settle_extend"](
            keys=[self.k.settlement(rec.patient, rec.sid), self.k.fence(rec.patient)],
            args=[lease.token, ",".join(f"{c.helper_id}:{c.amount}:-1" for c in more)])
        status = text(reply[0])
        if status == "DONE":
            return None
        if status == "STALE":
            raise lock_lost()
        if status != "OK":
            raise AssertionError(f"settlement {rec.sid} found in state {text(reply[1])}")
        return replace(rec, charges=rec.charges + tuple(ChargeDone(c.helper_id, c.amount, -1) for c in more))

    async def _charge_family(self, rec: SettlementRecord, rest: int) -> tuple[tuple[ChargeDone, ...], str]:
        """Charge the family account once per settlement id: what the rule takes of `rest` (what the
        own account and the wallet left) on what the account holds now (it may have changed since
        planning); what it cannot take is cash."""
        ctx, k = self.ctx, self.k
        assert self.family is not None
        category = cpb.Category.Name(rec.category).removeprefix("CATEGORY_")  # type: ignore[arg-type]
        await ctx.r.set(k.settlement_index(rec.sid), rec.patient)
        _, done, why = await self.family.charge(rec.family_id, rec.sid, rec.patient, rest, category)
        ctx.fault("settle.after_helper_debit")
        taken = sum(c.amount for c in done)
        if taken == rest:
            return done, ""
        # `why` is '' only for an earlier attempt's outcome: its reason follows from what it took.
        return done, why or ("FAMILY_INSUFFICIENT" if taken else "FAMILY_ZERO_BALANCE")

    async def _finish(self, rec: SettlementRecord, lease: Lease, wallet_pay: int, wallet_after: int,
                      wallet_reason: str, done: tuple[ChargeDone, ...], helper_reason: str) -> SettlementRecord:
        ctx, k, sid, pid = self.ctx, self.k, rec.sid, rec.patient
        final = rec.settled(wallet_pay=wallet_pay, wallet_after=wallet_after, wallet_reason=wallet_reason,
                            charges=done, helper_reason=helper_reason)
        if not done:
            final = replace(final, family_id="")
        member = [x for c in done for x in (consumption_field(sid, c.helper_id),
                                             consumption_json(final, c, "MEMBER", "SETTLED"))]
        reply = await ctx.lua["settle_finish"](
            keys=[k.settlement(pid, sid), k.fence(pid), k.consumption(pid), k.consumption_index(pid)],
            args=[lease.token, len(done), *member, *final.args()])
        status = text(reply[0])
        if status == "STALE":
            raise lock_lost()
        if status == "DONE":
            found = await self.store.record(pid, sid)
            assert found is not None
            return found
        if status != "OK":
            raise AssertionError(f"settlement {sid} found in state {text(reply[1])}")
        log_settled(final, "staged")
        return final

    async def close(self, rec: SettlementRecord, lease: Lease, entry: str, mark: Any, fp: str = "") -> None:
        """The request id answered (DONE: the record is the answer), the open entry gone under `mark`,
        the holder's (`Context.withdraw`), in the same round trip."""
        claim = ["state", "DONE"]
        if fp:
            claim += ["fp", fp, "op", "settle", "subject", rec.patient]
        async with self.ctx.r.pipeline(transaction=False) as p:  # the answer first (`barrier` on a cluster)
            p.hset(self.ctx.idem.key(rec.sid), items=claim)
            await barrier(p)
            await self.ctx.withdraw(entry, mark, client=p)
            await p.execute()
