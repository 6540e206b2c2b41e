"""Ending relationships: a sender's lots released, a person's or one relationship's ended (SPEC §5b)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from medaid.common import errors, rpc
from medaid.common.logs import event
from medaid.common.values import text as _s
from medaid.registry import validate
from medaid.wallet import rules
from medaid.wallet.core import PERSON_END_REASONS, TERMINAL
from medaid.wallet.spending import Spending
from medaid.wallet.v1 import wallet_pb2 as pb

log = logging.getLogger("medaid.wallet")


@dataclass
class Ended:
    """What ending relationships did: fen sent home to personal accounts (lots, and transfers in flight
    sent back to the account they were debited from), wallets touched, transfers in flight sent back."""

    returned: int = 0
    wallets: int = 0
    transfers: int = 0


class Endings(Spending):
    """Ending wallet relationships: everything a sender funded, or a holder holds, goes home."""

    async def release_sender_lots(self, req: pb.ReleaseSenderLotsRequest,
                                  acting: str | None = None) -> pb.ReleaseSenderLotsResponse:
        """`acting`: the calling registry's province. The request names none, so it acts for the
        caller's: the lots the sender sent as an insured person of it (as the SENDER half of
        `end_person_relationships`); a certificate naming no province is refused (it would end every
        province's), and without identities (None) every lot goes."""
        sender = validate.id_number(req.sender_id_number, "sender_id_number")
        if req.reason not in ("TERMINATED", "MOVED"):
            raise errors.invalid("INVALID_REASON", "reason is TERMINATED or MOVED", field="reason")
        self._check_event_at(req.event_at_unix_ms)
        rules.check_acting_province(acting, acting or "")

        async def work() -> pb.ReleaseSenderLotsResponse:
            # Only what began by the event (0: everything), as EndPersonWalletRelationships: a
            # release that comes late leaves what the sender sent since. Its time is kept first, as
            # the sender's alone: it fails a transfer from them recorded after the look for transfers
            # in flight, never one to them.
            await self._note_ended(sender, acting or "", req.event_at_unix_ms or self.clock.now_ms(),
                                   as_sender_only=True)
            ended = await self._end(req.request_id, sender, "SENDER", province=acting or "",
                                    event_at=req.event_at_unix_ms)
            return pb.ReleaseSenderLotsResponse(returned_fen=ended.returned, wallets_touched=ended.wallets)

        return await self._once(req, "release", sender, pb.ReleaseSenderLotsResponse, work)

    async def end_person_relationships(
            self, req: pb.EndPersonWalletRelationshipsRequest,
            acting: str | None = None) -> pb.EndPersonWalletRelationshipsResponse:
        """Every wallet relationship where the person is a side ends (SPEC §5, §5b): what they sent
        (directly or passed on) comes home, and what they hold goes back to the funding employees.
        `acting`: the calling registry's province, which must be `req.province`
        (`rules.check_acting_province`)."""
        pid = validate.id_number(req.id_number, "id_number")
        if req.reason not in PERSON_END_REASONS:
            raise errors.invalid("INVALID_REASON", f"reason is one of {', '.join(PERSON_END_REASONS)}", field="reason")
        if req.province:
            validate.province(req.province, "province")
        self._check_event_at(req.event_at_unix_ms)
        rules.check_acting_province(acting, req.province)

        async def work() -> pb.EndPersonWalletRelationshipsResponse:
            # Only what they have as an insured person of the reporting province, begun by the event:
            # an end that comes late leaves what began after it, in another province the wallet
            # followed them to or in this one (ACTIVE again, or in their new 统筹区).
            at = req.event_at_unix_ms
            await self._note_ended(pid, req.province, at or self.clock.now_ms())
            as_sender = await self._end(rpc.derived_id("sent", req.request_id), pid, "SENDER", province=req.province,
                                        event_at=at)
            as_holder = await self._end(rpc.derived_id("held", req.request_id), pid, "ALL", province=req.province,
                                        event_at=at)
            event(log, "wallet relationships ended", id_number=pid, reason=req.reason,
                  returned_as_sender_fen=as_sender.returned, returned_as_holder_fen=as_holder.returned)
            return pb.EndPersonWalletRelationshipsResponse(returned_as_sender_fen=as_sender.returned,
                                                           returned_as_holder_fen=as_holder.returned)

        return await self._once(req, "end_person", pid, pb.EndPersonWalletRelationshipsResponse, work)

    def _check_event_at(self, ms: int) -> None:
        """An ending's event time is 0 (every relationship) or a past instant: never ahead of the
        wallet's clock by more than a clock's skew (`rules.CLOCK_SKEW_MS`)."""
        if not 0 <= ms <= self.clock.now_ms() + rules.CLOCK_SKEW_MS:
            raise errors.invalid("INVALID_EVENT_AT", "event_at_unix_ms is when the event happened as the registry "
                                 "recorded it (unix ms, not in the future), or 0 for every relationship",
                                 field="event_at_unix_ms")

    async def _note_ended(self, pid: str, province: str, at: int, as_sender_only: bool = False) -> None:
        """Keep that the person's relationships as an insured person of `province` ("": of every one)
        ended for an event at `at`, before the ending looks for their transfers in flight: a transfer
        whose record is written after that look (its checks passed just before the event) reads it
        before it is debited and fails (transfer_saga.py `_side_ended`), instead of waiting for an
        accept its recipient can no longer give, the sender's one pending transfer taken, until 06:00.
        The later of two events' times is kept. `as_sender_only`: only the relationships where they
        are the sender ended (`Keys.sender_ended`)."""
        key = self.k.sender_ended(pid) if as_sender_only else self.k.ended(pid)
        async with self.r.pipeline(transaction=False) as p:
            p.zadd(key, {province: at}, gt=True)
            p.expire(key, rules.ENDED_KEEP_S)
            await p.execute()

    async def end_relationship(self, req: pb.EndWalletRelationshipRequest) -> pb.EndWalletRelationshipResponse:
        """Either side ends one relationship (sender → holder)."""
        sender = validate.id_number(req.sender_id_number, "sender_id_number")
        holder = validate.id_number(req.holder_id_number, "holder_id_number")
        by = validate.id_number(req.requested_by_id_number, "requested_by_id_number")
        if sender == holder:
            raise errors.invalid("SELF_RELATIONSHIP", "sender and holder are the same person: no relationship to end")
        if by not in (sender, holder):
            raise errors.invalid("NOT_A_SIDE", "only the sender or the holder may end the relationship",
                                 field="requested_by_id_number")

        async def work() -> pb.EndWalletRelationshipResponse:
            # A refusal writes nothing: whether there is anything to end is read first. A resend of a
            # request that began finishes it instead: its return is indexed before its first write
            # (say, sending back the only transfer there was) and its record written with the lots out.
            # The relationship is read before the return: an ending of this request that ran
            # meanwhile (a concurrent resend) indexed its return before it ended anything, so a
            # relationship found ended is found begun, and answered as that ending answers.
            relid = rpc.derived_id("ret", req.request_id, holder)
            if not await self._relationship_live(sender, holder) and not await self._ending_began(relid, holder):
                raise errors.not_found("RELATIONSHIP_NOT_FOUND", "no live wallet relationship from this sender to "
                                       "this holder (every lot of it ended already, no transfer waiting)")
            ended = await self._end(req.request_id, sender, "PAIR", holder)
            event(log, "wallet relationship ended", sender=sender, holder=holder, by=by, returned_fen=ended.returned)
            return pb.EndWalletRelationshipResponse(returned_fen=ended.returned, transfers_returned=ended.transfers)

        return await self._once(req, "end_pair", holder, pb.EndWalletRelationshipResponse, work)

    async def _ending_began(self, relid: str, holder: str) -> bool:
        """Whether the return `relid` of an ending in wallet `holder` is indexed or written: from the
        ending's first write on, one of the two is there for good."""
        async with self.r.pipeline(transaction=False) as p:
            p.hexists(self.k.returns(holder), relid)
            p.hexists(self.k.returns_meta(), relid)
            return any(await p.execute())

    async def _end(self, base_id: str, who: str, mode: str, holder: str = "", province: str = "",
                   event_at: int = 0) -> Ended:
        """End relationships and send their lots home, once per `base_id` (every step is keyed by it).

        mode SENDER: every relationship where `who` sent (their lots, directly or passed on, wherever
        held); PAIR: `who` → `holder`; ALL: every relationship where `who` holds lots. `province`,
        when given, keeps SENDER and ALL to the relationships `who` has as an insured person of that
        province: transfers they sent from it, or received as its insured (the transfer record's
        sender or recipient province). `event_at`, when given, keeps them to the relationships begun
        by then (`rules.began_by`): transfers in flight created by then, and lots as
        lots_release.lua tells."""
        ended = Ended()
        scope: list[str] | None = None
        if mode != "SENDER":
            h = holder or who
            relid = rpc.derived_id("ret", base_id, h)
            if await self.r.hexists(self.k.returns(h), relid):
                # Its lots are out (its transfers were sent back before them): a resend, or the
                # maintenance pass, only drives the return home; nothing sent since is this ending's.
                amount = await self._drive_return(relid, h)
                home, sent_back = await self._sent_back(base_id)
                return Ended(returned=amount + home, wallets=1 if amount else 0, transfers=sent_back)
            # The one wallet this ends relationships in is known now: its return is in the returns
            # index before the first write, so that should this request stop before the lots are out
            # (say, while sending a waiting transfer back), the maintenance pass ends it all
            # (`finish_return`), without a resend. (SENDER: each holder's, once it is known.)
            _, scope = await self._index_ending(base_id, who, mode, holder, province, h, event_at)
        # First the transfers still in flight: one waiting for acceptance goes back now (accepting it
        # later answers TRANSFER_EXPIRED), one not yet debited fails (its debit is cancelled by id), so
        # none becomes a lot of a relationship that ended. Done before the lots, so an accept that won
        # the race has already made its lot (and its holder entry) by the time the lots are released.
        for raw_tid, raw_meta in (await self.r.hgetall(self.k.inflight_meta())).items():
            meta = json.loads(_s(raw_meta))
            tid = _s(raw_tid)
            if mode == "ALL":
                if meta["recipient"] != who or province not in ("", meta["recipient_province"]) \
                        or not rules.began_by(int(meta["created_at"]), event_at):
                    continue
            elif mode == "PAIR":
                if meta["sender"] != who or meta["recipient"] != holder or (scope is not None and tid not in scope):
                    continue
            elif not await self._sent_by(who, tid, meta, province, event_at) \
                    and not await self._passes_on_quota_of(who, tid, meta, province, event_at):
                continue
            # Noted before it is taken, and taken in this ending's name (`ended_by`), so that what it
            # sent back is counted however this run ends (`_sent_back`).
            await self.r.hset(self.k.sent_back(base_id), tid, meta["recipient"])
            ok, rec = await self._cas(meta["recipient"], tid, "PENDING_ACCEPT", "RETURNING", ended_by=base_id)
            if not ok and rec.get("state") == "CREATED":
                ok, rec = await self._cas(meta["recipient"], tid, "CREATED", "FAILING",
                                          failure_reason="RELATIONSHIP_ENDED", ended_by=base_id)
            await self._drive(tid, meta["recipient"], rec)
        ended.returned, ended.transfers = await self._sent_back(base_id)
        self._fault("release.after_transfers")
        if mode == "SENDER":
            holders = sorted(_s(x) for x in await self.r.smembers(self.k.holders(who)))
        else:
            holders = [holder or who]
        for h in holders:
            relid, scope = await self._index_ending(base_id, who, mode, holder, province, h, event_at)
            _, released = await self.lua["lots_release"](
                keys=[self.k.wallet(h), self.k.lots(h), self.k.lot_order(h), self.k.entries(h), self.k.returns(h),
                      self.k.onward_debits(h)],
                args=[relid, who, self.clock.now_ms(), mode, province, "" if scope is None else json.dumps(scope),
                      event_at])
            self._fault("release.after_lots")
            amount = await self._drive_return(relid, h)
            amount += await self._onward_home(json.loads(_s(released)).get("onward") or {})
            ended.returned += amount
            ended.wallets += 1 if amount else 0
        event(log, "lots released", who=who, mode=mode, returned_fen=ended.returned, wallets=ended.wallets)
        return ended

    async def _onward_home(self, taken: dict[str, int]) -> int:
        """The fen of lots a release ended that onward transfers had debited and not refunded yet
        (lots_release.lua's `onward`: transfer id → fen), counted as sent home by the release once
        each transfer has ended: one debited after the ending looked for transfers in flight carries
        quota of a relationship that ended, so it fails or goes back (driven to its end here, as the
        recovery loop would), and its refund sends those fen home, the lots being ended. Not counted:
        one accepted (its quota is a lot of its recipient, released there) and one an ending took in
        its look (`ended_by`: counted by that ending's `_sent_back`)."""
        fen = 0
        for tid, part in sorted(taken.items()):
            raw = await self.r.get(self.k.transfer_recipient(tid))
            if raw is None:
                continue
            recipient = _s(raw)
            rec = await self._transfer_record(recipient, tid)
            if rec.get("ended_by"):
                continue
            if rec.get("state") not in TERMINAL:
                rec = await self._drive(tid, recipient, rec)
            if rec.get("state") in ("FAILED", "RETURNED") and not rec.get("ended_by"):
                fen += int(part)
        return fen

    async def _sent_back(self, base_id: str) -> tuple[int, int]:
        """(fen sent home, transfers) of the transfers in flight the ending `base_id` sent back, counted
        from their records, whoever finished each (this run, an earlier one that stopped, the
        recovery loop): a transfer debited from a personal account is fen sent home like a lot
        (`refunded_home`); an onward one goes back to its sending wallet, whose lots go home as lots,
        but a part whose lot there ended meanwhile goes home at once, and counts (`refunded_home`).
        One this ending took but whose refund is not done yet is driven to its end first."""
        fen = count = 0
        noted = await self.r.hgetall(self.k.sent_back(base_id))
        for tid, recipient in sorted((_s(t), _s(r)) for t, r in noted.items()):
            rec = await self._transfer_record(recipient, tid)
            if rec.get("ended_by") != base_id:
                continue  # accepted, expired or ended otherwise before this ending took it
            if rec.get("state") not in TERMINAL:
                rec = await self._drive(tid, recipient, rec)
            count += 1
            fen += int(rec.get("refunded_home") or 0)
        return fen, count

    async def _index_ending(self, base_id: str, who: str, mode: str, holder: str, province: str,
                            h: str, event_at: int = 0) -> tuple[str, list[str] | None]:
        """Put the return of the ending `base_id` in wallet `h` in the returns index, with what it takes
        to do that ending again (`finish_return`); returns its id and, for one relationship (PAIR),
        its scope: the ids of the transfers in flight and the lots of the relationship when the
        ending was first indexed, kept on later indexings. A resend or the maintenance pass ends what
        the first attempt set out to end, not a transfer sent (or its lot accepted) since."""
        relid = rpc.derived_id("ret", base_id, h)
        meta: dict[str, Any] = {"holder": h, "sender": who, "ending": [base_id, mode, holder, province, event_at]}
        scope: list[str] | None = None
        if mode == "PAIR":
            raw = await self.r.hget(self.k.returns_meta(), relid)
            kept = json.loads(_s(raw)).get("scope") if raw is not None else None
            scope = kept if kept is not None else await self._pair_ids(who, h)
            meta["scope"] = scope
        async with self.r.pipeline(transaction=True) as p:
            p.hset(self.k.returns_meta(), relid, json.dumps(meta))
            p.zadd(self.k.returns_inflight(), {relid: self.clock.now_ms()})
            await p.execute()
        return relid, scope

    async def _pair_ids(self, sender: str, holder: str) -> list[str]:
        """The transfers in flight from `sender` to `holder` and the lots of that relationship in the
        holder's wallet (lots_release.lua's PAIR match), by id."""
        ids = sorted(_s(tid) for tid, raw in (await self.r.hgetall(self.k.inflight_meta())).items()
                     if (m := json.loads(_s(raw)))["sender"] == sender and m["recipient"] == holder)
        order = [_s(x) for x in await self.r.lrange(self.k.lot_order(holder), 0, -1)]
        raws = await self.r.hmget(self.k.lots(holder), order) if order else []
        for lid, raw in zip(order, raws, strict=True):
            lot = json.loads(_s(raw)) if raw is not None else None
            if lot is not None and (lot.get("via", "") == sender or (not lot.get("via") and lot["sender"] == sender)):
                ids.append(lid)
        return ids

    async def finish_return(self, relid: str, meta: dict[str, Any]) -> None:
        """The maintenance pass's share of a return in the returns index: drive it home; one of an
        ending whose request stopped before it took the lots out (no return record yet) is ended
        again as a whole, each step once per the ending's id, as a resend would; one of a spend
        refund whose request stopped before its script ran is refunded, as that request would (a
        stalled request that wakes up finds its own refund done and the return driven)."""
        refund = meta.get("refund")
        if refund and not await self.r.hexists(self.k.returns(meta["holder"]), relid):
            # The refund's time and whether it is a cancellation, kept since they decide its month
            # (an entry written before they were kept has neither, or no cancellation mark).
            spend_id, request_id, *when = refund
            await self._refund(meta["holder"], spend_id, request_id, indexed=True,
                               refunded_at=int(when[0]) if when else 0,
                               cancel=len(when) > 1 and when[1] == "cancel")
            return
        ending = meta.get("ending")
        if ending and not await self.r.hexists(self.k.returns(meta["holder"]), relid):
            base_id, mode, holder, province, *at = ending  # an entry written before endings kept the time: 0
            await self._end(base_id, meta["sender"], mode, holder, province, int(at[0]) if at else 0)
            return
        await self._drive_return(relid, meta["holder"])
