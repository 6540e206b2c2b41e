"""The national 医保钱包: wallets, the exactly-once transfer saga, spending, clearing.

Transfer saga (state in the recipient's wallet slot, `xfer:<tid>`; tid = the request id):

    CREATED ──debit ok──▶ PENDING_ACCEPT ──accept──▶ COMPLETED
       │                        │
       │ debit refused          └─06:00 next day─▶ RETURNING ──refund──▶ RETURNED
       ▼
    FAILING ──cancel/refund──▶ FAILED

* The registry's debit is keyed by the transfer id (`xfer:<tid>` marker in the same Lua script as
  the debit); its refund is keyed by it too, and a refunded/cancelled transfer can never be debited
  again, so FAILED and RETURNED are final even if a late debit retry arrives.
* The wallet's credit (accept) is keyed by the transfer id in the same script that creates the lot.
* Every transition is a compare-and-set on the transfer record, so the request path, the expiry
  sweeper and the recovery loop may race without a double effect.
* The recovery loop re-drives every transfer in the in-flight index that is stuck between steps.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
import redis.asyncio as aioredis
from google.protobuf.message import Message

from medaid.common import errors, metrics, rpc
from medaid.common.clock import Clock
from medaid.common.errors import DomainError
from medaid.common.idempotency import Finish, Idempotency, ResponseT, validate_request_id
from medaid.common.idnumber import mask
from medaid.common.lock import FencedLocks, Lease
from medaid.common.logs import event
from medaid.common.scripts import ScriptSet
from medaid.common.v1 import common_pb2 as cpb
from medaid.common.values import decode_hash as _decode
from medaid.common.values import decode_pairs as _pairs
from medaid.common.values import text as _s
from medaid.registry import validate
from medaid.registry.client import Registries, downstream
from medaid.registry.policy import NEAR_KIN
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.wallet import rules
from medaid.wallet.keys import WalletKeys
from medaid.wallet.v1 import wallet_pb2 as pb

log = logging.getLogger("medaid.wallet")

SCRIPTS = ["open", "reserve", "unreserve", "release_pending", "xfer_create", "xfer_abandon", "xfer_cas",
           "xfer_accept", "spend", "spend_refund", "lots_release", "ret_done", "wallet_xfer_out",
           "wallet_xfer_back"]
FAULT_POINTS = (
    "transfer.after_reserve",
    "transfer.after_create",
    "transfer.after_debit",
    "transfer.after_pending",
    "accept.after_claim",
    "accept.after_credit",
    "expire.after_returning",
    "expire.after_refund",
    "release.after_lots",
)
TERMINAL = ("COMPLETED", "RETURNED", "FAILED")
PERSON_END_REASONS = ("TERMINATED", "MOVED", "MOVED_REGION", "DECEASED")
MAINTENANCE_LEASE_MS = 3_000
MAX_BALANCES = 512
STATE_ENUM = {
    "CREATED": pb.TRANSFER_STATE_CREATED,
    "PENDING_ACCEPT": pb.TRANSFER_STATE_PENDING_ACCEPT,
    "COMPLETED": pb.TRANSFER_STATE_COMPLETED,
    "RETURNING": pb.TRANSFER_STATE_RETURNING,
    "RETURNED": pb.TRANSFER_STATE_RETURNED,
    "FAILING": pb.TRANSFER_STATE_FAILED,
    "FAILED": pb.TRANSFER_STATE_FAILED,
}
DEFINITIVE_DEBIT_REFUSALS = ("INSUFFICIENT_BALANCE", "SENDER_NOT_ACTIVE", "SENDER_NOT_EMPLOYEE",
                             "TRANSFER_CANCELLED", "PERSON_NOT_FOUND")



@dataclass
class Ended:
    """What ending relationships did: fen sent home, wallets touched, transfers in flight sent back."""

    returned: int = 0
    wallets: int = 0
    transfers: int = 0


class Wallet:
    def __init__(
        self,
        client: aioredis.Redis | aioredis.RedisCluster,
        registries: Registries,
        *,
        policy: rules.WalletPolicy | None = None,
        clock: Clock | None = None,
        recovery_grace_ms: int = 5_000,
    ) -> None:
        self.r = client
        self.registries = registries
        self.policy = policy or rules.WalletPolicy()
        self.clock = clock or Clock()
        self.k = WalletKeys()
        self.idem = Idempotency(client, self.k.ns)
        self.locks = FencedLocks(client)
        self.lua = ScriptSet(client, "medaid.wallet", SCRIPTS)
        self.recovery_grace_ms = recovery_grace_ms
        # Tests (in-process) or MEDAID_FAULT (out-of-process, kill -9) crash between saga steps.
        self.fault_hook: Callable[[str], None] | None = None

    def _fault(self, point: str) -> None:
        if self.fault_hook is not None:
            self.fault_hook(point)

    async def _once(self, request: Message, op: str, subject: str, response_type: type[ResponseT],
                    work: Callable[[], Awaitable[ResponseT]]) -> ResponseT:
        return await self.idem.run(request, op, subject, response_type, work, self.clock.now_ms())

    # --- wallets -------------------------------------------------------------------------

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
        if req.use_place_admdvs[:2] != req.province:
            raise errors.invalid("USE_PLACE_OUTSIDE_PROVINCE", "the use-place must be a pooling region of the "
                                 "province where the owner is insured", field="use_place_admdvs")
        opened_by = validate.id_number(req.opened_by_id_number, "opened_by_id_number") \
            if req.opened_by_id_number else owner
        if opened_by != owner:
            relation = validate.enum_name(cpb.Relation, req.opened_by_relation, "RELATION_", "relation")
            if relation not in NEAR_KIN:
                raise errors.refused("NOT_NEAR_KIN", "only a near-kin may open a wallet on the owner's behalf")
        verified = req.HasField("real_name") and validate.attestation(req.real_name.method,
                                                                     req.real_name.attestation_id)
        if not verified:
            raise errors.refused("VERIFICATION_REQUIRED", "opening a wallet needs real-name verification")
        self.registries.stub(req.province)  # unknown province → INVALID_ARGUMENT before any write

        def prefetch(pipe: Any) -> None:  # read with the claim, in its round trip
            pipe.hget(self.k.wallet(owner), "open_rid")

        async def work(open_rid: bytes | None) -> pb.OpenWalletResponse:
            # A wallet opened by this very request id is this request's own effect (a resend after a
            # lost reply or an unreachable registry): the checks are behind it; finish the rest.
            if _s(open_rid or b"") != req.request_id:
                await self._open(req, owner, opened_by)
            # The insuring registry learns of the wallet, so its waterfall asks the wallet only for
            # people who have one. On failure the claim stays: a retry of this request re-drives it.
            try:
                await self.registries.stub(req.province).NoteWallet(rpb.NoteWalletRequest(
                    id_number=owner, use_place_admdvs=req.use_place_admdvs), timeout=self.registries.deadline_s)
            except grpc.aio.AioRpcError as exc:
                raise downstream(exc, req.province).after_effects() from None
            event(log, "wallet opened", id_number=owner, province=req.province, use_place=req.use_place_admdvs)
            return pb.OpenWalletResponse(wallet=self._wallet_pb(await self._wallet_row(owner)))

        return await self.idem.run(req, "open", owner, pb.OpenWalletResponse, work, self.clock.now_ms(), prefetch)

    async def _open(self, req: pb.OpenWalletRequest, owner: str, opened_by: str) -> None:
        person = await self.registries.person(req.province, owner)
        if person is None or person.status != cpb.PERSON_STATUS_ACTIVE:
            raise errors.refused("OWNER_NOT_INSURED", f"{mask(owner)} is not an ACTIVE insured person of "
                                 f"province {req.province}")
        # The wallets index first, the wallet after, in one round trip applied in order: every wallet
        # is in the index (the clearing report reads it). For a refused open (WALLET_EXISTS) the owner
        # is already there.
        async with self.r.pipeline(transaction=False) as p:
            p.sadd(self.k.wallets_index(), owner)
            await self.lua["open"](keys=[self.k.wallet(owner)], args=[
                "owner", owner, "province", req.province, "use_place", req.use_place_admdvs,
                "opened_at", self.clock.now_ms(), "opened_by", opened_by, "open_rid", req.request_id], client=p)
            _, created = await p.execute()
        if int(created) == 0 and await self.r.hget(self.k.wallet(owner), "open_rid") != req.request_id.encode():
            raise errors.exists("WALLET_EXISTS", "this person already has a wallet")

    async def change_use_place(self, req: pb.ChangeUsePlaceRequest) -> pb.ChangeUsePlaceResponse:
        """使用地变更: effective at once; later spending follows the new place (SPEC §5)."""
        owner = validate.id_number(req.owner_id_number, "owner_id_number")
        validate.admdvs(req.use_place_admdvs, "use_place_admdvs", required=True)

        async def work() -> pb.ChangeUsePlaceResponse:
            row = await self._wallet_row(owner)
            if not row:
                raise errors.not_found("WALLET_NOT_FOUND", f"{mask(owner)} has no wallet")
            if req.use_place_admdvs[:2] != row["province"]:
                raise errors.invalid("USE_PLACE_OUTSIDE_PROVINCE", "the use-place must be a pooling region of the "
                                     "province where the owner is insured", field="use_place_admdvs")
            await self.r.hset(self.k.wallet(owner), "use_place", req.use_place_admdvs)
            # The insuring registry's note follows (its waterfall asks the wallet by use-place); on
            # failure the claim stays and a retry of this request id finishes it.
            try:
                await self.registries.stub(row["province"]).NoteWallet(rpb.NoteWalletRequest(
                    id_number=owner, use_place_admdvs=req.use_place_admdvs), timeout=self.registries.deadline_s)
            except grpc.aio.AioRpcError as exc:
                raise downstream(exc, row["province"]).after_effects() from None
            event(log, "use-place changed", id_number=owner, use_place=req.use_place_admdvs)
            return pb.ChangeUsePlaceResponse(wallet=self._wallet_pb(await self._wallet_row(owner)))

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
        owner = validate.id_number(req.owner_id_number, "owner_id_number")
        limit = req.limit or 50
        if not 0 < limit <= 500:
            raise errors.invalid("INVALID_LIMIT", "limit must be 1..500", field="limit")
        raws = await self.r.lrange(self.k.entries(owner), -limit, -1)
        out = []
        for raw in reversed(raws):
            e = json.loads(_s(raw))
            out.append(pb.WalletEntry(seq=e["seq"], kind=e["kind"], amount_fen=e["amount"], balance_after_fen=e["bal"],
                                      ref=e["ref"], at_unix_ms=e["at"]))
        return pb.ListWalletEntriesResponse(entries=out)

    # --- transfers -----------------------------------------------------------------------

    def _transfer_pb(self, rec: dict[str, str]) -> pb.Transfer:
        return pb.Transfer(
            transfer_id=rec["tid"], sender_id_number=rec["sender"], sender_province=rec["sender_province"],
            recipient_id_number=rec["recipient"], recipient_province=rec["recipient_province"],
            relation=cpb.Relation.Value("RELATION_" + rec["relation"]), amount_fen=int(rec["amount"]),
            state=STATE_ENUM[rec["state"]], created_at_unix_ms=int(rec["created_at"]),
            expires_at_unix_ms=int(rec.get("expires_at", "0")), finished_at_unix_ms=int(rec.get("finished_at", "0")),
            failure_reason=rec.get("failure_reason", ""),
            source=pb.TRANSFER_SOURCE_WALLET if rec.get("source") == "WALLET" else pb.TRANSFER_SOURCE_PERSONAL_ACCOUNT,
            parts=[pb.TransferPart(origin_id_number=p["sender"], origin_province=p["sprov"],
                                   amount_fen=int(p["amount"])) for p in json.loads(rec.get("parts") or "[]")],
        )

    async def _transfer_record(self, recipient: str, tid: str) -> dict[str, str]:
        return _decode(await self.r.hgetall(self.k.transfer(recipient, tid)))

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
        verified = req.HasField("verification") and validate.attestation(req.verification.method,
                                                                        req.verification.attestation_id)
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
        if onward and sender_wallet["province"] != req.sender_province:
            raise errors.invalid("SENDER_PROVINCE_MISMATCH", "an onward transfer's sender_province is the province "
                                 f"of the sending wallet ({sender_wallet['province']})", field="sender_province")
        rules.check_transfer(self.policy, relation=relation, amount=req.amount_fen, now_ms=now, verified=verified)
        # Both registries are asked at once (two provinces, two independent reads).
        recipient_person, sender_person = await asyncio.gather(
            self.registries.person(wallet["province"], recipient),
            self.registries.person(req.sender_province, sender))
        if recipient_person is None or recipient_person.status != cpb.PERSON_STATUS_ACTIVE:
            raise errors.refused("RECIPIENT_NOT_INSURED", "the recipient is not an ACTIVE insured person")
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
        tid = req.request_id
        day = rules.shanghai_day(now)
        fields = {"tid": tid, "sender": sender, "sender_province": req.sender_province, "recipient": recipient,
                  "recipient_province": wallet["province"], "relation": relation, "amount": str(req.amount_fen),
                  "created_at": str(now), "day": day, "source": "WALLET" if onward else "ACCOUNT"}
        # In the in-flight index before reserving: if this process dies (or stalls) between the
        # reservation and the transfer record, the recovery loop finds the id, records the transfer
        # FAILED from these fields and gives the reservation back (`_abandon_uncreated`), instead of
        # the sender's one-pending slot staying taken for good. One round trip, in this order (the
        # index entries, then the reservation); Redis applies a pipeline's commands in order.
        meta = json.dumps(fields)
        async with self.r.pipeline(transaction=False) as p:
            p.hset(self.k.inflight_meta(), tid, meta)
            p.zadd(self.k.inflight(), {tid: now})
            await self.lua["reserve"](
                keys=[self.k.pending(sender), self.k.day_count(sender, day), self.k.reserved(sender)],
                args=[tid, day, self.policy.daily_transfers, "1" if self.policy.one_pending_per_sender else "0"],
                client=p)
            _, _, (status, code) = await p.execute()
        if _s(status) == "ERR":
            async with self.r.pipeline(transaction=True) as p:  # nothing reserved, nothing recorded
                p.zrem(self.k.inflight(), tid)
                p.hdel(self.k.inflight_meta(), tid)
                await p.execute()
            messages = {"PENDING_TRANSFER_EXISTS": "an unaccepted transfer from this sender is still pending",
                        "DAILY_LIMIT_REACHED": f"at most {self.policy.daily_transfers} transfers a day"}
            raise errors.refused(_s(code), messages[_s(code)])
        self._fault("transfer.after_reserve")
        # The index and the record in one round trip, the index first: Redis applies a pipeline in
        # order, so a record never exists without the index that GetTransfer finds it by.
        async with self.r.pipeline(transaction=False) as p:
            p.set(self.k.transfer_recipient(tid), recipient)
            await self.lua["xfer_create"](keys=[self.k.transfer(recipient, tid)],
                                          args=[x for kv in fields.items() for x in kv], client=p)
            _, state = await p.execute()
        self._fault("transfer.after_create")
        event(log, "transfer created", sender=sender, recipient=recipient, transfer=tid, amount_fen=req.amount_fen)
        metrics.transfer("CREATED")
        return {**fields, "state": "CREATED"} if _s(state) == "CREATED" else None

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

    async def _cas(self, recipient: str, tid: str, expect: str, new: str,
                   **fields: Any) -> tuple[bool, dict[str, str]]:
        """(whether the state was `expect` and is now `new`, the record after)."""
        args: list[Any] = [expect, new]
        for key, value in fields.items():
            args += [key, value]
        ok, flat = await self.lua["xfer_cas"](keys=[self.k.transfer(recipient, tid)], args=args)
        if _s(ok) != "OK":
            return False, _pairs(flat)
        metrics.transfer(new)
        return True, _pairs(flat)

    async def _drive(self, tid: str, recipient: str, rec: dict[str, str] | None = None) -> dict[str, str]:
        """Move a transfer forward from wherever it stands until it waits (PENDING_ACCEPT) or ends.

        `rec`, when given, is the record as just read or written; each step hands on the record it
        leaves (a compare-and-set answers with it), so no step reads it again."""
        for _ in range(10):
            if rec is None:
                rec = await self._transfer_record(recipient, tid)
            state = rec.get("state", "")
            now = self.clock.now_ms()
            if state == "CREATED":
                rec = await self._step_debit(rec)
            elif state == "PENDING_ACCEPT" and now >= int(rec["expires_at"]):
                ok, rec = await self._cas(recipient, tid, "PENDING_ACCEPT", "RETURNING")
                if ok:
                    self._fault("expire.after_returning")
            elif state in ("RETURNING", "FAILING"):
                rec = await self._step_refund(rec)
            else:
                await self._settle_side_effects(tid, rec)
                return rec
        raise errors.unavailable("TRANSFER_BUSY", "the transfer is changing state; retry with the same request id")

    async def _step_debit(self, rec: dict[str, str]) -> dict[str, str]:
        tid, recipient = rec["tid"], rec["recipient"]
        if rec.get("source") == "WALLET":
            return await self._step_debit_wallet(rec)
        try:
            await self.registries.debit_for_transfer(rec["sender_province"], rpb.DebitForTransferRequest(
                transfer_id=tid, sender_id_number=rec["sender"], amount_fen=int(rec["amount"]),
                recipient_province=rec["recipient_province"]))
        except DomainError as exc:
            if exc.code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND) \
                    and exc.reason in DEFINITIVE_DEBIT_REFUSALS:
                return (await self._cas(recipient, tid, "CREATED", "FAILING", failure_reason=exc.reason))[1]
            raise errors.unavailable("REGISTRY_UNAVAILABLE", f"the registry of province {rec['sender_province']} "
                                     f"did not debit ({exc.reason}); retry with the same request id",
                                     province=rec["sender_province"]) from None
        except grpc.aio.AioRpcError as exc:
            raise downstream(exc, rec["sender_province"]) from None
        self._fault("transfer.after_debit")
        expires = rules.accept_deadline(self.policy, int(rec["created_at"]))
        ok, after = await self._cas(recipient, tid, "CREATED", "PENDING_ACCEPT", expires_at=expires)
        if ok:
            self._fault("transfer.after_pending")
            event(log, "transfer pending", transfer=tid, recipient=recipient)
        return after

    async def _step_debit_wallet(self, rec: dict[str, str]) -> dict[str, str]:
        """Onward transfer: the sending wallet's lots are debited by transfer id (oldest first); the
        parts, with their origins, go into the record with PENDING_ACCEPT, for the accept's lots."""
        tid, recipient, sender = rec["tid"], rec["recipient"], rec["sender"]
        status, detail = await self.lua["wallet_xfer_out"](
            keys=[self.k.wallet(sender), self.k.lots(sender), self.k.lot_order(sender), self.k.entries(sender),
                  self.k.onward_debits(sender)],
            args=[tid, rec["amount"], self.clock.now_ms()])
        if _s(status) == "ERR":
            why = _s(detail)
            return (await self._cas(recipient, tid, "CREATED", "FAILING",
                                    failure_reason="SENDER_NO_WALLET" if why == "NO_WALLET" else why))[1]
        self._fault("transfer.after_debit")
        parts = [{"sender": p["sender"], "sprov": p["sprov"], "amount": int(p["amount"])}
                 for p in (json.loads(_s(detail)) or [])]
        expires = rules.accept_deadline(self.policy, int(rec["created_at"]))
        ok, after = await self._cas(recipient, tid, "CREATED", "PENDING_ACCEPT", expires_at=expires,
                                    parts=json.dumps(parts))
        if ok:
            self._fault("transfer.after_pending")
            event(log, "transfer pending", transfer=tid, recipient=recipient, onward=True)
        return after

    async def _refund_wallet(self, rec: dict[str, str]) -> None:
        """Onward transfer returned or failed: the quota goes back to the sending wallet's lots, or
        home to the funding employee where that lot's relationship ended meanwhile (a return record,
        registered in the returns index before the script, driven like any lot release)."""
        tid, sender = rec["tid"], rec["sender"]
        relid = rpc.derived_id("xback", tid)
        async with self.r.pipeline(transaction=True) as p:  # the index first, then (next round trip) the script
            p.hset(self.k.returns_meta(), relid, json.dumps({"holder": sender, "sender": sender}))
            p.zadd(self.k.returns_inflight(), {relid: self.clock.now_ms()})
            await p.execute()
        await self.lua["wallet_xfer_back"](
            keys=[self.k.wallet(sender), self.k.lots(sender), self.k.entries(sender),
                  self.k.onward_debits(sender), self.k.returns(sender)],
            args=[tid, self.clock.now_ms(), relid])
        await self._drive_return(relid, sender)

    async def _step_refund(self, rec: dict[str, str]) -> dict[str, str]:
        """RETURNING → RETURNED, FAILING → FAILED: the registry refunds (or cancels) by transfer id."""
        tid, recipient, state = rec["tid"], rec["recipient"], rec["state"]
        if rec.get("source") == "WALLET":
            await self._refund_wallet(rec)
        else:
            try:
                await self.registries.stub(rec["sender_province"]).RefundTransfer(rpb.RefundTransferRequest(
                    transfer_id=tid, sender_id_number=rec["sender"], amount_fen=int(rec["amount"])),
                    timeout=self.registries.deadline_s)
            except grpc.aio.AioRpcError as exc:
                raise downstream(exc, rec["sender_province"]) from None
        self._fault("expire.after_refund")
        final = "RETURNED" if state == "RETURNING" else "FAILED"
        ok, after = await self._cas(recipient, tid, state, final, finished_at=self.clock.now_ms())
        if ok:
            event(log, f"transfer {final.lower()}", transfer=tid, recipient=recipient)
        return after

    async def _settle_side_effects(self, tid: str, rec: dict[str, str]) -> None:
        """Idempotent bookkeeping once a transfer waits or ends: limits, indexes."""
        if rec and rec["state"] in TERMINAL:
            async with self.r.pipeline(transaction=False) as p:
                await self._queue_side_effects(p, tid, rec)
                await p.execute()

    async def _queue_side_effects(self, p: Any, tid: str, rec: dict[str, str]) -> None:
        """Queue a terminal transfer's bookkeeping, applied in this order: the limits, then the
        in-flight index (the recovery loop finds a transfer by the index, so it leaves the index
        last; should the round trip break off, Redis has applied a prefix of it)."""
        state, sender = rec["state"], rec["sender"]
        if state == "FAILED":
            await self.lua["unreserve"](keys=[self.k.pending(sender), self.k.day_count(sender, rec["day"]),
                                              self.k.reserved(sender)], args=[tid], client=p)
        else:
            if state == "COMPLETED":
                # The holder of lots of the sender and, for a transfer passed on, of each funding
                # employee: either relationship's end finds the lots here.
                for who in {sender, *(part["sender"] for part in json.loads(rec.get("parts") or "[]"))}:
                    p.sadd(self.k.holders(who), rec["recipient"])
            await self.lua["release_pending"](keys=[self.k.pending(sender)], args=[tid], client=p)
        p.zrem(self.k.inflight(), tid)
        p.hdel(self.k.inflight_meta(), tid)

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
            if rec["state"] == "CREATED":
                rec = await self._drive(tid, recipient, rec)
            now = self.clock.now_ms()
            # A refusal the record already shows is given before any write (a refusal writes nothing).
            if rec["state"] == "PENDING_ACCEPT" and now >= int(rec["expires_at"]):
                await self._refuse_accept(tid, recipient, "EXPIRED")
            if rec["state"] not in ("PENDING_ACCEPT", "COMPLETED"):
                await self._refuse_accept(tid, recipient, rec["state"])
            # Only the script writes: should the transfer change state between the read above and
            # the script (the sweeper, a release), the refusal leaves nothing behind. The holder
            # entry follows the lot (`_queue_side_effects`), and a release cannot miss a lot made
            # meanwhile: the transfer stays in the in-flight index until that entry is written, and
            # a release drives the sender's in-flight transfers (which writes it) before it reads
            # the holders.
            reply = await self.lua["xfer_accept"](
                keys=[self.k.transfer(recipient, tid), self.k.wallet(recipient), self.k.lots(recipient),
                      self.k.lot_order(recipient), self.k.entries(recipient)],
                args=[tid, now, recipient])
            if _s(reply[0]) == "NO":
                await self._refuse_accept(tid, recipient, _s(reply[1]))
            self._fault("accept.after_credit")
            rec, wallet = _pairs(reply[2]), _pairs(reply[3])  # both as the accept left them
            event(log, "transfer accepted", transfer=tid, recipient=recipient, amount_fen=rec["amount"])
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

    async def get_transfer(self, req: pb.GetTransferRequest) -> pb.GetTransferResponse:
        validate_request_id(req.transfer_id)
        recipient = await self.r.get(self.k.transfer_recipient(req.transfer_id))
        rec = await self._transfer_record(_s(recipient), req.transfer_id) if recipient is not None else {}
        if not rec:
            raise errors.not_found("TRANSFER_NOT_FOUND", f"no transfer {req.transfer_id}")
        return pb.GetTransferResponse(transfer=self._transfer_pb(rec))

    # --- spending ------------------------------------------------------------------------

    async def _spend(self, request_id: str, owner: str, amount: int, spending_admdvs: str, kind: str) -> dict[str, Any]:
        """Spend once per request id; `spending_admdvs` '' spends at the wallet's use-place. The script
        answers a request id it has seen with its first spend before any check, so a resend whose
        first attempt spent is answered even if the use-place changed since."""
        now = self.clock.now_ms()
        month = rules.shanghai_month(now)
        status, detail = await self.lua["spend"](
            keys=[self.k.wallet(owner), self.k.lots(owner), self.k.lot_order(owner), self.k.entries(owner),
                  self.k.spends(owner), self.k.clearing(owner, month)],
            args=[request_id, amount, now, month, spending_admdvs, kind])
        status = _s(status)
        if status == "NO_WALLET":
            raise errors.not_found("WALLET_NOT_FOUND", f"{mask(owner)} has no wallet")
        if status == "OUTSIDE":
            raise errors.refused("OUTSIDE_USE_PLACE", f"wallet quota is spent only at the use-place "
                                 f"{_s(detail)}, not {spending_admdvs}")
        if status == "SHORT":
            raise errors.refused("INSUFFICIENT_QUOTA", f"the wallet holds {_s(detail)} fen, less than {amount}")
        rec: dict[str, Any] = json.loads(_s(detail))
        event(log, "wallet spent", id_number=owner, ref=request_id, amount_fen=amount, kind=kind)
        return rec

    @staticmethod
    def _parts(rec: dict[str, Any]) -> list[pb.SpendPart]:
        return [pb.SpendPart(transfer_id=p[0], sender_province=p[1], amount_fen=int(p[2])) for p in rec["parts"]]

    async def spend(self, req: pb.SpendWalletRequest) -> pb.SpendWalletResponse:
        owner = validate.id_number(req.owner_id_number, "owner_id_number")
        validate.amount(req.amount_fen)
        category = validate.enum_name(cpb.Category, req.category, "CATEGORY_", "category")
        validate.admdvs(req.spending_admdvs, "spending_admdvs", required=True)
        rules.check_spend_category(category)

        async def work() -> pb.SpendWalletResponse:
            rec = await self._spend(req.request_id, owner, req.amount_fen, req.spending_admdvs, "SPEND")
            return pb.SpendWalletResponse(spent_fen=int(rec["amount"]), balance_after_fen=int(rec["bal"]),
                                          parts=self._parts(rec))

        return await self._once(req, "spend", owner, pb.SpendWalletResponse, work)

    async def pay_premium(self, req: pb.PayPremiumRequest) -> pb.PayPremiumResponse:
        owner = validate.id_number(req.owner_id_number, "owner_id_number")
        validate.amount(req.amount_fen)
        category = validate.enum_name(cpb.Category, req.category, "CATEGORY_", "category")
        if category not in ("RESIDENT_PREMIUM", "LONG_TERM_CARE_PREMIUM"):
            raise errors.invalid("INVALID_PREMIUM_CATEGORY", "premiums are RESIDENT_PREMIUM or LONG_TERM_CARE_PREMIUM")
        if req.period and (len(req.period) != 4 or not req.period.isdigit()):
            raise errors.invalid("INVALID_PERIOD", "period must be YYYY", field="period")

        async def work() -> pb.PayPremiumResponse:
            rec = await self._spend(req.request_id, owner, req.amount_fen, "", "PREMIUM")
            return pb.PayPremiumResponse(paid_fen=int(rec["amount"]), balance_after_fen=int(rec["bal"]),
                                         parts=self._parts(rec))

        return await self._once(req, "premium", owner, pb.PayPremiumResponse, work)

    async def refund_spend(self, req: pb.RefundWalletSpendRequest) -> pb.RefundWalletSpendResponse:
        validate_request_id(req.spend_id)
        owner = validate.id_number(req.owner_id_number, "owner_id_number")

        async def work() -> pb.RefundWalletSpendResponse:
            # The spend's own record (the owner's spends, by the spend's request id) says what to undo.
            raw = await self.r.hget(self.k.spends(owner), req.spend_id)
            if raw is None:
                raise errors.not_found("SPEND_NOT_FOUND", f"no wallet spend {req.spend_id} for this owner")
            month = json.loads(_s(raw))["month"]
            relid = rpc.derived_id("sref", owner, req.spend_id)
            indexed = False
            while True:
                status, detail, amount = await self.lua["spend_refund"](
                    keys=[self.k.wallet(owner), self.k.lots(owner), self.k.entries(owner), self.k.spends(owner),
                          self.k.clearing(owner, month), self.k.returns(owner)],
                    args=[req.spend_id, self.clock.now_ms(), month, req.request_id, relid, "1" if indexed else "0"])
                if _s(status) != "HOME":
                    break
                # A part's lot ended since the spend: that part goes home to the funding employee. The
                # return goes into the returns index before the script can write it (then driven).
                async with self.r.pipeline(transaction=True) as p:
                    p.hset(self.k.returns_meta(), relid, json.dumps({"holder": owner, "sender": ""}))
                    p.zadd(self.k.returns_inflight(), {relid: self.clock.now_ms()})
                    await p.execute()
                indexed = True
            if indexed:
                await self._drive_return(relid, owner)
            if _s(status) == "ERR":
                raise errors.not_found(_s(detail), "the spend cannot be refunded")
            if _s(status) == "DUP":
                raise errors.refused("SPEND_ALREADY_REFUNDED", f"spend {req.spend_id} was already refunded")
            event(log, "wallet spend refunded", id_number=owner, ref=req.spend_id, amount_fen=int(amount))
            return pb.RefundWalletSpendResponse(refunded_fen=int(amount), balance_after_fen=int(_s(detail)))

        return await self._once(req, "spend_refund", owner, pb.RefundWalletSpendResponse, work)

    # --- lots going home -----------------------------------------------------------------

    async def release_sender_lots(self, req: pb.ReleaseSenderLotsRequest) -> pb.ReleaseSenderLotsResponse:
        sender = validate.id_number(req.sender_id_number, "sender_id_number")
        if req.reason not in ("TERMINATED", "MOVED"):
            raise errors.invalid("INVALID_REASON", "reason is TERMINATED or MOVED", field="reason")

        async def work() -> pb.ReleaseSenderLotsResponse:
            ended = await self._end(req.request_id, sender, "SENDER")
            return pb.ReleaseSenderLotsResponse(returned_fen=ended.returned, wallets_touched=ended.wallets)

        return await self._once(req, "release", sender, pb.ReleaseSenderLotsResponse, work)

    async def end_person_relationships(
            self, req: pb.EndPersonWalletRelationshipsRequest) -> pb.EndPersonWalletRelationshipsResponse:
        """Every wallet relationship where the person is a side ends (SPEC §5, §5b): what they sent
        (directly or passed on) comes home, and what they hold goes back to the funding employees."""
        pid = validate.id_number(req.id_number, "id_number")
        if req.reason not in PERSON_END_REASONS:
            raise errors.invalid("INVALID_REASON", f"reason is one of {', '.join(PERSON_END_REASONS)}", field="reason")

        async def work() -> pb.EndPersonWalletRelationshipsResponse:
            as_sender = await self._end(rpc.derived_id("sent", req.request_id), pid, "SENDER")
            as_holder = await self._end(rpc.derived_id("held", req.request_id), pid, "ALL")
            event(log, "wallet relationships ended", id_number=pid, reason=req.reason,
                  returned_as_sender_fen=as_sender.returned, returned_as_holder_fen=as_holder.returned)
            return pb.EndPersonWalletRelationshipsResponse(returned_as_sender_fen=as_sender.returned,
                                                           returned_as_holder_fen=as_holder.returned)

        return await self._once(req, "end_person", pid, pb.EndPersonWalletRelationshipsResponse, work)

    async def end_relationship(self, req: pb.EndWalletRelationshipRequest) -> pb.EndWalletRelationshipResponse:
        """Either side ends one relationship (sender → holder)."""
        sender = validate.id_number(req.sender_id_number, "sender_id_number")
        holder = validate.id_number(req.holder_id_number, "holder_id_number")
        by = validate.id_number(req.requested_by_id_number, "requested_by_id_number")
        if sender == holder:
            raise errors.invalid("SELF_TRANSFER", "sender and holder are the same person")
        if by not in (sender, holder):
            raise errors.invalid("NOT_A_SIDE", "only the sender or the holder may end the relationship",
                                 field="requested_by_id_number")

        async def work() -> pb.EndWalletRelationshipResponse:
            # A refusal writes nothing: whether there is anything to end is read first. A resend of a
            # request that got as far as taking the lots out finishes it instead (its release record).
            began = await self.r.hexists(self.k.returns(holder), rpc.derived_id("ret", req.request_id, holder))
            if not began and not await self._relationship_live(sender, holder):
                raise errors.not_found("RELATIONSHIP_NOT_FOUND", "no live wallet relationship from this sender to "
                                       "this holder (no unspent lots, no transfer waiting)")
            ended = await self._end(req.request_id, sender, "PAIR", holder)
            event(log, "wallet relationship ended", sender=sender, holder=holder, by=by, returned_fen=ended.returned)
            return pb.EndWalletRelationshipResponse(returned_fen=ended.returned, transfers_returned=ended.transfers)

        return await self._once(req, "end_pair", holder, pb.EndWalletRelationshipResponse, work)

    async def _relationship_live(self, sender: str, holder: str) -> bool:
        for raw in (await self.r.hgetall(self.k.inflight_meta())).values():
            meta = json.loads(_s(raw))
            if meta["sender"] == sender and meta["recipient"] == holder:
                return True
        for lot in await self._lots(holder, with_quota_only=False):
            via = lot.get("via", "")
            if not lot.get("ended") and (via == sender or (not via and lot["sender"] == sender)):
                return True
        return False

    async def _end(self, base_id: str, who: str, mode: str, holder: str = "") -> Ended:
        """End relationships and send their lots home, once per `base_id` (every step is keyed by it).

        mode SENDER: every relationship where `who` sent (their lots, directly or passed on, wherever
        held); PAIR: `who` → `holder`; ALL: every relationship where `who` holds lots."""
        ended = Ended()
        # First the transfers still in flight: one waiting for acceptance goes back now (accepting it
        # later answers TRANSFER_EXPIRED), one not yet debited fails (its debit is cancelled by id), so
        # none becomes a lot of a relationship that ended. Done before the lots, so an accept that won
        # the race has already made its lot (and its holder entry) by the time the lots are released.
        for raw_tid, raw_meta in (await self.r.hgetall(self.k.inflight_meta())).items():
            meta = json.loads(_s(raw_meta))
            tid = _s(raw_tid)
            if mode == "ALL":
                if meta["recipient"] != who:
                    continue
            elif mode == "PAIR":
                if meta["sender"] != who or meta["recipient"] != holder:
                    continue
            elif meta["sender"] != who and not await self._passes_on_quota_of(who, tid, meta):
                continue
            ok, rec = await self._cas(meta["recipient"], tid, "PENDING_ACCEPT", "RETURNING")
            if not ok and rec.get("state") == "CREATED":
                ok, rec = await self._cas(meta["recipient"], tid, "CREATED", "FAILING",
                                          failure_reason="RELATIONSHIP_ENDED")
            ended.transfers += 1 if ok else 0
            await self._drive(tid, meta["recipient"], rec)
        if mode == "SENDER":
            holders = sorted(_s(x) for x in await self.r.smembers(self.k.holders(who)))
        else:
            holders = [holder or who]
        for h in holders:
            relid = rpc.derived_id("ret", base_id, h)
            async with self.r.pipeline(transaction=True) as p:
                p.hset(self.k.returns_meta(), relid, json.dumps({"holder": h, "sender": who}))
                p.zadd(self.k.returns_inflight(), {relid: self.clock.now_ms()})
                await p.execute()
            await self.lua["lots_release"](
                keys=[self.k.wallet(h), self.k.lots(h), self.k.lot_order(h), self.k.entries(h), self.k.returns(h)],
                args=[relid, who, self.clock.now_ms(), mode])
            self._fault("release.after_lots")
            amount = await self._drive_return(relid, h)
            ended.returned += amount
            ended.wallets += 1 if amount else 0
        event(log, "lots released", who=who, mode=mode, returned_fen=ended.returned, wallets=ended.wallets)
        return ended

    async def _passes_on_quota_of(self, who: str, tid: str, meta: dict[str, str]) -> bool:
        """Whether an onward transfer in flight carries quota `who` funded: when `who`'s relationships
        end it goes back too (into the passing wallet's lot, which the release then sends home)."""
        if meta.get("source") != "WALLET":
            return False
        parts = await self.r.hget(self.k.transfer(meta["recipient"], tid), "parts")
        return parts is not None and any(p["sender"] == who for p in json.loads(_s(parts)))

    async def _drive_return(self, relid: str, holder: str) -> int:
        raw = await self.r.hget(self.k.returns(holder), relid)
        if raw is None:
            await self._forget_return(relid)
            return 0
        rec = json.loads(_s(raw))
        if rec["state"] == "RETURNING":
            # One credit per funding employee (leg); each keyed by its own return id, so re-driving
            # the record after a crash credits every leg once.
            legs = rec.get("legs") or [{"sender": rec["sender"], "sprov": rec["sprov"], "amount": rec["amount"],
                                        "tid": rec["tid"]}]
            for n, leg in enumerate(legs):
                try:
                    await self.registries.stub(leg["sprov"]).CreditLotReturn(rpb.CreditLotReturnRequest(
                        return_id=relid if n == 0 else f"{relid}.{n}", sender_id_number=leg["sender"],
                        amount_fen=int(leg["amount"]), transfer_id=leg["tid"]),
                        timeout=self.registries.deadline_s)
                except grpc.aio.AioRpcError as exc:
                    raise downstream(exc, leg["sprov"]) from None
            await self.lua["ret_done"](keys=[self.k.returns(holder)], args=[relid])
        await self._forget_return(relid)
        return int(rec["amount"])

    async def _forget_return(self, relid: str) -> None:
        async with self.r.pipeline(transaction=True) as p:
            p.zrem(self.k.returns_inflight(), relid)
            p.hdel(self.k.returns_meta(), relid)
            await p.execute()

    # --- clearing ------------------------------------------------------------------------

    async def clearing_report(self, req: pb.GetClearingReportRequest) -> pb.GetClearingReportResponse:
        if len(req.month) != 6 or not req.month.isdigit() or not 1 <= int(req.month[4:]) <= 12:
            raise errors.invalid("INVALID_MONTH", "month must be YYYYMM", field="month")
        amounts: dict[str, int] = {}
        counts: dict[str, int] = {}
        for raw in await self.r.smembers(self.k.wallets_index()):
            for field, value in (await self.r.hgetall(self.k.clearing(_s(raw), req.month))).items():
                name, n = _s(field), int(value)
                if name.endswith("#n"):
                    counts[name[:-2]] = counts.get(name[:-2], 0) + n
                else:
                    amounts[name] = amounts.get(name, 0) + n
        lines = []
        for line in sorted(amounts):
            if amounts[line] == 0 and counts.get(line, 0) == 0:
                continue
            src, dst = line.split(">")
            lines.append(pb.ClearingLine(sending_province=src, spending_province=dst, amount_fen=amounts[line],
                                         spend_count=counts.get(line, 0), same_province=src == dst))
        return pb.GetClearingReportResponse(month=req.month, lines=lines, total_fen=sum(x.amount_fen for x in lines))

    # --- maintenance: expiry sweeper + recovery loop -------------------------------------

    async def in_flight(self) -> tuple[int, int]:
        """(transfers, fen) not yet COMPLETED, RETURNED or FAILED, read whole from the in-flight index
        (one entry per such transfer): for the metrics, once per maintenance pass."""
        metas = await self.r.hvals(self.k.inflight_meta())
        return len(metas), sum(int(json.loads(_s(m)).get("amount", 0)) for m in metas)

    async def maintain(self) -> pb.RunMaintenanceResponse:
        """One pass, singleton across replicas (fenced lock): expire and re-drive transfers."""
        # A short lease, extended as the pass goes: a replica killed mid-pass stalls the others only briefly.
        lease = await self.locks.try_acquire(self.k.maintenance_tag(), ttl_ms=MAINTENANCE_LEASE_MS)
        if lease is None:
            return pb.RunMaintenanceResponse(ran=False)
        counts = {"expired": 0, "recovered": 0}
        # The pass runs as a task while this one keeps the lease alive (a downstream call may outlast
        # the lease); if the lease cannot be confirmed, the pass is cancelled at once, so two replicas
        # never run a pass at the same time. Cancelling between two saga steps is like a crash there,
        # which recovery is built for.
        work = asyncio.ensure_future(self._maintenance_pass(lease, counts))
        try:
            while True:
                done, _ = await asyncio.wait({work}, timeout=MAINTENANCE_LEASE_MS / 3 / 1000)
                if done:
                    work.result()
                    break
                if not await self.locks.extend(lease, MAINTENANCE_LEASE_MS):
                    log.warning("maintenance lease lost; pass cancelled", extra={"fields": counts})
                    break
        finally:
            if not work.done():
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
            await self.locks.release(lease)
        return pb.RunMaintenanceResponse(expired=counts["expired"], recovered=counts["recovered"], ran=True)

    async def _maintenance_pass(self, lease: Lease, counts: dict[str, int]) -> None:
        cutoff = self.clock.now_ms() - self.recovery_grace_ms
        for raw in await self.r.zrangebyscore(self.k.inflight(), "-inf", cutoff):
            if not await self.locks.extend(lease, MAINTENANCE_LEASE_MS):
                return  # another replica took over
            tid = _s(raw)
            meta_raw = await self.r.hget(self.k.inflight_meta(), tid)
            if meta_raw is None:
                await self.r.zrem(self.k.inflight(), tid)
                continue
            meta = json.loads(_s(meta_raw))
            try:
                before = await self._transfer_record(meta["recipient"], tid)
                if not before:
                    await self._abandon_uncreated(tid, meta)
                    counts["recovered"] += 1
                    continue
                after = await self._drive(tid, meta["recipient"], before)
            except DomainError as exc:
                log.warning("recovery deferred", extra={"fields": {"transfer": tid, "reason": exc.reason}})
                continue
            if before["state"] == "PENDING_ACCEPT" and after["state"] != "PENDING_ACCEPT":
                counts["expired"] += 1
            elif before["state"] != after["state"] or before["state"] in TERMINAL:
                counts["recovered"] += 1
        for raw in await self.r.zrangebyscore(self.k.returns_inflight(), "-inf", cutoff):
            relid = _s(raw)
            meta_raw = await self.r.hget(self.k.returns_meta(), relid)
            if meta_raw is None:
                await self.r.zrem(self.k.returns_inflight(), relid)
                continue
            try:
                await self._drive_return(relid, json.loads(_s(meta_raw))["holder"])
                counts["recovered"] += 1
            except DomainError as exc:
                log.warning("return deferred", extra={"fields": {"return": relid, "reason": exc.reason}})

    async def _abandon_uncreated(self, tid: str, meta: dict[str, str]) -> None:
        """The creator reserved the limits but recorded nothing within the grace: it died, or it is
        stalled (a paused process, a long GC) and may still wake up. Nothing was debited (the debit
        only follows the record), so the transfer is recorded FAILED, atomically unless the record
        exists by now; a creator that wakes up finds FAILED and stops. Then the reservation goes
        back. Dropping the index entry without a record (as before) let a woken creator record and
        debit a transfer that no sweeper tracked: never returned at 06:00, outside the limits."""
        recipient = meta["recipient"]
        fields = [x for kv in meta.items() for x in kv]
        async with self.r.pipeline(transaction=False) as p:
            p.set(self.k.transfer_recipient(tid), recipient)
            await self.lua["xfer_abandon"](keys=[self.k.transfer(recipient, tid)],
                                           args=[self.clock.now_ms(), *fields], client=p)
            _, found = await p.execute()
        if _s(found) == "ABANDONED":
            event(log, "transfer abandoned", transfer=tid, sender=meta["sender"], recipient=recipient)
        await self._drive(tid, recipient)
