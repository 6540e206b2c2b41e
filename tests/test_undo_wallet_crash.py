"""SPEC §7 for the undo of a reversal (冲正 of a 2208) whose settlement the 医保钱包 paid: the registry
dies once the undo has begun, and the recovery loop alone — no resend — takes the wallet's share again
from the very lot that paid it, or, when that lot no longer holds it, gives back what the attempt took
and leaves the settlement reversed. Real registries and wallet over gRPC; money is conserved across
registries and wallet (the bench's verdict) on every path."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from medaid.registry.service import InjectedFault
from medaid.registry.v1 import registry_pb2 as rpb
from support import RESIDENT, reason, rid
from test_lifecycle import conserved
from test_wallet import Env, lots_of, settle_bj

SHARE = 4_000


class CrashAt:
    def __init__(self, point: str) -> None:
        self.point, self.fired = point, False

    def __call__(self, reached: str) -> None:
        if reached == self.point and not self.fired:
            self.fired = True
            raise InjectedFault(reached)


@pytest.fixture
def undo_cut(national: Any, rdb: Any) -> Any:
    """A 北京 resident's bill paid by her wallet from her son's lot, reversed, then a 2601 of that
    reversal cut by a crash once it began; (env, mother, lot id, settlement id, the 2601 to resend)."""
    env = Env(national, rdb)
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    lot = env.fund(son, "13", mother, 10_000).transfer_id
    paid = settle_bj(env, mother, SHARE)
    assert (paid.wallet_pay_fen, paid.cash_pay_fen) == (SHARE, 0)
    rev = rid("2208")
    env.reg("11").ReverseSettlement(rpb.ReverseSettlementRequest(request_id=rev, settlement_id=paid.settlement_id))
    assert env.wbal(mother) == 10_000
    req = rpb.UndoReversalRequest(request_id=rid("2601"), reversal_id=rev)
    registry = national.registries["11"].registry
    registry.fault_hook = CrashAt("undo.after_begin")
    try:
        with pytest.raises(grpc.RpcError) as ei:
            env.reg("11").UndoReversal(req)
        assert ei.value.code() in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
    finally:
        registry.fault_hook = None
    conserved(env)
    return env, mother, lot, paid.settlement_id, req


def _recover(env: Env, loop_thread: Any) -> Any:
    env.clock.advance(60_000)  # past the recovery grace
    registry = env.n.registries["11"].registry
    counts = loop_thread.run(registry.recover())
    assert not env.rdb.zcard(registry.k.open_settlements())
    return counts


def _state(env: Env, sid: str) -> str:
    return env.reg("11").GetSettlement(rpb.GetSettlementRequest(settlement_id=sid)).result.state


def test_a_wallet_paid_undo_cut_by_a_crash_is_restored_by_recovery_alone(undo_cut, loop_thread):
    env, mother, lot, sid, req = undo_cut
    assert _recover(env, loop_thread).restored == 1
    assert _state(env, sid) == "SETTLED"
    assert env.wbal(mother) == 10_000 - SHARE
    assert [(t, rem) for t, *_, rem in lots_of(env.wallet(mother))] == [(lot, 10_000 - SHARE)]
    conserved(env)
    # The resend finds the answer the recovery loop recorded, and takes nothing again.
    done = env.reg("11").UndoReversal(req)
    assert (done.outcome, done.wallet_pay_fen) == ("RESTORED", SHARE)
    assert env.wbal(mother) == 10_000 - SHARE
    conserved(env)


def test_a_wallet_paid_undo_cut_by_a_crash_whose_lot_was_spent_is_given_back(undo_cut, loop_thread):
    env, mother, _lot, sid, req = undo_cut
    env.spend(mother, 7_000)  # the lot that paid now holds 3,000, short of the 4,000 share
    _recover(env, loop_thread)
    assert _state(env, sid) == "REVERSED"
    assert env.wbal(mother) == 3_000
    conserved(env)
    with pytest.raises(grpc.RpcError) as ei:  # judged afresh: still short, and nothing written
        env.reg("11").UndoReversal(req)
    assert reason(ei.value) == "UNDO_SOURCE_SHORT"
    assert env.wbal(mother) == 3_000
    conserved(env)
