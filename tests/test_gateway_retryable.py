"""What the JSON gateway tells a hospital system about resending: `medaid_ext.retryable` is true for
every answer whose outcome is unknown (`errors.OUTCOME_UNKNOWN`): no answer, and a failure inside a
service (gRPC UNKNOWN / INTERNAL) that may have come after the request's first effects. A registry that
fails after writing reaches the HIS as retryable, with the Chinese text saying to resend under the same
msgid; that resend settles the bill once. Real registries, wallet, router and gateway on loopback.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from decimal import Decimal
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from medaid.gateway.service import Gateway, Settings
from medaid.wallet.v1 import wallet_pb2 as wpb
from support import balance, credit, enroll, fund_wallet, new_id
from test_helper_modes import INSTITUTION, PLACE, data_2207, envelope, gateway_url  # noqa: F401 - a fixture


class _Failed(Exception):
    """A registry step that failed with an exception nobody described (a bug, not a refusal)."""


def call(url: str, message: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(url, data=json.dumps(message).encode(), method="POST",
                                 headers={"Content-Type": "application/json;charset=utf-8"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return dict(json.loads(resp.read(), parse_float=Decimal))


def fail_once_at(point: str) -> Any:
    armed = [point]

    def hook(reached: str) -> None:
        if reached in armed:
            armed.remove(reached)
            raise _Failed(reached)

    return hook


@pytest.mark.parametrize(("point", "wallet", "why"), [
    # The atomic path (no wallet share): the settlement is written, then the registry fails with an
    # exception of its own: UNKNOWN / INTERNAL_ERROR (errors.internal), which the router passes on.
    ("settle.after_finish", 0, "INTERNAL_ERROR"),
    # The staged path (a wallet share): the own account debited, then the registry fails: the item's
    # UNKNOWN / INTERNAL_ERROR ("the settlement did not finish").
    ("settle.after_own_debit", 3_000, "INTERNAL_ERROR"),
])
def test_a_2207_the_registry_failed_after_writing_is_retryable_and_settles_once_on_resend(
        national: Any, gateway_url: str, point: str, wallet: int, why: str) -> None:  # noqa: F811
    r13, r11 = national.reg("13"), national.reg("11")
    patient = enroll(r13)
    credit(r13, patient, 2_000)
    if wallet:
        sender = enroll(r11, region="110000", division="110105", birth="19900101")
        credit(r11, sender, 50_000)
        fund_wallet(national.wallet.stub, sender, patient, wallet)
    msg = envelope("2207", INSTITUTION["13"], PLACE["13"][0], data_2207(patient, "100.00"))
    registry = national.registries["13"].registry
    registry.fault_hook = fail_once_at(point)
    try:
        first = call(gateway_url, msg)
    finally:
        registry.fault_hook = None
    assert first["infcode"] == -1, first
    ext = first["output"]["medaid_ext"]
    assert (ext["reason"], ext["retryable"]) == (why, True), first
    assert first["err_msg"].startswith(why) and "相同msgid重试" in first["err_msg"], first
    # The resend under the same msgid: settled, once.
    again = call(gateway_url, msg)
    assert again["infcode"] == 0, again
    setl = again["output"]["setlinfo"]
    paid = min(wallet, 10_000 - 2_000)
    assert (setl["acct_pay"], setl["wallet_pay"]) == (Decimal("20.00"), Decimal(paid) / 100), setl
    assert balance(r13, patient) == 0
    if wallet:
        got = national.wallet.stub.GetWallet(wpb.GetWalletRequest(owner_id_number=patient))
        assert got.wallet.balance_fen == wallet - paid
    # Resent once more: the first answer, byte for byte as stored.
    assert call(gateway_url, msg)["output"] == again["output"]


def test_the_bench_counts_a_retryable_answer_by_its_reason() -> None:
    """`make bench` counts a gateway answer as the gRPC path reports it: a failure inside a service is
    INTERNAL and a rate limit RESOURCE_EXHAUSTED though both are retryable (resend with the same msgid);
    another retryable answer is UNAVAILABLE, one that is not a refusal."""
    from medaid.bench.gateway import answer_status

    def answer(reason: str, retryable: bool) -> dict[str, Any]:
        return {"infcode": -1, "err_msg": f"{reason}: 说明",
                "output": {"medaid_ext": {"reason": reason, "retryable": retryable}}}

    assert answer_status(answer("INTERNAL_ERROR", True)) == ("INTERNAL", "INTERNAL_ERROR")
    assert answer_status(answer("DOWNSTREAM_ERROR", True)) == ("INTERNAL", "DOWNSTREAM_ERROR")
    assert answer_status(answer("RATE_LIMITED", True)) == ("RESOURCE_EXHAUSTED", "RATE_LIMITED")
    assert answer_status(answer("REGISTRY_UNAVAILABLE", True)) == ("UNAVAILABLE", "REGISTRY_UNAVAILABLE")
    assert answer_status(answer("PATIENT_BUSY", True)) == ("UNAVAILABLE", "PATIENT_BUSY")
    assert answer_status(answer("INSUFFICIENT_BALANCE", False)) == ("REFUSED", "INSUFFICIENT_BALANCE")
    assert answer_status({"infcode": 0, "output": {}}) == ("OK", "")


@pytest.mark.parametrize(("code", "why", "retryable"), [
    # The router itself failed inside (an exception it did not describe): it may have settled.
    (grpc.StatusCode.UNKNOWN, "DOWNSTREAM_ERROR", True),
    (grpc.StatusCode.INTERNAL, "DOWNSTREAM_ERROR", True),
    # No answer from the router, however gRPC says it (errors.NO_ANSWER_CODES): ROUTER_UNAVAILABLE.
    (grpc.StatusCode.UNAVAILABLE, "ROUTER_UNAVAILABLE", True),
    (grpc.StatusCode.DEADLINE_EXCEEDED, "ROUTER_UNAVAILABLE", True),
    (grpc.StatusCode.CANCELLED, "ROUTER_UNAVAILABLE", True),
    # The router answered "no" without saying why: nothing for a resend to finish.
    (grpc.StatusCode.UNIMPLEMENTED, "DOWNSTREAM_ERROR", False),
])
def test_a_router_that_answers_without_error_info(redis_server: Any, code: grpc.StatusCode, why: str,
                                                  retryable: bool) -> None:
    """A router answering `code` with no ErrorInfo (a real gRPC server on loopback that fails every call)."""

    class Failing(grpc.GenericRpcHandler):
        def service(self, details: Any) -> Any:
            async def fail(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
                await context.abort(code, "failed")
                return b""

            return grpc.unary_unary_rpc_method_handler(fail)

    async def run() -> dict[str, Any]:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((Failing(),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        client = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
        gw = Gateway(f"127.0.0.1:{port}", client, settings=Settings(deadline_s=5))
        try:
            msg = envelope("2207", INSTITUTION["13"], PLACE["13"][0], data_2207(new_id(), "100.00"))
            answer = await gw.handle(json.dumps(msg).encode(), {"Content-Type": "application/json"})
            return dict(json.loads(answer.body))
        finally:
            await gw.close()
            await client.aclose()
            await server.stop(0)

    got = asyncio.run(run())
    assert got["infcode"] == -1, got
    ext = got["output"]["medaid_ext"]
    assert (ext["reason"], ext["retryable"]) == (why, retryable), got


def test_a_2207_the_gateway_failed_on_after_the_router_settled_is_retryable(
        national: Any, gateway_url: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The router settled the bill, then the gateway failed writing its answer (a bug of its own): the
    outcome is unknown to the HIS, which must resend with the same msgid (retryable, as the Chinese text
    says), and that resend is answered with the settlement, the bill paid once."""
    from medaid.gateway import transactions

    r13 = national.reg("13")
    patient = enroll(r13)
    credit(r13, patient, 2_000)
    msg = envelope("2207", INSTITUTION["13"], PLACE["13"][0], data_2207(patient, "100.00"))
    written = transactions.setlinfo
    armed = [True]

    def fails_once(*args: Any, **kwargs: Any) -> Any:
        if armed:
            armed.clear()
            raise RuntimeError("the answer could not be written")
        return written(*args, **kwargs)

    monkeypatch.setattr(transactions, "setlinfo", fails_once)
    first = call(gateway_url, msg)
    assert first["infcode"] == -1 and first["err_msg"].startswith("INTERNAL_ERROR"), first
    assert first["output"]["medaid_ext"]["reason"] == "INTERNAL_ERROR", first
    assert first["output"]["medaid_ext"]["retryable"] is True, first
    assert balance(r13, patient) == 0  # settled before the gateway failed
    again = call(gateway_url, msg)
    assert again["infcode"] == 0, again
    assert again["output"]["setlinfo"]["acct_pay"] == Decimal("20.00")
    assert balance(r13, patient) == 0
