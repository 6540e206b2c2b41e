"""The settlement engine (SPEC §4): every settlement of every province model goes through here.

One flow: read what the waterfall needs, plan it with `rules.plan_settlement` (the only
implementation of the waterfall, called through `planning.Planner`), then apply the plan. Scripts
only apply effects and check that what the plan was made from still holds; they decide no rule.
Two ways to apply, one record:

* **atomic** (one Redis, no wallet share): `settle_read.lua` reads what an item is planned from and
  `settle_apply.lua` checks and applies the whole plan — request-id claim, own debit, every helper
  charge or the family account's, consumption records, settlement record — in one script. If
  anything the plan was made from has changed it writes nothing and the item is read and planned
  again.
* **staged** (`staged.py`: a wallet share, a Redis Cluster, a busy patient, an earlier attempt that
  left a claim or a record, or an earlier item of the same patient in the batch that is staged).

See docs/settlement-engine.md for round trips and how a batch flows.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import grpc

from medaid.common import errors, metrics, tracing
from medaid.common.errors import DomainError
from medaid.common.idempotency import VOID, fingerprint, reused, validate_request_id
from medaid.common.values import text
from medaid.registry import rules
from medaid.registry.context import MAX_BATCH, Context, filled
from medaid.registry.family import Family
from medaid.registry.family_money import lot_parts
from medaid.registry.family_reads import family_view
from medaid.registry.outcomes import Item, claim_of, failed, item_failure, log_settled, replay, settled
from medaid.registry.planning import Planner, Wallet
from medaid.registry.records import ChargeDone, SettlementRecord, consumption_field, consumption_json
from medaid.registry.staged import Staged
from medaid.registry.store import Store
from medaid.registry.undo import lookup
from medaid.registry.v1 import registry_pb2 as pb

log = logging.getLogger("medaid.registry")

MAX_CONFLICTS = 3  # atomic attempts of one item before it takes the staged path
# Fields that do not make a resend a different request: the id itself, and the trace it travels in.
SETTLE_UNHASHED = ("request_id", "traceparent")


@dataclass
class _Read:
    """What settle_read.lua found for an item that is to be planned."""

    item: Item
    patient: rules.PersonView
    balance: int  # the own balance as stored (-1: no account): settle_apply.lua checks it is unchanged
    helpers: list[rules.HelperCandidate]
    proxies: bool
    wallet: tuple[str, str]  # Planner.wallet_question
    family: rules.FamilyView | None  # pooled provinces, when the patient uses the account
    memberships: str  # the patient's family memberships as settle_apply.lua checks them (membership_sig)


class Engine:
    def __init__(self, ctx: Context, store: Store, family: Family | None = None) -> None:
        self.ctx = ctx
        self.store = store
        self.k = ctx.k
        self.planner = Planner(ctx, store, family.view_for if family is not None else None)
        self.staged = Staged(ctx, store, self.planner, family)
        self.family = family
        # settle_read.lua reads the patient's family account where the waterfall has one (SPEC §3b).
        self._family_prefix = f"{self.k.family_tag()}:" if ctx.policy.pooled and family is not None else ""

    # --- pre-settlement ------------------------------------------------------------------

    async def presettle(self, req: pb.PreSettleRequest) -> pb.PreSettleResponse:
        return pb.PreSettleResponse(result=await self.pre_settlement(req, self.planner.validate(req)))

    async def pre_settlement(self, req: pb.PreSettleRequest, pid: str) -> pb.SettlementResult:
        """The split of bill `req` for patient `pid` (validated) as a settlement now would make it, nothing
        moved: PreSettle's answer, and Diagnose's of a bill (`Registry.diagnose`)."""
        patient, plan, helpers, (wallet_balance, _) = await self.planner.read_and_plan(req, pid)
        balances = {h.id_number: h.balance for h in helpers}
        if plan.family_id and self.planner.family_view is not None:
            family = await self.planner.family_view(pid)
            balances = family.shares() if family is not None else {}
        # As a settlement reports them: the wallet's balance after only where the wallet pays a share.
        wallet_after = (wallet_balance or 0) - plan.wallet_pay if plan.wallet_pay > 0 else 0
        rec = self.planner.record_of(req, pid, patient, plan, "SETTLED", own_after=patient.balance - plan.acct_pay,
                                     helper_afters=tuple(balances[c.helper_id] - c.amount for c in plan.charges),
                                     wallet_after=wallet_after)
        result = rec.result()
        result.state = "PRE_SETTLEMENT"
        return result

    # --- settlement ----------------------------------------------------------------------

    async def settle(self, req: pb.SettleRequest) -> pb.SettleResponse:
        out = (await self.settle_batch(pb.SettleBatchRequest(requests=[req]))).outcomes[0]
        if out.HasField("error"):
            raise DomainError(errors.status_code(out.error.code), out.error.reason, out.error.message,
                              dict(out.error.metadata))
        return out.response

    async def settle_batch(self, req: pb.SettleBatchRequest) -> pb.SettleBatchResponse:
        """Each item is exactly a Settle and gets its own outcome. On one Redis the common case is two
        round trips for the whole batch (read, apply); see the module doc."""
        if len(req.requests) > MAX_BATCH:
            raise errors.invalid("BATCH_TOO_LARGE", f"at most {MAX_BATCH} settlements per batch")
        outcomes: list[pb.SettleOutcome | None] = [None] * len(req.requests)
        todo: list[Item] = []
        for i, item in enumerate(req.requests):
            try:
                validate_request_id(item.request_id)
                todo.append(Item(i, item, self.planner.validate(item), fingerprint(item, drop=SETTLE_UNHASHED)))
            except DomainError as exc:
                outcomes[i] = failed(exc)
        staged: list[Item] = []
        if not self.ctx.atomic:
            staged, todo = todo, []
        while todo:
            wave: list[Item] = []
            later: list[Item] = []
            seen: set[str] = set()
            behind = {it.pid for it in staged}
            for it in todo:  # one patient's items apply in batch order, one per wave
                if it.pid in behind:  # an earlier item of this patient runs staged, after the waves
                    staged.append(it)
                    continue
                (later if it.pid in seen else wave).append(it)
                seen.add(it.pid)
            try:
                retry = await self._round(wave, outcomes, staged)
            except DomainError as exc:  # the store did not answer: these items only
                for it in wave:
                    outcomes[it.index] = failed(exc)
                retry = []
            todo = sorted(later + retry, key=lambda it: it.index)
        by_patient: dict[str, list[Item]] = {}
        for it in staged:
            by_patient.setdefault(it.pid, []).append(it)
        await asyncio.gather(*(self._staged_in_order(items, outcomes) for items in by_patient.values()))
        done = filled(outcomes)
        if metrics.enabled():
            for out in done:
                if out.HasField("error"):
                    metrics.settlement_outcome(_outcome_of(out.error.code), out.error.reason)
        return pb.SettleBatchResponse(outcomes=done)

    async def _staged_in_order(self, items: list[Item], outcomes: list[pb.SettleOutcome | None]) -> None:
        """One patient's staged items, one after the other in batch order (each plans what the one
        before it left)."""
        for it in sorted(items, key=lambda it: it.index):
            with tracing.item(it.req.traceparent, it.req.request_id):
                await self.staged.settle_into(it, outcomes)

    async def _round(self, wave: list[Item], outcomes: list[pb.SettleOutcome | None],
                     staged: list[Item]) -> list[Item]:
        """Read, plan and apply one wave atomically; returns the items to read and plan again."""
        k = self.k
        try:
            replies = await self.ctx.lua.run_many("settle_read", [
                ([self.ctx.idem.key(sid), k.settlement(pid, sid), k.person(pid), k.account(pid), k.helpers_of(pid),
                  k.proxies_of_relative(pid), k.proxies_of_holder(pid), k.families_of(pid)],
                 [k.person_prefix, pid, self._family_prefix])
                for it in wave for sid, pid in [(it.req.request_id, it.pid)]])
        except Exception as exc:
            raise item_failure(exc) from exc
        reads: list[_Read] = []
        for it, (claim, raw_rec, fields, bal, proxies, helpers, mine, joined) in zip(wave, replies, strict=True):
            try:
                if claim[0] is not None:
                    if text(claim[0]) != it.fp:
                        raise reused(it.req.request_id, voided=text(claim[0]) == VOID)
                    if text(claim[1] or b"") == "DONE":
                        outcomes[it.index] = replay(claim_of(claim), SettlementRecord.parse(_pairs(raw_rec)))
                    else:
                        staged.append(it)  # a crashed or concurrent attempt: the staged path resumes it
                    continue
                if raw_rec:
                    staged.append(it)
                    continue
                patient = self.planner.payable(it.req, it.pid, self.store.person_view(it.pid, fields, bal))
                memberships = {text(a): text(b) for a, b in zip(mine[::2], mine[1::2], strict=True)}
                family = family_view(self.ctx.policy, memberships, {
                    text(fid): (state, member, _pairs(lots), creator_region, patient.region)
                    for fid, state, member, lots, creator_region in joined}) if self._family_prefix else None
                reads.append(_Read(it, patient, int(bal) if bal is not None else -1, self.store.helper_rows(helpers),
                                   proxies > 0, self.planner.wallet_question(it.req, patient), family,
                                   membership_sig(memberships)))
            except DomainError as exc:
                outcomes[it.index] = failed(exc)
        wallets = await self._ask_wallets([x for x in reads if x.wallet[0]], outcomes)
        ready: list[Ready] = []
        for x in reads:
            if x.wallet[0]:
                if x.item.index not in wallets:
                    continue  # the wallet service did not answer: this item failed, nothing written
                wallet = wallets[x.item.index]
            else:
                wallet = (None, x.wallet[1])
            plan = self.planner.plan(x.item.req, x.patient, wallet, x.helpers, x.proxies, x.family)
            if plan.wallet_pay > 0:  # a wallet debit is a call to another service: staged
                staged.append(x.item)
                continue
            # The family account was part of the plan only when something was left for it to pay: then
            # the memberships and the account's balance it saw must still hold when it is applied.
            check: FamilyCheck | None = None
            if plan.cash_pay > 0 and self._family_prefix and x.item.req.use_account:
                fam = x.family
                check = (x.memberships, fam.balance if fam is not None and fam.active else -1,
                         fam.family_id if fam is not None else "")
            ready.append((x.item, self.planner.record_of(x.item.req, x.item.pid, x.patient, plan, "SETTLED"),
                          x.balance, check, plan.lot_takes))
        return await self._apply(ready, outcomes, staged)

    async def _ask_wallets(self, asks: list[_Read], outcomes: list[pb.SettleOutcome | None]) -> dict[int, Wallet]:
        """The balances of the wallets a wave must ask about, in one call; if the wallet service does
        not answer, only those items fail (nothing was written for them)."""
        if not asks:
            return {}
        try:
            answers = await self.ctx.wallet.balances([(x.item.pid, x.wallet[1]) for x in asks])
        except DomainError as exc:
            for x in asks:
                outcomes[x.item.index] = failed(exc)
            return {}
        return {x.item.index: answer for x, answer in zip(asks, answers, strict=True)}

    async def _apply(self, ready: list[Ready], outcomes: list[pb.SettleOutcome | None],
                     staged: list[Item]) -> list[Item]:
        if not ready:
            return []
        self.ctx.fault("settle.before_apply")
        try:
            replies = await self.ctx.lua.run_many("settle_apply", [
                self._apply_call(*r) for r in ready])
        except Exception as exc:  # noqa: BLE001 - whether applied is unknown: a retry of the id finds out
            for it, *_ in ready:
                outcomes[it.index] = failed(item_failure(exc))
            return []
        retry: list[Item] = []
        for (it, rec, *_), reply in zip(ready, replies, strict=True):
            status = text(reply[0])
            if status == "OK":
                afters = [int(text(v)) for v in reply[1:]]
                done = SettlementRecord(
                    sid=rec.sid, patient=rec.patient, amount=rec.amount, acct_pay=rec.acct_pay, wallet_pay=0,
                    charges=tuple(ChargeDone(c.helper_id, c.amount, a) for c, a in zip(rec.charges, afters[1:],
                                                                                       strict=True)),
                    cash_pay=rec.cash_pay, helper_reason=rec.helper_reason, wallet_reason=rec.wallet_reason,
                    category=rec.category, institution=rec.institution, place=rec.place, region=rec.region,
                    at=rec.at, state="SETTLED", own_bal_after=afters[0], family_id=rec.family_id)
                log_settled(done, "atomic", it.req.traceparent)
                outcomes[it.index] = settled(done)
                self.ctx.fault("settle.after_finish")
            elif status == "REUSED":
                outcomes[it.index] = failed(reused(it.req.request_id, voided=text(reply[1]) == VOID))
            elif status in ("PENDING", "BUSY") or it.conflicts >= MAX_CONFLICTS:
                staged.append(it)
            else:  # CONFLICT (a value the plan saw has changed) or DONE (a duplicate finished first)
                it.conflicts += 1
                retry.append(it)
        return retry

    def _apply_call(self, it: Item, rec: SettlementRecord, balance: int, check: FamilyCheck | None,
                    takes: tuple[rules.LotTake, ...]) -> tuple[list[str], list[Any]]:
        pid, k = it.pid, self.k
        lock_key, _ = self.ctx.locks.keys(k.person_tag(pid))
        memberships, family_balance, fid = check or ("", -1, "")
        keys = [self.ctx.idem.key(rec.sid), k.settlement(pid, rec.sid), k.person(pid), k.account(pid), k.ledger(pid),
                lock_key, k.consumption(pid), k.consumption_index(pid), k.settlement_index(rec.sid),
                k.families_of(pid), k.family(fid) if fid else k.families_of(pid), k.helpers_of(pid)]
        helper_charges = 0 if rec.family_id else len(rec.charges)
        args: list[Any] = [rec.sid, it.fp, rec.at, pid, balance, rec.acct_pay, helper_charges,
                           "1" if check is not None else "0", memberships, family_balance]
        if rec.family_id:  # the family account's charge (SPEC §3b): its keys, the plan's lots, member records
            assert self.family is not None
            keys += self.family.money_keys(rec.family_id)
            args += [rec.mulaid_pay, lot_parts(takes), len(rec.charges)]
            for c in rec.charges:
                args += [consumption_field(rec.sid, c.helper_id), consumption_json(rec, c, "MEMBER", "SETTLED")]
        else:
            for c in rec.charges:
                hid = c.helper_id
                keys += [k.person(hid), k.account(hid), k.ledger(hid), k.applied(hid), k.consumption(hid),
                         k.consumption_index(hid)]
                args += [hid, c.amount, consumption_field(rec.sid, hid),
                         consumption_json(rec, c, "HELPER", "SETTLED"), consumption_json(rec, c, "MEMBER", "SETTLED")]
            args += [0, "", 0]
        args += rec.args(without=("state", "own_bal_after", "charges"))
        return keys, args

    # --- reads ---------------------------------------------------------------------------

    async def get_settlement(self, req: pb.GetSettlementRequest) -> pb.GetSettlementResponse:
        validate_request_id(req.settlement_id)
        rec = await self.store.record_by_id(req.settlement_id)
        if rec is None:
            raise errors.not_found("SETTLEMENT_NOT_FOUND", f"no settlement {req.settlement_id}", field="settlement_id")
        if rec.state == "OPEN":
            raise errors.unavailable("SETTLEMENT_IN_PROGRESS", "the settlement has not finished; it will be "
                                     "finished shortly, retry")
        # The state now, as GetSettlements (5203, 3201, 3202) reports it: a reversal, or the undoing of
        # one, that has begun but not finished is IN_PROGRESS, not SETTLED.
        return pb.GetSettlementResponse(result=lookup(req.settlement_id, rec).result)


FamilyCheck = tuple[str, int, str]  # (membership_sig, family balance or -1, family id): settle_apply.lua
# An item ready to apply: the record planned, the own balance and family account the plan saw, its lot parts.
Ready = tuple[Item, SettlementRecord, int, FamilyCheck | None, tuple[rules.LotTake, ...]]


def membership_sig(memberships: dict[str, str]) -> str:
    """A person's family memberships as one string, the way settle_apply.lua writes them to compare."""
    return ",".join(sorted(f"{fid}={state}" for fid, state in memberships.items()))


_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]
_FAILED = (grpc.StatusCode.UNKNOWN.value[0], grpc.StatusCode.INTERNAL.value[0])


def _outcome_of(code: int) -> metrics.Outcome:
    """An item refusal's outcome label: unavailable (retry), failed (unknown whether applied), refused."""
    return "unavailable" if code == _UNAVAILABLE else "failed" if code in _FAILED else "refused"


def _pairs(flat: list[Any]) -> dict[Any, Any]:
    """A flat [field, value, …] reply (HGETALL inside a script) as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))
