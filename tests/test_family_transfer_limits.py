"""The 划拨 limits of a pooled family account (SPEC §3b: 福建 keeps ¥2,000 and allows one 划拨 per
calendar month per contributor) have one home, family_rules.check_transfer_in: lua/family_debit.lua
applies a decision only while the balance and the month's count it was made on still hold, else
the 划拨 is read and decided again. On real registries and Redis, with concurrent requests."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
import redis
from medaid.common.scripts import lua_source
from medaid.registry.context import InjectedFault
from medaid.registry.v1 import family_pb2 as fpb
from medaid.registry.v1 import registry_pb2 as pb
from support import balance, credit, enroll, reason, rid, snapshot
from test_family import FJ, FP, accept, account, create, huabo, invite, money, refused, shown


def _acct(pid: str) -> str:
    return f"reg:35:{{p:{pid}}}:acct"


def _months(pid: str) -> str:
    return f"reg:35:{{p:{pid}}}:famx_month"


def test_a_transfer_decided_on_a_balance_that_fell_meanwhile_is_decided_again(start_registry, rdb):
    """福建: a 划拨 of ¥400 from ¥2,500 keeps the floor; before it is applied ¥200 leave the account
    (what another debit does). The decision is stale: it is made again on ¥2,300, and refused with
    the figures of that decision (at most ¥300 movable); nothing is debited and the month's 划拨 is
    not used up."""
    running = start_registry("35")
    stub, reg = running.stub, running.registry
    creator = enroll(stub, **FJ)
    credit(stub, creator, 250_000)
    fid = create(stub, creator).family_id
    seen: list[str] = []

    def spent_meanwhile(point: str) -> None:
        if point == "family.before_debit" and not seen:
            seen.append(point)
            rdb.hincrby(_acct(creator), "bal", -20_000)

    reg.fault_hook = spent_meanwhile
    try:
        before = money(rdb, "35")
        with pytest.raises(grpc.RpcError) as ei:
            huabo(stub, fid, creator, 40_000)
    finally:
        reg.fault_hook = None
    assert seen
    assert (ei.value.code(), reason(ei.value)) == (FP, "BELOW_MINIMUM_BALANCE")
    assert "保留额度(须保留2000元,本次最多可划拨300元),本次未划拨" in shown(ei.value)
    assert money(rdb, "35") == before - 20_000 and balance(stub, creator) == 230_000
    assert not rdb.exists(_months(creator)) and not rdb.zcard("reg:35:{open}:setl")
    assert huabo(stub, fid, creator, 30_000).balance_after_fen == 200_000  # the month's 划拨 is still there


def test_a_transfer_decided_on_a_balance_that_rose_meanwhile_is_applied_on_the_new_one(start_registry, rdb):
    """A credit lands between the decision and its script: the script writes nothing; the 划拨 is
    decided again on the new balance and applied once."""
    running = start_registry("35")
    stub, reg = running.stub, running.registry
    creator = enroll(stub, **FJ)
    credit(stub, creator, 250_000)
    fid = create(stub, creator).family_id
    seen: list[str] = []

    def credited_meanwhile(point: str) -> None:
        if point == "family.before_debit":
            seen.append(point)
            if len(seen) == 1:
                rdb.hincrby(_acct(creator), "bal", 5_000)

    reg.fault_hook = credited_meanwhile
    try:
        res = huabo(stub, fid, creator, 40_000)
    finally:
        reg.fault_hook = None
    assert len(seen) == 2  # decided twice
    assert res.balance_after_fen == 215_000 and account(stub, fid).balance_fen == 40_000
    assert rdb.hgetall(_months(creator)) == {b"202611": b"1"}


def test_the_debit_script_applies_the_decision_only_on_what_it_saw_and_decides_nothing(start_registry, rdb):
    """lua/family_debit.lua has no floor and no monthly cap of its own: a debit that the balance and
    month count it was decided on still hold is applied as decided; one decided on another balance or
    another count writes nothing and answers CONFLICT."""
    stub = start_registry("35").stub
    creator = enroll(stub, **FJ)
    credit(stub, creator, 250_000)
    debit = lua_source("medaid.registry", "family_debit")
    ns = f"reg:35:{{p:{creator}}}"
    keys = [f"{ns}:famx:x1", _acct(creator), f"{ns}:ledger", f"{ns}:fence", _months(creator)]

    # The token of the contributor's lock as it stands (enrolment took the person's fenced lock once).
    token = int(rdb.get(f"{ns}:fence") or 0)

    def run(bal: int, count: int) -> list[str]:
        return [x.decode() for x in rdb.eval(debit, 5, *keys, token, "x1", "F1", 100_000, 1, "202611", bal, count)]

    before = snapshot(rdb)
    assert run(249_999, 0) == ["CONFLICT", ""]
    assert run(250_000, 1) == ["CONFLICT", ""]
    assert snapshot(rdb) == before
    assert run(250_000, 0) == ["OK", "150000"]  # below the 福建 floor: the script leaves that to Python
    assert rdb.hget(_months(creator), "202611") == b"1"
    assert run(150_000, 1) == ["EXISTS", "DEBITED"]


def _retrying(call: Any, stats: Counter) -> Any:
    for _ in range(50):
        try:
            return call()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            stats[reason(exc)] += 1
            time.sleep(0.01)
    raise AssertionError("still unavailable after 50 tries")


def test_concurrent_transfers_of_one_contributor_in_a_month_pass_once(start_registry, rdb: redis.Redis):
    """福建: eight 划拨 by one contributor at the same moment, each with its own request id, while
    credits land on their account: exactly one passes, the others are MONTHLY_LIMIT_REACHED, and every
    fen is accounted for (SPEC §3b, §7)."""
    stub = start_registry("35").stub
    creator = enroll(stub, **FJ)
    credit(stub, creator, 300_000)
    fid = create(stub, creator).family_id
    start = money(rdb, "35")
    stats: Counter = Counter()

    def transfer(i: int) -> str:
        try:
            _retrying(lambda: huabo(stub, fid, creator, 10_000 + i, request_id=f"hb-race-{i}"), stats)
            return "OK"
        except grpc.RpcError as exc:
            return reason(exc)

    def credit_once(i: int) -> str:
        stub.CreditAccount(pb.CreditAccountRequest(
            request_id=f"cr-race-{i}", id_number=creator, amount_fen=100,
            kind=pb.CREDIT_KIND_MONTHLY_CONTRIBUTION, period="202611"))
        return "CREDIT"

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(transfer, i) for i in range(8)] + [pool.submit(credit_once, i) for i in range(8)]
        outcomes = Counter(f.result() for f in futures)
    assert outcomes == {"OK": 1, "MONTHLY_LIMIT_REACHED": 7, "CREDIT": 8}, (outcomes, stats)
    moved = account(stub, fid).balance_fen
    assert 10_000 <= moved < 10_008
    assert balance(stub, creator) == 300_000 + 800 - moved
    assert money(rdb, "35") == start + 800
    assert rdb.hgetall(_months(creator)) == {b"202611": b"1"}
    refused(rdb, lambda: huabo(stub, fid, creator, 1), FP, "MONTHLY_LIMIT_REACHED")


def test_gansu_transfers_have_no_floor_and_no_monthly_cap(start_registry, rdb):
    """甘肃 "划拨金额不受限制,划拨次数不受限制": concurrent 划拨 all pass, down to the last fen."""
    stub = start_registry("62").stub
    creator = enroll(stub, region="620100", division="620102")
    credit(stub, creator, 6_000)
    fid = create(stub, creator).family_id
    stats: Counter = Counter()
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda i: _retrying(lambda: huabo(stub, fid, creator, 1_000), stats), range(6)))
    assert balance(stub, creator) == 0 and account(stub, fid).balance_fen == 6_000


@pytest.mark.parametrize("repair", ["resend", "recovery"])
@pytest.mark.parametrize("meanwhile", ["leave", "dissolve"])
def test_a_transfer_whose_contributor_left_meanwhile_is_refused_for_that(start_registry, rdb, loop_thread,
                                                                         repair, meanwhile):
    """福建: a member's 划拨 is debited, then the process stops; before it is credited the member leaves
    the account (or the creator dissolves it). The 划拨 is given back, its month's count too, and the
    refusal says why: the contributor is no longer a member of an account that is still there
    (NOT_A_CONTRIBUTOR, as a 划拨 sent after the leave is), or the account was dissolved
    (FAMILY_NOT_ACTIVE). Every fen is accounted for (SPEC §3b, §7)."""
    running = start_registry("35")
    stub, reg = running.stub, running.registry
    creator, son = enroll(stub, **FJ), enroll(stub, birth="19900101", **FJ)
    credit(stub, creator, 300_000)
    credit(stub, son, 300_000)
    fid = create(stub, creator, initial_transfer_fen=50_000).family_id
    invite(stub, fid, creator, son)
    accept(stub, fid, son)
    start = money(rdb, "35")
    fired: list[str] = []

    def crash(point: str) -> None:
        if point == "family.after_debit" and not fired:
            fired.append(point)
            raise InjectedFault(point)

    reg.fault_hook = crash
    try:
        with pytest.raises(grpc.RpcError):
            huabo(stub, fid, son, 40_000, request_id="hb-left")
    finally:
        reg.fault_hook = None
    assert fired and balance(stub, son) == 260_000
    if meanwhile == "leave":
        stub.LeaveFamilyAccount(fpb.LeaveFamilyAccountRequest(request_id=rid("leave"), family_id=fid,
                                                              member_id_number=son))
    else:
        stub.DissolveFamilyAccount(fpb.DissolveFamilyAccountRequest(request_id=rid("dis"), family_id=fid,
                                                                    creator_id_number=creator))
    if repair == "recovery":
        running.clock.advance(60_000)
        assert loop_thread.run(reg.recover()).family == 1
    why = "NOT_A_CONTRIBUTOR" if meanwhile == "leave" else "FAMILY_NOT_ACTIVE"
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as ei:
            huabo(stub, fid, son, 40_000, request_id="hb-left")
        assert (ei.value.code(), reason(ei.value)) == (FP, why), ei.value.details()
    assert account(stub, fid).state == ("ACTIVE" if meanwhile == "leave" else "DISSOLVED")
    assert balance(stub, son) == 300_000 and rdb.hgetall(_months(son)) == {b"202611": b"0"}
    assert money(rdb, "35") == start and not rdb.zcard("reg:35:{open}:setl")
    refused(rdb, lambda: huabo(stub, fid, son, 40_000), FP, why)  # as a 划拨 sent afterwards is


@pytest.mark.parametrize("meanwhile", ["leave", "dissolve"])
def test_a_given_back_transfer_resent_is_refused_writing_nothing(start_registry, rdb, meanwhile):
    """SPEC §3b, §7: a 划拨 given back because its contributor left (or the account was dissolved) while
    it was under way is refused; a resend of it (the same request id) is refused the same, and, as every
    refusal, writes nothing: not even the contributor's lock and its fence counter."""
    running = start_registry("35")
    stub, reg = running.stub, running.registry
    creator, son = enroll(stub, **FJ), enroll(stub, birth="19900101", **FJ)
    credit(stub, creator, 300_000)
    credit(stub, son, 300_000)
    fid = create(stub, creator, initial_transfer_fen=50_000).family_id
    invite(stub, fid, creator, son)
    accept(stub, fid, son)

    def crash(point: str) -> None:
        if point == "family.after_debit":
            reg.fault_hook = None
            raise InjectedFault(point)

    reg.fault_hook = crash
    with pytest.raises(grpc.RpcError):
        huabo(stub, fid, son, 40_000, request_id="hb-back")
    if meanwhile == "leave":
        stub.LeaveFamilyAccount(fpb.LeaveFamilyAccountRequest(request_id=rid("leave"), family_id=fid,
                                                              member_id_number=son))
    else:
        stub.DissolveFamilyAccount(fpb.DissolveFamilyAccountRequest(request_id=rid("dis"), family_id=fid,
                                                                    creator_id_number=creator))
    why = "NOT_A_CONTRIBUTOR" if meanwhile == "leave" else "FAMILY_NOT_ACTIVE"
    with pytest.raises(grpc.RpcError) as ei:
        huabo(stub, fid, son, 40_000, request_id="hb-back")  # given back: the money home
    assert (ei.value.code(), reason(ei.value)) == (FP, why)
    assert balance(stub, son) == 300_000
    for _ in range(2):
        refused(rdb, lambda: huabo(stub, fid, son, 40_000, request_id="hb-back"), FP, why)
