"""Life-cycle events a province handles daily (SPEC §5b): a move to another 统筹区 of the
province, and death with the personal account paid out to the heir. Real registries and wallet over
gRPC (the `national` fixture); conservation across registries, wallet and payouts is checked with
the bench's money verdict (medaid.bench.money), which counts a payout like spending.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from medaid.bench import money
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.service import InjectedFault
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.registry.wallet_port import GrpcWallet
from medaid.wallet.v1 import wallet_pb2 as wpb
from support import RESIDENT, balance, bind, credit, enroll, new_id, reason, rid, settle_request
from test_wallet import EXISTS, FP, INVALID, Env, lots_of, refused
from test_wallet_balances import closed_port, fund, open_wallet

ACTIVE, DECEASED = cpb.PERSON_STATUS_ACTIVE, cpb.PERSON_STATUS_DECEASED


@pytest.fixture
def env(national: Any, rdb: Any) -> Env:
    return Env(national, rdb)


def conserved(env: Env) -> money.MoneyReport:
    report = money.check(env.rdb)
    assert report.conserved, report.as_dict()
    return report


def person(env: Env, pid: str, prov: str = "13") -> rpb.Person:
    return env.reg(prov).GetPerson(rpb.GetPersonRequest(id_number=pid)).person


def history(env: Env, pid: str, prov: str = "13") -> list[tuple[str, str]]:
    resp = env.reg(prov).GetPerson(rpb.GetPersonRequest(id_number=pid))
    return [(e.kind, e.detail) for e in resp.history]


def move(env: Env, pid: str, region: str, prov: str = "13", **kw: Any) -> rpb.MovePoolingRegionResponse:
    return env.reg(prov).MovePoolingRegion(rpb.MovePoolingRegionRequest(
        request_id=kw.pop("request_id", rid("move")), id_number=pid, pooling_region=region))


def death_req(pid: str, heir: str, **kw: Any) -> rpb.RecordDeathRequest:
    kw.setdefault("request_id", rid("death"))
    kw.setdefault("date_of_death", "20261121")
    return rpb.RecordDeathRequest(id_number=pid, heir_id_number=heir, heir_name="张继承", **kw)


@pytest.fixture
def no_cross_region(env: Env) -> Any:
    ctx = env.n.registries["13"].registry.ctx
    original = ctx.policy
    ctx.policy = dataclasses.replace(original, cross_region_allowed=False)
    yield
    ctx.policy = original


# ================================================================================================
# Moving 统筹区 inside the province
# ================================================================================================


def test_move_region_changes_the_region_and_keeps_bindings_where_cross_region_is_allowed(env):
    helper = env.person("13", bal=10_000)
    member = env.person("13", birth="19550101")
    bind(env.reg("13"), helper, member)
    resp = move(env, member, "130200")
    assert resp.person.pooling_region == "130200" and list(resp.ended_bindings) == []
    assert history(env, member) == [("MOVED_REGION", "130100→130200")]
    listed = env.reg("13").ListBindings(rpb.ListBindingsRequest(id_number=helper))
    assert [b.active for b in listed.as_helper] == [True]


def test_move_region_ends_bindings_where_cross_region_is_not_allowed(env, no_cross_region):
    helper = env.person("13", bal=10_000)
    member = env.person("13", birth="19550101")
    same = env.person("13", birth="19600101", region="130200")
    bind(env.reg("13"), helper, member)
    resp = move(env, helper, "130200")
    assert [(b.member_id_number, b.active, b.end_reason) for b in resp.ended_bindings] == [
        (member, False, "HELPER_MOVED_REGION")]
    # In the new region the helper may bind there.
    assert bind(env.reg("13"), helper, same).binding.active


def test_move_region_ends_wallet_relationships_where_the_mover_is_a_side(env):
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    env.fund(son, "13", mother, 30_000)
    resp = move(env, son, "130200")
    assert resp.wallet_returned_fen == 30_000
    assert env.bal("13", son) == 100_000 and env.wbal(mother) == 0
    conserved(env)


def test_move_region_recipient_side_returns_lots(env):
    son = env.person("11", bal=100_000)
    mother = env.person("13", itype=RESIDENT, birth="19550101", wallet=True)
    env.fund(son, "11", mother, 30_000)
    assert move(env, mother, "130200").wallet_returned_fen == 30_000
    assert env.bal("11", son) == 100_000 and env.wbal(mother) == 0
    conserved(env)


@pytest.mark.parametrize("mover", ["recipient", "sender"])
def test_a_transfer_after_a_move_region_begins_a_new_relationship(env, mover):
    """A 统筹区 move ends the mover's wallet relationships (SPEC §5), not their right to new ones: a
    transfer created after the move, by the same sender or a new one, is taken like any other. (One
    created in the very millisecond of the move counts as begun by it; the test clock moves on.)"""
    son = env.person("13", bal=100_000)
    daughter = env.person("13", bal=100_000, birth="19820101")
    mother = env.person("13", itype=RESIDENT, birth="19550101", wallet=True)
    env.fund(son, "13", mother, 30_000)
    assert move(env, mother if mover == "recipient" else son, "130200").wallet_returned_fen == 30_000
    env.clock.advance(1)
    again = env.fund(son, "13", mother, 10_000)
    env.clock.advance(1)
    fresh = env.fund(daughter, "13", mother, 5_000, relation=cpb.RELATION_CHILD)
    assert (again.state, fresh.state) == (wpb.TRANSFER_STATE_COMPLETED, wpb.TRANSFER_STATE_COMPLETED)
    assert lots_of(env.wallet(mother)) == [(again.transfer_id, son, "13", 10_000, 10_000),
                                           (fresh.transfer_id, daughter, "13", 5_000, 5_000)]
    assert env.spend(mother, 12_000, place="130100").spent_fen == 12_000  # the use-place stays (decision 8)
    conserved(env)


def test_move_region_refusals_write_nothing(env):
    pid = env.person("13")
    gone = env.person("13")
    env.set_status("13", gone, cpb.PERSON_STATUS_TERMINATED)
    before = env.snap()
    refused(FP, "SAME_REGION", env.reg("13").MovePoolingRegion, rpb.MovePoolingRegionRequest(
        request_id=rid("move"), id_number=pid, pooling_region="130100"))
    refused(FP, "PERSON_NOT_INSURED", env.reg("13").MovePoolingRegion, rpb.MovePoolingRegionRequest(
        request_id=rid("move"), id_number=gone, pooling_region="130200"))
    refused(INVALID, "UNKNOWN_REGION", env.reg("13").MovePoolingRegion, rpb.MovePoolingRegionRequest(
        request_id=rid("move"), id_number=pid, pooling_region="110000"))
    assert env.snap() == before


def test_move_region_replay(env):
    pid = env.person("13")
    req_id = rid("move")
    first = move(env, pid, "130200", request_id=req_id)
    assert move(env, pid, "130200", request_id=req_id) == first
    assert [kind for kind, _ in history(env, pid)] == ["MOVED_REGION"]


# ================================================================================================
# Death
# ================================================================================================


def test_death_pays_the_balance_out_to_the_heir(env):
    pid = env.person("13", bal=12_345, wallet=False)
    heir = new_id("130102", "19850101")
    resp = env.reg("13").RecordDeath(death_req(pid, heir))
    assert resp.paid_out_fen == 12_345
    p = resp.person
    assert (p.status, p.balance_fen, p.heir_id_number, p.paid_out_fen) == (DECEASED, 0, heir, 12_345)
    assert p.heir_name == "张继承"  # the payout's heir is named (SPEC §5b)
    assert history(env, pid) == [("DECEASED", "20261121"), ("PAYOUT", f"{heir}:12345")]
    assert person(env, pid) == p
    acct = env.reg("13").GetAccount(rpb.GetAccountRequest(id_number=pid))
    assert [(e.kind, e.amount_fen, e.balance_after_fen) for e in acct.entries][0] == (
        "INHERITANCE_PAYOUT", -12_345, 0)
    report = conserved(env)
    assert report.paid_out_fen == 12_345


def test_death_ends_bindings_and_returns_wallet_lots_before_the_payout(env):
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    member = env.person("13", birth="19550101")
    helper = env.person("13", bal=5_000, birth="19700101")
    bind(env.reg("13"), son, member)
    bind(env.reg("13"), helper, son, relation=cpb.RELATION_SIBLING)
    env.fund(son, "13", mother, 30_000)
    env.spend(mother, 10_000)
    heir = new_id("130102", "19850101")
    resp = env.reg("13").RecordDeath(death_req(son, heir))
    # The unspent 20,000 came home first, then 70,000 + 20,000 went to the heir.
    assert (resp.wallet_returned_fen, resp.paid_out_fen) == (20_000, 90_000)
    assert sorted(b.end_reason for b in resp.ended_bindings) == ["HELPER_DECEASED", "MEMBER_DECEASED"]
    assert env.bal("13", son) == 0 and env.wbal(mother) == 0
    assert resp.person.status == DECEASED
    conserved(env)


def test_death_of_a_wallet_holder_returns_their_lots_to_the_senders(env):
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    env.fund(son, "13", mother, 30_000)
    waiting = env.send(son, "13", mother, 5_000)
    resp = env.reg("11").RecordDeath(death_req(mother, son))
    # The 30,000 she held and the 5,000 waiting for her went home to the son; a resident: no account to inherit.
    assert (resp.wallet_returned_fen, resp.paid_out_fen) == (35_000, 0)
    assert env.bal("13", son) == 100_000
    assert env.transfer(waiting.transfer_id).state == wpb.TRANSFER_STATE_RETURNED
    assert lots_of(env.wallet(mother)) == []
    conserved(env)


def test_death_replay_and_refusals_write_nothing(env):
    pid = env.person("13", bal=1_000, wallet=False)
    heir = new_id("130102", "19850101")
    req = death_req(pid, heir)
    first = env.reg("13").RecordDeath(req)
    assert env.reg("13").RecordDeath(req) == first
    before = env.snap()
    refused(FP, "PERSON_DECEASED", env.reg("13").RecordDeath, death_req(pid, heir))
    refused(FP, "PERSON_DECEASED", env.reg("13").UpdatePersonStatus, rpb.UpdatePersonStatusRequest(
        request_id=rid("status"), id_number=pid, status=ACTIVE))
    refused(INVALID, "USE_RECORD_DEATH", env.reg("13").UpdatePersonStatus, rpb.UpdatePersonStatusRequest(
        request_id=rid("status"), id_number=heir, status=DECEASED))
    refused(INVALID, "INVALID_HEIR", env.reg("13").RecordDeath, death_req(heir, heir))
    refused(INVALID, "INVALID_DATE", env.reg("13").RecordDeath, death_req(heir, pid, date_of_death="2026-11-21"))
    assert env.snap() == before
    # Nothing comes in after death: a credit is refused.
    with pytest.raises(grpc.RpcError):
        env.reg("13").CreditAccount(rpb.CreditAccountRequest(
            request_id=rid("credit"), id_number=pid, amount_fen=100, kind=rpb.CREDIT_KIND_MONTHLY_CONTRIBUTION,
            period="202611"))
    # The national directory knows.
    assert env.rdb.hget(f"dir:{{psn:{pid}}}", "status") == b"DECEASED"


@pytest.mark.parametrize(("date_of_death", "why"), [
    ("20261341", "INVALID_DATE"),            # month 13
    ("20260230", "INVALID_DATE"),            # 30 February
    ("20261100", "INVALID_DATE"),            # day 0
    ("２０２６１１２１", "INVALID_DATE"),    # full-width digits pass str.isdigit()
    ("2026112", "INVALID_DATE"),
    ("", "INVALID_DATE"),
    ("20261123", "DATE_IN_FUTURE"),          # tomorrow by the registry's clock (2026-11-22)
    ("20301121", "DATE_IN_FUTURE"),
    ("19000101", "DATE_BEFORE_BIRTH"),       # the id number says 1980-01-01
    ("19791231", "DATE_BEFORE_BIRTH"),
])
def test_death_date_must_be_a_day_of_the_persons_life(env, date_of_death, why):
    """An impossible date of death is refused before anything is written: no DECEASED, no payout."""
    pid = env.person("13", bal=10_000, birth="19800101", wallet=False)
    heir = new_id("130102", "19850101")
    before = env.snap()
    refused(INVALID, why, env.reg("13").RecordDeath, death_req(pid, heir, date_of_death=date_of_death))
    assert env.snap() == before
    assert (person(env, pid).status, env.bal("13", pid)) == (ACTIVE, 10_000)


@pytest.mark.parametrize("date_of_death", ["20261122", "19800101"])
def test_death_date_may_be_today_or_the_birth_date(env, date_of_death):
    pid = env.person("13", bal=10_000, birth="19800101", wallet=False)
    resp = env.reg("13").RecordDeath(death_req(pid, new_id("130102", "19850101"), date_of_death=date_of_death))
    assert (resp.person.status, resp.paid_out_fen) == (DECEASED, 10_000)
    assert history(env, pid)[0] == ("DECEASED", date_of_death)


def _entries(env: Env, pid: str, ref: str) -> list[tuple[str, int, int]]:
    acct = env.reg("13").GetAccount(rpb.GetAccountRequest(id_number=pid))
    return [(e.kind, e.amount_fen, e.balance_after_fen) for e in reversed(acct.entries) if e.ref == ref]


def test_a_reversal_after_death_pays_the_refund_to_the_heir(env):
    """SPEC §5b: the balance goes to the heirs. A settlement reversed after the payout puts its 5,000
    back on the deceased's account; it goes on to the recorded heir in the same step, once, however
    often the reversal is resent, and the books stay conserved."""
    pid = env.person("13", bal=100_000, wallet=False)
    heir = new_id("130102", "19850101")
    sid = env.reg("13").Settle(settle_request(pid, 5_000)).result.settlement_id
    death = death_req(pid, heir)
    first = env.reg("13").RecordDeath(death)
    assert first.paid_out_fen == 95_000
    rev_req = rpb.ReverseSettlementRequest(request_id=rid("rev"), settlement_id=sid)
    rev = env.reg("13").ReverseSettlement(rev_req)
    assert (rev.acct_refund_fen, rev.balance_after_fen) == (5_000, 0)
    assert _entries(env, pid, sid)[-2:] == [("REVERSE_OWN", 5_000, 5_000), ("INHERITANCE_PAYOUT", -5_000, 0)]
    p = person(env, pid)
    assert (p.status, p.balance_fen, p.heir_id_number, p.paid_out_fen) == (DECEASED, 0, heir, 100_000)
    assert conserved(env).paid_out_fen == 100_000
    # Replays pay nothing again and write nothing.
    before = env.snap()
    assert env.reg("13").ReverseSettlement(rev_req) == rev
    assert env.reg("13").RecordDeath(death) == first
    assert env.snap() == before
    assert [k for k, _, _ in _entries(env, pid, sid)].count("INHERITANCE_PAYOUT") == 1


def test_a_helper_refund_after_the_helpers_death_goes_to_the_heir(env):
    """The member's bill drew 3,000 on the helper's account; the helper dies (7,000 paid out); the
    reversal returns the 3,000 to the helper's account, and from there to the helper's heir."""
    helper = env.person("13", bal=10_000, wallet=False)
    member = env.person("13", birth="19550101", wallet=False)
    bind(env.reg("13"), helper, member)
    result = env.reg("13").Settle(settle_request(member, 3_000)).result
    assert env.bal("13", helper) == 7_000
    heir = new_id("130102", "19850101")
    assert env.reg("13").RecordDeath(death_req(helper, heir)).paid_out_fen == 7_000
    rev = env.reg("13").ReverseSettlement(rpb.ReverseSettlementRequest(
        request_id=rid("rev"), settlement_id=result.settlement_id))
    assert (rev.mulaid_refund_fen, rev.helper_balance_after_fen) == (3_000, 0)
    assert _entries(env, helper, result.settlement_id)[-2:] == [
        ("REVERSE_HELPER", 3_000, 3_000), ("INHERITANCE_PAYOUT", -3_000, 0)]
    assert (env.bal("13", helper), person(env, helper).paid_out_fen) == (0, 10_000)
    assert conserved(env).paid_out_fen == 10_000


def test_death_resent_after_a_crash_mid_flow_finishes_once(env):
    """The registry dies after writing DECEASED, before the payout (in-process fault); the resend with the
    same request id finishes: lots home, payout once."""
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    env.fund(son, "13", mother, 30_000)
    registry = env.n.registries["13"].registry

    class Crash(Exception):
        pass

    def hook(point: str) -> None:
        if point == "death.after_status":
            raise Crash(point)

    registry.fault_hook = hook
    req = death_req(son, new_id("130102", "19850101"))
    try:
        with pytest.raises(grpc.RpcError):
            env.reg("13").RecordDeath(req)
    finally:
        registry.fault_hook = None
    assert person(env, son).status == DECEASED and env.bal("13", son) == 70_000
    resp = env.reg("13").RecordDeath(req)
    assert (resp.wallet_returned_fen, resp.paid_out_fen) == (30_000, 100_000)
    assert env.reg("13").RecordDeath(req) == resp
    payouts = [e for e in env.reg("13").GetAccount(rpb.GetAccountRequest(id_number=son)).entries
               if e.kind == "INHERITANCE_PAYOUT"]
    assert [e.amount_fen for e in payouts] == [-100_000]
    conserved(env)


@pytest.mark.parametrize("moved_to", ["99", "00", "10", "20", "72"])
def test_a_move_to_a_province_code_that_does_not_exist_is_refused_and_writes_nothing(env, moved_to):
    """SPEC §7: an unknown code is bad input. A province the national division codes (GB/T 2260) do not
    have is no place to move to: refused before anything is written, the person still ACTIVE here."""
    pid = env.person("13", bal=5_000)
    before = env.snap()
    refused(INVALID, "INVALID_PROVINCE", env.reg("13").UpdatePersonStatus, rpb.UpdatePersonStatusRequest(
        request_id=rid("status"), id_number=pid, status=cpb.PERSON_STATUS_TERMINATED, moved_to_province=moved_to))
    assert env.snap() == before
    assert (person(env, pid).status, person(env, pid).moved_to_province) == (ACTIVE, "")


def test_a_late_suspension_of_a_person_who_moved_province_is_refused_and_writes_nothing(env):
    """SPEC §5b: moving province TERMINATES the person here with the new province noted; a suspension
    (ACTIVE ↔ SUSPENDED) reported after it, out of order, finds no insurance here to suspend. It is
    refused and writes nothing: the move stays recorded and the directory still says where they went."""
    pid = env.person("13", bal=5_000)
    env.set_status("13", pid, cpb.PERSON_STATUS_TERMINATED, moved_to="11")
    directory = env.rdb.hgetall(f"dir:{{psn:{pid}}}")
    before = env.snap()
    refused(FP, "PERSON_NOT_INSURED", env.reg("13").UpdatePersonStatus, rpb.UpdatePersonStatusRequest(
        request_id=rid("status"), id_number=pid, status=cpb.PERSON_STATUS_SUSPENDED))
    assert env.snap() == before
    p = person(env, pid)
    assert (p.status, p.moved_to_province) == (cpb.PERSON_STATUS_TERMINATED, "11")
    assert env.rdb.hgetall(f"dir:{{psn:{pid}}}") == directory
    # Enrolled again here (ACTIVE), the person may be suspended as anyone else.
    env.set_status("13", pid, ACTIVE)
    assert env.set_status("13", pid, cpb.PERSON_STATUS_SUSPENDED).person.status == cpb.PERSON_STATUS_SUSPENDED


def test_status_changes_are_in_the_history(env):
    pid = env.person("13")
    env.set_status("13", pid, cpb.PERSON_STATUS_SUSPENDED)
    env.set_status("13", pid, ACTIVE)
    env.set_status("13", pid, cpb.PERSON_STATUS_TERMINATED, moved_to="44")
    assert history(env, pid) == [
        ("STATUS", "SUSPENDED"), ("STATUS", "ACTIVE"), ("STATUS", "TERMINATED→44")]


def test_a_termination_left_half_done_by_a_dead_wallet_is_finished_by_recovery(national, rdb, loop_thread):
    """SPEC §7: no half-done state outlives recovery. The status is written, the wallet does not answer:
    the request fails UNAVAILABLE, and the recovery loop ends the wallet relationships (the quota goes
    home) without any resend; a resend afterwards answers without doing anything twice."""
    hb = national.reg("13")
    son = enroll(hb)
    mother = enroll(national.reg("11"), itype=RESIDENT, birth="19550101", region="110000", division="110105")
    credit(hb, son, 100_000)
    open_wallet(national, mother, "11", "110000")
    fund(national, son, "13", mother, 30_000)
    running = national.registries["13"]
    reg = running.registry
    req = rpb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=son, status=cpb.PERSON_STATUS_TERMINATED)
    _unavailable_with_the_wallet_down(reg, loop_thread, lambda: hb.UpdatePersonStatus(req))
    assert hb.GetPerson(rpb.GetPersonRequest(id_number=son)).person.status == cpb.PERSON_STATUS_TERMINATED
    assert balance(hb, son) == 70_000  # the quota is still out there
    running.clock.advance(60_000)
    counts = loop_thread.run(reg.recover())
    assert counts.lifecycle == 1
    assert balance(hb, son) == 100_000  # home, without a resend
    assert not rdb.zcard(reg.k.open_settlements())
    again = hb.UpdatePersonStatus(req)
    assert again.person.status == cpb.PERSON_STATUS_TERMINATED and balance(hb, son) == 100_000


async def _dead_wallet() -> GrpcWallet:
    """A wallet port to an address nobody listens on: every call is UNAVAILABLE."""
    return GrpcWallet(f"127.0.0.1:{closed_port()}", deadline_s=1.0)


def _unavailable_with_the_wallet_down(reg: Any, loop_thread: Any, call: Callable[[], Any]) -> None:
    """`call` is written but its wallet step does not get through: it is answered UNAVAILABLE, and
    registry `reg` has its wallet back afterwards."""
    live, reg.wallet = reg.wallet, loop_thread.run(_dead_wallet())
    try:
        with pytest.raises(grpc.RpcError) as ei:
            call()
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        reg.wallet = live


def test_recovery_drops_a_life_cycle_entry_whose_event_was_never_written(national, rdb, loop_thread):
    """A request that wrote its recovery entry and stopped before the status: the loop finds no event
    of that request in the person's history and drops the entry, ending nothing."""
    hb = national.reg("13")
    helper, member = enroll(hb), enroll(hb)
    bind(hb, helper, member, cpb.RELATION_CHILD)
    running = national.registries["13"]
    entry = f"E|{helper}|status|never-written|TERMINATED>"
    rdb.zadd(running.registry.k.open_settlements(), {entry: 0})
    running.clock.advance(60_000)
    assert loop_thread.run(running.registry.recover()).lifecycle == 1
    assert not rdb.zscore(running.registry.k.open_settlements(), entry)
    assert hb.GetPerson(rpb.GetPersonRequest(id_number=helper)).person.status == cpb.PERSON_STATUS_ACTIVE
    assert [b.helper_id_number for b in hb.ListBindings(rpb.ListBindingsRequest(id_number=member)).as_member] \
        == [helper]


# ================================================================================================
# A termination reported again, and what follows a move of province
# ================================================================================================


def _directory(env: Env, pid: str) -> dict[bytes, bytes]:
    return env.rdb.hgetall(f"dir:{{psn:{pid}}}")


def test_a_termination_reported_again_keeps_the_recorded_move_and_writes_nothing(env):
    """A province's IT team replays a batch of events with new request ids: the TERMINATED of a person
    TERMINATED already, with no province or the recorded one, answers the person as they are and
    writes nothing. The move stays recorded here and in the national directory (1101/2207 routing)."""
    pid = env.person("13", bal=5_000)
    env.set_status("13", pid, cpb.PERSON_STATUS_TERMINATED, moved_to="11")
    directory, events = _directory(env, pid), history(env, pid)
    for again in ("", "11"):
        resp = env.set_status("13", pid, cpb.PERSON_STATUS_TERMINATED, moved_to=again)
        assert (resp.person.status, resp.person.moved_to_province) == (cpb.PERSON_STATUS_TERMINATED, "11")
        assert list(resp.ended_bindings) == []
        assert _directory(env, pid) == directory and history(env, pid) == events
    assert directory[b"moved_to"] == b"11"


def test_a_suspension_or_activation_reported_again_answers_the_person_and_writes_nothing(env):
    """A province's IT team replays a batch of events with new request ids: SUSPENDED of a person
    SUSPENDED already (or ACTIVE of one ACTIVE) is no change. It answers the person as they are and
    writes nothing: no second event on the history, no new status version, no tell to the national
    directory or the wallet, as the same termination again writes nothing."""
    pid = env.person("13", bal=5_000)
    for status in (cpb.PERSON_STATUS_SUSPENDED, ACTIVE):
        env.set_status("13", pid, status)
        events, directory = history(env, pid), _directory(env, pid)
        version = env.rdb.hget(f"reg:13:{{p:{pid}}}:person", "sv")
        wallet_fence = env.rdb.get(f"wal:{{w:{pid}}}:status:fence")
        resp = env.set_status("13", pid, status)
        assert resp.person.status == status and list(resp.ended_bindings) == []
        assert history(env, pid) == events and _directory(env, pid) == directory
        assert env.rdb.hget(f"reg:13:{{p:{pid}}}:person", "sv") == version
        assert env.rdb.get(f"wal:{{w:{pid}}}:status:fence") == wallet_fence
    assert history(env, pid) == [("STATUS", "SUSPENDED"), ("STATUS", "ACTIVE")]


def test_a_termination_naming_another_province_than_the_recorded_move_is_refused(env):
    """Another province named after a move is recorded is refused and writes nothing; the person and
    the directory keep the recorded move."""
    pid = env.person("13", bal=5_000)
    env.set_status("13", pid, cpb.PERSON_STATUS_TERMINATED, moved_to="11")
    directory = _directory(env, pid)
    before = env.snap()
    refused(FP, "MOVE_ALREADY_RECORDED", env.reg("13").UpdatePersonStatus, rpb.UpdatePersonStatusRequest(
        request_id=rid("status"), id_number=pid, status=cpb.PERSON_STATUS_TERMINATED, moved_to_province="44"))
    assert env.snap() == before
    assert person(env, pid).moved_to_province == "11" and _directory(env, pid) == directory


def test_a_move_learned_after_a_termination_is_recorded(env):
    """TERMINATED with no move, then the province they went to: the move is recorded (nothing is lost)."""
    pid = env.person("13")
    env.set_status("13", pid, cpb.PERSON_STATUS_TERMINATED)
    resp = env.set_status("13", pid, cpb.PERSON_STATUS_TERMINATED, moved_to="11")
    assert resp.person.moved_to_province == "11"
    assert _directory(env, pid)[b"moved_to"] == b"11"


def test_a_death_in_the_old_province_after_a_move_pays_the_balance_left_there(env):
    """The account stays in the old registry after a move of province (SPEC §5b); the death recorded
    there, after the new province recorded it, still pays that balance to the heir. Neither death
    takes the directory from the province that insured them last, and the move stays recorded."""
    pid = env.person("13", bal=5_000, wallet=False)
    env.set_status("13", pid, cpb.PERSON_STATUS_TERMINATED, moved_to="11")
    env.reg("11").EnrollPerson(rpb.EnrollPersonRequest(
        request_id=rid("enroll"), id_number=pid, name="张三", insurance_type=cpb.INSURANCE_TYPE_EMPLOYEE,
        pooling_region="110000"))
    heir = new_id("130102", "19850101")
    env.reg("11").RecordDeath(death_req(pid, heir))
    assert _directory(env, pid) == {b"province": b"11", b"status": b"DECEASED", b"moved_to": b""}
    resp = env.reg("13").RecordDeath(death_req(pid, heir))
    assert (resp.paid_out_fen, resp.person.balance_fen, resp.person.status) == (5_000, 0, DECEASED)
    assert resp.person.moved_to_province == "11"
    assert _directory(env, pid) == {b"province": b"11", b"status": b"DECEASED", b"moved_to": b""}
    conserved(env)


def test_a_death_after_a_move_keeps_the_move_in_the_directory(env):
    """Death recorded in the old province before the new one enrolled them: the directory says
    DECEASED and still where they went."""
    pid = env.person("13", bal=2_000, wallet=False)
    env.set_status("13", pid, cpb.PERSON_STATUS_TERMINATED, moved_to="11")
    resp = env.reg("13").RecordDeath(death_req(pid, new_id("130102", "19850101")))
    assert (resp.paid_out_fen, resp.person.moved_to_province) == (2_000, "11")
    assert _directory(env, pid) == {b"province": b"13", b"status": b"DECEASED", b"moved_to": b"11"}


def test_a_death_reports_a_waiting_transfer_sent_back_among_the_wallet_returns(env):
    """RecordDeath's `wallet_returned_fen` is what the wallet sent home: the lots, and a transfer the
    deceased sent that still waited for its recipient (sent back to their account before the payout,
    so the payout has it)."""
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    env.fund(son, "13", mother, 30_000)
    waiting = env.send(son, "13", mother, 5_000)
    resp = env.reg("13").RecordDeath(death_req(son, new_id("130102", "19850101")))
    assert env.transfer(waiting.transfer_id).state == wpb.TRANSFER_STATE_RETURNED
    assert (resp.wallet_returned_fen, resp.paid_out_fen) == (35_000, 100_000)
    assert resp.paid_out_fen == 100_000 - 30_000 - 5_000 + resp.wallet_returned_fen
    conserved(env)


@pytest.mark.parametrize("region", ["139900", "130000", "1301", "13010X", ""])
def test_a_move_to_a_region_the_province_does_not_have_is_refused_and_writes_nothing(env, region):
    """SPEC §7: an unknown or malformed 统筹区 code is bad input, refused before anything is written."""
    pid = env.person("13")
    before = env.snap()
    with pytest.raises(grpc.RpcError) as err:
        move(env, pid, region)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert env.snap() == before and person(env, pid).pooling_region == "130100"


def test_a_termination_resent_once_the_wallet_answers_finishes_it_before_answering(env, national, loop_thread):
    """SPEC §5b, §7: the termination is written, the wallet does not answer (UNAVAILABLE). The province
    resends the same request once it does: the resend finishes what followed (the quota home) before it
    answers, as a resend of a move or a death does; it used to answer TERMINATED at once and leave the
    quota out until a recovery pass."""
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    env.fund(son, "13", mother, 10_000)
    reg = national.registries["13"].registry
    req = rpb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=son, status=cpb.PERSON_STATUS_TERMINATED)
    _unavailable_with_the_wallet_down(reg, loop_thread, lambda: env.reg("13").UpdatePersonStatus(req))
    resp = env.reg("13").UpdatePersonStatus(req)
    assert resp.person.status == cpb.PERSON_STATUS_TERMINATED
    assert env.bal("13", son) == 100_000 and env.wbal(mother) == 0  # home with the answer, no pass needed
    assert not env.rdb.zcard(reg.k.open_settlements())
    assert env.reg("13").UpdatePersonStatus(req) == resp
    conserved(env)


def _terminate_with_the_wallet_down(env: Env, national: Any, loop_thread: Any,
                                    pid: str) -> rpb.UpdatePersonStatusRequest:
    """A termination written whose wallet step does not get through (UNAVAILABLE): what follows is
    finished late, by a resend of the same request id or by the recovery loop."""
    reg = national.registries["13"].registry
    req = rpb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=pid, status=cpb.PERSON_STATUS_TERMINATED)
    _unavailable_with_the_wallet_down(reg, loop_thread, lambda: env.reg("13").UpdatePersonStatus(req))
    return req


def _active_bindings(env: Env, pid: str) -> list[tuple[str, str]]:
    listed = env.reg("13").ListBindings(rpb.ListBindingsRequest(id_number=pid))
    return [(b.helper_id_number, b.member_id_number) for b in [*listed.as_helper, *listed.as_member] if b.active]


def test_a_termination_resent_late_ends_only_the_bindings_it_stood_for(env, national, loop_thread):
    """SPEC §3, §5b, §7: a termination whose wallet step failed is resent after the person was enrolled
    ACTIVE again and bound anew (as a helper and as a member): the resend finishes the termination as
    it stood, so the new bindings stay, and it answers every binding the termination ended, the ones
    its first attempt ended included (a replay returns the first answer)."""
    helper = env.person("13", bal=10_000)
    old_member = env.person("13", birth="19550101")
    new_member, new_helper = env.person("13", birth="19560101"), env.person("13", bal=10_000)
    bind(env.reg("13"), helper, old_member)
    req = _terminate_with_the_wallet_down(env, national, loop_thread, helper)
    env.clock.advance(60_000)
    env.set_status("13", helper, ACTIVE)
    env.clock.advance(60_000)
    bind(env.reg("13"), helper, new_member)
    bind(env.reg("13"), new_helper, helper)
    resp = env.reg("13").UpdatePersonStatus(req)
    assert [(b.helper_id_number, b.member_id_number, b.active, b.end_reason) for b in resp.ended_bindings] == [
        (helper, old_member, False, "HELPER_TERMINATED")]
    assert sorted(_active_bindings(env, helper)) == sorted([(helper, new_member), (new_helper, helper)])
    assert env.reg("13").UpdatePersonStatus(req) == resp


def test_a_termination_the_recovery_loop_finishes_late_leaves_bindings_made_since(env, national, loop_thread):
    """SPEC §7: the recovery loop finishing a termination after the person was ACTIVE again and bound
    anew ends only the bindings of the termination; its recorded answer names the one it ended."""
    helper = env.person("13", bal=10_000)
    old_member, new_member = env.person("13", birth="19550101"), env.person("13", birth="19560101")
    bind(env.reg("13"), helper, old_member)
    req = _terminate_with_the_wallet_down(env, national, loop_thread, helper)
    env.clock.advance(60_000)
    env.set_status("13", helper, ACTIVE)
    bind(env.reg("13"), helper, new_member)
    assert loop_thread.run(national.registries["13"].registry.recover()).lifecycle == 1
    assert _active_bindings(env, helper) == [(helper, new_member)]
    again = env.reg("13").UpdatePersonStatus(req)
    assert [b.member_id_number for b in again.ended_bindings] == [old_member]


def test_a_move_the_recovery_loop_finishes_late_leaves_bindings_made_back_in_the_old_region(
        env, national, loop_thread, no_cross_region):
    """SPEC §3, §5b, §7: a move whose wallet step failed is finished by the recovery loop after the person
    moved back and bound anew there: the loop ends only what the move ended, and answers it."""
    helper = env.person("13", bal=10_000)
    old_member, new_member = env.person("13", birth="19550101"), env.person("13", birth="19560101")
    bind(env.reg("13"), helper, old_member)
    reg = national.registries["13"].registry
    req = rpb.MovePoolingRegionRequest(request_id=rid("move"), id_number=helper, pooling_region="130200")
    _unavailable_with_the_wallet_down(reg, loop_thread, lambda: env.reg("13").MovePoolingRegion(req))
    env.clock.advance(60_000)
    move(env, helper, "130100")
    bind(env.reg("13"), helper, new_member)
    assert loop_thread.run(reg.recover()).lifecycle == 1
    assert _active_bindings(env, helper) == [(helper, new_member)]
    resp = env.reg("13").MovePoolingRegion(req)
    assert [(b.member_id_number, b.end_reason) for b in resp.ended_bindings] == [(old_member, "HELPER_MOVED_REGION")]


# ================================================================================================
# A resend after a later event: the first effect found on the history, nothing judged or written again
# ================================================================================================


def _cut_before_answer(env: Env, call: Any) -> None:
    """`call` runs whole and its process dies before the answer is recorded (its id left in progress)."""
    registry = env.n.registries["13"].registry
    fired: list[str] = []

    def crash(point: str) -> None:
        if point == "flow.before_answer" and not fired:
            fired.append(point)
            raise InjectedFault(point)

    registry.fault_hook = crash
    try:
        with pytest.raises(grpc.RpcError):
            call()
    finally:
        registry.fault_hook = None
    assert fired == ["flow.before_answer"]


def _changed(before: dict[bytes, Any], after: dict[bytes, Any]) -> set[bytes]:
    """The keys written between two snapshots, but for lock fence counters (`…:fence`): a step of what
    follows an event, run again, takes its lock (the wallet reading the owner's status again), which
    counts the taking and holds no state."""
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k) and not k.endswith(b":fence")}


def test_a_move_resent_after_the_person_moved_back_answers_and_moves_nothing(env):
    """SPEC §7: every request id has exactly one effect. A move done and left unanswered (its process died),
    then a move back by a new request: the resend of the first move finds its event on the history and
    answers the person as they stand; it does not move them to the first move's 统筹区 a second time,
    nor write a second MOVED_REGION. Its only writes are its answer and the end of its recovery entry;
    a further resend replays that answer byte for byte, and one with changed fields is refused."""
    pid = env.person("13", bal=5_000)
    req = rpb.MovePoolingRegionRequest(request_id=rid("move"), id_number=pid, pooling_region="130200")
    _cut_before_answer(env, lambda: env.reg("13").MovePoolingRegion(req))
    env.clock.advance(60_000)
    move(env, pid, "130100")
    events = history(env, pid)
    assert events == [("MOVED_REGION", "130100→130200"), ("MOVED_REGION", "130200→130100")]
    keys = env.n.registries["13"].registry.ctx.k
    claim = env.n.registries["13"].registry.ctx.idem.key(req.request_id).encode()
    before = env.snap()
    resp = env.reg("13").MovePoolingRegion(req)
    assert resp.person.pooling_region == "130100" and list(resp.ended_bindings) == []
    assert history(env, pid) == events and person(env, pid).pooling_region == "130100"
    assert _changed(before, env.snap()) <= {claim, keys.open_settlements().encode()}
    assert not env.rdb.zcard(keys.open_settlements())
    settled = env.snap()
    assert env.reg("13").MovePoolingRegion(req).SerializeToString() == resp.SerializeToString()
    changed = rpb.MovePoolingRegionRequest(request_id=req.request_id, id_number=pid, pooling_region="130300")
    refused(EXISTS, "IDEMPOTENCY_KEY_REUSED", env.reg("13").MovePoolingRegion, changed)
    assert env.snap() == settled and history(env, pid) == events
    conserved(env)


def test_a_move_resent_after_a_move_back_finishes_what_followed_once(env, national, loop_thread):
    """The move is written, its wallet step does not get through (UNAVAILABLE); the person moves back by
    a new request, then the first move is resent: it finishes what followed its own event (nothing is
    left: the move back ended the relationships) and answers; the person stays where the move back
    took them, with no second MOVED_REGION and no fen moved."""
    son = env.person("13", bal=100_000)
    mother = env.person("11", itype=RESIDENT, birth="19550101", wallet=True)
    env.fund(son, "13", mother, 30_000)
    reg = national.registries["13"].registry
    req = rpb.MovePoolingRegionRequest(request_id=rid("move"), id_number=son, pooling_region="130200")
    _unavailable_with_the_wallet_down(reg, loop_thread, lambda: env.reg("13").MovePoolingRegion(req))
    env.clock.advance(60_000)
    assert move(env, son, "130100").wallet_returned_fen == 30_000
    events = history(env, son)
    resp = env.reg("13").MovePoolingRegion(req)
    assert (resp.person.pooling_region, resp.wallet_returned_fen) == ("130100", 0)
    assert history(env, son) == events and person(env, son).pooling_region == "130100"
    assert env.bal("13", son) == 100_000 and env.wbal(mother) == 0
    assert not env.rdb.zcard(reg.k.open_settlements())
    assert env.reg("13").MovePoolingRegion(req).SerializeToString() == resp.SerializeToString()
    conserved(env)


def test_a_province_move_resent_after_the_person_was_active_again_answers_and_writes_nothing(env):
    """The same for a move of province (TERMINATED with the province named): resent after the person was
    enrolled ACTIVE here again, it answers and does not terminate them a second time."""
    pid = env.person("13", bal=5_000)
    req = rpb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=pid, status=cpb.PERSON_STATUS_TERMINATED,
                                        moved_to_province="11")
    _cut_before_answer(env, lambda: env.reg("13").UpdatePersonStatus(req))
    env.clock.advance(60_000)
    env.set_status("13", pid, ACTIVE)
    events = history(env, pid)
    ctx = env.n.registries["13"].registry.ctx
    before = env.snap()
    resp = env.reg("13").UpdatePersonStatus(req)
    assert (resp.person.status, resp.person.moved_to_province) == (ACTIVE, "")
    assert history(env, pid) == events
    # The answer and the entry's end; the directory told the person as they stand (as it stands already).
    assert _changed(before, env.snap()) <= {ctx.idem.key(req.request_id).encode(),
                                            ctx.k.open_settlements().encode()}
    settled = env.snap()
    assert env.reg("13").UpdatePersonStatus(req).SerializeToString() == resp.SerializeToString()
    changed = rpb.UpdatePersonStatusRequest(request_id=req.request_id, id_number=pid,
                                            status=cpb.PERSON_STATUS_TERMINATED, moved_to_province="44")
    refused(EXISTS, "IDEMPOTENCY_KEY_REUSED", env.reg("13").UpdatePersonStatus, changed)
    assert env.snap() == settled


def _province_move(pid: str) -> rpb.UpdatePersonStatusRequest:
    return rpb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=pid, status=cpb.PERSON_STATUS_TERMINATED,
                                         moved_to_province="11")


@pytest.mark.parametrize("flow", ["move", "status", "death"])
def test_a_request_sent_twice_at_once_writes_its_event_once(env, flow):
    """SPEC §7: one effect per request id, also for two copies of a request that arrive together (a client's
    retry racing its first try). Both read the person before either wrote, then wait for the person's lock
    (held here meanwhile): the second to get it finds the first's event and writes none of its own, and
    both answer as the first."""
    pid = env.person("13", bal=1_000)
    reg = env.reg("13")
    call, req, kind = {
        "move": (reg.MovePoolingRegion, rpb.MovePoolingRegionRequest(
            request_id=rid("move"), id_number=pid, pooling_region="130200"), "MOVED_REGION"),
        "status": (reg.UpdatePersonStatus, _province_move(pid), "STATUS"),
        "death": (reg.RecordDeath, death_req(pid, new_id("130102", "19850101")), "DECEASED"),
    }[flow]
    k = env.n.registries["13"].registry.ctx.k
    env.rdb.set(f"{k.person_tag(pid)}:lock", "another-holder:0", px=1_500)
    with ThreadPoolExecutor(2) as pool:
        answers = [f.result() for f in [pool.submit(call, req) for _ in range(2)]]
    assert [e for e, _ in history(env, pid)].count(kind) == 1
    assert answers[0].SerializeToString() == answers[1].SerializeToString() == call(req).SerializeToString()
    conserved(env)


def _at_once(env: Env, pid: str, calls: list[Any]) -> list[Any]:
    """Each call's answer, or the RpcError it raised: the calls sent together while the person's lock is held
    (1.5 s), so that each reads the person before any of them writes, then waits for the lock."""
    k = env.n.registries["13"].registry.ctx.k
    env.rdb.set(f"{k.person_tag(pid)}:lock", "another-holder:0", px=1_500)
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
    answers: list[Any] = []
    for future in futures:
        try:
            answers.append(future.result())
        except grpc.RpcError as exc:
            answers.append(exc)
    return answers


def _one_refused(env: Env, answers: list[Any], why: str) -> int:
    """The index of the one refused answer (FAILED_PRECONDITION `why`); the other answered."""
    errs = [i for i, a in enumerate(answers) if isinstance(a, grpc.RpcError)]
    assert len(errs) == 1, answers
    exc = answers[errs[0]]
    assert (exc.code(), reason(exc)) == (FP, why), exc.details()
    return errs[0]


def _left_free(env: Env, request_id: str) -> None:
    """The refused request's id holds no claim and the recovery index no entry: nothing was left to finish."""
    ctx = env.n.registries["13"].registry.ctx
    assert not env.rdb.exists(ctx.idem.key(request_id))
    assert not env.rdb.zcard(ctx.k.open_settlements())


def test_two_moves_to_one_region_at_once_move_the_person_once(env):
    """Two requests (different ids) moving one person to one 统筹区 together: both read the person in the old
    region before either wrote. The judgement is made again on the person as the lock finds them, so the
    second is refused SAME_REGION as it would be one after the other: one MOVED_REGION, and the refused id
    is free (a corrected resend under it is judged afresh)."""
    pid = env.person("13", bal=1_000)
    reg = env.reg("13")
    reqs = [rpb.MovePoolingRegionRequest(request_id=rid("move"), id_number=pid, pooling_region="130200")
            for _ in range(2)]
    answers = _at_once(env, pid, [lambda r=r: reg.MovePoolingRegion(r) for r in reqs])
    lost = reqs[_one_refused(env, answers, "SAME_REGION")]
    assert history(env, pid) == [("MOVED_REGION", "130100→130200")]
    _left_free(env, lost.request_id)
    again = rpb.MovePoolingRegionRequest(request_id=lost.request_id, id_number=pid, pooling_region="130300")
    assert reg.MovePoolingRegion(again).person.pooling_region == "130300"
    assert history(env, pid) == [("MOVED_REGION", "130100→130200"), ("MOVED_REGION", "130200→130300")]
    conserved(env)


def test_two_province_moves_at_once_record_one_move(env):
    """Two terminations (different request ids) naming different provinces, sent together, both read the
    person ACTIVE. Judged again under the lock, the second is refused MOVE_ALREADY_RECORDED, as it is when
    sent after the first: one STATUS event, the first's province kept, the refused id free."""
    pid = env.person("13", bal=1_000)
    reg = env.reg("13")
    reqs = [rpb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=pid, status=cpb.PERSON_STATUS_TERMINATED,
                                          moved_to_province=prov) for prov in ("11", "44")]
    answers = _at_once(env, pid, [lambda r=r: reg.UpdatePersonStatus(r) for r in reqs])
    lost = _one_refused(env, answers, "MOVE_ALREADY_RECORDED")
    won = reqs[1 - lost].moved_to_province
    assert history(env, pid) == [("STATUS", f"TERMINATED→{won}")]
    assert person(env, pid).moved_to_province == won
    _left_free(env, reqs[lost].request_id)
    again = rpb.UpdatePersonStatusRequest(request_id=reqs[lost].request_id, id_number=pid,
                                          status=cpb.PERSON_STATUS_ACTIVE)
    assert reg.UpdatePersonStatus(again).person.status == ACTIVE
    conserved(env)


def test_the_same_termination_twice_at_once_is_written_once(env):
    """Two terminations (different request ids) naming the same province, sent together: the second, judged
    under the lock, is the same termination again and answers the person as they are, writing nothing."""
    pid = env.person("13", bal=1_000)
    reg = env.reg("13")
    reqs = [_province_move(pid) for _ in range(2)]
    answers = _at_once(env, pid, [lambda r=r: reg.UpdatePersonStatus(r) for r in reqs])
    assert all(isinstance(a, rpb.UpdatePersonStatusResponse) for a in answers), answers
    assert history(env, pid) == [("STATUS", "TERMINATED→11")]
    assert not env.rdb.zcard(env.n.registries["13"].registry.ctx.k.open_settlements())
    conserved(env)


def test_two_deaths_at_once_record_one_death_and_one_heir(env):
    """Two RecordDeath (different request ids, different heirs) sent together both read the person alive.
    Judged again under the lock, the second is refused PERSON_DECEASED, as it is when sent after the first:
    one DECEASED event, the first's heir kept and paid once, and the refused id free (a resend under it is
    judged afresh, not answered as in progress)."""
    pid = env.person("13", bal=12_345)
    reg = env.reg("13")
    reqs = [death_req(pid, new_id("130102", "19850101")) for _ in range(2)]
    answers = _at_once(env, pid, [lambda r=r: reg.RecordDeath(r) for r in reqs])
    lost = _one_refused(env, answers, "PERSON_DECEASED")
    heir = reqs[1 - lost].heir_id_number
    assert history(env, pid) == [("DECEASED", "20261121"), ("PAYOUT", f"{heir}:12345")]
    assert person(env, pid).heir_id_number == heir
    _left_free(env, reqs[lost].request_id)
    again = death_req(pid, new_id("130102", "19850101"), request_id=reqs[lost].request_id)
    refused(FP, "PERSON_DECEASED", reg.RecordDeath, again)
    conserved(env)


@pytest.mark.parametrize("flow", ["status", "move"])
def test_a_change_racing_a_death_never_outlives_it(env, flow):
    """A termination (or a move) and a death of one person sent together, in either order under the lock:
    the person ends DECEASED with one DECEASED event, and the other change is either written before the death
    or refused (PERSON_DECEASED, PERSON_NOT_INSURED) after it, never written over it."""
    pid = env.person("13", bal=1_000)
    reg = env.reg("13")
    other, kind, why = {
        "status": (lambda: reg.UpdatePersonStatus(_province_move(pid)), "STATUS", "PERSON_DECEASED"),
        "move": (lambda: move(env, pid, "130200"), "MOVED_REGION", "PERSON_NOT_INSURED"),
    }[flow]
    death = death_req(pid, new_id("130102", "19850101"))
    changed, died = _at_once(env, pid, [other, lambda: reg.RecordDeath(death)])
    assert isinstance(died, rpb.RecordDeathResponse)
    kinds = [k for k, _ in history(env, pid)]
    assert person(env, pid).status == DECEASED and kinds.count("DECEASED") == 1
    if isinstance(changed, grpc.RpcError):
        assert (changed.code(), reason(changed)) == (FP, why) and kind not in kinds
    else:
        assert kinds.index(kind) < kinds.index("DECEASED")
    assert not env.rdb.zcard(env.n.registries["13"].registry.ctx.k.open_settlements())
    conserved(env)


# ================================================================================================
# Events that arrive out of order (a dated event: `occurred_at_unix_ms`)
# ================================================================================================

HOUR = 3_600_000


def dated_status(env: Env, pid: str, status: int, at: int, moved_to: str = "") -> rpb.UpdatePersonStatusResponse:
    return env.reg("13").UpdatePersonStatus(rpb.UpdatePersonStatusRequest(
        request_id=rid("status"), id_number=pid, status=status, moved_to_province=moved_to, occurred_at_unix_ms=at))


def dated_move(env: Env, pid: str, region: str, at: int) -> rpb.MovePoolingRegionResponse:
    return env.reg("13").MovePoolingRegion(rpb.MovePoolingRegionRequest(
        request_id=rid("move"), id_number=pid, pooling_region=region, occurred_at_unix_ms=at))


def test_a_suspension_dated_before_a_resumption_already_taken_is_refused_and_writes_nothing(env):
    """The province sends SUSPENDED (t1) and ACTIVE (t3); the suspension is lost and resent after the
    resumption was taken (a new request id, its date kept). Taken as it arrives, it would leave an
    insured person unable to settle. Dated before the newest event taken, it is refused
    EVENT_OUT_OF_ORDER and writes nothing: the person stays ACTIVE, the refusal names the newest date."""
    pid = env.person("13", bal=5_000)
    t = env.clock.now_ms() - 10 * HOUR
    dated_status(env, pid, cpb.PERSON_STATUS_SUSPENDED, t + 2 * HOUR)
    dated_status(env, pid, ACTIVE, t + 3 * HOUR)
    events, before = history(env, pid), env.snap()
    err = refused(FP, "EVENT_OUT_OF_ORDER", env.reg("13").UpdatePersonStatus, rpb.UpdatePersonStatusRequest(
        request_id=rid("status"), id_number=pid, status=cpb.PERSON_STATUS_SUSPENDED, occurred_at_unix_ms=t + HOUR))
    assert str(t + 3 * HOUR) in err.details()
    assert env.snap() == before and history(env, pid) == events
    assert person(env, pid).status == ACTIVE


def test_a_resumption_that_overtakes_its_suspension_keeps_the_person_active(env):
    """ACTIVE (t2) arrives before SUSPENDED (t1) for a person who is ACTIVE: the resumption is no change,
    yet its date is kept, so the suspension that arrives after it is refused (EVENT_OUT_OF_ORDER) and
    the person stays ACTIVE, with nothing on the history."""
    pid = env.person("13")
    t = env.clock.now_ms() - 10 * HOUR
    assert dated_status(env, pid, ACTIVE, t + 2 * HOUR).person.status == ACTIVE
    refused(FP, "EVENT_OUT_OF_ORDER", env.reg("13").UpdatePersonStatus, rpb.UpdatePersonStatusRequest(
        request_id=rid("status"), id_number=pid, status=cpb.PERSON_STATUS_SUSPENDED, occurred_at_unix_ms=t + HOUR))
    assert person(env, pid).status == ACTIVE and history(env, pid) == []


def test_moves_and_status_changes_share_one_order(env):
    """A move dated before the newest move or status change taken is refused, as a status change dated
    before a move is; events dated in order, or at the same time, are taken as they arrive."""
    pid = env.person("13")
    t = env.clock.now_ms() - 10 * HOUR
    dated_move(env, pid, "130200", t + 2 * HOUR)
    before = env.snap()
    refused(FP, "EVENT_OUT_OF_ORDER", env.reg("13").MovePoolingRegion, rpb.MovePoolingRegionRequest(
        request_id=rid("move"), id_number=pid, pooling_region="130300", occurred_at_unix_ms=t + HOUR))
    refused(FP, "EVENT_OUT_OF_ORDER", env.reg("13").UpdatePersonStatus, rpb.UpdatePersonStatusRequest(
        request_id=rid("status"), id_number=pid, status=cpb.PERSON_STATUS_SUSPENDED, occurred_at_unix_ms=t + HOUR))
    assert env.snap() == before
    suspended = dated_status(env, pid, cpb.PERSON_STATUS_SUSPENDED, t + 2 * HOUR)
    assert suspended.person.status == cpb.PERSON_STATUS_SUSPENDED
    assert dated_move(env, pid, "130300", t + 3 * HOUR).person.pooling_region == "130300"
    # Undated events are taken in the order they arrive, and leave the newest date as it is.
    assert env.set_status("13", pid, ACTIVE).person.status == ACTIVE
    refused(FP, "EVENT_OUT_OF_ORDER", env.reg("13").UpdatePersonStatus, rpb.UpdatePersonStatusRequest(
        request_id=rid("status"), id_number=pid, status=cpb.PERSON_STATUS_SUSPENDED,
        occurred_at_unix_ms=t + 2 * HOUR))
    assert history(env, pid) == [("MOVED_REGION", "130100→130200"), ("STATUS", "SUSPENDED"),
                                 ("MOVED_REGION", "130200→130300"), ("STATUS", "ACTIVE")]


@pytest.mark.parametrize("offset", [None, 6 * 60_000])
def test_an_event_time_that_is_negative_or_ahead_of_the_registry_is_refused_and_writes_nothing(env, offset):
    """SPEC §7: an event time is a unix ms time not after the registry's clock by more than 5 minutes."""
    pid = env.person("13")
    at = -1 if offset is None else env.clock.now_ms() + offset
    before = env.snap()
    refused(INVALID, "INVALID_EVENT_AT", env.reg("13").UpdatePersonStatus, rpb.UpdatePersonStatusRequest(
        request_id=rid("status"), id_number=pid, status=cpb.PERSON_STATUS_SUSPENDED, occurred_at_unix_ms=at))
    refused(INVALID, "INVALID_EVENT_AT", env.reg("13").MovePoolingRegion, rpb.MovePoolingRegionRequest(
        request_id=rid("move"), id_number=pid, pooling_region="130200", occurred_at_unix_ms=at))
    assert env.snap() == before
