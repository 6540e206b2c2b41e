"""Crash at every fault point of the family-account and 代缴 flows (划拨, leave, removal, dissolution with
returns, 回拨, premium payment and cancellation), then repair it two ways: the client resends the same
request id, or the recovery loop finishes it without any resend. Every account moves exactly once,
and the money adds up to the fen."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import redis
from medaid.bench import money as verdict
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.service import FAULT_POINTS, InjectedFault
from medaid.registry.v1 import family_pb2 as fpb
from medaid.registry.v1 import premium_pb2 as ppb
from medaid.registry.v1 import registry_pb2 as pb
from support import FACE, RESIDENT, balance, credit, enroll, rid, settle_request

FJ = {"region": "350200", "division": "350203"}
FAMILY_POINTS = [p for p in FAULT_POINTS if p.startswith(("family.", "premium."))]


@dataclass
class Family:
    stub: Any
    fid: str
    creator: str
    son: str
    aunt: str
    daughter: str  # an employee in no family account yet


@pytest.fixture
def fam(start_registry):
    """A 福建 family: the creator (¥1,000 in the account, ¥2,200 left) and the son (¥500) have contributed."""
    reg = start_registry("35")
    s = reg.stub
    creator, son = enroll(s, **FJ), enroll(s, birth="19900101", **FJ)
    aunt = enroll(s, itype=RESIDENT, birth="19600101", **FJ)
    credit(s, creator, 320_000)
    credit(s, son, 300_000)
    fid = s.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
        request_id=rid("fam"), creator_id_number=creator, commitment=FACE,
        initial_transfer_fen=100_000)).account.family_id
    s.InviteMember(fpb.InviteMemberRequest(request_id=rid("inv"), family_id=fid, creator_id_number=creator,
                                           member_id_number=son, relation=cpb.RELATION_CHILD))
    s.RespondToInvitation(fpb.RespondToInvitationRequest(request_id=rid("acc"), family_id=fid, member_id_number=son,
                                                         accept=True, verification=FACE))
    s.TransferIntoFamilyAccount(fpb.TransferIntoFamilyAccountRequest(
        request_id=rid("hb"), family_id=fid, contributor_id_number=son, amount_fen=50_000))
    daughter = enroll(s, birth="19920101", **FJ)
    credit(s, daughter, 300_000)
    return reg, Family(s, fid, creator, son, aunt, daughter)


def money(rdb: redis.Redis) -> int:
    """Personal accounts and family balances of 福建 (no 划拨 is in flight once repaired)."""
    total = 0
    for key in rdb.scan_iter("reg:35:*"):
        k = key.decode()
        if k.endswith(":acct") or ":{fam}:f:" in k:
            total += int(rdb.hget(key, "bal") or 0)
    return total


# flow -> (the call, which fault points it passes, what must hold once repaired)
Flow = tuple[Callable[[Family, str], Any], tuple[str, ...], Callable[[Family, redis.Redis, int], None]]


def _account(f: Family) -> fpb.FamilyAccount:
    return f.stub.GetFamilyAccount(fpb.GetFamilyAccountRequest(family_id=f.fid)).account


def _transfer(f: Family, request_id: str) -> Any:
    return f.stub.TransferIntoFamilyAccount(fpb.TransferIntoFamilyAccountRequest(
        request_id=request_id, family_id=f.fid, contributor_id_number=f.creator, amount_fen=20_000))


def _transferred(f: Family, rdb: redis.Redis, start: int) -> None:
    assert _account(f).balance_fen == 170_000 and balance(f.stub, f.creator) == 200_000
    assert money(rdb) == start


def _create(f: Family, request_id: str) -> Any:
    return f.stub.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
        request_id=request_id, creator_id_number=f.daughter, commitment=FACE, initial_transfer_fen=20_000))


def _created(f: Family, rdb: redis.Redis, start: int) -> None:
    account = f.stub.GetFamilyAccount(fpb.GetFamilyAccountRequest(id_number=f.daughter)).account
    assert (account.creator_id_number, account.balance_fen) == (f.daughter, 20_000)
    assert balance(f.stub, f.daughter) == 280_000 and money(rdb) == start


def _leave(f: Family, request_id: str) -> Any:
    return f.stub.LeaveFamilyAccount(fpb.LeaveFamilyAccountRequest(request_id=request_id, family_id=f.fid,
                                                                   member_id_number=f.son))


def _left(f: Family, rdb: redis.Redis, start: int) -> None:
    assert balance(f.stub, f.son) == 300_000 and _account(f).balance_fen == 100_000
    assert money(rdb) == start


def _dissolve(f: Family, request_id: str) -> Any:
    return f.stub.DissolveFamilyAccount(fpb.DissolveFamilyAccountRequest(request_id=request_id, family_id=f.fid,
                                                                         creator_id_number=f.creator))


def _dissolved(f: Family, rdb: redis.Redis, start: int) -> None:
    assert (balance(f.stub, f.creator), balance(f.stub, f.son)) == (320_000, 300_000)
    assert _account(f).state == "DISSOLVED" and money(rdb) == start


def _withdraw(f: Family, request_id: str) -> Any:
    return f.stub.WithdrawContribution(fpb.WithdrawContributionRequest(request_id=request_id, family_id=f.fid,
                                                                       contributor_id_number=f.creator))


def _withdrawn(f: Family, rdb: redis.Redis, start: int) -> None:
    assert balance(f.stub, f.creator) == 320_000 and _account(f).balance_fen == 50_000 and money(rdb) == start


def _pay(f: Family, request_id: str) -> Any:
    return f.stub.PayResidentPremium(ppb.PayResidentPremiumRequest(
        request_id=request_id, payer_id_number=f.creator, payee_id_number=f.aunt, relation=cpb.RELATION_SIBLING,
        year="2027", source=ppb.PREMIUM_SOURCE_ACCOUNT))


def _paid(f: Family, rdb: redis.Redis, start: int) -> None:
    assert balance(f.stub, f.creator) == 220_000 - 40_000 and money(rdb) == start - 40_000


def _cancel(f: Family, request_id: str) -> Any:
    _pay(f, "prem-before-cancel")
    return f.stub.CancelResidentPremium(ppb.CancelResidentPremiumRequest(request_id=request_id,
                                                                         payee_id_number=f.aunt, year="2027"))


def _cancelled(f: Family, rdb: redis.Redis, start: int) -> None:
    assert balance(f.stub, f.creator) == 220_000 and money(rdb) == start


FLOWS: dict[str, Flow] = {
    "create": (_create, ("family.after_debit", "family.after_credit"), _created),
    "transfer": (_transfer, ("family.after_debit", "family.after_credit"), _transferred),
    "leave": (_leave, ("family.after_end", "family.after_payout"), _left),
    "dissolve": (_dissolve, ("family.after_end", "family.after_payout"), _dissolved),
    "withdraw": (_withdraw, ("family.after_end", "family.after_payout"), _withdrawn),
    "pay": (_pay, ("premium.after_open", "premium.after_debit"), _paid),
    "cancel": (_cancel, ("premium.after_cancel_refund",), _cancelled),
}
CASES = [(flow, point) for flow, (_, points, _) in FLOWS.items() for point in points]


def test_every_family_fault_point_has_a_crash_case():
    assert sorted({p for _, p in CASES}) == sorted(FAMILY_POINTS)


@pytest.mark.parametrize("repair", ["resend", "recovery"])
@pytest.mark.parametrize(("flow", "point"), CASES)
def test_crash_then_repair(fam, rdb, loop_thread, flow, point, repair):
    reg, f = fam
    if flow == "transfer":  # 福建 allows one 划拨 a month: this one is next month's
        reg.clock.advance(15 * 24 * 3600 * 1000)
    call, _, check = FLOWS[flow]
    start = money(rdb)
    fired = []

    def crash(p: str) -> None:
        if p == point and not fired:
            fired.append(p)
            raise InjectedFault(p)

    reg.registry.fault_hook = crash
    with pytest.raises(grpc.RpcError):
        call(f, "crash-1")
    reg.registry.fault_hook = None
    assert fired == [point]
    if repair == "recovery":
        reg.clock.advance(60_000)
        assert loop_thread.run(reg.registry.recover()).family == 1
        check(f, rdb, start)
    first = call(f, "crash-1") if flow != "cancel" else f.stub.CancelResidentPremium(
        ppb.CancelResidentPremiumRequest(request_id="crash-1", payee_id_number=f.aunt, year="2027"))
    check(f, rdb, start)
    assert not rdb.zcard("reg:35:{open}:setl")
    again = call(f, "crash-1") if flow != "cancel" else f.stub.CancelResidentPremium(
        ppb.CancelResidentPremiumRequest(request_id="crash-1", payee_id_number=f.aunt, year="2027"))
    assert again == first
    check(f, rdb, start)
    report = verdict.check(rdb)
    assert report.conserved and report.in_flight_fen == 0, report.as_dict()


@pytest.mark.parametrize("point", ["settle.after_own_debit", "settle.after_helper_debit",
                                   "reverse.after_begin", "reverse.after_helper_refund"])
def test_family_settlement_and_reversal_crash_finished_by_recovery(fam, rdb, loop_thread, point):
    """A 2207 whose family step, or a 2208 whose return to the lots, was cut by a crash: the recovery
    loop finishes it; each contributor is charged, and given back, exactly once."""
    reg, f = fam
    kid = enroll(f.stub, itype=RESIDENT, birth="20150101", **FJ)
    f.stub.InviteMember(fpb.InviteMemberRequest(request_id=rid("inv"), family_id=f.fid, creator_id_number=f.creator,
                                                member_id_number=kid, relation=cpb.RELATION_GRANDCHILD))
    start = money(rdb)
    fired: list[str] = []

    def crash(p: str) -> None:
        if p == point and not fired:
            fired.append(p)
            raise InjectedFault(p)

    bill = settle_request(kid, 120_000, request_id="setl-crash")
    if point.startswith("reverse."):
        f.stub.Settle(bill)
    else:
        reg.registry.atomic = False  # the staged path (a cluster's): one Redis settles it in one script
    reg.registry.fault_hook = crash
    with pytest.raises(grpc.RpcError):
        if point.startswith("settle."):
            f.stub.Settle(bill)
        else:
            f.stub.ReverseSettlement(pb.ReverseSettlementRequest(request_id="rev-crash", settlement_id="setl-crash"))
    reg.registry.fault_hook = None
    reg.registry.atomic = True
    reg.clock.advance(60_000)
    counts = loop_thread.run(reg.registry.recover())
    assert counts.settled + counts.reversed == 1
    result = f.stub.GetSettlement(pb.GetSettlementRequest(settlement_id="setl-crash")).result
    if point.startswith("settle."):
        assert [(c.helper_id_number, c.amount_fen) for c in result.helper_charges] == \
            [(f.creator, 100_000), (f.son, 20_000)]
        assert _account(f).balance_fen == 30_000 and money(rdb) == start - 120_000
    else:
        assert result.state == "REVERSED"
        assert {s.id_number: s.share_fen for s in _account(f).shares} == {f.creator: 100_000, f.son: 50_000}
        assert money(rdb) == start
    assert not rdb.zcard("reg:35:{open}:setl")
    assert verdict.check(rdb).conserved
