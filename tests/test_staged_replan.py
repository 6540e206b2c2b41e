"""The staged path is short of what it planned (SPEC §4, §7): a helper's charge cannot be taken at
charge time (their status or balance changed since the plan). The rest is planned again by the same
rule (rules.helper_step) of the helpers not asked yet, and they join the OPEN record before they are
charged, so a re-drive after a crash charges each once. Real Redis and gRPC; the staged path forced."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from conftest import LoopThread
from medaid.bench import money as verdict
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.context import InjectedFault
from medaid.registry.service import Registry
from medaid.registry.v1 import registry_pb2 as pb
from support import RESIDENT, balance, bind, credit, enroll, rid, settle, settle_request
from test_family import accept, create, huabo, invite
from test_wallet_balances import fund, open_wallet

BJ = {"region": "110000", "division": "110105"}


@pytest.fixture
def staged(start_registry: Callable[..., Any]) -> Iterator[Callable[[str], Any]]:
    started: list[Any] = []

    def start(province: str) -> Any:
        running = start_registry(province)
        running.registry.atomic = False
        started.append(running)
        return running

    yield start
    for running in started:
        running.registry.fault_hook = None


def suspend_at(rdb: Any, running: Any, helper: str, point: str = "settle.after_wallet_debit") -> list[str]:
    """The helper's insurance is suspended between the plan and their charge (written as the status
    change writes it: a gRPC call would wait on this very event loop)."""
    seen: list[str] = []

    def hook(p: str) -> None:
        if p == point and not seen:
            seen.append(p)
            rdb.hset(running.registry.k.person(helper), "status", "SUSPENDED")

    running.registry.fault_hook = hook
    return seen


def two_helpers(stub: Any) -> tuple[str, str, str]:
    """河北: a resident child bound by the richer helper (10,000 fen) and another (9,000)."""
    child = enroll(stub, itype=RESIDENT, birth="20150101")
    rich, other = enroll(stub), enroll(stub, birth="19790101")
    credit(stub, rich, 10_000)
    credit(stub, other, 9_000)
    bind(stub, rich, child)
    bind(stub, other, child)
    return child, rich, other


def charged(res: pb.SettlementResult) -> list[tuple[str, int, int]]:
    return [(c.helper_id_number, c.amount_fen, c.balance_after_fen) for c in res.helper_charges]


def test_the_richest_helper_suspended_at_charge_time_another_pays(staged, rdb):
    running = staged("13")
    stub = running.stub
    child, rich, other = two_helpers(stub)
    seen = suspend_at(rdb, running, rich)
    res = settle(stub, child, 5_000)
    assert seen
    assert (res.mulaid_pay_fen, res.cash_pay_fen, res.helper_reason) == (5_000, 0, "")
    assert charged(res) == [(other, 5_000, 4_000)]
    assert (balance(stub, rich), balance(stub, other)) == (10_000, 4_000)
    assert verdict.check(rdb).conserved


def test_beijing_in_turn_a_helper_short_at_charge_time_the_next_pays(staged, rdb):
    running = staged("11")
    stub = running.stub
    child = enroll(stub, itype=RESIDENT, birth="20150101", **BJ)
    h1, h2, h3 = (enroll(stub, birth=b, **BJ) for b in ("19700101", "19710101", "19720101"))
    for h, fen in ((h1, 3_000), (h2, 10_000), (h3, 500)):
        credit(stub, h, fen)
        bind(stub, h, child)
    suspend_at(rdb, running, h2)
    res = settle(stub, child, 10_000)
    assert charged(res) == [(h1, 3_000, 0), (h3, 500, 0)]
    assert (res.mulaid_pay_fen, res.cash_pay_fen, res.helper_reason) == (3_500, 6_500, "HELPER_INSUFFICIENT")
    assert balance(stub, h2) == 10_000
    assert verdict.check(rdb).conserved


def test_a_crash_after_the_new_helper_paid_is_finished_once_by_recovery(staged, rdb, loop_thread):
    running = staged("13")
    stub = running.stub
    child, rich, other = two_helpers(stub)
    crashed: list[str] = []

    def hook(p: str) -> None:
        if p == "settle.after_wallet_debit" and not crashed:
            rdb.hset(running.registry.k.person(rich), "status", "SUSPENDED")
        if p == "settle.after_helper_debit" and not crashed:
            crashed.append(p)
            raise InjectedFault(p)

    running.registry.fault_hook = hook
    req = settle_request(child, 5_000, request_id="replan-crash-1")
    with pytest.raises(grpc.RpcError):
        stub.Settle(req)
    running.registry.fault_hook = None
    assert crashed and balance(stub, other) == 4_000  # the new helper paid before the crash
    running.clock.advance(60_000)
    assert loop_thread.run(running.registry.recover()).settled == 1
    res = stub.Settle(req).result
    assert charged(res) == [(other, 5_000, 4_000)] and res.cash_pay_fen == 0
    assert (balance(stub, rich), balance(stub, other)) == (10_000, 4_000)  # each charged once
    assert verdict.check(rdb).conserved


def test_a_wallet_paying_less_than_planned_leaves_its_share_to_the_family_account(national, rdb):
    """甘肃, a member with a funded family account and 5,000 of wallet quota: the plan is wallet 5,000 and
    the family account 15,000. The wallet's use-place changes before its debit, so it pays nothing; the
    family account is asked for everything the steps before it left (SPEC §3b waterfall), not cash."""
    gs, hb = national.reg("62"), national.reg("13")
    gansu = {"region": "620100", "division": "620102"}
    creator, member = enroll(gs, **gansu), enroll(gs, birth="19900101", **gansu)
    credit(gs, creator, 100_000)
    fid = create(gs, creator).family_id
    invite(gs, fid, creator, member, cpb.RELATION_SPOUSE)
    accept(gs, fid, member)
    huabo(gs, fid, creator, 30_000)
    grandma = enroll(hb, birth="19550101")
    credit(hb, grandma, 100_000)
    open_wallet(national, member, "62", "620100")
    fund(national, grandma, "13", member, 5_000)
    running = national.registries["62"]

    def moved(point: str) -> None:  # the owner moves the wallet's use-place (as ChangeUsePlace writes it)
        if point == "settle.after_own_debit":
            rdb.hset(f"wal:{{w:{member}}}:wallet", "use_place", "620200")

    running.registry.fault_hook = moved
    try:
        res = gs.Settle(pb.SettleRequest(
            request_id=rid("2207"), patient_id_number=member, amount_fen=20_000, use_account=True,
            category=cpb.CATEGORY_OUTPATIENT, institution_code="H62010100001", institution_admdvs="620100")).result
    finally:
        running.registry.fault_hook = None
    assert (res.wallet_pay_fen, res.mulaid_pay_fen, res.cash_pay_fen) == (0, 20_000, 0)
    assert (res.wallet_reason, res.helper_reason, res.family_id) == ("WALLET_OTHER_USE_PLACE", "", fid)
    assert verdict.check(rdb).conserved


@pytest.fixture
def elsewhere(redis_server: Any) -> Iterator[Callable[[Any], Any]]:
    """Another registry process of the same province on the same Redis, on its own event loop: what a
    concurrent request of another replica does, while the settlement under test waits at a point."""
    loop = LoopThread()
    made: list[Any] = []

    def start(running: Any) -> Any:
        async def boot() -> Any:
            client = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
            made.append(client)
            return Registry(client, running.registry.policy, clock=running.clock)

        replica = loop.run(boot())
        return lambda coro_of: loop.run(coro_of(replica))

    yield start
    for client in made:
        loop.run(client.aclose())
    loop.stop()


def test_beijing_in_turn_a_helper_spent_down_at_charge_time_pays_what_it_still_holds(staged, rdb, elsewhere):
    """北京 uses its helpers in turn, each paying what it can (SPEC §4). Planned: h1 3,000 and h2 7,000 of
    a 10,000 bill. Before h2 is charged, h2 spends 6,000 of their own 10,000 at a hospital (another
    replica). h2 still holds 4,000, which the rule has them pay; h3 (500) pays after them and the
    patient pays 2,500 in cash — not 6,500 with h2 passed over."""
    running = staged("11")
    stub = running.stub
    child = enroll(stub, itype=RESIDENT, birth="20150101", **BJ)
    h1, h2, h3 = (enroll(stub, birth=b, **BJ) for b in ("19700101", "19710101", "19720101"))
    for h, fen in ((h1, 3_000), (h2, 10_000), (h3, 500)):
        credit(stub, h, fen)
        bind(stub, h, child)
    other = elsewhere(running)
    spent: list[pb.SettlementResult] = []

    def hook(point: str) -> None:
        if point == "settle.after_wallet_debit" and not spent:
            req = pb.SettleRequest(request_id=rid("own"), patient_id_number=h2, amount_fen=6_000, use_account=True,
                                   category=cpb.CATEGORY_OUTPATIENT, institution_code="H11010500001",
                                   institution_admdvs="110000")
            spent.append(other(lambda reg: reg.settle(req)).result)

    running.registry.fault_hook = hook
    res = settle(stub, child, 10_000)
    assert spent and spent[0].acct_pay_fen == 6_000
    assert charged(res) == [(h1, 3_000, 0), (h2, 4_000, 0), (h3, 500, 0)]
    assert (res.mulaid_pay_fen, res.cash_pay_fen, res.helper_reason) == (7_500, 2_500, "HELPER_INSUFFICIENT")
    assert (balance(stub, h1), balance(stub, h2), balance(stub, h3)) == (0, 0, 0)
    assert verdict.check(rdb).conserved


def test_beijing_in_turn_an_earlier_helper_short_at_charge_time_a_later_one_already_charged_pays_more(
        staged, rdb, elsewhere):
    """北京 uses its helpers in turn, each paying what it can (SPEC §4). h1 holds 3,000 and h2 9,000;
    planned for a 10,000 bill: h1 3,000 and h2 7,000, charged together. Before the charges h1 spends
    2,000 at a hospital (another replica), so h1's charge cannot be taken and h2's is. The rest (3,000)
    is asked again of every helper still holding money, h2 included: h1 pays the 1,000 it holds and
    h2 2,000 more (9,000 in all) — the patient pays nothing in cash, not 2,000. Each helper is named
    once with their whole share, their consumption record says it, and a reversal gives each their
    whole share back."""
    running = staged("11")
    stub = running.stub
    child = enroll(stub, itype=RESIDENT, birth="20150101", **BJ)
    h1, h2 = (enroll(stub, birth=b, **BJ) for b in ("19700101", "19710101"))
    for h, fen in ((h1, 3_000), (h2, 9_000)):
        credit(stub, h, fen)
        bind(stub, h, child)
    other = elsewhere(running)
    spent: list[pb.SettlementResult] = []

    def hook(point: str) -> None:
        if point == "settle.after_wallet_debit" and not spent:
            req = pb.SettleRequest(request_id=rid("own"), patient_id_number=h1, amount_fen=2_000, use_account=True,
                                   category=cpb.CATEGORY_OUTPATIENT, institution_code="H11010500001",
                                   institution_admdvs="110000")
            spent.append(other(lambda reg: reg.settle(req)).result)

    running.registry.fault_hook = hook
    req = settle_request(child, 10_000, request_id="inturn-again-1")
    res = stub.Settle(req).result
    running.registry.fault_hook = None
    assert spent and spent[0].acct_pay_fen == 2_000
    assert charged(res) == [(h1, 1_000, 0), (h2, 9_000, 0)]
    assert (res.mulaid_pay_fen, res.cash_pay_fen, res.helper_reason) == (10_000, 0, "")
    assert (balance(stub, h1), balance(stub, h2)) == (0, 0)
    assert stub.Settle(req).result == res  # a replay answers the same
    for helper, share in ((h1, 1_000), (h2, 9_000)):
        records = stub.ListConsumptionRecords(pb.ListConsumptionRecordsRequest(id_number=helper)).records
        mine = [(r.settlement_id, r.role, r.mulaid_pay_fen) for r in records if r.settlement_id == res.settlement_id]
        assert mine == [(res.settlement_id, "HELPER", share)]
    member = stub.ListConsumptionRecords(pb.ListConsumptionRecordsRequest(id_number=child)).records
    assert sorted((r.helper_id_number, r.mulaid_pay_fen) for r in member) == sorted([(h1, 1_000), (h2, 9_000)])
    assert verdict.check(rdb).conserved
    rev = stub.ReverseSettlement(pb.ReverseSettlementRequest(request_id=rid("2208"), settlement_id=res.settlement_id))
    assert [(c.helper_id_number, c.amount_fen) for c in rev.helper_refunds] == [(h1, 1_000), (h2, 9_000)]
    assert (balance(stub, h1), balance(stub, h2)) == (1_000, 9_000)
    assert verdict.check(rdb).conserved


def test_beijing_in_turn_a_crash_after_a_helper_is_asked_again_keeps_their_whole_share_on_record(
        staged, rdb, elsewhere, loop_thread):
    """As above (h1 spends 2,000 before the charges; h1's 3,000 cannot be taken, h2's 7,000 is; the
    rest is asked again: h1 1,000, h2 2,000 more), but the process dies once the new charges have
    joined the record and before they are taken. The recovery pass takes them: h2, charged twice in
    this settlement, still has one consumption record with their whole 9,000, listed once, and the
    member's records sum to what the helpers paid."""
    running = staged("11")
    stub = running.stub
    child = enroll(stub, itype=RESIDENT, birth="20150101", **BJ)
    h1, h2 = (enroll(stub, birth=b, **BJ) for b in ("19700101", "19710101"))
    for h, fen in ((h1, 3_000), (h2, 9_000)):
        credit(stub, h, fen)
        bind(stub, h, child)
    other = elsewhere(running)
    spent: list[pb.SettlementResult] = []

    def hook(point: str) -> None:
        if point == "settle.after_wallet_debit" and not spent:
            req = pb.SettleRequest(request_id=rid("own"), patient_id_number=h1, amount_fen=2_000, use_account=True,
                                   category=cpb.CATEGORY_OUTPATIENT, institution_code="H11010500001",
                                   institution_admdvs="110000")
            spent.append(other(lambda reg: reg.settle(req)).result)

    staged_path = running.registry.engine.staged
    extend = staged_path._extend
    died: list[str] = []

    async def extend_then_die(*args: Any, **kwargs: Any) -> Any:  # the process dies after the write
        extended = await extend(*args, **kwargs)
        if not died:
            died.append("after extend")
            raise InjectedFault("after extend")
        return extended

    running.registry.fault_hook = hook
    staged_path._extend = extend_then_die  # type: ignore[method-assign]
    req = settle_request(child, 10_000, request_id="inturn-again-crash-1")
    try:
        with pytest.raises(grpc.RpcError):
            stub.Settle(req)
    finally:
        running.registry.fault_hook = None
        staged_path._extend = extend  # type: ignore[method-assign]
    assert spent and died
    assert (balance(stub, h1), balance(stub, h2)) == (1_000, 2_000)  # only h2's first 7,000 taken
    running.clock.advance(60_000)
    assert loop_thread.run(running.registry.recover()).settled == 1
    res = stub.Settle(req).result
    assert charged(res) == [(h1, 1_000, 0), (h2, 9_000, 0)]
    assert (res.mulaid_pay_fen, res.cash_pay_fen) == (10_000, 0)
    assert (balance(stub, h1), balance(stub, h2)) == (0, 0)
    for helper, share in ((h1, 1_000), (h2, 9_000)):
        records = stub.ListConsumptionRecords(pb.ListConsumptionRecordsRequest(id_number=helper)).records
        mine = [(r.settlement_id, r.role, r.mulaid_pay_fen) for r in records if r.settlement_id == res.settlement_id]
        assert mine == [(res.settlement_id, "HELPER", share)]
    member = stub.ListConsumptionRecords(pb.ListConsumptionRecordsRequest(id_number=child)).records
    assert sorted((r.helper_id_number, r.mulaid_pay_fen) for r in member) == sorted([(h1, 1_000), (h2, 9_000)])
    assert verdict.check(rdb).conserved
