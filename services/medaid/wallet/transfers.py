"""Transfers between near-kin (SPEC §5): a transfer created (every check, the sender's limits
reserved, the record CREATED, then driven by the saga in transfer_saga.py until it waits for its
accept or fails) and accepted (the recipient's lot credited by the transfer id)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, NoReturn

from medaid.common import errors, metrics
from medaid.common.errors import DomainError
from medaid.common.idempotency import Finish, validate_request_id
from medaid.common.logs import event
from medaid.common.redis_client import barrier
from medaid.common.v1 import common_pb2 as cpb
from medaid.common.values import decode_hash as _decode
from medaid.common.values import decode_pairs as _pairs
from medaid.common.values import text as _s
from medaid.registry import validate
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.wallet import rules
from medaid.wallet.transfer_saga import TransferSaga
from medaid.wallet.v1 import wallet_pb2 as pb

log = logging.getLogger("medaid.wallet")


class Transfers(TransferSaga):
    """Create a transfer (admit it, then drive the saga) and accept one (credit a lot)."""

    async def create_transfer(self, req: pb.CreateTransferRequest) -> pb.CreateTransferResponse:
        tid = req.request_id
        validate_request_id(tid)
        sender = validate.id_number(req.sender_id_number, "sender_id_number")
        recipient = validate.id_number(req.recipient_id_number, "recipient_id_number")
        validate.province(req.sender_province, "sender_province")
        relation = validate.enum_name(cpb.Relation, req.relation, "RELATION_", "relation")
        validate.amount(req.amount_fen)
        if sender == recipient:
            raise errors.invalid("SELF_TRANSFER", "sender and recipient are the same person")
        verified = req.HasField("verification") and validate.attestation(
            req.verification.method, req.verification.attestation_id, "verification") and \
            req.verification.method in rules.TRANSFER_VERIFICATIONS
        if req.source not in (pb.TRANSFER_SOURCE_UNSPECIFIED, pb.TRANSFER_SOURCE_PERSONAL_ACCOUNT,
                              pb.TRANSFER_SOURCE_WALLET):
            raise errors.invalid("INVALID_SOURCE", "source is PERSONAL_ACCOUNT or WALLET", field="source")
        self.registries.stub(req.sender_province)

        def prefetch(pipe: Any) -> None:  # read with the claim, in its round trip
            pipe.hgetall(self.k.transfer(recipient, tid))
            pipe.hgetall(self.k.wallet(recipient))
            pipe.get(self.k.transfer_recipient(tid))
            pipe.hgetall(self.k.wallet(sender))

        async def work(rec_raw: dict[bytes, bytes], wallet_raw: dict[bytes, bytes],
                       indexed: bytes | None, sender_wallet_raw: dict[bytes, bytes]) -> pb.CreateTransferResponse:
            rec: dict[str, str] | None = _decode(rec_raw)
            if not rec and indexed is not None and _s(indexed) != recipient:
                # The id names a transfer to someone else (its claim gone): the registry's debit is
                # keyed by the transfer id, so a second transfer under it must never be created.
                raise errors.exists("IDEMPOTENCY_KEY_REUSED", f"transfer id {tid} was already used for a "
                                    "transfer to another recipient", request_id=tid)
            if not rec:
                try:
                    rec = await self._admit_transfer(req, sender, recipient, relation, verified, _decode(wallet_raw),
                                                     _decode(sender_wallet_raw))
                except DomainError:
                    # A concurrent duplicate of this request (same id, claim PENDING) may have
                    # recorded and debited the transfer meanwhile, so the checks now see the
                    # debited balance. The transfer exists: drive it, never refuse it (a refusal
                    # would also drop the idempotency claim of a transfer that moved money).
                    if not await self._transfer_record(recipient, tid):
                        raise
                    rec = None
            try:
                return await self._drive_new_transfer(tid, recipient, rec)
            except DomainError as exc:
                # The transfer is recorded (and maybe debited), e.g. the registry did not answer: keep
                # the claim, so GetTransfer and AcceptTransfer find the transfer that the recovery loop
                # (or a retry with the same request id) finishes.
                raise exc.after_effects() from exc

        return await self.idem.run(req, "transfer", recipient, pb.CreateTransferResponse, work,
                                   self.clock.now_ms(), prefetch)

    async def _admit_transfer(self, req: pb.CreateTransferRequest, sender: str, recipient: str, relation: str,
                              verified: bool, wallet: dict[str, str],
                              sender_wallet: dict[str, str]) -> dict[str, str] | None:
        """Every check that needs no money to move, then reserve the limits and record CREATED.

        `wallet` and `sender_wallet` are the recipient's and the sender's wallet hashes as read with
        the claim. Returns the record as written, or None when a concurrent duplicate recorded it
        first (the caller reads it)."""
        now = self.clock.now_ms()
        onward = req.source == pb.TRANSFER_SOURCE_WALLET
        if not wallet:
            raise errors.refused("RECIPIENT_NO_WALLET", "the recipient has no 医保钱包: they must open one first")
        if not sender_wallet:
            raise errors.refused("SENDER_NO_WALLET", "the sender has no 医保钱包: both sides open one to transfer")
        rules.check_transfer(self.policy, relation=relation, amount=req.amount_fen, now_ms=now, verified=verified)
        # A wallet whose owner moved province follows them (a write), but only once nothing can refuse
        # the transfer any more: until then the checks go by where the owner is insured now.
        follows: list[tuple[str, dict[str, str], tuple[str, rpb.Person]]] = []
        if onward and sender_wallet["province"] != req.sender_province:
            found = await self._moved_to(sender, sender_wallet, req.sender_province)
            if found is None:
                raise errors.invalid("SENDER_PROVINCE_MISMATCH", "an onward transfer's sender_province is the "
                                     f"province of the sending wallet ({sender_wallet['province']})",
                                     field="sender_province")
            follows.append((sender, sender_wallet, found))
            sender_wallet = {**sender_wallet, "province": found[0]}
        # Both registries are asked at once (two provinces, two independent reads).
        (recipient_province, recipient_person, found), sender_person = await asyncio.gather(
            self._recipient_at_home(wallet, recipient), self.registries.person(req.sender_province, sender))
        if found is not None:
            follows.append((recipient, wallet, found))
        if sender_person is None or sender_person.status != cpb.PERSON_STATUS_ACTIVE:
            raise errors.refused("SENDER_NOT_ACTIVE", "the sender is not an ACTIVE insured person of province "
                                 f"{req.sender_province}")
        rules.check_live(self.policy, sender_region=sender_person.pooling_region,
                         recipient_region=recipient_person.pooling_region)
        if onward:
            if int(sender_wallet["bal"]) < req.amount_fen:
                raise errors.refused("INSUFFICIENT_QUOTA", f"the sending wallet holds {sender_wallet['bal']} fen, "
                                     f"less than {req.amount_fen}")
        elif not sender_person.has_personal_account:
            raise errors.refused("SENDER_NOT_EMPLOYEE", "only an employee's personal account can send; a wallet "
                                 "holder passes quota on with source WALLET")
        elif sender_person.balance_fen < req.amount_fen:
            raise errors.refused("INSUFFICIENT_BALANCE", "the sender's personal account balance is insufficient")
        for _, _, (province, person) in follows:  # the use-place a followed wallet gets (`_follow_move`)
            rules.check_use_place(self.regions, province, person.pooling_region)
        tid = req.request_id
        day = rules.shanghai_day(now)
        fields = {"tid": tid, "sender": sender, "sender_province": req.sender_province, "recipient": recipient,
                  "recipient_province": recipient_province, "relation": relation, "amount": str(req.amount_fen),
                  "created_at": str(now), "day": day, "source": "WALLET" if onward else "ACCOUNT"}
        # In the in-flight index before reserving: if this process dies (or stalls) between the
        # reservation and the transfer record, the recovery loop finds the id, records the transfer
        # FAILED from these fields and gives the reservation back (`_abandon_uncreated`), instead of
        # the sender's one-pending slot staying taken for good. The index entries, then the
        # reservation: in one round trip on one Redis, which applies a pipeline in order; a cluster
        # applies the index entries first (`barrier`).
        meta = json.dumps(fields)
        async with self.r.pipeline(transaction=False) as p:
            p.hset(self.k.inflight_meta(), tid, meta)
            p.zadd(self.k.inflight(), {tid: now})
            await barrier(p)
            await self.lua["reserve"](
                keys=[self.k.pending(sender), self.k.day_count(sender, day), self.k.reserved(sender),
                      self.k.sent(sender), self.k.pending_deadline(sender)],
                args=[tid, day, self.policy.daily_transfers, "1" if self.policy.one_pending_per_sender else "0",
                      now, rules.accept_deadline(self.policy, now)],
                client=p)
            *_, (status, code) = await p.execute()
        if _s(status) == "ERR":
            async with self.r.pipeline(transaction=True) as p:  # nothing reserved, nothing recorded
                p.zrem(self.k.inflight(), tid)
                p.hdel(self.k.inflight_meta(), tid)
                await p.execute()
            messages = {"PENDING_TRANSFER_EXISTS": "an unaccepted transfer from this sender is still pending",
                        "DAILY_LIMIT_REACHED": f"at most {self.policy.daily_transfers} transfers a day"}
            limit = {"limit": str(self.policy.daily_transfers)} if _s(code) == "DAILY_LIMIT_REACHED" else {}
            raise errors.refused(_s(code), messages[_s(code)], **limit)
        self._fault("transfer.after_reserve")
        for owner, row, found in follows:  # the limits are reserved: the transfer goes ahead
            if await self._follow_move(owner, row, tid, found[0], found=found) is None:
                # The owner's insurance changed since it was read: the reservation goes back with
                # the in-flight entry (the recovery loop), and a resend is judged afresh.
                raise errors.unavailable("WALLET_BUSY", "the wallet's owner changed province or status "
                                         "meanwhile; retry with the same request id")
        # The index, then the record (in one round trip on one Redis, which applies a pipeline in
        # order; `barrier` on a cluster): a record never exists without the index that GetTransfer
        # finds it by.
        async with self.r.pipeline(transaction=False) as p:
            p.set(self.k.transfer_recipient(tid), recipient)
            await barrier(p)
            await self.lua["xfer_create"](keys=[self.k.transfer(recipient, tid), self.k.incoming(recipient)],
                                          args=[x for kv in fields.items() for x in kv], client=p)
            *_, state = await p.execute()
        self._fault("transfer.after_create")
        event(log, "transfer created", sender=sender, recipient=recipient, transfer=tid, amount_fen=req.amount_fen)
        metrics.transfer("CREATED")
        return {**fields, "state": "CREATED"} if _s(state) == "CREATED" else None

    async def _recipient_at_home(self, wallet: dict[str, str], recipient: str
                                 ) -> tuple[str, rpb.Person, tuple[str, rpb.Person] | None]:
        """The recipient's province and the recipient, ACTIVE there: the province the wallet names, or
        for a recipient who moved province and is insured where they went, that one, with what
        `_moved_to` found (their wallet follows them once the transfer is admitted). Reads only."""
        try:
            return wallet["province"], await self._active_recipient(wallet["province"], recipient), None
        except DomainError as exc:
            if exc.reason != "RECIPIENT_NOT_INSURED":
                raise
            found = await self._moved_to(recipient, wallet)
            if found is None:
                raise
        return found[0], found[1], found

    async def _active_recipient(self, province: str, recipient: str) -> rpb.Person:
        """The recipient as their wallet's province holds them, refused unless ACTIVE: a transfer is
        neither created for nor accepted by someone not insured (SPEC §5)."""
        person = await self.registries.person(province, recipient)
        if person is None or person.status != cpb.PERSON_STATUS_ACTIVE:
            raise errors.refused("RECIPIENT_NOT_INSURED", "the recipient is not an ACTIVE insured person")
        return person

    async def _drive_new_transfer(self, tid: str, recipient: str,
                                  rec: dict[str, str] | None = None) -> pb.CreateTransferResponse:
        rec = await self._drive(tid, recipient, rec)
        if rec["state"] == "FAILED":
            err = errors.refused(rec.get("failure_reason") or "TRANSFER_FAILED",
                                 "the transfer failed before any money moved: "
                                 + (rec.get("failure_reason") or "see the transfer record"), transfer_id=tid)
            await self.idem.finish_error(tid, err)
            raise err.after_effects()
        return pb.CreateTransferResponse(transfer=self._transfer_pb(rec))

    async def accept(self, req: pb.AcceptTransferRequest) -> pb.AcceptTransferResponse:
        validate_request_id(req.transfer_id)
        recipient = validate.id_number(req.recipient_id_number, "recipient_id_number")

        tid = req.transfer_id

        def prefetch(pipe: Any) -> None:  # read with the claim, in its round trip
            pipe.hgetall(self.k.transfer(recipient, tid))

        async def work(rec_raw: dict[bytes, bytes]) -> Finish:
            self._fault("accept.after_claim")
            # The record sits in the recipient's slot: found there, it is a transfer to this recipient.
            rec = _decode(rec_raw)
            if not rec:
                raise errors.not_found("TRANSFER_NOT_FOUND", "no transfer with this id for this recipient")
            if rec["state"] == "CREATED" or (rec["state"] == "PENDING_ACCEPT" and rec.get("parts")):
                # Passed-on quota is read against its origins' endings once more, after its parts
                # were recorded (`_origin_ended`): one that ended goes back, and is refused below.
                rec = await self._drive(tid, recipient, rec)
            now = self.clock.now_ms()
            # A refusal the record already shows is given before any write (a refusal writes nothing).
            if rec["state"] == "PENDING_ACCEPT" and now >= int(rec["expires_at"]):
                await self._refuse_accept(tid, recipient, "EXPIRED")
            if rec["state"] not in ("PENDING_ACCEPT", "COMPLETED"):
                await self._refuse_accept(tid, recipient, rec["state"])
            if rec["state"] == "PENDING_ACCEPT":
                # Refused before the script, so nothing is written; the transfer stays pending and
                # goes back to the sender at its deadline unless the recipient is ACTIVE again by then.
                await self._active_recipient(rec["recipient_province"], recipient)
            # Only the script writes: should the transfer change state between the read above and
            # the script (the sweeper, a release), the refusal leaves nothing behind. The holder
            # entry follows the lot (`_queue_side_effects`), and a release cannot miss a lot made
            # meanwhile: the transfer stays in the in-flight index until that entry is written, and
            # a release drives the sender's in-flight transfers (which writes it) before it reads
            # the holders. The script judges the deadline at the time of its write, read after the
            # registry call: an accept whose check ended past 06:00 is refused (decision 13).
            reply = await self.lua["xfer_accept"](
                keys=[self.k.transfer(recipient, tid), self.k.wallet(recipient), self.k.lots(recipient),
                      self.k.lot_order(recipient), self.k.entries(recipient)],
                args=[tid, self.clock.now_ms(), recipient])
            if _s(reply[0]) == "NO":
                await self._refuse_accept(tid, recipient, _s(reply[1]))
            self._fault("accept.after_credit")
            rec, wallet = _pairs(reply[2]), _pairs(reply[3])  # both as the accept left them
            event(log, "transfer accepted", transfer=tid, recipient=recipient, amount_fen=int(rec["amount"]))
            metrics.transfer("COMPLETED")
            # The bookkeeping (limits, in-flight index) and this answer's record: one round trip.
            return Finish(pb.AcceptTransferResponse(transfer=self._transfer_pb(rec), wallet=self._wallet_pb(wallet)),
                          lambda p: self._queue_side_effects(p, tid, rec))

        return await self.idem.run(req, "accept", recipient, pb.AcceptTransferResponse, work,
                                   self.clock.now_ms(), prefetch)

    async def _refuse_accept(self, tid: str, recipient: str, why: str) -> NoReturn:
        """Refuse an accept of a transfer that cannot be accepted: `why` is its state, or EXPIRED (still
        PENDING_ACCEPT past its deadline: its return is due, and is driven now)."""
        if why == "EXPIRED":
            await self._drive(tid, recipient)
            raise errors.refused("TRANSFER_EXPIRED", "the transfer was not accepted by 06:00 the next "
                                 "day and goes back to the sender")
        if why in ("RETURNING", "RETURNED"):
            raise errors.refused("TRANSFER_EXPIRED", "the transfer was returned to the sender")
        if why in ("FAILING", "FAILED"):
            raise errors.refused("TRANSFER_FAILED", "the transfer failed; nothing to accept")
        raise errors.unavailable("TRANSFER_IN_PROGRESS", f"the transfer is {why}; retry")
