"""Boundaries of the pooled family account (SPEC §3b) and of 代缴 from it (§4b) on real registries 62
甘肃 and 35 福建, each one a sentence of the SPEC or of docs/family-accounts.md that no other test
pinned: the face-verification age exactly at 16, declining, the caps of both provinces, who may
划拨, the 福建 month boundary with the initial 划拨 counted, two invitations in an exclusive
province, a contributor removed, the creator moving province, a dissolution with shares partly
spent and a reversal after it, a family 代缴 cancelled after a dissolution, and a family 代缴 at the
turn of the calendar year (the window of the insurance year). Every refusal writes nothing."""

from __future__ import annotations

import datetime as dt
from typing import Any

from medaid.bench import money as verdict
from medaid.common.clock import SHANGHAI
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import family_pb2 as fpb
from medaid.registry.v1 import premium_pb2 as ppb
from medaid.registry.v1 import registry_pb2 as pb
from support import FLEXIBLE, RESIDENT, balance, credit, enroll, rid
from test_family import FJ, FP, GS, accept, account, create, huabo, invite, refused, shares, state_of
from test_premiums import cancel, pay, set_status


def at(y: int, m: int, d: int, hh: int = 0, mm: int = 0) -> int:
    """Unix ms of a Beijing-time instant."""
    return int(dt.datetime(y, m, d, hh, mm, tzinfo=SHANGHAI).timestamp() * 1000)


def decline(stub: Any, fid: str, member: str, request_id: str | None = None) -> fpb.FamilyAccount:
    return stub.RespondToInvitation(fpb.RespondToInvitationRequest(
        request_id=request_id or rid("dec"), family_id=fid, member_id_number=member, accept=False)).account


def dissolve(stub: Any, fid: str, creator: str) -> fpb.DissolveFamilyAccountResponse:
    return stub.DissolveFamilyAccount(fpb.DissolveFamilyAccountRequest(request_id=rid("dis"), family_id=fid,
                                                                       creator_id_number=creator))


def bill(stub: Any, patient: str, amount: int) -> pb.SettlementResult:
    return stub.Settle(pb.SettleRequest(request_id=rid("2207"), patient_id_number=patient, amount_fen=amount,
                                        use_account=True, category=cpb.CATEGORY_OUTPATIENT,
                                        institution_code="H35020000001", institution_admdvs="350200")).result


def test_face_verification_is_needed_from_the_sixteenth_birthday(start_registry, rdb):
    """The tests' today is 2026-11-22: born 2010-11-22 is 16 today (accepts with face verification),
    born a day later is 15 (joins at once)."""
    stub = start_registry("62").stub
    creator = enroll(stub, **GS)
    fid = create(stub, creator).family_id
    sixteen = enroll(stub, itype=RESIDENT, birth="20101122", **GS)
    fifteen = enroll(stub, itype=RESIDENT, birth="20101123", **GS)
    assert state_of(invite(stub, fid, creator, sixteen), sixteen) == fpb.MEMBERSHIP_STATE_INVITED
    assert state_of(invite(stub, fid, creator, fifteen), fifteen) == fpb.MEMBERSHIP_STATE_MEMBER
    refused(rdb, lambda: accept(stub, fid, sixteen, face=False), FP, "VERIFICATION_REQUIRED")


def test_a_declined_invitation_frees_its_seat_and_may_be_sent_again(start_registry, rdb):
    """甘肃 7 (the creator and six): INVITED → DECLINED frees the seat; a declined or expired invitation
    cannot be answered again; the creator may invite again."""
    reg = start_registry("62")
    stub = reg.stub
    creator = enroll(stub, **GS)
    fid = create(stub, creator).family_id
    adults = [enroll(stub, birth="19900101", **GS) for _ in range(6)]
    for a in adults:
        invite(stub, fid, creator, a, cpb.RELATION_SIBLING)
    extra = enroll(stub, birth="19910101", **GS)
    refused(rdb, lambda: invite(stub, fid, creator, extra, cpb.RELATION_SIBLING), FP, "MEMBER_LIMIT_REACHED")
    acct = decline(stub, fid, adults[0], "dec-1")
    assert state_of(acct, adults[0]) == fpb.MEMBERSHIP_STATE_DECLINED
    assert decline(stub, fid, adults[0], "dec-1") == acct  # a replay answers the same
    refused(rdb, lambda: decline(stub, fid, adults[0]), FP, "NO_INVITATION")
    refused(rdb, lambda: accept(stub, fid, adults[0]), FP, "NO_INVITATION")
    d = stub.Diagnose(pb.DiagnoseRequest(member_id_number=adults[0], helper_id_number=creator))
    assert not d.would_pay and d.findings[0].code == "NOT_FAMILY_MEMBER"
    invite(stub, fid, creator, extra, cpb.RELATION_SIBLING)  # the declined seat
    reg.clock.advance(reg.registry.policy.invitation_ttl_ms + 1)
    refused(rdb, lambda: decline(stub, fid, adults[1]), FP, "INVITATION_EXPIRED")
    invite(stub, fid, creator, adults[0], cpb.RELATION_SIBLING)
    assert state_of(accept(stub, fid, adults[0]), adults[0]) == fpb.MEMBERSHIP_STATE_MEMBER


def test_fujian_caps_a_family_at_eight_with_temporary_members_counted(start_registry, rdb):
    stub = start_registry("35").stub
    creator = enroll(stub, **FJ)
    fid = create(stub, creator).family_id
    for _ in range(7):
        invite(stub, fid, creator, enroll(stub, itype=RESIDENT, birth="20150101", **FJ))
    ninth = enroll(stub, itype=RESIDENT, birth="20150101", **FJ)
    refused(rdb, lambda: invite(stub, fid, creator, ninth, temporary=True), FP, "MEMBER_LIMIT_REACHED")


def test_who_may_create_and_transfer_in(start_registry, rdb):
    """创建: an ACTIVE employee with a personal account. 划拨: an ACTIVE creator or (福建) member with a
    personal account, into an ACTIVE account; one who left is no contributor."""
    gs = start_registry("62").stub
    creator, spouse = enroll(gs, **GS), enroll(gs, birth="19820101", **GS)
    credit(gs, spouse, 10_000)
    fid = create(gs, creator).family_id
    invite(gs, fid, creator, spouse, cpb.RELATION_SPOUSE)
    accept(gs, fid, spouse)
    refused(rdb, lambda: huabo(gs, fid, spouse, 100), FP, "NOT_A_CONTRIBUTOR")  # 甘肃: the creator only
    stub = start_registry("35").stub
    suspended, flex1 = enroll(stub, **FJ), enroll(stub, itype=FLEXIBLE, tier=1, **FJ)
    creator, son = enroll(stub, **FJ), enroll(stub, birth="19900101", **FJ)
    set_status(stub, suspended, cpb.PERSON_STATUS_SUSPENDED)
    refused(rdb, lambda: create(stub, suspended), FP, "HELPER_NOT_ACTIVE")
    refused(rdb, lambda: create(stub, flex1), FP, "HELPER_NOT_EMPLOYEE")
    credit(stub, creator, 300_000)
    credit(stub, son, 300_000)
    fid = create(stub, creator).family_id
    invite(stub, fid, creator, son)
    accept(stub, fid, son)
    set_status(stub, creator, cpb.PERSON_STATUS_SUSPENDED)
    refused(rdb, lambda: huabo(stub, fid, creator, 1_000), FP, "HELPER_NOT_ACTIVE")
    set_status(stub, creator, cpb.PERSON_STATUS_ACTIVE)
    stub.LeaveFamilyAccount(fpb.LeaveFamilyAccountRequest(request_id=rid("l"), family_id=fid, member_id_number=son))
    refused(rdb, lambda: huabo(stub, fid, son, 1_000), FP, "NOT_A_CONTRIBUTOR")
    dissolve(stub, fid, creator)
    refused(rdb, lambda: huabo(stub, fid, creator, 1_000), FP, "FAMILY_NOT_ACTIVE")


def test_fujian_month_is_the_beijing_calendar_month_and_counts_the_initial_transfer(start_registry, rdb):
    reg = start_registry("35")
    stub = reg.stub
    creator = enroll(stub, **FJ)
    credit(stub, creator, 300_000)
    reg.clock.set(at(2026, 11, 30, 23, 59))
    refused(rdb, lambda: create(stub, creator, initial_transfer_fen=100_001), FP, "BELOW_MINIMUM_BALANCE")
    fid = create(stub, creator, initial_transfer_fen=50_000).family_id
    refused(rdb, lambda: huabo(stub, fid, creator, 1), FP, "MONTHLY_LIMIT_REACHED")
    reg.clock.set(at(2026, 12, 1, 0, 0))  # 2026-11-30 16:00 UTC: December in Beijing
    huabo(stub, fid, creator, 50_000)  # exactly down to ¥2,000
    assert balance(stub, creator) == 200_000 and account(stub, fid).balance_fen == 100_000


def test_an_exclusive_province_lets_one_of_two_invitations_be_accepted(start_registry, rdb):
    """甘肃: invited to two accounts, a person accepts one; the other is refused, nor may they create
    one, nor may a creator be invited elsewhere. Once they left, another account may take them."""
    stub = start_registry("62").stub
    a, b = enroll(stub, **GS), enroll(stub, **GS)
    adult = enroll(stub, birth="19990101", **GS)
    fa, fb = create(stub, a).family_id, create(stub, b).family_id
    invite(stub, fa, a, adult, cpb.RELATION_SIBLING)
    invite(stub, fb, b, adult, cpb.RELATION_SIBLING)
    accept(stub, fa, adult)
    refused(rdb, lambda: accept(stub, fb, adult), FP, "ALREADY_IN_ANOTHER_RELATION")
    refused(rdb, lambda: create(stub, adult), FP, "ALREADY_IN_ANOTHER_RELATION")
    refused(rdb, lambda: invite(stub, fb, b, a, cpb.RELATION_SIBLING), FP, "ALREADY_IN_ANOTHER_RELATION")
    stub.LeaveFamilyAccount(fpb.LeaveFamilyAccountRequest(request_id=rid("l"), family_id=fa, member_id_number=adult))
    assert state_of(accept(stub, fb, adult), adult) == fpb.MEMBERSHIP_STATE_MEMBER
    dissolve(stub, fa, a)
    invite(stub, fb, b, a, cpb.RELATION_SIBLING)
    accept(stub, fb, a)
    refused(rdb, lambda: create(stub, a), FP, "ALREADY_IN_ANOTHER_RELATION")
    refused(rdb, lambda: dissolve(stub, fa, a), FP, "FAMILY_NOT_ACTIVE")
    refused(rdb, lambda: dissolve(stub, fb, a), FP, "NOT_FAMILY_CREATOR")


def test_removed_contributor_and_creator_moving_province_get_their_shares_back(start_registry, rdb):
    stub = start_registry("35").stub
    creator, son, daughter = (enroll(stub, birth=b, **FJ) for b in ("19800101", "19900101", "19920101"))
    for pid in (creator, son, daughter):
        credit(stub, pid, 250_000)
    fid = create(stub, creator, initial_transfer_fen=10_000).family_id
    for pid in (son, daughter):
        invite(stub, fid, creator, pid)
        accept(stub, fid, pid)
        huabo(stub, fid, pid, 20_000)
    removed = stub.RemoveMember(fpb.RemoveMemberRequest(request_id=rid("rm"), family_id=fid,
                                                        creator_id_number=creator, member_id_number=son))
    assert removed.returned_fen == 20_000 and balance(stub, son) == 250_000
    stub.UpdatePersonStatus(pb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=creator,
                                                         status=cpb.PERSON_STATUS_TERMINATED, moved_to_province="62"))
    acct = account(stub, fid)
    assert (acct.state, acct.end_reason, acct.balance_fen) == ("DISSOLVED", "CREATOR_MOVED", 0)
    assert balance(stub, creator) == 250_000 and balance(stub, daughter) == 250_000
    assert verdict.check(rdb).conserved


def test_a_dissolution_with_shares_partly_spent_returns_what_is_left_and_a_later_reversal_too(start_registry, rdb):
    """Oldest first: the creator's 30,000 and 5,000 of the son's pay a 35,000 bill. Dissolving returns
    the son's 15,000 (the creator's share is spent); the bill reversed afterwards pays each part to its
    contributor's personal account (no sub-ledger is left)."""
    stub = start_registry("35").stub
    creator, son = enroll(stub, **FJ), enroll(stub, birth="19900101", **FJ)
    kid = enroll(stub, itype=RESIDENT, birth="20180101", **FJ)
    credit(stub, creator, 250_000)
    credit(stub, son, 250_000)
    fid = create(stub, creator, initial_transfer_fen=30_000).family_id
    invite(stub, fid, creator, son)
    accept(stub, fid, son)
    invite(stub, fid, creator, kid, cpb.RELATION_GRANDCHILD)
    huabo(stub, fid, son, 20_000)
    res = bill(stub, kid, 35_000)
    assert [(c.helper_id_number, c.amount_fen) for c in res.helper_charges] == [(creator, 30_000), (son, 5_000)]
    gone = dissolve(stub, fid, creator)
    assert [(s.id_number, s.share_fen) for s in gone.returned] == [(son, 15_000)]
    assert balance(stub, creator) == 220_000 and balance(stub, son) == 245_000
    stub.ReverseSettlement(pb.ReverseSettlementRequest(request_id=rid("rev"), settlement_id=res.settlement_id))
    assert balance(stub, creator) == 250_000 and balance(stub, son) == 250_000
    assert account(stub, fid).balance_fen == 0
    assert verdict.check(rdb).conserved


def test_a_family_premium_cancelled_after_a_dissolution_goes_back_to_the_contributors(start_registry, rdb):
    stub = start_registry("35").stub
    creator, son = enroll(stub, **FJ), enroll(stub, birth="19900101", **FJ)
    aunt = enroll(stub, itype=RESIDENT, birth="19600101", **FJ)
    credit(stub, creator, 230_000)
    credit(stub, son, 230_000)
    fid = create(stub, creator, initial_transfer_fen=25_000).family_id
    invite(stub, fid, creator, son)
    accept(stub, fid, son)
    huabo(stub, fid, son, 30_000)
    invite(stub, fid, creator, aunt, cpb.RELATION_SIBLING, temporary=True)
    p = pay(stub, creator, aunt, ppb.PREMIUM_SOURCE_FAMILY_ACCOUNT, relation=cpb.RELATION_SIBLING, family_id=fid)
    assert p.contributors == f"{creator}:25000,{son}:15000"
    dissolve(stub, fid, creator)
    assert balance(stub, creator) == 205_000 and balance(stub, son) == 215_000
    assert cancel(stub, aunt).state == "CANCELLED"
    assert balance(stub, creator) == 230_000 and balance(stub, son) == 230_000
    assert verdict.check(rdb).conserved


def test_a_family_premium_at_the_turn_of_the_year_follows_the_insurance_years_window(start_registry, rdb):
    """Insurance year 2027 is paid in 福建 from 2026-09-01 to the end of its extended period, 2027-02-28
    (Beijing time): at 23:59 on 02-28 the family account pays it; a minute past midnight neither a
    cancellation nor another 2027 payment is taken (nothing written), and the tax list of 2027 keeps
    the payment."""
    reg = start_registry("35")
    stub = reg.stub
    creator = enroll(stub, **FJ)
    aunt, uncle = (enroll(stub, itype=RESIDENT, birth=b, **FJ) for b in ("19600101", "19610101"))
    credit(stub, creator, 300_000)
    fid = create(stub, creator, initial_transfer_fen=100_000).family_id
    for pid in (aunt, uncle):
        invite(stub, fid, creator, pid, cpb.RELATION_SIBLING, temporary=True)
    reg.clock.set(at(2027, 2, 28, 23, 59))
    p = pay(stub, creator, aunt, ppb.PREMIUM_SOURCE_FAMILY_ACCOUNT, relation=cpb.RELATION_SIBLING, family_id=fid)
    assert (p.year, p.state, p.contributors) == ("2027", "PAID", f"{creator}:40000")
    reg.clock.set(at(2027, 3, 1, 0, 1))  # 2027-02-28 16:01 UTC
    refused(rdb, lambda: cancel(stub, aunt), FP, "OUTSIDE_PREMIUM_WINDOW")
    refused(rdb, lambda: pay(stub, creator, uncle, ppb.PREMIUM_SOURCE_FAMILY_ACCOUNT, relation=cpb.RELATION_SIBLING,
                             family_id=fid), FP, "OUTSIDE_PREMIUM_WINDOW")
    listed = stub.ListResidentPremiums(ppb.ListResidentPremiumsRequest(year="2027")).premiums
    assert [(x.payer_id_number, x.payee_id_number, x.amount_fen, x.state) for x in listed] == \
        [(creator, aunt, 40_000, "PAID")]
    assert shares(account(stub, fid)) == {creator: 60_000}
