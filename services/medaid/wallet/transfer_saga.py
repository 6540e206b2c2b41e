"""Transfers between near-kin: the exactly-once transfer saga (SPEC §5).

Transfer saga (state in the recipient's wallet slot, `xfer:<tid>`; tid = the request id):

    CREATED ──debit ok──▶ PENDING_ACCEPT ──accept──▶ COMPLETED
       │                        │
       │ debit refused          └─06:00 next day─▶ RETURNING ──refund──▶ RETURNED
       ▼
    FAILING ──cancel/refund──▶ FAILED

* The registry's debit is keyed by the transfer id (an `xfer|<tid>` mark on the sender's account,
  in the same Lua script as the debit; '|' keeps it apart from any request id); its refund is keyed
  by it too, and a refunded/cancelled transfer can never be debited again, so FAILED and RETURNED
  are final even if a late debit retry arrives.
* The wallet's credit (accept) is keyed by the transfer id in the same script that creates the lot.
* Every transition is a compare-and-set on the transfer record, so the request path, the expiry
  sweeper and the recovery loop may race without a double effect.
* The recovery loop re-drives every transfer in the in-flight index that is stuck between steps.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import grpc

from medaid.common import errors, metrics, rpc
from medaid.common.errors import DomainError
from medaid.common.logs import event
from medaid.common.redis_client import barrier
from medaid.common.values import decode_pairs as _pairs
from medaid.common.values import text as _s
from medaid.registry.client import downstream
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.wallet import rules
from medaid.wallet.core import DEFINITIVE_DEBIT_REFUSALS, TERMINAL
from medaid.wallet.transfer_reads import TransferReads

log = logging.getLogger("medaid.wallet")


class TransferSaga(TransferReads):
    """The transfer saga's steps: debit the sender, expire, refund, each a compare-and-set, and the
    bookkeeping once a transfer waits or ends; `_drive` runs them (the request path, the expiry
    sweeper and the recovery loop alike)."""

    async def _cas(self, recipient: str, tid: str, expect: str, new: metrics.TransferState,
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
                if await self._side_ended(rec):
                    _, rec = await self._cas(recipient, tid, "CREATED", "FAILING", failure_reason="RELATIONSHIP_ENDED")
                else:
                    rec = await self._step_debit(rec)
            elif state == "PENDING_ACCEPT" and now >= int(rec["expires_at"]):
                ok, rec = await self._cas(recipient, tid, "PENDING_ACCEPT", "RETURNING")
                if ok:
                    self._fault("expire.after_returning")
            elif state == "PENDING_ACCEPT" and rec.get("parts") and await self._origin_ended(rec):
                # Passed-on quota whose funding employee's (or an earlier passer's) relationships
                # ended while it was being debited, after the ending looked for it: it goes back, as
                # the ending would have sent it back (its lot there ended, so home).
                _, rec = await self._cas(recipient, tid, "PENDING_ACCEPT", "RETURNING")
            elif state in ("RETURNING", "FAILING"):
                rec = await self._step_refund(rec)
            else:
                await self._settle_side_effects(tid, rec)
                return rec
        raise errors.unavailable("TRANSFER_BUSY", "the transfer is changing state; retry with the same request id")

    async def _side_ended(self, rec: dict[str, str]) -> bool:
        """Whether the recipient's or the sender's wallet relationships, as an insured person of the
        province the transfer names for them, ended for an event at or after its creation
        (`Endings._note_ended`). An ending keeps its time before it looks for the transfers in
        flight, and this is read once the record is written: an ending that did not find the
        record is found here, so a transfer created as its recipient was terminated (or its sender
        moved 统筹区) fails before any debit instead of waiting for 06:00."""
        async with self.r.pipeline(transaction=False) as p:
            p.zmscore(self.k.ended(rec["recipient"]), [rec["recipient_province"], ""])
            p.zmscore(self.k.ended(rec["sender"]), [rec["sender_province"], ""])
            p.zmscore(self.k.sender_ended(rec["sender"]), [rec["sender_province"], ""])
            replies = await p.execute()
        return rules.ended_by_event(int(rec["created_at"]), [int(x or 0) for side in replies for x in side])

    async def _origin_ended(self, rec: dict[str, str]) -> bool:
        """Whether the relationships of a person whose quota an onward transfer carries (a part's
        funding employee, or a wallet that passed it on before: `rules.onward_origins`) ended, for
        an event at or after that quota's relationship began (`Endings._note_ended`). An ending keeps
        its time before it looks for the transfers in flight, and finds there only a transfer whose
        parts are recorded: one whose debit the ending did not find is found here, by reading after
        the parts are recorded (and again by the accept), so its quota never becomes a lot of a
        relationship that ended."""
        origins = rules.onward_origins(json.loads(rec.get("parts") or "[]"))
        people = sorted({who for who, _, _ in origins})
        if not people:
            return False
        async with self.r.pipeline(transaction=False) as p:
            for who in people:
                p.zrange(self.k.ended(who), 0, -1, withscores=True)
                p.zrange(self.k.sender_ended(who), 0, -1, withscores=True)  # they are senders of it
            found = await p.execute()
        marks = {who: found[2 * n] + found[2 * n + 1] for n, who in enumerate(people)}
        return any(int(at) > 0 and rules.origin_ended(oprov, began, _s(province), int(at))
                   for who, oprov, began in origins for province, at in marks[who])

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
                                     f"did not confirm the debit ({exc.reason}); retry with the same request id",
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
        # Each part with when its origin funded it, when this wallet got it and who passed it on
        # before (lots_release.lua).
        parts = [{"sender": p["sender"], "sprov": p["sprov"], "amount": int(p["amount"]),
                  "funded": int(p.get("funded") or 0), "held": int(p.get("held") or 0),
                  **({"chain": p["chain"]} if p.get("chain") else {})}
                 for p in (json.loads(_s(detail)) or [])]
        if await self._origin_ended({"parts": json.dumps(parts)}):
            # Quota of a relationship that ended (for an event by the time it began): it goes back
            # (its lot there ended, so home) rather than on, as decision 18 fails a transfer.
            return (await self._cas(recipient, tid, "CREATED", "FAILING", failure_reason="RELATIONSHIP_ENDED",
                                    parts=json.dumps(parts)))[1]
        expires = rules.accept_deadline(self.policy, int(rec["created_at"]))
        ok, after = await self._cas(recipient, tid, "CREATED", "PENDING_ACCEPT", expires_at=expires,
                                    parts=json.dumps(parts))
        if ok:
            self._fault("transfer.after_pending")
            event(log, "transfer pending", transfer=tid, recipient=recipient, onward=True)
        return after

    async def _refund_wallet(self, rec: dict[str, str]) -> int:
        """Onward transfer returned or failed: the quota goes back to the sending wallet's lots, or
        home to the funding employee where that lot's relationship ended meanwhile (a return record,
        registered in the returns index before the script, driven like any lot release). Returns the
        fen sent home (the same on a re-drive: the script keeps it with the debit)."""
        tid, sender = rec["tid"], rec["sender"]
        relid = rpc.derived_id("xback", tid)
        async with self.r.pipeline(transaction=True) as p:  # the index first, then (next round trip) the script
            p.hset(self.k.returns_meta(), relid, json.dumps({"holder": sender, "sender": sender}))
            p.zadd(self.k.returns_inflight(), {relid: self.clock.now_ms()})
            await p.execute()
        _, _, home = await self.lua["wallet_xfer_back"](
            keys=[self.k.wallet(sender), self.k.lots(sender), self.k.entries(sender),
                  self.k.onward_debits(sender), self.k.returns(sender)],
            args=[tid, self.clock.now_ms(), relid])
        await self._drive_return(relid, sender)
        return int(home)

    async def _step_refund(self, rec: dict[str, str]) -> dict[str, str]:
        """RETURNING → RETURNED, FAILING → FAILED: the registry refunds (or cancels) by transfer id."""
        tid, recipient, state = rec["tid"], rec["recipient"], rec["state"]
        home: dict[str, int] = {}
        if rec.get("source") == "WALLET":
            # What went home to funding employees (a part whose lot's relationship ended meanwhile);
            # the rest is back in the sending wallet's lots.
            home["refunded_home"] = await self._refund_wallet(rec)
        else:
            try:
                resp = await self.registries.stub(rec["sender_province"]).RefundTransfer(rpb.RefundTransferRequest(
                    transfer_id=tid, sender_id_number=rec["sender"], amount_fen=int(rec["amount"])),
                    timeout=self.registries.timeout())
            except grpc.aio.AioRpcError as exc:
                raise downstream(exc, rec["sender_province"]) from None
            # What reached the sender's personal account (0: never debited), kept with the end state.
            home["refunded_home"] = int(resp.refunded_fen)
        self._fault("expire.after_refund")
        final: metrics.TransferState = "RETURNED" if state == "RETURNING" else "FAILED"
        ok, after = await self._cas(recipient, tid, state, final, finished_at=self.clock.now_ms(), **home)
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
        last; should the round trip break off, Redis has applied a prefix of it; on a cluster the
        limits are applied first, `barrier`)."""
        state, sender = rec["state"], rec["sender"]
        if state == "FAILED":
            await self.lua["unreserve"](keys=[self.k.pending(sender), self.k.day_count(sender, rec["day"]),
                                              self.k.reserved(sender)], args=[tid], client=p)
        else:
            if state == "COMPLETED":
                # The holder of lots of the sender and, for a transfer passed on, of each funding
                # employee and each wallet that passed the quota on before: any of their relationships'
                # end finds the lots here.
                parts = json.loads(rec.get("parts") or "[]")
                for who in {sender, *(part["sender"] for part in parts),
                            *(c["via"] for part in parts for c in part.get("chain") or [])}:
                    p.sadd(self.k.holders(who), rec["recipient"])
            await self.lua["release_pending"](keys=[self.k.pending(sender)], args=[tid], client=p)
        await barrier(p)
        p.zrem(self.k.inflight(), tid)
        p.hdel(self.k.inflight_meta(), tid)
