"""The month a wallet share clears in (SPEC §5 monthly clearing, docs/wallet-saga.md): the month, in
Asia/Shanghai, of the settlement it pays — the 2207's settlement time, a 2208's reversal time — as the
registry records it and a 3201 counts it, never the moment the wallet happens to write it. Tested at
the November/December boundary with the shared test clock. Same fixtures and people as
tests/test_wallet.py ("today" is 2026-11-22 10:00 Asia/Shanghai).
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from medaid.bench import money
from medaid.common.clock import shanghai
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import registry_pb2 as rpb
from support import RESIDENT, rid
from test_wallet import Env, at, lines_of, settle_bj
from test_wallet_edges import Stop

LAST_TENTH = at(30, 23, 59, 59) + 900  # 30 November 23:59:59.9, Beijing


@pytest.fixture
def env(national: Any, rdb: Any) -> Env:
    return Env(national, rdb)


def month_of(ms: int) -> str:
    return shanghai(ms).strftime("%Y%m")


def conserved(env: Env) -> None:
    report = money.check(env.rdb)
    assert report.conserved, report.as_dict()


def funded(env: Env) -> tuple[str, str]:
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    env.fund(son, "13", mother, 30_000)
    return son, mother


def lookup(env: Env, sid: str) -> rpb.SettlementLookup:
    return env.reg("11").GetSettlements(rpb.GetSettlementsRequest(settlement_ids=[sid])).settlements[0]


def test_a_2207_planned_before_midnight_and_debited_after_clears_in_its_settlement_month(env, national):
    """Planned at 23:59:59.9 on 30 November, the wallet's debit written just after midnight: the
    settlement (its settled_at, its 3201 day) is November's, and so is its clearing line."""
    _, mother = funded(env)
    port = national.registries["11"].registry.ctx.wallet
    debit = port.debit_up_to

    async def late_debit(*args: Any, **kw: Any) -> Any:
        env.clock.advance(200)  # the wallet call reaches the wallet in December
        return await debit(*args, **kw)

    port.debit_up_to = late_debit
    try:
        env.clock.set(LAST_TENTH)
        res = settle_bj(env, mother, 7_000)
    finally:
        del port.debit_up_to
    assert res.wallet_pay_fen == 7_000 and month_of(res.settled_at_unix_ms) == "202611"
    assert lines_of(env.clearing("202611")) == [("13", "11", 7_000, 1)]
    assert env.clearing("202612").lines == []
    conserved(env)


def test_a_2207_finished_by_recovery_days_later_clears_in_its_settlement_month(env, national, loop_thread):
    """The process stops after the own-account step on 30 November; the recovery pass finishes the
    settlement on 3 December. The wallet share clears in November, the settlement's month, not the
    month of the recovery."""
    _, mother = funded(env)
    reg = national.registries["11"].registry
    env.clock.set(LAST_TENTH)
    reg.fault_hook = Stop("settle.after_own_debit")
    req = rpb.SettleRequest(request_id=rid("2207"), patient_id_number=mother, amount_fen=7_000,
                            use_account=True, category=cpb.CATEGORY_OUTPATIENT, institution_code="H11010500001",
                            institution_admdvs="110000")
    try:
        with pytest.raises(grpc.RpcError):
            env.reg("11").Settle(req)
    finally:
        reg.fault_hook = None
    env.clock.set(at(3, 10, month=12))
    found = lookup(env, req.request_id)
    assert found.found and found.result.state == "IN_PROGRESS"
    loop_thread.run(reg.recover())
    found = lookup(env, req.request_id)
    assert found.result.state == "SETTLED" and found.result.wallet_pay_fen == 7_000
    assert month_of(found.result.settled_at_unix_ms) == "202611"
    assert lines_of(env.clearing("202611")) == [("13", "11", 7_000, 1)]
    assert env.clearing("202612").lines == []
    conserved(env)


def test_a_2208_finished_by_recovery_next_month_clears_in_its_reversal_month(env, national, loop_thread):
    """A 2208 begun on 30 November stops after the wallet's refund; the recovery pass finishes it on
    2 December. The refund's clearing line and the reversal's time (its 3201 day) are one month."""
    _, mother = funded(env)
    res = settle_bj(env, mother, 7_000)
    reg = national.registries["11"].registry
    env.clock.set(LAST_TENTH)
    reg.fault_hook = Stop("reverse.after_helper_refund")
    rev = rpb.ReverseSettlementRequest(request_id=rid("2208"), settlement_id=res.settlement_id)
    try:
        with pytest.raises(grpc.RpcError):
            env.reg("11").ReverseSettlement(rev)
    finally:
        reg.fault_hook = None
    env.clock.set(at(2, 10, month=12))
    loop_thread.run(reg.recover())
    found = lookup(env, res.settlement_id)
    assert found.result.state == "REVERSED" and found.reversal_id == rev.request_id
    month = month_of(found.reversed_at_unix_ms)
    assert month == "202611"  # the 2208 came in November
    assert lines_of(env.clearing("202611")) == []  # +7000 and −7000, both November's
    assert env.clearing("202612").lines == []
    assert env.reg("11").ReverseSettlement(rev).reversed_at_unix_ms == found.reversed_at_unix_ms
    conserved(env)
