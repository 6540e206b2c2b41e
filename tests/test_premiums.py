"""代缴 of a near-kin's 城乡居民医保 premium (SPEC §4b) on real registries: from a personal account, a
family account and a 医保钱包; one per payee and year; the window; cancellation returning the money
to exactly where it came from; the list for the tax bureau; a crash between the steps."""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Callable
from typing import Any

import grpc
import pytest
import redis
from conftest import policy_for
from medaid.bench import money as verdict
from medaid.common.errors import error_info
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry import premium_rules
from medaid.registry.context import InjectedFault
from medaid.registry.premium_refs import money_ref
from medaid.registry.v1 import family_pb2 as fpb
from medaid.registry.v1 import premium_pb2 as ppb
from medaid.registry.v1 import registry_pb2 as pb
from medaid.wallet.v1 import wallet_pb2 as wpb
from support import FACE, RESIDENT, SHANGHAI, balance, bind, credit, enroll, reason, rid, snapshot
from test_family import _gansu_family
from test_wallet_balances import fund, open_wallet

FP = grpc.StatusCode.FAILED_PRECONDITION
GS = {"region": "620100", "division": "620102"}
FJ = {"region": "350200", "division": "350203"}
YEAR = "2027"  # the tests' today is 2026-11-22: inside the 2027 window (2026-09-01 … 2026-12-31)
PREMIUM = 40_000


def refused(rdb: redis.Redis, call: Callable[[], Any], code: grpc.StatusCode, why: str) -> None:
    before = snapshot(rdb)
    with pytest.raises(grpc.RpcError) as ei:
        call()
    assert (ei.value.code(), reason(ei.value)) == (code, why), ei.value.details()
    assert snapshot(rdb) == before, f"refused {why} wrote to Redis"


def pay(stub: Any, payer: str, payee: str, source: int = ppb.PREMIUM_SOURCE_ACCOUNT, *, year: str = YEAR,
        relation: int = cpb.RELATION_CHILD, **kw: Any) -> ppb.ResidentPremium:
    return stub.PayResidentPremium(ppb.PayResidentPremiumRequest(
        request_id=kw.pop("request_id", rid("prem")), payer_id_number=payer, payee_id_number=payee,
        relation=relation, year=year, source=source, **kw)).premium


def cancel(stub: Any, payee: str, year: str = YEAR) -> ppb.ResidentPremium:
    return stub.CancelResidentPremium(ppb.CancelResidentPremiumRequest(
        request_id=rid("cancel"), payee_id_number=payee, year=year)).premium


def status(stub: Any, pid: str) -> int:
    return int(stub.GetPerson(pb.GetPersonRequest(id_number=pid)).person.status)


def set_status(stub: Any, pid: str, value: int) -> None:
    stub.UpdatePersonStatus(pb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=pid, status=value))


def stopped_at(registry: Any, point: str, call: Callable[[], Any]) -> None:
    """`call` with the registry stopping at fault point `point` (as if its process died there): the
    call fails, and whatever the registry wrote before that point stays."""
    def crash(p: str) -> None:
        if p == point:
            raise InjectedFault(p)

    registry.fault_hook = crash
    try:
        with pytest.raises(grpc.RpcError):
            call()
    finally:
        registry.fault_hook = None


def in_the_year_paid(registry: Any, clock: Any) -> None:
    """Today 2027-01-05, inside the insurance year paid (an extended period to 02-28): a payment
    insures a payee at once (SPEC §4b) and can still be cancelled."""
    registry.ctx.policy = dataclasses.replace(registry.ctx.policy, premium_extension_end="02-28")
    clock.set(int(datetime.datetime(2027, 1, 5, 10, 0, tzinfo=SHANGHAI).timestamp() * 1000))

def paid_for_a_child(reg: Any, was: int, fen: int, *, birth: str = "20100101",
                     request_id: str = "") -> tuple[str, str, ppb.ResidentPremium]:
    """A 甘肃 mother holding `fen` who pays, inside the insurance year (`in_the_year_paid`), from her
    account the premium of her resident child born `birth`, whose status was `was`: (mother, child,
    the payment)."""
    stub = reg.stub
    mother, child = enroll(stub, **GS), enroll(stub, itype=RESIDENT, birth=birth, **GS)
    credit(stub, mother, fen)
    set_status(stub, child, was)
    in_the_year_paid(reg.registry, reg.clock)
    return mother, child, pay(stub, mother, child, request_id=request_id or rid("prem"))


def test_premium_from_account_activates_payee_once_a_year_and_cancel_returns_it(start_registry, rdb):
    reg = start_registry("62")
    stub = reg.stub
    mother, father = enroll(stub, **GS), enroll(stub, birth="19790101", **GS)
    child = enroll(stub, itype=RESIDENT, birth="20100101", **GS)
    credit(stub, mother, 100_000)
    credit(stub, father, 100_000)
    set_status(stub, child, cpb.PERSON_STATUS_SUSPENDED)  # last year's premium unpaid
    in_the_year_paid(reg.registry, reg.clock)
    p = pay(stub, mother, child, request_id="prem-1")
    assert (p.payer_id_number, p.payee_id_number, p.year, p.amount_fen, p.state) == (mother, child, YEAR, PREMIUM,
                                                                                    "PAID")
    assert status(stub, child) == cpb.PERSON_STATUS_ACTIVE  # paying is what makes them insured
    assert balance(stub, mother) == 100_000 - PREMIUM
    assert pay(stub, mother, child, request_id="prem-1") == p  # a replay answers the same, pays once
    assert balance(stub, mother) == 100_000 - PREMIUM
    refused(rdb, lambda: pay(stub, father, child), grpc.StatusCode.ALREADY_EXISTS, "PREMIUM_ALREADY_PAID")
    for q in (ppb.ListResidentPremiumsRequest(year=YEAR), ppb.ListResidentPremiumsRequest(payer_id_number=mother),
              ppb.ListResidentPremiumsRequest(payee_id_number=child)):
        assert [x.premium_id for x in stub.ListResidentPremiums(q).premiums] == ["prem-1"]
    assert not stub.ListResidentPremiums(ppb.ListResidentPremiumsRequest(payer_id_number=father)).premiums
    # Cancelled inside the window: the money back where it came from, the payee as before.
    c = cancel(stub, child)
    assert c.state == "CANCELLED" and balance(stub, mother) == 100_000
    assert status(stub, child) == cpb.PERSON_STATUS_SUSPENDED
    refused(rdb, lambda: cancel(stub, child), FP, "PREMIUM_NOT_PAID")
    # Then the father may pay it.
    assert pay(stub, father, child).payer_id_number == father and balance(stub, father) == 100_000 - PREMIUM
    report = verdict.check(rdb)
    assert report.conserved and report.premiums_net_fen == PREMIUM, report.as_dict()


def test_premium_reason_codes_refuse_and_write_nothing(start_registry, rdb):
    stub = start_registry("62").stub
    payer = enroll(stub, **GS)
    poor = enroll(stub, birth="19790101", **GS)
    resident_payer = enroll(stub, itype=RESIDENT, birth="19790101", **GS)
    child = enroll(stub, itype=RESIDENT, birth="20100101", **GS)
    employee_child = enroll(stub, birth="20000101", **GS)
    credit(stub, payer, 100_000)
    credit(stub, poor, 100)
    refused(rdb, lambda: pay(stub, payer, child, year="2026"), FP, "OUTSIDE_PREMIUM_WINDOW")
    refused(rdb, lambda: pay(stub, payer, employee_child), FP, "PAYEE_NOT_RESIDENT")
    refused(rdb, lambda: pay(stub, payer, child, relation=cpb.RELATION_CHILD_IN_LAW), FP, "RELATION_NOT_ALLOWED")
    refused(rdb, lambda: pay(stub, child, child), grpc.StatusCode.INVALID_ARGUMENT, "SELF_PAYMENT")
    refused(rdb, lambda: pay(stub, poor, child), FP, "INSUFFICIENT_BALANCE")
    refused(rdb, lambda: pay(stub, resident_payer, child), FP, "HELPER_NOT_EMPLOYEE")
    refused(rdb, lambda: pay(stub, payer, child, ppb.PREMIUM_SOURCE_WALLET), FP, "WALLET_NOT_OPENED")
    refused(rdb, lambda: pay(stub, payer, child, year="27"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_YEAR")
    # Full-width digits pass str.isdigit(): a year is four ASCII digits, as everywhere else.
    refused(rdb, lambda: pay(stub, payer, child, year="20２7"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_YEAR")
    refused(rdb, lambda: cancel(stub, child), FP, "PREMIUM_NOT_PAID")


def test_premium_not_set_for_the_year(start_registry, rdb):
    stub = start_registry("62", policy=dataclasses.replace(policy_for("62"), resident_premium_fen={})).stub
    payer, child = enroll(stub, **GS), enroll(stub, itype=RESIDENT, birth="20100101", **GS)
    credit(stub, payer, 100_000)
    refused(rdb, lambda: pay(stub, payer, child), FP, "PREMIUM_NOT_SET")


def test_cancel_outside_the_window_is_refused(start_registry, rdb):
    reg = start_registry("62")
    stub = reg.stub
    payer, child = enroll(stub, **GS), enroll(stub, itype=RESIDENT, birth="20100101", **GS)
    credit(stub, payer, 100_000)
    pay(stub, payer, child)
    reg.clock.advance(45 * 24 * 3600 * 1000)  # 2027-01-06: the window closed on 12-31
    refused(rdb, lambda: cancel(stub, child), FP, "OUTSIDE_PREMIUM_WINDOW")


def test_premium_from_a_family_account_charges_contributors_and_cancel_refills_the_lots(start_registry, rdb):
    stub = start_registry("35").stub
    creator, son = enroll(stub, **FJ), enroll(stub, birth="19900101", **FJ)
    aunt = enroll(stub, itype=RESIDENT, birth="19600101", **FJ)
    credit(stub, creator, 230_000)
    credit(stub, son, 230_000)
    fid = stub.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
        request_id=rid("fam"), creator_id_number=creator, commitment=FACE,
        initial_transfer_fen=25_000)).account.family_id
    stub.InviteMember(fpb.InviteMemberRequest(request_id=rid("inv"), family_id=fid, creator_id_number=creator,
                                              member_id_number=son, relation=cpb.RELATION_CHILD))
    stub.RespondToInvitation(fpb.RespondToInvitationRequest(request_id=rid("acc"), family_id=fid,
                                                            member_id_number=son, accept=True, verification=FACE))
    stub.TransferIntoFamilyAccount(fpb.TransferIntoFamilyAccountRequest(
        request_id=rid("hb"), family_id=fid, contributor_id_number=son, amount_fen=30_000))
    # 福建 临时成员: joins without face verification; the account may pay her premium.
    stub.InviteMember(fpb.InviteMemberRequest(request_id=rid("inv"), family_id=fid, creator_id_number=creator,
                                              member_id_number=aunt, relation=cpb.RELATION_SIBLING, temporary=True))
    p = pay(stub, creator, aunt, ppb.PREMIUM_SOURCE_FAMILY_ACCOUNT, relation=cpb.RELATION_SIBLING, family_id=fid)
    assert p.contributors == f"{creator}:25000,{son}:15000"  # oldest contribution first
    account = stub.GetFamilyAccount(fpb.GetFamilyAccountRequest(family_id=fid)).account
    assert account.balance_fen == 15_000
    assert status(stub, aunt) == cpb.PERSON_STATUS_ACTIVE
    cancel(stub, aunt)
    account = stub.GetFamilyAccount(fpb.GetFamilyAccountRequest(family_id=fid)).account
    assert {s.id_number: s.share_fen for s in account.shares} == {creator: 25_000, son: 30_000}
    report = verdict.check(rdb)
    assert report.conserved and report.premiums_net_fen == 0, report.as_dict()
    # Not a member of the family account: refused, nothing written.
    stranger = enroll(stub, itype=RESIDENT, birth="19600101", **FJ)
    refused(rdb, lambda: pay(stub, creator, stranger, ppb.PREMIUM_SOURCE_FAMILY_ACCOUNT, relation=cpb.RELATION_SIBLING,
                             family_id=fid), FP, "NOT_FAMILY_MEMBER")


def _fujian_family_with_a_temporary_aunt(stub: Any) -> tuple[str, str, str, str]:
    """A 福建 family account holding two premiums, its creator, an aunt invited as 临时成员 and a child
    under 16 (a member at once): (creator, aunt, kid, family id)."""
    creator = enroll(stub, **FJ)
    aunt = enroll(stub, itype=RESIDENT, birth="19600101", **FJ)
    kid = enroll(stub, itype=RESIDENT, birth="20150101", **FJ)
    credit(stub, creator, 400_000)
    fid = stub.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
        request_id=rid("fam"), creator_id_number=creator, commitment=FACE,
        initial_transfer_fen=2 * PREMIUM)).account.family_id
    stub.InviteMember(fpb.InviteMemberRequest(request_id=rid("inv"), family_id=fid, creator_id_number=creator,
                                              member_id_number=aunt, relation=cpb.RELATION_SIBLING, temporary=True))
    stub.InviteMember(fpb.InviteMemberRequest(request_id=rid("inv"), family_id=fid, creator_id_number=creator,
                                              member_id_number=kid, relation=cpb.RELATION_CHILD))
    return creator, aunt, kid, fid


def test_fujian_temporary_member_cannot_spend_the_family_account_on_another(start_registry, rdb):
    """SPEC §3b: a 福建 临时成员 joins without face verification and the account pays only their own
    resident premium, nothing else: they cannot direct its money to another member's premium (a full
    member can, and the creator can pay theirs)."""
    stub = start_registry("35").stub
    creator, aunt, kid, fid = _fujian_family_with_a_temporary_aunt(stub)
    refused(rdb, lambda: pay(stub, aunt, kid, ppb.PREMIUM_SOURCE_FAMILY_ACCOUNT, relation=cpb.RELATION_GRANDCHILD,
                             family_id=fid), FP, "TEMPORARY_MEMBER")
    assert pay(stub, creator, kid, ppb.PREMIUM_SOURCE_FAMILY_ACCOUNT, family_id=fid).state == "PAID"
    assert pay(stub, creator, aunt, ppb.PREMIUM_SOURCE_FAMILY_ACCOUNT, relation=cpb.RELATION_SIBLING,
               family_id=fid).state == "PAID"
    assert stub.GetFamilyAccount(fpb.GetFamilyAccountRequest(family_id=fid)).account.balance_fen == 0


def test_a_member_pays_their_own_premium_from_the_family_account(start_registry, rdb):
    """SPEC §3b: a 福建 临时成员's family account pays their resident premium (临时成员只能用家庭共济账户
    缴纳本人城乡居民医保), so the member may pay it themselves: payer = payee, source FAMILY_ACCOUNT, no
    relation, with the window, amount and once a year of every 代缴; a full member too. From a
    personal account one's own premium stays SELF_PAYMENT."""
    stub = start_registry("35").stub
    creator, aunt, kid, fid = _fujian_family_with_a_temporary_aunt(stub)
    refused(rdb, lambda: pay(stub, aunt, aunt, ppb.PREMIUM_SOURCE_FAMILY_ACCOUNT, family_id=fid),
            grpc.StatusCode.INVALID_ARGUMENT, "INVALID_RELATION")
    refused(rdb, lambda: pay(stub, aunt, aunt, relation=0), grpc.StatusCode.INVALID_ARGUMENT, "SELF_PAYMENT")
    p = pay(stub, aunt, aunt, ppb.PREMIUM_SOURCE_FAMILY_ACCOUNT, relation=0, family_id=fid)
    assert (p.payer_id_number, p.payee_id_number, p.relation, p.amount_fen, p.state, p.contributors) == \
        (aunt, aunt, cpb.RELATION_UNSPECIFIED, PREMIUM, "PAID", f"{creator}:{PREMIUM}")
    refused(rdb, lambda: pay(stub, aunt, aunt, ppb.PREMIUM_SOURCE_FAMILY_ACCOUNT, relation=0, family_id=fid),
            grpc.StatusCode.ALREADY_EXISTS, "PREMIUM_ALREADY_PAID")
    assert pay(stub, kid, kid, ppb.PREMIUM_SOURCE_FAMILY_ACCOUNT, relation=0, family_id=fid).state == "PAID"
    assert stub.GetFamilyAccount(fpb.GetFamilyAccountRequest(family_id=fid)).account.balance_fen == 0
    cancel(stub, aunt)
    account = stub.GetFamilyAccount(fpb.GetFamilyAccountRequest(family_id=fid)).account
    assert {s.id_number: s.share_fen for s in account.shares} == {creator: PREMIUM}
    report = verdict.check(rdb)
    assert report.conserved and report.premiums_net_fen == PREMIUM, report.as_dict()


def test_a_premium_is_taken_apart_from_a_bill_or_credit_that_used_its_id(start_registry, rdb):
    """A 代缴's money moves are made once under an id of their own: a bill whose request id was
    'prem:<the premium's id>' (paid in part by the family account) and a credit whose request id was
    'prem:<another premium's id>' are other requests. Each premium is taken in full, the bill stays
    paid, and every fen is accounted for (SPEC §4b, §7)."""
    stub = start_registry("35").stub
    creator = enroll(stub, **FJ)
    aunt = enroll(stub, itype=RESIDENT, birth="19600101", **FJ)
    uncle = enroll(stub, itype=RESIDENT, birth="19620101", **FJ)
    credit(stub, creator, 300_000)
    fid = stub.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
        request_id=rid("fam"), creator_id_number=creator, commitment=FACE,
        initial_transfer_fen=100_000)).account.family_id
    stub.InviteMember(fpb.InviteMemberRequest(request_id=rid("inv"), family_id=fid, creator_id_number=creator,
                                              member_id_number=aunt, relation=cpb.RELATION_SIBLING))
    stub.RespondToInvitation(fpb.RespondToInvitationRequest(request_id=rid("acc"), family_id=fid,
                                                            member_id_number=aunt, accept=True, verification=FACE))
    bill = stub.Settle(pb.SettleRequest(request_id="prem:P1", patient_id_number=aunt, amount_fen=30_000,
                                        use_account=True, category=cpb.CATEGORY_OUTPATIENT,
                                        institution_code="H35020000001", institution_admdvs="350200")).result
    assert bill.mulaid_pay_fen == 30_000
    p = pay(stub, creator, aunt, ppb.PREMIUM_SOURCE_FAMILY_ACCOUNT, relation=cpb.RELATION_SIBLING, family_id=fid,
            request_id="P1")
    assert p.state == "PAID" and p.contributors == f"{creator}:{PREMIUM}"
    assert stub.GetFamilyAccount(fpb.GetFamilyAccountRequest(family_id=fid)).account.balance_fen == 30_000
    stub.CreditAccount(pb.CreditAccountRequest(request_id="prem:P2", id_number=creator, amount_fen=1_000,
                                               kind=pb.CREDIT_KIND_MONTHLY_CONTRIBUTION, period="202611"))
    assert pay(stub, creator, uncle, relation=cpb.RELATION_SIBLING, request_id="P2").state == "PAID"
    assert balance(stub, creator) == 200_000 + 1_000 - PREMIUM
    report = verdict.check(rdb)
    assert report.conserved and report.premiums_net_fen == 2 * PREMIUM, report.as_dict()


def _wallet_family(national: Any) -> tuple[Any, Any, str, str, Callable[[], int]]:
    """A 甘肃 mother whose 医保钱包 holds ¥500 from her 河北 mother, and her resident child."""
    w, gs, hb = national.wallet.stub, national.reg("62"), national.reg("13")
    grandma, mother = enroll(hb, birth="19550101"), enroll(gs, **GS)  # grandma works in 河北
    child = enroll(gs, itype=RESIDENT, birth="20100101", **GS)
    credit(hb, grandma, 200_000)
    for owner, prov, place in ((grandma, "13", "130100"), (mother, "62", "620100")):
        w.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=owner, province=prov,
                                           use_place_admdvs=place, real_name=FACE))
    t = w.CreateTransfer(wpb.CreateTransferRequest(request_id=rid("x"), sender_id_number=grandma, sender_province="13",
                                                   recipient_id_number=mother, relation=cpb.RELATION_CHILD,
                                                   amount_fen=50_000, verification=FACE)).transfer
    w.AcceptTransfer(wpb.AcceptTransferRequest(request_id=rid("a"), transfer_id=t.transfer_id,
                                               recipient_id_number=mother))

    def wallet_balance() -> int:
        return int(w.GetWallet(wpb.GetWalletRequest(owner_id_number=mother)).wallet.balance_fen)

    return w, gs, mother, child, wallet_balance


def test_premium_from_a_wallet_and_cancelled_back_into_it(national, rdb):
    _, gs, mother, child, wallet_balance = _wallet_family(national)
    assert wallet_balance() == 50_000
    p = pay(gs, mother, child, ppb.PREMIUM_SOURCE_WALLET)
    assert p.source == ppb.PREMIUM_SOURCE_WALLET and wallet_balance() == 10_000
    assert balance(gs, mother) == 0  # her own account never paid
    cancel(gs, child)
    assert wallet_balance() == 50_000
    assert verdict.check(rdb).conserved


def test_a_resident_pays_their_own_premium_from_their_wallet(national, rdb):
    """SPEC §5: 医保钱包 money pays 居民医保 premiums; the payment is the registry's, with its window,
    amount and once a year, and it makes the resident ACTIVE. Payer = payee, source WALLET, no relation."""
    w, gs, hb = national.wallet.stub, national.reg("62"), national.reg("13")
    daughter, elder = enroll(hb, birth="19800101"), enroll(gs, itype=RESIDENT, birth="19500101", **GS)
    credit(hb, daughter, 200_000)
    open_wallet(national, elder, "62", "620100")
    fund(national, daughter, "13", elder, 50_000)
    set_status(gs, elder, cpb.PERSON_STATUS_SUSPENDED)  # the year not paid yet
    in_the_year_paid(national.registries["62"].registry, national.clock)

    def wallet_balance() -> int:
        return int(w.GetWallet(wpb.GetWalletRequest(owner_id_number=elder)).wallet.balance_fen)

    # Not from an account, and naming no relation; and never by the wallet's own PayPremium.
    refused(rdb, lambda: pay(gs, elder, elder, relation=0), grpc.StatusCode.INVALID_ARGUMENT, "SELF_PAYMENT")
    refused(rdb, lambda: pay(gs, elder, elder, ppb.PREMIUM_SOURCE_WALLET), grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_RELATION")
    refused(rdb, lambda: w.PayPremium(wpb.PayPremiumRequest(
        request_id=rid("prem"), owner_id_number=elder, amount_fen=1, category=cpb.CATEGORY_RESIDENT_PREMIUM,
        period=YEAR)), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PREMIUM_CATEGORY")
    p = pay(gs, elder, elder, ppb.PREMIUM_SOURCE_WALLET, relation=0)
    assert (p.payer_id_number, p.payee_id_number, p.relation, p.state) == (elder, elder, cpb.RELATION_UNSPECIFIED,
                                                                           "PAID")
    assert wallet_balance() == 50_000 - p.amount_fen and p.amount_fen > 0
    assert status(gs, elder) == cpb.PERSON_STATUS_ACTIVE
    listed = gs.ListResidentPremiums(ppb.ListResidentPremiumsRequest(payee_id_number=elder)).premiums
    assert [x.premium_id for x in listed] == [p.premium_id]
    refused(rdb, lambda: pay(gs, elder, elder, ppb.PREMIUM_SOURCE_WALLET, relation=0), grpc.StatusCode.ALREADY_EXISTS,
            "PREMIUM_ALREADY_PAID")
    cancel(gs, elder)
    assert wallet_balance() == 50_000
    assert verdict.check(rdb).conserved


@pytest.mark.parametrize("point", ["premium.after_open", "premium.after_debit"])
def test_crash_inside_a_premium_payment_is_finished_or_undone_by_recovery(start_registry, rdb, loop_thread, point):
    reg = start_registry("62")
    stub = reg.stub
    payer, child = enroll(stub, **GS), enroll(stub, itype=RESIDENT, birth="20100101", **GS)
    credit(stub, payer, 100_000)

    stopped_at(reg.registry, point, lambda: pay(stub, payer, child, request_id="prem-crash"))
    reg.clock.advance(60_000)
    assert loop_thread.run(reg.registry.recover()).family == 1
    assert balance(stub, payer) == 100_000 - PREMIUM and not rdb.zcard("reg:62:{open}:setl")
    assert status(stub, child) == cpb.PERSON_STATUS_ACTIVE
    again = pay(stub, payer, child, request_id="prem-crash")  # the resend answers what recovery finished
    assert again.state == "PAID" and balance(stub, payer) == 100_000 - PREMIUM


def test_premium_resent_after_a_crash_past_the_debit_is_paid_not_refused(start_registry, rdb):
    """The payer had exactly the premium: after the debit their balance is 0, and the resend must finish
    the payment, not judge it afresh (INSUFFICIENT_BALANCE)."""
    reg = start_registry("62")
    stub = reg.stub
    payer, child = enroll(stub, **GS), enroll(stub, itype=RESIDENT, birth="20100101", **GS)
    credit(stub, payer, PREMIUM)

    stopped_at(reg.registry, "premium.after_debit", lambda: pay(stub, payer, child, request_id="prem-exact"))
    assert balance(stub, payer) == 0
    assert pay(stub, payer, child, request_id="prem-exact").state == "PAID"
    assert balance(stub, payer) == 0 and status(stub, child) == cpb.PERSON_STATUS_ACTIVE
    assert verdict.check(rdb).conserved


@pytest.mark.parametrize("point", ["premium.after_open", "premium.after_debit", "premium.after_cancel_refund"])
def test_wallet_premium_crash_finished_by_recovery(national, rdb, loop_thread, point):
    """代缴 from a wallet crosses to another service: cut after the record opened, after the wallet paid,
    or after the wallet was refunded, the recovery loop finishes it and the wallet moves once."""
    _, gs, mother, child, wallet_balance = _wallet_family(national)
    reg = national.registries["62"].registry
    cancelling = point == "premium.after_cancel_refund"
    if cancelling:
        pay(gs, mother, child, ppb.PREMIUM_SOURCE_WALLET)

    stopped_at(reg, point,
               lambda: cancel(gs, child) if cancelling else pay(gs, mother, child, ppb.PREMIUM_SOURCE_WALLET))
    national.clock.advance(60_000)
    assert loop_thread.run(reg.recover()).family == 1
    record = gs.ListResidentPremiums(ppb.ListResidentPremiumsRequest(payee_id_number=child)).premiums[0]
    assert record.state == ("CANCELLED" if cancelling else "PAID")
    assert wallet_balance() == (50_000 if cancelling else 10_000)
    assert verdict.check(rdb).conserved


def test_a_wallet_premium_recovery_dropped_cannot_be_debited_by_a_late_holder(national, rdb, loop_thread):
    """The holder stops before the wallet debit; meanwhile the wallet is spent elsewhere, so recovery
    drops the payment. That spend is then refunded: a holder that had stalled past its lease and
    whose debit only now reaches the wallet must take nothing for a premium that is not paid."""
    w, gs, mother, child, wallet_balance = _wallet_family(national)
    reg = national.registries["62"].registry

    stopped_at(reg, "premium.after_open",
               lambda: pay(gs, mother, child, ppb.PREMIUM_SOURCE_WALLET, request_id="prem-stall"))
    elsewhere = rid("spend")
    w.SpendWallet(wpb.SpendWalletRequest(request_id=elsewhere, owner_id_number=mother, amount_fen=20_000,
                                         category=cpb.CATEGORY_PHARMACY, spending_admdvs=GS["region"]))
    national.clock.advance(60_000)
    assert loop_thread.run(reg.recover()).family == 1
    assert not gs.ListResidentPremiums(ppb.ListResidentPremiumsRequest(payee_id_number=child)).premiums
    assert not rdb.zcard("reg:62:{open}:setl")
    w.RefundWalletSpend(wpb.RefundWalletSpendRequest(request_id=rid("ref"), spend_id=elsewhere,
                                                     owner_id_number=mother))
    assert wallet_balance() == 50_000
    with pytest.raises(grpc.RpcError) as late:
        w.SpendWallet(wpb.SpendWalletRequest(request_id=money_ref("62", "prem-stall"), owner_id_number=mother,
                                             amount_fen=PREMIUM, category=cpb.CATEGORY_RESIDENT_PREMIUM,
                                             spending_admdvs=GS["region"]))
    assert (late.value.code(), reason(late.value)) == (FP, "SPEND_CANCELLED")
    assert wallet_balance() == 50_000
    assert verdict.check(rdb).conserved
    # The same request again is refused, and says that a new request id is needed (its spend id is barred).
    with pytest.raises(grpc.RpcError) as again:
        pay(gs, mother, child, ppb.PREMIUM_SOURCE_WALLET, request_id="prem-stall")
    assert (again.value.code(), reason(again.value)) == (FP, "WALLET_INSUFFICIENT")
    assert "new request id" in again.value.details() and wallet_balance() == 50_000
    # A new request pays it.
    assert pay(gs, mother, child, ppb.PREMIUM_SOURCE_WALLET).state == "PAID" and wallet_balance() == 10_000


def test_a_family_premium_paid_before_records_kept_their_money_ref_is_cancelled_back(start_registry, rdb):
    """A 代缴 record opened before records kept their money ref (`mref`) took its money under
    'prem:<premium id>'; its cancellation gives that charge back to the family account's lots."""
    running = start_registry("62")
    stub, k = running.stub, running.registry.k
    creator, child, fid = _gansu_family(stub, 100_000, 45_000)
    p = pay(stub, creator, child, ppb.PREMIUM_SOURCE_FAMILY_ACCOUNT, family_id=fid, request_id="P-old")
    assert p.state == "PAID"
    mref = rdb.hget(k.premium(child, YEAR), "mref")
    assert mref is not None and rdb.hdel(k.premium(child, YEAR), "mref") == 1
    applied = k.family_applied(fid)
    rdb.hset(applied, "prem:P-old", rdb.hget(applied, mref))
    rdb.hdel(applied, mref)
    assert stub.GetFamilyAccount(fpb.GetFamilyAccountRequest(family_id=fid)).account.balance_fen == 5_000
    assert cancel(stub, child).state == "CANCELLED"
    assert stub.GetFamilyAccount(fpb.GetFamilyAccountRequest(family_id=fid)).account.balance_fen == 45_000
    assert verdict.check(rdb).conserved


def _death(stub: Any, pid: str, heir: str) -> None:
    stub.RecordDeath(pb.RecordDeathRequest(request_id=rid("death"), id_number=pid, heir_id_number=heir,
                                           date_of_death="20261121"))


def test_no_premium_for_a_payee_who_died_and_a_cancel_leaves_the_death(start_registry, rdb):
    """SPEC §5b: a death is final. Paying is what makes a payee insured, but not a payee whose death is
    recorded; and cancelling a premium paid before the death puts the money back without undoing it."""
    stub = start_registry("62").stub
    mother = enroll(stub, **GS)
    gone = enroll(stub, itype=RESIDENT, birth="20100101", **GS)
    child = enroll(stub, itype=RESIDENT, birth="20120101", **GS)
    credit(stub, mother, 100_000)
    _death(stub, gone, mother)
    refused(rdb, lambda: pay(stub, mother, gone), FP, "PERSON_DECEASED")
    assert status(stub, gone) == cpb.PERSON_STATUS_DECEASED
    set_status(stub, child, cpb.PERSON_STATUS_SUSPENDED)
    pay(stub, mother, child)
    _death(stub, child, mother)
    assert cancel(stub, child).state == "CANCELLED" and balance(stub, mother) == 100_000
    assert status(stub, child) == cpb.PERSON_STATUS_DECEASED
    assert verdict.check(rdb).conserved


def test_a_cancel_after_the_payee_moved_province_leaves_them_terminated(start_registry, rdb):
    """A payee who moved province since the payment stays TERMINATED there (SPEC §5b) when the premium
    is cancelled: the status from before the payment is not put back."""
    stub = start_registry("62").stub
    mother, child = enroll(stub, **GS), enroll(stub, itype=RESIDENT, birth="20100101", **GS)
    credit(stub, mother, 100_000)
    set_status(stub, child, cpb.PERSON_STATUS_SUSPENDED)
    pay(stub, mother, child)
    stub.UpdatePersonStatus(pb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=child,
                                                         status=cpb.PERSON_STATUS_TERMINATED, moved_to_province="11"))
    assert cancel(stub, child).state == "CANCELLED" and balance(stub, mother) == 100_000
    moved = stub.GetPerson(pb.GetPersonRequest(id_number=child)).person
    assert (moved.status, moved.moved_to_province) == (cpb.PERSON_STATUS_TERMINATED, "11")


def test_a_death_recorded_while_a_premium_is_paid_is_not_undone(start_registry, rdb, loop_thread):
    """A death takes no lock of the payee. Recorded between the decision to pay and the record's
    opening, the payment is not opened (CONTENDED; the resend is refused); recorded after the opening,
    the payment is finished but the payee stays DECEASED."""
    reg = start_registry("62")
    stub, k = reg.stub, reg.registry.k
    mother = enroll(stub, **GS)
    first = enroll(stub, itype=RESIDENT, birth="20100101", **GS)
    second = enroll(stub, itype=RESIDENT, birth="20120101", **GS)
    credit(stub, mother, 100_000)

    def die_before_open(p: str) -> None:  # the death's first write, as RecordDeath makes it
        if p == "premium.before_open":
            rdb.hset(k.person(first), "status", "DECEASED")

    reg.registry.fault_hook = die_before_open
    with pytest.raises(grpc.RpcError) as ei:
        pay(stub, mother, first, request_id="prem-race")
    reg.registry.fault_hook = None
    assert (ei.value.code(), reason(ei.value)) == (grpc.StatusCode.UNAVAILABLE, "CONTENDED")
    assert not rdb.exists(k.premium(first, YEAR)) and not rdb.zcard("reg:62:{open}:setl")
    refused(rdb, lambda: pay(stub, mother, first, request_id="prem-race"), FP, "PERSON_DECEASED")
    assert status(stub, first) == cpb.PERSON_STATUS_DECEASED and balance(stub, mother) == 100_000

    stopped_at(reg.registry, "premium.after_open", lambda: pay(stub, mother, second, request_id="prem-open"))
    _death(stub, second, mother)
    reg.clock.advance(60_000)
    assert loop_thread.run(reg.registry.recover()).family == 1
    assert pay(stub, mother, second, request_id="prem-open").state == "PAID"
    assert status(stub, second) == cpb.PERSON_STATUS_DECEASED and balance(stub, mother) == 100_000 - PREMIUM
    assert verdict.check(rdb).conserved


def test_a_payer_who_died_while_the_premium_was_paid_pays_nothing_after_death(start_registry, rdb):
    """A death takes no lock of the payer: one recorded after the payment opened, its payout still to
    come, leaves the account to the heir; the payment is dropped (HELPER_NOT_ACTIVE) and the death,
    finished, pays the whole balance out."""
    reg = start_registry("62")
    stub = reg.stub
    payer, child, heir = enroll(stub, **GS), enroll(stub, itype=RESIDENT, birth="20100101", **GS), enroll(stub, **GS)
    credit(stub, payer, 100_000)
    point = "premium.after_open"

    def crash(p: str) -> None:
        if p == point:
            raise InjectedFault(p)

    reg.registry.fault_hook = crash
    with pytest.raises(grpc.RpcError):
        pay(stub, payer, child, request_id="prem-dead-payer")
    point = "death.after_status"  # the payer's status is DECEASED; the payout is still to come
    death = pb.RecordDeathRequest(request_id=rid("death"), id_number=payer, heir_id_number=heir,
                                  date_of_death="20261121")
    with pytest.raises(grpc.RpcError):
        stub.RecordDeath(death)
    reg.registry.fault_hook = None
    with pytest.raises(grpc.RpcError) as ei:
        pay(stub, payer, child, request_id="prem-dead-payer")
    assert (ei.value.code(), reason(ei.value)) == (FP, "HELPER_NOT_ACTIVE")
    assert not stub.ListResidentPremiums(ppb.ListResidentPremiumsRequest(payee_id_number=child)).premiums
    assert stub.RecordDeath(death).paid_out_fen == 100_000
    assert verdict.check(rdb).conserved


def test_a_payee_insured_in_another_province_is_refused_cross_province(start_registry, rdb):
    """The payee must be insured (or enrolling) here: one the national person directory finds insured
    in another province, or who moved there, is told CROSS_PROVINCE (with that province), not to enrol
    here first."""
    gs, hb = start_registry("62").stub, start_registry("13").stub
    mother, moved = enroll(gs, **GS), enroll(gs, itype=RESIDENT, birth="20120101", **GS)
    hebei_child = enroll(hb, itype=RESIDENT, birth="20100101")
    credit(gs, mother, 100_000)
    gs.UpdatePersonStatus(pb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=moved,
                                                       status=cpb.PERSON_STATUS_TERMINATED, moved_to_province="11"))
    for payee, province in ((hebei_child, "13"), (moved, "11")):
        before = snapshot(rdb)
        with pytest.raises(grpc.RpcError) as ei:
            pay(gs, mother, payee)
        assert (ei.value.code(), reason(ei.value)) == (FP, "CROSS_PROVINCE")
        info = error_info(ei.value)
        assert info is not None and info.metadata["member_province"] == province
        assert snapshot(rdb) == before


def test_the_wallet_hears_the_status_a_premium_lifts_or_a_cancel_puts_back(national, rdb):
    """Only an ACTIVE owner spends from a 医保钱包, as the wallet last heard from the registry: a SUSPENDED
    resident whose premium is paid spends their wallet again, and not once it is cancelled."""
    w, gs, hb = national.wallet.stub, national.reg("62"), national.reg("13")
    daughter, mother = enroll(hb, birth="19800101"), enroll(gs, **GS)
    elder = enroll(gs, itype=RESIDENT, birth="19500101", **GS)
    credit(hb, daughter, 200_000)
    credit(gs, mother, 100_000)
    open_wallet(national, elder, "62", "620100")
    fund(national, daughter, "13", elder, 50_000)
    set_status(gs, elder, cpb.PERSON_STATUS_SUSPENDED)

    def spend() -> str:
        try:
            w.SpendWallet(wpb.SpendWalletRequest(request_id=rid("spend"), owner_id_number=elder, amount_fen=100,
                                                 category=cpb.CATEGORY_PHARMACY, spending_admdvs=GS["region"]))
        except grpc.RpcError as exc:
            return reason(exc)
        return "SPENT"

    assert spend() == "OWNER_NOT_INSURED"
    in_the_year_paid(national.registries["62"].registry, national.clock)
    pay(gs, mother, elder, relation=cpb.RELATION_PARENT)
    assert spend() == "SPENT"
    cancel(gs, elder)
    assert spend() == "OWNER_NOT_INSURED"
    assert verdict.check(rdb).conserved


def test_a_cancel_that_puts_a_termination_back_ends_what_the_payment_allowed(start_registry, rdb):
    """A TERMINATED resident is insured again by their premium (SPEC §4b) and may be bound meanwhile;
    cancelling it makes them TERMINATED again, and a binding ends when a side is TERMINATED (SPEC §3)."""
    reg = start_registry("13")
    stub = reg.stub
    mother, child = enroll(stub), enroll(stub, itype=RESIDENT, birth="20100101")
    credit(stub, mother, 100_000)
    set_status(stub, child, cpb.PERSON_STATUS_TERMINATED)
    in_the_year_paid(reg.registry, reg.clock)
    pay(stub, mother, child)
    assert status(stub, child) == cpb.PERSON_STATUS_ACTIVE
    bind(stub, mother, child)
    cancel(stub, child)
    assert status(stub, child) == cpb.PERSON_STATUS_TERMINATED
    (binding,) = stub.ListBindings(pb.ListBindingsRequest(id_number=child, include_ended=True)).as_member
    assert (binding.active, binding.end_reason) == (False, "MEMBER_TERMINATED")
    assert balance(stub, mother) == 100_000


def test_a_wallet_payer_who_died_while_the_premium_was_paid_pays_nothing_after_death(national, rdb):
    """The wallet takes a 居民医保 premium whatever its owner's status (one's own is paid before ACTIVE):
    the registry checks a 代缴 payer is still ACTIVE before the wallet debit, as for an account."""
    _, gs, mother, child, wallet_balance = _wallet_family(national)
    reg = national.registries["62"].registry
    heir = enroll(gs, **GS)
    point = "premium.after_open"

    def crash(p: str) -> None:
        if p == point:
            raise InjectedFault(p)

    reg.fault_hook = crash
    with pytest.raises(grpc.RpcError):
        pay(gs, mother, child, ppb.PREMIUM_SOURCE_WALLET, request_id="prem-dead-wallet")
    point = "death.after_status"  # DECEASED; her lots not yet sent home
    death = pb.RecordDeathRequest(request_id=rid("death"), id_number=mother, heir_id_number=heir,
                                  date_of_death="20261121")
    with pytest.raises(grpc.RpcError):
        gs.RecordDeath(death)
    reg.fault_hook = None
    with pytest.raises(grpc.RpcError) as ei:
        pay(gs, mother, child, ppb.PREMIUM_SOURCE_WALLET, request_id="prem-dead-wallet")
    assert (ei.value.code(), reason(ei.value)) == (FP, "HELPER_NOT_ACTIVE")
    assert wallet_balance() == 50_000
    assert gs.RecordDeath(death).wallet_returned_fen == 50_000
    assert verdict.check(rdb).conserved


def test_a_premium_dropped_for_want_of_money_says_a_new_request_id_is_needed(start_registry, rdb):
    """The account debit's first outcome sticks to the premium id (a VOID one cannot be taken later):
    once the payment is dropped, the same id is refused, before the account is topped up and after,
    and each refusal says to send a new request id, which pays."""
    reg = start_registry("62")
    stub = reg.stub
    payer, child = enroll(stub, **GS), enroll(stub, itype=RESIDENT, birth="20100101", **GS)
    credit(stub, payer, PREMIUM)

    stopped_at(reg.registry, "premium.after_open", lambda: pay(stub, payer, child, request_id="prem-short"))
    stub.Settle(pb.SettleRequest(request_id=rid("bill"), patient_id_number=payer, amount_fen=PREMIUM, use_account=True,
                                 category=cpb.CATEGORY_PHARMACY, institution_code="H62010000001",
                                 institution_admdvs=GS["region"]))
    for topped_up in (False, True):
        if topped_up:
            credit(stub, payer, PREMIUM)
        with pytest.raises(grpc.RpcError) as ei:
            pay(stub, payer, child, request_id="prem-short")
        assert (ei.value.code(), reason(ei.value)) == (FP, "INSUFFICIENT_BALANCE")
        assert "send a new request id" in ei.value.details()  # topped up or not: this id can never pay
    assert balance(stub, payer) == PREMIUM
    assert pay(stub, payer, child).state == "PAID" and balance(stub, payer) == 0
    assert verdict.check(rdb).conserved


def test_an_extension_to_the_end_of_february_is_the_28th_outside_leap_years(start_registry, rdb):
    """A policy may extend the window to 02-29 (the policy loader takes it): in a year without one the
    extension ends on 02-28, and every payment is answered, not failed UNKNOWN."""
    policy = dataclasses.replace(policy_for("62"), premium_extension_end="02-29")
    assert premium_rules.window(policy, "2027")[1] == datetime.date(2027, 2, 28)
    assert premium_rules.window(policy, "2028")[1] == datetime.date(2028, 2, 29)
    stub = start_registry("62", policy=policy).stub
    payer, child = enroll(stub, **GS), enroll(stub, itype=RESIDENT, birth="20100101", **GS)
    credit(stub, payer, 100_000)
    assert pay(stub, payer, child).state == "PAID"
    with pytest.raises(grpc.RpcError) as ei:
        pay(stub, payer, child, year="2028")
    info = error_info(ei.value)
    assert info is not None and (info.reason, info.metadata["window_end"]) == ("OUTSIDE_PREMIUM_WINDOW", "2028-02-29")


def test_a_suspended_member_cannot_pay_a_premium_from_the_family_account(start_registry, rdb):
    """Only an ACTIVE payer pays (SPEC §1, §4b), from a family account too: a SUSPENDED member stays a
    member (their share still pays bills) but cannot have the account pay a near-kin's premium;
    refused HELPER_NOT_ACTIVE, nothing written. ACTIVE again, they can."""
    stub = start_registry("35").stub
    creator, son, aunt, fid = _fujian_family_with_a_paying_son(stub)
    set_status(stub, son, cpb.PERSON_STATUS_SUSPENDED)
    refused(rdb, lambda: pay(stub, son, aunt, ppb.PREMIUM_SOURCE_FAMILY_ACCOUNT, relation=cpb.RELATION_PARENT,
                             family_id=fid), FP, "HELPER_NOT_ACTIVE")
    set_status(stub, son, cpb.PERSON_STATUS_ACTIVE)
    p = pay(stub, son, aunt, ppb.PREMIUM_SOURCE_FAMILY_ACCOUNT, relation=cpb.RELATION_PARENT, family_id=fid)
    assert (p.state, p.contributors) == ("PAID", f"{creator}:{PREMIUM}")


def test_a_payee_of_another_region_is_paid_for_where_the_province_allows_cross_region(start_registry, rdb):
    """甘肃 allows cross-region 共济: a 兰州 employee pays a 天水 near-kin's premium from the personal account
    or from the family account. Where a province forbids it (`cross_region_allowed = false`) the rule
    that refuses such a binding, and a family account's 代缴 for them, refuses a personal account's
    代缴 too (DIFFERENT_POOLING_REGION, nothing written); a payee of the payer's own 统筹区 is paid."""
    stub = start_registry("62").stub
    payer = enroll(stub, **GS)
    far = enroll(stub, itype=RESIDENT, birth="20150101", region="620500", division="620502")
    far_kid = enroll(stub, itype=RESIDENT, birth="20160101", region="620500", division="620502")
    credit(stub, payer, 200_000)
    fid = stub.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
        request_id=rid("fam"), creator_id_number=payer, commitment=FACE,
        initial_transfer_fen=PREMIUM)).account.family_id
    stub.InviteMember(fpb.InviteMemberRequest(request_id=rid("inv"), family_id=fid, creator_id_number=payer,
                                              member_id_number=far_kid, relation=cpb.RELATION_CHILD))
    assert pay(stub, payer, far).state == "PAID"
    assert pay(stub, payer, far_kid, ppb.PREMIUM_SOURCE_FAMILY_ACCOUNT, family_id=fid).state == "PAID"
    assert balance(stub, payer) == 200_000 - 2 * PREMIUM
    strict = start_registry("62", policy=dataclasses.replace(policy_for("62"), cross_region_allowed=False)).stub
    other = enroll(strict, itype=RESIDENT, birth="20150101", region="620500", division="620502")
    near = enroll(strict, itype=RESIDENT, birth="20150101", **GS)
    refused(rdb, lambda: pay(strict, payer, other), FP, "DIFFERENT_POOLING_REGION")
    assert pay(strict, payer, near).state == "PAID"
    assert verdict.check(rdb).conserved


def test_a_premium_the_family_account_cannot_pay_is_refused_with_the_precise_reason(start_registry, rdb):
    """代缴 from a family account (福建): an empty account and one holding less than the premium say
    FAMILY_INSUFFICIENT, a payer outside the account NOT_A_MEMBER, a dissolved account
    FAMILY_NOT_ACTIVE; each with its own message, nothing written."""
    stub = start_registry("35").stub
    creator, stranger = enroll(stub, **FJ), enroll(stub, **FJ)
    aunt = enroll(stub, itype=RESIDENT, birth="19600101", **FJ)
    credit(stub, creator, 300_000)
    credit(stub, stranger, 300_000)
    fid = stub.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
        request_id=rid("fam"), creator_id_number=creator, commitment=FACE)).account.family_id
    stub.InviteMember(fpb.InviteMemberRequest(request_id=rid("inv"), family_id=fid, creator_id_number=creator,
                                              member_id_number=aunt, relation=cpb.RELATION_SIBLING, temporary=True))

    def from_family(payer: str) -> Callable[[], Any]:
        return lambda: pay(stub, payer, aunt, ppb.PREMIUM_SOURCE_FAMILY_ACCOUNT, relation=cpb.RELATION_SIBLING,
                           family_id=fid)

    def details(why: str, payer: str = creator) -> str:
        with pytest.raises(grpc.RpcError) as ei:
            from_family(payer)()
        assert reason(ei.value) == why
        return str(ei.value.details())

    refused(rdb, from_family(creator), FP, "FAMILY_INSUFFICIENT")
    assert details("FAMILY_INSUFFICIENT") == "the family account holds less than the premium"
    stub.TransferIntoFamilyAccount(fpb.TransferIntoFamilyAccountRequest(
        request_id=rid("hb"), family_id=fid, contributor_id_number=creator, amount_fen=PREMIUM - 1))
    refused(rdb, from_family(creator), FP, "FAMILY_INSUFFICIENT")
    refused(rdb, from_family(stranger), FP, "NOT_A_MEMBER")
    assert details("NOT_A_MEMBER", stranger) == "the person is not a member of this family account"
    stub.DissolveFamilyAccount(fpb.DissolveFamilyAccountRequest(request_id=rid("dis"), family_id=fid,
                                                                creator_id_number=creator))
    refused(rdb, from_family(creator), FP, "FAMILY_NOT_ACTIVE")


def _at(reg: Any, loop_thread: Any, day: datetime.datetime) -> None:
    """The registry's clock at `day` (Asia/Shanghai), and one pass of its loop."""
    reg.clock.set(int(day.replace(tzinfo=SHANGHAI).timestamp() * 1000))
    loop_thread.run(reg.registry.recover())


def test_a_premium_paid_for_next_year_insures_the_payee_from_that_year_on(start_registry, rdb, loop_thread):
    """Paying in the collection window (09-01 … 12-31 of the year before) insures the payee for the
    insurance year paid (SPEC §4b): a SUSPENDED payee is not insured for the rest of this year by it,
    and becomes ACTIVE when that year starts; paid inside the year (the extended period), at once."""
    policy = dataclasses.replace(policy_for("62"), premium_extension_end="02-28")
    reg = start_registry("62", policy=policy)
    stub = reg.stub
    mother = enroll(stub, **GS)
    child, other, gone, late = (enroll(stub, itype=RESIDENT, birth=f"201{n}0101", **GS) for n in range(4))
    credit(stub, mother, 200_000)
    for pid in (child, other, gone, late):
        set_status(stub, pid, cpb.PERSON_STATUS_SUSPENDED)  # this year's premium unpaid
    for pid in (child, other, gone):
        pay(stub, mother, pid)
    assert status(stub, child) == cpb.PERSON_STATUS_SUSPENDED  # 2026 is not paid for
    cancel(stub, other)  # cancelled before 2027: nothing to lift then
    set_status(stub, gone, cpb.PERSON_STATUS_TERMINATED)  # a status set since stays as it was set
    _at(reg, loop_thread, datetime.datetime(2026, 12, 31, 23, 59))
    assert status(stub, child) == cpb.PERSON_STATUS_SUSPENDED
    _at(reg, loop_thread, datetime.datetime(2027, 1, 1, 0, 0))
    assert status(stub, child) == cpb.PERSON_STATUS_ACTIVE
    assert status(stub, other) == cpb.PERSON_STATUS_SUSPENDED
    assert status(stub, gone) == cpb.PERSON_STATUS_TERMINATED
    # In the extended period, inside the year paid: insured from the payment on.
    pay(stub, mother, late)
    assert status(stub, late) == cpb.PERSON_STATUS_ACTIVE
    assert not rdb.keys("*prem*lift*")
    assert verdict.check(rdb).conserved


def test_a_status_set_back_and_forth_since_the_payment_is_not_overridden(start_registry, rdb, loop_thread):
    """An operator's decision since the payment stands, even one that ends where the payment left the
    payee (ACTIVE → TERMINATED → ACTIVE, SUSPENDED → ACTIVE → SUSPENDED): a cancellation puts back the
    status from before the payment, and the insurance year's start makes them ACTIVE, only when nothing
    set their status since the payment."""
    policy = dataclasses.replace(policy_for("62"), premium_extension_end="02-28")
    reg = start_registry("62", policy=policy)
    stub = reg.stub
    mother = enroll(stub, **GS)
    now, later = enroll(stub, itype=RESIDENT, birth="20100101", **GS), enroll(stub, itype=RESIDENT,
                                                                              birth="20120101", **GS)
    credit(stub, mother, 200_000)
    for pid in (now, later):
        set_status(stub, pid, cpb.PERSON_STATUS_SUSPENDED)
    pay(stub, mother, later)  # in the collection window: ACTIVE from 2027-01-01
    set_status(stub, later, cpb.PERSON_STATUS_ACTIVE)
    set_status(stub, later, cpb.PERSON_STATUS_SUSPENDED)  # the operator's last word
    _at(reg, loop_thread, datetime.datetime(2027, 1, 1, 0, 0))
    assert status(stub, later) == cpb.PERSON_STATUS_SUSPENDED
    pay(stub, mother, now)  # inside the year paid: ACTIVE at once
    assert status(stub, now) == cpb.PERSON_STATUS_ACTIVE
    set_status(stub, now, cpb.PERSON_STATUS_TERMINATED)
    set_status(stub, now, cpb.PERSON_STATUS_ACTIVE)  # reinstated by the operator, not by the payment
    assert cancel(stub, now).state == "CANCELLED" and balance(stub, mother) == 200_000 - PREMIUM
    assert status(stub, now) == cpb.PERSON_STATUS_ACTIVE
    assert verdict.check(rdb).conserved



def test_a_premium_paid_before_records_kept_the_status_version_is_cancelled_as_before(start_registry, rdb):
    """A record opened before records kept the payee's status version (`prev_sv`, `left_sv`) is
    cancelled by the rule it was paid under: the status from before the payment is put back while the
    payee is as the payment left them."""
    reg = start_registry("62")
    stub, k = reg.stub, reg.registry.k
    mother, child, _ = paid_for_a_child(reg, cpb.PERSON_STATUS_SUSPENDED, 100_000)
    assert status(stub, child) == cpb.PERSON_STATUS_ACTIVE
    assert rdb.hdel(k.premium(child, YEAR), "prev_sv", "left_sv") == 2
    cancel(stub, child)
    assert status(stub, child) == cpb.PERSON_STATUS_SUSPENDED and balance(stub, mother) == 100_000


def _events(stub: Any, pid: str) -> list[tuple[str, str]]:
    return [(e.kind, e.detail) for e in stub.GetPerson(pb.GetPersonRequest(id_number=pid)).history]


def test_the_person_history_says_a_premium_made_them_active_and_a_cancel_put_them_back(start_registry, rdb,
                                                                                        loop_thread):
    """GetPerson's history tells a desk why a status changed: the payment that made the payee ACTIVE
    (at once, or when the year paid started) and the cancellation that put the status back, each with
    the premium id and the request that did it."""
    policy = dataclasses.replace(policy_for("62"), premium_extension_end="02-28")
    reg = start_registry("62", policy=policy)
    stub = reg.stub
    mother = enroll(stub, **GS)
    now, later = enroll(stub, itype=RESIDENT, birth="20100101", **GS), enroll(stub, itype=RESIDENT,
                                                                              birth="20120101", **GS)
    credit(stub, mother, 200_000)
    for pid in (now, later):
        set_status(stub, pid, cpb.PERSON_STATUS_SUSPENDED)
    pay(stub, mother, later, request_id="prem-later")
    assert _events(stub, later)[-1] == ("STATUS", "SUSPENDED")  # nothing lifted yet
    _at(reg, loop_thread, datetime.datetime(2027, 1, 1, 0, 0))
    assert _events(stub, later)[-1] == ("PREMIUM_PAID", f"ACTIVE year={YEAR} premium=prem-later request=prem-later")
    pay(stub, mother, now, request_id="prem-now")
    assert _events(stub, now)[-1] == ("PREMIUM_PAID", f"ACTIVE year={YEAR} premium=prem-now request=prem-now")
    stub.CancelResidentPremium(ppb.CancelResidentPremiumRequest(request_id="cancel-now", payee_id_number=now,
                                                                year=YEAR))
    assert status(stub, now) == cpb.PERSON_STATUS_SUSPENDED
    assert _events(stub, now)[-1] == ("PREMIUM_CANCELLED",
                                      f"SUSPENDED year={YEAR} premium=prem-now request=cancel-now")
    # ACTIVE reported again for a payee the payment made ACTIVE is no change: it writes nothing.
    lifted = _events(stub, later)
    set_status(stub, later, cpb.PERSON_STATUS_ACTIVE)
    assert _events(stub, later) == lifted
    # A status the operator set since the payment is the operator's: the cancellation leaves it, no event.
    set_status(stub, later, cpb.PERSON_STATUS_SUSPENDED)
    set_status(stub, later, cpb.PERSON_STATUS_ACTIVE)
    cancel(stub, later)
    assert _events(stub, later)[-1] == ("STATUS", "ACTIVE")
    assert status(stub, later) == cpb.PERSON_STATUS_ACTIVE
    assert verdict.check(rdb).conserved


def cancel_as(stub: Any, payer: str, payee: str, year: str = YEAR, **kw: Any) -> ppb.ResidentPremium:
    return stub.CancelResidentPremium(ppb.CancelResidentPremiumRequest(
        request_id=kw.pop("request_id", rid("cancel")), payer_id_number=payer, payee_id_number=payee,
        year=year)).premium


def test_a_cancel_naming_a_payer_cancels_only_that_payers_payment(start_registry, rdb):
    """A desk acts for someone: a cancel naming a payer who is not the one who paid is refused and writes
    nothing (the payee keeps the coverage, the payer's money stays paid); named by the payer, it cancels.
    An operator's cancel naming no payer still cancels whichever payment there is."""
    stub = start_registry("62").stub
    mother, father = enroll(stub, **GS), enroll(stub, birth="19790101", **GS)
    child = enroll(stub, itype=RESIDENT, birth="20100101", **GS)
    credit(stub, mother, 100_000)
    credit(stub, father, 100_000)
    set_status(stub, child, cpb.PERSON_STATUS_SUSPENDED)
    pay(stub, mother, child)
    refused(rdb, lambda: cancel_as(stub, father, child), FP, "NOT_THE_PAYER")
    refused(rdb, lambda: cancel_as(stub, child, child), FP, "NOT_THE_PAYER")
    refused(rdb, lambda: cancel_as(stub, "not-an-id", child), grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ID_NUMBER")
    listed = stub.ListResidentPremiums(ppb.ListResidentPremiumsRequest(payee_id_number=child)).premiums
    assert [p.state for p in listed] == ["PAID"] and balance(stub, mother) == 100_000 - PREMIUM
    c = cancel_as(stub, mother, child)
    assert (c.state, c.payer_id_number) == ("CANCELLED", mother) and balance(stub, mother) == 100_000
    refused(rdb, lambda: cancel_as(stub, mother, child), FP, "PREMIUM_NOT_PAID")
    pay(stub, father, child)
    assert cancel(stub, child).state == "CANCELLED" and balance(stub, father) == 100_000
    assert verdict.check(rdb).conserved


def test_a_cancel_decided_on_one_payment_does_not_cancel_another_paid_meanwhile(start_registry, rdb):
    """Between the cancel's check of who paid and its write under the payee's lock, the payment may have
    been cancelled and paid again by someone else: that other payment is not cancelled (UNAVAILABLE
    CONTENDED, to resend), and the resend judges it afresh (NOT_THE_PAYER)."""
    reg = start_registry("62")
    stub = reg.stub
    mother, father = enroll(stub, **GS), enroll(stub, birth="19790101", **GS)
    child = enroll(stub, itype=RESIDENT, birth="20100101", **GS)
    credit(stub, mother, 100_000)
    pay(stub, mother, child, request_id="prem-mother")
    key = f"reg:62:{{p:{child}}}:premium:{YEAR}"
    assert rdb.hget(key, "id") == b"prem-mother"

    def swapped(point: str) -> None:  # as if the mother's payment was cancelled and the father paid since
        if point == "premium.after_entry":
            rdb.hset(key, mapping={"id": "prem-father", "payer": father})

    reg.registry.fault_hook = swapped
    try:
        with pytest.raises(grpc.RpcError) as ei:
            cancel_as(stub, mother, child, request_id="cancel-race")
    finally:
        reg.registry.fault_hook = None
    assert (ei.value.code(), reason(ei.value)) == (grpc.StatusCode.UNAVAILABLE, "CONTENDED")
    assert rdb.hget(key, "state") == b"PAID"
    refused(rdb, lambda: cancel_as(stub, mother, child, request_id="cancel-race"), FP, "NOT_THE_PAYER")


def test_a_cancel_begun_before_the_window_closed_is_finished_by_its_resend(start_registry, rdb):
    """A cancellation that crashed after its refund, resent with the same request id once the window
    has closed: the money is back and the payee's status put back, so the resend finishes it and
    answers CANCELLED; it is not told OUTSIDE_PREMIUM_WINDOW, as if nothing had been done."""
    reg = start_registry("62")
    stub = reg.stub
    payer, child = enroll(stub, **GS), enroll(stub, itype=RESIDENT, birth="20100101", **GS)
    credit(stub, payer, 100_000)
    set_status(stub, child, cpb.PERSON_STATUS_SUSPENDED)
    pay(stub, payer, child)
    stopped_at(reg.registry, "premium.after_cancel_refund",
               lambda: cancel_as(stub, payer, child, request_id="cancel-late"))
    assert balance(stub, payer) == 100_000
    reg.clock.advance(45 * 24 * 3600 * 1000)  # 2027-01-06: the window closed on 12-31
    c = cancel_as(stub, payer, child, request_id="cancel-late")
    assert (c.state, c.amount_fen) == ("CANCELLED", PREMIUM)
    assert balance(stub, payer) == 100_000 and status(stub, child) == cpb.PERSON_STATUS_SUSPENDED
    assert not rdb.zcard("reg:62:{open}:setl")
    assert cancel_as(stub, payer, child, request_id="cancel-late") == c
    assert verdict.check(rdb).conserved


def test_fujian_collects_the_years_premium_in_its_extended_period_to_the_end_of_february(start_registry, rdb):
    """福建 collects insurance year Y's resident premium in Y-1's window and then in an extended period
    to 02-28 of Y (the seed: 2025年度 … 缴费时间为2025年1月1日至2月28日, 延长缴费期 … 从缴费之日起享受待遇),
    as its shipped policy says: a 代缴 on 01-15 of the year is paid and insures the payee at once; on
    03-01 it is refused, nothing written."""
    reg = start_registry("35")
    stub = reg.stub
    payer = enroll(stub, **FJ)
    child, other = (enroll(stub, itype=RESIDENT, birth=b, **FJ) for b in ("20100101", "20120101"))
    credit(stub, payer, 100_000)
    set_status(stub, child, cpb.PERSON_STATUS_SUSPENDED)
    reg.clock.set(int(datetime.datetime(2027, 1, 15, 10, 0, tzinfo=SHANGHAI).timestamp() * 1000))
    assert stub.ListResidentPremiums(ppb.ListResidentPremiumsRequest(year=YEAR)).payable_year == YEAR
    assert pay(stub, payer, child).state == "PAID"
    assert status(stub, child) == cpb.PERSON_STATUS_ACTIVE and balance(stub, payer) == 100_000 - PREMIUM
    reg.clock.set(int(datetime.datetime(2027, 3, 1, 0, 1, tzinfo=SHANGHAI).timestamp() * 1000))
    refused(rdb, lambda: pay(stub, payer, other), FP, "OUTSIDE_PREMIUM_WINDOW")


def test_a_family_premium_whose_account_was_dissolved_meanwhile_says_so(start_registry, rdb):
    """The creator dissolves the family account while a payment from it is under way (opened, its
    process stopped before the charge): the resend takes nothing and is refused FAMILY_NOT_ACTIVE, as
    a new payment from that account would be, not FAMILY_INSUFFICIENT; the shares went home whole."""
    reg = start_registry("62")
    stub = reg.stub
    creator, child, fid = _gansu_family(stub, 100_000, 50_000)
    stopped_at(reg.registry, "premium.after_open", lambda: pay(
        stub, creator, child, ppb.PREMIUM_SOURCE_FAMILY_ACCOUNT, family_id=fid, request_id="prem-dissolved"))
    stub.DissolveFamilyAccount(fpb.DissolveFamilyAccountRequest(request_id=rid("dissolve"), family_id=fid,
                                                                creator_id_number=creator))
    with pytest.raises(grpc.RpcError) as ei:
        pay(stub, creator, child, ppb.PREMIUM_SOURCE_FAMILY_ACCOUNT, family_id=fid, request_id="prem-dissolved")
    assert (ei.value.code(), reason(ei.value)) == (FP, "FAMILY_NOT_ACTIVE"), ei.value.details()
    assert balance(stub, creator) == 100_000
    assert not stub.ListResidentPremiums(ppb.ListResidentPremiumsRequest(payee_id_number=child)).premiums
    assert not rdb.zcard("reg:62:{open}:setl") and verdict.check(rdb).conserved


def test_a_wallet_premium_dropped_after_the_use_place_changed_says_so(national, rdb):
    """The payer changes their 医保钱包's use-place while a payment from it is under way (opened, its
    process stopped before the debit): the wallet, which still holds ¥500, refuses the debit at the old
    place, and the resend is refused WALLET_OTHER_USE_PLACE, not WALLET_INSUFFICIENT; a new request pays."""
    w, gs, mother, child, wallet_balance = _wallet_family(national)
    stopped_at(national.registries["62"].registry, "premium.after_open",
               lambda: pay(gs, mother, child, ppb.PREMIUM_SOURCE_WALLET, request_id="prem-moved-place"))
    w.ChangeUsePlace(wpb.ChangeUsePlaceRequest(request_id=rid("place"), owner_id_number=mother,
                                               use_place_admdvs="620200"))
    with pytest.raises(grpc.RpcError) as ei:
        pay(gs, mother, child, ppb.PREMIUM_SOURCE_WALLET, request_id="prem-moved-place")
    assert (ei.value.code(), reason(ei.value)) == (FP, "WALLET_OTHER_USE_PLACE"), ei.value.details()
    assert wallet_balance() == 50_000
    assert pay(gs, mother, child, ppb.PREMIUM_SOURCE_WALLET).state == "PAID" and wallet_balance() == 10_000
    assert verdict.check(rdb).conserved


def _fujian_family_with_a_paying_son(stub: Any) -> tuple[str, str, str, str]:
    """A 福建 family account holding ¥1,000 of its creator's, a son (an employee, a full member, not
    the creator) who may have it pay a near-kin's premium, and an aunt invited as 临时成员:
    (creator, son, aunt, family id)."""
    creator, son = enroll(stub, **FJ), enroll(stub, birth="19900101", **FJ)
    aunt = enroll(stub, itype=RESIDENT, birth="19600101", **FJ)
    credit(stub, creator, 300_000)
    fid = stub.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
        request_id=rid("fam"), creator_id_number=creator, commitment=FACE,
        initial_transfer_fen=100_000)).account.family_id
    stub.InviteMember(fpb.InviteMemberRequest(request_id=rid("inv"), family_id=fid, creator_id_number=creator,
                                              member_id_number=son, relation=cpb.RELATION_CHILD))
    stub.RespondToInvitation(fpb.RespondToInvitationRequest(request_id=rid("acc"), family_id=fid,
                                                            member_id_number=son, accept=True, verification=FACE))
    stub.InviteMember(fpb.InviteMemberRequest(request_id=rid("inv"), family_id=fid, creator_id_number=creator,
                                              member_id_number=aunt, relation=cpb.RELATION_SIBLING, temporary=True))
    return creator, son, aunt, fid


def _payer_change(stub: Any, change: str, creator: str, son: str, fid: str) -> None:
    if change == "leaves":
        stub.LeaveFamilyAccount(fpb.LeaveFamilyAccountRequest(request_id=rid("leave"), family_id=fid,
                                                              member_id_number=son))
    elif change == "removed":
        stub.RemoveMember(fpb.RemoveMemberRequest(request_id=rid("rm"), family_id=fid, creator_id_number=creator,
                                                  member_id_number=son))
    elif change == "suspended":
        set_status(stub, son, cpb.PERSON_STATUS_SUSPENDED)
    elif change == "terminated":
        set_status(stub, son, cpb.PERSON_STATUS_TERMINATED)
    else:
        _death(stub, son, creator)


PAYER_CHANGES = {"leaves": "NOT_A_MEMBER", "removed": "NOT_A_MEMBER", "suspended": "HELPER_NOT_ACTIVE",
                 "terminated": "HELPER_NOT_ACTIVE", "died": "HELPER_NOT_ACTIVE"}


@pytest.mark.parametrize("change", sorted(PAYER_CHANGES))
@pytest.mark.parametrize("by", ["resend", "recovery"])
def test_a_family_premium_whose_payer_lost_their_standing_meanwhile_takes_nothing(start_registry, rdb,
                                                                                  loop_thread, change, by):
    """SPEC §1, §3b, §4b: only an ACTIVE member of the account has it pay a near-kin's premium. A son
    (a member, not the creator) has the account pay his aunt's premium; the payment is decided and
    opened, then (its process stopped before the charge) he leaves the account, is removed, is
    suspended or terminated, or dies. Finished by the resend or by the recovery loop, the payment takes
    nothing from the account and is refused as a new payment of his would be; every fen stays."""
    reg = start_registry("35")
    stub = reg.stub
    creator, son, aunt, fid = _fujian_family_with_a_paying_son(stub)

    def paid() -> ppb.ResidentPremium:
        return pay(stub, son, aunt, ppb.PREMIUM_SOURCE_FAMILY_ACCOUNT, relation=cpb.RELATION_PARENT,
                   family_id=fid, request_id="prem-payer-gone")

    stopped_at(reg.registry, "premium.after_open", paid)
    _payer_change(stub, change, creator, son, fid)
    if by == "recovery":
        reg.clock.advance(60_000)
        loop_thread.run(reg.registry.recover())
    with pytest.raises(grpc.RpcError) as ei:
        paid()
    assert (ei.value.code(), reason(ei.value)) == (FP, PAYER_CHANGES[change]), ei.value.details()
    account = stub.GetFamilyAccount(fpb.GetFamilyAccountRequest(family_id=fid)).account
    assert account.balance_fen == 100_000 or account.state == "DISSOLVED"
    assert {s.id_number: s.share_fen for s in account.shares} == {creator: 100_000}
    assert not stub.ListResidentPremiums(ppb.ListResidentPremiumsRequest(payee_id_number=aunt)).premiums
    assert not rdb.zcard("reg:35:{open}:setl")
    report = verdict.check(rdb)
    assert report.conserved and report.premiums_net_fen == 0, report.as_dict()


def test_a_family_premium_takes_nothing_once_the_payer_left_between_judgement_and_charge(start_registry, rdb):
    """The payer's standing is judged where the money is taken, and the charge applies that judgement
    only while the payer's member entry is still the one judged (lua/family_charge.lua answers AGAIN):
    a son removed from the account between the judgement and the charge (his entry ended, as
    family_end.lua ends it) has it pay nothing, and the payment is refused NOT_A_MEMBER."""
    reg = start_registry("35")
    stub, k = reg.stub, reg.registry.k
    creator, son, aunt, fid = _fujian_family_with_a_paying_son(stub)
    seen: list[str] = []

    def removed_meanwhile(p: str) -> None:
        if p == "family.before_charge" and not seen:
            seen.append(p)
            entry = json.loads(rdb.hget(k.family_members(fid), son))
            entry.update(state="ENDED", ended_at=str(reg.clock.now_ms()), end_reason="REMOVED")
            rdb.hset(k.family_members(fid), son, json.dumps(entry))
            rdb.hdel(k.families_of(son), fid)

    reg.registry.fault_hook = removed_meanwhile
    try:
        with pytest.raises(grpc.RpcError) as ei:
            pay(stub, son, aunt, ppb.PREMIUM_SOURCE_FAMILY_ACCOUNT, relation=cpb.RELATION_PARENT, family_id=fid)
    finally:
        reg.registry.fault_hook = None
    assert seen and (ei.value.code(), reason(ei.value)) == (FP, "NOT_A_MEMBER"), ei.value.details()
    account = stub.GetFamilyAccount(fpb.GetFamilyAccountRequest(family_id=fid)).account
    assert account.balance_fen == 100_000 and {s.id_number: s.share_fen for s in account.shares} == {creator: 100_000}
    assert not stub.ListResidentPremiums(ppb.ListResidentPremiumsRequest(payee_id_number=aunt)).premiums
    report = verdict.check(rdb)
    assert report.conserved and report.premiums_net_fen == 0, report.as_dict()


def test_an_account_premium_whose_payer_moved_to_another_region_meanwhile_takes_nothing(start_registry, rdb):
    """Where a province has no cross-region 共济 (`cross_region_allowed = false`), a personal account
    pays the premium of a near-kin of its own 统筹区 only (DIFFERENT_POOLING_REGION). A payer who
    moves to another 统筹区 between the decision and the debit (the payment opened, its process
    stopped before the money was taken) pays nothing: the resend is refused as a new payment would
    be, the balance untouched; a payer who moved back pays with a new request id."""
    reg = start_registry("62", policy=dataclasses.replace(policy_for("62"), cross_region_allowed=False))
    stub = reg.stub
    payer, child = enroll(stub, **GS), enroll(stub, itype=RESIDENT, birth="20100101", **GS)
    credit(stub, payer, 100_000)
    stopped_at(reg.registry, "premium.after_open", lambda: pay(stub, payer, child, request_id="prem-moved"))
    stub.MovePoolingRegion(pb.MovePoolingRegionRequest(request_id=rid("mv"), id_number=payer,
                                                       pooling_region="620500"))
    with pytest.raises(grpc.RpcError) as ei:
        pay(stub, payer, child, request_id="prem-moved")
    assert (ei.value.code(), reason(ei.value)) == (FP, "DIFFERENT_POOLING_REGION"), ei.value.details()
    assert balance(stub, payer) == 100_000
    assert not stub.ListResidentPremiums(ppb.ListResidentPremiumsRequest(payee_id_number=child)).premiums
    stub.MovePoolingRegion(pb.MovePoolingRegionRequest(request_id=rid("mv"), id_number=payer,
                                                       pooling_region=GS["region"]))
    assert pay(stub, payer, child).state == "PAID" and balance(stub, payer) == 100_000 - PREMIUM
    assert not rdb.zcard("reg:62:{open}:setl") and verdict.check(rdb).conserved


def test_an_account_premium_takes_nothing_once_the_payer_was_suspended_between_judgement_and_debit(
        start_registry, rdb):
    """The payer is judged again where the money is taken, and the debit applies that judgement only
    while the payer's person and balance are what it was made on (lua/premium_debit.lua answers
    AGAIN): a payer suspended between the judgement and the debit (no lock this payment holds) pays
    nothing, and the payment is refused HELPER_NOT_ACTIVE, the balance whole."""
    reg = start_registry("62")
    stub, k = reg.stub, reg.registry.k
    payer, child = enroll(stub, **GS), enroll(stub, itype=RESIDENT, birth="20100101", **GS)
    credit(stub, payer, 100_000)
    seen: list[str] = []

    def suspended_meanwhile(p: str) -> None:  # the status change's write, as UpdatePersonStatus makes it
        if p == "premium.before_debit" and not seen:
            seen.append(p)
            rdb.hset(k.person(payer), "status", "SUSPENDED")

    reg.registry.fault_hook = suspended_meanwhile
    try:
        with pytest.raises(grpc.RpcError) as ei:
            pay(stub, payer, child)
    finally:
        reg.registry.fault_hook = None
    assert seen and (ei.value.code(), reason(ei.value)) == (FP, "HELPER_NOT_ACTIVE"), ei.value.details()
    assert balance(stub, payer) == 100_000
    assert not stub.ListResidentPremiums(ppb.ListResidentPremiumsRequest(payee_id_number=child)).premiums
    assert not rdb.zcard("reg:62:{open}:setl") and verdict.check(rdb).conserved
