"""The settlement engine (SPEC §4): every settlement of every province model goes through here.

One flow: read what the waterfall needs, plan it with `rules.plan_settlement` (the only
implementation of the waterfall), then apply the plan. Scripts only apply effects and check that
the values the plan was made from still hold; they decide no rule. Two ways to apply, one record:

* **atomic** (one Redis, no wallet share): `settle_apply.lua` checks and applies the whole plan —
  request-id claim, own debit, every helper charge, consumption records, settlement record — in
  one script. If anything it was planned from has changed it writes nothing and the item is read
  and planned again.
* **staged** (a wallet share, a Redis Cluster, a busy patient, a crashed earlier attempt, an earlier
  item of the same patient in the batch that is staged: one patient's items run in batch order): under
  the patient's fenced lock, `settle_open.lua` writes the record OPEN and debits the own account;
  the wallet and each helper are charged once per settlement id (a charge that cannot be taken
  falls to cash); `settle_finish.lua` makes it SETTLED. The recovery loop (`recovery.py`) finishes
  an OPEN record whose process died, with `drive`, the same code a live request runs.

See docs/settlement-engine.md for round trips and how a batch flows.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, replace
from typing import Any

import grpc

from medaid.common import errors
from medaid.common.errors import DomainError
from medaid.common.idempotency import Claim, fingerprint, validate_request_id
from medaid.common.lock import Lease
from medaid.common.logs import event
from medaid.common.transport import store_error
from medaid.common.v1 import common_pb2 as cpb
from medaid.common.values import text
from medaid.registry import rules, validate
from medaid.registry.context import MAX_BATCH, Context, error_item, filled, lock_lost
from medaid.registry.records import (
    ChargeDone,
    SettlementRecord,
    consumption_field,
    consumption_json,
)
from medaid.registry.store import Store
from medaid.registry.v1 import registry_pb2 as pb

log = logging.getLogger("medaid.registry")

MAX_CONFLICTS = 3  # atomic attempts of one item before it takes the staged path


@dataclass
class _Item:
    index: int
    req: pb.SettleRequest
    pid: str
    fp: str
    conflicts: int = 0


@dataclass
class _Ready:
    """A planned item about to be applied atomically."""

    item: _Item
    record: SettlementRecord
    expected_balance: int  # the own balance the plan saw (-1: no account)


def item_failure(exc: Exception) -> DomainError:
    """An item's outcome when a step failed with something other than a refusal: the store's outage
    (retryable), else an internal error (the claim stays, a retry or the recovery loop finishes it)."""
    found = store_error(exc)
    if found is not None:
        return found
    log.error("settlement step failed", exc_info=exc)
    return DomainError(grpc.StatusCode.UNKNOWN, "INTERNAL_ERROR", "the settlement did not finish; retry with the "
                       "same request id")


class Engine:
    def __init__(self, ctx: Context, store: Store) -> None:
        self.ctx = ctx
        self.store = store
        self.k = ctx.k

    # --- validation and the pure plan ----------------------------------------------------

    def validate(self, req: Any) -> str:
        pid = validate.id_number(req.patient_id_number, "patient_id_number")
        validate.amount(req.amount_fen)
        category = validate.enum_name(cpb.Category, req.category, "CATEGORY_", "category")
        validate.institution(req.institution_code)
        validate.admdvs(req.institution_admdvs, "institution_admdvs")
        validate.admdvs(req.insured_region, "insured_region")
        rules.check_category(self.ctx.policy, category)
        return pid

    def payable(self, req: Any, pid: str, patient: rules.PersonView | None) -> rules.PersonView:
        """The patient, or the refusal when they are not enrolled, not ACTIVE, or insured elsewhere than
        the caller said."""
        if patient is None:
            raise self.ctx.not_enrolled(pid)
        if req.insured_region and req.insured_region != patient.region:
            raise errors.refused("INSURED_PLACE_MISMATCH", f"insuplc_admdvs {req.insured_region} is not where the "
                                 f"patient is insured ({patient.region}); send theirs or leave it empty",
                                 field="insuplc_admdvs")
        if not patient.active:
            raise errors.refused("MEMBER_NOT_INSURED",
                                 f"the patient's insurance is {patient.status}: accounts cannot pay (原因一)")
        return patient

    @staticmethod
    def place_of(req: Any, patient: rules.PersonView) -> str:
        """Where the bill is settled: the institution's admdvs, else the patient's 统筹区."""
        return str(req.institution_admdvs or patient.region)

    def plan(self, req: Any, patient: rules.PersonView, wallet: tuple[int | None, str],
             helpers: list[rules.HelperCandidate], proxy_only: bool) -> rules.Plan:
        balance, why = wallet
        return rules.plan_settlement(
            self.ctx.policy, amount=req.amount_fen, use_account=req.use_account, own_balance=patient.balance,
            has_own_account=patient.has_account, wallet_balance=balance, wallet_missing_reason=why,
            helpers=helpers, proxy_only=proxy_only)

    def wallet_question(self, req: Any, patient: rules.PersonView) -> tuple[str, str]:
        """('ask', place) when step 2 must ask the wallet service, else ('', why it cannot pay)."""
        own = rules.own_share(req.amount_fen, req.use_account, patient)
        place = self.place_of(req, patient)
        why = rules.wallet_usable(req.use_account, req.amount_fen - own, patient, place)
        if why == "":
            return "ask", place
        return "", "" if why == "-" else why

    async def read_and_plan(self, req: Any, pid: str) -> tuple[rules.PersonView, rules.Plan,
                                                                 list[rules.HelperCandidate]]:
        """Everything one settlement needs, read (two or three round trips) and planned."""
        patient = self.payable(req, pid, await self.store.person(pid))
        helpers, proxies = await self.store.helper_candidates(pid)
        ask, why = self.wallet_question(req, patient)
        wallet: tuple[int | None, str] = (None, why)
        if ask:
            wallet = await self.ctx.wallet.balance(pid, why)
        return patient, self.plan(req, patient, wallet, helpers, proxies), helpers

    def record_of(self, req: Any, pid: str, patient: rules.PersonView, plan: rules.Plan,
                  state: str) -> SettlementRecord:
        return SettlementRecord(
            sid=getattr(req, "request_id", ""), patient=pid, amount=plan.amount, acct_pay=plan.acct_pay,
            wallet_pay=plan.wallet_pay, charges=tuple(ChargeDone(c.helper_id, c.amount) for c in plan.charges),
            cash_pay=plan.cash_pay, helper_reason=plan.helper_reason, wallet_reason=plan.wallet_reason,
            category=int(req.category), institution=req.institution_code, place=self.place_of(req, patient),
            region=patient.region, at=self.ctx.clock.now_ms(), state=state)

    # --- pre-settlement ------------------------------------------------------------------

    async def presettle(self, req: pb.PreSettleRequest) -> pb.PreSettleResponse:
        pid = self.validate(req)
        patient, plan, helpers = await self.read_and_plan(req, pid)
        balances = {h.id_number: h.balance for h in helpers}
        rec = replace(self.record_of(req, pid, patient, plan, "SETTLED"),
                      own_bal_after=patient.balance - plan.acct_pay,
                      charges=tuple(ChargeDone(c.helper_id, c.amount, balances[c.helper_id] - c.amount)
                                    for c in plan.charges))
        result = rec.result()
        result.state = "PRE_SETTLEMENT"
        result.settlement_id = ""
        return pb.PreSettleResponse(result=result)

    # --- settlement ----------------------------------------------------------------------

    async def settle(self, req: pb.SettleRequest) -> pb.SettleResponse:
        out = (await self.settle_batch(pb.SettleBatchRequest(requests=[req]))).outcomes[0]
        if out.HasField("error"):
            raise DomainError(errors.status_code(out.error.code), out.error.reason, out.error.message,
                              dict(out.error.metadata))
        return out.response

    async def settle_batch(self, req: pb.SettleBatchRequest) -> pb.SettleBatchResponse:
        """Each item is exactly a Settle and gets its own outcome. On one Redis the common case is
        three round trips for the whole batch (read, read the helpers, apply); see the module doc."""
        if len(req.requests) > MAX_BATCH:
            raise errors.invalid("BATCH_TOO_LARGE", f"at most {MAX_BATCH} settlements per batch")
        outcomes: list[pb.SettleOutcome | None] = [None] * len(req.requests)
        todo: list[_Item] = []
        for i, item in enumerate(req.requests):
            try:
                validate_request_id(item.request_id)
                todo.append(_Item(i, item, self.validate(item), fingerprint(item)))
            except DomainError as exc:
                outcomes[i] = _failed(exc)
        staged: list[_Item] = []
        if not self.ctx.atomic:
            staged, todo = todo, []
        while todo:
            wave: list[_Item] = []
            later: list[_Item] = []
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
                    outcomes[it.index] = _failed(exc)
                retry = []
            todo = sorted(later + retry, key=lambda it: it.index)
        by_patient: dict[str, list[_Item]] = {}
        for it in staged:
            by_patient.setdefault(it.pid, []).append(it)
        await asyncio.gather(*(self._staged_in_order(items, outcomes) for items in by_patient.values()))
        return pb.SettleBatchResponse(outcomes=filled(outcomes))

    async def _staged_in_order(self, items: list[_Item], outcomes: list[pb.SettleOutcome | None]) -> None:
        """One patient's staged items, one after the other in batch order (each plans what the one
        before it left)."""
        for it in sorted(items, key=lambda it: it.index):
            await self._staged_outcome(it, outcomes)

    async def _round(self, wave: list[_Item], outcomes: list[pb.SettleOutcome | None],
                     staged: list[_Item]) -> list[_Item]:
        """Read, plan and apply one wave atomically; returns the items to read and plan again."""
        try:
            async with self.ctx.r.pipeline(transaction=False) as p:
                for it in wave:
                    p.hmget(self.ctx.idem.key(it.req.request_id), ["fp", "state", "resp", "err"])
                    p.hgetall(self.k.settlement(it.pid, it.req.request_id))
                    self.store.queue_person(p, it.pid)
                    self.store.queue_helper_rows(p, it.pid)
                replies = await p.execute()
        except Exception as exc:
            raise item_failure(exc) from exc
        per = 7
        planning: list[tuple[_Item, rules.PersonView, int, list[Any], bool, tuple[str, str]]] = []
        for n, it in enumerate(wave):
            claim, raw_rec, fields, bal, rows, as_rel, as_holder = replies[n * per:(n + 1) * per]
            try:
                if claim[0] is not None:
                    if text(claim[0]) != it.fp:
                        raise _reused(it.req.request_id)
                    if text(claim[1] or b"") == "DONE":
                        outcomes[it.index] = self._replay(Claim("DONE", claim[2] or b"", error=_claim_error(claim)),
                                                          SettlementRecord.parse(raw_rec))
                    else:
                        staged.append(it)  # a crashed or concurrent attempt: the staged path resumes it
                    continue
                if raw_rec:
                    staged.append(it)
                    continue
                patient = self.payable(it.req, it.pid, self.store.person_view(it.pid, fields, bal))
                planning.append((it, patient, int(bal) if bal is not None else -1, rows,
                                 bool(as_rel or as_holder), self.wallet_question(it.req, patient)))
            except DomainError as exc:
                outcomes[it.index] = _failed(exc)
        # What only some items need: their helpers (one pipeline) and their wallets (one call).
        # Helpers matter only when the own account leaves something (or is not used: the reason says so).
        needs_helpers = [x for x in planning if x[3] and (
            not x[0].req.use_account or rules.own_share(x[0].req.amount_fen, True, x[1]) < x[0].req.amount_fen)]
        asks = [x for x in planning if x[5][0]]
        helper_reads: list[Any] = []
        wallet_answers: list[tuple[int | None, str]] = []
        wallet_down: list[DomainError] = []

        async def read_helpers() -> None:
            if needs_helpers:
                async with self.ctx.r.pipeline(transaction=False) as p:
                    for x in needs_helpers:
                        self.store.queue_helpers(p, x[3])
                    helper_reads.extend(await p.execute())

        wallet_down: list[DomainError] = []

        async def read_wallets() -> None:
            if asks:
                try:
                    wallet_answers.extend(await self.ctx.wallet.balances([(x[0].pid, x[5][1]) for x in asks]))
                except DomainError as exc:  # only the items that must ask the wallet fail (nothing written)
                    wallet_down.append(exc)

        try:
            await asyncio.gather(read_helpers(), read_wallets())
        except Exception as exc:
            raise item_failure(exc) from exc
        if wallet_down:
            for x in asks:
                outcomes[x[0].index] = _failed(wallet_down[0])
            planning = [x for x in planning if not x[5][0]]
            asks = []
        helpers_of: dict[int, list[rules.HelperCandidate]] = {}
        offset = 0
        for x in needs_helpers:
            width = 2 * len(x[3])
            helpers_of[x[0].index] = self.store.helpers_from(x[3], helper_reads[offset:offset + width])
            offset += width
        wallet_of = {x[0].index: ans for x, ans in zip(asks, wallet_answers, strict=True)}
        ready: list[_Ready] = []
        for it, patient, raw_bal, _, proxies, (ask, why) in planning:
            wallet = wallet_of.get(it.index, (None, why)) if ask else (None, why)
            plan = self.plan(it.req, patient, wallet, helpers_of.get(it.index, []), proxies)
            if plan.wallet_pay > 0:
                staged.append(it)  # a wallet debit is a call to another service: staged
                continue
            ready.append(_Ready(it, self.record_of(it.req, it.pid, patient, plan, "SETTLED"), raw_bal))
        return await self._apply(ready, outcomes, staged)

    async def _apply(self, ready: list[_Ready], outcomes: list[pb.SettleOutcome | None],
                     staged: list[_Item]) -> list[_Item]:
        if not ready:
            return []
        try:
            async with self.ctx.r.pipeline(transaction=False) as p:
                for x in ready:
                    keys, args = self._apply_call(x)
                    await self.ctx.lua["settle_apply"](keys=keys, args=args, client=p)
                replies = await p.execute()
        except Exception as exc:  # noqa: BLE001 - whether applied is unknown: a retry of the id finds out
            for x in ready:
                outcomes[x.item.index] = _failed(item_failure(exc))
            return []
        retry: list[_Item] = []
        for x, reply in zip(ready, replies, strict=True):
            status = text(reply[0])
            if status == "OK":
                afters = [int(text(v)) for v in reply[1:]]
                rec = replace(x.record, own_bal_after=afters[0], charges=tuple(
                    replace(c, balance_after=a) for c, a in zip(x.record.charges, afters[1:], strict=True)))
                _log_settled(rec, "atomic")
                outcomes[x.item.index] = pb.SettleOutcome(response=pb.SettleResponse(result=rec.result()))
                self.ctx.fault("settle.after_finish")
            elif status == "REUSED":
                outcomes[x.item.index] = _failed(_reused(x.item.req.request_id))
            elif status in ("PENDING", "BUSY") or x.item.conflicts >= MAX_CONFLICTS:
                staged.append(x.item)
            else:  # CONFLICT (a value the plan saw has changed) or DONE (a duplicate finished first)
                x.item.conflicts += 1
                retry.append(x.item)
        return retry

    def _apply_call(self, x: _Ready) -> tuple[list[str], list[Any]]:
        rec, pid, k = x.record, x.item.pid, self.k
        lock_key, _ = self.ctx.locks.keys(k.person_tag(pid))
        keys = [self.ctx.idem.key(rec.sid), k.settlement(pid, rec.sid), k.person(pid), k.account(pid), k.ledger(pid),
                lock_key, k.consumption(pid), k.consumption_index(pid), k.settlement_index(rec.sid)]
        args: list[Any] = [rec.sid, x.item.fp, rec.at, pid, x.expected_balance, rec.acct_pay, len(rec.charges)]
        for c in rec.charges:
            hid = c.helper_id
            keys += [k.person(hid), k.account(hid), k.ledger(hid), k.applied(hid), k.consumption(hid),
                     k.consumption_index(hid)]
            args += [hid, c.amount, consumption_field(rec.sid, hid), consumption_json(rec, c, "HELPER", "SETTLED"),
                     consumption_json(rec, c, "MEMBER", "SETTLED")]
        args += rec.args(without=("state", "own_bal_after", "charges"))
        return keys, args

    def _replay(self, claim: Claim, rec: SettlementRecord | None) -> pb.SettleOutcome:
        """The first answer of a finished settlement: its recorded refusal, else its record."""
        if claim.error is not None:
            return _failed(claim.error)
        if claim.response:
            return pb.SettleOutcome(response=pb.SettleResponse.FromString(claim.response))
        if rec is None:
            return _failed(errors.unavailable("SETTLEMENT_IN_PROGRESS", "the settlement has not finished; retry"))
        return pb.SettleOutcome(response=pb.SettleResponse(result=rec.result()))

    # --- the staged path -----------------------------------------------------------------

    async def _staged_outcome(self, it: _Item, outcomes: list[pb.SettleOutcome | None]) -> None:
        try:
            outcomes[it.index] = await self._staged(it)
        except DomainError as exc:
            outcomes[it.index] = _failed(exc)
        except Exception as exc:  # noqa: BLE001 - one item's failure must not fail its neighbours
            outcomes[it.index] = _failed(item_failure(exc))

    async def _staged(self, it: _Item) -> pb.SettleOutcome:
        sid, pid, ctx = it.req.request_id, it.pid, self.ctx
        entry = f"S|{pid}|{sid}"
        async with ctx.r.pipeline(transaction=False) as p:  # the recovery loop finds it from here on
            p.zadd(self.k.open_settlements(), {entry: ctx.clock.now_ms()}, nx=True)
            await ctx.idem.queue_begin(p, sid, it.fp, "settle", pid, ctx.clock.now_ms())
            added, raw_claim = await p.execute()
        try:
            claim = ctx.idem.parse_claim(sid, raw_claim)
        except DomainError:  # the id was used for another request: leave no trace (the entry was ours only if added)
            if added:
                await ctx.r.zrem(self.k.open_settlements(), entry)
            raise
        if claim.state == "DONE":
            if added:
                await ctx.r.zrem(self.k.open_settlements(), entry)
            return self._replay(claim, await self.store.record(pid, sid))
        ctx.fault("settle.after_claim")
        opened = False
        try:
            lease = await ctx.acquire(pid)
            try:
                rec = await self.store.record(pid, sid)
                if rec is None:
                    rec = await self._open(it, lease)
                opened = True
                rec = await self.drive(rec, lease)
                await self.close(rec, lease, entry, it.fp)
            finally:
                await ctx.locks.release(lease)
        except DomainError as exc:
            if opened:
                raise exc.after_effects() from exc
            async with ctx.r.pipeline(transaction=False) as p:  # nothing was written: leave no trace
                if added:  # the entry is this attempt's (a concurrent duplicate's stays)
                    p.zrem(self.k.open_settlements(), entry)
                if ctx.idem.drops_claim(exc, claim.state):
                    p.delete(ctx.idem.key(sid))
                await p.execute()
            raise
        ctx.fault("settle.after_finish")
        return pb.SettleOutcome(response=pb.SettleResponse(result=rec.result()))

    async def _open(self, it: _Item, lease: Lease) -> SettlementRecord:
        """Plan under the lock and open the record with the own-account debit (settle_open.lua)."""
        k, pid = self.k, it.pid
        for _ in range(MAX_CONFLICTS):
            patient, plan, _ = await self.read_and_plan(it.req, pid)
            rec = self.record_of(it.req, pid, patient, plan, "OPEN")
            status, detail = await self.ctx.lua["settle_open"](
                keys=[k.settlement(pid, rec.sid), k.account(pid), k.ledger(pid), k.fence(pid)],
                args=[lease.token, rec.sid, rec.acct_pay, rec.at, *rec.args(without=("own_bal_after",))])
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
        id; what cannot be taken falls to cash), then the record. A final record is returned as is."""
        if rec.state != "OPEN":
            return rec
        ctx, k, sid, pid = self.ctx, self.k, rec.sid, rec.patient
        ctx.fault("settle.after_own_debit")
        wallet_pay, wallet_after, wallet_reason = rec.wallet_pay, rec.wallet_bal_after, rec.wallet_reason
        if wallet_pay > 0:
            after = await ctx.wallet.debit(sid, pid, wallet_pay, rec.category, rec.place)
            if after is None:  # spent elsewhere since planning: its share falls to cash
                wallet_pay, wallet_reason = 0, "WALLET_INSUFFICIENT"
            else:
                wallet_after = after
        ctx.fault("settle.after_wallet_debit")
        async with ctx.r.pipeline(transaction=False) as p:
            for c in rec.charges:
                hid = c.helper_id
                await ctx.lua["settle_charge"](
                    keys=[k.person(hid), k.account(hid), k.ledger(hid), k.applied(hid), k.consumption(hid),
                          k.consumption_index(hid)],
                    args=[sid, c.amount, ctx.clock.now_ms(), consumption_field(sid, hid),
                          consumption_json(rec, c, "HELPER", "SETTLED")], client=p)
            p.set(k.settlement_index(sid), pid)
            *charged, _ = await p.execute()
        done: list[ChargeDone] = []
        helper_reason = rec.helper_reason
        for c, (status, detail) in zip(rec.charges, charged, strict=True):
            status = text(status)
            if status in ("OK", "DUP"):
                done.append(replace(c, balance_after=int(text(detail))))
            else:  # the helper's balance or status changed since planning: this share is cash
                helper_reason = "NO_ACTIVE_HELPER" if status == "INACTIVE" else "HELPER_INSUFFICIENT"
        ctx.fault("settle.after_helper_debit")
        final = rec.settled(wallet_pay=wallet_pay, wallet_after=wallet_after, wallet_reason=wallet_reason,
                            charges=tuple(done), helper_reason=helper_reason)
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
        _log_settled(final, "staged")
        return final

    async def close(self, rec: SettlementRecord, lease: Lease, entry: str, fp: str = "") -> None:
        """The request id answered (DONE: the record is the answer), the open entry gone."""
        claim = ["state", "DONE"]
        if fp:
            claim += ["fp", fp, "op", "settle", "subject", rec.patient]
        async with self.ctx.r.pipeline(transaction=False) as p:
            p.hset(self.ctx.idem.key(rec.sid), items=claim)
            p.zrem(self.k.open_settlements(), entry)
            await p.execute()

    # --- reads ---------------------------------------------------------------------------

    async def get_settlement(self, req: pb.GetSettlementRequest) -> pb.GetSettlementResponse:
        validate_request_id(req.settlement_id)
        rec = await self.store.record_by_id(req.settlement_id)
        if rec is None:
            raise errors.not_found("SETTLEMENT_NOT_FOUND", f"no settlement {req.settlement_id}")
        if rec.state == "OPEN":
            raise errors.unavailable("SETTLEMENT_IN_PROGRESS", "the settlement has not finished; it will be "
                                     "finished shortly, retry")
        result = rec.result()
        result.state = "REVERSED" if rec.state == "REVERSED" else "SETTLED"
        return pb.GetSettlementResponse(result=result)


def _failed(exc: DomainError) -> pb.SettleOutcome:
    return pb.SettleOutcome(error=error_item(exc))


def _reused(request_id: str) -> DomainError:
    return errors.exists("IDEMPOTENCY_KEY_REUSED", f"request_id {request_id} was already used for a different "
                         "request", request_id=request_id)


def _claim_error(claim: list[Any]) -> DomainError | None:
    err = text(claim[3] or b"")
    return DomainError.from_dict(json.loads(err)) if err else None


def _log_settled(rec: SettlementRecord, path: str) -> None:
    event(log, "settled", patient=rec.patient, settlement=rec.sid, amount_fen=rec.amount, acct_pay=rec.acct_pay,
          wallet_pay=rec.wallet_pay, mulaid_pay=rec.mulaid_pay, helpers=",".join(c.helper_id for c in rec.charges),
          cash_pay=rec.cash_pay, helper_reason=rec.helper_reason, path=path)
