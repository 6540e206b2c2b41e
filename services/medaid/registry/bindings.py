"""家庭共济 bindings (SPEC §3) and the diagnosis of why 共济 would not pay; 亲情账户 are in proxies.py."""

from __future__ import annotations

import logging
from typing import Any

from medaid.common import errors
from medaid.common.errors import DomainError
from medaid.common.logs import event
from medaid.common.rpc import derived_id
from medaid.common.v1 import common_pb2 as cpb
from medaid.common.values import decode_hash, text
from medaid.registry import family_rules, rules, validate
from medaid.registry.context import Context, Opening, enum_value
from medaid.registry.proxies import Proxies
from medaid.registry.store import Store
from medaid.registry.v1 import registry_pb2 as pb

log = logging.getLogger("medaid.registry")



class Bindings:
    def __init__(self, ctx: Context, store: Store) -> None:
        self.ctx = ctx
        self.store = store
        self.k = ctx.k
        self.proxies = Proxies(ctx, store)

    async def binding_pb(self, helper: str, member: str, key: str = "") -> pb.Binding | None:
        """The binding helper → member as it stands (`key`: as kept elsewhere, e.g. `Keys.unbound_by`)."""
        raw = await self.ctx.r.hgetall(key or self.k.binding(helper, member))
        if not raw:
            return None
        h = decode_hash(raw)
        return pb.Binding(
            helper_id_number=helper, member_id_number=member,
            relation=enum_value(cpb.Relation, "RELATION_", h["relation"]),  # type: ignore[arg-type]
            bound_at_unix_ms=int(h["bound_at"]), seq=int(h["seq"]), active=h["active"] == "1",
            ended_at_unix_ms=int(h.get("ended_at", "0")), end_reason=h.get("end_reason", ""),
        )

    async def elsewhere_province(self, pid: str, person: rules.PersonView | None) -> str:
        """The province the national person directory says insures someone not ACTIVE here ('' if none)."""
        if person is not None and person.active:
            return ""
        return await self.ctx.directory.insured_province(pid)

    async def bind(self, req: pb.BindMutualAidRequest) -> pb.BindMutualAidResponse:
        helper_id = validate.id_number(req.helper_id_number, "helper_id_number")
        member_id = validate.id_number(req.member_id_number, "member_id_number")
        relation = validate.enum_name(cpb.Relation, req.relation, "RELATION_", "relation")
        validate.admdvs(req.member_insured_admdvs, "member_insured_admdvs")
        verified = False
        if req.HasField("member_verification"):
            v = req.member_verification
            verified = validate.attestation(v.method, v.attestation_id, "member_verification")

        async def work(opening: Opening) -> pb.BindMutualAidResponse:
            family_rules.require_binding_model(self.ctx.policy)
            if (own := await self.finish_own(helper_id, member_id, req.request_id, opening)) is not None:
                return own
            helper = await self.store.person(helper_id)
            member = await self.store.person(member_id)
            rules.check_bind_people(
                self.ctx.policy, helper, member, helper_id=helper_id, member_id=member_id, relation=relation,
                verified=verified, member_insured_admdvs=req.member_insured_admdvs, today=self.ctx.clock.today(),
                directory_province=await self.elsewhere_province(member_id, member))
            self.ctx.fault("bind.before_write")
            assert helper is not None  # check_bind_people refuses a helper not enrolled
            k = self.k
            status, detail = await self.ctx.write_announced(
                opening, bind_entry(helper_id, member_id, req.request_id, helper.region), "bind",
                keys=[k.members_of(helper_id), k.helpers_of(member_id), k.binding(helper_id, member_id),
                      k.binding(member_id, helper_id), k.members_of(member_id), k.helpers_of(helper_id),
                      k.binding_seq(), k.all_members_of(helper_id), k.all_helpers_of(member_id)],
                args=[helper_id, member_id, relation, self.ctx.clock.now_ms(), self.ctx.policy.max_members,
                      "1" if self.ctx.policy.exclusive else "0", req.request_id])
            if text(status) == "ERR":  # the claim and the entry dropped (Context.once_announced)
                raise rules.bind_structure_error(text(detail), self.ctx.policy)
            opening.opened = True
            event(log, "bound", helper=helper_id, member=member_id, relation=relation)
            self.ctx.fault("bind.after_write")
            try:
                await self.end_if_ended(helper_id, member_id, helper.region)
            except DomainError as exc:  # the binding stands: the loop (or a resend) reads the people again
                raise exc.after_effects() from exc
            binding = await self.binding_pb(helper_id, member_id)
            assert binding is not None
            # The entry goes once the answer is recorded, after the second read (Context.once_announced).
            return pb.BindMutualAidResponse(binding=binding)

        # The id claimed with the bind's entry, which names the helper's 统筹区 read before (written again
        # with the one the bind is checked on: Context.write_announced), so that the loop frees the id
        # should this process die before the binding is written.
        entry = bind_entry(helper_id, member_id, req.request_id, await self.store.region(helper_id))
        return await self.ctx.once_announced(req, "bind", helper_id, pb.BindMutualAidResponse,  # type: ignore[no-any-return]
                                             entry, work)

    async def end_if_ended(self, helper_id: str, member_id: str, helper_region: str) -> str:
        """After a bind wrote the binding helper → member: a status change, a move or a death writes the
        person first, then ends the bindings it finds, and one that looked before the write left the
        binding to the writer, which reads both people again now and ends it as that change would have
        (`rules.binding_end_reason`, SPEC §3, §5b). The recovery loop runs it for a writer that died
        first (`recover_place`). `helper_region`: the helper's 统筹区 the bind was checked on. Returns the
        end reason ('' : none)."""
        ended = rules.binding_end_reason(self.ctx.policy, await self.store.person(helper_id),
                                         await self.store.person(member_id), helper_region)
        if ended and await self.end(helper_id, member_id, ended) == 1:
            event(log, "binding ended", helper=helper_id, member=member_id, because=ended)
        return ended

    async def recover_place(self, entry: str, mark: Any) -> None:
        """The recovery loop's part of a bind that died between its write and its second read
        (`bind_entry`): that read done (`end_if_ended`), then its id answered with the binding as the
        bind answers it (active, or ended), or freed where the binding is not this request's (its write
        was refused), and the entry withdrawn (`Context.settle_claimed`). Ending an ended binding, or
        none, changes nothing, and the first answer recorded stays, so this runs safely beside the bind
        or a resend."""
        _, helper_id, member_id, request_id, helper_region = entry.split("|", 4)
        await self.ctx.fence_place(entry, mark)  # a writer stalled at this mark writes nothing from now on
        await self.end_if_ended(helper_id, member_id, helper_region)
        mine = text(await self.ctx.r.hget(self.k.binding(helper_id, member_id), "rid") or b"") == request_id
        binding = await self.binding_pb(helper_id, member_id) if mine else None
        await self.ctx.settle_claimed(entry, mark, request_id, "bind", helper_id,
                                      pb.BindMutualAidResponse(binding=binding) if binding is not None else None)

    async def finish_own(self, helper_id: str, member_id: str, request_id: str,
                         opening: Opening) -> pb.BindMutualAidResponse | None:
        """A resend of a bind whose earlier attempt wrote its binding (the binding names its request id)
        and died before its answer: finished as the recovery loop finishes it (`recover_place`: the
        second read of the people, the answer recorded), not judged afresh, since a side that ended
        meanwhile would refuse it while its binding stands. Returns the binding, as it stands now; None
        where the binding is not this request's. `opening`: this attempt's (its own entry is not finished
        here: it goes with the answer)."""
        k = self.k
        if text(await self.ctx.r.hget(k.binding(helper_id, member_id), "rid") or b"") != request_id:
            return None
        for entry, mark in await self.ctx.entries_from(f"B|{helper_id}|{member_id}|{request_id}|", opening):
            await self.recover_place(entry, mark)
        binding = await self.binding_pb(helper_id, member_id)
        assert binding is not None
        return pb.BindMutualAidResponse(binding=binding)

    async def unbind(self, req: pb.UnbindMutualAidRequest) -> pb.UnbindMutualAidResponse:
        helper_id = validate.id_number(req.helper_id_number, "helper_id_number")
        member_id = validate.id_number(req.member_id_number, "member_id_number")

        async def work() -> pb.UnbindMutualAidResponse:
            # A resend of this unbind (its reply lost) finds the binding it ended (2), as it ended it: the
            # pair may have been bound again since, and that binding stays.
            if await self.end_after_settlements(helper_id, member_id, "UNBOUND", req.request_id) == 0:
                raise errors.not_found("BINDING_NOT_FOUND", "this helper has no active binding to this member")
            binding = (await self.binding_pb(helper_id, member_id, self.k.unbound_by(req.request_id))
                       or await self.binding_pb(helper_id, member_id))
            assert binding is not None
            event(log, "unbound", helper=helper_id, member=member_id)
            return pb.UnbindMutualAidResponse(binding=binding)

        return await self.ctx.once(req, "unbind", helper_id, pb.UnbindMutualAidResponse, work)  # type: ignore[no-any-return]

    async def end_after_settlements(self, helper_id: str, member_id: str, reason: str, request_id: str = "",
                                    by: int = 0) -> int:
        """`end`, under the member's lock. A settlement of the member on the staged path plans and
        opens its record under that lock, so it either opened first (the helper's share stands) or
        reads the binding gone; the atomic path checks the binding in its script (settle_apply.lua).
        Only an active binding takes the lock: ending nothing writes nothing, not even a fence."""
        active = text(await self.ctx.r.hget(self.k.binding(helper_id, member_id), "active") or b"") == "1"
        self.ctx.fault("unbind.before_lock")  # tests: an unbind stalled while a resend of it goes ahead
        lease = await self.ctx.acquire(member_id) if active else None
        try:
            return await self.end(helper_id, member_id, reason, request_id, by)
        finally:
            if lease is not None:
                await self.ctx.locks.release(lease)

    async def end(self, helper_id: str, member_id: str, reason: str, request_id: str = "", by: int = 0) -> int:
        """1: ended now; 2: ended earlier by `request_id`; 0: no active binding (or, `by` given, none bound
        by then: unbind.lua)."""
        k = self.k
        return int(await self.ctx.lua["unbind"](
            keys=[k.members_of(helper_id), k.helpers_of(member_id), k.binding(helper_id, member_id),
                  k.unbound_by(request_id)],
            args=[helper_id, member_id, self.ctx.clock.now_ms(), reason, request_id, by]))

    async def sides_of(self, pid: str) -> list[tuple[str, str, str]]:
        """(helper, member, side) of every binding the person has or had ('HELPER': they help), in the
        order they were bound on each side: the active ones and those ended, which a life-cycle event
        finished again looks at for the bindings its earlier attempt ended."""
        r, k = self.ctx.r, self.k
        members = [text(m) for m in await r.zrange(k.members_of(pid), 0, -1)]
        helpers = [text(h) for h in await r.zrange(k.helpers_of(pid), 0, -1)]
        members += sorted({text(m) for m in await r.smembers(k.all_members_of(pid))} - set(members))
        helpers += sorted({text(h) for h in await r.smembers(k.all_helpers_of(pid))} - set(helpers))
        return [(pid, m, "HELPER") for m in members] + [(h, pid, "MEMBER") for h in helpers]

    async def end_as_event(self, helper_id: str, member_id: str, reason: str, request_id: str, by: int,
                           locked: bool = False) -> pb.Binding | None:
        """The binding helper → member ended for life-cycle event request `request_id` at `by` (its time on
        the person's history): once per binding and request (a derived id, `end`), so that a resend or
        the recovery loop finishing the event ends only a binding bound by the event and answers the
        one its earlier attempt ended too, as it ended it. `locked`: under the member's lock
        (`end_after_settlements`). The binding this event ended, or None."""
        step = derived_id("bindend", self.ctx.policy.province, request_id, helper_id, member_id)
        done = await (self.end_after_settlements if locked else self.end)(helper_id, member_id, reason, step, by)
        if done == 0:
            return None
        return (await self.binding_pb(helper_id, member_id, self.k.unbound_by(step))
                or await self.binding_pb(helper_id, member_id))

    async def end_all_of(self, pid: str, suffix: str, request_id: str, by: int) -> list[pb.Binding]:
        """Bindings end automatically when a side is TERMINATED, moves province or dies: for life-cycle
        event request `request_id` at `by`, those bound by then (`end_as_event`). Returns what the event
        ended, by every run of it, in order of binding on each side."""
        ended: list[pb.Binding] = []
        for helper, member, side in await self.sides_of(pid):
            if (b := await self.end_as_event(helper, member, f"{side}_{suffix}", request_id, by)) is not None:
                ended.append(b)
        ended.sort(key=lambda b: (b.member_id_number == pid, b.seq))
        return ended

    async def list_bindings(self, req: pb.ListBindingsRequest) -> pb.ListBindingsResponse:
        pid = validate.id_number(req.id_number, "id_number")
        r = self.ctx.r
        if req.include_ended:
            members = await r.smembers(self.k.all_members_of(pid))
            helpers = await r.smembers(self.k.all_helpers_of(pid))
        else:
            members = await r.zrange(self.k.members_of(pid), 0, -1)
            helpers = await r.zrange(self.k.helpers_of(pid), 0, -1)
        as_helper = [b for m in members if (b := await self.binding_pb(pid, text(m))) is not None]
        as_member = [b for h in helpers if (b := await self.binding_pb(text(h), pid)) is not None]
        as_helper.sort(key=lambda b: b.seq)
        as_member.sort(key=lambda b: b.seq)
        return pb.ListBindingsResponse(as_helper=as_helper, as_member=as_member)

    # --- diagnosis -----------------------------------------------------------------------

    async def diagnose(self, req: pb.DiagnoseRequest) -> pb.DiagnoseResponse:
        member_id = validate.id_number(req.member_id_number, "member_id_number")
        helper_id = validate.id_number(req.helper_id_number, "helper_id_number")
        validate.admdvs(req.member_insured_admdvs, "member_insured_admdvs")
        category = ""
        if req.category:
            category = validate.enum_name(cpb.Category, req.category, "CATEGORY_", "category")
        if member_id == helper_id:
            raise errors.invalid("SELF_BINDING", "member and helper are the same person")
        member = await self.store.person(member_id)
        helper = await self.store.person(helper_id)
        binding = await self.binding_pb(helper_id, member_id)
        bound = binding is not None and binding.active
        proxy = await self.proxies.proxy_between(helper_id, member_id)
        helpers = (await self.store.helper_candidates(member_id))[0] if bound else []
        findings = rules.diagnose(
            self.ctx.policy, member=member, helper=helper, mutual_aid_bound=bound, proxy_bound=proxy,
            category=category, member_insured_admdvs=req.member_insured_admdvs,
            directory_province=await self.elsewhere_province(member_id, member), helpers=tuple(helpers))
        kind = (pb.BINDING_KIND_MUTUAL_AID if bound else pb.BINDING_KIND_PROXY_ONLY if proxy
                else pb.BINDING_KIND_NONE)
        return pb.DiagnoseResponse(
            would_pay=not findings, binding_kind=kind,
            findings=[pb.Finding(code=f.code, message=f.message) for f in findings],
            helper_balance_fen=helper.balance if helper is not None else 0,
        )


def bind_entry(helper_id: str, member_id: str, request_id: str, helper_region: str) -> str:
    """The recovery index entry of a bind, from its id's claim until its answer (`Context.once_announced`,
    `Context.write_announced`): it leads the loop to the second read of its people
    (`Bindings.end_if_ended`), or to its id, freed where nothing of the bind stands."""
    return f"B|{helper_id}|{member_id}|{request_id}|{helper_region}"
