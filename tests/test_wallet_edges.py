"""The wallet's edges with the registries (SPEC §5, §5b): a 2208 whose wallet share was refunded
already, a resent ending, the acceptance deadline, clearing across a month boundary. Same fixtures
and people as tests/test_wallet.py ("today" is 2026-11-22 10:00 Asia/Shanghai).
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from medaid.bench import money
from medaid.common import errors
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.context import InjectedFault
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.registry.v1 import registry_pb2_grpc as rpb_grpc
from medaid.wallet.v1 import wallet_pb2 as wpb
from medaid.wallet.v1 import wallet_pb2_grpc as wpb_grpc
from support import RESIDENT, reason, rid
from test_wallet import EXISTS, INVALID, Env, at, lines_of, refused, settle_bj


@pytest.fixture
def env(national: Any, rdb: Any) -> Env:
    return Env(national, rdb)


def conserved(env: Env) -> None:
    report = money.check(env.rdb)
    assert report.conserved, report.as_dict()


def test_a_2208_whose_wallet_share_was_refunded_already_completes(env, national):
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    env.fund(son, "13", mother, 30_000)
    res = settle_bj(env, mother, 10_000)
    assert res.wallet_pay_fen == 10_000 and env.wbal(mother) == 20_000
    spends = [s.decode() for s in env.rdb.hkeys(national.wallet.wallet.k.spends(mother))]
    assert len(spends) == 1
    env.w.RefundWalletSpend(wpb.RefundWalletSpendRequest(request_id=rid("ref"), spend_id=spends[0],
                                                         owner_id_number=mother))
    assert env.wbal(mother) == 30_000
    rev = env.reg("11").ReverseSettlement(rpb.ReverseSettlementRequest(request_id=rid("2208"),
                                                                       settlement_id=res.settlement_id))
    assert rev.wallet_refund_fen == 10_000
    assert env.wbal(mother) == 30_000
    conserved(env)


class Stop:
    """A fault hook that stops the request once at `point` (as a crash would: its claim stays PENDING)."""

    def __init__(self, point: str) -> None:
        self.point = point
        self.fired = False

    def __call__(self, point: str) -> None:
        if point == self.point and not self.fired:
            self.fired = True
            raise RuntimeError(f"stopped at {point}")


def test_a_resent_ending_leaves_a_transfer_sent_after_it_began(env, national):
    """An ending stopped after sending the waiting transfer back, before taking the lots out; the son
    then sends a new transfer; the resend of the ending finishes the first attempt (the lot home)
    and leaves the new transfer waiting for its recipient."""
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    env.fund(son, "13", mother, 10_000)
    first = env.send(son, "13", mother, 5_000)
    req = wpb.EndWalletRelationshipRequest(request_id=rid("end"), sender_id_number=son, holder_id_number=mother,
                                           requested_by_id_number=son)
    stop = Stop("release.after_transfers")
    national.wallet.wallet.fault_hook = stop
    try:
        with pytest.raises(grpc.RpcError):
            env.w.EndWalletRelationship(req)
    finally:
        national.wallet.wallet.fault_hook = None
    assert stop.fired and env.transfer(first.transfer_id).state == wpb.TRANSFER_STATE_RETURNED
    env.clock.advance(1_000)
    later = env.send(son, "13", mother, 3_000)
    assert later.state == wpb.TRANSFER_STATE_PENDING_ACCEPT
    resp = env.w.EndWalletRelationship(req)
    assert resp.returned_fen == 10_000 + 5_000  # the lot, and the waiting transfer it sent back
    assert env.transfer(later.transfer_id).state == wpb.TRANSFER_STATE_PENDING_ACCEPT
    assert env.bal("13", son) == 100_000 - 3_000 and env.wbal(mother) == 0
    assert env.accept(later.transfer_id, mother).transfer.state == wpb.TRANSFER_STATE_COMPLETED
    assert env.wbal(mother) == 3_000
    conserved(env)


def test_the_maintenance_pass_ends_an_ending_as_it_stood_when_it_began(env, national):
    """The same stopped ending, finished by the wallet's maintenance pass instead of a resend, after
    a new transfer between the pair: the pass leaves that transfer too."""
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    env.fund(son, "13", mother, 10_000)
    env.send(son, "13", mother, 5_000)
    req = wpb.EndWalletRelationshipRequest(request_id=rid("end"), sender_id_number=son, holder_id_number=mother,
                                           requested_by_id_number=mother)
    national.wallet.wallet.fault_hook = Stop("release.after_transfers")
    try:
        with pytest.raises(grpc.RpcError):
            env.w.EndWalletRelationship(req)
    finally:
        national.wallet.wallet.fault_hook = None
    env.clock.advance(1_000)
    later = env.send(son, "13", mother, 3_000)
    env.maintain()
    assert env.transfer(later.transfer_id).state == wpb.TRANSFER_STATE_PENDING_ACCEPT
    assert env.bal("13", son) == 100_000 - 3_000 and env.wbal(mother) == 0
    assert env.w.EndWalletRelationship(req).returned_fen == 10_000 + 5_000  # the lot and the transfer
    assert env.accept(later.transfer_id, mother).transfer.state == wpb.TRANSFER_STATE_COMPLETED
    assert env.wbal(mother) == 3_000
    conserved(env)


def test_an_accept_whose_registry_check_crosses_the_deadline_is_refused(env, national):
    """Decision 13: from its acceptance deadline a transfer can no longer be accepted. An accept that
    began just before 06:00 and whose check of the recipient at her registry ended after it is
    judged at the moment of its write: TRANSFER_EXPIRED, the lot not made, the money home."""
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    t = env.send(son, "13", mother, 5_000)
    env.clock.set(t.expires_at_unix_ms - 500)
    wallet = national.wallet.wallet
    check = wallet._active_recipient

    async def slow_check(province: str, recipient: str) -> Any:
        person = await check(province, recipient)
        env.clock.advance(1_000)  # the registry answered after the deadline
        return person

    wallet._active_recipient = slow_check
    try:
        with pytest.raises(grpc.RpcError) as ei:
            env.accept(t.transfer_id, mother)
    finally:
        del wallet._active_recipient
    assert (ei.value.code(), reason(ei.value)) == (grpc.StatusCode.FAILED_PRECONDITION, "TRANSFER_EXPIRED")
    assert env.transfer(t.transfer_id).state == wpb.TRANSFER_STATE_RETURNED
    assert env.wbal(mother) == 0 and env.bal("13", son) == 100_000
    conserved(env)


def test_a_november_spend_reversed_in_december_clears_in_december(env):
    """SPEC §5 clearing: a month already reported never changes; a 2208 on 1 December of a 2207 of
    30 November (Asia/Shanghai) shows as a negative December line, and the two months sum to 0."""
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    env.fund(son, "13", mother, 30_000)
    env.clock.set(at(30, 23, 59, 59))
    res = settle_bj(env, mother, 7_000)
    assert res.wallet_pay_fen == 7_000
    env.clock.set(at(1, 0, 0, 1, month=12))
    rev = env.reg("11").ReverseSettlement(rpb.ReverseSettlementRequest(request_id=rid("2208"),
                                                                       settlement_id=res.settlement_id))
    assert rev.wallet_refund_fen == 7_000 and env.wbal(mother) == 30_000
    assert lines_of(env.clearing("202611")) == [("13", "11", 7_000, 1)]
    assert lines_of(env.clearing("202612")) == [("13", "11", -7_000, -1)]
    conserved(env)


def test_a_resent_ending_leaves_the_lot_of_a_transfer_sent_after_it_began(env, national):
    """As above, the new transfer accepted before the resend: its lot stays in the wallet."""
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    env.fund(son, "13", mother, 10_000)
    env.send(son, "13", mother, 5_000)
    req = wpb.EndWalletRelationshipRequest(request_id=rid("end"), sender_id_number=son, holder_id_number=mother,
                                           requested_by_id_number=son)
    national.wallet.wallet.fault_hook = Stop("release.after_transfers")
    try:
        with pytest.raises(grpc.RpcError):
            env.w.EndWalletRelationship(req)
    finally:
        national.wallet.wallet.fault_hook = None
    env.clock.advance(1_000)
    later = env.fund(son, "13", mother, 3_000)
    assert env.w.EndWalletRelationship(req).returned_fen == 10_000 + 5_000  # the lot and the transfer
    assert env.wbal(mother) == 3_000 and env.bal("13", son) == 100_000 - 3_000
    assert [(x.transfer_id, x.remaining_fen) for x in env.wallet(mother).lots] == [(later.transfer_id, 3_000)]
    conserved(env)


@pytest.mark.parametrize("finisher", ["resend", "maintenance pass"])
def test_an_ending_stopped_mid_refund_counts_the_transfer_it_sent_back(env, national, finisher):
    """An ending sends a waiting transfer back and stops after the registry refunded it, before the
    transfer is marked RETURNED. Whoever finishes that refund (the resend, or the maintenance pass
    before it), the ending's answer counts the transfer's fen home with the lot's: what the transfer
    record says went home, not whether the run that answers made the state change."""
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    env.fund(son, "13", mother, 10_000)
    waiting = env.send(son, "13", mother, 5_000)
    req = wpb.EndWalletRelationshipRequest(request_id=rid("end"), sender_id_number=son, holder_id_number=mother,
                                           requested_by_id_number=son)
    stop = Stop("expire.after_refund")
    national.wallet.wallet.fault_hook = stop
    try:
        with pytest.raises(grpc.RpcError):
            env.w.EndWalletRelationship(req)
    finally:
        national.wallet.wallet.fault_hook = None
    assert stop.fired and env.transfer(waiting.transfer_id).state == wpb.TRANSFER_STATE_RETURNING
    if finisher == "maintenance pass":
        env.clock.advance(60_000)
        env.maintain()
        assert env.transfer(waiting.transfer_id).state == wpb.TRANSFER_STATE_RETURNED
    resp = env.w.EndWalletRelationship(req)
    assert (resp.returned_fen, resp.transfers_returned) == (15_000, 1)
    assert env.transfer(waiting.transfer_id).state == wpb.TRANSFER_STATE_RETURNED
    assert env.bal("13", son) == 100_000 and env.wbal(mother) == 0
    assert env.w.EndWalletRelationship(req).returned_fen == 15_000  # answered again as it was
    conserved(env)



def test_a_transfer_that_arrives_before_22_00_is_judged_at_arrival(env, national):
    """The night window is a cut-off judged at arrival (docs/wallet-saga.md): a create that reaches
    the wallet at 21:59:59.5 and whose registry calls end after 22:00 is debited and waits for
    acceptance, dated by its arrival (created_at, deadline 06:00 the next day); its resend after
    22:00 answers it; a new create at 22:00:00 is refused and writes nothing."""
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    wallet = national.wallet.wallet
    person = wallet.registries.person

    async def slow_person(*args: Any, **kw: Any) -> Any:
        found = await person(*args, **kw)
        env.clock.set(at(22, 22, 0, 1))  # the registry answered after 22:00
        return found

    arrival = at(22, 21, 59, 59) + 500
    env.clock.set(arrival)
    req = env.xfer_req(son, "13", mother, 5_000)
    wallet.registries.person = slow_person
    try:
        t = env.w.CreateTransfer(req).transfer
    finally:
        del wallet.registries.person
    assert t.state == wpb.TRANSFER_STATE_PENDING_ACCEPT
    assert (t.created_at_unix_ms, t.expires_at_unix_ms) == (arrival, at(23, 6))
    assert env.bal("13", son) == 95_000
    assert env.w.CreateTransfer(req).transfer == t
    before = env.snap()
    with pytest.raises(grpc.RpcError) as ei:
        env.w.CreateTransfer(env.xfer_req(son, "13", mother, 1_000))
    assert (ei.value.code(), reason(ei.value)) == (grpc.StatusCode.FAILED_PRECONDITION, "OUTSIDE_TRANSFER_HOURS")
    assert env.snap() == before
    conserved(env)


@pytest.mark.parametrize("point", ["release.after_transfers", "release.after_lots"])
@pytest.mark.parametrize("finisher", ["resend", "maintenance"])
def test_a_resent_ending_answers_what_the_whole_ending_did(env, national, point, finisher):
    """An ending that sent a waiting transfer back and stopped (before or after taking the lots out)
    is answered, on its resend, with the figures of the whole ending, as had it answered the first
    time: the lot and the transfer home (returned_fen), one transfer returned; whether the resend or
    the maintenance pass finished it. A replay after that gives the same answer."""
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    env.fund(son, "13", mother, 10_000)
    waiting = env.send(son, "13", mother, 5_000)
    req = wpb.EndWalletRelationshipRequest(request_id=rid("end"), sender_id_number=son, holder_id_number=mother,
                                           requested_by_id_number=son)
    stop = Stop(point)
    national.wallet.wallet.fault_hook = stop
    try:
        with pytest.raises(grpc.RpcError):
            env.w.EndWalletRelationship(req)
    finally:
        national.wallet.wallet.fault_hook = None
    assert stop.fired and env.transfer(waiting.transfer_id).state == wpb.TRANSFER_STATE_RETURNED
    if finisher == "maintenance":
        env.clock.advance(60_000)
        env.maintain()
    resp = env.w.EndWalletRelationship(req)
    assert (resp.returned_fen, resp.transfers_returned) == (15_000, 1)
    assert env.w.EndWalletRelationship(req) == resp
    assert env.bal("13", son) == 100_000 and env.wbal(mother) == 0
    conserved(env)


def late_event(env: Env, reg: Any, pid: str, event: str) -> None:
    """`pid`'s 统筹区 move (MOVED_REGION, to 130200) or termination (anything else) is written while the
    registry cannot reach the wallet: ending their wallet relationships is left to the recovery pass."""
    async def unreachable(*args: Any, **kw: Any) -> Any:
        raise errors.unavailable("WALLET_UNAVAILABLE", "the wallet cannot be reached")

    reg.ctx.wallet.end_relationships = unreachable
    try:
        with pytest.raises(grpc.RpcError) as ei:
            if event == "MOVED_REGION":
                env.reg("13").MovePoolingRegion(rpb.MovePoolingRegionRequest(
                    request_id=rid("mv"), id_number=pid, pooling_region="130200"))
            else:
                env.set_status("13", pid, cpb.PERSON_STATUS_TERMINATED)
        assert reason(ei.value) == "WALLET_UNAVAILABLE"
    finally:
        del reg.ctx.wallet.end_relationships


@pytest.mark.parametrize("event", ["MOVED_REGION", "TERMINATED_THEN_ACTIVE"])
def test_a_late_end_leaves_a_relationship_begun_after_the_event(env, national, loop_thread, event):
    """The son's move (or termination) is written, but the wallet cannot be reached to end his wallet
    relationships; he is ACTIVE (in his new 统筹区, or again) and sends his mother a new transfer,
    which she accepts. When the registry's recovery pass ends the relationships, only what existed at
    the event goes home (SPEC §5: the relationship ends when his insurance moves or ends): the lot of
    the transfer sent afterwards is a relationship begun since, and stays in her wallet. The registry
    sends the event's time as the person's history records it (`event_at_unix_ms`)."""
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    env.fund(son, "13", mother, 10_000)
    reg = national.registries["13"].registry
    late_event(env, reg, son, event)
    if event != "MOVED_REGION":
        env.set_status("13", son, cpb.PERSON_STATUS_ACTIVE)
    env.clock.advance(60_000)
    env.fund(son, "13", mother, 5_000)
    env.clock.advance(120_000)
    loop_thread.run(reg.recover())
    assert env.bal("13", son) == 95_000  # the first lot came home
    assert env.wbal(mother) == 5_000  # the one sent after the event stays
    conserved(env)


@pytest.mark.parametrize("event", ["MOVED_REGION", "TERMINATED"])
def test_an_end_with_the_wallet_up_ends_every_relationship_of_the_person_at_once(env, event):
    """The wallet answers the event at once: his lot and his transfer still waiting go home, as they
    always did (the event's time is now: everything there began by then)."""
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    env.fund(son, "13", mother, 10_000)
    env.clock.advance(60_000)
    waiting = env.send(son, "13", mother, 5_000)
    if event == "MOVED_REGION":
        resp = env.reg("13").MovePoolingRegion(rpb.MovePoolingRegionRequest(
            request_id=rid("mv"), id_number=son, pooling_region="130200"))
        assert resp.wallet_returned_fen == 15_000
    else:
        env.set_status("13", son, cpb.PERSON_STATUS_TERMINATED)
    assert env.transfer(waiting.transfer_id).state == wpb.TRANSFER_STATE_RETURNED
    assert env.bal("13", son) == 100_000 and env.wbal(mother) == 0
    conserved(env)


def test_a_transfer_sent_before_the_event_and_accepted_after_it_goes_home_on_a_late_end(
        env, national, loop_thread):
    """His transfer was waiting at the event (with the wallet up it would have gone back then); she
    accepts it afterwards, while the end is still to come. Its relationship began when it was sent,
    before the event, so the late end sends its lot home; the one he sent after the move stays."""
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    before = env.send(son, "13", mother, 10_000)
    env.clock.advance(60_000)
    reg = national.registries["13"].registry
    late_event(env, reg, son, "MOVED_REGION")
    env.clock.advance(60_000)
    env.accept(before.transfer_id, mother)
    env.clock.advance(60_000)
    after = env.fund(son, "13", mother, 5_000)
    env.clock.advance(120_000)
    loop_thread.run(reg.recover())
    assert env.bal("13", son) == 95_000 and env.wbal(mother) == 5_000
    assert [(x.transfer_id, x.remaining_fen) for x in env.wallet(mother).lots if x.remaining_fen] == [
        (after.transfer_id, 5_000)]
    conserved(env)


def onward(env: Env, sender: str, sprov: str, recipient: str, amount: int) -> wpb.Transfer:
    req = env.xfer_req(sender, sprov, recipient, amount, relation=cpb.RELATION_SIBLING)
    req.source = wpb.TRANSFER_SOURCE_WALLET
    return env.w.CreateTransfer(req).transfer


@pytest.mark.parametrize("accepted", [True, False], ids=["accepted", "waiting"])
def test_a_late_end_of_the_funder_takes_back_what_was_passed_on_of_his_quota_before_the_event(
        env, national, loop_thread, accepted):
    """The son's quota, sent before his move, is passed on by his mother to her sister after it (the
    end still to come), then he sends her more. The late end takes back what he funded before the
    event, wherever it went (an onward lot is his by when he funded it; one still waiting goes back
    to her lot, which goes home), and leaves what he sent after it."""
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    aunt = env.person("62", itype=RESIDENT, birth="19580101", wallet=True)
    env.fund(son, "13", mother, 10_000)
    env.clock.advance(60_000)
    reg = national.registries["13"].registry
    late_event(env, reg, son, "MOVED_REGION")
    env.clock.advance(60_000)
    passed = onward(env, mother, "11", aunt, 4_000)
    if accepted:
        env.accept(passed.transfer_id, aunt)
    env.clock.advance(60_000)
    env.fund(son, "13", mother, 5_000)
    env.clock.advance(120_000)
    loop_thread.run(reg.recover())
    assert env.bal("13", son) == 95_000
    assert (env.wbal(mother), env.wbal(aunt)) == (5_000, 0)
    assert env.transfer(passed.transfer_id).state == (
        wpb.TRANSFER_STATE_COMPLETED if accepted else wpb.TRANSFER_STATE_RETURNED)
    conserved(env)


def test_a_late_end_of_the_one_who_passed_quota_on_leaves_what_she_got_after_the_event(
        env, national, loop_thread):
    """A 河北 mother holds her son's quota and passes some on to her sister before she moves 统筹区,
    more of the same quota after it (the end still to come), then, once her son has sent her more,
    some of that. The late end of her relationships sends home what she held at the event, wherever
    she passed it (held at the event, it would have gone home then), and leaves what she got after
    it: the lot in her wallet and the part of it she passed on."""
    son = env.person("13", bal=100_000)
    mother = env.person("13", itype=RESIDENT, birth="19550101", wallet=True)
    aunt = env.person("62", itype=RESIDENT, birth="19580101", wallet=True)
    env.fund(son, "13", mother, 10_000)
    env.clock.advance(60_000)
    env.accept(onward(env, mother, "13", aunt, 3_000).transfer_id, aunt)
    env.clock.advance(60_000)
    reg = national.registries["13"].registry
    late_event(env, reg, mother, "MOVED_REGION")
    env.clock.advance(60_000)
    env.accept(onward(env, mother, "13", aunt, 7_000).transfer_id, aunt)  # the rest of his first 10,000
    env.clock.advance(60_000)
    env.fund(son, "13", mother, 5_000)
    env.clock.advance(60_000)
    env.accept(onward(env, mother, "13", aunt, 4_000).transfer_id, aunt)  # of the 5,000 sent after the move
    env.clock.advance(120_000)
    loop_thread.run(reg.recover())
    assert env.bal("13", son) == 95_000
    assert (env.wbal(mother), env.wbal(aunt)) == (1_000, 4_000)
    conserved(env)


@pytest.mark.parametrize("passed_again", ["before", "waiting", "after"])
def test_an_end_of_the_one_who_passed_quota_on_reaches_it_passed_on_again(env, national, loop_thread,
                                                                          passed_again):
    """A 河北 mother passes her son's quota on to her sister, who passes some of it on to her own
    daughter. When the mother's relationships end, the quota she passed on goes home to her son
    wherever it went (SPEC §5: her relationships end; a lot passed on returns to the funding
    employee), also the part her sister passed on again: as one hop takes back a lot the mother
    passed on, two hops do. That second pass came before the mother's move (the end on time) or
    after it (the end late, the wallet down at the move): quota she had passed on by the event would
    have gone home then, before her sister could pass it on again. Still waiting for the daughter
    at the move, it goes back, and home."""
    son = env.person("13", bal=100_000)
    mother = env.person("13", itype=RESIDENT, birth="19550101", wallet=True)
    aunt = env.person("62", itype=RESIDENT, birth="19580101", wallet=True)
    cousin = env.person("11", itype=RESIDENT, birth="19850101", wallet=True)
    env.fund(son, "13", mother, 10_000)
    env.clock.advance(60_000)
    env.accept(onward(env, mother, "13", aunt, 8_000).transfer_id, aunt)
    env.clock.advance(60_000)
    reg = national.registries["13"].registry
    if passed_again in ("before", "waiting"):
        again = onward(env, aunt, "62", cousin, 6_000)
        if passed_again == "before":
            env.accept(again.transfer_id, cousin)
        env.clock.advance(60_000)
        resp = env.reg("13").MovePoolingRegion(rpb.MovePoolingRegionRequest(
            request_id=rid("mv"), id_number=mother, pooling_region="130200"))
        assert resp.wallet_returned_fen == 10_000
    else:
        late_event(env, reg, mother, "MOVED_REGION")
        env.clock.advance(60_000)
        again = onward(env, aunt, "62", cousin, 6_000)
        env.accept(again.transfer_id, cousin)
        env.clock.advance(120_000)
        loop_thread.run(reg.recover())
    assert env.bal("13", son) == 100_000
    assert (env.wbal(mother), env.wbal(aunt), env.wbal(cousin)) == (0, 0, 0)
    assert env.transfer(again.transfer_id).state == (
        wpb.TRANSFER_STATE_RETURNED if passed_again == "waiting" else wpb.TRANSFER_STATE_COMPLETED)
    conserved(env)


def test_an_end_with_an_event_time_replays_and_refuses_a_time_ahead_writing_nothing(env):
    """EndPersonWalletRelationships with the event's time: a resend with the same request id replays
    the answer; the same id with another time is another request; a time ahead of the wallet's clock
    is refused and writes nothing."""
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    env.fund(son, "13", mother, 10_000)
    event_at = env.clock.now_ms()
    env.clock.advance(60_000)
    env.fund(son, "13", mother, 5_000)
    ahead = wpb.EndPersonWalletRelationshipsRequest(request_id=rid("end"), id_number=son, reason="TERMINATED",
                                                    event_at_unix_ms=env.clock.now_ms() + 3_600_000)
    before = env.snap()
    refused(INVALID, "INVALID_EVENT_AT", env.w.EndPersonWalletRelationships, ahead)
    assert env.snap() == before
    req = wpb.EndPersonWalletRelationshipsRequest(request_id=rid("end"), id_number=son, reason="TERMINATED",
                                                  event_at_unix_ms=event_at)
    first = env.w.EndPersonWalletRelationships(req)
    assert (first.returned_as_sender_fen, first.returned_as_holder_fen) == (10_000, 0)
    assert env.w.EndPersonWalletRelationships(req) == first
    other = wpb.EndPersonWalletRelationshipsRequest()
    other.CopyFrom(req)
    other.event_at_unix_ms = event_at + 120_000
    refused(EXISTS, "IDEMPOTENCY_KEY_REUSED", env.w.EndPersonWalletRelationships, other)
    assert env.bal("13", son) == 95_000 and env.wbal(mother) == 5_000
    conserved(env)


async def life_event(port: int, pid: str, event: str) -> None:
    """`pid`'s termination, suspension or 统筹区 move (to 130200), told to their registry at `port`
    from inside the servers' loop, as another client would while a wallet request is under way."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = rpb_grpc.RegistryServiceStub(channel)
        if event == "MOVED_REGION":
            await stub.MovePoolingRegion(rpb.MovePoolingRegionRequest(request_id=rid("mv"), id_number=pid,
                                                                      pooling_region="130200"))
        else:
            await stub.UpdatePersonStatus(rpb.UpdatePersonStatusRequest(
                request_id=rid("status"), id_number=pid, status=cpb.PersonStatus.Value(f"PERSON_STATUS_{event}")))


def during_creation(national: Any, monkeypatch: Any, where: str, port: int, pid: str, event: str) -> None:
    """The event happens (the registry writes it and ends the wallet relationships) while a transfer
    is being created: once its checks have read both people ACTIVE (`after_checks`), or once it is in
    the in-flight index with the limits reserved, just before its record is written (`before_record`)."""
    wallet = national.wallet.wallet
    fired: list[bool] = []
    if where == "after_checks":
        check = wallet._recipient_at_home

        async def hooked_check(*args: Any) -> Any:
            found = await check(*args)
            if not fired:
                fired.append(True)
                await life_event(port, pid, event)
            return found

        monkeypatch.setattr(wallet, "_recipient_at_home", hooked_check)
    else:
        create = wallet.lua["xfer_create"]

        async def hooked_create(*args: Any, **kw: Any) -> Any:
            if not fired:
                fired.append(True)
                await life_event(port, pid, event)
            return await create(*args, **kw)

        monkeypatch.setitem(wallet.lua._scripts, "xfer_create", hooked_create)


@pytest.mark.parametrize("where", ["after_checks", "before_record"])
@pytest.mark.parametrize("side", ["recipient TERMINATED", "sender MOVED_REGION"])
def test_a_transfer_created_as_a_side_s_relationships_end_fails_at_once(env, national, monkeypatch, where, side):
    """SPEC §5: the relationship ends when either side's insurance ends or moves 统筹区. The mother is
    terminated (or the son moves 统筹区) while the son's transfer to her is being created: its checks
    passed before the event, and the end of the relationships, looking for transfers in flight, came
    before the transfer was recorded. The transfer is one of the relationships the event ended: it
    fails before any debit (RELATIONSHIP_ENDED, as the end would have failed it had it been
    recorded), instead of waiting until 06:00 for an accept she cannot give while holding the son's
    one pending transfer; he can send to someone else at once."""
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    who, event = side.split()
    prov, pid = ("11", mother) if who == "recipient" else ("13", son)
    during_creation(national, monkeypatch, where, national.registries[prov].port, pid, event)
    req = env.xfer_req(son, "13", mother, 5_000)
    with pytest.raises(grpc.RpcError) as ei:
        env.w.CreateTransfer(req)
    assert (ei.value.code(), reason(ei.value)) == (grpc.StatusCode.FAILED_PRECONDITION, "RELATIONSHIP_ENDED")
    monkeypatch.undo()
    assert env.transfer(req.request_id).state == wpb.TRANSFER_STATE_FAILED
    with pytest.raises(grpc.RpcError) as again:
        env.w.CreateTransfer(req)  # a resend answers the same
    assert reason(again.value) == "RELATIONSHIP_ENDED"
    assert env.bal("13", son) == 100_000 and env.wbal(mother) == 0
    aunt = env.person("13", itype=RESIDENT, birth="19600101", wallet=True)
    env.clock.advance(1_000)  # after the event: a relationship begun since (in his new 统筹区)
    assert env.send(son, "13", aunt, 1_000, relation=cpb.RELATION_SIBLING).state == \
        wpb.TRANSFER_STATE_PENDING_ACCEPT
    conserved(env)


def test_a_transfer_created_as_its_recipient_is_suspended_waits_for_her(env, national, monkeypatch):
    """A suspension pauses her insurance but ends no relationship: the transfer created as she is
    suspended waits; her accept is refused while she is SUSPENDED and taken once she is ACTIVE again."""
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    during_creation(national, monkeypatch, "after_checks", national.registries["11"].port, mother, "SUSPENDED")
    t = env.send(son, "13", mother, 5_000)
    monkeypatch.undo()
    assert t.state == wpb.TRANSFER_STATE_PENDING_ACCEPT
    with pytest.raises(grpc.RpcError) as ei:
        env.accept(t.transfer_id, mother)
    assert reason(ei.value) == "RECIPIENT_NOT_INSURED"
    env.set_status("11", mother, cpb.PERSON_STATUS_ACTIVE)
    assert env.accept(t.transfer_id, mother).transfer.state == wpb.TRANSFER_STATE_COMPLETED
    assert env.bal("13", son) == 95_000 and env.wbal(mother) == 5_000
    conserved(env)


def test_a_transfer_whose_checks_read_the_sender_as_his_termination_is_written_goes_home(
        env, national, monkeypatch):
    """SPEC §5: the son's termination ends his wallet relationships. His transfer to his mother is
    created a moment after the registry began writing the termination and read him ACTIVE just before
    the write landed: it began before the event (its checks saw him insured), so the end sends it home
    at once, instead of it waiting until 06:00 holding his one pending transfer. The event's time the
    wallet is told, as his history records it, is not earlier than the write."""
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    reg = national.registries["13"].registry
    write = reg.ctx.lua["life_event"]
    sent: list[wpb.Transfer] = []

    async def transfer_then_write(*args: Any, **kw: Any) -> Any:
        if not sent:  # the event's time is taken; the transfer reads him ACTIVE before the write lands
            env.clock.advance(1_000)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{national.wallet.port}") as channel:
                stub = wpb_grpc.WalletServiceStub(channel)
                sent.append((await stub.CreateTransfer(env.xfer_req(son, "13", mother, 5_000))).transfer)
        return await write(*args, **kw)

    monkeypatch.setitem(reg.ctx.lua._scripts, "life_event", transfer_then_write)
    env.set_status("13", son, cpb.PERSON_STATUS_TERMINATED)
    monkeypatch.undo()
    assert sent and sent[0].state == wpb.TRANSFER_STATE_PENDING_ACCEPT  # created before the write
    assert env.transfer(sent[0].transfer_id).state == wpb.TRANSFER_STATE_RETURNED
    assert env.bal("13", son) == 100_000 and env.wbal(mother) == 0
    history = env.reg("13").GetPerson(rpb.GetPersonRequest(id_number=son)).history
    assert history[-1].at_unix_ms >= sent[0].created_at_unix_ms
    conserved(env)


@pytest.mark.parametrize(("event", "finisher"), [
    ("TERMINATED", "recovery"), ("TERMINATED", "resend"), ("TERMINATED", "recovery after ACTIVE again"),
    ("DECEASED", "recovery"), ("DECEASED", "resend")])
def test_a_transfer_read_before_an_event_whose_registry_stopped_before_timing_it_goes_home(
        env, national, loop_thread, event, finisher):
    """SPEC §5: the mother's termination (or death) ends her wallet relationships. The son's transfer
    to her reads her ACTIVE just before the write lands, and her registry stops in the instant
    between the write and the time taken again once it landed. Whatever finishes the event — the
    recovery loop, or a resend of the request — times it first (not earlier than the write), so the
    end sends the transfer home at once, instead of it waiting until 06:00 for an accept she cannot
    give while holding the son's one pending transfer. Enrolled ACTIVE again before the loop runs,
    her re-enrolment times the termination first: the transfer still goes home, and the one her
    father sends her afterwards, a relationship begun since, stays."""
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    heir = env.person("11", birth="19800101")
    reg = national.registries["11"].registry
    write = reg.ctx.lua["life_event"]
    sent: list[wpb.Transfer] = []

    async def transfer_then_write(*args: Any, **kw: Any) -> Any:
        if not sent:  # the event's time is taken; the transfer reads her ACTIVE before the write lands
            env.clock.advance(1_000)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{national.wallet.port}") as channel:
                stub = wpb_grpc.WalletServiceStub(channel)
                sent.append((await stub.CreateTransfer(env.xfer_req(son, "13", mother, 5_000))).transfer)
        return await write(*args, **kw)

    def stop(point: str) -> None:
        if point == "event.before_time":
            raise InjectedFault(point)

    if event == "TERMINATED":
        req: Any = rpb.UpdatePersonStatusRequest(request_id=rid("status"), id_number=mother,
                                                 status=cpb.PERSON_STATUS_TERMINATED)
        call = env.reg("11").UpdatePersonStatus
    else:
        req = rpb.RecordDeathRequest(request_id=rid("death"), id_number=mother, date_of_death="20261122",
                                     heir_id_number=heir)
        call = env.reg("11").RecordDeath
    reg.ctx.lua._scripts["life_event"] = transfer_then_write
    reg.fault_hook = stop
    try:
        with pytest.raises(grpc.RpcError):
            call(req)
    finally:
        reg.fault_hook = None
        reg.ctx.lua._scripts["life_event"] = write
    assert sent and sent[0].state == wpb.TRANSFER_STATE_PENDING_ACCEPT  # created before the write
    later = 0
    if finisher.endswith("again"):
        env.clock.advance(1_000)
        env.set_status("11", mother, cpb.PERSON_STATUS_ACTIVE)
        env.clock.advance(1_000)
        father = env.person("11", bal=50_000, birth="19500101", wallet=True)
        env.fund(father, "11", mother, 2_000, relation=cpb.RELATION_SPOUSE)
        later = 2_000
    env.clock.advance(120_000)
    if finisher == "resend":
        call(req)
    else:
        loop_thread.run(reg.recover())
    assert env.transfer(sent[0].transfer_id).state == wpb.TRANSFER_STATE_RETURNED
    assert env.bal("13", son) == 100_000 and env.wbal(mother) == later
    history = env.reg("11").GetPerson(rpb.GetPersonRequest(id_number=mother)).history
    assert [e for e in history if e.kind != "PAYOUT"][-1].at_unix_ms >= sent[0].created_at_unix_ms
    conserved(env)


async def release_sender_lots(port: int, sender: str, event_at: int) -> None:
    """The wallet's `ReleaseSenderLots` for `sender`, sent from inside the servers' loop, as a
    registry would while a wallet request is under way."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await wpb_grpc.WalletServiceStub(channel).ReleaseSenderLots(wpb.ReleaseSenderLotsRequest(
            request_id=rid("rel"), sender_id_number=sender, reason="MOVED", event_at_unix_ms=event_at))


@pytest.mark.parametrize("where", ["after_checks", "before_record"])
def test_a_transfer_created_as_its_senders_lots_are_released_fails_at_once(env, national, monkeypatch, where):
    """SPEC §5: the son moved province; the registry asks the wallet to release the lots he sent
    (`ReleaseSenderLots`, for the event's time) while his transfer to his mother is being created:
    its checks passed before the event, and the release, looking for transfers in flight, came
    before the transfer was recorded. It is one of the relationships the release ended, as with
    `EndPersonWalletRelationships` (decision 18): it fails before any debit (RELATIONSHIP_ENDED),
    his account untouched. The release ends only what he sent: a transfer TO him afterwards, from
    his father, goes ahead."""
    son = env.person("13", bal=100_000, wallet=True)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    father = env.person("13", bal=50_000, birth="19500101", wallet=True)
    wallet = national.wallet.wallet
    event_at = env.clock.now_ms()
    fired: list[bool] = []
    target, name = (wallet, "_recipient_at_home") if where == "after_checks" else (wallet.lua._scripts, "xfer_create")
    original = getattr(target, name) if where == "after_checks" else target[name]

    async def hooked(*args: Any, **kw: Any) -> Any:
        if where == "after_checks":
            found = await original(*args, **kw)
        if not fired:
            fired.append(True)
            await release_sender_lots(national.wallet.port, son, event_at)
        return found if where == "after_checks" else await original(*args, **kw)

    if where == "after_checks":
        monkeypatch.setattr(wallet, name, hooked)
    else:
        monkeypatch.setitem(wallet.lua._scripts, name, hooked)
    req = env.xfer_req(son, "13", mother, 5_000)
    with pytest.raises(grpc.RpcError) as ei:
        env.w.CreateTransfer(req)
    assert (ei.value.code(), reason(ei.value)) == (grpc.StatusCode.FAILED_PRECONDITION, "RELATIONSHIP_ENDED")
    monkeypatch.undo()
    assert fired and env.transfer(req.request_id).state == wpb.TRANSFER_STATE_FAILED
    assert env.bal("13", son) == 100_000 and env.wbal(mother) == 0
    to_him = env.send(father, "13", son, 1_000, relation=cpb.RELATION_CHILD)
    assert to_him.state == wpb.TRANSFER_STATE_PENDING_ACCEPT
    assert env.accept(to_him.transfer_id, son).transfer.state == wpb.TRANSFER_STATE_COMPLETED
    assert env.bal("13", father) == 49_000 and env.wbal(son) == 1_000
    conserved(env)


def test_a_transfer_the_recovery_loop_records_abandoned_is_listed_on_both_sides(env, national, monkeypatch):
    """The son's transfer to his mother stops right after his limits are reserved, before its record
    is written; the maintenance pass records it FAILED (TRANSFER_ABANDONED). Both listings hold every
    transfer record (`ListOutgoingTransfers`: whatever became of them; `ListIncomingTransfers`: the
    transfers to a recipient), so the front desk sees it on her side as on his."""
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    wallet = national.wallet.wallet

    def stop(point: str) -> None:
        if point == "transfer.after_reserve":
            raise RuntimeError("the create stops here")

    monkeypatch.setattr(wallet, "fault_hook", stop)
    req = env.xfer_req(son, "13", mother, 5_000)
    with pytest.raises(grpc.RpcError):
        env.w.CreateTransfer(req)
    monkeypatch.undo()
    env.maintain()
    t = env.transfer(req.request_id)
    assert (t.state, t.failure_reason) == (wpb.TRANSFER_STATE_FAILED, "TRANSFER_ABANDONED")
    out = env.w.ListOutgoingTransfers(wpb.ListOutgoingTransfersRequest(sender_id_number=son)).transfers
    ins = env.w.ListIncomingTransfers(wpb.ListIncomingTransfersRequest(recipient_id_number=mother)).transfers
    assert [x.transfer_id for x in out] == [req.request_id]
    assert [x.transfer_id for x in ins] == [req.request_id]
    assert ins[0].created_at_unix_ms == out[0].created_at_unix_ms == t.created_at_unix_ms
    assert env.bal("13", son) == 100_000
    conserved(env)
