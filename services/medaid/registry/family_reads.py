"""Reads of the pooled family accounts (SPEC §3b) as domain values and answers: the account with its
members, shares and history, a person's memberships, and what the waterfall needs (`view_for`).

Every family account of the province lives on one slot `{fam}` (keys.py), so a structural rule and
the write it guards are one script (`lua/family_*.lua`).
"""

from __future__ import annotations

import json
from typing import Any

from medaid.common import errors, validate
from medaid.common.lock import Lease, LockBusy
from medaid.common.v1 import common_pb2 as cpb
from medaid.common.values import text
from medaid.registry import family_rules, rules
from medaid.registry.context import LOCK_WAIT_MS, Context
from medaid.registry.policy import Policy
from medaid.registry.store import Store
from medaid.registry.v1 import family_pb2 as fpb

HISTORY_LIMIT = 200
MEMBER_STATES = {"INVITED": fpb.MEMBERSHIP_STATE_INVITED, "MEMBER": fpb.MEMBERSHIP_STATE_MEMBER,
                 "DECLINED": fpb.MEMBERSHIP_STATE_DECLINED, "EXPIRED": fpb.MEMBERSHIP_STATE_EXPIRED,
                 "ENDED": fpb.MEMBERSHIP_STATE_ENDED}


class FamilyReads:
    def __init__(self, ctx: Context, store: Store) -> None:
        self.ctx = ctx
        self.store = store
        self.k = ctx.k

    def money_keys(self, fid: str) -> list[str]:
        k = self.k
        return [k.family(fid), k.family_members(fid), k.family_lots(fid), k.family_shares(fid),
                k.family_applied(fid), k.family_history(fid)]

    async def _lock(self, fid: str) -> Lease:
        try:
            return await self.ctx.locks.acquire(self.k.family_lock_tag(fid), self.ctx.lock_ttl_ms, LOCK_WAIT_MS)
        except LockBusy:
            raise errors.unavailable("FAMILY_BUSY", "another change to this family account is in progress; "
                                     "retry with the same request id") from None

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
            state = member_state(m, now)
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

    async def memberships_pb(self, pid: str) -> list[fpb.FamilyMembership]:
        """Every family account of `pid` (created, joined or invited to), in family id order, with the
        one the waterfall pays their bills from marked (`view_for`: the rule lives there alone)."""
        mine = await self.memberships(pid)
        created = await self.ctx.r.get(self.k.family_created_by(pid))
        fids = sorted(mine)
        async with self.ctx.r.pipeline(transaction=False) as p:
            for fid in fids:
                p.hget(self.k.family(fid), "creator")
                p.hget(self.k.family_members(fid), pid)
            raw = await p.execute()
        settles = await self.view_for(pid)
        now, out = self.ctx.clock.now_ms(), []
        for i, fid in enumerate(fids):
            creator, member = raw[2 * i], raw[2 * i + 1]
            m = json.loads(text(member)) if member else {"state": mine[fid], "temporary": "0", "expires_at": "0"}
            out.append(fpb.FamilyMembership(
                family_id=fid, creator_id_number=text(creator or b""), state=MEMBER_STATES[member_state(m, now)],
                creator=bool(created) and text(created) == fid, temporary=m.get("temporary") == "1",
                settles=settles is not None and settles.active and settles.family_id == fid))
        return out

    async def view_for(self, pid: str) -> rules.FamilyView | None:
        """What the waterfall needs of the patient's family account (None: they belong to none)."""
        mine = await self.memberships(pid)
        return family_view(self.ctx.policy, mine,
                           {fid: await self._view_raw(fid, pid) for fid in joined_families(mine)})

    async def account_between(self, helper: str, member: str) -> str:
        """The family account a diagnosis of `member` with `helper` looks at: of the accounts the helper
        created or joined, one the member belongs to too, chosen as the waterfall chooses (`family_view`);
        else the helper's own (the one they created, or the first they joined); '' when they have none."""
        created = await self.ctx.r.get(self.k.family_created_by(helper))
        theirs = sorted(f for f, s in (await self.memberships(helper)).items() if s == "MEMBER")
        helpers = ([text(created)] if created else []) + theirs
        shared = {f: s for f, s in (await self.memberships(member)).items() if f in helpers}
        view = family_view(self.ctx.policy, shared,
                           {fid: await self._view_raw(fid, member) for fid in joined_families(shared)})
        return view.family_id if view is not None else next(iter(helpers), "")

    async def view_of(self, fid: str, pid: str) -> rules.FamilyView:
        """What the waterfall needs of family account `fid` for `pid` (a staged charge, a 代缴)."""
        return one_family_view(fid, await self._view_raw(fid, pid))

    async def _view_raw(self, fid: str, pid: str) -> FamilyRaw:
        async with self.ctx.r.pipeline(transaction=False) as p:
            p.hmget(self.k.family(fid), ["state", "creator"])
            p.hget(self.k.family_members(fid), pid)
            p.hgetall(self.k.family_lots(fid))
            (state, creator), member, lots = await p.execute()
        async with self.ctx.r.pipeline(transaction=False) as p:  # the two people, each on their own slot
            p.hget(self.k.person(text(creator or b"")), "region")
            p.hget(self.k.person(pid), "region")
            creator_region, member_region = await p.execute()
        return state, member, lots, creator_region, member_region


# (account state, the person's member entry, lots, the creator's 统筹区, the person's 统筹区) as Redis holds them.
FamilyRaw = tuple[Any, Any, Any, Any, Any]


def member_state(member: dict[str, str], now_ms: int) -> str:
    """A member entry's state as shown: an invitation not answered by its expiry is EXPIRED."""
    state = member["state"]
    if state == "INVITED" and int(member["expires_at"]) <= now_ms:
        return "EXPIRED"
    return state


def joined_families(memberships: dict[str, str]) -> list[str]:
    """The family accounts a person has joined (not only been invited to), in id order."""
    return sorted(fid for fid, state in memberships.items() if state == "MEMBER")


def one_family_view(fid: str, raw: FamilyRaw) -> rules.FamilyView:
    """Family account `fid` for the waterfall from the raw values (`FamilyRaw`) as Redis holds them."""
    state, member, lots, creator_region, member_region = raw
    m = json.loads(text(member)) if member else {"state": "", "temporary": "0"}
    parsed = []
    for seq, value in lots.items():
        contributor, amount = text(value).split(":")
        parsed.append(rules.Lot(int(text(seq)), contributor, int(amount)))
    return rules.FamilyView(fid, text(state or b"") == "ACTIVE" and m["state"] == "MEMBER", m["temporary"] == "1",
                            tuple(sorted(parsed, key=lambda x: x.seq)), text(creator_region or b""),
                            text(member_region or b""))


def family_view(policy: Policy, memberships: dict[str, str],
                joined: dict[str, FamilyRaw]) -> rules.FamilyView | None:
    """The patient's family account for the waterfall, from their memberships (family id -> INVITED |
    MEMBER) and, per family joined, the raw values (`FamilyRaw`) as Redis holds them (None: they
    belong to none). A person in several (non-exclusive provinces) is paid for by the first joined
    that may pay (`rules.family_may_pay`), one where they are a full member before one where they are
    only a 临时成员 (whose account pays nothing but their resident premium)."""
    if not memberships:
        return None
    if not joined:  # invited only: the invitation is not accepted yet
        return rules.FamilyView(sorted(memberships)[0], False, False, ())
    views = [one_family_view(fid, joined[fid]) for fid in sorted(joined)]
    paying = [v for v in views if rules.family_may_pay(policy, v)]
    return next((v for v in paying if not v.temporary), next(iter(paying), views[0]))


def validate_family_id(fid: str) -> None:
    if not validate.family_id_well_formed(fid):
        raise errors.invalid("INVALID_FAMILY_ID", "family_id must be 3-32 letters or digits", field="family_id")
