"""SPEC §7, no half-done effect outlives recovery, for flows the crash matrices leave out: a process
stops part way and the recovery loop (registry) or the maintenance pass (wallet) alone — no resend —
finishes or undoes the flow, money conserved across registries and wallet (the bench's verdict); a
resend afterwards answers once and moves nothing again.

* the undo of a reversal (冲正 of a 2208) of a settlement the 医保钱包 paid, cut once begun: the
  wallet's share is taken again from the very lot that paid it, or, when that lot no longer holds it,
  what the attempt took is given back and the settlement stays reversed;
* a 统筹区 move whose wallet step failed;
* a wallet spend refund whose share goes home to a registry that did not answer;
* an ended wallet relationship cut between sending a waiting transfer back and taking the lots out;
* a wallet that followed its owner to another province, its note to that province's registry lost;
* a death cut at each of its steps (the kill -9 table resends it).
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.service import InjectedFault
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.registry.v1 import registry_pb2_grpc as rpb_grpc
from medaid.wallet.v1 import wallet_pb2 as wpb
from support import RESIDENT, bind, new_id, reason, rid
from test_lifecycle import _dead_wallet, conserved
from test_wallet import Env, lots_of, settle_bj
from test_wallet_balances import closed_port
from test_wallet_moves import enroll_again, moved_mother

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


def test_a_region_move_left_half_done_by_a_dead_wallet_is_finished_by_recovery(national, rdb, loop_thread):
    """The move is written, the wallet does not answer: the request fails UNAVAILABLE and the recovery
    loop alone ends the mover's wallet relationships (the quota goes home); a resend then answers
    without returning anything twice."""
    env = Env(national, rdb)
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    env.fund(son, "13", mother, 30_000)
    registry = national.registries["13"].registry
    req = rpb.MovePoolingRegionRequest(request_id=rid("move"), id_number=son, pooling_region="130200")
    live, registry.wallet = registry.wallet, loop_thread.run(_dead_wallet())
    try:
        with pytest.raises(grpc.RpcError) as ei:
            env.reg("13").MovePoolingRegion(req)
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        dead, registry.wallet = registry.wallet, live
        loop_thread.run(dead.close())
    assert env.bal("13", son) == 70_000  # the quota is still out there
    env.clock.advance(60_000)
    assert loop_thread.run(registry.recover()).lifecycle == 1
    assert not rdb.zcard(registry.k.open_settlements())
    assert (env.bal("13", son), env.wbal(mother)) == (100_000, 0)  # home, without a resend
    conserved(env)
    again = env.reg("13").MovePoolingRegion(req)
    assert again.person.pooling_region == "130200"
    assert (env.bal("13", son), env.wbal(mother)) == (100_000, 0)
    conserved(env)


def test_a_refunds_share_going_home_to_an_unreachable_registry_is_sent_by_maintenance(national, rdb, loop_thread):
    """A wallet spend refunded after its lot's relationship ended: that share goes home to the funding
    employee. Their registry does not answer: the refund fails UNAVAILABLE with the return recorded,
    and the wallet's maintenance pass alone credits it home; a resend answers the refund once."""
    env = Env(national, rdb)
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    env.fund(son, "13", mother, 10_000)
    spend_id = rid("spend")
    assert env.spend(mother, 4_000, request_id=spend_id).spent_fen == 4_000
    env.w.EndWalletRelationship(wpb.EndWalletRelationshipRequest(
        request_id=rid("end"), sender_id_number=son, holder_id_number=mother, requested_by_id_number=son))
    assert (env.bal("13", son), env.wbal(mother)) == (96_000, 0)
    req = wpb.RefundWalletSpendRequest(request_id=rid("ref"), spend_id=spend_id, owner_id_number=mother)
    registries = national.wallet.wallet.registries
    dead = loop_thread.run(_channel_to_nobody())
    live = registries.stub
    registries.stub = lambda province: dead[1] if province == "13" else live(province)
    try:
        with pytest.raises(grpc.RpcError) as ei:
            env.w.RefundWalletSpend(req)
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        registries.stub = live
        loop_thread.run(dead[0].close())
    assert (env.bal("13", son), env.wbal(mother)) == (96_000, 0)  # on its way home
    conserved(env)
    env.clock.advance(60_000)
    assert env.maintain().recovered >= 1
    assert (env.bal("13", son), env.wbal(mother)) == (100_000, 0)  # home, without a resend
    conserved(env)
    again = env.w.RefundWalletSpend(req)
    assert (again.refunded_fen, again.balance_after_fen) == (4_000, 0)
    assert env.bal("13", son) == 100_000
    conserved(env)


async def _channel_to_nobody() -> tuple[grpc.aio.Channel, Any]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{closed_port()}")
    return channel, rpb_grpc.RegistryServiceStub(channel)


class _Crash(Exception):
    """Stands for the wallet process dying at a named point (in-process)."""


def test_an_ended_relationship_cut_by_a_crash_sends_the_lots_home_without_a_resend(national, rdb, loop_thread):
    """EndWalletRelationship first sends back the transfer still waiting for acceptance, then the lots.
    The wallet dies between the two: its maintenance pass alone finishes both — the sender's quota does
    not stay spendable in the holder's wallet of a relationship that was ended."""
    env = Env(national, rdb)
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    env.fund(son, "13", mother, 10_000)
    env.clock.advance(60_000)
    waiting = env.send(son, "13", mother, 5_000)
    assert (env.bal("13", son), env.wbal(mother)) == (85_000, 10_000)
    wallet = national.wallet.wallet
    point = "expire.after_refund"

    def crash(reached: str) -> None:
        if reached == point:
            wallet.fault_hook = None
            raise _Crash(reached)

    wallet.fault_hook = crash
    req = wpb.EndWalletRelationshipRequest(request_id=rid("end"), sender_id_number=son, holder_id_number=mother,
                                           requested_by_id_number=son)
    try:
        with pytest.raises(grpc.RpcError):
            env.w.EndWalletRelationship(req)
    finally:
        wallet.fault_hook = None
    conserved(env)
    env.clock.advance(60_000)
    env.maintain()
    assert env.transfer(waiting.transfer_id).state == wpb.TRANSFER_STATE_RETURNED
    assert (env.bal("13", son), env.wbal(mother)) == (100_000, 0)  # both home, without a resend
    conserved(env)
    done = env.w.EndWalletRelationship(req)  # the resend answers, moving nothing again
    assert (done.returned_fen, done.transfers_returned) == (10_000 + 5_000, 1)  # the lot, the transfer
    assert (env.bal("13", son), env.wbal(mother)) == (100_000, 0)
    conserved(env)


class _NoNotes:
    """A registry stub whose NoteWallet does not get through; every other call goes to `live`."""

    def __init__(self, live: Any, dead: Any) -> None:
        self.live, self.dead = live, dead

    def __getattr__(self, name: str) -> Any:
        return getattr(self.dead if name == "NoteWallet" else self.live, name)


def test_a_wallet_that_followed_its_owner_is_noted_to_the_new_province_without_a_resend(national, rdb, loop_thread):
    """The wallet follows its owner to the province they moved to (a use-place there), and that
    province's registry does not take the note: the change answers UNAVAILABLE, the wallet is moved,
    and the maintenance pass alone tells the registry, whose waterfall then pays from the wallet."""
    env = Env(national, rdb)
    son, mother, _ = moved_mother(env)
    enroll_again(env, "62", mother, "620100")
    registries = national.wallet.wallet.registries
    dead = loop_thread.run(_channel_to_nobody())
    live = registries.stub
    registries.stub = lambda province: _NoNotes(live(province), dead[1]) if province == "62" else live(province)
    req = wpb.ChangeUsePlaceRequest(request_id=rid("up"), owner_id_number=mother, use_place_admdvs="620200")
    try:
        with pytest.raises(grpc.RpcError) as ei:
            env.w.ChangeUsePlace(req)
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        registries.stub = live
        loop_thread.run(dead[0].close())
    assert (env.wallet(mother).wallet.province, env.wallet(mother).wallet.use_place_admdvs) == ("62", "620200")
    env.fund(son, "13", mother, 6_000)
    env.clock.advance(120_000)
    env.maintain()
    paid = env.reg("62").Settle(rpb.SettleRequest(
        request_id=rid("settle"), patient_id_number=mother, amount_fen=4_000, use_account=True,
        category=cpb.CATEGORY_OUTPATIENT, institution_code="H62020000001", institution_admdvs="620200")).result
    assert (paid.wallet_pay_fen, paid.cash_pay_fen) == (4_000, 0)
    assert env.w.ChangeUsePlace(req).wallet.use_place_admdvs == "620200"  # the resend answers
    conserved(env)


@pytest.mark.parametrize("point", ["death.after_status", "death.after_wallet", "death.after_payout"])
def test_a_death_cut_by_a_crash_is_finished_by_recovery_alone(national, rdb, loop_thread, point):
    """RecordDeath stops at each of its steps: the recovery loop alone brings the lots the deceased
    sent home and pays the whole balance out to the heir, once; the resend then answers the same."""
    env = Env(national, rdb)
    son = env.person("13", bal=100_000)
    member = env.person("13", birth="19550101")
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    bind(env.reg("13"), son, member)
    env.fund(son, "13", mother, 30_000)
    heir = new_id("130102", "19850101")
    req = rpb.RecordDeathRequest(request_id=rid("death"), id_number=son, heir_id_number=heir, heir_name="张继承",
                                 date_of_death="20261121")
    registry = national.registries["13"].registry
    registry.fault_hook = CrashAt(point)
    try:
        with pytest.raises(grpc.RpcError):
            env.reg("13").RecordDeath(req)
    finally:
        registry.fault_hook = None
    conserved(env)
    env.clock.advance(60_000)
    assert loop_thread.run(registry.recover()).lifecycle == 1
    assert not rdb.zcard(registry.k.open_settlements())
    got = env.reg("13").GetPerson(rpb.GetPersonRequest(id_number=son)).person
    assert (got.status, got.balance_fen, got.paid_out_fen) == (cpb.PERSON_STATUS_DECEASED, 0, 100_000)
    assert env.wbal(mother) == 0
    listed = env.reg("13").ListBindings(rpb.ListBindingsRequest(id_number=member)).as_member
    assert [b.active for b in listed] in ([], [False])  # the binding ended
    assert conserved(env).paid_out_fen == 100_000
    resp = env.reg("13").RecordDeath(req)
    assert (resp.paid_out_fen, resp.person.balance_fen) == (100_000, 0)
    assert env.reg("13").RecordDeath(req) == resp
    payouts = [e.amount_fen for e in env.reg("13").GetAccount(rpb.GetAccountRequest(id_number=son)).entries
               if e.kind == "INHERITANCE_PAYOUT"]
    assert payouts == [-100_000]
    assert conserved(env).paid_out_fen == 100_000


def test_an_ending_whose_only_transfer_went_back_before_a_crash_answers_its_resend(national, rdb, loop_thread):
    """The relationship is one transfer waiting for acceptance. EndWalletRelationship sends it back and
    the wallet stops before the lots step: the resend finishes the ending and answers, not
    RELATIONSHIP_NOT_FOUND (there is nothing left to end by then, but this request began it); the
    maintenance pass then has nothing left to do."""
    env = Env(national, rdb)
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    waiting = env.send(son, "13", mother, 5_000)
    wallet = national.wallet.wallet
    wallet.fault_hook = CrashAt("release.after_transfers")
    req = wpb.EndWalletRelationshipRequest(request_id=rid("end"), sender_id_number=son, holder_id_number=mother,
                                           requested_by_id_number=mother)
    try:
        with pytest.raises(grpc.RpcError):
            env.w.EndWalletRelationship(req)
    finally:
        wallet.fault_hook = None
    assert env.transfer(waiting.transfer_id).state == wpb.TRANSFER_STATE_RETURNED
    assert env.bal("13", son) == 100_000
    done = env.w.EndWalletRelationship(req)
    assert (done.returned_fen, done.transfers_returned) == (5_000, 1)  # the transfer it sent home
    assert env.w.EndWalletRelationship(req) == done
    env.clock.advance(60_000)
    env.maintain()
    assert not rdb.zcard(wallet.k.returns_inflight())
    assert env.bal("13", son) == 100_000
    conserved(env)
