"""The pooled family account (家庭共济账户, SPEC §3b), its RPCs that open a place: create, invite, respond,
and get and the diagnosis of why it would not pay, with the recovery of a place whose writer died.
Leaving (remove, leave, dissolve, 回拨, and the ends life events cause) is in `family_leaving.py`,
reads in `family_reads.py`, the money (划拨, returns, the settlement steps, recovery) in `family_money.py`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from medaid.common import errors
from medaid.common.errors import DomainError
from medaid.common.idempotency import Finish
from medaid.common.logs import event
from medaid.common.v1 import common_pb2 as cpb
from medaid.common.values import text
from medaid.registry import family_rules, rules, validate
from medaid.registry.context import Opening, lock_lost
from medaid.registry.family_leaving import FamilyLeaving
from medaid.registry.family_money import TransferSeen, transfer_entry
from medaid.registry.family_reads import member_state, validate_family_id
from medaid.registry.v1 import family_pb2 as fpb
from medaid.registry.v1 import registry_pb2 as pb

log = logging.getLogger("medaid.registry")
# family_create.lua tries of one creation whose id another write took meanwhile (_write_creation).
CREATE_ATTEMPTS = 1000

__all__ = ["Family", "place_entry", "validate_family_id"]


def place_entry(creator_id: str, fid: str, member_id: str, request_id: str, creator_region: str) -> str:
    """The recovery index entry of an invitation (of `member_id` into `fid`) or a creation (both ''),
    from its id's claim until its answer (`Context.once_announced`, `Context.write_announced`): it leads
    the loop to the second read of its people (`Family.end_if_ended`), or to its id, freed where nothing
    of the request stands."""
    return f"F|{creator_id}|{fid}|{member_id}|{request_id}|{creator_region}"


class Family(FamilyLeaving):
    async def get(self, req: fpb.GetFamilyAccountRequest) -> fpb.GetFamilyAccountResponse:
        """The account asked for (by family id, or the person's own) and, asked with an id number,
        every family account of that person (福建: a person may belong to several)."""
        family_rules.require_pooled(self.ctx.policy)
        fid = req.family_id
        mine: list[fpb.FamilyMembership] = []
        if req.id_number or not fid:
            pid = validate.id_number(req.id_number, "id_number")
            mine = await self.memberships_pb(pid)
        if not fid:
            own = [m.family_id for m in mine if m.creator]
            joined = [m.family_id for m in mine if m.state == fpb.MEMBERSHIP_STATE_MEMBER]
            fid = next(iter(own + joined + [m.family_id for m in mine]), "")
            if not fid:
                raise family_rules.structure_error("FAMILY_NOT_FOUND", self.ctx.policy)
        validate_family_id(fid)
        return fpb.GetFamilyAccountResponse(account=await self.account_pb(fid), memberships=mine)

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
            directory = await self.ctx.directory.insured_province(member_id)
        elsewhere = rules.member_elsewhere(policy, member, req.member_insured_admdvs, directory)
        fid = await self.account_between(helper_id, member_id)
        state, temporary, family_state, bal, creator_region = "", False, "", 0, ""
        if fid:
            fam, m = await self.family_hash(fid), (await self.members(fid)).get(member_id, {})
            family_state, bal = fam["state"], int(fam["bal"])
            creator = await self.store.person(fam["creator"])
            creator_region = creator.region if creator is not None else ""
            state = member_state(m, now) if m.get("state") in ("INVITED", "MEMBER") else ""
            temporary = m.get("temporary") == "1"
        findings = family_rules.diagnose(
            policy, member=member, elsewhere=elsewhere, state=state, family_state=family_state, temporary=temporary,
            family_balance=bal, proxy_bound=await proxy_between(helper_id, member_id), category=category,
            creator_region=creator_region, family_id=fid,
            paid_by=paying.family_id if (paying := await self.view_for(member_id)) is not None else "")
        kind = (pb.BINDING_KIND_MUTUAL_AID if state == "MEMBER" else pb.BINDING_KIND_PROXY_ONLY
                if any(f.code == "PROXY_ONLY" for f in findings) else pb.BINDING_KIND_NONE)
        return pb.DiagnoseResponse(would_pay=not findings, binding_kind=kind, helper_balance_fen=bal,
                                   findings=[pb.Finding(code=f.code, message=f.message) for f in findings])

    # --- membership ----------------------------------------------------------------------

    async def create(self, req: fpb.CreateFamilyAccountRequest) -> fpb.CreateFamilyAccountResponse:
        policy = self.ctx.policy
        family_rules.require_pooled(policy)
        pid = validate.id_number(req.creator_id_number, "creator_id_number")
        committed = validate.attestation(req.commitment.method, req.commitment.attestation_id, "commitment") \
            if req.HasField("commitment") else False
        if req.initial_transfer_fen:
            validate.amount(req.initial_transfer_fen, "initial_transfer_fen")

        async def work(opening: Opening) -> fpb.CreateFamilyAccountResponse | Finish[fpb.CreateFamilyAccountResponse]:
            # '|' is in no request id: a 划拨 sent with any request id is another transfer than this one.
            xid = f"{req.request_id}|init"
            if (own := await self.own_creation(pid, req.request_id, opening)) is not None:
                # A resend whose earlier attempt created the account: finished, not judged afresh (a
                # creator who ended meanwhile would refuse it while the account stands). An initial 划拨
                # debited by that attempt is finished (an account written before 0.x took it after).
                redrive = bool(await self.ctx.r.exists(self.k.family_transfer(pid, xid)))
                return await self._after_create(own[0], pid, own[1], req.initial_transfer_fen, xid, redrive,
                                                *own[2])
            creator = await self.store.person(pid)
            family_rules.check_creator(policy, creator, committed)
            assert creator is not None  # check_creator refuses a creator not enrolled
            if req.initial_transfer_fen:
                return await self._create_funded(opening, pid, creator, committed, req.initial_transfer_fen, xid)
            self.ctx.fault("family.before_create")
            status, detail = await self._write_creation(opening, pid, creator.region, req.request_id)
            if text(status) == "ERR":  # the claim and the entry dropped (Context.once_announced)
                raise family_rules.structure_error(text(detail), policy)
            opening.opened = True
            self.ctx.fault("family.after_create")
            return await self._after_create(text(detail), pid, creator.region, 0, xid, False, "", None)

        # The id claimed with the creation's entry (the creator's 统筹区 read before: Context.write_announced),
        # so that the loop frees the id should this process die before the account is written.
        return await self.ctx.once_announced(req, "family_create", pid, fpb.CreateFamilyAccountResponse,  # type: ignore[no-any-return]
                                             place_entry(pid, "", "", req.request_id, await self.store.region(pid)),
                                             work)

    async def _create_funded(self, opening: Opening, pid: str, creator: rules.PersonView, committed: bool,
                             amount: int, xid: str
                             ) -> fpb.CreateFamilyAccountResponse | Finish[fpb.CreateFamilyAccountResponse]:
        """A creation with an initial 划拨 of `amount` (id `xid`): one outcome, the account holding the
        money, or nothing. Judged first on a read, writing nothing (the 划拨's rules, then
        family_create.lua's own, asked without writing); then, under the creator's fenced lock (a 划拨,
        a settlement, a status change of theirs waits), the creation's entry and claim taken again, the
        creator and the 划拨 judged again on what the lock holds, the creator debited (family_debit.lua,
        the 划拨 DEBITED under recovery entry `X|`), and the account written holding the money
        (`drive_creation`). A creation the script refuses after the debit gives the money back under
        the lock, and the request is refused with nothing created. A crash after the debit leaves the
        `X|` entry: the recovery loop, or a resend, writes the account (or gives the money back) the
        same way; the creation's own entry (`F|`) then reads the creator again and answers the id."""
        ctx, k, policy = self.ctx, self.k, self.ctx.policy
        request_id = opening.request.request_id

        async def check() -> None:
            count = await self.month_count(pid)
            family_rules.check_transfer_in(policy, creator, is_creator=True, is_member=True, amount=amount,
                                           month_count=count)
        # A concurrent duplicate may have debited meanwhile (then it goes on under the lock).
        await self.check_unless_debited(pid, xid, check, refunded_too=True)
        status, detail = await self._creation_script(pid, creator.region, request_id, check=True)
        if text(status) == "ERR":
            raise family_rules.structure_error(text(detail), policy)
        ctx.fault("family.before_create")

        async def judge() -> TransferSeen:
            person, now = await self.store.person(pid), ctx.clock.now_ms()
            family_rules.check_creator(policy, person, committed)
            month = family_rules.month_of(now)
            count = int(await ctx.r.hget(k.family_transfer_months(pid), month) or 0)
            family_rules.check_transfer_in(policy, person, is_creator=True, is_member=True, amount=amount,
                                           month_count=count)
            assert person is not None  # check_creator refuses a creator not enrolled
            return TransferSeen(now=now, month=month, balance=person.balance, month_count=count)

        x_entry, x_mark, region = transfer_entry(pid, xid), None, creator.region
        await ctx.r.zadd(k.open_settlements(), {x_entry: ctx.clock.now_ms()}, nx=True)
        ctx.fault("family.after_transfer_entry")  # as a 划拨's: the entry written, the lock not yet taken
        lease = await ctx.acquire(pid)
        try:
            try:
                x_mark = await ctx.announce_held(x_entry)
                region = await self.store.region(pid) or region
                entry = place_entry(pid, "", "", request_id, region)
                await ctx.hold_as(opening, entry)
                await self._debit("", pid, amount, xid, lease.token, judge, entry)
            except DomainError as exc:  # nothing debited: nothing of the creation stands
                if x_mark is not None and exc.reason != "LOCK_LOST":
                    await ctx.withdraw(x_entry, x_mark)
                opening.opened = opening.finished = True  # the claim dropped with the entry as it stands now
                raise
            opening.opened = True
            try:
                ctx.fault("family.after_debit")
                rec = await self._transfer_record(pid, xid)
                if rec.get("state") == "DEBITED":
                    await self.drive_creation(pid, xid, rec, lease.token, opening.held)
                    rec = await self._transfer_record(pid, xid)
                await ctx.withdraw(x_entry, x_mark)
            except DomainError as exc:
                raise exc.after_effects() from exc
        finally:
            await ctx.locks.release(lease)
        if rec.get("state") == "REFUNDED":  # the money is home: refused, the claim and the entry dropped
            opening.finished = True
            raise family_rules.structure_error(rec.get("why") or "FAMILY_BUSY", policy)
        self.ctx.fault("family.after_create")
        return await self._after_create(rec["family"], pid, region, 0, xid, False, "", None)

    async def _transfer_record(self, pid: str, xid: str) -> dict[str, str]:
        raw = await self.ctx.r.hgetall(self.k.family_transfer(pid, xid))
        return {text(a): text(b) for a, b in raw.items()}

    async def drive_creation(self, pid: str, xid: str, rec: dict[str, str], token: int, mark: Any) -> str:
        """A creation's initial 划拨, DEBITED (`rec`), under the creator's lock (`token`), taken with its
        account: the account this request wrote (`created_by`: then the money is in it), else the
        account written now holding it (family_create.lua), else, refused, the money given back; the
        transfer finished CREDITED or REFUNDED (fenced by the lock: a holder whose lock lapsed changes
        nothing, the newer one finishes it). `mark`: the writer's on the creation's entry; None for the
        recovery loop and a resend, which take that entry over first (`Context.fence_place`), so that a
        writer stalled before its write writes no account once they have looked."""
        ctx, k = self.ctx, self.k
        entry = rec["create"]
        request_id, region = xid.split("|", 1)[0], entry.rsplit("|", 1)[1]
        fid = await self.created_by(pid, request_id)
        if not fid and mark is None:
            score = await ctx.r.zscore(k.open_settlements(), entry)
            if score is not None:
                await ctx.fence_place(entry, score)
            fid = await self.created_by(pid, request_id)
        why = ""
        if not fid:
            status, detail = await self._creation_script(pid, region, request_id, credit=(xid, int(rec["amount"])),
                                                         entry=entry, mark="" if mark is None else mark)
            if text(status) == "ERR" and text(detail) == "FENCED":
                raise lock_lost()  # the loop took the creation over: it finishes it
            if text(status) == "ERR":
                why = text(detail)
            else:
                fid = text(detail)
                ctx.fault("family.after_credit")
        state = await self.finish_transfer(pid, xid, "REFUNDED" if why else "CREDITED", fid, why, token)
        event(log, "family initial transfer", contributor=pid, family=fid, amount=int(rec["amount"]), state=state,
              refused=why)
        return state

    async def created_by(self, pid: str, request_id: str) -> str:
        """The account creation `request_id` of `pid` wrote ('' : none): their ACTIVE one, or, dissolved
        since, one they have given to (a creation with an initial 划拨 lists it there)."""
        k = self.k
        active = text(await self.ctx.r.get(k.family_created_by(pid)) or b"")
        given = sorted(text(f) for f in await self.ctx.r.smembers(k.families_given_to(pid)))
        for fid in [active] * bool(active) + given:
            req, creator = await self.ctx.r.hmget(k.family(fid), ["req", "creator"])
            if text(req or b"") == request_id and text(creator or b"") == pid:
                return fid
        return ""

    async def _write_creation(self, opening: Opening, pid: str, region: str, request_id: str) -> tuple[Any, Any]:
        """family_create.lua's reply for creator `pid` (checked on 统筹区 `region`), with no initial 划拨,
        its entry and claim taken again just before (`Context.write_announced`)."""
        async def write(keys: list[str], args: list[Any]) -> Any:
            return await self.ctx.write_announced(opening, place_entry(pid, "", "", request_id, region),
                                                  "family_create", keys=keys, args=args)
        return await self._creation_attempts(pid, request_id, write)

    async def _creation_script(self, pid: str, region: str, request_id: str, *, credit: tuple[str, int] = ("", 0),
                               check: bool = False, entry: str = "", mark: Any = "") -> tuple[Any, Any]:
        """family_create.lua's reply, called as it stands: `check`, whether it would write (nothing
        written); else the account written holding initial 划拨 `credit` (transfer id, amount), by the
        holder of `entry` at `mark` ('' : the recovery loop, which fenced that entry first)."""
        fence = self.k.place_fence(entry or place_entry(pid, "", "", request_id, region))

        async def call(keys: list[str], args: list[Any]) -> Any:
            return await self.ctx.lua["family_create"](keys=[*keys, fence], args=[*args, mark])
        return await self._creation_attempts(pid, request_id, call, credit, check)

    async def _creation_attempts(self, pid: str, request_id: str,
                                 call: Callable[[list[str], list[Any]], Awaitable[Any]],
                                 credit: tuple[str, int] = ("", 0), check: bool = False) -> tuple[Any, Any]:
        """family_create.lua through `call`. The script declares every key it writes, the new family's
        too, so the id is drawn here: the one after the counter, the creator's ACTIVE family read with
        it; the script answers AGAIN, having written nothing, where either changed meanwhile (another
        creation, a contribution's lot number), and it is asked again. Every AGAIN means another writer
        went ahead, so a burst of N creations in one province finishes in at most N rounds; the short
        random pause keeps the retries from moving in lockstep. CREATE_ATTEMPTS only bounds a
        pathological run (then FAMILY_BUSY)."""
        k, policy = self.k, self.ctx.policy
        for attempt in range(CREATE_ATTEMPTS):
            if attempt:
                await asyncio.sleep(random.uniform(0, 0.002 * min(attempt, 10)))
            seen = text(await self.ctx.r.get(k.family_created_by(pid)) or b"")
            n = int(await self.ctx.r.get(k.family_seq()) or 0) + 1
            fid = f"FA{policy.province}{n:010d}"
            status, detail = await call(
                [k.family_seq(), k.family_created_by(pid), k.families_of(pid), k.family_index(),
                 k.family(fid), k.family_members(fid), k.family_history(fid), k.family(seen or fid),
                 k.family_lots(fid), k.family_shares(fid), k.family_applied(fid), k.families_given_to(pid)],
                [pid, self.ctx.clock.now_ms(), "1" if policy.exclusive else "0", request_id, fid, n, seen,
                 policy.max_members, credit[0], credit[1], "CHECK" if check else "WRITE"])
            if text(status) != "AGAIN":
                return status, detail
        raise errors.unavailable("FAMILY_BUSY", "other family accounts are being created in this province; "
                                 "retry with the same request id")

    async def own_creation(self, pid: str, request_id: str, opening: Opening
                           ) -> tuple[str, str, tuple[str, Any]] | None:
        """The account an earlier attempt of creation `request_id` wrote (the account names its request
        id), with the creator's 统筹区 it was checked on and that attempt's entry and mark (`place_entry`;
        ('', None) where none stands; this attempt's own, `opening`'s, goes with the answer); None where
        the creator's account is not this request's."""
        fid = await self.created_by(pid, request_id)  # dissolved since, by its own second read too
        if not fid:
            return None
        entries = await self.ctx.entries_from(f"F|{pid}|||{request_id}|", opening)
        if entries:
            return fid, entries[0][0].rsplit("|", 1)[1], entries[0]
        creator = await self.store.person(pid)
        return fid, creator.region if creator is not None else "", ("", None)

    async def _after_create(self, fid: str, pid: str, region: str, amount: int, xid: str, redrive: bool,
                            entry: str, mark: Any
                            ) -> fpb.CreateFamilyAccountResponse | Finish[fpb.CreateFamilyAccountResponse]:
        """A creation's steps after its write of account `fid`, by the writer or by a resend of the same
        request (`own_creation`): the second read of the creator (`end_if_ended`, on `region`, the 统筹区
        the creation was checked on), the initial 划拨 of `amount` (id `xid`), then the answer, after
        which the request's entry goes (`Context.once_announced`), and `entry`, an earlier attempt's
        ('': none)."""
        request_id = xid.split("|", 1)[0]
        try:
            ended = await self.end_if_ended(fid, pid, "", region, request_id)
        except DomainError as exc:
            raise exc.after_effects() from exc
        # A dissolved account takes no 划拨; one this request debited before a crash is given back.
        if amount and (redrive or not ended):
            try:
                await self.move_in(fid, pid, amount, xid)
            except DomainError as exc:
                raise exc.after_effects() from exc
        event(log, "family created", family=fid, creator=pid)
        # The entries go once the answer is recorded (one left by a failed 划拨 only leads the loop to
        # read the creator again).
        response = fpb.CreateFamilyAccountResponse(account=await self.account_pb(fid))
        return Finish(response, then=self.ctx.withdrawal(entry, mark)) if entry else response

    async def invite(self, req: fpb.InviteMemberRequest) -> fpb.InviteMemberResponse:
        policy = self.ctx.policy
        family_rules.require_pooled(policy)
        validate_family_id(req.family_id)
        creator_id = validate.id_number(req.creator_id_number, "creator_id_number")
        member_id = validate.id_number(req.member_id_number, "member_id_number")
        relation = validate.enum_name(cpb.Relation, req.relation, "RELATION_", "relation")

        async def work(opening: Opening) -> fpb.InviteMemberResponse:
            if (own := await self.finish_own_invitation(req.family_id, creator_id, member_id,
                                                        req.request_id, opening)) is not None:
                return own
            # Judged here alone (family_invite.lua checks only what may change): an account, once
            # created, stands with the same creator.
            fam = await self.family_hash(req.family_id)
            if fam["creator"] != creator_id:
                raise family_rules.structure_error("NOT_FAMILY_CREATOR", policy)
            creator, member = await self.store.person(creator_id), await self.store.person(member_id)
            directory = ""
            if member is None or not member.active:
                directory = await self.ctx.directory.insured_province(member_id)
            family_rules.check_invitee(policy, creator, member, creator_id=creator_id, member_id=member_id,
                                       relation=relation, temporary=req.temporary, directory_province=directory)
            now = self.ctx.clock.now_ms()
            at_once = family_rules.joins_at_once(policy, member_id, self.ctx.clock.today(), req.temporary)
            k = self.k
            self.ctx.fault("family.before_invite")
            assert creator is not None  # check_invitee refuses a creator not enrolled
            status, detail = await self.ctx.write_announced(
                opening, place_entry(creator_id, req.family_id, member_id, req.request_id, creator.region),
                "family_invite",
                keys=[k.family(req.family_id), k.family_members(req.family_id), k.families_of(member_id),
                      k.family_history(req.family_id)],
                args=[req.family_id, member_id, relation, now, now + policy.invitation_ttl_ms,
                      policy.max_members, "1" if policy.exclusive else "0", "1" if at_once else "0",
                      "1" if req.temporary else "0", req.request_id])
            if text(status) == "ERR":  # the claim and the entry dropped (Context.once_announced)
                raise family_rules.structure_error(text(detail), policy)
            opening.opened = True
            event(log, "family invited", family=req.family_id, member=member_id, state=text(detail))
            self.ctx.fault("family.after_invite")
            try:
                await self.end_if_ended(req.family_id, creator_id, member_id, creator.region, req.request_id)
            except DomainError as exc:
                raise exc.after_effects() from exc
            # The entry goes once the answer is recorded (Context.once_announced).
            return fpb.InviteMemberResponse(account=await self.account_pb(req.family_id))

        # The id claimed with the invitation's entry (the creator's 统筹区 read before: Context.write_announced),
        # so that the loop frees the id should this process die before the place is written.
        entry = place_entry(creator_id, req.family_id, member_id, req.request_id, await self.store.region(creator_id))
        return await self.ctx.once_announced(req, "family_invite", req.family_id, fpb.InviteMemberResponse,  # type: ignore[no-any-return]
                                             entry, work)

    async def finish_own_invitation(self, fid: str, creator_id: str, member_id: str, request_id: str,
                                    opening: Opening) -> fpb.InviteMemberResponse | None:
        """A resend of an invitation whose earlier attempt wrote its place (the place names its request
        id) and died before its answer: finished as the recovery loop finishes it (`recover_place`: the
        second read of the people, the answer recorded), not judged afresh, since a side that ended
        meanwhile would refuse it while its place stands. Returns the account as it stands now; None
        where the place is not this request's. `opening`: this attempt's (its own entry goes with the
        answer)."""
        if (await self.members(fid)).get(member_id, {}).get("req") != request_id:
            return None
        for entry, mark in await self.ctx.entries_from(f"F|{creator_id}|{fid}|{member_id}|{request_id}|", opening):
            await self.recover_place(entry, mark)
        return fpb.InviteMemberResponse(account=await self.account_pb(fid))

    async def respond(self, req: fpb.RespondToInvitationRequest) -> fpb.RespondToInvitationResponse:
        policy = self.ctx.policy
        family_rules.require_pooled(policy)
        validate_family_id(req.family_id)
        member_id = validate.id_number(req.member_id_number, "member_id_number")
        verified = validate.attestation(req.verification.method, req.verification.attestation_id,
                                        "verification") \
            if req.HasField("verification") else False

        async def work() -> fpb.RespondToInvitationResponse:
            # A resend of a response its process wrote before it died (family_respond.lua: `resp`) is
            # answered as written, not judged as a new one: a suspension since ends no place.
            written = (await self.members(req.family_id)).get(member_id, {}).get("resp") == req.request_id
            if req.accept and not written:
                family_rules.check_accept(policy, member_id, self.ctx.clock.today(), verified)
                creator_id = await self.ctx.r.hget(self.k.family(req.family_id), "creator")  # None: Lua refuses
                creator = await self.store.person(text(creator_id)) if creator_id else None
                family_rules.check_joiner(policy, creator, await self.store.person(member_id))
            k = self.k
            status, detail = await self.ctx.lua["family_respond"](
                keys=[k.family(req.family_id), k.family_members(req.family_id), k.families_of(member_id),
                      k.family_history(req.family_id)],
                args=[req.family_id, member_id, "1" if req.accept else "0", self.ctx.clock.now_ms(),
                      policy.max_members, "1" if policy.exclusive else "0", req.request_id])
            if text(status) == "ERR":
                raise family_rules.structure_error(text(detail), policy)
            self.ctx.fault("family.after_respond")
            return fpb.RespondToInvitationResponse(account=await self.account_pb(req.family_id))

        return await self.ctx.once(req, "family_respond", req.family_id, fpb.RespondToInvitationResponse, work)  # type: ignore[no-any-return]

    async def recover_place(self, entry: str, mark: Any) -> bool:
        """The recovery loop's part of an invitation or a creation that died between its write and its
        second read (`place_entry`): that read done (`end_if_ended`, with the writer's own step ids, so
        a place the writer or the event ended is not ended twice), then its id answered with the account
        as the request answers it, or freed where the place is not this request's (its write was
        refused), and the entry withdrawn (`Context.settle_claimed`). A creation's entry names no account
        (its id is chosen by the write): the creator's ACTIVE account, where this request created it. A
        creation whose initial 划拨 began is answered once that 划拨's own entry is finished (False
        until then: the account's balance is the answer's); one whose 划拨 never began is answered
        without it (no fen moved)."""
        _, creator_id, fid, member_id, request_id, region = entry.split("|", 5)
        await self.ctx.fence_place(entry, mark)  # a writer stalled at this mark writes nothing from now on
        k, creation = self.k, not fid
        if creation:
            if await self.ctx.r.zscore(k.open_settlements(), transfer_entry(creator_id, f"{request_id}|init")):
                return False
            fid = await self.created_by(creator_id, request_id)
        mine = False
        if fid:
            await self.end_if_ended(fid, creator_id, member_id, region, request_id)
            mine = creation or (await self.members(fid)).get(member_id, {}).get("req") == request_id
        if creation:
            await self.ctx.settle_claimed(entry, mark, request_id, "family_create", creator_id,
                                          fpb.CreateFamilyAccountResponse(account=await self.account_pb(fid))
                                          if mine else None)
        else:
            await self.ctx.settle_claimed(entry, mark, request_id, "family_invite", fid,
                                          fpb.InviteMemberResponse(account=await self.account_pb(fid))
                                          if mine else None)
        return True
