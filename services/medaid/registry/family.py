"""The pooled family account (家庭共济账户, SPEC §3b): create, invite, respond, 划拨, 回拨, leave, remove,
dissolve, read; and the two money steps the settlement engine uses (`charge`, `refund`).

Keys: every family account of the province lives on one slot `{fam}` (keys.py), so a structural rule
and the write it guards are one script (`lua/family_*.lua`). Money that crosses to a personal account
(`{p:<id>}`) is crash-safe the way settlements are: an entry in `Keys.open_settlements()` is written
before the first effect and removed after the last, and `recover` finishes what a dead process left:

    X|<contributor>|<transfer id>   划拨: debit (fenced, contributor's lock) → credit lot → finish
    L|<family>|<operation id>       returns: shares leave the account (fenced, family lock) → each
                                    personal account credited once → returns DONE
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from medaid.common import errors
from medaid.common.errors import DomainError
from medaid.common.lock import Lease, LockBusy
from medaid.common.logs import event
from medaid.common.v1 import common_pb2 as cpb
from medaid.common.values import text
from medaid.registry import family_rules, rules, validate
from medaid.registry.context import LOCK_TTL_MS, LOCK_WAIT_MS, Context, lock_lost
from medaid.registry.records import ChargeDone, SettlementRecord, decode_charges
from medaid.registry.store import Store
from medaid.registry.v1 import family_pb2 as fpb
from medaid.registry.v1 import registry_pb2 as pb

log = logging.getLogger("medaid.registry")

HISTORY_LIMIT = 200
MEMBER_STATES = {"INVITED": fpb.MEMBERSHIP_STATE_INVITED, "MEMBER": fpb.MEMBERSHIP_STATE_MEMBER,
                 "DECLINED": fpb.MEMBERSHIP_STATE_DECLINED, "EXPIRED": fpb.MEMBERSHIP_STATE_EXPIRED,
                 "ENDED": fpb.MEMBERSHIP_STATE_ENDED}


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


class Family:
    def __init__(self, ctx: Context, store: Store) -> None:
        self.ctx = ctx
        self.store = store
        self.k = ctx.k

    # --- keys ------------------------------------------------------------------------------

    def money_keys(self, fid: str) -> list[str]:
        k = self.k
        return [k.family(fid), k.family_members(fid), k.family_lots(fid), k.family_shares(fid),
                k.family_applied(fid), k.family_history(fid)]

    async def _lock(self, fid: str) -> Lease:
        try:
            return await self.ctx.locks.acquire(self.k.family_lock_tag(fid), LOCK_TTL_MS, LOCK_WAIT_MS)
        except LockBusy:
            raise errors.unavailable("FAMILY_BUSY", "another change to this family account is in progress; "
                                     "retry with the same request id") from None

    # --- reads -----------------------------------------------------------------------------

    async def family_hash(self, fid: str) -> dict[str, str]:
        raw = await self.ctx.r.hgetall(self.k.family(fid))
        if not raw:
            raise family_rules.structure_error("FAMILY_NOT_FOUND", self.ctx.policy)
        return {text(a): text(b) for a, b in raw.items()}

    async def members(self, fid: str) -> dict[str, dict[str, str]]:
        raw = await self.ctx.r.hgetall(self.k.family_members(fid))
        return {text(a): json.loads(text(b)) for a, b in raw.items()}

    async def account_pb(self, fid: str) -> fpb.FamilyAccount:
        k, now = self.k, self.ctx.clock.now_ms()
        async with self.ctx.r.pipeline(transaction=False) as p:
            p.hgetall(k.family(fid))
            p.hgetall(k.family_members(fid))
            p.hgetall(k.family_shares(fid))
            p.lrange(k.family_history(fid), -HISTORY_LIMIT, -1)
            fam_raw, members_raw, shares_raw, hist_raw = await p.execute()
        if not fam_raw:
            raise family_rules.structure_error("FAMILY_NOT_FOUND", self.ctx.policy)
        fam = {text(a): text(b) for a, b in fam_raw.items()}
        members = []
        for pid, raw in sorted(members_raw.items(), key=lambda x: json.loads(text(x[1]))["invited_at"]):
            m = json.loads(text(raw))
            state = m["state"]
            if state == "INVITED" and int(m["expires_at"]) <= now:
                state = "EXPIRED"
            members.append(fpb.FamilyMember(
                id_number=text(pid),
                relation=cpb.Relation.Value("RELATION_" + (m["relation"] or "UNSPECIFIED")),
                state=MEMBER_STATES[state], creator=m["creator"] == "1",
                temporary=m["temporary"] == "1", invited_at_unix_ms=int(m["invited_at"]),
                invitation_expires_at_unix_ms=int(m["expires_at"]), joined_at_unix_ms=int(m["joined_at"]),
                ended_at_unix_ms=int(m["ended_at"]), end_reason=m["end_reason"]))
        history = []
        for raw in hist_raw:
            e = json.loads(text(raw))
            history.append(fpb.FamilyEvent(kind=e["kind"], id_number=e["id"], amount_fen=int(e["amount"]),
                                           ref=e["ref"], at_unix_ms=int(e["at"]), detail=e["detail"]))
        return fpb.FamilyAccount(
            family_id=fid, creator_id_number=fam["creator"], state=fam["state"], balance_fen=int(fam["bal"]),
            members=members,
            shares=[fpb.ContributorShare(id_number=text(a), share_fen=int(b)) for a, b in sorted(shares_raw.items())],
            history=history, created_at_unix_ms=int(fam["created_at"]),
            dissolved_at_unix_ms=int(fam.get("dissolved_at", "0")), end_reason=fam.get("end_reason", ""))

    async def memberships(self, pid: str) -> dict[str, str]:
        """family id -> INVITED | MEMBER, for a person."""
        raw = await self.ctx.r.hgetall(self.k.families_of(pid))
        return {text(a): text(b) for a, b in raw.items()}

    async def view_for(self, pid: str) -> rules.FamilyView | None:
        """What the waterfall needs of the patient's family account (None: they belong to none).
        A person in several (non-exclusive provinces) is paid for by the first joined that holds money."""
        mine = await self.memberships(pid)
        if not mine:
            return None
        joined = sorted(fid for fid, state in mine.items() if state == "MEMBER")
        if not joined:  # invited only: the invitation is not accepted yet
            return rules.FamilyView(sorted(mine)[0], False, False, ())
        views = []
        for fid in joined:
            async with self.ctx.r.pipeline(transaction=False) as p:
                p.hget(self.k.family(fid), "state")
                p.hget(self.k.family_members(fid), pid)
                p.hgetall(self.k.family_lots(fid))
                state, member, lots = await p.execute()
            m = json.loads(text(member)) if member else {"state": "", "temporary": "0"}
            parsed = []
            for seq, value in lots.items():
                contributor, amount = text(value).split(":")
                parsed.append(rules.Lot(int(text(seq)), contributor, int(amount)))
            views.append(rules.FamilyView(fid, text(state or b"") == "ACTIVE" and m["state"] == "MEMBER",
                                          m["temporary"] == "1", tuple(sorted(parsed, key=lambda x: x.seq))))
        return next((v for v in views if v.active and v.balance > 0), views[0])

    async def get(self, req: fpb.GetFamilyAccountRequest) -> fpb.GetFamilyAccountResponse:
        family_rules.require_pooled(self.ctx.policy)
        fid = req.family_id
        if not fid:
            pid = validate.id_number(req.id_number, "id_number")
            created = await self.ctx.r.get(self.k.family_created_by(pid))
            mine = await self.memberships(pid)
            fid = text(created) if created else next(iter(sorted(f for f, s in mine.items() if s == "MEMBER")),
                                                       next(iter(sorted(mine)), ""))
            if not fid:
                raise family_rules.structure_error("FAMILY_NOT_FOUND", self.ctx.policy)
        validate_family_id(fid)
        return fpb.GetFamilyAccountResponse(account=await self.account_pb(fid))

    async def diagnose(self, req: pb.DiagnoseRequest, proxy_between: Callable[[str, str], Awaitable[bool]]
                       ) -> pb.DiagnoseResponse:
        """Why the family account of `helper_id_number` (its creator or a member) would not pay for
        `member_id_number` today (SPEC §3b diagnosis)."""
        member_id = validate.id_number(req.member_id_number, "member_id_number")
        helper_id = validate.id_number(req.helper_id_number, "helper_id_number")
        validate.admdvs(req.member_insured_admdvs, "member_insured_admdvs")
        category = validate.enum_name(cpb.Category, req.category, "CATEGORY_", "category") if req.category else ""
        if member_id == helper_id:
            raise errors.invalid("SELF_BINDING", "member and helper are the same person")
        policy, now = self.ctx.policy, self.ctx.clock.now_ms()
        member = await self.store.person(member_id)
        directory = ""
        if member is None or not member.active:
            found = await self.ctx.directory.lookup(member_id)
            directory = found[0] if found is not None else ""
        elsewhere = rules.member_elsewhere(policy, member, req.member_insured_admdvs, directory)
        created = await self.ctx.r.get(self.k.family_created_by(helper_id))
        theirs = await self.memberships(helper_id)
        fid = text(created) if created else next(iter(sorted(f for f, s in theirs.items() if s == "MEMBER")), "")
        state, temporary, active, bal = "", False, True, 0
        if fid:
            fam, m = await self.family_hash(fid), (await self.members(fid)).get(member_id, {})
            active, bal = fam["state"] == "ACTIVE", int(fam["bal"])
            state = m.get("state", "") if m.get("state") in ("INVITED", "MEMBER") else ""
            if state == "INVITED" and int(m["expires_at"]) <= now:
                state = "EXPIRED"
            temporary = m.get("temporary") == "1"
        findings = family_rules.diagnose(
            policy, member=member, elsewhere=elsewhere, state=state, family_active=active, temporary=temporary,
            family_balance=bal, proxy_bound=await proxy_between(helper_id, member_id), category=category)
        kind = (pb.BINDING_KIND_MUTUAL_AID if state == "MEMBER" else pb.BINDING_KIND_PROXY_ONLY
                if any(f.code == "PROXY_ONLY" for f in findings) else pb.BINDING_KIND_NONE)
        return pb.DiagnoseResponse(would_pay=not findings, binding_kind=kind, helper_balance_fen=bal,
                                   findings=[pb.Finding(code=f.code, message=f.message) for f in findings])

    # --- membership ----------------------------------------------------------------------

    async def create(self, req: fpb.CreateFamilyAccountRequest) -> fpb.CreateFamilyAccountResponse:
        policy = self.ctx.policy
        family_rules.require_pooled(policy)
        pid = validate.id_number(req.creator_id_number, "creator_id_number")
        committed = validate.attestation(req.commitment.method, req.commitment.attestation_id) \
            if req.HasField("commitment") else False
        if req.initial_transfer_fen:
            validate.amount(req.initial_transfer_fen, "initial_transfer_fen")

        async def work() -> fpb.CreateFamilyAccountResponse:
            creator = await self.store.person(pid)
            family_rules.check_creator(policy, creator, committed)
            if req.initial_transfer_fen:
                count = await self._month_count(pid)
                family_rules.check_transfer_in(policy, creator, is_creator=True, is_member=True,
                                               amount=req.initial_transfer_fen, month_count=count)
            k = self.k
            status, detail = await self.ctx.lua["family_create"](
                keys=[k.family_seq(), k.family_created_by(pid), k.families_of(pid), k.family_index()],
                args=[pid, self.ctx.clock.now_ms(), "1" if policy.exclusive else "0", req.request_id,
                      f"{k.family_tag()}:", policy.province])
            if text(status) == "ERR":
                raise family_rules.structure_error(text(detail), policy)
            fid = text(detail)
            if req.initial_transfer_fen:
                try:
                    await self._transfer(fid, pid, req.initial_transfer_fen, f"{req.request_id}:init")
                except DomainError as exc:
                    raise exc.after_effects() from exc
            event(log, "family created", family=fid, creator=pid)
            return fpb.CreateFamilyAccountResponse(account=await self.account_pb(fid))

        return await self.ctx.once(req, "family_create", pid, fpb.CreateFamilyAccountResponse, work)  # type: ignore[no-any-return]

    async def invite(self, req: fpb.InviteMemberRequest) -> fpb.InviteMemberResponse:
        policy = self.ctx.policy
        family_rules.require_pooled(policy)
        validate_family_id(req.family_id)
        creator_id = validate.id_number(req.creator_id_number, "creator_id_number")
        member_id = validate.id_number(req.member_id_number, "member_id_number")
        relation = validate.enum_name(cpb.Relation, req.relation, "RELATION_", "relation")

        async def work() -> fpb.InviteMemberResponse:
            fam = await self.family_hash(req.family_id)
            if fam["creator"] != creator_id:
                raise family_rules.structure_error("NOT_FAMILY_CREATOR", policy)
            creator, member = await self.store.person(creator_id), await self.store.person(member_id)
            directory = ""
            if member is None or not member.active:
                found = await self.ctx.directory.lookup(member_id)
                directory = found[0] if found is not None else ""
            family_rules.check_invitee(policy, creator, member, creator_id=creator_id, member_id=member_id,
                                       relation=relation, temporary=req.temporary, directory_province=directory)
            now = self.ctx.clock.now_ms()
            at_once = family_rules.joins_at_once(policy, member_id, self.ctx.clock.today(), req.temporary)
            k = self.k
            status, detail = await self.ctx.lua["family_invite"](
                keys=[k.family(req.family_id), k.family_members(req.family_id), k.families_of(member_id),
                      k.family_history(req.family_id)],
                args=[req.family_id, creator_id, member_id, relation, now, now + policy.invitation_ttl_ms,
                      policy.max_members, "1" if policy.exclusive else "0", "1" if at_once else "0",
                      "1" if req.temporary else "0", req.request_id])
            if text(status) == "ERR":
                raise family_rules.structure_error(text(detail), policy)
            event(log, "family invited", family=req.family_id, member=member_id, state=text(detail))
            return fpb.InviteMemberResponse(account=await self.account_pb(req.family_id))

        return await self.ctx.once(req, "family_invite", req.family_id, fpb.InviteMemberResponse, work)  # type: ignore[no-any-return]

    async def respond(self, req: fpb.RespondToInvitationRequest) -> fpb.RespondToInvitationResponse:
        policy = self.ctx.policy
        family_rules.require_pooled(policy)
        validate_family_id(req.family_id)
        member_id = validate.id_number(req.member_id_number, "member_id_number")
        verified = validate.attestation(req.verification.method, req.verification.attestation_id) \
            if req.HasField("verification") else False

        async def work() -> fpb.RespondToInvitationResponse:
            if req.accept:
                family_rules.check_accept(policy, member_id, self.ctx.clock.today(), verified)
                member = await self.store.person(member_id)
                if member is None or not member.active:
                    raise errors.refused("MEMBER_NOT_INSURED", "the member is not ACTIVE in this province (原因一)")
            k = self.k
            status, detail = await self.ctx.lua["family_respond"](
                keys=[k.family(req.family_id), k.family_members(req.family_id), k.families_of(member_id),
                      k.family_history(req.family_id)],
                args=[req.family_id, member_id, "1" if req.accept else "0", self.ctx.clock.now_ms(),
                      policy.max_members, "1" if policy.exclusive else "0", req.request_id])
            if text(status) == "ERR":
                raise family_rules.structure_error(text(detail), policy)
            return fpb.RespondToInvitationResponse(account=await self.account_pb(req.family_id))

        return await self.ctx.once(req, "family_respond", req.family_id, fpb.RespondToInvitationResponse, work)  # type: ignore[no-any-return]

    # --- leaving, with the shares returned ------------------------------------------------

    async def remove(self, req: fpb.RemoveMemberRequest) -> fpb.RemoveMemberResponse:
        family_rules.require_pooled(self.ctx.policy)
        validate_family_id(req.family_id)
        creator = validate.id_number(req.creator_id_number, "creator_id_number")
        member = validate.id_number(req.member_id_number, "member_id_number")

        async def work() -> fpb.RemoveMemberResponse:
            returned = await self._end("REMOVE", req.family_id, creator, member, req.request_id, "REMOVED")
            return fpb.RemoveMemberResponse(account=await self.account_pb(req.family_id),
                                            returned_fen=sum(a for _, a in returned))

        return await self.ctx.once(req, "family_remove", req.family_id, fpb.RemoveMemberResponse, work)  # type: ignore[no-any-return]

    async def leave(self, req: fpb.LeaveFamilyAccountRequest) -> fpb.LeaveFamilyAccountResponse:
        family_rules.require_pooled(self.ctx.policy)
        validate_family_id(req.family_id)
        member = validate.id_number(req.member_id_number, "member_id_number")

        async def work() -> fpb.LeaveFamilyAccountResponse:
            returned = await self._end("LEAVE", req.family_id, member, member, req.request_id, "LEFT")
            return fpb.LeaveFamilyAccountResponse(account=await self.account_pb(req.family_id),
                                                  returned_fen=sum(a for _, a in returned))

        return await self.ctx.once(req, "family_leave", req.family_id, fpb.LeaveFamilyAccountResponse, work)  # type: ignore[no-any-return]

    async def dissolve(self, req: fpb.DissolveFamilyAccountRequest) -> fpb.DissolveFamilyAccountResponse:
        family_rules.require_pooled(self.ctx.policy)
        validate_family_id(req.family_id)
        creator = validate.id_number(req.creator_id_number, "creator_id_number")

        async def work() -> fpb.DissolveFamilyAccountResponse:
            returned = await self._end("DISSOLVE", req.family_id, creator, "", req.request_id, "DISSOLVED")
            return fpb.DissolveFamilyAccountResponse(
                account=await self.account_pb(req.family_id),
                returned=[fpb.ContributorShare(id_number=c, share_fen=a) for c, a in returned])

        return await self.ctx.once(req, "family_dissolve", req.family_id, fpb.DissolveFamilyAccountResponse, work)  # type: ignore[no-any-return]

    async def withdraw(self, req: fpb.WithdrawContributionRequest) -> fpb.WithdrawContributionResponse:
        policy = self.ctx.policy
        family_rules.require_pooled(policy)
        validate_family_id(req.family_id)
        pid = validate.id_number(req.contributor_id_number, "contributor_id_number")

        async def work() -> fpb.WithdrawContributionResponse:
            if await self.ctx.r.hget(self.k.family_returns(req.family_id), req.request_id) is None:  # not a re-drive
                share = int(await self.ctx.r.hget(self.k.family_shares(req.family_id), pid) or 0)
                family_rules.check_withdrawal(policy, share)
            returned = await self._end("WITHDRAW", req.family_id, pid, pid, req.request_id, "")
            return fpb.WithdrawContributionResponse(account=await self.account_pb(req.family_id),
                                                    returned_fen=sum(a for _, a in returned))

        return await self.ctx.once(req, "family_withdraw", req.family_id, fpb.WithdrawContributionResponse, work)  # type: ignore[no-any-return]

    async def end_memberships_of(self, pid: str, reason: str, op_id: str) -> list[str]:
        """SPEC §5b, for status changes, moves and death: every family account `pid` created is
        dissolved (its shares returned), and every other membership or invitation of theirs ends
        (their share returned). `reason` is TERMINATED, MOVED or DECEASED; `op_id` a request id of the
        caller, from which each step's id is derived (a retry repeats none). Returns the family ids."""
        ended = []
        for fid in sorted(await self.memberships(pid)):
            fam = await self.family_hash(fid)
            if fam["state"] != "ACTIVE":
                continue
            op = f"{op_id}:{fid}"[-64:]
            try:
                if fam["creator"] == pid:
                    await self._end("DISSOLVE", fid, "", "", op, f"CREATOR_{reason}")
                else:
                    await self._end("REMOVE", fid, "", pid, op, reason)
            except DomainError as exc:
                if exc.reason not in ("NOT_A_MEMBER", "FAMILY_NOT_ACTIVE"):
                    raise
            ended.append(fid)
        return ended

    async def _end(self, mode: str, fid: str, actor: str, target: str, op: str,
                   reason: str) -> list[tuple[str, int]]:
        """One leaving operation under the family's lock; the shares it takes out are returned to
        the personal accounts before it answers (or by the recovery loop)."""
        k, ctx = self.k, self.ctx
        if await ctx.r.hget(k.family_returns(fid), op) is None:
            await self._check_end(mode, fid, actor, target)  # a refusal found before the lock writes nothing
        entry = returns_entry(fid, op)
        await ctx.r.zadd(k.open_settlements(), {entry: ctx.clock.now_ms()}, nx=True)
        try:
            lease = await self._lock(fid)
        except DomainError:
            await ctx.r.zrem(k.open_settlements(), entry)
            raise
        try:
            fam = await ctx.r.hget(k.family(fid), "creator")
            status, detail = await ctx.lua["family_end"](
                keys=[*self.money_keys(fid)[:2], k.family_shares(fid), k.family_lots(fid), k.family_history(fid),
                      k.family_returns(fid), lease.fence_key, k.family_created_by(text(fam or b""))],
                args=[mode, fid, actor, target, op, ctx.clock.now_ms(), reason, lease.token,
                      f"{k.family_tag()}:of:"])
            status = text(status)
            if status in ("ERR", "STALE"):
                await ctx.r.zrem(k.open_settlements(), entry)
                if status == "STALE":
                    raise lock_lost()
                raise family_rules.structure_error(text(detail), ctx.policy)
            ctx.fault("family.after_end")
            try:
                returned = await self._pay_returns(fid, op, text(detail))
            except DomainError as exc:
                raise exc.after_effects() from exc
        finally:
            await ctx.locks.release(lease)
        event(log, "family " + mode.lower(), family=fid, target=target, returned=sum(a for _, a in returned))
        return returned

    async def _check_end(self, mode: str, fid: str, actor: str, target: str) -> None:
        """family_end.lua's refusals, read before the lock (the script checks them again, atomically)."""
        fam, members = await self.family_hash(fid), await self.members(fid)
        code = ""
        if mode in ("REMOVE", "DISSOLVE") and actor and actor != fam["creator"]:
            code = "NOT_FAMILY_CREATOR"
        elif fam["state"] != "ACTIVE":
            code = "FAMILY_NOT_ACTIVE"
        elif mode != "DISSOLVE":
            state = members.get(target, {}).get("state", "")
            if target == fam["creator"] and mode != "WITHDRAW":
                code = "CREATOR_CANNOT_LEAVE"
            elif not (state == "MEMBER" or (mode == "REMOVE" and state == "INVITED")):
                code = "NOT_A_MEMBER"
        if code:
            raise family_rules.structure_error(code, self.ctx.policy)

    async def _pay_returns(self, fid: str, op: str, returns: str) -> list[tuple[str, int]]:
        """Credit each returned share once, then mark the returns DONE and drop the recovery entry."""
        k, ctx = self.k, self.ctx
        state, items = parse_returns(returns)
        if state == "PENDING":
            now = ctx.clock.now_ms()
            async with ctx.r.pipeline(transaction=False) as p:
                for pid, amount in items:
                    await ctx.lua["family_payout"](
                        keys=[k.account(pid), k.ledger(pid), k.applied(pid)],
                        args=[f"famret:{fid}:{op}", amount, "FAMILY_RETURN", fid, now], client=p)
                await p.execute()
            ctx.fault("family.after_payout")
            await ctx.lua["family_returned"](keys=[k.family_returns(fid)], args=[op])
        await ctx.r.zrem(k.open_settlements(), returns_entry(fid, op))
        return items

    # --- 划拨 ------------------------------------------------------------------------------

    async def transfer_in(self, req: fpb.TransferIntoFamilyAccountRequest) -> fpb.TransferIntoFamilyAccountResponse:
        family_rules.require_pooled(self.ctx.policy)
        validate_family_id(req.family_id)
        pid = validate.id_number(req.contributor_id_number, "contributor_id_number")
        validate.amount(req.amount_fen)

        async def work() -> fpb.TransferIntoFamilyAccountResponse:
            after = await self._transfer(req.family_id, pid, req.amount_fen, req.request_id)
            return fpb.TransferIntoFamilyAccountResponse(account=await self.account_pb(req.family_id),
                                                         balance_after_fen=after)

        return await self.ctx.once(req, "family_transfer", pid, fpb.TransferIntoFamilyAccountResponse, work)  # type: ignore[no-any-return]

    async def _month_count(self, pid: str) -> int:
        month = family_rules.month_of(self.ctx.clock.now_ms())
        return int(await self.ctx.r.hget(self.k.family_transfer_months(pid), month) or 0)

    async def _transfer(self, fid: str, pid: str, amount: int, xid: str) -> int:
        """划拨 under the contributor's lock: debit, credit the lot, finish. Re-entrant by `xid`.
        Returns the contributor's balance after."""
        k, ctx = self.k, self.ctx
        if not await ctx.r.exists(k.family_transfer(pid, xid)):
            await self._check_transfer(fid, pid, amount)  # a refusal found before the lock writes nothing
        entry = transfer_entry(pid, xid)
        await ctx.r.zadd(k.open_settlements(), {entry: ctx.clock.now_ms()}, nx=True)
        opened = False
        try:
            lease = await ctx.acquire(pid)
            try:
                if not await ctx.r.exists(k.family_transfer(pid, xid)):
                    await self._check_transfer(fid, pid, amount)
                    now = ctx.clock.now_ms()
                    status, _ = await ctx.lua["family_debit"](
                        keys=[k.family_transfer(pid, xid), k.account(pid), k.ledger(pid), k.fence(pid),
                              k.family_transfer_months(pid)],
                        args=[lease.token, xid, fid, amount, now, ctx.policy.keep_min_balance_fen,
                              family_rules.month_of(now), ctx.policy.transfers_per_month])
                    status = text(status)
                    if status == "STALE":
                        raise lock_lost()
                    if status != "OK" and status != "EXISTS":  # the balance moved since the check: as it says
                        raise errors.refused({"SHORT": "INSUFFICIENT_BALANCE", "FLOOR": "BELOW_MINIMUM_BALANCE",
                                              "MONTHLY": "MONTHLY_LIMIT_REACHED"}[status],
                                             "the personal account changed while the 划拨 was checked")
                opened = True
                ctx.fault("family.after_debit")
                state = await self.drive_transfer(pid, xid)
            finally:
                await ctx.locks.release(lease)
        except DomainError as exc:
            if opened:
                raise exc.after_effects() from exc
            await ctx.r.zrem(k.open_settlements(), entry)
            raise
        if state == "REFUNDED":
            raise family_rules.structure_error("FAMILY_NOT_ACTIVE", ctx.policy)
        return int(await ctx.r.hget(k.family_transfer(pid, xid), "bal_after") or 0)

    async def _check_transfer(self, fid: str, pid: str, amount: int) -> None:
        policy = self.ctx.policy
        fam = await self.family_hash(fid)
        member = (await self.members(fid)).get(pid, {})
        if fam["state"] != "ACTIVE":
            raise family_rules.structure_error("FAMILY_NOT_ACTIVE", policy)
        family_rules.check_transfer_in(
            policy, await self.store.person(pid), is_creator=fam["creator"] == pid,
            is_member=member.get("state") == "MEMBER", amount=amount, month_count=await self._month_count(pid))

    async def drive_transfer(self, pid: str, xid: str) -> str:
        """Take a DEBITED 划拨 to CREDITED (or REFUNDED when the account no longer takes it)."""
        k, ctx = self.k, self.ctx
        raw = await ctx.r.hgetall(k.family_transfer(pid, xid))
        rec = {text(a): text(b) for a, b in raw.items()}
        state = rec.get("state", "")
        if state == "DEBITED":
            fid = rec["family"]
            (outcome,) = await ctx.lua["family_credit"](
                keys=[*self.money_keys(fid), k.family_seq()],
                args=[xid, pid, rec["amount"], ctx.clock.now_ms(), "1" if ctx.policy.member_contributions else "0"])
            ctx.fault("family.after_credit")
            (state,) = await ctx.lua["family_xfer_finish"](
                keys=[k.family_transfer(pid, xid), k.account(pid), k.ledger(pid), k.family_transfer_months(pid)],
                args=["CREDITED" if text(outcome) == "OK" else "REFUNDED", ctx.clock.now_ms()])
            state = text(state)
            event(log, "family transfer", contributor=pid, family=fid, amount=int(rec["amount"]), state=state)
        await ctx.r.zrem(k.open_settlements(), transfer_entry(pid, xid))
        return state

    # --- the settlement engine's steps ----------------------------------------------------

    def queue_charge(self, pipe: Any, rec: SettlementRecord, amount: int, category: str) -> Any:
        """Queue the family-account step of settlement `rec` (once per settlement id)."""
        return self.ctx.lua["family_charge"](
            keys=self.money_keys(rec.family_id),
            args=[rec.sid, rec.patient, amount, self.ctx.clock.now_ms(), category], client=pipe)

    @staticmethod
    def charged(reply: Any) -> tuple[ChargeDone, ...]:
        status, detail = text(reply[0]), text(reply[1] or b"")
        return decode_charges(detail) if status in ("OK", "DUP") else ()

    async def refund(self, rec: SettlementRecord) -> list[int]:
        """Return a settlement's family charge; per charge of the record, the contributor's unspent
        share (or, for one who has left, their personal balance) after."""
        afters = await self.refund_charge(rec.family_id, rec.sid, "FAMILY_REVERSAL")
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
                                                   args=[f"famrev:{ref}", amount, kind, ref, ctx.clock.now_ms()],
                                                   client=p)
                for (pid, _), (_, after) in zip(owed, await p.execute(), strict=True):
                    afters[pid] = int(text(after))
        shares = await ctx.r.hgetall(k.family_shares(fid))
        for a, b in shares.items():
            afters.setdefault(text(a), int(b))
        return afters

    # --- recovery -------------------------------------------------------------------------

    async def recover(self, entry: str) -> bool:
        """Finish what a dead process left of a 划拨 (X) or of returned shares (L); False when a live
        holder has the lock (the entry is not abandoned)."""
        ctx, k = self.ctx, self.k
        kind, owner, op = entry.split("|", 2)
        tag = k.person_tag(owner) if kind == "X" else k.family_lock_tag(owner)
        lease = await ctx.locks.try_acquire(tag, LOCK_TTL_MS)
        if lease is None:
            return False
        try:
            if kind == "X":
                if await ctx.r.exists(k.family_transfer(owner, op)):
                    await self.drive_transfer(owner, op)
                else:  # died before the debit: nothing happened
                    await ctx.r.zrem(k.open_settlements(), entry)
            else:
                returns = await ctx.r.hget(k.family_returns(owner), op)
                if returns is None:  # died before the shares left the account
                    await ctx.r.zrem(k.open_settlements(), entry)
                else:
                    await self._pay_returns(owner, op, text(returns))
        finally:
            await ctx.locks.release(lease)
        return True


def validate_family_id(fid: str) -> None:
    if not (3 <= len(fid) <= 32 and fid.isalnum() and fid.isascii()):
        raise errors.invalid("INVALID_FAMILY_ID", "family_id must be 3-32 letters or digits", field="family_id")
