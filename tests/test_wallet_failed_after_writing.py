"""A wallet call that fails inside the wallet (gRPC UNKNOWN or INTERNAL, errors.OUTCOME_UNKNOWN) may have
done what was asked before it failed: the registry says so, and leaves it to a resend with the same
request id (or the recovery loop), never "nothing was done" (SPEC §7). A real wallet, real registries:
the wallet's spend is written, then the wallet fails before it answers."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from medaid.common import errors
from medaid.gateway.reasons import REASON_ZH
from support import reason, total_balances
from test_wallet_balances import (
    BJ,
    RESIDENT,
    bj_req,
    fund,
    open_wallet,
    paid,
    person,
    split,
    wallet_balance,
    wallet_total,
)


class FailsAfterSpending:
    """The wallet's SpendWallet as it runs, failing once after its spend is written and answered in its
    store (an exception the wallet does not describe: gRPC UNKNOWN, INTERNAL_ERROR)."""

    def __init__(self, spend: Any) -> None:
        self.spend = spend
        self.fired = False

    async def __call__(self, req: Any, acting: str | None = None) -> Any:
        out = await self.spend(req, acting)
        if not self.fired and not req.check_only:
            self.fired = True
            raise RuntimeError("the wallet failed after it spent")
        return out


def test_a_wallet_that_failed_after_spending_is_not_said_to_have_done_nothing(national, rdb):
    bj = national.reg("11")
    son = person(national, "13", bal=100_000)
    mother = person(national, "11", itype=RESIDENT, birth="19550101")
    open_wallet(national, mother, "11", BJ)
    fund(national, son, "13", mother, 6_000)
    before = total_balances(rdb) + wallet_total(rdb)
    wallet = national.wallet.wallet
    failing = FailsAfterSpending(wallet.spend)
    wallet.spend = failing
    req = bj_req(mother, 2_500)
    try:
        with pytest.raises(grpc.RpcError) as ei:
            bj.Settle(req)
    finally:
        del wallet.spend
    assert failing.fired
    err = ei.value
    info = errors.error_info(err)
    assert info is not None
    # Retryable (the same request id finishes it), and said to be of unknown outcome: the wallet spent.
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err
    assert reason(err) != "WALLET_CALL_REFUSED", err.details()
    assert "nothing was done" not in (err.details() or ""), err.details()
    assert "未做任何处理" not in REASON_ZH.get(reason(err), ""), reason(err)
    assert info.metadata.get("wallet_code") == "UNKNOWN", dict(info.metadata)
    assert wallet_balance(national, mother) == 3_500  # the spend stands
    # The resend finishes the settlement with that very spend: money moved once, none created or lost.
    done = bj.Settle(req).result
    assert split(done) == (0, 2_500, 0, "", 0, "", "")
    assert wallet_balance(national, mother) == 3_500
    assert total_balances(rdb) + wallet_total(rdb) + paid([done]) == before
    assert bj.Settle(req).result == done
