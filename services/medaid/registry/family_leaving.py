"""Leaving a pooled family account (SPEC §3b, §5b): the RPCs remove, leave, dissolve and 回拨, and the
ends that a status change, a move, a death or a second read after a write causes, each under the
family's lock with the shares returned to the personal accounts before it answers (or by the recovery
loop: `family_money.py`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from medaid.common import errors
from medaid.common.errors import DomainError
from medaid.common.logs import event
from medaid.common.rpc import derived_id
from medaid.common.values import text
from medaid.registry import family_rules, rules, validate
from medaid.registry.context import Opening, lock_lost
from medaid.registry.family_money import FamilyMoney, parse_returns, returns_entry
from medaid.registry.family_reads import validate_family_id
from medaid.registry.v1 import family_pb2 as fpb

log = logging.getLogger("medaid.registry")
# family_end.lua tries of one ending whose family changed meanwhile (FamilyLeaving._end): a member
# invited, an invitation answered, a share spent or given since the read it was judged on.
END_ATTEMPTS = 5
T = TypeVar("T")


class PlaceBeganLater(Exception):
    """A life event's end of a family place that began after the event (family_end.lua's LATER)."""


class FamilyLeaving(FamilyMoney):
    # --- leaving, with the shares returned ------------------------------------------------

    async def remove(self, req: fpb.RemoveMemberRequest) -> fpb.RemoveMemberResponse:
        family_rules.require_pooled(self.ctx.policy)
        validate_family_id(req.family_id)
        creator = validate.id_number(req.creator_id_number, "creator_id_number")
        member = validate.id_number(req.member_id_number, "member_id_number")

        async def work(opening: Opening) -> fpb.RemoveMemberResponse:
            returned = await self._end("REMOVE", req.family_id, creator, member, req.request_id, "REMOVED", opening)
            return await self.leaving_answer(fpb.RemoveMemberResponse, req.family_id, returned)

        return await self.ctx.once_announced(req, "family_remove", req.family_id, fpb.RemoveMemberResponse,  # type: ignore[no-any-return]
                                             returns_entry(req.family_id, req.request_id), work)

    async def leave(self, req: fpb.LeaveFamilyAccountRequest) -> fpb.LeaveFamilyAccountResponse:
        family_rules.require_pooled(self.ctx.policy)
        validate_family_id(req.family_id)
        member = validate.id_number(req.member_id_number, "member_id_number")

        async def work(opening: Opening) -> fpb.LeaveFamilyAccountResponse:
            returned = await self._end("LEAVE", req.family_id, member, member, req.request_id, "LEFT", opening)
            return await self.leaving_answer(fpb.LeaveFamilyAccountResponse, req.family_id, returned)

        return await self.ctx.once_announced(req, "family_leave", req.family_id, fpb.LeaveFamilyAccountResponse,  # type: ignore[no-any-return]
                                             returns_entry(req.family_id, req.request_id), work)

    async def dissolve(self, req: fpb.DissolveFamilyAccountRequest) -> fpb.DissolveFamilyAccountResponse:
        family_rules.require_pooled(self.ctx.policy)
        validate_family_id(req.family_id)
        creator = validate.id_number(req.creator_id_number, "creator_id_number")

        async def work(opening: Opening) -> fpb.DissolveFamilyAccountResponse:
            returned = await self._end("DISSOLVE", req.family_id, creator, "", req.request_id, "DISSOLVED", opening)
            return await self.leaving_answer(fpb.DissolveFamilyAccountResponse, req.family_id, returned)

        return await self.ctx.once_announced(req, "family_dissolve", req.family_id, fpb.DissolveFamilyAccountResponse,  # type: ignore[no-any-return]
                                             returns_entry(req.family_id, req.request_id), work)

    async def withdraw(self, req: fpb.WithdrawContributionRequest) -> fpb.WithdrawContributionResponse:
        policy = self.ctx.policy
        family_rules.require_pooled(policy)
        validate_family_id(req.family_id)
        pid = validate.id_number(req.contributor_id_number, "contributor_id_number")
        family_rules.require_withdrawal(policy)

        async def work(opening: Opening) -> fpb.WithdrawContributionResponse:
            returned = await self._end("WITHDRAW", req.family_id, pid, pid, req.request_id, "", opening)
            return await self.leaving_answer(fpb.WithdrawContributionResponse, req.family_id, returned)

        return await self.ctx.once_announced(req, "family_withdraw", req.family_id, fpb.WithdrawContributionResponse,  # type: ignore[no-any-return]
                                             returns_entry(req.family_id, req.request_id), work)

    async def end_memberships_of(self, pid: str, reason: str, op_id: str) -> list[str]:
        """SPEC §5b, for status changes, moves and death: every family account `pid` created is
        dissolved (its shares returned), and every other membership or invitation of theirs ends
        (their share returned). `reason` is TERMINATED, MOVED or DECEASED; `op_id` the request id of the
        caller that wrote the event on the person's history, from which each step's id is derived (a
        retry repeats none); only the places the person had by the event's time end (`_end_for_event`).
        Returns the family ids."""
        await self.finish_event_returns(op_id, pid)
        ended = []
        by = await self.ctx.event_at(pid, op_id)
        for fid in sorted(await self.memberships(pid)):
            fam = await self.family_hash(fid)
            if fam["state"] != "ACTIVE":
                continue
            op = derived_id("famend", op_id, fid)
            if fam["creator"] == pid:
                done = await self._end_for_event("DISSOLVE", fid, "", op, f"CREATOR_{reason}", by)
            else:
                done = await self._end_for_event("REMOVE", fid, pid, op, reason, by)
            if done:
                ended.append(fid)
        return ended

    async def finish_event_returns(self, op_id: str, pid: str) -> None:
        """Shares on their way home that the steps after life event `op_id` of `pid` would not find, each
        credited once under the family's lock (`pay_returns`) before the event goes on: a death then pays
        them out with the rest of the balance, and no event is answered with shares in flight.
        - Those an earlier attempt of the event took out of a family account (family_end.lua) and had not
          credited when its process died: that ending took the place out of the person's memberships (the
          account dissolved, their place ENDED), so the steps that go by the memberships no longer find it.
          Found by their recovery entries (`returns_entry`, whose op is a step id derived from `op_id`);
          the entry is withdrawn, as the recovery loop does (`recover`).
        - Those owed to `pid` by another ending cut the same way (a leaving, a dissolution, a 回拨, the
          second read after an invitation or a creation): the account is no longer the person's either.
          The entry stays: the recovery loop, or a resend of that request, answers it (the returns DONE)."""
        k = self.k
        found = [(text(raw), score) async for raw, score in
                 self.ctx.r.zscan_iter(k.open_settlements(), match="L|*")]
        for entry, score in found:
            _, fid, op = entry.split("|", 2)
            own = await self._step_of(op_id, fid, op)
            if not own and not await self._owed_to(pid, fid, op):
                continue
            lease = await self._lock(fid)
            try:
                returns = await self.ctx.r.hget(k.family_returns(fid), op)
                if returns is not None:  # else its attempt has not ended the place yet: it is that attempt's
                    await self.pay_returns(fid, op, text(returns))
                    if own:
                        await self.ctx.withdraw(entry, score)
            finally:
                await self.ctx.locks.release(lease)

    async def _owed_to(self, pid: str, fid: str, op: str) -> bool:
        """Whether the returns of ending `op` of account `fid` are still to be credited, some to `pid`."""
        returns = await self.ctx.r.hget(self.k.family_returns(fid), op)
        if returns is None:
            return False
        state, items = parse_returns(text(returns))
        return state == "PENDING" and any(c == pid for c, _ in items)

    async def _step_of(self, op_id: str, fid: str, op: str) -> bool:
        """Whether `op` is the id of a step of life event `op_id` in family account `fid`: its dissolution
        or a removal (`end_memberships_of`), or the end of a member's place on a move
        (`end_cross_region_memberships`)."""
        if op == derived_id("famend", op_id, fid):
            return True
        return op.startswith("famreg-") and any(op == derived_id("famreg", op_id, fid, m)
                                                for m in await self.members(fid))

    async def _end_for_event(self, mode: str, fid: str, target: str, op: str, reason: str, by: int) -> bool:
        """A place ended by a life event that happened at `by` (its time on the person's history): the
        account dissolved or `target` removed, unless the place began after the event (family_end.lua
        answers LATER: an event finished late, by a resend or the recovery loop, after the person was
        ACTIVE again or back in the 统筹区, leaves what they began since). False: left."""
        try:
            await self._end(mode, fid, "", target, op, reason, by=by)
        except DomainError as exc:
            if exc.reason not in ("NOT_A_MEMBER", "FAMILY_NOT_ACTIVE"):
                raise
        except PlaceBeganLater:
            return False
        return True

    async def end_if_ended(self, fid: str, creator_id: str, member_id: str, creator_region: str, op_id: str) -> str:
        """After a write that put `member_id` (or, '' , the creator `creator_id` alone) in account `fid`:
        a status change, a move or a death writes the person first, then ends the memberships it finds,
        and one that looked before this write left the new place to the writer, which reads the people
        again now and ends it as that change would have (`family_rules.membership_end_reason`: the account
        dissolved, or the member removed, shares returned). `creator_region`: the creator's 统筹区 the
        write was checked on; `op_id` a request id of the caller. Returns the end reason ('' : none)."""
        creator = await self.store.person(creator_id)
        member = await self.store.person(member_id) if member_id else None
        why = family_rules.membership_end_reason(self.ctx.policy, creator, member, creator_region)
        if not why:
            return ""
        dissolve = family_rules.dissolves(why)
        try:
            await self._end("DISSOLVE" if dissolve else "REMOVE", fid, "", "" if dissolve else member_id,
                            derived_id("famjoin", op_id, fid, member_id), why)
        except DomainError as exc:
            if exc.reason not in ("NOT_A_MEMBER", "FAMILY_NOT_ACTIVE"):  # the change ended it first
                raise
        event(log, "family place ended", family=fid, member=member_id or creator_id, because=why)
        return why

    async def end_cross_region_memberships(self, pid: str, region: str, op_id: str) -> list[str]:
        """SPEC §3b, §5b, for a move to 统筹区 `region`, where it leaves a membership's two sides apart
        (`rules.regions_apart`: a province with `cross_region_allowed = false`): a member who moved away
        from the creator's 统筹区 leaves their family account, and a creator who moved keeps only the
        members (and invitations) of their new 统筹区; each share is returned. Each step once per
        `op_id`, the request id of the move, and only for a place taken by the move's time
        (`_end_for_event`). Returns the family ids a membership ended in."""
        await self.finish_event_returns(op_id, pid)
        ended = []
        by = await self.ctx.event_at(pid, op_id)
        for fid in sorted(await self.memberships(pid)):
            fam = await self.family_hash(fid)
            if fam["state"] != "ACTIVE":
                continue
            if fam["creator"] == pid:
                targets = [(m, m, "CREATOR_MOVED_REGION") for m, row in (await self.members(fid)).items()
                           if m != pid and row.get("state") in ("INVITED", "MEMBER")]
            else:
                targets = [(pid, fam["creator"], "MOVED_REGION")]
            for target, other, reason in targets:
                if not rules.regions_apart(self.ctx.policy,
                                           text(await self.ctx.r.hget(self.k.person(other), "region") or b""), region):
                    continue
                if await self._end_for_event("REMOVE", fid, target, derived_id("famreg", op_id, fid, target), reason,
                                             by) and fid not in ended:
                    ended.append(fid)
        return ended

    async def _end(self, mode: str, fid: str, actor: str, target: str, op: str,
                   reason: str, opening: Opening | None = None, by: int = 0) -> list[tuple[str, int]]:
        """One leaving operation under the family's lock; the shares it takes out are returned to
        the personal accounts before it answers (or by the recovery loop). `opening`: the request's own,
        whose id was claimed with the entry (`Context.once_announced`), which then also drops the entry
        of a refusal; else (a step of a life event) the entry is written and withdrawn here. `by`: the
        time of the life event ending the place (`_end_for_event`); PlaceBeganLater where it began after.
        It is judged (`_judged`) before the lock, where a refusal writes nothing, and again under the
        lock on a fresh read, which family_end.lua checks still stands as it applies the ending."""
        k, ctx = self.k, self.ctx
        await self._unless_ended(fid, op, lambda: self._judged(mode, fid, actor, target, by))
        entry = returns_entry(fid, op)
        if opening is None:
            await ctx.r.zadd(k.open_settlements(), {entry: ctx.clock.now_ms()}, nx=True)
        ctx.fault("family.after_entry")
        # Only the family lock's holder can tell that no returns of `op` are pending: busy (FAMILY_BUSY)
        # or overtaken (STALE), this attempt leaves the entry, which may be an earlier attempt's whose
        # shares are out of the account but not yet credited; the recovery loop judges it under the lock.
        lease = await self._lock(fid)
        try:
            # the loop may have dropped it (and freed the request's id) while this request stalled
            mark = await ctx.hold(opening) if opening is not None else await ctx.announce_held(entry)
            for _ in range(END_ATTEMPTS):
                try:
                    seen = await self._unless_ended(fid, op, lambda: self._judged(mode, fid, actor, target, by))
                except (DomainError, PlaceBeganLater):  # refused, or not the event's place: nothing written
                    if opening is None:
                        await ctx.withdraw(entry, mark)
                    raise
                creator, guard = seen if seen is not None else ("", ["", "", ""])  # None: it answers DUP
                # whose memberships may end: every member's where the account is dissolved (family_end.lua
                # answers AGAIN where one it ends is not among them, a member invited since this read)
                people = [text(p) for p in await ctx.r.hkeys(k.family_members(fid))] \
                    if mode == "DISSOLVE" else [target]
                ctx.fault("family.before_end")
                status, detail = await ctx.lua["family_end"](
                    keys=[*self.money_keys(fid)[:2], k.family_shares(fid), k.family_lots(fid),
                          k.family_history(fid), k.family_returns(fid), lease.fence_key,
                          k.family_created_by(creator), *(k.families_of(p) for p in people)],
                    args=[mode, fid, actor, target, op, ctx.clock.now_ms(), reason, lease.token, *people, *guard])
                if text(status) != "AGAIN":
                    break
            else:
                raise errors.unavailable("FAMILY_BUSY", "the family account changed while it was being ended; "
                                         "retry with the same request id")
            if text(status) == "STALE":
                raise lock_lost()
            if opening is not None:
                opening.opened = True
            ctx.fault("family.after_end")
            try:
                returned = await self.pay_returns(fid, op, text(detail))
            except DomainError as exc:
                raise exc.after_effects() from exc
            if opening is None:  # else it goes with the request's answer (Context.once_announced)
                await ctx.withdraw(entry, mark)
        finally:
            await ctx.locks.release(lease)
        event(log, "family " + mode.lower(), family=fid, target=target, returned=sum(a for _, a in returned))
        return returned

    async def _unless_ended(self, fid: str, op: str, check: Callable[[], Awaitable[T]]) -> T | None:
        """`check`'s answer and refusals, unless operation `op` already ended (None: a resend, or a
        re-drive of a claim found pending). A concurrent duplicate of the request may end it between the
        look at its returns and `check`'s reads, and `check` would then refuse what was done: its refusal
        stands only if `op` has still not ended after it (family_end.lua records the returns in the same
        step as the ending, so an ending `check` saw is found then)."""
        returns = self.k.family_returns(fid)
        if await self.ctx.r.hget(returns, op) is not None:
            return None
        try:
            return await check()
        except DomainError:
            if await self.ctx.r.hget(returns, op) is None:
                raise
        return None

    async def _judged(self, mode: str, fid: str, actor: str, target: str, by: int) -> tuple[str, list[Any]]:
        """Ending `target`'s place (or, DISSOLVE, the account) judged on a read now: its refusals
        (`family_rules.check_end`), PlaceBeganLater where a life event at `by` does not reach the place
        (`family_rules.began_after`). Returns the account's creator and what family_end.lua is to find
        unchanged (else it answers AGAIN): the account's state, the target's member entry and, for a
        回拨 (whose rule reads it), their share."""
        k = self.k
        async with self.ctx.r.pipeline(transaction=False) as p:
            p.hmget(k.family(fid), ["state", "creator", "created_at"])
            p.hget(k.family_members(fid), target)
            p.hget(k.family_shares(fid), target)
            (state, creator, created_at), member, share = await p.execute()
        m = json.loads(text(member)) if member else {}
        view = family_rules.EndView(
            state=text(state or b""), creator=text(creator or b""), created_at=text(created_at or b""),
            target_state=str(m.get("state", "")), joined_at=str(m.get("joined_at", "")),
            invited_at=str(m.get("invited_at", "")), share=int(share or 0))
        family_rules.check_end(self.ctx.policy, mode, view, actor, target)
        if family_rules.began_after(mode, view, by):
            raise PlaceBeganLater(fid)
        return view.creator, [view.state, member or b"", text(share or b"0") if mode == "WITHDRAW" else ""]
