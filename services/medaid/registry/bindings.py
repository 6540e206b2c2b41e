"""家庭共济 bindings (SPEC §3), 亲情账户 proxies, consumption records (共济消费记录), and the diagnosis
of why 共济 would not pay."""

from __future__ import annotations

import json
import logging
from typing import Any

from medaid.common import errors
from medaid.common.errors import DomainError
from medaid.common.idempotency import reused
from medaid.common.logs import event
from medaid.common.rpc import derived_id
from medaid.common.v1 import common_pb2 as cpb
from medaid.common.values import decode_hash, text
from medaid.registry import family_rules, rules, validate
from medaid.registry.context import Context, Opening, enum_value
from medaid.registry.store import Store
from medaid.registry.v1 import registry_pb2 as pb

log = logging.getLogger("medaid.registry")

MAX_PROXIES = 5  # relatives per 亲情账户 holder (SPEC §5b)
PROXY_FACE_AGE = 16  # from this age the relative is added with face verification


class Bindings:
    def __init__(self, ctx: Context, store: Store) -> None:
        self.ctx = ctx
        self.store = store
        self.k = ctx.k

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

    # --- 亲情账户 ----------------------------------------------------------------------------

    async def bind_proxy(self, req: pb.BindProxyRequest) -> pb.BindProxyResponse:
        """亲情账户 (SPEC §5b): national — holder and relative may be insured in any province (the national
        person directory says where and whether ACTIVE); at most MAX_PROXIES relatives per holder; a
        relative may have several holders; the relative's face verification from 16, an attestation
        under 16. It never moves money. Any named relation (SPEC §5b names no set: a relative, by blood
        or by marriage, whose own 医保码 the holder presents): neither the province's 家庭共济
        `relations` nor §2's near-kin govern it."""
        holder = validate.id_number(req.holder_id_number, "holder_id_number")
        relative = validate.id_number(req.relative_id_number, "relative_id_number")
        relation = validate.enum_name(cpb.Relation, req.relation, "RELATION_", "relation")
        if holder == relative:
            raise errors.invalid("SELF_BINDING", "a person cannot add themself as a 亲情账户 relative")
        method, verified = 0, False
        if req.HasField("relative_verification"):
            method = req.relative_verification.method
            verified = validate.attestation(method, req.relative_verification.attestation_id,
                                            "relative_verification")

        def judge() -> None:
            adult = rules.age_of(relative, self.ctx.clock.today()) >= PROXY_FACE_AGE
            if not verified:
                raise errors.refused("VERIFICATION_REQUIRED", "adding a 亲情账户 relative needs their face "
                                     f"verification ({PROXY_FACE_AGE} or older) or an attestation (under "
                                     f"{PROXY_FACE_AGE})")
            if adult and method != cpb.VERIFICATION_METHOD_FACE:
                raise errors.refused("FACE_VERIFICATION_REQUIRED", f"a relative aged {PROXY_FACE_AGE} or older is "
                                     "added with face verification", age=str(PROXY_FACE_AGE))

        async def work(opening: Opening) -> pb.BindProxyResponse:
            await self.finish_own_proxy(holder, relative, req.request_id, opening)
            # A resend (at any registry) of an addition that stands is its first answer, not judged afresh:
            # a side that died since, its proxy ended by the death, would refuse it. Its write finds the
            # addition (2), or, undone meanwhile, nothing (4): then it is judged as any addition is.
            remembered = bool(await self.ctx.r.hexists(self.k.proxy_additions(), req.request_id))
            while True:
                if not remembered:
                    for pid, label in ((holder, "holder"), (relative, "relative")):
                        found = await self.ctx.directory.lookup(pid)
                        if found is None or found[1] != "ACTIVE":
                            raise proxy_side_refused(label)
                    judge()
                self.ctx.fault("proxy.before_write")
                now = self.ctx.clock.now_ms()
                record = json.dumps({"holder": holder, "relative": relative, "relation": relation, "at": now,
                                     "rid": req.request_id})
                created, raw = await self.ctx.write_announced(
                    opening, entry, "proxy_bind",
                    keys=[self.k.proxies_of_holder(holder), self.k.proxies_of_relative(relative),
                          self.k.proxy_additions()],
                    args=[holder, relative, record, req.request_id, MAX_PROXIES, "1" if remembered else "0"])
                if int(created) != 4:
                    break
                remembered = False
            if int(created) == 3:
                # The id names another proxy nationally (an addition at another registry): this
                # registry's claim is this request's own, and goes like any refusal's, then the entry.
                taken = opening.taken()
                await self.ctx.idem.release(req.request_id, taken.fp, taken.attempt, taken.entry)
                raise reused(req.request_id)
            if int(created) == -1:
                raise errors.refused("PROXY_LIMIT_REACHED", f"a holder adds at most {MAX_PROXIES} 亲情账户 relatives",
                                     limit=str(MAX_PROXIES))
            if int(created) == 0:
                raise errors.exists("ALREADY_BOUND", "this 亲情账户 relation already exists")
            opening.opened = True
            if int(created) == 1:
                event(log, "proxy bound", holder=holder, relative=relative)
                self.ctx.fault("proxy.after_write")
            # 2: an earlier attempt's addition (a resend, here or at another registry), whose own second read
            # may not have run yet: read the sides again as that attempt does, never answering success for
            # an addition its attempt or its recovery loop then undoes.
            try:
                refusal = await self.proxy_ended(holder, relative, req.request_id)
            except DomainError as exc:  # the addition stands: the loop (or a resend) reads the sides again
                raise exc.after_effects() from exc
            if refusal is not None:  # undone: answered as a bind after the death, the claim and entry go
                opening.finished = True
                raise refusal
            # The entry goes once the answer is recorded, after the second read (Context.once_announced).
            return pb.BindProxyResponse(proxy=proxy_pb(raw))

        # The id claimed with the addition's entry, so that the loop frees it should this process die
        # before the proxy is written, and reads the sides again should it die after.
        entry = proxy_entry(holder, relative, req.request_id)
        return await self.ctx.once_announced(req, "proxy", holder, pb.BindProxyResponse,  # type: ignore[no-any-return]
                                             entry, work)

    async def proxy_ended(self, holder: str, relative: str, request_id: str) -> DomainError | None:
        """After an addition by request `request_id` wrote the proxy holder → relative: a death (SPEC §5b)
        writes the person and tells the national directory, then ends the 亲情账户 it finds, and one that
        looked before the write left the proxy to the writer, which reads both sides in the directory
        again now. A side dead: the addition undone (proxy_undo.lua: its record, and the proxy where it
        stands as this request wrote it) and the refusal an addition after the death gets returned. Both
        alive: the addition kept for good (None), since a death told the directory after this read finds
        the proxy in its own search. The adding registry, its recovery loop (`recover_proxy`, for a writer
        that died first) and a resend at any registry that finds the addition remembered run it; the
        first read recorded decides (a read of a side dead after another found both alive keeps the
        addition, and one of both alive after another undid it answers that refusal), so that no answer
        says success for an addition undone. Undoing what is undone changes nothing."""
        dead = await self.dead_side(holder, relative)
        done = int(await self.ctx.lua["proxy_undo"](
            keys=[self.k.proxies_of_holder(holder), self.k.proxies_of_relative(relative),
                  self.k.proxy_additions(), self.k.proxy_kept()],
            args=[holder, relative, request_id, "undo" if dead else "keep"]))
        if dead is None:
            if done == 1:
                return None
            # Undone by a read that found a side dead since (the directory keeps a death), or never made.
            return proxy_side_refused(await self.dead_side(holder, relative) or "relative")
        if done == 2:
            return None
        if done == 1:
            event(log, "proxy addition undone", holder=holder, relative=relative, because="DECEASED")
        return proxy_side_refused(dead)

    async def dead_side(self, holder: str, relative: str) -> str | None:
        """'holder' or 'relative': the first side the national directory says is DECEASED (None: neither)."""
        for pid, label in ((holder, "holder"), (relative, "relative")):
            found = await self.ctx.directory.lookup(pid)
            if found is not None and found[1] == "DECEASED":
                return label
        return None

    async def recover_proxy(self, entry: str, mark: Any) -> None:
        """The recovery loop's part of a 亲情账户 addition that died between its write and its second read
        (`proxy_entry`): that read done (`proxy_ended`), then its id answered with the proxy as the
        addition answers it, or freed where no addition of this request stands (undone, or its write
        refused or never made), and the entry withdrawn (`Context.settle_claimed`)."""
        _, holder, relative, request_id, _ = entry.split("|", 4)
        await self.ctx.fence_place(entry, mark)  # a writer stalled at this mark writes nothing from now on
        raw = None
        if await self.proxy_ended(holder, relative, request_id) is None:
            raw = await self.ctx.r.hget(self.k.proxy_additions(), request_id)
            if raw is not None and (json.loads(text(raw))["holder"], json.loads(text(raw))["relative"]) != \
                    (holder, relative):
                raw = None
        await self.ctx.settle_claimed(entry, mark, request_id, "proxy", holder,
                                      pb.BindProxyResponse(proxy=proxy_pb(raw)) if raw is not None else None)

    async def finish_own_proxy(self, holder: str, relative: str, request_id: str, opening: Opening) -> None:
        """A resend of an addition whose earlier attempt here wrote and died before its answer: that
        attempt finished first as the recovery loop finishes it (`recover_proxy`), so that the resend is
        judged on what stands (an addition undone is judged afresh, and refused as after the death)."""
        if not await self.ctx.r.hexists(self.k.proxy_additions(), request_id):
            return
        for entry, mark in await self.ctx.entries_from(proxy_entry(holder, relative, request_id), opening):
            await self.recover_proxy(entry, mark)

    async def remove_proxy(self, req: pb.RemoveProxyRequest) -> pb.RemoveProxyResponse:
        """Either side removes a 亲情账户."""
        holder = validate.id_number(req.holder_id_number, "holder_id_number")
        relative = validate.id_number(req.relative_id_number, "relative_id_number")
        by = validate.id_number(req.requested_by_id_number, "requested_by_id_number")
        if by not in (holder, relative):
            raise errors.invalid("NOT_A_SIDE", "only the holder or the relative may remove a 亲情账户",
                                 field="requested_by_id_number")

        async def work() -> pb.RemoveProxyResponse:
            status, raw = await self.ctx.lua["proxy_remove"](
                keys=[self.k.proxies_of_holder(holder), self.k.proxies_of_relative(relative), self.k.proxy_removals()],
                args=[holder, relative, req.request_id])
            if int(status) == 3:
                raise reused(req.request_id)
            if int(status) == 0:
                raise errors.not_found("PROXY_NOT_FOUND", "no such 亲情账户")
            event(log, "proxy removed", holder=holder, relative=relative, by=by)
            return pb.RemoveProxyResponse(proxy=proxy_pb(raw))

        return await self.ctx.once(req, "proxy_remove", holder, pb.RemoveProxyResponse, work)  # type: ignore[no-any-return]

    async def end_proxies_of(self, pid: str, request_id: str) -> int:
        """On death (SPEC §5b) the person's 亲情账户 end on either side, as if the other side removed
        them; each removal once per `request_id` (a RecordDeath's), so a re-drive repeats none.
        Returns how many this run removed."""
        async with self.ctx.r.pipeline(transaction=False) as p:
            p.hkeys(self.k.proxies_of_holder(pid))
            p.hkeys(self.k.proxies_of_relative(pid))
            relatives, holders = await p.execute()
        pairs = [(pid, text(x)) for x in relatives] + [(text(x), pid) for x in holders]
        removed = 0
        for holder, relative in pairs:
            status, _ = await self.ctx.lua["proxy_remove"](
                keys=[self.k.proxies_of_holder(holder), self.k.proxies_of_relative(relative), self.k.proxy_removals()],
                args=[holder, relative, derived_id("proxyend", self.ctx.policy.province, request_id, holder, relative)])
            if int(status) == 1:
                removed += 1
                event(log, "proxy removed", holder=holder, relative=relative, because="DECEASED")
        return removed

    async def list_proxies(self, req: pb.ListProxyBindingsRequest) -> pb.ListProxyBindingsResponse:
        pid = validate.id_number(req.id_number, "id_number")
        held = await self.ctx.r.hvals(self.k.proxies_of_holder(pid))
        of = await self.ctx.r.hvals(self.k.proxies_of_relative(pid))
        return pb.ListProxyBindingsResponse(as_holder=[proxy_pb(x) for x in held],
                                            as_relative=[proxy_pb(x) for x in of])

    async def proxy_between(self, a: str, b: str) -> bool:
        async with self.ctx.r.pipeline(transaction=False) as p:
            p.hexists(self.k.proxies_of_holder(a), b)
            p.hexists(self.k.proxies_of_holder(b), a)
            x, y = await p.execute()
        return bool(x or y)

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
        proxy = await self.proxy_between(helper_id, member_id)
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


def proxy_entry(holder: str, relative: str, request_id: str) -> str:
    """The recovery index entry of a 亲情账户 addition, from its id's claim until its answer: it leads the
    loop to the second read of its sides (`Bindings.proxy_ended`), or to its id, freed where nothing of
    the addition stands."""
    return f"Q|{holder}|{relative}|{request_id}|"


def proxy_side_refused(label: str) -> DomainError:
    """The refusal of a 亲情账户 addition whose holder or relative (`label`) is not an ACTIVE insured person
    (the directory's word), before its write or, dead, after it (`Bindings.proxy_ended`)."""
    return errors.refused("MEMBER_NOT_INSURED" if label == "relative" else "HELPER_NOT_ACTIVE",
                          f"the {label} must be an ACTIVE insured person (any province)")


def proxy_pb(raw: Any) -> pb.ProxyBinding:
    d = json.loads(text(raw))
    return pb.ProxyBinding(holder_id_number=d["holder"], relative_id_number=d["relative"],
                           relation=enum_value(cpb.Relation, "RELATION_", d["relation"]),  # type: ignore[arg-type]
                           bound_at_unix_ms=d["at"])
