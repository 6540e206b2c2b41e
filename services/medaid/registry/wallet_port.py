"""Waterfall step 2 (own 医保钱包) and lot returns: the registry's seam to the national wallet.

`NoWallet` is the truthful answer of a registry deployed without a wallet service: nobody has a
wallet (WALLET_NOT_OPENED). `GrpcWallet` asks the wallet service over gRPC; every call it makes
is idempotent (keyed by the settlement id), so retries on UNAVAILABLE are safe. Each call ends
before the caller of the request being served gives up (`rpc.time_left`): a wallet that does not
answer is WALLET_UNAVAILABLE to the router, not the registry taken for the one that did not answer.
A wallet that answers "busy, retry" (UNAVAILABLE with its own reason, WALLET_BUSY …) is passed on
with that reason, still UNAVAILABLE (WALLET_BUSY, which comes after the wallet's wait, with the same
do-not-retry pushback: `errors.WAITED_UNAVAILABLE`).
A wallet that answers but refuses this registry's certificate (one that names no province, or another
one: `registry-<province>` is required) is WALLET_REFUSED_REGISTRY, with the wallet's own reason in
the metadata: a misconfiguration an operator must fix, not an outage that passes by itself.
A wallet that failed inside (UNKNOWN, INTERNAL: `errors.OUTCOME_UNKNOWN`, it may have written first)
is DOWNSTREAM_ERROR, still UNAVAILABLE: a resend with the same request id, or the recovery loop,
finishes what it did. Any other answer a call does not expect (an older wallet's INVALID_ARGUMENT) is
WALLET_CALL_REFUSED (nothing was done), with the wallet's code and reason in the metadata; still retryable.
"""

from __future__ import annotations

from typing import Protocol

import grpc

from medaid.common import errors, rpc
from medaid.common.v1 import common_pb2 as cpb


class WalletPort(Protocol):
    async def balance(self, id_number: str, place_admdvs: str) -> tuple[int | None, str]:
        """(spendable balance at `place_admdvs`, '') or (None, reason it cannot pay)."""

    async def balances(self, asks: list[tuple[str, str]]) -> list[tuple[int | None, str]]:
        """`balance` for each (id_number, place_admdvs) of `asks`, in order, in one call."""

    async def debit(self, ref: str, id_number: str, amount_fen: int, category: int, place_admdvs: str,
                    restores: str = "", settled_at: int = 0) -> int | None:
        """Spend once per `ref`; balance after, or None when the wallet no longer holds enough.
        `restores`: a refunded spend whose lots and amounts this spend takes again exactly (None
        when it cannot). `settled_at`: the time of the settlement event it pays, as its record has
        it, whose month (Asia/Shanghai) it clears in; 0: no settlement (the wallet's time)."""

    async def debit_up_to(self, ref: str, id_number: str, amount_fen: int, category: int,
                          place_admdvs: str, settled_at: int = 0) -> tuple[int, int] | str:
        """A settlement's share (SPEC §4 step 2, min(balance, amount)): spend once per `ref` what the wallet
        holds now, at most `amount_fen`, cleared in the month of `settled_at` (the settlement's time);
        (fen spent, balance after), or why it paid nothing (the
        settlement's wallet reason: WALLET_INSUFFICIENT, WALLET_OTHER_USE_PLACE, WALLET_NOT_OPENED,
        or the wallet's own, e.g. OWNER_NOT_INSURED)."""

    async def can_restore(self, spend: str, id_number: str, amount_fen: int, category: int,
                          place_admdvs: str) -> str:
        """'' when a new spend could take exactly the lots and amounts of the refunded spend `spend`
        again (`debit(..., restores=spend)`), else why not. Writes nothing."""

    async def refund(self, ref: str, id_number: str, amount_fen: int, refunded_at: int = 0) -> int:
        """Undo the spend `ref` once, counted out of clearing in the month of `refunded_at` (the
        reversal's time as its record has it; 0: the wallet's time); balance after. A spend the
        wallet finds refunded whole already (`amount_fen`), by another request, is done: its fen are
        back in the wallet."""

    async def end_relationships(self, ref: str, id_number: str, reason: str, province: str,
                                event_at: int = 0) -> int:
        """Every wallet relationship the person has as an insured person of `province` (the registry
        asking) ends (TERMINATED, MOVED, MOVED_REGION, DECEASED): lots they sent come home, lots they
        hold go back; fen returned in all. `event_at`: when the event happened, as the registry
        recorded it (unix ms): only the relationships begun by then end (0: every one)."""

    async def note_status(self, id_number: str, province: str) -> None:
        """The person's status changed in `province`'s registry: the wallet reads it back and keeps
        it (only an ACTIVE owner spends from a wallet)."""

    async def cancel_spend(self, ref: str, id_number: str, settled_at: int = 0) -> int:
        """Undo the spend `ref` (in the month of `settled_at`, the one it was counted in) if there is
        one, else bar `ref` so that no later spend can have it
        (fen returned; 0 when it never happened or was already undone)."""


class NoWallet:
    async def balance(self, id_number: str, place_admdvs: str) -> tuple[int | None, str]:
        return None, "WALLET_NOT_OPENED"

    async def balances(self, asks: list[tuple[str, str]]) -> list[tuple[int | None, str]]:
        return [(None, "WALLET_NOT_OPENED")] * len(asks)

    async def debit(self, ref: str, id_number: str, amount_fen: int, category: int, place_admdvs: str,
                    restores: str = "", settled_at: int = 0) -> int | None:
        raise RuntimeError("no wallet service is connected")

    async def debit_up_to(self, ref: str, id_number: str, amount_fen: int, category: int,
                          place_admdvs: str, settled_at: int = 0) -> tuple[int, int] | str:
        raise RuntimeError("no wallet service is connected")

    async def can_restore(self, spend: str, id_number: str, amount_fen: int, category: int,
                          place_admdvs: str) -> str:
        return "WALLET_NOT_OPENED"

    async def refund(self, ref: str, id_number: str, amount_fen: int, refunded_at: int = 0) -> int:
        raise RuntimeError("no wallet service is connected")

    async def end_relationships(self, ref: str, id_number: str, reason: str, province: str,
                                event_at: int = 0) -> int:
        return 0

    async def note_status(self, id_number: str, province: str) -> None:
        return None

    async def cancel_spend(self, ref: str, id_number: str, settled_at: int = 0) -> int:
        return 0


# The registry's words for the wallet refusing this registry's identity (PERMISSION_DENIED: its certificate
# names no province, or another one; docs/operations.md). Still UNAVAILABLE to the caller and the recovery
# loop: what was asked is done once the certificate is fixed, by a resend or the loop.
WALLET_REFUSED_REGISTRY = "WALLET_REFUSED_REGISTRY"

# A call the wallet refused with a code the registry does not expect of it for that call (an older
# wallet's INVALID_ARGUMENT, an ALREADY_EXISTS): the wallet did answer, so not WALLET_UNAVAILABLE, and
# its code and reason go in the metadata. Still UNAVAILABLE to the caller and the recovery loop:
# nothing was done, and a resend with the same request id does it once the wallet takes the call.
WALLET_CALL_REFUSED = "WALLET_CALL_REFUSED"
# A call whose outcome the registry cannot know (errors.OUTCOME_UNKNOWN) that the wallet did answer: it
# failed inside (UNKNOWN, INTERNAL), possibly after it wrote. DOWNSTREAM_ERROR with the wallet's code
# and reason in the metadata; UNAVAILABLE to the caller and the recovery loop, so that a resend with
# the same request id (answered by the wallet's first outcome) finishes it, never "nothing was done".
# The rest of OUTCOME_UNKNOWN (errors.NO_ANSWER_CODES) is no answer at all: WALLET_UNAVAILABLE.
# The wallet's UNAVAILABLE reasons that say it cannot serve at all (its Redis, a registry it asked), as
# opposed to its own contention (WALLET_BUSY, TRANSFER_BUSY, …), which reaches the registry's caller as it is.
_WALLET_CANNOT_SERVE = errors.DOWNSTREAM_UNAVAILABLE | {errors.STORE_UNAVAILABLE}

# A spend's refusal by the wallet, in the words a settlement uses for the same thing (`balance`);
# any other reason (OWNER_NOT_INSURED, SPEND_CANCELLED, …) is the settlement's as the wallet gave it.
# The wallet's refusal of a request id already claimed by a request with other fields (idempotency.py).
_REUSED = "IDEMPOTENCY_KEY_REUSED"

_SPEND_REASONS = {"INSUFFICIENT_QUOTA": "WALLET_INSUFFICIENT", "OUTSIDE_USE_PLACE": "WALLET_OTHER_USE_PLACE",
                  "WALLET_NOT_FOUND": "WALLET_NOT_OPENED"}


class GrpcWallet:
    def __init__(self, address: str, deadline_s: float = rpc.DEFAULT_DEADLINE_S) -> None:
        from medaid.wallet.v1 import wallet_pb2, wallet_pb2_grpc

        self._pb = wallet_pb2
        self._channel = rpc.channel(address, [wallet_pb2.DESCRIPTOR.services_by_name["WalletService"].full_name])
        self._stub = wallet_pb2_grpc.WalletServiceStub(self._channel)
        self._deadline = deadline_s

    def _timeout(self) -> float:
        """The wallet's deadline, cut to what the caller of the request being served still allows."""
        return rpc.time_left(self._deadline)

    def _unavailable(self, exc: grpc.aio.AioRpcError) -> errors.DomainError:
        if exc.code() == grpc.StatusCode.PERMISSION_DENIED:
            info = errors.error_info(exc)
            why = info.reason if info is not None else ""
            caller = info.metadata.get("caller_province", "") if info is not None else ""
            return errors.unavailable(
                WALLET_REFUSED_REGISTRY, f"the wallet refused this registry's certificate ({why or 'no reason'}): "
                "a registry presents registry-<province> of its own province; fix the certificate, then retry "
                "with the same request id", wallet_reason=why, caller_province=caller)
        if exc.code() == grpc.StatusCode.UNAVAILABLE and (info := errors.error_info(exc)) is not None \
                and info.reason:
            # The wallet answered "not now" in its own words: busy (WALLET_BUSY, TRANSFER_BUSY …) goes on
            # to the caller as it is, retryable as the wallet meant it; its store or a registry it asked
            # not answering is the wallet unavailable, named with the wallet's reason.
            if info.reason in _WALLET_CANNOT_SERVE:
                return errors.unavailable(
                    "WALLET_UNAVAILABLE", f"the wallet service cannot serve now ({info.reason}); retry with "
                    "the same request id", wallet_reason=info.reason)
            return errors.unavailable(info.reason, f"the wallet answered {info.reason}: {exc.details() or ''}; "
                                      "retry with the same request id", wallet_reason=info.reason)
        if exc.code() in errors.FAILED_INSIDE_CODES:
            info = errors.error_info(exc)
            why = info.reason if info is not None else ""
            return errors.unavailable(
                "DOWNSTREAM_ERROR", f"the wallet failed while serving the call ({exc.code().name}, "
                f"{why or 'no reason'}): it may have done it; retry with the same request id, which the wallet "
                "answers with its first outcome", wallet_code=exc.code().name, wallet_reason=why)
        if exc.code() not in errors.NO_ANSWER_CODES:
            info = errors.error_info(exc)
            why = info.reason if info is not None else ""
            return errors.unavailable(
                WALLET_CALL_REFUSED, f"the wallet answered {exc.code().name} ({why or 'no reason'}): "
                f"{exc.details() or ''}; nothing was done here: retry with the same request id once the wallet "
                "takes the call (a wallet older than this registry: upgrade it)",
                wallet_code=exc.code().name, wallet_reason=why)
        return errors.unavailable("WALLET_UNAVAILABLE", f"the wallet service did not answer ({exc.code().name}); "
                                  "retry with the same request id")

    async def balance(self, id_number: str, place_admdvs: str) -> tuple[int | None, str]:
        try:
            resp = await self._stub.GetWallet(self._pb.GetWalletRequest(owner_id_number=id_number),
                                              timeout=self._timeout())
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None, "WALLET_NOT_OPENED"
            raise self._unavailable(exc) from None
        if resp.wallet.use_place_admdvs != place_admdvs:
            return None, "WALLET_OTHER_USE_PLACE"
        return int(resp.wallet.balance_fen), ""

    async def balances(self, asks: list[tuple[str, str]]) -> list[tuple[int | None, str]]:
        try:
            resp = await self._stub.GetWalletBalances(self._pb.GetWalletBalancesRequest(
                owner_id_numbers=[pid for pid, _ in asks]), timeout=self._timeout())
        except grpc.aio.AioRpcError as exc:
            raise self._unavailable(exc) from None
        out: list[tuple[int | None, str]] = []
        for (_, place), b in zip(asks, resp.balances, strict=True):
            if not b.opened:
                out.append((None, "WALLET_NOT_OPENED"))
            elif b.use_place_admdvs != place:
                out.append((None, "WALLET_OTHER_USE_PLACE"))
            else:
                out.append((int(b.balance_fen), ""))
        return out

    async def debit(self, ref: str, id_number: str, amount_fen: int, category: int, place_admdvs: str,
                    restores: str = "", settled_at: int = 0) -> int | None:
        spent = await self._spend(ref, id_number, amount_fen, category, place_admdvs, restores=restores,
                                  settled_at=settled_at)
        return None if isinstance(spent, str) else spent[1]

    async def debit_up_to(self, ref: str, id_number: str, amount_fen: int, category: int,
                          place_admdvs: str, settled_at: int = 0) -> tuple[int, int] | str:
        return await self._spend(ref, id_number, amount_fen, category, place_admdvs, up_to=True,
                                 settled_at=settled_at)

    async def _spend(self, ref: str, id_number: str, amount_fen: int, category: int, place_admdvs: str, *,
                     restores: str = "", up_to: bool = False, settled_at: int = 0) -> tuple[int, int] | str:
        """(fen spent, balance after), or why the wallet refuses to pay (holds too little, no longer
        pays here, its owner may not pay…) in the settlement's words (`_SPEND_REASONS`).
        `settled_at`: the settlement's time as its record has it, whose month the share clears in
        (0: a payment that is no settlement, the wallet's time)."""
        try:
            resp = await self._stub.SpendWallet(self._pb.SpendWalletRequest(
                request_id=ref, owner_id_number=id_number, amount_fen=amount_fen,
                category=cpb.Category.ValueType(category),
                spending_admdvs=place_admdvs, restores_spend_id=restores, up_to=up_to,
                clearing_at_unix_ms=settled_at), timeout=self._timeout())
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                info = errors.error_info(exc)
                why = info.reason if info is not None else "WALLET_INSUFFICIENT"
                return _SPEND_REASONS.get(why, why)
            raise self._unavailable(exc) from None
        return int(resp.spent_fen), int(resp.balance_after_fen)

    async def can_restore(self, spend: str, id_number: str, amount_fen: int, category: int,
                          place_admdvs: str) -> str:
        # No request id: a question is no request. A wallet that does not know check_only refuses the
        # missing id (INVALID_ARGUMENT) instead of spending, and the undo waits for it (UNAVAILABLE).
        try:
            await self._stub.SpendWallet(self._pb.SpendWalletRequest(
                owner_id_number=id_number, amount_fen=amount_fen, category=cpb.Category.ValueType(category),
                spending_admdvs=place_admdvs, restores_spend_id=spend, check_only=True), timeout=self._timeout())
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                info = errors.error_info(exc)
                return info.reason if info is not None else exc.code().name
            raise self._unavailable(exc) from None
        return ""

    async def refund(self, ref: str, id_number: str, amount_fen: int, refunded_at: int = 0) -> int:
        """`refunded_at`: the reversal's time as its record has it, whose month the refund clears in."""
        try:
            resp = await self._stub.RefundWalletSpend(self._pb.RefundWalletSpendRequest(
                request_id=rpc.derived_id("rev", ref), spend_id=ref, owner_id_number=id_number,
                clearing_at_unix_ms=refunded_at), timeout=self._timeout())
        except grpc.aio.AioRpcError as exc:
            info = errors.error_info(exc)
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and info is not None \
                    and info.reason == "SPEND_ALREADY_REFUNDED" \
                    and info.metadata.get("refunded_fen") == str(amount_fen):
                # Refunded whole under another request id: the share is back where it came from, so this
                # step is done (refunding it again would create money; waiting would never end).
                return int(info.metadata.get("balance_fen") or 0)
            raise self._unavailable(exc) from None
        if resp.refunded_fen != amount_fen:
            raise AssertionError(f"wallet refunded {resp.refunded_fen} fen for {ref}, expected {amount_fen}")
        return int(resp.balance_after_fen)

    async def end_relationships(self, ref: str, id_number: str, reason: str, province: str,
                                event_at: int = 0) -> int:
        req = self._pb.EndPersonWalletRelationshipsRequest(request_id=ref, id_number=id_number, reason=reason,
                                                           province=province, event_at_unix_ms=event_at)
        try:
            resp = await self._stub.EndPersonWalletRelationships(req, timeout=self._timeout())
        except grpc.aio.AioRpcError as exc:
            if not (event_at and exc.code() == grpc.StatusCode.ALREADY_EXISTS
                    and (info := errors.error_info(exc)) is not None and info.reason == _REUSED):
                raise self._unavailable(exc) from None
            # The id taken by this very step as a registry older than event times sent it (no time: it
            # ends every relationship), before an upgrade: the step is that request, whose first answer
            # (or the end it began, finished as it began) is the step's.
            req.event_at_unix_ms = 0
            try:
                resp = await self._stub.EndPersonWalletRelationships(req, timeout=self._timeout())
            except grpc.aio.AioRpcError as again:
                raise self._unavailable(again) from None
        return int(resp.returned_as_sender_fen + resp.returned_as_holder_fen)

    async def note_status(self, id_number: str, province: str) -> None:
        try:
            await self._stub.NoteOwnerStatus(self._pb.NoteOwnerStatusRequest(id_number=id_number, province=province),
                                             timeout=self._timeout())
        except grpc.aio.AioRpcError as exc:
            raise self._unavailable(exc) from None

    async def cancel_spend(self, ref: str, id_number: str, settled_at: int = 0) -> int:
        """`settled_at`: the time the spend would have cleared by (`_spend`), so a spend undone here
        is counted out in the month it was counted in."""
        try:
            resp = await self._stub.RefundWalletSpend(self._pb.RefundWalletSpendRequest(
                request_id=rpc.derived_id("rev", ref), spend_id=ref, owner_id_number=id_number,
                cancel_if_absent=True, clearing_at_unix_ms=settled_at), timeout=self._timeout())
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
                return 0  # the owner has no wallet, or the spend was refunded already
            raise self._unavailable(exc) from None
        return int(resp.refunded_fen)

    async def close(self) -> None:
        await self._channel.close()
