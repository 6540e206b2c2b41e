"""Wallet spending: a settlement's or a premium's share, and its refund (SPEC §5)."""

from __future__ import annotations

import json
import logging
from typing import Any

from medaid.common import errors, rpc
from medaid.common.idempotency import validate_request_id
from medaid.common.idnumber import mask
from medaid.common.logs import event
from medaid.common.v1 import common_pb2 as cpb
from medaid.common.values import text as _s
from medaid.registry import validate
from medaid.wallet import rules
from medaid.wallet.transfers import Transfers
from medaid.wallet.v1 import wallet_pb2 as pb

log = logging.getLogger("medaid.wallet")


class Spending(Transfers):
    """Paying from a wallet, oldest lot first, and refunding a payment."""

    async def _spend(self, request_id: str, owner: str, amount: int, spending_admdvs: str, kind: str,
                     restores: str = "", check_only: bool = False, up_to: bool = False,
                     settled_at: int = 0) -> dict[str, Any]:
        """Spend once per request id; `spending_admdvs` '' spends at the wallet's use-place. The script
        answers a request id it has seen with its first spend before any check, so a resend whose
        first attempt spent is answered even if the use-place changed since. `restores` names a
        refunded spend whose parts (lots and amounts) this one takes again exactly, or nothing.
        `check_only`: the same checks, nothing written; the record as the spend would leave it.
        `up_to`: spend what the wallet holds where that is less than `amount` (but not nothing).
        `settled_at`: the time of the settlement the spend pays, which decides its clearing month
        (`rules.clearing_month`)."""
        now = self.clock.now_ms()
        month = rules.clearing_month(settled_at, now)
        status, detail = await self.lua["spend"](
            keys=[self.k.wallet(owner), self.k.lots(owner), self.k.lot_order(owner), self.k.entries(owner),
                  self.k.spends(owner), self.k.clearing(owner, month), self.k.spend_bars(owner)],
            args=[request_id, amount, now, month, spending_admdvs, kind, restores, "1" if check_only else "0",
                  "1" if up_to else "0"])
        status = _s(status)
        if status == "CHECKED":
            return {"amount": amount, "bal": int(_s(detail)), "parts": []}
        if status == "BARRED":
            raise errors.refused("SPEND_CANCELLED", f"spend {request_id} was cancelled before it happened")
        if status == "NO_WALLET":
            raise errors.not_found("WALLET_NOT_FOUND", f"{mask(owner)} has no wallet")
        if status == "OUTSIDE":
            raise errors.refused("OUTSIDE_USE_PLACE", f"wallet quota is spent only at the use-place "
                                 f"{_s(detail)}, not {spending_admdvs}")
        if status == "SHORT":
            raise errors.refused("INSUFFICIENT_QUOTA", f"the wallet holds {_s(detail)} fen, less than {amount}")
        if status == "UNRESTORABLE":
            raise errors.refused("SPEND_NOT_RESTORABLE", f"the wallet cannot take spend {restores} again as it "
                                 f"was: {_s(detail)}")
        rec: dict[str, Any] = json.loads(_s(detail))
        event(log, "wallet spent", id_number=owner, ref=request_id, amount_fen=amount, kind=kind)
        return rec

    async def _check_owner_may_pay(self, owner: str, request_id: str, category: str) -> None:
        """Refused, before any write, unless the owner is ACTIVE as the wallet last heard from the
        registry of its province (`note_owner_status`; a wallet opened or moved since is ACTIVE). A
        spend this request id already made is the script's to answer (a resend after a lost reply
        is answered with it, whatever the owner's status is now), and a missing wallet is too."""
        if not rules.owner_must_be_active(category):
            return
        async with self.r.pipeline(transaction=False) as p:
            p.hget(self.k.wallet(owner), "status")
            p.hexists(self.k.spends(owner), request_id)
            status, spent = await p.execute()
        if not spent:
            rules.check_owner_may_pay(category, active=_s(status or b"ACTIVE") == "ACTIVE")

    def _check_clearing_at(self, ms: int) -> None:
        """A settlement's time is 0 (now) or a past instant: never ahead of the wallet's clock by more
        than a clock's skew (`rules.CLOCK_SKEW_MS`)."""
        if not 0 <= ms <= self.clock.now_ms() + rules.CLOCK_SKEW_MS:
            raise errors.invalid("INVALID_CLEARING_AT", "clearing_at_unix_ms is the settlement's time (unix ms, "
                                 "not in the future), or 0 for now", field="clearing_at_unix_ms")

    @staticmethod
    def _parts(rec: dict[str, Any]) -> list[pb.SpendPart]:
        return [pb.SpendPart(transfer_id=p[0], sender_province=p[1], amount_fen=int(p[2])) for p in rec["parts"]]

    async def spend(self, req: pb.SpendWalletRequest, acting: str | None = None) -> pb.SpendWalletResponse:
        """`acting`: the calling registry's province (`rules.check_acting_province`)."""
        owner = validate.id_number(req.owner_id_number, "owner_id_number")
        validate.amount(req.amount_fen)
        category = validate.enum_name(cpb.Category, req.category, "CATEGORY_", "category")
        validate.admdvs(req.spending_admdvs, "spending_admdvs", required=True)
        if req.restores_spend_id:
            validate_request_id(req.restores_spend_id)
        if req.up_to and (req.restores_spend_id or req.check_only):
            raise errors.invalid("INVALID_UP_TO", "up_to is for a settlement's share, not with restores_spend_id "
                                 "(exactly the refunded spend's parts) nor check_only", field="up_to")
        rules.check_spend_category(category)
        rules.check_acting_province(acting, req.spending_admdvs[:2])
        self._check_clearing_at(req.clearing_at_unix_ms)

        # A question is judged on its fields: a request id it carries is not looked up, so the id of a
        # spend made (or barred) is not answered as that spend, and no spend is answered as a question.
        ref = "" if req.check_only else req.request_id

        async def work() -> pb.SpendWalletResponse:
            await self._check_owner_may_pay(owner, ref, category)
            rec = await self._spend(ref, owner, req.amount_fen, req.spending_admdvs, "SPEND",
                                    req.restores_spend_id, req.check_only, req.up_to, req.clearing_at_unix_ms)
            return pb.SpendWalletResponse(spent_fen=int(rec["amount"]), balance_after_fen=int(rec["bal"]),
                                          parts=self._parts(rec))

        if req.check_only:  # a question, not a request: nothing to claim or to answer again
            if req.request_id:
                validate_request_id(req.request_id)
            return await work()
        return await self._once(req, "spend", owner, pb.SpendWalletResponse, work)

    async def pay_premium(self, req: pb.PayPremiumRequest) -> pb.PayPremiumResponse:
        owner = validate.id_number(req.owner_id_number, "owner_id_number")
        validate.amount(req.amount_fen)
        category = validate.enum_name(cpb.Category, req.category, "CATEGORY_", "category")
        if category == "RESIDENT_PREMIUM":  # SPEC §4b: its window, amount and once a year live in the registry
            raise errors.invalid("INVALID_PREMIUM_CATEGORY", "a 居民医保 premium is paid from the wallet through the "
                                 "insuring registry's PayResidentPremium (source WALLET); PayPremium takes "
                                 "LONG_TERM_CARE_PREMIUM", field="category")
        if category != "LONG_TERM_CARE_PREMIUM":
            raise errors.invalid("INVALID_PREMIUM_CATEGORY", "PayPremium takes LONG_TERM_CARE_PREMIUM",
                                 field="category")
        if req.period:
            validate.calendar_year(req.period, "period", "INVALID_PERIOD")

        async def work() -> pb.PayPremiumResponse:
            await self._check_owner_may_pay(owner, req.request_id, category)
            rec = await self._spend(req.request_id, owner, req.amount_fen, "", "PREMIUM")
            return pb.PayPremiumResponse(paid_fen=int(rec["amount"]), balance_after_fen=int(rec["bal"]),
                                         parts=self._parts(rec))

        return await self._once(req, "premium", owner, pb.PayPremiumResponse, work)

    async def refund_spend(self, req: pb.RefundWalletSpendRequest,
                           acting: str | None = None) -> pb.RefundWalletSpendResponse:
        """`acting`: the calling registry's province (`rules.check_acting_province`): the province the
        spend was made in, or for a spend not made (yet), which `cancel_if_absent` bars, its own: the bar
        counts for that province's spends only (spend_bar.lua), so the registry that planned a spend
        bars it even after the owner took the wallet to another province."""
        validate_request_id(req.spend_id)
        owner = validate.id_number(req.owner_id_number, "owner_id_number")
        self._check_clearing_at(req.clearing_at_unix_ms)
        if acting is not None:
            self._check_refund_province(acting, await self.r.hget(self.k.spends(owner), req.spend_id))

        async def work() -> pb.RefundWalletSpendResponse:
            # The spend's own record (the owner's spends, by the spend's request id) says what to undo.
            raw = await self.r.hget(self.k.spends(owner), req.spend_id)
            if req.cancel_if_absent and raw is None:
                # Barred in one script with the check that no spend has the id; a spend that got in
                # first is refunded below like any other.
                if _s(await self.lua["spend_bar"](keys=[self.k.spends(owner), self.k.spend_bars(owner)],
                                                  args=[req.spend_id, acting or ""])) == "BARRED":
                    event(log, "wallet spend barred", id_number=owner, ref=req.spend_id)
                    return pb.RefundWalletSpendResponse(
                        refunded_fen=0, balance_after_fen=int(_s(await self.r.hget(self.k.wallet(owner), "bal")
                                                                  or b"0")))
                raw = await self.r.hget(self.k.spends(owner), req.spend_id)
            if raw is None:
                raise errors.not_found("SPEND_NOT_FOUND", f"no wallet spend {req.spend_id} for this owner")
            if acting is not None:  # made since the check above, perhaps: its own province decides
                self._check_refund_province(acting, raw)
            status, detail, amount = await self._refund(owner, req.spend_id, req.request_id,
                                                        refunded_at=req.clearing_at_unix_ms,
                                                        cancel=req.cancel_if_absent)
            if status == "ERR":
                raise errors.not_found(detail, "the spend cannot be refunded")
            if status == "DUP":  # by another request: what it gave back, for the caller to recognise
                raise errors.refused("SPEND_ALREADY_REFUNDED", f"spend {req.spend_id} was already refunded",
                                     refunded_fen=str(amount), balance_fen=detail)
            event(log, "wallet spend refunded", id_number=owner, ref=req.spend_id, amount_fen=amount)
            return pb.RefundWalletSpendResponse(refunded_fen=amount, balance_after_fen=int(detail))

        return await self._once(req, "spend_refund", owner, pb.RefundWalletSpendResponse, work)

    @staticmethod
    def _check_refund_province(acting: str, raw: bytes | str | None) -> None:
        """A registry refunds the spends made in its province (the spend's record says where, whatever
        the wallet's use-place is now) and bars, of a spend not made, only its own province's."""
        rules.check_acting_province(acting, json.loads(_s(raw))["sprov"] if raw is not None else acting)

    async def _refund(self, owner: str, spend_id: str, request_id: str,
                      indexed: bool = False, refunded_at: int = 0, cancel: bool = False) -> tuple[str, str, int]:
        """Refund spend `spend_id` of `owner` as refund `request_id`, once, and send home the share of a
        lot whose relationship ended since the spend: (status, balance after or reason, amount). The
        request path and the maintenance pass (`finish_return`, for a refund whose request stopped
        after indexing its return) both come here; the script is keyed by the spend and the refund's
        request id, and the return by its id, so the two may race without a double effect.
        `indexed`: the return is in the returns index already. `refunded_at`: the time of the refund's
        own settlement event (a 2208's reversal time), which decides the month it is counted out in;
        `cancel`: the spend is undone as one not to be made (`cancel_if_absent`), counted out in its own
        month (`rules.refund_month`). Both are kept with the return, so the maintenance pass counts it
        in the same month."""
        raw = await self.r.hget(self.k.spends(owner), spend_id)
        if raw is None:
            return "ERR", "SPEND_NOT_FOUND", 0
        month = json.loads(_s(raw))["month"]
        # Counted out in the month of the refund (of the reversal the registry records, not the month
        # this runs in): a month already reported between provinces never changes afterwards; the
        # correction shows in the refund's month (SPEC §5 clearing). Never before the spend's month;
        # a cancellation in the spend's own.
        now = self.clock.now_ms()
        refund_month = rules.refund_month(month, refunded_at, now, cancel=cancel)
        relid = rpc.derived_id("sref", owner, spend_id)
        while True:
            status, detail, amount, home = await self.lua["spend_refund"](
                keys=[self.k.wallet(owner), self.k.lots(owner), self.k.entries(owner), self.k.spends(owner),
                      self.k.clearing(owner, refund_month), self.k.returns(owner)],
                args=[spend_id, now, month, request_id, relid, "1" if indexed else "0"])
            if _s(status) != "HOME":
                break
            # A part's lot ended since the spend: that part goes home to the funding employee. The
            # return goes into the returns index before the script can write it (then driven), with
            # what it takes to do this refund again: should the request stop before the script, the
            # maintenance pass cannot tell a dead request from a stalled one, so it finishes the
            # refund itself rather than drop an entry whose return may still be written.
            async with self.r.pipeline(transaction=True) as p:
                p.hset(self.k.returns_meta(), relid, json.dumps(
                    {"holder": owner, "sender": "", "refund": [spend_id, request_id, refunded_at or now,
                                                               "cancel" if cancel else ""]}))
                p.zadd(self.k.returns_inflight(), {relid: self.clock.now_ms()})
                await p.execute()
            indexed = True
            self._fault("refund.after_index")
        # Driven whenever this refund sent a share home, also when an earlier attempt (its reply
        # lost, or it stopped before driving) wrote the return: a resend finishes it too.
        if indexed or _s(home) == "1":
            await self._drive_return(relid, owner)
        return _s(status), _s(detail), int(amount)
