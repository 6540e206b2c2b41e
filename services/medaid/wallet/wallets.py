"""Wallets: opening one, its 使用地, balances and entries (SPEC §5)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

import grpc

from medaid.common import errors, page_tokens, rpc
from medaid.common.errors import DomainError
from medaid.common.idnumber import mask
from medaid.common.lock import LockBusy
from medaid.common.logs import event
from medaid.common.redis_client import barrier
from medaid.common.v1 import common_pb2 as cpb
from medaid.common.values import decode_hash as _decode
from medaid.common.values import text as _s
from medaid.registry import validate
from medaid.registry.client import downstream
from medaid.registry.policy import NEAR_KIN
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.wallet import rules
from medaid.wallet.core import MAX_BALANCES, WalletCore
from medaid.wallet.v1 import wallet_pb2 as pb

log = logging.getLogger("medaid.wallet")


# A use-place change whose note is due but that is still not written this long after: its request
# stopped before writing it (`deliver_notes`).
NOTE_ABANDON_MS = 60_000
# How long an opening is reserved to the request writing it (open_reserve.lua), and how long another
# opening of the same wallet waits for it.
OPENING_RESERVE_MS = 5_000
OPENING_WAIT_MS = 5_000
ENTRIES_PAGE = 50  # ListWalletEntries: the entries a page lists when not asked, and at most
MAX_ENTRIES_PAGE = 500


def _due(owner: str, token: str) -> str:
    """The member of `notes_due` for the note request `token` owes the registry."""
    return f"{owner}|{token}"


class Wallets(WalletCore):
    """Opening a wallet, changing its 使用地, reading its balance, lots and entries."""

    async def _wallet_row(self, owner: str) -> dict[str, str]:
        return _decode(await self.r.hgetall(self.k.wallet(owner)))

    def _wallet_pb(self, row: dict[str, str]) -> pb.Wallet:
        return pb.Wallet(owner_id_number=row["owner"], province=row["province"], use_place_admdvs=row["use_place"],
                         balance_fen=int(row["bal"]), opened_at_unix_ms=int(row["opened_at"]),
                         opened_by_id_number=row.get("opened_by", ""))

    async def open_wallet(self, req: pb.OpenWalletRequest) -> pb.OpenWalletResponse:
        owner = validate.id_number(req.owner_id_number, "owner_id_number")
        validate.province(req.province, "province")
        validate.admdvs(req.use_place_admdvs, "use_place_admdvs", required=True)
        self.registries.stub(req.province)  # unknown province → INVALID_ARGUMENT before any write
        rules.check_use_place(self.regions, req.province, req.use_place_admdvs)
        opened_by = validate.id_number(req.opened_by_id_number, "opened_by_id_number") \
            if req.opened_by_id_number else owner
        # A relation sent is a code like any other (an unknown one refused), also where the owner opens it.
        relation = validate.enum_name(cpb.Relation, req.opened_by_relation, "RELATION_", "relation") \
            if req.opened_by_relation or opened_by != owner else ""
        if opened_by != owner and relation not in NEAR_KIN:
            raise errors.refused("NOT_NEAR_KIN", "only a near-kin may open a wallet on the owner's behalf")
        verified = req.HasField("real_name") and validate.attestation(req.real_name.method,
                                                                     req.real_name.attestation_id, "real_name")
        if not verified:
            raise errors.refused("VERIFICATION_REQUIRED", "opening a wallet needs real-name verification")

        def prefetch(pipe: Any) -> None:  # read with the claim, in its round trip
            pipe.hget(self.k.wallet(owner), "open_rid")

        async def work(open_rid: bytes | None) -> pb.OpenWalletResponse:
            # A wallet opened by this very request id is this request's own effect (a resend after a
            # lost reply or an unreachable registry): the checks are behind it; finish the rest.
            if _s(open_rid or b"") != req.request_id:
                await self._open(req, owner, opened_by)
            row = await self._wallet_row(owner)
            # The insuring registry learns of the wallet, so its waterfall asks the wallet only for
            # people who have one, and tells it of status changes from then on: the status is read
            # back after the note, for a change made before the note got in. On failure the claim
            # stays (a retry of this request re-drives it) and the maintenance pass delivers the note.
            try:
                await self._note_place(owner, row, req.request_id, read_status=True)
            except DomainError as exc:
                raise exc.after_effects() from None
            event(log, "wallet opened", id_number=owner, province=req.province, use_place=req.use_place_admdvs)
            return pb.OpenWalletResponse(wallet=self._wallet_pb(row))

        return await self.idem.run(req, "open", owner, pb.OpenWalletResponse, work, self.clock.now_ms(), prefetch)

    async def _open(self, req: pb.OpenWalletRequest, owner: str, opened_by: str) -> None:
        person = await self.registries.person(req.province, owner)
        if person is None or person.status != cpb.PERSON_STATUS_ACTIVE:
            raise errors.refused("OWNER_NOT_INSURED", f"{mask(owner)} is not an ACTIVE insured person of "
                                 f"province {req.province}")
        row = await self._wallet_row(owner)
        if not row and await self._reserve_opening(owner, req.request_id):
            # The indexes first, the wallet after (in one round trip on one Redis): every wallet is
            # in the wallets index (the clearing report reads it), and the registry's note of it is
            # due (`notes_due`) until it got through. Only the request the opening is reserved to
            # writes them, so one that finds the wallet opened by another writes nothing.
            async with self.r.pipeline(transaction=False) as p:
                p.sadd(self.k.wallets_index(), owner)
                p.zadd(self.k.notes_due(), {_due(owner, req.request_id): self.clock.now_ms()})
                await barrier(p)
                await self.lua["open"](keys=[self.k.wallet(owner), self.k.opening(owner)], args=[
                    "owner", owner, "province", req.province, "use_place", req.use_place_admdvs,
                    "opened_at", self.clock.now_ms(), "opened_by", opened_by, "open_rid", req.request_id,
                    "status", "ACTIVE", "place_v", 1], client=p)
                *_, created = await p.execute()
            if int(created) == 1:
                return
            row = await self._wallet_row(owner)  # opened meanwhile, past this request's reservation
            if row.get("open_rid") != req.request_id:
                # Not this request's wallet (one that outlived its reservation, stalled, lost it):
                # it owes the registry no note of it.
                await self.r.zrem(self.k.notes_due(), _due(owner, req.request_id))
        if not row:
            row = await self._wallet_row(owner)
        if row.get("open_rid") != req.request_id:
            # Opening in the province they moved to brings their wallet along (`_follow_move`).
            if row["province"] == req.province or await self._follow_move(
                    owner, row, req.request_id, req.province, req.use_place_admdvs, opening=True) is None:
                raise errors.exists("WALLET_EXISTS", "this person already has a wallet")

    async def _reserve_opening(self, owner: str, token: str) -> bool:
        """Reserve the opening of the owner's wallet to request `token` (open_reserve.lua): True once
        it is this request's; False, nothing written, when the wallet is there by now. While another
        request opens it, waits for that one (UNAVAILABLE after OPENING_WAIT_MS)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + rpc.time_left(OPENING_WAIT_MS / 1000)
        while True:
            got = _s(await self.lua["open_reserve"](keys=[self.k.wallet(owner), self.k.opening(owner)],
                                                    args=[token, OPENING_RESERVE_MS]))
            if got != "BUSY":
                return got == "OK"
            if loop.time() >= deadline:
                raise errors.unavailable("WALLET_BUSY", "the wallet is being opened by another request; retry")
            await asyncio.sleep(0.02)

    async def _set_place(self, owner: str, token: str, fields: list[Any], province: str) -> dict[str, str] | None:
        """Write where the wallet is used (its province, use-place and what goes with them) for the
        request `token`, raising the use-place's version and recording `token` (`place_changes`) in
        the same transaction; returns the wallet as written. Only while the wallet is of `province`
        (as the caller checked the write against it): these writes are one at a time per owner (a
        lock), so a use-place change and the wallet following its owner to another province never
        mix; None, nothing written, when it is of another province by now. The registry's note of
        it is due first (`notes_due`), so that it reaches the registry even if this request stops
        here: the maintenance pass delivers it."""
        try:
            lease = await self.locks.acquire(self.k.wallet_tag(owner) + ":place")
        except LockBusy:
            raise errors.unavailable("WALLET_BUSY", "the wallet's use-place is being written; retry") from None
        try:
            if _s(await self.r.hget(self.k.wallet(owner), "province") or b"") != province:
                return None
            await self.r.zadd(self.k.notes_due(), {_due(owner, token): self.clock.now_ms()})
            async with self.r.pipeline(transaction=True) as p:
                p.hset(self.k.wallet(owner), items=fields)
                p.hincrby(self.k.wallet(owner), "place_v", 1)
                p.hset(self.k.place_changes(owner), token, self.clock.now_ms())
                p.hgetall(self.k.wallet(owner))
                *_, raw = await p.execute()
        finally:
            await self.locks.release(lease)
        return _decode(raw)

    async def _note_place(self, owner: str, row: dict[str, str], token: str, read_status: bool = False) -> None:
        """Tell the registry of the wallet's province where the wallet is used (its waterfall asks the
        wallet only there), with the use-place's version: the registry keeps the newest, so this
        may run late, twice or beside a newer change; with `read_status`, then read the owner's
        status back from it (`_keep_status`). Only then is the note of request `token` no longer
        due. UNAVAILABLE when the registry did not take it."""
        try:
            await self.registries.stub(row["province"]).NoteWallet(rpb.NoteWalletRequest(
                id_number=owner, use_place_admdvs=row["use_place"], place_version=int(row.get("place_v", 0))),
                timeout=self.registries.timeout())
        except grpc.aio.AioRpcError as exc:
            raise downstream(exc, row["province"]) from None
        if read_status:
            await self._keep_status(owner, row["province"])
        await self.r.zrem(self.k.notes_due(), _due(owner, token))

    async def deliver_notes(self, cutoff_ms: int, still_held: Callable[[], Awaitable[bool]]) -> tuple[int, int]:
        """The maintenance pass's share: every note due since before `cutoff_ms` goes to the registry,
        while `still_held` says the pass may go on. A note goes once its change is written (the
        change recorded its request id, `place_changes`, or opened the wallet): the wallet is read
        after that, so what is sent is that change or a later one. A change not written yet is
        under way, or its request stopped before it (then, once NOTE_ABANDON_MS old, there is
        nothing to tell). Until the registry had the note it knew of no wallet to tell of the
        owner's status changes, so the wallet then reads the status back itself. Returns how many
        were delivered and how many deferred: one the registry does not take stays due."""
        delivered = deferred = 0
        due = cast(list[tuple[bytes, float]],
                   await self.r.zrangebyscore(self.k.notes_due(), "-inf", cutoff_ms, withscores=True))
        for raw, since in due:
            if not await still_held():
                break
            owner, _, token = _s(raw).partition("|")
            async with self.r.pipeline(transaction=False) as p:
                p.hexists(self.k.place_changes(owner), token)
                p.hgetall(self.k.wallet(owner))
                written, raw_row = await p.execute()
            row = _decode(raw_row)
            try:
                if row and (written or row.get("open_rid") == token):
                    await self._note_place(owner, row, token, read_status=True)
                elif row and since > self.clock.now_ms() - NOTE_ABANDON_MS:
                    continue
                else:  # no such wallet, or a request that stopped before its change
                    await self.r.zrem(self.k.notes_due(), _s(raw))
            except DomainError as exc:
                log.warning("wallet note deferred", extra={"fields": {"id_number": mask(owner), "reason": exc.reason}})
                deferred += 1
                continue
            delivered += 1
        return delivered, deferred

    async def _moved_to(self, owner: str, row: dict[str, str], to: str = "") -> tuple[str, rpb.Person] | None:
        """Where the wallet's owner is insured now, when they moved away from the wallet's province
        (read only): the province whose registry holds them ACTIVE, reached through each registry's
        `moved_to_province`, and them as it holds them. None where they did not move to an ACTIVE
        insurance, or (`to` given) not to that province."""
        province, seen = row["province"], {row["province"]}
        while True:
            person = await self.registries.person(province, owner)
            if person is not None and person.status == cpb.PERSON_STATUS_ACTIVE:
                break
            went = person.moved_to_province if person is not None and \
                person.status == cpb.PERSON_STATUS_TERMINATED else ""
            if not went or went in seen or went not in self.regions:
                return None
            province = went
            seen.add(province)
        if province == row["province"] or (to and province != to):
            return None
        return province, person

    async def _follow_move(self, owner: str, row: dict[str, str], token: str, to: str = "", use_place: str = "",
                           opening: bool = False,
                           found: tuple[str, rpb.Person] | None = None) -> dict[str, str] | None:
        """The wallet follows its owner to the province that insures them now (SPEC §5b moving
        province): the registry of the wallet's province holds them TERMINATED with the province
        they moved to noted, and so on, until a registry holds them ACTIVE (`to`, when given, must
        be that province). Their wallet relationships ended with the move (the registry asked for
        it); the wallet itself, its entries and whatever it holds stay. The use-place becomes
        `use_place`, or the 统筹区 they are insured in there, written for request `token` (an opening
        request's own id, `opening`, also answers its resend). The new province's registry is told
        (its waterfall asks the wallet by use-place); should that fail, the maintenance pass tells
        it. Returns the wallet as it is now, or None (nothing written) where the owner did not move
        to an ACTIVE insurance. `found`: what `_moved_to` answered for this row, read already."""
        found = found or await self._moved_to(owner, row, to)
        if found is None:
            return None
        province, person = found
        place = use_place or person.pooling_region
        rules.check_use_place(self.regions, province, place)
        fields: list[Any] = ["province", province, "use_place", place, "moved_from", row["province"],
                             "moved_at", self.clock.now_ms(), "status", "ACTIVE"]
        if opening:
            fields += ["open_rid", token]  # a resend of the opening that moved it finishes it
        moved = await self._set_place(owner, token, fields, row["province"])
        if moved is None:  # another request moved it meanwhile
            now = await self._wallet_row(owner)
            return now if now.get("province") == province else None
        event(log, "wallet followed its owner", id_number=owner, moved_from=row["province"], province=province,
              use_place=place)
        try:
            await self._note_place(owner, moved, token, read_status=True)  # as for an opening
        except DomainError as exc:
            log.warning("wallet note deferred", extra={"fields": {"id_number": mask(owner), "reason": exc.reason}})
        return moved

    async def note_owner_status(self, req: pb.NoteOwnerStatusRequest,
                                acting: str | None = None) -> pb.NoteOwnerStatusResponse:
        """A registry says the person's status changed: the wallet reads it back and keeps it
        (`_keep_status`). `acting`: the calling registry's province, which must be `req.province`."""
        owner = validate.id_number(req.id_number, "id_number")
        validate.province(req.province, "province")
        rules.check_acting_province(acting, req.province)
        person = await self._keep_status(owner, req.province)
        return pb.NoteOwnerStatusResponse(status=person.status if person is not None
                                          else cpb.PERSON_STATUS_UNSPECIFIED)

    async def _keep_status(self, owner: str, province: str) -> rpb.Person | None:
        """Read the owner's status back from the registry of `province`, the wallet's province, and
        keep it (spending asks it, `Spending._check_owner_may_pay`); the person as read, or None. A
        registry's note carries no status of its own, so notes arriving late or out of order cannot
        leave an old one: each reads the registry as it is now, one at a time per owner (a lock), so
        the last write is the latest read. A note from another province's registry changes nothing,
        nor one whose wallet followed its owner to another province during the read."""

        async def insured_there() -> bool:
            return _s(await self.r.hget(self.k.wallet(owner), "province") or b"") == province

        if not await insured_there():  # nothing to keep, nothing written
            return None
        try:
            lease = await self.locks.acquire(self.k.wallet_tag(owner) + ":status")
        except LockBusy:
            raise errors.unavailable("WALLET_BUSY", "the owner's status is being noted; retry") from None
        try:
            if not await insured_there():
                return None
            person = await self.registries.person(province, owner)
            status = cpb.PersonStatus.Name(person.status)[len("PERSON_STATUS_"):] if person is not None \
                else "NOT_ENROLLED"
            # Written only while the wallet is still of that province: it may follow its owner to
            # another one during the read (`_follow_move`), and that one's status counts then.
            await self.lua["status_set"](keys=[self.k.wallet(owner)], args=[province, status])
        finally:
            await self.locks.release(lease)
        event(log, "owner status noted", id_number=owner, province=province, status=status)
        return person

    async def change_use_place(self, req: pb.ChangeUsePlaceRequest) -> pb.ChangeUsePlaceResponse:
        """使用地变更: effective at once; later spending follows the new place (SPEC §5)."""
        owner = validate.id_number(req.owner_id_number, "owner_id_number")
        validate.admdvs(req.use_place_admdvs, "use_place_admdvs", required=True)

        async def work() -> pb.ChangeUsePlaceResponse:
            row = await self._wallet_row(owner)
            if not row:
                raise errors.not_found("WALLET_NOT_FOUND", f"{mask(owner)} has no wallet")
            # A change this very request id made (a resend after a lost answer) is not made again,
            # over any made since: only its note may be left to do. A place in the province the
            # owner moved to brings the wallet along.
            if not await self.r.hexists(self.k.place_changes(owner), req.request_id):
                moved = await self._follow_move(owner, row, req.request_id, req.use_place_admdvs[:2],
                                                req.use_place_admdvs) \
                    if req.use_place_admdvs[:2] != row["province"] else None
                if moved is None:
                    rules.check_use_place(self.regions, row["province"], req.use_place_admdvs)
                    moved = await self._set_place(owner, req.request_id, ["use_place", req.use_place_admdvs],
                                                  row["province"])
                if moved is None:
                    raise errors.unavailable("WALLET_BUSY", "the wallet followed its owner to another province "
                                             "meanwhile; retry with the same request id")
                row = moved
            # The insuring registry's note follows (its waterfall asks the wallet by use-place); on
            # failure the claim stays, and the maintenance pass (or a retry of this request id)
            # delivers it.
            try:
                await self._note_place(owner, row, req.request_id)
            except DomainError as exc:
                raise exc.after_effects() from None
            event(log, "use-place changed", id_number=owner, use_place=req.use_place_admdvs)
            return pb.ChangeUsePlaceResponse(wallet=self._wallet_pb(row))

        return await self._once(req, "use_place", owner, pb.ChangeUsePlaceResponse, work)

    async def _lots(self, owner: str, *, with_quota_only: bool = True) -> list[dict[str, Any]]:
        order = await self.r.lrange(self.k.lot_order(owner), 0, -1)
        if not order:
            return []
        raws = await self.r.hmget(self.k.lots(owner), order)
        lots = [json.loads(_s(x)) for x in raws if x is not None]
        return [lot for lot in lots if lot["rem"] > 0 or not with_quota_only]

    async def get_wallet(self, req: pb.GetWalletRequest) -> pb.GetWalletResponse:
        owner = validate.id_number(req.owner_id_number, "owner_id_number")
        row = await self._wallet_row(owner)
        if not row:
            raise errors.not_found("WALLET_NOT_FOUND", f"{mask(owner)} has no wallet")
        lots = await self._lots(owner)
        by_sender: dict[str, int] = {}
        for lot in lots:
            by_sender[lot["sender"]] = by_sender.get(lot["sender"], 0) + int(lot["rem"])
        return pb.GetWalletResponse(
            wallet=self._wallet_pb(row),
            lots=[pb.Lot(transfer_id=lot["tid"], sender_id_number=lot["sender"], sender_province=lot["sprov"],
                         amount_fen=int(lot["amount"]), remaining_fen=int(lot["rem"]),
                         received_at_unix_ms=int(lot["at"]), via_id_number=lot.get("via", "")) for lot in lots],
            remaining_by_sender_fen=by_sender,
        )

    async def balances(self, req: pb.GetWalletBalancesRequest) -> pb.GetWalletBalancesResponse:
        if not 0 < len(req.owner_id_numbers) <= MAX_BALANCES:
            raise errors.invalid("INVALID_OWNERS", f"ask for 1..{MAX_BALANCES} owners", field="owner_id_numbers")
        owners = [validate.id_number(o, "owner_id_numbers") for o in req.owner_id_numbers]
        async with self.r.pipeline(transaction=False) as pipe:
            for owner in owners:
                pipe.hmget(self.k.wallet(owner), ["use_place", "bal"])
            rows = await pipe.execute()
        return pb.GetWalletBalancesResponse(balances=[
            pb.WalletBalance(owner_id_number=owner, opened=place is not None, use_place_admdvs=_s(place or b""),
                             balance_fen=int(bal or 0))
            for owner, (place, bal) in zip(owners, rows, strict=True)])

    async def list_entries(self, req: pb.ListWalletEntriesRequest) -> pb.ListWalletEntriesResponse:
        """The wallet's entries, newest first, a page at a time. The entries list is only ever appended
        to, so a page token is the place (list index) of the oldest entry the page before listed."""
        owner = validate.id_number(req.owner_id_number, "owner_id_number")
        size = page_tokens.page_size(req.page_size, req.limit, ENTRIES_PAGE, MAX_ENTRIES_PAGE)
        asked = page_tokens.question("ListWalletEntries", owner)
        key = self.k.entries(owner)
        if req.page_token:
            (place,) = page_tokens.unseal(req.page_token, asked, 1, "wallet")
            if not page_tokens.is_count(place) or not 0 < int(place) <= await self.r.llen(key):
                raise page_tokens.not_ours("wallet")
            end = int(place)
        else:
            end = await self.r.llen(key)  # the page as of now: entries written from here on are newer
        start = max(end - size, 0)
        raws = await self.r.lrange(key, start, end - 1) if end else []
        out = []
        for raw in reversed(raws):
            e = json.loads(_s(raw))
            out.append(pb.WalletEntry(seq=e["seq"], kind=e["kind"], amount_fen=e["amount"], balance_after_fen=e["bal"],
                                      ref=e["ref"], at_unix_ms=e["at"]))
        return pb.ListWalletEntriesResponse(entries=out,
                                            next_page_token=page_tokens.seal(asked, [str(start)]) if start else "")
