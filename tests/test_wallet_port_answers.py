"""The registry's seam to the wallet (registry/wallet_port.py) tells a wallet that did not answer
(WALLET_UNAVAILABLE) from one that answered with a code the registry does not expect of it: an
INVALID_ARGUMENT of a wallet older than the registry (docs/wallet-and-life-cycle.md, decision 6: it
refuses a `check_only` question without a request id), an ALREADY_EXISTS, an INTERNAL. Those are
answers: saying "the wallet service did not answer" sends the operator to a wallet that is up. A
real gRPC server answers as such a wallet does."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from medaid.cli.testid import test_ids as make_test_ids
from medaid.common import errors
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.wallet_port import GrpcWallet
from medaid.wallet.v1 import wallet_pb2_grpc as wpb_grpc

OWNER = make_test_ids("130102", "1980-01-01", "M")[0]
ANSWERS = {
    "INVALID_ARGUMENT": errors.invalid("INVALID_REQUEST_ID", "request_id must be 1-64 characters"),
    "ALREADY_EXISTS": errors.exists("IDEMPOTENCY_KEY_REUSED", "request_id was already used"),
}


class Answering(wpb_grpc.WalletServiceServicer):
    """A wallet that answers every spend, refund and balance question with `answer`."""

    answer = ANSWERS["INVALID_ARGUMENT"]

    def _abort(self, context: Any) -> Any:
        context.abort_with_status(self.answer.to_status())

    def SpendWallet(self, request: Any, context: Any) -> Any:
        return self._abort(context)

    def RefundWalletSpend(self, request: Any, context: Any) -> Any:
        return self._abort(context)

    def GetWalletBalances(self, request: Any, context: Any) -> Any:
        return self._abort(context)


@pytest.fixture(scope="module")
def wallet_address() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=[("grpc.so_reuseport", 0)])
    wpb_grpc.add_WalletServiceServicer_to_server(Answering(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0)


@pytest.mark.parametrize("code", sorted(ANSWERS))
def test_a_wallet_answer_the_registry_does_not_expect_is_not_called_no_answer(wallet_address: str, code: str):
    Answering.answer = ANSWERS[code]

    async def ask() -> list[errors.DomainError]:
        port = GrpcWallet(wallet_address, deadline_s=3)
        out: list[errors.DomainError] = []
        try:
            for call in (lambda: port.can_restore("setl-1", OWNER, 100, cpb.CATEGORY_OUTPATIENT, "130100"),
                         lambda: port.debit_up_to("setl-2", OWNER, 100, cpb.CATEGORY_OUTPATIENT, "130100"),
                         lambda: port.refund("setl-3", OWNER, 100),
                         lambda: port.balances([(OWNER, "130100")])):
                with pytest.raises(errors.DomainError) as err:
                    await call()
                out.append(err.value)
        finally:
            await port.close()
        return out

    for err in asyncio.run(ask()):
        # Still UNAVAILABLE: nothing was done, and what was asked is done by a resend (or the recovery
        # loop) once the wallet takes the call; but named for what happened, with the wallet's words.
        assert err.code == grpc.StatusCode.UNAVAILABLE, err
        assert err.reason == "WALLET_CALL_REFUSED", err
        assert err.metadata == {"wallet_code": code, "wallet_reason": ANSWERS[code].reason}, err
        assert "did not answer" not in err.message and f"answered {code}" in err.message, err.message


class Busy(Answering):
    """A wallet that answers as the real one does while the owner's wallet is busy (its own reason,
    UNAVAILABLE: retry), or while its own Redis does not answer."""

    answer = errors.unavailable("WALLET_BUSY", "the owner's status is being noted; retry")

    def NoteOwnerStatus(self, request: Any, context: Any) -> Any:
        return self._abort(context)

    def EndPersonWalletRelationships(self, request: Any, context: Any) -> Any:
        return self._abort(context)


@pytest.fixture(scope="module")
def busy_wallet_address() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=[("grpc.so_reuseport", 0)])
    wpb_grpc.add_WalletServiceServicer_to_server(Busy(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0)


@pytest.mark.parametrize("wallet_reason", ["WALLET_BUSY", "TRANSFER_BUSY"])
def test_the_wallet_s_own_busy_reaches_the_registry_s_callers_as_it_is(busy_wallet_address: str, wallet_reason: str):
    """The wallet answered "busy, retry": its reason goes on to whoever called the registry (still
    UNAVAILABLE, resent with the same request id), not WALLET_UNAVAILABLE "did not answer", which sends
    the operator to a wallet that is up and tells the caller not to retry soon."""
    Busy.answer = errors.unavailable(wallet_reason, "busy; retry")
    for err in asyncio.run(_ask_everything(busy_wallet_address)):
        assert (err.code, err.reason) == (grpc.StatusCode.UNAVAILABLE, wallet_reason), err
        assert err.metadata == {"wallet_reason": wallet_reason}, err
        assert "did not answer" not in err.message and wallet_reason in err.message, err.message
        # TRANSFER_BUSY comes without a wait: the caller's channel may retry it. WALLET_BUSY comes
        # after the wallet waited for its lock until the deadline was near: not retried within it.
        assert (wallet_reason in errors.WAITED_UNAVAILABLE) == (wallet_reason == "WALLET_BUSY")


def test_a_wallet_whose_store_does_not_answer_is_unavailable_with_its_reason(busy_wallet_address: str):
    Busy.answer = errors.unavailable(errors.STORE_UNAVAILABLE, errors.STORE_UNAVAILABLE_MESSAGE)
    for err in asyncio.run(_ask_everything(busy_wallet_address)):
        # The registry's own store answers: the caller hears the wallet named, with the wallet's words.
        assert (err.code, err.reason) == (grpc.StatusCode.UNAVAILABLE, "WALLET_UNAVAILABLE"), err
        assert err.metadata == {"wallet_reason": errors.STORE_UNAVAILABLE}, err
        assert "did not answer" not in err.message, err.message


async def _ask_everything(address: str) -> list[errors.DomainError]:
    port = GrpcWallet(address, deadline_s=3)
    out: list[errors.DomainError] = []
    try:
        for call in (lambda: port.debit_up_to("setl-2", OWNER, 100, cpb.CATEGORY_OUTPATIENT, "130100"),
                     lambda: port.refund("setl-3", OWNER, 100),
                     lambda: port.balances([(OWNER, "130100")]),
                     lambda: port.note_status(OWNER, "13"),
                     lambda: port.end_relationships("end-1", OWNER, "TERMINATED", "13")):
            with pytest.raises(errors.DomainError) as err:
                await call()
            out.append(err.value)
    finally:
        await port.close()
    return out
