"""The money of the pooled family accounts (SPEC §3b): 划拨 in (its RPC, `transfer_in`), shares returned to
personal accounts, and the two steps the settlement engine (and 代缴) use: `charge` (the lots
`rules.family_step` plans, once per settlement id) and `refund_charge` (each fen back to its lot, or to a
contributor who has left).

A credit to a personal account is marked once in its `applied` hash (`famret|<family>|<operation>`,
`famrev|<charge id>`); the marks hold '|', which no request id holds, so that no other request on
that account (a credit, whose mark is its request id) can be taken for one of them.

Money that crosses to a personal account (`{p:<id>}`) is crash-safe the way settlements are: an entry in
`Keys.open_settlements()` is written before the first effect and removed after the last, and `recover`
finishes what a dead process left:

    X|<contributor>|<transfer id>   划拨: debit (fenced, contributor's lock) → credit lot → finish
    L|<family>|<operation id>       returns: shares leave the account (fenced, family lock) → each
                                    personal account credited once → returns DONE
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from medaid.common import errors
from medaid.common.errors import DomainError
from medaid.common.logs import event
from medaid.common.values import text
from medaid.registry import family_rules, rules, validate
from medaid.registry.context import Opening, lock_lost
from medaid.registry.family_reads import FamilyReads, validate_family_id
from medaid.registry.records import ChargeDone, SettlementRecord, decode_charges
from medaid.registry.v1 import family_pb2 as fpb

log = logging.getLogger("medaid.registry")


# What the request id of an `L|<family>|<id>` entry was claimed for (a life event's steps have derived
# ids, which no claim has).
LEAVING_OPS = ("family_leave", "family_remove", "family_dissolve", "family_withdraw")
# The answer of each, from what stands once its shares are returned (`FamilyMoney.leaving_answer`).
LeavingT = TypeVar("LeavingT", fpb.LeaveFamilyAccountResponse, fpb.RemoveMemberResponse,
                   fpb.DissolveFamilyAccountResponse, fpb.WithdrawContributionResponse)
LEAVING_ANSWERS: dict[str, Any] = {
    "family_leave": fpb.LeaveFamilyAccountResponse, "family_remove": fpb.RemoveMemberResponse,
    "family_dissolve": fpb.DissolveFamilyAccountResponse, "family_withdraw": fpb.WithdrawContributionResponse}
MAX_CHARGE_PLANS = 5  # plans of one family charge that lots changed under before it answers CONTENDED
MAX_DEBIT_PLANS = 5  # decisions of one 划拨 that the personal account changed under before CONTENDED
# judgements of one debited 划拨's credit that the account or the contributor's place changed under
# before FAMILY_BUSY (the recovery loop finishes it)
MAX_CREDIT_JUDGEMENTS = 5


@dataclass(frozen=True)
class TransferSeen:
    """What a 划拨 was decided on: the time, its calendar month (yyyymm), the contributor's balance and
    their count of 划拨 that month."""

    now: int
    month: str
    balance: int
    month_count: int


# A 代缴's judgement of its payer, made where the money is taken (`FamilyMoney.charge`): (the payer,
# their member entry as read for it, b'' : none; whether they may have the account pay).
PayerJudge = Callable[[], Awaitable[tuple[str, bytes, bool]]]


def lot_parts(takes: tuple[rules.LotTake, ...]) -> str:
    """A plan's lot parts as `family_take` (lua/_prelude.lua) applies them: 'seq:contributor:held:amount,…'."""
    return ",".join(f"{t.seq}:{t.contributor}:{t.remaining}:{t.amount}" for t in takes)


def transfer_entry(pid: str, xid: str) -> str:
    return f"X|{pid}|{xid}"


def returns_entry(fid: str, op: str) -> str:
    return f"L|{fid}|{op}"


def parse_returns(raw: str) -> tuple[str, list[tuple[str, int]]]:
    """'PENDING|id:amount,…' -> ('PENDING', [(id, amount) …])."""
    state, _, items = raw.partition("|")
    out = []
    for item in items.split(","):
        if item:
            pid, amount = item.split(":")
            out.append((pid, int(amount)))
    return state, out


class FamilyMoney(FamilyReads):
    # --- 划拨 ------------------------------------------------------------------------------

    async def transfer_in(self, req: fpb.TransferIntoFamilyAccountRequest) -> fpb.TransferIntoFamilyAccountResponse:
        family_rules.require_pooled(self.ctx.policy)
        validate_family_id(req.family_id)
        pid = validate.id_number(req.contributor_id_number, "contributor_id_number")
        validate.amount(req.amount_fen)

        async def work(opening: Opening) -> fpb.TransferIntoFamilyAccountResponse:
            after = await self.move_in(req.family_id, pid, req.amount_fen, req.request_id, opening)
            return await self.transfer_answer(req.family_id, after)

        # The id claimed with the 划拨's entry: the loop frees it should this process die before the debit.
        return await self.ctx.once_announced(req, "family_transfer", pid,  # type: ignore[no-any-return]
                                             fpb.TransferIntoFamilyAccountResponse,
                                             transfer_entry(pid, req.request_id), work)

    async def month_count(self, pid: str) -> int:
        month = family_rules.month_of(self.ctx.clock.now_ms())
        return int(await self.ctx.r.hget(self.k.family_transfer_months(pid), month) or 0)

    async def move_in(self, fid: str, pid: str, amount: int, xid: str, opening: Opening | None = None) -> int:
        """划拨 under the contributor's lock: debit, credit the lot, finish. Re-entrant by `xid`.
        Returns the contributor's balance after. `opening`: the 划拨's own request's, whose id was claimed
        with the entry (`Context.once_announced`); else the entry is written here."""
        k, ctx = self.k, self.ctx
        await self.check_unless_debited(pid, xid, lambda: self._check_transfer(fid, pid, amount))
        # Given back (REFUNDED is final: the money is home): a resend is refused before the lock, so that,
        # as every refusal, it writes nothing, the lock's fence counter included.
        state = text(await ctx.r.hget(k.family_transfer(pid, xid), "state") or b"")
        if state != "REFUNDED":
            if opening is None:
                async with ctx.announced(transfer_entry(pid, xid)) as announced:
                    state = await self._move_locked(fid, pid, amount, xid, announced, None)
            else:
                state = await self._move_locked(fid, pid, amount, xid, opening, opening)
        if state == "REFUNDED":
            raise family_rules.transfer_given_back(ctx.policy, (await self.family_hash(fid))["state"])
        return int(await ctx.r.hget(k.family_transfer(pid, xid), "bal_after") or 0)

    async def check_unless_debited(self, pid: str, xid: str, check: Callable[[], Awaitable[Any]],
                                   refunded_too: bool = False) -> None:
        """`check`'s refusals of 划拨 `xid`, found before the lock (they write nothing), unless its debit
        is written. A concurrent duplicate of the request (the same id) may debit between the look at
        the transfer record and `check`'s reads, which then see the balance and the month's count that
        debit left: its refusal stands only if the debit is still not written after it. `refunded_too`:
        a REFUNDED record counts as none (a creation's initial 划拨 whose creation was refused: the
        request id is judged afresh, `Family.create`)."""
        record = self.k.family_transfer(pid, xid)

        async def debited() -> bool:
            state = text(await self.ctx.r.hget(record, "state") or b"")
            return bool(state) and not (refunded_too and state == "REFUNDED")
        if await debited():
            return
        try:
            await check()
        except DomainError:
            if not await debited():
                raise

    async def _move_locked(self, fid: str, pid: str, amount: int, xid: str, opening: Opening,
                           claimed: Opening | None) -> str:
        ctx = self.ctx
        ctx.fault("family.after_transfer_entry")
        lease = await ctx.acquire(pid)
        try:
            # the loop may have dropped the entry (and freed the request's id) meanwhile
            if claimed is not None:
                await ctx.hold(claimed)
            else:
                opening.held = await ctx.announce_held(transfer_entry(pid, xid))
            await self._debit(fid, pid, amount, xid, lease.token)
            opening.opened = True
            ctx.fault("family.after_debit")
            try:
                state = await self.drive_transfer(pid, xid, lease.token)
            except DomainError as exc:
                raise exc.after_effects() from exc
            if claimed is None:
                await ctx.withdraw(transfer_entry(pid, xid), opening.held)
            else:  # the request's entry goes after its answer, or after its claim (refunded: refused)
                claimed.finished = True
            return state
        finally:
            await ctx.locks.release(lease)

    async def _debit(self, fid: str, pid: str, amount: int, xid: str, token: int,
                     judge: Callable[[], Awaitable[TransferSeen]] | None = None, creation: str = "") -> None:
        """划拨 step 1, once per `xid`: decided here (`judge`, by default `_check_transfer`) on the balance
        and the month's count read just before; lua/family_debit.lua applies it only while both are still
        what the decision saw, else the 划拨 is read and decided again. `creation`: the recovery entry of
        the creation whose initial 划拨 this is (`fid` ''), debited before its account is written
        (`Family.create`); one that creation's refusal gave back (REFUNDED) is debited again, its request
        id being judged afresh."""
        k, ctx = self.k, self.ctx
        for _ in range(MAX_DEBIT_PLANS):
            before = text(await ctx.r.hget(k.family_transfer(pid, xid), "state") or b"")
            if before and not (creation and before == "REFUNDED"):
                return
            seen = await (judge() if judge is not None else self._check_transfer(fid, pid, amount))
            ctx.fault("family.before_debit")
            status, _ = await ctx.lua["family_debit"](
                keys=[k.family_transfer(pid, xid), k.account(pid), k.ledger(pid), k.fence(pid),
                      k.family_transfer_months(pid)],
                args=[token, xid, fid, amount, seen.now, seen.month, seen.balance, seen.month_count, before,
                      creation])
            status = text(status)
            if status == "STALE":
                raise lock_lost()
            if status != "CONFLICT":  # OK, or EXISTS: this id's debit is written
                return
        raise errors.unavailable("CONTENDED", "the personal account kept changing; retry with the same request id")

    async def _check_transfer(self, fid: str, pid: str, amount: int) -> TransferSeen:
        """The 划拨 rules (family_rules.check_transfer_in) on what the registry holds now; what they saw."""
        policy, now = self.ctx.policy, self.ctx.clock.now_ms()
        month = family_rules.month_of(now)
        fam = await self.family_hash(fid)
        member = (await self.members(fid)).get(pid, {})
        if fam["state"] != "ACTIVE":
            raise family_rules.structure_error("FAMILY_NOT_ACTIVE", policy)
        contributor = await self.store.person(pid)
        count = int(await self.ctx.r.hget(self.k.family_transfer_months(pid), month) or 0)
        family_rules.check_transfer_in(
            policy, contributor, is_creator=fam["creator"] == pid,
            is_member=member.get("state") == "MEMBER", amount=amount, month_count=count)
        assert contributor is not None  # check_transfer_in refuses a person not enrolled
        return TransferSeen(now=now, month=month, balance=contributor.balance, month_count=count)

    async def transfer_answer(self, fid: str, balance_after: int) -> fpb.TransferIntoFamilyAccountResponse:
        """A credited 划拨's answer: the account as it stands, the contributor's balance after the debit.
        The request's, and the recovery loop's for a request it finishes (`recover`)."""
        return fpb.TransferIntoFamilyAccountResponse(account=await self.account_pb(fid),
                                                     balance_after_fen=balance_after)

    async def drive_transfer(self, pid: str, xid: str, token: int) -> str:
        """Take a DEBITED 划拨 to CREDITED (or REFUNDED when the account no longer takes it), under the
        contributor's lock (`token`). A creation's initial 划拨 is taken with its account
        (`drive_creation`). Its entry is the caller's to withdraw."""
        k, ctx = self.k, self.ctx
        raw = await ctx.r.hgetall(k.family_transfer(pid, xid))
        rec = {text(a): text(b) for a, b in raw.items()}
        state = rec.get("state", "")
        if state == "DEBITED" and rec.get("create"):
            return await self.drive_creation(pid, xid, rec, token, None)
        if state == "DEBITED":
            fid = rec["family"]
            for _ in range(MAX_CREDIT_JUDGEMENTS):
                taken, seen = await self._judge_credit(fid, pid)
                ctx.fault("family.before_credit")
                (outcome,) = await ctx.lua["family_credit"](
                    keys=[*self.money_keys(fid), k.family_seq(), k.families_given_to(pid)],
                    args=[xid, pid, rec["amount"], ctx.clock.now_ms(), "OK" if taken else "GONE", *seen])
                if text(outcome) != "AGAIN":
                    break
            else:
                raise errors.unavailable("FAMILY_BUSY", "the family account changed while the 划拨 was credited; "
                                         "retry with the same request id")
            ctx.fault("family.after_credit")
            state = await self.finish_transfer(pid, xid, "CREDITED" if text(outcome) == "OK" else "REFUNDED")
            event(log, "family transfer", contributor=pid, family=fid, amount=int(rec["amount"]), state=state)
        return state

    async def finish_transfer(self, pid: str, xid: str, state: str, fid: str = "", why: str = "",
                              token: int | None = None) -> str:
        """A DEBITED 划拨 finished (lua/family_xfer_finish.lua): CREDITED (into `fid`, '' : the account
        recorded), or REFUNDED (`why`: a creation's refusal). Fenced by the contributor's lock where
        `token` is given (LOCK_LOST once a newer holder took it). Returns the state it stands in."""
        k, ctx = self.k, self.ctx
        (done,) = await ctx.lua["family_xfer_finish"](
            keys=[k.family_transfer(pid, xid), k.account(pid), k.ledger(pid), k.family_transfer_months(pid),
                  k.fence(pid)],
            args=[state, ctx.clock.now_ms(), fid, why, "" if token is None else token])
        if text(done) == "STALE":
            raise lock_lost()
        return text(done)

    async def drive_creation(self, pid: str, xid: str, rec: dict[str, str], token: int, mark: Any) -> str:
        """A creation's initial 划拨, debited, taken with its account (`Family.drive_creation`)."""
        raise NotImplementedError

    async def _judge_credit(self, fid: str, pid: str) -> tuple[bool, list[Any]]:
        """Whether account `fid` takes the debited 划拨 of `pid` (`family_rules.credit_taken`), judged on
        a read now, and what lua/family_credit.lua is to find unchanged as it applies the judgement
        (else it answers AGAIN): the account's state and the contributor's member entry."""
        k = self.k
        async with self.ctx.r.pipeline(transaction=False) as p:
            p.hmget(k.family(fid), ["state", "creator"])
            p.hget(k.family_members(fid), pid)
            (state, creator), member = await p.execute()
        family_state = text(state or b"")
        taken = family_rules.credit_taken(
            self.ctx.policy, family_state, is_creator=text(creator or b"") == pid,
            is_member=json.loads(text(member)).get("state") == "MEMBER" if member else False)
        return taken, [family_state, member or b""]

    # --- shares returned to personal accounts --------------------------------------------

    async def leaving_answer(self, response_type: type[LeavingT], fid: str,
                             returned: list[tuple[str, int]]) -> LeavingT:
        """The answer (`response_type`, LEAVING_ANSWERS) of a leaving whose shares `returned` are back in the
        personal accounts: the account as it stands, what was returned (a dissolution: each share, the
        others: their sum). The request's, and the recovery loop's for a request it finishes (`recover`)."""
        shares: dict[str, Any] = (
            {"returned": [fpb.ContributorShare(id_number=c, share_fen=a) for c, a in returned]}
            if response_type is fpb.DissolveFamilyAccountResponse else {"returned_fen": sum(a for _, a in returned)})
        return response_type(account=await self.account_pb(fid), **shares)

    async def pay_returns(self, fid: str, op: str, returns: str) -> list[tuple[str, int]]:
        """Credit each returned share once, then mark the returns DONE. The recovery entry is the
        caller's to withdraw."""
        k, ctx = self.k, self.ctx
        state, items = parse_returns(returns)
        if state == "PENDING":
            now = ctx.clock.now_ms()
            async with ctx.r.pipeline(transaction=False) as p:
                for pid, amount in items:
                    await ctx.lua["family_payout"](
                        keys=[k.account(pid), k.ledger(pid), k.applied(pid)],
                        args=[f"famret|{fid}|{op}", amount, "FAMILY_RETURN", fid, now], client=p)
                await p.execute()
            ctx.fault("family.after_payout")
            await ctx.lua["family_returned"](keys=[k.family_returns(fid)], args=[op])
        return items

    # --- the settlement engine's steps (and 代缴's) ----------------------------------------

    async def plan_charge(self, fid: str, patient: str, amount: int, category: str, *, whole: bool = False,
                          split: tuple[rules.Charge, ...] | None = None) -> tuple[tuple[rules.LotTake, ...], str]:
        """What account `fid` pays of `amount` for `patient` by the rule (rules.family_step) on what it
        holds now, and why not all. `whole`: all of `amount` or nothing (a 代缴); `split`: exactly these
        contributors and amounts or nothing (the undoing of a reversal takes back what it returned)."""
        takes, why = rules.family_step(self.ctx.policy, amount, await self.view_of(fid, patient), category)
        if whole and sum(t.amount for t in takes) < amount:
            return (), why or "FAMILY_INSUFFICIENT"
        if split is not None and rules.by_contributor(takes) != split:
            return (), why or "FAMILY_CHANGED"
        return takes, why

    async def charge(self, fid: str, ref: str, patient: str, amount: int, category: str, *,
                     whole: bool = False, split: tuple[rules.Charge, ...] | None = None,
                     payer: PayerJudge | None = None) -> tuple[str, tuple[ChargeDone, ...], str]:
        """The family-account step of a staged settlement, a 代缴 or the undoing of a reversal, once
        per id `ref`: `plan_charge`, applied lot by lot (lua/family_charge.lua); a plan that the lots
        changed under is made again. `payer`: a 代缴's judgement of its payer (`PayerJudge`), made
        again with each plan; one that refuses takes nothing (VOID), and one that the payer's member
        entry changed under is made again. The first outcome of `ref` sticks. Returns the outcome
        ('OK', 'VOID': nothing taken; 'DUP': an earlier attempt's), the charges, and why the plan of
        this call took less than `amount` ('' when it did not, or did not plan)."""
        for _ in range(MAX_CHARGE_PLANS):
            guard: list[Any] = []
            takes: tuple[rules.LotTake, ...] = ()
            why = ""
            if payer is not None:
                payer_id, entry, may = await payer()
                guard = [payer_id, entry]
            if payer is None or may:
                takes, why = await self.plan_charge(fid, patient, amount, category, whole=whole, split=split)
            self.ctx.fault("family.before_charge")
            reply = await self.ctx.lua["family_charge"](
                keys=self.money_keys(fid),
                args=[ref, patient, lot_parts(takes), self.ctx.clock.now_ms(), *guard])
            status = text(reply[0])
            if status not in ("CONFLICT", "AGAIN"):
                return status, self.charged(reply), why if status != "DUP" else ""
        raise errors.unavailable("CONTENDED", "the family account kept changing; retry with the same request id")

    @staticmethod
    def charged(reply: Any) -> tuple[ChargeDone, ...]:
        status, detail = text(reply[0]), text(reply[1] or b"")
        return decode_charges(detail) if status in ("OK", "DUP") else ()

    async def refund(self, rec: SettlementRecord) -> list[int]:
        """Return a settlement's family charge; per charge of the record, the contributor's unspent
        share (or, for one who has left, their personal balance) after."""
        afters = await self.refund_charge(rec.family_id, rec.ref, "FAMILY_REVERSAL")
        return [afters.get(c.helper_id, 0) for c in rec.charges]

    async def refund_charge(self, fid: str, ref: str, kind: str) -> dict[str, int]:
        """Give back what charge `ref` (a settlement or a premium) took from family account `fid`, once:
        each fen to the lot it came from; what belongs to a contributor who has left, or to a dissolved
        account, to the contributor's personal account (ledger `kind`). Contributor -> balance after."""
        k, ctx = self.k, self.ctx
        _, detail = await ctx.lua["family_refund"](keys=self.money_keys(fid), args=[ref, ctx.clock.now_ms()])
        afters: dict[str, int] = {}
        owed = []
        for item in text(detail or b"").split(","):
            if item:
                pid, amount, where = item.split(":")
                if where == "A":
                    owed.append((pid, int(amount)))
        if owed:
            async with ctx.r.pipeline(transaction=False) as p:
                for pid, amount in owed:
                    await ctx.lua["family_payout"](keys=[k.account(pid), k.ledger(pid), k.applied(pid)],
                                                   args=[f"famrev|{ref}", amount, kind, ref, ctx.clock.now_ms()],
                                                   client=p)
                for (pid, _), (_, after) in zip(owed, await p.execute(), strict=True):
                    afters[pid] = int(text(after))
        shares = await ctx.r.hgetall(k.family_shares(fid))
        for a, b in shares.items():
            afters.setdefault(text(a), int(b))
        return afters

    # --- recovery -------------------------------------------------------------------------

    async def recover(self, entry: str, mark: Any) -> bool:
        """Finish what a dead process left of a 划拨 (X) or of returned shares (L); False when a live
        holder has the lock (the entry is not abandoned). `mark`: the entry's score as the loop read it,
        under which alone the entry goes (the loop's lock may expire meanwhile: `Context.withdraw`)."""
        ctx, k = self.ctx, self.k
        kind, owner, op = entry.split("|", 2)
        tag = k.person_tag(owner) if kind == "X" else k.family_lock_tag(owner)
        lease = await ctx.locks.try_acquire(tag, ctx.lock_ttl_ms)
        if lease is None:
            return False
        try:
            if kind == "X":
                if await ctx.r.exists(k.family_transfer(owner, op)):
                    await self._answer_transfer(entry, mark, owner, op,
                                                await self.drive_transfer(owner, op, lease.token))
                else:  # died before the debit: nothing happened; a 划拨's own request id is freed with it
                    # (a family's initial 划拨, `<id>|init`, comes after the family was created by that id)
                    await ctx.drop_claimed(entry, mark, op, ("family_transfer",) if "|" not in op else (), owner)
            else:
                returns = await ctx.r.hget(k.family_returns(owner), op)
                if returns is None:  # died before the shares left the account: its request's id is freed
                    await ctx.drop_claimed(entry, mark, op, LEAVING_OPS, owner)
                else:
                    await self._answer_returns(entry, mark, owner, op, await self.pay_returns(owner, op, text(returns)))
        finally:
            await ctx.locks.release(lease)
        return True

    async def _answer_transfer(self, entry: str, mark: Any, pid: str, xid: str, state: str) -> None:
        """The loop's end of a 划拨 it finished: its own request's id answered as the request answers it
        (`transfer_answer`), or freed where it was refunded (the request refuses it, FAMILY_NOT_ACTIVE,
        and drops its claim), then the entry withdrawn (`Context.settle_claimed`: SPEC §7, never left in
        progress). A family's initial 划拨 (`<id>|init`) has no claim of its own: the creation's entry
        answers it."""
        if "|" in xid:
            await self.ctx.withdraw(entry, mark)
            return
        response = None
        if state == "CREDITED":
            rec = await self.ctx.r.hmget(self.k.family_transfer(pid, xid), ["family", "bal_after"])
            response = await self.transfer_answer(text(rec[0] or b""), int(rec[1] or 0))
        await self.ctx.settle_claimed(entry, mark, xid, "family_transfer", pid, response)

    async def _answer_returns(self, entry: str, mark: Any, fid: str, op: str, returned: list[tuple[str, int]]) -> None:
        """The loop's end of a leaving it finished: the request id that ended it (a leave, a removal, a
        dissolution or a 回拨; a life event's step has a derived id, which no claim has) answered as that
        request answers it (`leaving_answer`), then the entry withdrawn (`Context.settle_claimed`)."""
        claimed, subject = await self.ctx.idem.subject(op)
        if claimed in LEAVING_OPS and subject == fid:
            await self.ctx.settle_claimed(entry, mark, op, claimed, fid,
                                          await self.leaving_answer(LEAVING_ANSWERS[claimed], fid, returned))
        else:
            await self.ctx.withdraw(entry, mark)
