"""亲情账户 proxies (SPEC §5b): national, not province-bound; they never move money."""

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
from medaid.common.values import text
from medaid.registry import rules, validate
from medaid.registry.context import Context, Opening, enum_value
from medaid.registry.store import Store
from medaid.registry.v1 import registry_pb2 as pb

log = logging.getLogger("medaid.registry")

MAX_PROXIES = 5  # relatives per 亲情账户 holder (SPEC §5b)
PROXY_FACE_AGE = 16  # from this age the relative is added with face verification


class Proxies:
    def __init__(self, ctx: Context, store: Store) -> None:
        self.ctx = ctx
        self.store = store
        self.k = ctx.k

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
                          self.k.proxy_additions(), self.k.proxy_pending()],
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
                refusal = await self.proxy_ended(holder, relative, req.request_id, held=int(created) == 1)
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

    async def proxy_ended(self, holder: str, relative: str, request_id: str, *, held: bool
                          ) -> DomainError | None:
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
        says success for an addition undone. Undoing what is undone changes nothing. Only an addition
        whose second read is still to come is undone: marked pending by its write, or `held` (the caller
        is its writer, or the recovery loop finishing its entry); one answered before additions were
        marked (no mark of either kind) stands, as its sides were read ACTIVE when it was answered."""
        dead = await self.dead_side(holder, relative)
        done = int(await self.ctx.lua["proxy_undo"](
            keys=[self.k.proxies_of_holder(holder), self.k.proxies_of_relative(relative),
                  self.k.proxy_additions(), self.k.proxy_kept(), self.k.proxy_pending()],
            args=[holder, relative, request_id, "undo" if dead else "keep", "1" if held else "0"]))
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
        if await self.proxy_ended(holder, relative, request_id, held=True) is None:
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


def proxy_entry(holder: str, relative: str, request_id: str) -> str:
    """The recovery index entry of a 亲情账户 addition, from its id's claim until its answer: it leads the
    loop to the second read of its sides (`Proxies.proxy_ended`), or to its id, freed where nothing of
    the addition stands."""
    return f"Q|{holder}|{relative}|{request_id}|"


def proxy_side_refused(label: str) -> DomainError:
    """The refusal of a 亲情账户 addition whose holder or relative (`label`) is not an ACTIVE insured person
    (the directory's word), before its write or, dead, after it (`Proxies.proxy_ended`)."""
    return errors.refused("MEMBER_NOT_INSURED" if label == "relative" else "HELPER_NOT_ACTIVE",
                          f"the {label} must be an ACTIVE insured person (any province)")


def proxy_pb(raw: Any) -> pb.ProxyBinding:
    d = json.loads(text(raw))
    return pb.ProxyBinding(holder_id_number=d["holder"], relative_id_number=d["relative"],
                           relation=enum_value(cpb.Relation, "RELATION_", d["relation"]),  # type: ignore[arg-type]
                           bound_at_unix_ms=d["at"])
