"""The recovery loop answers the request id of a 划拨, a 代缴 (or its cancellation), a leaving with
shares returned, an enrolment, a status change, a move of 统筹区 and a death once it finishes the flow
(SPEC §7: every request id has exactly one effect; a replay returns the first answer). A request cut
after its effects and finished by the loop alone (no resend) is answered as a normal run answers it:
what happens to the account, the premium or the person afterwards does not change that answer, and a
resend replays it instead of running the request again."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from medaid.bench import money as verdict
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.keys import Keys
from medaid.registry.service import InjectedFault
from medaid.registry.v1 import family_pb2 as fpb
from medaid.registry.v1 import premium_pb2 as ppb
from medaid.registry.v1 import registry_pb2 as pb
from support import balance, credit, new_id, rid
from test_family_crash import _account, _leave, _pay, _transfer, fam, money  # noqa: F401 - the fixture

OPEN = "reg:35:{open}:setl"


def _crash_at(reg: Any, point: str, call: Any) -> None:
    fired: list[str] = []

    def crash(p: str) -> None:
        if p == point and not fired:
            fired.append(p)
            raise InjectedFault(p)

    reg.registry.fault_hook = crash
    with pytest.raises(grpc.RpcError):
        call()
    reg.registry.fault_hook = None
    assert fired == [point]


def _recovered(reg: Any, loop_thread: Any) -> None:
    reg.clock.advance(60_000)
    assert loop_thread.run(reg.registry.recover()).family == 1


def _claim(rdb: Any, request_id: str) -> str:
    return (rdb.hget(f"{Keys('35').ns}:{{rid:{request_id}}}", "state") or b"").decode()


@pytest.mark.parametrize("point", ["family.after_debit", "family.after_credit"])
def test_transfer_finished_by_the_loop_is_answered(fam, rdb, loop_thread, point):  # noqa: F811
    reg, f = fam
    reg.clock.advance(15 * 24 * 3600 * 1000)  # 福建 allows one 划拨 a month: this one is next month's
    _crash_at(reg, point, lambda: _transfer(f, "crash-1"))
    _recovered(reg, loop_thread)
    # What a normal run answers: the account as the 划拨 left it, the contributor's balance after it.
    reference = fpb.TransferIntoFamilyAccountResponse(account=_account(f), balance_after_fen=200_000)
    assert _claim(rdb, "crash-1") == "DONE" and not rdb.zcard(OPEN)
    _leave(f, rid("leave"))  # the account changes afterwards
    assert _account(f) != reference.account
    assert _transfer(f, "crash-1") == reference
    assert verdict.check(rdb).conserved


@pytest.mark.parametrize("point", ["family.after_end", "family.after_payout"])
def test_leave_finished_by_the_loop_is_answered(fam, rdb, loop_thread, point):  # noqa: F811
    reg, f = fam
    _crash_at(reg, point, lambda: _leave(f, "crash-1"))
    _recovered(reg, loop_thread)
    reference = fpb.LeaveFamilyAccountResponse(account=_account(f), returned_fen=50_000)
    assert _claim(rdb, "crash-1") == "DONE" and not rdb.zcard(OPEN)
    reg.clock.advance(31 * 24 * 3600 * 1000)  # the account changes afterwards: next month's 划拨
    f.stub.TransferIntoFamilyAccount(fpb.TransferIntoFamilyAccountRequest(
        request_id=rid("hb"), family_id=f.fid, contributor_id_number=f.creator, amount_fen=10_000))
    assert _account(f) != reference.account
    assert _leave(f, "crash-1") == reference
    assert verdict.check(rdb).conserved


@pytest.mark.parametrize("point", ["premium.after_open", "premium.after_debit"])
def test_premium_finished_by_the_loop_is_answered_and_paid_once(fam, rdb, loop_thread, point):  # noqa: F811
    reg, f = fam
    start, before = money(rdb), balance(f.stub, f.creator)
    _crash_at(reg, point, lambda: _pay(f, "crash-1"))
    _recovered(reg, loop_thread)
    (paid,) = f.stub.ListResidentPremiums(ppb.ListResidentPremiumsRequest(payee_id_number=f.aunt)).premiums
    reference = ppb.PayResidentPremiumResponse(premium=paid)
    assert paid.state == "PAID" and _claim(rdb, "crash-1") == "DONE" and not rdb.zcard(OPEN)
    f.stub.CancelResidentPremium(ppb.CancelResidentPremiumRequest(request_id=rid("cancel"), payee_id_number=f.aunt,
                                                                  year="2027"))
    assert balance(f.stub, f.creator) == before and money(rdb) == start
    # The resend replays the payment's answer: it neither pays again nor marks a premium paid for free.
    assert _pay(f, "crash-1") == reference
    (premium,) = f.stub.ListResidentPremiums(ppb.ListResidentPremiumsRequest(payee_id_number=f.aunt)).premiums
    assert premium.state == "CANCELLED"
    assert balance(f.stub, f.creator) == before and money(rdb) == start
    assert verdict.check(rdb).conserved


def test_premium_cancellation_finished_by_the_loop_is_answered_and_cancels_once(fam, rdb, loop_thread):  # noqa: F811
    reg, f = fam
    before = balance(f.stub, f.creator)
    _pay(f, "prem-1")

    def cancel() -> Any:
        return f.stub.CancelResidentPremium(ppb.CancelResidentPremiumRequest(request_id="crash-1",
                                                                             payee_id_number=f.aunt, year="2027"))

    _crash_at(reg, "premium.after_cancel_refund", cancel)
    _recovered(reg, loop_thread)
    (cancelled,) = f.stub.ListResidentPremiums(ppb.ListResidentPremiumsRequest(payee_id_number=f.aunt)).premiums
    reference = ppb.CancelResidentPremiumResponse(premium=cancelled)
    assert cancelled.state == "CANCELLED" and _claim(rdb, "crash-1") == "DONE" and not rdb.zcard(OPEN)
    _pay(f, "prem-2")  # paid again afterwards
    assert cancel() == reference  # a replay: the new payment stands
    (premium,) = f.stub.ListResidentPremiums(ppb.ListResidentPremiumsRequest(payee_id_number=f.aunt)).premiums
    assert (premium.premium_id, premium.state) == ("prem-2", "PAID")
    assert balance(f.stub, f.creator) == before - 40_000
    assert verdict.check(rdb).conserved


def test_premium_resent_after_its_cancellation_replays_the_payment(fam, rdb):  # noqa: F811
    """A 代缴 cut after its payment, before its answer, then cancelled under another request id (the money
    back to the payer), then resent before the loop answers it: the resend replays the payment it made
    (the premium as it stands, cancelled); it never opens the premium again on the money already taken
    under its id, which would mark it paid with no debit."""
    reg, f = fam
    start, before = money(rdb), balance(f.stub, f.creator)
    _crash_at(reg, "flow.before_answer", lambda: _pay(f, "crash-1"))
    assert _claim(rdb, "crash-1") == "PENDING"
    f.stub.CancelResidentPremium(ppb.CancelResidentPremiumRequest(request_id=rid("cancel"), payee_id_number=f.aunt,
                                                                  year="2027"))
    assert balance(f.stub, f.creator) == before and money(rdb) == start
    answer = _pay(f, "crash-1")
    (premium,) = f.stub.ListResidentPremiums(ppb.ListResidentPremiumsRequest(payee_id_number=f.aunt)).premiums
    assert premium.state == "CANCELLED" and answer == ppb.PayResidentPremiumResponse(premium=premium)
    assert balance(f.stub, f.creator) == before and money(rdb) == start
    assert _claim(rdb, "crash-1") == "DONE"
    assert verdict.check(rdb).conserved


def test_premium_resent_while_its_cancellation_is_cut_answers_both(fam, rdb, loop_thread):  # noqa: F811
    """A 代缴 cut before its answer, cancelled under another id whose process dies after the refund, then
    the payment resent: the resend finishes the cancellation, which is answered (its entry does not go
    while its id is in progress), and answers the payment it made, not a refusal."""
    reg, f = fam
    start, before = money(rdb), balance(f.stub, f.creator)
    _crash_at(reg, "flow.before_answer", lambda: _pay(f, "crash-1"))

    def cancel() -> Any:
        return f.stub.CancelResidentPremium(ppb.CancelResidentPremiumRequest(request_id="cancel-1",
                                                                             payee_id_number=f.aunt, year="2027"))

    _crash_at(reg, "premium.after_cancel_refund", cancel)
    answer = _pay(f, "crash-1")
    (premium,) = f.stub.ListResidentPremiums(ppb.ListResidentPremiumsRequest(payee_id_number=f.aunt)).premiums
    assert premium.state == "CANCELLED" and answer == ppb.PayResidentPremiumResponse(premium=premium)
    assert _claim(rdb, "crash-1") == "DONE" and _claim(rdb, "cancel-1") == "DONE"
    assert cancel() == ppb.CancelResidentPremiumResponse(premium=premium)
    reg.clock.advance(60_000)
    loop_thread.run(reg.registry.recover())
    assert not rdb.zcard(OPEN)
    assert balance(f.stub, f.creator) == before and money(rdb) == start
    assert verdict.check(rdb).conserved



@pytest.mark.parametrize("flow", ["transfer", "leave", "premium"])
def test_request_cut_before_its_answer_keeps_its_entry(fam, rdb, loop_thread, flow):  # noqa: F811
    """A 划拨, a leave or a 代缴 cut after its effects, before its answer is recorded: its recovery entry
    stands (the answer is recorded before the entry goes), so the loop answers the id as the request
    would, and a resend after a later change replays that answer."""
    reg, f = fam
    if flow == "transfer":
        reg.clock.advance(15 * 24 * 3600 * 1000)  # 福建 allows one 划拨 a month: this one is next month's
    call = {"transfer": lambda: _transfer(f, "crash-1"), "leave": lambda: _leave(f, "crash-1"),
            "premium": lambda: _pay(f, "crash-1")}[flow]
    _crash_at(reg, "flow.before_answer", call)
    assert _claim(rdb, "crash-1") == "PENDING" and rdb.zcard(OPEN) == 1
    _recovered(reg, loop_thread)
    assert _claim(rdb, "crash-1") == "DONE" and not rdb.zcard(OPEN)
    if flow == "transfer":
        reference: Any = fpb.TransferIntoFamilyAccountResponse(account=_account(f), balance_after_fen=200_000)
    elif flow == "leave":
        reference = fpb.LeaveFamilyAccountResponse(account=_account(f), returned_fen=50_000)
    else:
        (paid,) = f.stub.ListResidentPremiums(ppb.ListResidentPremiumsRequest(payee_id_number=f.aunt)).premiums
        reference = ppb.PayResidentPremiumResponse(premium=paid)
    assert call() == reference
    assert verdict.check(rdb).conserved


def _life_recovered(reg: Any, loop_thread: Any) -> None:
    reg.clock.advance(60_000)
    assert loop_thread.run(reg.registry.recover()).lifecycle == 1


def _person(f: Any, pid: str) -> pb.Person:
    return f.stub.GetPerson(pb.GetPersonRequest(id_number=pid)).person


def test_enrolment_finished_by_the_loop_is_answered(fam, rdb, loop_thread):  # noqa: F811
    reg, f = fam
    pid = new_id("350203", "19850101")

    def enrol() -> Any:
        return f.stub.EnrollPerson(pb.EnrollPersonRequest(request_id="crash-1", id_number=pid, name="林一",
                                                          insurance_type=cpb.INSURANCE_TYPE_EMPLOYEE,
                                                          pooling_region="350200"))

    _crash_at(reg, "enroll.after_person", enrol)
    _life_recovered(reg, loop_thread)
    reference = pb.EnrollPersonResponse(person=_person(f, pid))
    assert _claim(rdb, "crash-1") == "DONE" and not rdb.zcard(OPEN)
    credit(f.stub, pid, 1_000)  # the person changes afterwards
    assert _person(f, pid) != reference.person
    assert enrol() == reference


def test_status_change_finished_by_the_loop_is_answered(fam, rdb, loop_thread):  # noqa: F811
    reg, f = fam

    def update(request_id: str, status: int) -> Any:
        return f.stub.UpdatePersonStatus(pb.UpdatePersonStatusRequest(request_id=request_id, id_number=f.daughter,
                                                                      status=status))

    _crash_at(reg, "status.after_write", lambda: update("crash-1", cpb.PERSON_STATUS_SUSPENDED))
    _life_recovered(reg, loop_thread)
    reference = pb.UpdatePersonStatusResponse(person=_person(f, f.daughter))
    assert reference.person.status == cpb.PERSON_STATUS_SUSPENDED
    assert _claim(rdb, "crash-1") == "DONE" and not rdb.zcard(OPEN)
    update(rid("status"), cpb.PERSON_STATUS_ACTIVE)  # insured again afterwards
    # The resend replays the suspension's answer: it does not suspend her again.
    assert update("crash-1", cpb.PERSON_STATUS_SUSPENDED) == reference
    assert _person(f, f.daughter).status == cpb.PERSON_STATUS_ACTIVE


def test_move_finished_by_the_loop_is_answered(fam, rdb, loop_thread):  # noqa: F811
    reg, f = fam

    def move(request_id: str, region: str) -> Any:
        return f.stub.MovePoolingRegion(pb.MovePoolingRegionRequest(request_id=request_id, id_number=f.daughter,
                                                                    pooling_region=region))

    _crash_at(reg, "flow.before_answer", lambda: move("crash-1", "350500"))  # the move done, unanswered
    _life_recovered(reg, loop_thread)
    reference = pb.MovePoolingRegionResponse(person=_person(f, f.daughter))
    assert reference.person.pooling_region == "350500"
    assert _claim(rdb, "crash-1") == "DONE" and not rdb.zcard(OPEN)
    move(rid("move"), "350200")  # moved back afterwards
    # The resend replays the move's answer: it does not move her again.
    assert move("crash-1", "350500") == reference
    assert _person(f, f.daughter).pooling_region == "350200"


def test_death_finished_by_the_loop_is_answered(fam, rdb, loop_thread):  # noqa: F811
    reg, f = fam
    start = money(rdb)
    heir = new_id("350203", "19850101")
    req = pb.RecordDeathRequest(request_id="crash-1", id_number=f.daughter, heir_id_number=heir,
                                heir_name="林继承", date_of_death="20261121")
    _crash_at(reg, "death.after_status", lambda: f.stub.RecordDeath(req))
    _life_recovered(reg, loop_thread)
    person = _person(f, f.daughter)
    reference = pb.RecordDeathResponse(person=person, paid_out_fen=300_000)
    assert (person.status, person.balance_fen, person.paid_out_fen) == (cpb.PERSON_STATUS_DECEASED, 0, 300_000)
    assert _claim(rdb, "crash-1") == "DONE" and not rdb.zcard(OPEN)
    assert f.stub.RecordDeath(req) == reference
    assert money(rdb) == start - 300_000
    assert verdict.check(rdb).conserved
