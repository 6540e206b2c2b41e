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
from medaid.wallet.v1 import wallet_pb2 as wpb
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


# --- 代缴 from a 医保钱包 (SPEC §4b): the premium record's time, not the wallet's write ----------------


def premium_family(national: Any) -> tuple[Any, str, str]:
    """A 甘肃 mother whose wallet holds ¥500 from her 河北 mother, and her resident child (test_premiums)."""
    from test_premiums import _wallet_family

    _, gs, mother, child, _ = _wallet_family(national)
    return gs, mother, child


def pay_premium(gs: Any, payer: str, payee: str, request_id: str) -> Any:
    from medaid.registry.v1 import premium_pb2 as ppb

    return gs.PayResidentPremium(ppb.PayResidentPremiumRequest(
        request_id=request_id, payer_id_number=payer, payee_id_number=payee, relation=cpb.RELATION_CHILD,
        year="2027", source=ppb.PREMIUM_SOURCE_WALLET)).premium


def cancel_premium(gs: Any, payee: str, request_id: str) -> Any:
    from medaid.registry.v1 import premium_pb2 as ppb

    return gs.CancelResidentPremium(ppb.CancelResidentPremiumRequest(
        request_id=request_id, payee_id_number=payee, year="2027")).premium


def listed(gs: Any, payee: str) -> Any:
    from medaid.registry.v1 import premium_pb2 as ppb

    [p] = gs.ListResidentPremiums(ppb.ListResidentPremiumsRequest(payee_id_number=payee)).premiums
    return p


PREMIUM_LINE = ("13", "62", 40_000, 1)  # 河北 quota spent in 甘肃


def test_a_wallet_premium_whose_debit_lands_after_midnight_clears_in_its_payment_month(env, national):
    """A 代缴 from the wallet made at 23:59:59.9 on 30 November whose wallet debit reaches the wallet in
    December: the province's record (paid_at, what the tax bureau is handed) and the clearing line are
    one month, November, the month the payment was made."""
    gs, mother, child = premium_family(national)
    port = national.registries["62"].registry.ctx.wallet
    debit = port.debit

    async def late_debit(*args: Any, **kw: Any) -> Any:
        env.clock.advance(200)
        return await debit(*args, **kw)

    port.debit = late_debit
    try:
        env.clock.set(LAST_TENTH)
        p = pay_premium(gs, mother, child, rid("prem"))
    finally:
        del port.debit
    assert p.state == "PAID" and month_of(p.paid_at_unix_ms) == "202611"
    assert lines_of(env.clearing("202611")) == [PREMIUM_LINE]
    assert env.clearing("202612").lines == []
    conserved(env)


def test_a_wallet_premium_finished_by_recovery_next_month_clears_in_its_payment_month(env, national, loop_thread):
    """The payment stops after the wallet's debit on 30 November; the recovery pass finishes it on
    3 December. Its record's paid_at and its clearing line are November's, as the wallet wrote it."""
    gs, mother, child = premium_family(national)
    reg = national.registries["62"].registry
    env.clock.set(LAST_TENTH)
    reg.fault_hook = Stop("premium.after_debit")
    try:
        with pytest.raises(grpc.RpcError):
            pay_premium(gs, mother, child, "prem-late")
    finally:
        reg.fault_hook = None
    env.clock.set(at(3, 10, month=12))
    loop_thread.run(reg.recover())
    p = listed(gs, child)
    assert p.state == "PAID" and month_of(p.paid_at_unix_ms) == "202611"
    assert lines_of(env.clearing("202611")) == [PREMIUM_LINE]
    assert env.clearing("202612").lines == []
    assert pay_premium(gs, mother, child, "prem-late").paid_at_unix_ms == p.paid_at_unix_ms
    conserved(env)


def test_a_wallet_premium_cancellation_finished_by_recovery_next_month_clears_in_its_month(
        env, national, loop_thread):
    """A cancellation begun on 30 November stops after the wallet's refund; the recovery pass finishes
    it on 2 December. The refund's clearing line and the record's cancelled_at are one month."""
    gs, mother, child = premium_family(national)
    reg = national.registries["62"].registry
    pay_premium(gs, mother, child, rid("prem"))
    env.clock.set(LAST_TENTH)
    reg.fault_hook = Stop("premium.after_cancel_refund")
    try:
        with pytest.raises(grpc.RpcError):
            cancel_premium(gs, child, "cancel-late")
    finally:
        reg.fault_hook = None
    env.clock.set(at(2, 10, month=12))
    loop_thread.run(reg.recover())
    p = listed(gs, child)
    assert p.state == "CANCELLED" and month_of(p.cancelled_at_unix_ms) == "202611"
    assert lines_of(env.clearing("202611")) == []  # +40000 and −40000, both November's
    assert env.clearing("202612").lines == []
    conserved(env)


def test_a_wallet_premium_cancellation_whose_refund_lands_after_midnight_clears_in_its_month(env, national):
    """A cancellation made at 23:59:59.9 on 30 November whose wallet refund reaches the wallet in
    December: cancelled_at and the refund's clearing line are both November's."""
    gs, mother, child = premium_family(national)
    pay_premium(gs, mother, child, rid("prem"))
    port = national.registries["62"].registry.ctx.wallet
    refund = port.refund

    async def late_refund(*args: Any, **kw: Any) -> Any:
        env.clock.advance(200)
        return await refund(*args, **kw)

    port.refund = late_refund
    try:
        env.clock.set(LAST_TENTH)
        p = cancel_premium(gs, child, rid("cancel"))
    finally:
        del port.refund
    assert p.state == "CANCELLED" and month_of(p.cancelled_at_unix_ms) == "202611"
    assert lines_of(env.clearing("202611")) == []
    assert env.clearing("202612").lines == []
    conserved(env)


# --- a reversal is never dated before its settlement -----------------------------------------------

FIRST_TENTH = at(1, 0, 0, 0, month=12) + 100  # 1 December 00:00:00.1, Beijing


def test_a_2208_on_a_replica_whose_clock_is_behind_is_not_dated_before_its_settlement(env, national):
    """Settled at 00:00:00.1 on 1 December; the 2208 reaches a registry replica whose clock reads
    23:59:59.9 on 30 November. The reversal is dated no earlier than the settlement it reverses:
    December, for its 3201 day and for the wallet's clearing, which nets to nothing in December and
    writes nothing into November, where no spend was."""
    _, mother = funded(env)
    env.clock.set(FIRST_TENTH)
    res = settle_bj(env, mother, 7_000)
    env.clock.set(LAST_TENTH)  # the replica's clock, 200 ms behind
    rev = env.reg("11").ReverseSettlement(rpb.ReverseSettlementRequest(request_id=rid("2208"),
                                                                       settlement_id=res.settlement_id))
    assert rev.reversed_at_unix_ms >= res.settled_at_unix_ms
    assert lookup(env, res.settlement_id).reversed_at_unix_ms == rev.reversed_at_unix_ms
    assert env.clearing("202611").lines == []
    assert lines_of(env.clearing("202612")) == []  # +7000 and −7000, both December's
    conserved(env)


def test_a_wallet_refund_dated_before_its_spend_is_counted_out_in_the_spends_month(env):
    """A registry that dates a refund before the spend it refunds (its clock behind the one that
    settled) is not refused — it would resend for ever — but the refund is counted out no earlier
    than the spend's month: no clearing line in a month where nothing was spent."""
    _, mother = funded(env)
    env.clock.set(FIRST_TENTH)
    spend = env.spend_req(mother, 7_000)
    spend.clearing_at_unix_ms = FIRST_TENTH
    env.w.SpendWallet(spend)
    got = env.w.RefundWalletSpend(wpb.RefundWalletSpendRequest(
        request_id=rid("ref"), spend_id=spend.request_id, owner_id_number=mother, clearing_at_unix_ms=LAST_TENTH))
    assert (got.refunded_fen, got.balance_after_fen) == (7_000, 30_000)
    assert env.clearing("202611").lines == []
    assert lines_of(env.clearing("202612")) == []
    conserved(env)


def test_a_wallet_premium_dropped_by_recovery_next_month_is_cancelled_in_its_payment_month(
        env, national, loop_thread, rdb):
    """A 代缴 from the wallet at 23:59:59.9 on 30 November stops after the wallet's debit; by the time
    the recovery pass takes it up on 1 December the payer has died, so the payment is dropped and the
    spend that got in is undone. The undo nets the spend out in November, the month it was counted in,
    not in December: the payment never happened, in no month."""
    gs, mother, child = premium_family(national)
    reg = national.registries["62"].registry
    env.clock.set(LAST_TENTH)
    reg.fault_hook = Stop("premium.after_debit")
    try:
        with pytest.raises(grpc.RpcError):
            pay_premium(gs, mother, child, "prem-dropped")
    finally:
        reg.fault_hook = None
    assert lines_of(env.clearing("202611")) == [PREMIUM_LINE]
    env.clock.set(FIRST_TENTH + 60_000)
    rdb.hset(reg.k.person(mother), "status", "DECEASED")  # as RecordDeath writes it, the payer's lock free
    loop_thread.run(reg.recover())
    from medaid.registry.v1 import premium_pb2 as ppb

    assert not gs.ListResidentPremiums(ppb.ListResidentPremiumsRequest(payee_id_number=child)).premiums  # dropped
    assert lines_of(env.clearing("202611")) == []
    assert env.clearing("202612").lines == []
    conserved(env)
