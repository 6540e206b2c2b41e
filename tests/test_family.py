"""The pooled family account (家庭共济账户, SPEC §3b) on real registries 62 甘肃 and 35 福建: create,
invite, respond, 划拨, settlement through the family step, reversal, leave, 回拨, dissolution, the
reason codes, replays, and crashes between the steps of the multi-key flows."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
import redis
from conftest import policy_for
from medaid.bench import money as verdict
from medaid.common.errors import error_info
from medaid.common.scripts import lua_source
from medaid.common.v1 import common_pb2 as cpb
from medaid.gateway.reasons import operator_message
from medaid.registry import policy as policy_mod
from medaid.registry.context import InjectedFault
from medaid.registry.family_rules import month_of
from medaid.registry.policy import PolicyError
from medaid.registry.v1 import family_pb2 as fpb
from medaid.registry.v1 import premium_pb2 as ppb
from medaid.registry.v1 import registry_pb2 as pb
from support import FACE, RESIDENT, balance, credit, enroll, new_id, reason, rid, settle, snapshot

FP = grpc.StatusCode.FAILED_PRECONDITION
GS = {"region": "620100", "division": "620102"}
FJ = {"region": "350200", "division": "350203"}
PROMISE = cpb.Verification(method=cpb.VERIFICATION_METHOD_FACE, attestation_id="promise-1")


def refused(rdb: redis.Redis, call: Callable[[], Any], code: grpc.StatusCode, why: str) -> grpc.RpcError:
    """The call fails with `code`/`why` and leaves Redis exactly as it was."""
    before = snapshot(rdb)
    with pytest.raises(grpc.RpcError) as ei:
        call()
    assert (ei.value.code(), reason(ei.value)) == (code, why), ei.value.details()
    assert snapshot(rdb) == before, f"refused {why} wrote to Redis"
    return ei.value


def shown(err: grpc.RpcError) -> str:
    """What a front desk reads for this refusal, the province's settings taken from its metadata."""
    info = error_info(err)
    assert info is not None
    return operator_message(info.reason, "", dict(info.metadata))


def create(stub: Any, creator: str, **kw: Any) -> fpb.FamilyAccount:
    return stub.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
        request_id=kw.pop("request_id", rid("fam")), creator_id_number=creator, commitment=PROMISE, **kw)).account


def invite(stub: Any, fid: str, creator: str, member: str, relation: int = cpb.RELATION_CHILD,
           **kw: Any) -> fpb.FamilyAccount:
    return stub.InviteMember(fpb.InviteMemberRequest(request_id=rid("inv"), family_id=fid, creator_id_number=creator,
                                                     member_id_number=member, relation=relation, **kw)).account


def accept(stub: Any, fid: str, member: str, face: bool = True) -> fpb.FamilyAccount:
    req = fpb.RespondToInvitationRequest(request_id=rid("acc"), family_id=fid, member_id_number=member, accept=True)
    if face:
        req.verification.CopyFrom(FACE)
    return stub.RespondToInvitation(req).account


def huabo(stub: Any, fid: str, who: str, amount: int, request_id: str | None = None
          ) -> fpb.TransferIntoFamilyAccountResponse:
    return stub.TransferIntoFamilyAccount(fpb.TransferIntoFamilyAccountRequest(
        request_id=request_id or rid("huabo"), family_id=fid, contributor_id_number=who, amount_fen=amount))


def account(stub: Any, fid: str) -> fpb.FamilyAccount:
    return stub.GetFamilyAccount(fpb.GetFamilyAccountRequest(family_id=fid)).account


def shares(acct: fpb.FamilyAccount) -> dict[str, int]:
    return {s.id_number: s.share_fen for s in acct.shares}


def state_of(acct: fpb.FamilyAccount, pid: str) -> int:
    return next(m.state for m in acct.members if m.id_number == pid)


def money(rdb: redis.Redis, province: str) -> int:
    """Personal accounts + family balances + 划拨 debited but not yet credited (SPEC §7)."""
    total = 0
    for key in rdb.scan_iter(f"reg:{province}:*"):
        k = key.decode()
        if k.endswith(":acct"):
            total += int(rdb.hget(key, "bal") or 0)
        elif ":{fam}:f:" in k:
            total += int(rdb.hget(key, "bal") or 0)
        elif ":famx:" in k and rdb.hget(key, "state") == b"DEBITED":
            fid, xid = rdb.hget(key, "family").decode(), k.split(":famx:")[1]
            if rdb.hget(f"reg:{province}:{{fam}}:applied:{fid}", f"x|{xid}") is None:  # not in the family yet
                total += int(rdb.hget(key, "amount") or 0)
    return total


def family_sum_matches(rdb: redis.Redis, province: str, fid: str) -> None:
    """The balance equals the sum of the shares, which equals the sum of the lots."""
    bal = int(rdb.hget(f"reg:{province}:{{fam}}:f:{fid}", "bal") or 0)
    shares_sum = sum(int(v) for v in rdb.hvals(f"reg:{province}:{{fam}}:shares:{fid}"))
    lots = sum(int(v.decode().split(":")[1]) for v in rdb.hvals(f"reg:{province}:{{fam}}:lots:{fid}"))
    assert bal == shares_sum == lots >= 0


# --- policy -------------------------------------------------------------------------------------


def test_policy_model_and_pooled_knobs_are_validated_at_start():
    gansu, fujian = policy_for("62"), policy_for("35")
    assert gansu.pooled and gansu.exclusive and gansu.max_members == 7 and gansu.transfers_per_month == 0
    assert gansu.keep_min_balance_fen == 0 and not gansu.member_contributions
    assert fujian.pooled and fujian.keep_min_balance_fen == 200_000 and fujian.transfers_per_month == 1
    assert fujian.member_contributions and fujian.temporary_members and fujian.contributor_withdrawal
    assert set(fujian.regions) >= {"350100", "350200", "350500"}
    assert not policy_for("13").pooled
    with pytest.raises(PolicyError, match="model"):
        dataclasses.replace(gansu, model="POOLED")
    with pytest.raises(PolicyError, match="POOLED_ACCOUNT only"):
        dataclasses.replace(policy_for("13"), transfers_per_month=1)
    with pytest.raises(PolicyError, match="BIND_AND_DEDUCT only"):
        dataclasses.replace(gansu, helpers_in_turn=True)
    with pytest.raises(PolicyError, match="keep_min_balance_fen"):
        dataclasses.replace(fujian, keep_min_balance_fen=-1)


def test_policy_file_with_a_string_knob_is_refused(tmp_path):
    text = policy_mod.find_policy_file("35").read_text(encoding="utf-8")
    bad = tmp_path / "35-bad.toml"
    bad.write_text(text.replace("transfers_per_month = 1", 'transfers_per_month = "1"'), encoding="utf-8")
    with pytest.raises(PolicyError, match="transfers_per_month"):
        policy_mod.load(bad)


# --- 甘肃: the whole life of a family account ----------------------------------------------------


def test_gansu_family_created_funded_spent_reversed_and_dissolved(start_registry, rdb):
    stub = start_registry("62").stub
    creator = enroll(stub, **GS)
    child = enroll(stub, itype=RESIDENT, birth="20150101", **GS)
    spouse = enroll(stub, birth="19820101", **GS)
    credit(stub, creator, 100_000)
    start = money(rdb, "62")
    acct = create(stub, creator)
    fid = acct.family_id
    assert acct.state == "ACTIVE" and acct.creator_id_number == creator and acct.balance_fen == 0
    assert state_of(acct, creator) == fpb.MEMBERSHIP_STATE_MEMBER
    # Under 16 joins at once; 16 and over is INVITED until they accept with face verification.
    assert state_of(invite(stub, fid, creator, child), child) == fpb.MEMBERSHIP_STATE_MEMBER
    assert state_of(invite(stub, fid, creator, spouse, cpb.RELATION_SPOUSE), spouse) == fpb.MEMBERSHIP_STATE_INVITED
    err = refused(rdb, lambda: accept(stub, fid, spouse, face=False), FP, "VERIFICATION_REQUIRED")
    assert shown(err) == ("VERIFICATION_REQUIRED: 须本人完成人脸识别或医保码密码核验(年满16周岁),"
                          "本次未办理;请本人核验后重新提交")
    assert state_of(accept(stub, fid, spouse), spouse) == fpb.MEMBERSHIP_STATE_MEMBER
    # 划拨: unlimited in 甘肃 (amount and count).
    for amount in (30_000, 10_000, 5_000):
        huabo(stub, fid, creator, amount)
    assert balance(stub, creator) == 55_000
    acct = account(stub, fid)
    assert acct.balance_fen == 45_000 and shares(acct) == {creator: 45_000}
    # The child (no personal account) spends: the family account pays, naming the contributor.
    res = settle(stub, child, 12_000)
    assert (res.acct_pay_fen, res.mulaid_pay_fen, res.cash_pay_fen) == (0, 12_000, 0)
    assert res.family_id == fid and [(c.helper_id_number, c.amount_fen, c.balance_after_fen)
                                     for c in res.helper_charges] == [(creator, 12_000, 33_000)]
    # The spouse spends their own account first (优先使用本人个人账户资金), then the family account.
    credit(stub, spouse, 1_000)
    res2 = settle(stub, spouse, 40_000)
    assert (res2.acct_pay_fen, res2.mulaid_pay_fen, res2.cash_pay_fen, res2.helper_reason) == \
        (1_000, 33_000, 6_000, "FAMILY_INSUFFICIENT")
    assert account(stub, fid).balance_fen == 0
    records = stub.ListConsumptionRecords(pb.ListConsumptionRecordsRequest(id_number=child)).records
    assert [(r.role, r.helper_id_number, r.mulaid_pay_fen) for r in records] == [("MEMBER", creator, 12_000)]
    # The contributor lists the bills their money paid (SPEC §4: kept for helper and member), newest first.
    def given() -> list[tuple[str, str, str, int, str]]:
        return [(r.role, r.helper_id_number, r.member_id_number, r.mulaid_pay_fen, r.state) for r in
                stub.ListConsumptionRecords(pb.ListConsumptionRecordsRequest(id_number=creator)).records]
    assert given() == [("HELPER", creator, spouse, 33_000, "SETTLED"), ("HELPER", creator, child, 12_000, "SETTLED")]
    # A reversal puts each fen back in the sub-ledger it came from.
    stub.ReverseSettlement(pb.ReverseSettlementRequest(request_id=rid("rev"), settlement_id=res.settlement_id))
    assert given()[1] == ("HELPER", creator, child, 12_000, "REVERSED")
    acct = account(stub, fid)
    assert acct.balance_fen == 12_000 and shares(acct) == {creator: 12_000}
    assert [e.kind for e in acct.history][-2:] == ["SPENT", "REVERSED"]
    family_sum_matches(rdb, "62", fid)
    # Dissolution returns every unspent share to its contributor's personal account, to the fen.
    gone = stub.DissolveFamilyAccount(fpb.DissolveFamilyAccountRequest(
        request_id=rid("dis"), family_id=fid, creator_id_number=creator))
    assert [(s.id_number, s.share_fen) for s in gone.returned] == [(creator, 12_000)]
    assert gone.account.state == "DISSOLVED" and gone.account.balance_fen == 0
    assert len(given()) == 2  # the account is gone; what it paid stays on the contributor's list
    assert all(m.state == fpb.MEMBERSHIP_STATE_ENDED for m in gone.account.members)
    assert balance(stub, creator) == 55_000 + 12_000
    assert money(rdb, "62") == start + 1_000 - (1_000 + 33_000)  # credited 1 000; spent (not reversed)
    report = verdict.check(rdb)
    assert report.conserved and report.family_balances_fen == 0, report.as_dict()
    # Dissolved: members pay cash; a new account may be created.
    assert settle(stub, child, 500).cash_pay_fen == 500
    assert create(stub, creator).family_id != fid


def test_gansu_settlement_answers_the_same_through_replay_and_presettle(start_registry, rdb):
    stub = start_registry("62").stub
    creator, child = enroll(stub, **GS), enroll(stub, itype=RESIDENT, birth="20150101", **GS)
    credit(stub, creator, 10_000)
    fid = create(stub, creator, initial_transfer_fen=8_000).family_id
    invite(stub, fid, creator, child)
    pre = stub.PreSettle(pb.PreSettleRequest(patient_id_number=child, amount_fen=3_000, use_account=True,
                                             category=cpb.CATEGORY_PHARMACY, institution_code="H62010000001")).result
    assert (pre.mulaid_pay_fen, pre.helper_charges[0].balance_after_fen, pre.family_id) == (3_000, 5_000, fid)
    assert account(stub, fid).balance_fen == 8_000  # nothing moved
    first = settle(stub, child, 3_000, request_id="msg-fam-1")
    again = settle(stub, child, 3_000, request_id="msg-fam-1")
    assert first == again and account(stub, fid).balance_fen == 5_000


# --- 福建: contributors, the floor, once a month, oldest first, leave, 回拨 ------------------------


def test_fujian_members_contribute_above_the_floor_once_a_month_spent_oldest_first(start_registry, rdb):
    reg = start_registry("35")
    stub = reg.stub
    creator, son = enroll(stub, **FJ), enroll(stub, birth="19900101", **FJ)
    grandchild = enroll(stub, itype=RESIDENT, birth="20180101", **FJ)
    credit(stub, creator, 250_000)
    credit(stub, son, 230_000)
    fid = create(stub, creator).family_id
    invite(stub, fid, creator, son)
    accept(stub, fid, son)
    invite(stub, fid, creator, grandchild, cpb.RELATION_GRANDCHILD)
    err = refused(rdb, lambda: huabo(stub, fid, creator, 50_001), FP, "BELOW_MINIMUM_BALANCE")
    assert shown(err) == ("BELOW_MINIMUM_BALANCE: 划拨后个人账户余额将低于本省规定的保留额度"
                          "(须保留2000元,本次最多可划拨500元),本次未划拨;请减少金额后重新提交")
    huabo(stub, fid, creator, 50_000)  # exactly down to ¥2,000
    credit(stub, creator, 10_000)
    err = refused(rdb, lambda: huabo(stub, fid, creator, 1), FP, "MONTHLY_LIMIT_REACHED")
    assert shown(err) == "MONTHLY_LIMIT_REACHED: 本月划拨次数已达本省上限(每月最多1次),本次未划拨;请下月再划拨"
    refused(rdb, lambda: huabo(stub, fid, son, 40_000), FP, "BELOW_MINIMUM_BALANCE")
    huabo(stub, fid, son, 30_000)
    # The creator's is the oldest contribution: spent first, then the son's.
    res = settle(stub, grandchild, 60_000)
    assert [(c.helper_id_number, c.amount_fen, c.balance_after_fen) for c in res.helper_charges] == \
        [(creator, 50_000, 0), (son, 10_000, 20_000)]
    # The son leaves: his unspent share returns to his personal account, to the fen.
    left = stub.LeaveFamilyAccount(fpb.LeaveFamilyAccountRequest(request_id=rid("leave"), family_id=fid,
                                                                 member_id_number=son))
    assert left.returned_fen == 20_000 and balance(stub, son) == 200_000 + 20_000
    assert state_of(left.account, son) == fpb.MEMBERSHIP_STATE_ENDED and left.account.balance_fen == 0
    # Reversing the settlement: the creator's part goes back to the family; the son has left, so his goes
    # to his personal account.
    def given(pid: str) -> list[tuple[str, str, int, str]]:
        return [(r.role, r.member_id_number, r.mulaid_pay_fen, r.state) for r in
                stub.ListConsumptionRecords(pb.ListConsumptionRecordsRequest(id_number=pid)).records]
    assert given(son) == [("HELPER", grandchild, 10_000, "SETTLED")]  # he has left; his money paid this
    stub.ReverseSettlement(pb.ReverseSettlementRequest(request_id=rid("rev"), settlement_id=res.settlement_id))
    assert shares(account(stub, fid)) == {creator: 50_000}
    assert balance(stub, son) == 230_000
    assert given(son) == [("HELPER", grandchild, 10_000, "REVERSED")]
    assert given(creator) == [("HELPER", grandchild, 50_000, "REVERSED")]
    family_sum_matches(rdb, "35", fid)
    # Next month the creator may 划拨 again; 回拨 takes the unspent share back.
    reg.clock.advance(20 * 24 * 3600 * 1000)
    huabo(stub, fid, creator, 10_000)  # a new month
    refused(rdb, lambda: huabo(stub, fid, creator, 1), FP, "BELOW_MINIMUM_BALANCE")
    back = stub.WithdrawContribution(fpb.WithdrawContributionRequest(request_id=rid("wd"), family_id=fid,
                                                                     contributor_id_number=creator))
    assert back.returned_fen == 60_000 and balance(stub, creator) == 260_000
    refused(rdb, lambda: stub.WithdrawContribution(fpb.WithdrawContributionRequest(
        request_id=rid("wd"), family_id=fid, contributor_id_number=creator)), FP, "NO_UNSPENT_SHARE")


def test_fujian_temporary_member_is_paid_only_a_resident_premium(start_registry, rdb):
    stub = start_registry("35").stub
    creator, aunt = enroll(stub, **FJ), enroll(stub, itype=RESIDENT, birth="19600101", **FJ)
    credit(stub, creator, 300_000)
    fid = create(stub, creator, initial_transfer_fen=10_000).family_id
    acct = invite(stub, fid, creator, aunt, cpb.RELATION_SIBLING, temporary=True)
    assert state_of(acct, aunt) == fpb.MEMBERSHIP_STATE_MEMBER  # no face verification
    bill = settle(stub, aunt, 1_000)
    assert (bill.mulaid_pay_fen, bill.cash_pay_fen, bill.helper_reason) == (0, 1_000, "TEMPORARY_MEMBER")
    # Her premium is paid by 代缴 (SPEC §4b), never as a bill: a "premium" of any amount settled at an
    # institution would escape the window, the amount and once a year, and empty the account.
    refused(rdb, lambda: settle(stub, aunt, 9_000, category=cpb.CATEGORY_RESIDENT_PREMIUM), FP,
            "CATEGORY_NOT_PAYABLE")
    assert account(stub, fid).balance_fen == 10_000


def test_fujian_full_membership_pays_where_another_is_only_temporary(start_registry, rdb):
    """福建 is not exclusive: a child is a 临时成员 of an aunt's account (created first) and a full member of
    a parent's. A bill is paid by the parent's account, as Diagnose says, not refused by the aunt's."""
    stub = start_registry("35").stub
    aunt, parent = enroll(stub, **FJ), enroll(stub, **FJ)
    kid = enroll(stub, itype=RESIDENT, birth="20150101", **FJ)
    for creator in (aunt, parent):
        credit(stub, creator, 300_000)
    temp_fid = create(stub, aunt, initial_transfer_fen=50_000).family_id
    fid = create(stub, parent, initial_transfer_fen=50_000).family_id
    invite(stub, temp_fid, aunt, kid, cpb.RELATION_SIBLING, temporary=True)
    invite(stub, fid, parent, kid, cpb.RELATION_CHILD)  # under 16: a member at once
    verdicts = {who: stub.Diagnose(pb.DiagnoseRequest(member_id_number=kid, helper_id_number=who))
                for who in (aunt, parent)}
    assert [f.code for f in verdicts[aunt].findings] == ["TEMPORARY_MEMBER"]
    assert verdicts[parent].would_pay
    req = pb.SettleRequest(request_id=rid("settle"), patient_id_number=kid, amount_fen=5_000, use_account=True,
                           category=cpb.CATEGORY_OUTPATIENT, institution_code="H35020000001",
                           institution_admdvs="350200")
    pre = stub.PreSettle(pb.PreSettleRequest(patient_id_number=kid, amount_fen=5_000, use_account=True,
                                             category=cpb.CATEGORY_OUTPATIENT, institution_code="H35020000001",
                                             institution_admdvs="350200")).result
    res = stub.Settle(req).result
    assert (res.mulaid_pay_fen, res.cash_pay_fen, res.helper_reason) == (5_000, 0, "")
    assert [(c.helper_id_number, c.amount_fen) for c in res.helper_charges] == [(parent, 5_000)]
    pre.settlement_id, pre.state = res.settlement_id, res.state
    assert pre == res
    assert (shares(account(stub, fid)), shares(account(stub, temp_fid))) == ({parent: 45_000}, {aunt: 50_000})
    stub.ReverseSettlement(pb.ReverseSettlementRequest(request_id=rid("rev"), settlement_id=req.request_id))
    assert shares(account(stub, fid)) == {parent: 50_000}


def test_diagnosis_looks_at_the_account_helper_and_member_share(start_registry, rdb):
    """福建 is not exclusive: a parent who created an (empty) account of their own is also a member and
    contributor of the grandmother's, where the child is a member. Asked about parent and child,
    Diagnose looks at the account the two share, which pays the child's bill, not at the parent's own."""
    stub = start_registry("35").stub
    grandma, parent = enroll(stub, birth="19550101", **FJ), enroll(stub, **FJ)
    kid = enroll(stub, itype=RESIDENT, birth="20150101", **FJ)
    for adult in (grandma, parent):
        credit(stub, adult, 300_000)
    own = create(stub, parent).family_id
    fid = create(stub, grandma, initial_transfer_fen=50_000).family_id
    invite(stub, fid, grandma, parent, cpb.RELATION_CHILD)
    accept(stub, fid, parent)
    invite(stub, fid, grandma, kid, cpb.RELATION_GRANDCHILD)
    huabo(stub, fid, parent, 50_000)
    verdict = stub.Diagnose(pb.DiagnoseRequest(member_id_number=kid, helper_id_number=parent))
    assert (verdict.would_pay, [f.code for f in verdict.findings], verdict.helper_balance_fen) == (True, [], 100_000)
    assert verdict.binding_kind == pb.BINDING_KIND_MUTUAL_AID
    res = settle(stub, kid, 1_000)
    assert (res.family_id, res.mulaid_pay_fen) == (fid, 1_000)
    # Invited to the parent's own account too, the child is still paid for by the one with money.
    invite(stub, own, parent, kid)
    verdict = stub.Diagnose(pb.DiagnoseRequest(member_id_number=kid, helper_id_number=parent))
    assert (verdict.would_pay, verdict.helper_balance_fen) == (True, 99_000)
    assert settle(stub, kid, 1_000).family_id == fid
    # Asked about someone the parent shares no account with, it is still the parent's own account.
    other = enroll(stub, itype=RESIDENT, birth="20160101", **FJ)
    verdict = stub.Diagnose(pb.DiagnoseRequest(member_id_number=other, helper_id_number=parent))
    assert [f.code for f in verdict.findings] == ["NOT_FAMILY_MEMBER", "FAMILY_ZERO_BALANCE"]


# --- the reason codes of §3b ---------------------------------------------------------------------


def test_family_reason_codes_refuse_and_write_nothing(start_registry, rdb):
    gs = start_registry("62").stub
    hb = start_registry("13").stub
    creator = enroll(gs, **GS)
    other = enroll(gs, birth="19700101", **GS)
    resident = enroll(gs, itype=RESIDENT, birth="19900101", **GS)
    kid = enroll(gs, itype=RESIDENT, birth="20150101", **GS)
    credit(gs, creator, 1_000)
    credit(gs, other, 1_000)
    hebei_person = enroll(hb)
    refused(rdb, lambda: create(hb, hebei_person), FP, "MODEL_NOT_POOLED")
    refused(rdb, lambda: gs.BindMutualAid(pb.BindMutualAidRequest(
        request_id=rid("b"), helper_id_number=creator, member_id_number=kid, relation=cpb.RELATION_CHILD)),
        FP, "MODEL_POOLED")
    refused(rdb, lambda: gs.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
        request_id=rid("f"), creator_id_number=creator)), FP, "COMMITMENT_REQUIRED")
    refused(rdb, lambda: create(gs, resident), FP, "HELPER_NOT_EMPLOYEE")
    refused(rdb, lambda: create(gs, creator, initial_transfer_fen=2_000), FP, "INSUFFICIENT_BALANCE")
    fid = create(gs, creator).family_id
    refused(rdb, lambda: create(gs, creator), grpc.StatusCode.ALREADY_EXISTS, "FAMILY_ACCOUNT_EXISTS")
    refused(rdb, lambda: invite(gs, fid, other, kid), FP, "NOT_FAMILY_CREATOR")
    refused(rdb, lambda: invite(gs, fid, creator, kid, cpb.RELATION_PARENT_IN_LAW), FP, "RELATION_NOT_ALLOWED")
    refused(rdb, lambda: invite(gs, fid, creator, creator), grpc.StatusCode.INVALID_ARGUMENT, "SELF_BINDING")
    refused(rdb, lambda: accept(gs, fid, kid), FP, "NO_INVITATION")
    invite(gs, fid, creator, kid)
    refused(rdb, lambda: invite(gs, fid, creator, kid), grpc.StatusCode.ALREADY_EXISTS, "ALREADY_MEMBER")
    # 甘肃 is exclusive: the kid belongs to one family account at a time.
    fid2 = create(gs, other).family_id
    refused(rdb, lambda: invite(gs, fid2, other, kid), FP, "ALREADY_IN_ANOTHER_RELATION")
    refused(rdb, lambda: huabo(gs, fid, kid, 100), FP, "NOT_A_CONTRIBUTOR")
    refused(rdb, lambda: huabo(gs, fid, creator, 1_001), FP, "INSUFFICIENT_BALANCE")
    refused(rdb, lambda: gs.WithdrawContribution(fpb.WithdrawContributionRequest(
        request_id=rid("w"), family_id=fid, contributor_id_number=creator)), FP, "WITHDRAWAL_NOT_ALLOWED")
    refused(rdb, lambda: gs.LeaveFamilyAccount(fpb.LeaveFamilyAccountRequest(
        request_id=rid("l"), family_id=fid, member_id_number=creator)), FP, "CREATOR_CANNOT_LEAVE")
    refused(rdb, lambda: gs.LeaveFamilyAccount(fpb.LeaveFamilyAccountRequest(
        request_id=rid("l"), family_id=fid, member_id_number=other)), FP, "NOT_A_MEMBER")
    cousin = enroll(gs, **GS)
    refused(rdb, lambda: invite(gs, fid, creator, cousin, temporary=True), FP,
            "TEMPORARY_MEMBERS_NOT_ALLOWED")
    # An empty account pays nothing and says why (原因三); a non-member is told so.
    assert settle(gs, kid, 100).helper_reason == "FAMILY_ZERO_BALANCE"
    assert settle(gs, resident, 100).helper_reason == ""


def test_a_withdrawal_whose_share_is_spent_while_it_waits_is_refused_as_such(start_registry, rdb):
    """回拨 checks the share before it waits for the family's lock, and again under it on a fresh read: a
    bill spends the whole share meanwhile, so the 回拨 is refused NO_UNSPENT_SHARE (not an internal
    error) and leaves nothing behind."""
    stub = start_registry("35").stub
    creator, kid = enroll(stub, **FJ), enroll(stub, itype=RESIDENT, birth="20150101", **FJ)
    credit(stub, creator, 300_000)
    fid = create(stub, creator, initial_transfer_fen=10_000).family_id
    invite(stub, fid, creator, kid)
    lock = f"reg:35:{{fam}}:lk:{fid}:lock"
    rdb.set(lock, "someone-else:1", px=10_000)  # another change to the family account is under way
    request = fpb.WithdrawContributionRequest(request_id="wd-race", family_id=fid, contributor_id_number=creator)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(stub.WithdrawContribution, request)
        for _ in range(500):  # until the 回拨 has passed its check and waits for the lock
            if rdb.zscore("reg:35:{open}:setl", f"L|{fid}|wd-race") is not None:
                break
            time.sleep(0.01)
        assert settle(stub, kid, 10_000).mulaid_pay_fen == 10_000
        rdb.delete(lock)
        with pytest.raises(grpc.RpcError) as ei:
            pending.result(timeout=30)
    assert (ei.value.code(), reason(ei.value)) == (FP, "NO_UNSPENT_SHARE"), ei.value.details()
    assert not rdb.zcard("reg:35:{open}:setl") and not rdb.exists(f"reg:35:{{fam}}:ret:{fid}")
    assert balance(stub, creator) == 290_000 and account(stub, fid).balance_fen == 0


def test_member_limit_counts_the_creator_and_open_invitations(start_registry, rdb):
    stub = start_registry("62").stub
    creator = enroll(stub, **GS)
    fid = create(stub, creator).family_id
    kids = [enroll(stub, itype=RESIDENT, birth="20150101", **GS) for _ in range(6)]
    adult = enroll(stub, birth="19900101", **GS)
    for k in kids:
        invite(stub, fid, creator, k)
    refused(rdb, lambda: invite(stub, fid, creator, adult), FP, "MEMBER_LIMIT_REACHED")
    stub.RemoveMember(fpb.RemoveMemberRequest(request_id=rid("rm"), family_id=fid, creator_id_number=creator,
                                              member_id_number=kids[0]))
    assert state_of(invite(stub, fid, creator, adult), adult) == fpb.MEMBERSHIP_STATE_INVITED


def test_invitation_expires(start_registry, rdb):
    reg = start_registry("62")
    stub = reg.stub
    creator, adult = enroll(reg.stub, **GS), enroll(reg.stub, birth="19900101", **GS)
    fid = create(stub, creator).family_id
    invite(stub, fid, creator, adult)
    reg.clock.advance(reg.registry.policy.invitation_ttl_ms + 1)
    refused(rdb, lambda: accept(stub, fid, adult), FP, "INVITATION_EXPIRED")
    assert state_of(account(stub, fid), adult) == fpb.MEMBERSHIP_STATE_EXPIRED
    invite(stub, fid, creator, adult)  # invited again
    assert state_of(accept(stub, fid, adult), adult) == fpb.MEMBERSHIP_STATE_MEMBER


# --- idempotency, life-cycle, crashes --------------------------------------------------------------


def test_transfer_replay_moves_money_once_and_reuse_is_refused(start_registry, rdb):
    stub = start_registry("62").stub
    creator = enroll(stub, **GS)
    credit(stub, creator, 10_000)
    fid = create(stub, creator).family_id
    first = huabo(stub, fid, creator, 4_000, request_id="hb-1")
    assert huabo(stub, fid, creator, 4_000, request_id="hb-1") == first
    assert balance(stub, creator) == 6_000 and account(stub, fid).balance_fen == 4_000
    with pytest.raises(grpc.RpcError) as ei:
        huabo(stub, fid, creator, 5_000, request_id="hb-1")
    assert reason(ei.value) == "IDEMPOTENCY_KEY_REUSED"


def test_creator_terminated_dissolves_the_account_and_returns_every_share(start_registry, rdb):
    stub = start_registry("35").stub
    creator, son = enroll(stub, **FJ), enroll(stub, birth="19900101", **FJ)
    credit(stub, creator, 210_000)
    credit(stub, son, 205_000)
    fid = create(stub, creator, initial_transfer_fen=10_000).family_id
    invite(stub, fid, creator, son)
    accept(stub, fid, son)
    huabo(stub, fid, son, 5_000)
    stub.UpdatePersonStatus(pb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=creator,
                                                         status=cpb.PERSON_STATUS_TERMINATED))
    acct = account(stub, fid)
    assert acct.state == "DISSOLVED" and acct.end_reason == "CREATOR_TERMINATED" and acct.balance_fen == 0
    assert balance(stub, creator) == 210_000 and balance(stub, son) == 205_000


def test_deaths_end_memberships_and_the_shares_go_home_before_the_payout(start_registry, rdb):
    """SPEC §5b: a contributing member's death ends their membership and their unspent share is in
    what their heir is paid; the creator's death dissolves the account, every other share going home."""
    stub = start_registry("35").stub
    creator, son, daughter = (enroll(stub, birth=birth, **FJ) for birth in ("19800101", "19900101", "19920101"))
    heir = enroll(stub, birth="19850101", **FJ)
    for pid in (creator, son, daughter):
        credit(stub, pid, 210_000)
    fid = create(stub, creator, initial_transfer_fen=10_000).family_id
    for pid in (son, daughter):
        invite(stub, fid, creator, pid)
        accept(stub, fid, pid)
        huabo(stub, fid, pid, 5_000)

    def death(pid: str) -> pb.RecordDeathResponse:
        return stub.RecordDeath(pb.RecordDeathRequest(request_id=rid("death"), id_number=pid, heir_id_number=heir,
                                                      date_of_death="20261121"))

    assert death(son).paid_out_fen == 210_000  # 205,000 in the account and the 5,000 share
    acct = account(stub, fid)
    assert state_of(acct, son) == fpb.MEMBERSHIP_STATE_ENDED and acct.balance_fen == 15_000
    assert death(creator).paid_out_fen == 210_000
    acct = account(stub, fid)
    assert (acct.state, acct.end_reason, acct.balance_fen) == ("DISSOLVED", "CREATOR_DECEASED", 0)
    assert balance(stub, daughter) == 210_000
    assert verdict.check(rdb).conserved


@pytest.mark.parametrize("point", ["family.after_debit", "family.after_credit"])
def test_crash_inside_a_transfer_is_finished_by_recovery(start_registry, rdb, loop_thread, point):
    reg = start_registry("62")
    stub = reg.stub
    creator = enroll(stub, **GS)
    credit(stub, creator, 10_000)
    fid = create(stub, creator).family_id
    start = money(rdb, "62")

    def crash(p: str) -> None:
        if p == point:
            raise InjectedFault(p)

    reg.registry.fault_hook = crash
    with pytest.raises(grpc.RpcError):
        huabo(stub, fid, creator, 3_000, request_id="hb-crash")
    reg.registry.fault_hook = None
    assert money(rdb, "62") == start
    reg.clock.advance(60_000)
    counts = loop_thread.run(reg.registry.recover())
    assert counts.family == 1
    assert account(stub, fid).balance_fen == 3_000 and balance(stub, creator) == 7_000
    assert money(rdb, "62") == start and not rdb.zcard("reg:62:{open}:setl")
    # The resend answers as if nothing had happened.
    assert huabo(stub, fid, creator, 3_000, request_id="hb-crash").account.balance_fen == 3_000
    assert balance(stub, creator) == 7_000


def _fujian_contributor(start_registry: Any) -> tuple[Any, str, str, str]:
    """福建 (members contribute): an account with the creator's 10,000 fen in and an adult son, a MEMBER
    with 300,000 fen of his own who has not contributed yet. (registry, fid, creator, son)"""
    reg = start_registry("35")
    creator, son = enroll(reg.stub, **FJ), enroll(reg.stub, birth="19900101", **FJ)
    credit(reg.stub, creator, 300_000)
    credit(reg.stub, son, 300_000)
    fid = create(reg.stub, creator, initial_transfer_fen=10_000).family_id
    invite(reg.stub, fid, creator, son)
    accept(reg.stub, fid, son)
    return reg, fid, creator, son


def _transfer_given_back(rdb: redis.Redis, reg: Any, fid: str, son: str, request_id: str, why: str) -> None:
    """The son's 划拨 `request_id` is refused `why` (a resend answers the same), the money home to the fen,
    the month's 划拨 not counted, the account without a lot of his, and every fen accounted for."""
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as ei:
            huabo(reg.stub, fid, son, 50_000, request_id=request_id)
        assert (ei.value.code(), reason(ei.value)) == (FP, why), ei.value.details()
    assert balance(reg.stub, son) == 300_000 and not any(int(n) for n in rdb.hvals(f"reg:35:{{p:{son}}}:famx_month"))
    acct = account(reg.stub, fid)
    assert son not in shares(acct) and not [e for e in acct.history if e.kind == "TRANSFER_IN" and e.id_number == son]
    assert not rdb.zcard("reg:35:{open}:setl") and verdict.check(rdb).conserved


@pytest.mark.parametrize("change", ["leave", "remove", "dissolve"])
@pytest.mark.parametrize("finisher", ["resend", "recovery"])
def test_a_transfer_debited_before_its_contributor_left_goes_back_home(start_registry, rdb, loop_thread,
                                                                        change, finisher):
    """SPEC §3b 划拨: only a member (福建) may move money into the account. The son's 划拨 is debited, then
    (its process gone before the credit) he leaves, is removed, or the account is dissolved, by real
    calls; whoever finishes the 划拨 (a resend or the recovery loop) judges the credit again: the
    account does not take it, the debit goes back, and the 划拨 is refused NOT_A_CONTRIBUTOR
    (FAMILY_NOT_ACTIVE once dissolved)."""
    reg, fid, creator, son = _fujian_contributor(start_registry)
    stub = reg.stub
    def crash(p: str) -> None:
        if p == "family.after_debit":
            raise InjectedFault(p)

    reg.registry.fault_hook = crash
    with pytest.raises(grpc.RpcError):
        huabo(stub, fid, son, 50_000, request_id="hb-left")
    reg.registry.fault_hook = None
    assert balance(stub, son) == 250_000
    if change == "leave":
        stub.LeaveFamilyAccount(fpb.LeaveFamilyAccountRequest(request_id=rid("l"), family_id=fid, member_id_number=son))
    elif change == "remove":
        stub.RemoveMember(fpb.RemoveMemberRequest(request_id=rid("rm"), family_id=fid, creator_id_number=creator,
                                                  member_id_number=son))
    else:
        stub.DissolveFamilyAccount(fpb.DissolveFamilyAccountRequest(request_id=rid("dis"), family_id=fid,
                                                                    creator_id_number=creator))
    if finisher == "recovery":
        reg.clock.advance(60_000)
        assert loop_thread.run(reg.registry.recover()).family == 1
    _transfer_given_back(rdb, reg, fid, son, "hb-left", "FAMILY_NOT_ACTIVE" if change == "dissolve" else
                         "NOT_A_CONTRIBUTOR")


def test_a_contributor_leaving_between_the_credit_judgement_and_its_write_is_caught(start_registry, rdb):
    """The credit of a debited 划拨 is judged in Python (family_rules.credit_taken) and applied by
    family_credit.lua only while what it was judged on stands. The son's place ends (as a leave ends a
    place with no share: the entry ENDED, the membership gone) after the judgement took him for a
    member and before the write: the script writes nothing, the credit is judged again, and the money
    goes home (NOT_A_CONTRIBUTOR), not into an account he has left."""
    reg, fid, _, son = _fujian_contributor(start_registry)
    members, left = f"reg:35:{{fam}}:m:{fid}", []

    def leaves_meanwhile(at: str) -> None:
        if at == "family.before_credit" and not left:
            m = json.loads(rdb.hget(members, son))
            m.update(state="ENDED", ended_at=str(reg.clock.now_ms()), end_reason="LEFT")
            rdb.hset(members, son, json.dumps(m))
            rdb.hdel(f"reg:35:{{fam}}:of:{son}", fid)
            left.append(son)

    reg.registry.fault_hook = leaves_meanwhile
    try:
        _transfer_given_back(rdb, reg, fid, son, "hb-race", "NOT_A_CONTRIBUTOR")
    finally:
        reg.registry.fault_hook = None
    assert left == [son]


def test_a_suspension_taking_the_contributors_lock_before_the_debit_is_caught(start_registry, rdb, loop_thread):
    """A 划拨 judged with the contributor ACTIVE stalls past its lock, and a status change takes the
    person's lock (its fence moves on) and suspends them before the debit: the debit, fenced, writes
    nothing and the 划拨 is answered UNAVAILABLE (LOCK_LOST); the resend is judged again and refused
    HELPER_NOT_ACTIVE. Not one fen moved."""
    reg, fid, _, son = _fujian_contributor(start_registry)
    suspended: list[str] = []

    def suspended_meanwhile(at: str) -> None:
        if at == "family.before_debit" and not suspended:
            rdb.incr(f"reg:35:{{p:{son}}}:fence")  # the status change's lease, after this one expired
            rdb.hset(f"reg:35:{{p:{son}}}:person", mapping={"status": "SUSPENDED"})
            suspended.append(son)

    reg.registry.fault_hook = suspended_meanwhile
    try:
        with pytest.raises(grpc.RpcError) as ei:
            huabo(reg.stub, fid, son, 50_000, request_id="hb-susp")
    finally:
        reg.registry.fault_hook = None
    assert (ei.value.code(), reason(ei.value)) == (grpc.StatusCode.UNAVAILABLE, "LOCK_LOST"), ei.value.details()
    assert suspended == [son]
    with pytest.raises(grpc.RpcError) as ei:  # its refusal frees the id the stalled attempt held
        huabo(reg.stub, fid, son, 50_000, request_id="hb-susp")
    assert (ei.value.code(), reason(ei.value)) == (FP, "HELPER_NOT_ACTIVE"), ei.value.details()
    assert not rdb.exists(f"reg:35:{{p:{son}}}:famx:hb-susp")
    reg.clock.advance(60_000)  # the stalled attempt's entry: the loop finds nothing debited and drops it
    loop_thread.run(reg.registry.recover())
    assert not rdb.zcard("reg:35:{open}:setl")
    assert balance(reg.stub, son) == 300_000 and account(reg.stub, fid).balance_fen == 10_000
    assert verdict.check(rdb).conserved


def test_a_creation_whose_initial_transfer_is_refused_meanwhile_creates_nothing(start_registry, rdb):
    """福建: the creator's initial 划拨 is judged (this month's first), then, before the account is written,
    another 划拨 of theirs (into a relative's account, where they are a member) is debited and counts
    this month. The creation is refused MONTHLY_LIMIT_REACHED, and a refusal writes nothing: no account
    may stand, or the creator, told no, is refused FAMILY_ACCOUNT_EXISTS when they try again. The 划拨 is
    judged again under the creator's lock, before anything is debited or written; the same request id,
    sent again next month, is judged afresh and creates the account holding the money."""
    reg = start_registry("35")
    creator = enroll(reg.stub, **FJ)
    credit(reg.stub, creator, 300_000)
    month, counted = month_of(reg.clock.now_ms()), []

    def another_transfer_meanwhile(at: str) -> None:
        if at == "family.before_create" and not counted:
            rdb.hincrby(f"reg:35:{{p:{creator}}}:famx_month", month, 1)  # what family_debit.lua counts
            counted.append(at)

    reg.registry.fault_hook = another_transfer_meanwhile
    try:
        with pytest.raises(grpc.RpcError) as ei:
            create(reg.stub, creator, initial_transfer_fen=50_000, request_id="fam-meanwhile")
    finally:
        reg.registry.fault_hook = None
    assert (ei.value.code(), reason(ei.value)) == (FP, "MONTHLY_LIMIT_REACHED"), ei.value.details()
    assert balance(reg.stub, creator) == 300_000
    assert rdb.get(f"reg:35:{{fam}}:by:{creator}") is None
    assert not rdb.zcard("reg:35:{open}:setl") and not rdb.exists("reg:35:{rid:fam-meanwhile}")
    reg.clock.advance(31 * 24 * 3600 * 1000)
    made = create(reg.stub, creator, initial_transfer_fen=50_000, request_id="fam-meanwhile")
    assert made.balance_fen == 50_000 and balance(reg.stub, creator) == 250_000
    assert verdict.check(rdb).conserved


def test_a_creation_refused_by_its_write_after_the_debit_gives_the_money_back(start_registry, rdb):
    """甘肃 (exclusive): the creation and its initial 划拨 are judged, the creator is debited under their
    lock, and before the account is written the creator accepts an invitation into another account. The
    account's write is refused ALREADY_IN_ANOTHER_RELATION (family_create.lua, the rule of every place):
    the money goes back under the lock and nothing of the creation stands (no account, no entry, the
    request id free). Once they leave the other account, the same request id is judged afresh and
    creates the account holding the money, debited once."""
    reg = start_registry("62")
    stub, k = reg.stub, "reg:62:{fam}"
    creator, adult = enroll(stub, **GS), enroll(stub, birth="19990101", **GS)
    credit(stub, adult, 100_000)
    fid = create(stub, creator).family_id
    invite(stub, fid, creator, adult, cpb.RELATION_SIBLING)
    accepted: list[Any] = []

    def accept_meanwhile(at: str) -> None:
        if at == "family.after_debit" and not accepted:
            assert int(rdb.hget(f"reg:62:{{p:{adult}}}:acct", "bal")) == 70_000  # debited, no account yet
            accepted.append(rdb.eval(lua_source("medaid.registry", "family_respond"), 4, f"{k}:f:{fid}",
                                     f"{k}:m:{fid}", f"{k}:of:{adult}", f"{k}:hist:{fid}", fid, adult, "1",
                                     reg.clock.now_ms(), reg.registry.policy.max_members, "1", "acc-meanwhile"))

    reg.registry.fault_hook = accept_meanwhile
    try:
        with pytest.raises(grpc.RpcError) as ei:
            create(stub, adult, initial_transfer_fen=30_000, request_id="fam-after-debit")
    finally:
        reg.registry.fault_hook = None
    assert accepted == [[b"OK", b"MEMBER"]]
    assert (ei.value.code(), reason(ei.value)) == (FP, "ALREADY_IN_ANOTHER_RELATION"), ei.value.details()
    assert balance(stub, adult) == 100_000 and rdb.get(f"{k}:by:{adult}") is None
    assert not rdb.zcard("reg:62:{open}:setl") and not rdb.exists("reg:62:{rid:fam-after-debit}")
    assert verdict.check(rdb).conserved
    stub.LeaveFamilyAccount(fpb.LeaveFamilyAccountRequest(request_id=rid("leave"), family_id=fid,
                                                          member_id_number=adult))
    made = create(stub, adult, initial_transfer_fen=30_000, request_id="fam-after-debit")
    assert (made.creator_id_number, made.balance_fen) == (adult, 30_000) and balance(stub, adult) == 70_000
    assert create(stub, adult, initial_transfer_fen=30_000, request_id="fam-after-debit") == made
    assert balance(stub, adult) == 70_000 and verdict.check(rdb).conserved


def test_a_funded_creation_with_an_account_already_standing_writes_nothing(start_registry, rdb):
    """The creation's own refusals are asked of family_create.lua before the debit: a creator who has an
    account, asking for another with an initial 划拨, is refused FAMILY_ACCOUNT_EXISTS with nothing
    written, not even a debit given back."""
    reg = start_registry("62")
    creator = enroll(reg.stub, **GS)
    credit(reg.stub, creator, 100_000)
    create(reg.stub, creator)
    refused(rdb, lambda: create(reg.stub, creator, initial_transfer_fen=30_000), grpc.StatusCode.ALREADY_EXISTS,
            "FAMILY_ACCOUNT_EXISTS")


@pytest.mark.parametrize("point", ["family.before_debit", "family.after_debit", "family.after_credit",
                                   "family.after_create"])
@pytest.mark.parametrize("repair", ["resend", "recovery"])
def test_a_funded_creation_crashed_at_each_step_is_whole_or_nothing(start_registry, rdb, loop_thread, point,
                                                                     repair):
    """A creation with an initial 划拨 dies at each step: before the debit, after it (the account not
    written), after the account is written holding the money (the 划拨 not yet finished), after both.
    Repaired by a resend of the same request or by the recovery loop alone, it is one outcome: the
    account holding the money and the creator debited once, or, where nothing was debited, nothing at
    all and the request id free (judged afresh: corrected fields create). Money conserved to the fen."""
    reg = start_registry("35")
    creator = enroll(reg.stub, **FJ)
    credit(reg.stub, creator, 300_000)
    fired: list[str] = []

    def crash(at: str) -> None:
        if at == point and not fired:
            fired.append(at)
            raise InjectedFault(at)

    reg.registry.fault_hook = crash
    with pytest.raises(grpc.RpcError):
        create(reg.stub, creator, initial_transfer_fen=50_000, request_id="fam-crash")
    reg.registry.fault_hook = None
    assert fired == [point]
    nothing = point == "family.before_debit"
    if repair == "recovery":
        reg.clock.advance(60_000)
        loop_thread.run(reg.registry.recover())
        assert not rdb.zcard("reg:35:{open}:setl")
        assert verdict.check(rdb).conserved
        if nothing:
            assert rdb.get(f"reg:35:{{fam}}:by:{creator}") is None and balance(reg.stub, creator) == 300_000
            assert not rdb.exists("reg:35:{rid:fam-crash}")
        else:
            fid = rdb.get(f"reg:35:{{fam}}:by:{creator}").decode()
            assert account(reg.stub, fid).balance_fen == 50_000 and balance(reg.stub, creator) == 250_000
            assert rdb.hget("reg:35:{rid:fam-crash}", "state") == b"DONE"
    amount = 40_000 if nothing and repair == "recovery" else 50_000  # the id freed: corrected fields
    made = create(reg.stub, creator, initial_transfer_fen=amount, request_id="fam-crash")
    assert made.balance_fen == amount and balance(reg.stub, creator) == 300_000 - amount
    assert create(reg.stub, creator, initial_transfer_fen=amount, request_id="fam-crash") == made
    assert not rdb.zcard("reg:35:{open}:setl")
    report = verdict.check(rdb)
    assert report.conserved and report.in_flight_fen == 0, report.as_dict()


@pytest.mark.parametrize("point", ["family.after_end", "family.after_payout"])
def test_crash_inside_a_dissolution_is_finished_by_recovery(start_registry, rdb, loop_thread, point):
    reg = start_registry("35")
    stub = reg.stub
    creator, son = enroll(stub, **FJ), enroll(stub, birth="19900101", **FJ)
    credit(stub, creator, 210_000)
    credit(stub, son, 205_000)
    fid = create(stub, creator, initial_transfer_fen=10_000).family_id
    invite(stub, fid, creator, son)
    accept(stub, fid, son)
    huabo(stub, fid, son, 5_000)
    start = money(rdb, "35")

    def crash(p: str) -> None:
        if p == point:
            raise InjectedFault(p)

    reg.registry.fault_hook = crash
    with pytest.raises(grpc.RpcError):
        stub.DissolveFamilyAccount(fpb.DissolveFamilyAccountRequest(request_id="dis-crash", family_id=fid,
                                                                    creator_id_number=creator))
    reg.registry.fault_hook = None
    reg.clock.advance(60_000)
    assert loop_thread.run(reg.registry.recover()).family == 1
    assert balance(stub, creator) == 210_000 and balance(stub, son) == 205_000
    assert money(rdb, "35") == start and not rdb.zcard("reg:35:{open}:setl")
    again = stub.DissolveFamilyAccount(fpb.DissolveFamilyAccountRequest(request_id="dis-crash", family_id=fid,
                                                                        creator_id_number=creator))
    assert sorted((s.id_number, s.share_fen) for s in again.returned) == sorted([(creator, 10_000), (son, 5_000)])
    assert balance(stub, creator) == 210_000


def test_members_spend_while_one_contributor_transfers_and_another_leaves(start_registry, rdb):
    """Concurrency: four members settle bills while the creator 划拨s again and again and the son (a
    contributor) leaves. No balance goes negative; the son gets back exactly his contributions less what
    settlements charged to him; every fen is accounted for."""
    policy = dataclasses.replace(policy_for("35"), transfers_per_month=0, keep_min_balance_fen=0)
    stub = start_registry("35", policy=policy).stub
    creator, son = enroll(stub, **FJ), enroll(stub, birth="19900101", **FJ)
    kids = [enroll(stub, itype=RESIDENT, birth="20150101", **FJ) for _ in range(4)]
    credit(stub, creator, 100_000)
    credit(stub, son, 60_000)
    fid = create(stub, creator, initial_transfer_fen=20_000).family_id
    invite(stub, fid, creator, son)
    accept(stub, fid, son)
    for k in kids:
        invite(stub, fid, creator, k)
    huabo(stub, fid, son, 30_000)
    start = money(rdb, "35")
    results: list[pb.SettlementResult] = []
    left: list[fpb.LeaveFamilyAccountResponse] = []

    def spend(kid: str) -> None:
        for _ in range(6):
            results.append(settle(stub, kid, 2_700))

    def give() -> None:
        for _ in range(8):
            huabo(stub, fid, creator, 5_000)

    def leave() -> None:
        left.append(stub.LeaveFamilyAccount(fpb.LeaveFamilyAccountRequest(
            request_id=rid("leave"), family_id=fid, member_id_number=son)))

    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = [pool.submit(spend, k) for k in kids] + [pool.submit(give), pool.submit(leave)]
        for fut in futures:
            fut.result()
    for r in results:
        assert r.acct_pay_fen + r.mulaid_pay_fen + r.cash_pay_fen == 2_700
        assert min(r.mulaid_pay_fen, r.cash_pay_fen) >= 0
        assert sum(c.amount_fen for c in r.helper_charges) == r.mulaid_pay_fen
    charged_to_son = sum(c.amount_fen for r in results for c in r.helper_charges if c.helper_id_number == son)
    assert left[0].returned_fen == 30_000 - charged_to_son
    assert balance(stub, son) == 60_000 - 30_000 + left[0].returned_fen
    acct = account(stub, fid)
    assert acct.balance_fen >= 0 and son not in shares(acct)
    family_sum_matches(rdb, "35", fid)
    spent = sum(r.mulaid_pay_fen for r in results)
    assert money(rdb, "35") == start - spent
    report = verdict.check(rdb)
    assert report.conserved and report.family_accounts == 1, report.as_dict()
    assert all(int(v) >= 0 for key in rdb.scan_iter("reg:35:*:acct") for v in [rdb.hget(key, "bal") or 0])


def test_diagnosis_in_a_pooled_province_explains_why_the_family_account_would_not_pay(start_registry, rdb):
    stub = start_registry("35").stub
    creator = enroll(stub, **FJ)
    adult, kid = enroll(stub, birth="19900101", **FJ), enroll(stub, itype=RESIDENT, birth="20150101", **FJ)
    aunt = enroll(stub, itype=RESIDENT, birth="19600101", **FJ)
    credit(stub, creator, 300_000)
    fid = create(stub, creator).family_id

    def codes(member: str, category: int = 0) -> list[str]:
        d = stub.Diagnose(pb.DiagnoseRequest(member_id_number=member, helper_id_number=creator, category=category))
        assert d.would_pay == (not d.findings)
        return [f.code for f in d.findings]

    assert codes(kid) == ["NOT_FAMILY_MEMBER", "FAMILY_ZERO_BALANCE"]
    invite(stub, fid, creator, kid)
    invite(stub, fid, creator, adult)
    invite(stub, fid, creator, aunt, cpb.RELATION_SIBLING, temporary=True)
    assert codes(kid) == ["FAMILY_ZERO_BALANCE"]  # 原因三
    huabo(stub, fid, creator, 10_000)
    assert codes(kid) == [] and codes(adult) == ["INVITATION_NOT_ACCEPTED"]
    assert codes(aunt) == ["TEMPORARY_MEMBER"] and codes(aunt, cpb.CATEGORY_RESIDENT_PREMIUM) == []
    assert codes(kid, cpb.CATEGORY_FITNESS) == ["CATEGORY_NOT_PAYABLE"]


def test_diagnosis_of_a_helper_without_a_family_account_says_so_not_that_it_is_empty(start_registry, rdb):
    """A helper who never created a family account, or whose account was dissolved, has no balance to
    fund (原因三 is about an account that exists): the answer is only that the member is in none."""
    stub = start_registry("35").stub
    creator, kid = enroll(stub, **FJ), enroll(stub, itype=RESIDENT, birth="20150101", **FJ)
    credit(stub, creator, 300_000)

    def findings() -> list[tuple[str, str]]:
        d = stub.Diagnose(pb.DiagnoseRequest(member_id_number=kid, helper_id_number=creator))
        assert d.would_pay == (not d.findings)
        return [(f.code, f.message) for f in d.findings]

    none = [("NOT_FAMILY_MEMBER", "共济人没有家庭共济账户(未创建或已解散),本次费用不会由家庭共济账户支付;"
                                  "请先创建家庭共济账户并邀请被共济人加入")]
    assert findings() == none
    fid = create(stub, creator, initial_transfer_fen=10_000).family_id
    invite(stub, fid, creator, kid)
    assert findings() == []
    stub.DissolveFamilyAccount(fpb.DissolveFamilyAccountRequest(request_id=rid("dis"), family_id=fid,
                                                                creator_id_number=creator))
    assert findings() == none


def test_bad_input_to_family_rpcs_is_invalid_argument_and_writes_nothing(start_registry, rdb):
    stub = start_registry("62").stub
    creator = enroll(stub, **GS)
    credit(stub, creator, 10_000)
    fid = create(stub, creator).family_id
    bad = grpc.StatusCode.INVALID_ARGUMENT
    refused(rdb, lambda: huabo(stub, fid, creator, 0), bad, "INVALID_AMOUNT")
    refused(rdb, lambda: huabo(stub, fid, creator, -5), bad, "INVALID_AMOUNT")
    refused(rdb, lambda: huabo(stub, "no such id!", creator, 100), bad, "INVALID_FAMILY_ID")
    refused(rdb, lambda: huabo(stub, fid, "123", 100), bad, "INVALID_ID_NUMBER")
    refused(rdb, lambda: huabo(stub, fid, creator, 100, request_id="bad id with spaces"), bad, "INVALID_REQUEST_ID")
    kid = enroll(stub, itype=RESIDENT, birth="20150101", **GS)
    refused(rdb, lambda: invite(stub, fid, creator, kid, relation=0), bad, "UNKNOWN_RELATION")
    refused(rdb, lambda: account(stub, "FA62XXXXXXXX"), grpc.StatusCode.NOT_FOUND, "FAMILY_NOT_FOUND")


def test_a_move_to_another_region_ends_memberships_where_cross_region_is_not_allowed(start_registry, rdb):
    """SPEC §3b, §5b: where the province has no cross-region 共济, a member who moves to another 统筹区
    leaves the family account (the account no longer pays for them), and a creator who moves keeps only
    the members of their new 统筹区."""
    stub = start_registry("62", policy=dataclasses.replace(policy_for("62"), cross_region_allowed=False)).stub
    creator, child = enroll(stub, **GS), enroll(stub, itype=RESIDENT, birth="20150101", **GS)
    other = enroll(stub, itype=RESIDENT, birth="20160101", **GS)
    credit(stub, creator, 100_000)
    fid = create(stub, creator).family_id
    invite(stub, fid, creator, child)
    invite(stub, fid, creator, other)
    huabo(stub, fid, creator, 50_000)

    def move(pid: str, region: str) -> None:
        stub.MovePoolingRegion(pb.MovePoolingRegionRequest(request_id=rid("mv"), id_number=pid, pooling_region=region))

    def states() -> dict[str, tuple[int, str]]:
        return {m.id_number: (m.state, m.end_reason) for m in account(stub, fid).members}

    move(child, "620200")
    assert states()[child] == (fpb.MEMBERSHIP_STATE_ENDED, "MOVED_REGION")
    assert settle(stub, child, 10_000).cash_pay_fen == 10_000
    move(creator, "620200")  # the creator follows the child to 嘉峪关: the member left in 兰州 goes
    assert states()[other] == (fpb.MEMBERSHIP_STATE_ENDED, "CREATOR_MOVED_REGION")
    assert states()[creator] == (fpb.MEMBERSHIP_STATE_MEMBER, "")
    assert account(stub, fid).state == "ACTIVE" and account(stub, fid).balance_fen == 50_000
    assert verdict.check(rdb).conserved


def test_invite_person_rules_and_structure_refusals(start_registry, rdb):
    """The §3 person rules at invitation, and the structural ones the script checks."""
    gs = start_registry("62", policy=dataclasses.replace(policy_for("62"), cross_region_allowed=False)).stub
    hb = start_registry("13").stub
    creator = enroll(gs, **GS)
    fid = create(gs, creator).family_id
    tianshui = enroll(gs, itype=RESIDENT, birth="20150101", region="620500", division="620502")
    hebei_kid = enroll(hb, itype=RESIDENT, birth="20150101")
    stranger = new_id("620102", "20150101")  # enrolled nowhere
    adult = enroll(gs, birth="19900101", **GS)
    refused(rdb, lambda: invite(gs, fid, creator, tianshui), FP, "DIFFERENT_POOLING_REGION")
    refused(rdb, lambda: invite(gs, fid, creator, hebei_kid), FP, "CROSS_PROVINCE")
    refused(rdb, lambda: invite(gs, fid, creator, stranger), FP, "MEMBER_NOT_INSURED")
    invite(gs, fid, creator, adult)
    refused(rdb, lambda: invite(gs, fid, creator, adult), grpc.StatusCode.ALREADY_EXISTS, "ALREADY_INVITED")
    gs.UpdatePersonStatus(pb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=creator,
                                                       status=cpb.PERSON_STATUS_SUSPENDED))
    kid = enroll(gs, itype=RESIDENT, birth="20150101", **GS)
    refused(rdb, lambda: invite(gs, fid, creator, kid), FP, "HELPER_NOT_ACTIVE")
    gs.UpdatePersonStatus(pb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=creator,
                                                       status=cpb.PERSON_STATUS_ACTIVE))
    gs.DissolveFamilyAccount(fpb.DissolveFamilyAccountRequest(request_id=rid("dis"), family_id=fid,
                                                              creator_id_number=creator))
    refused(rdb, lambda: invite(gs, fid, creator, kid), FP, "FAMILY_NOT_ACTIVE")
    refused(rdb, lambda: accept(gs, fid, adult), FP, "FAMILY_NOT_ACTIVE")


def test_pooled_bills_settle_in_one_script_as_the_staged_path_would(start_registry, rdb, caplog):
    """SPEC §3b, step 3 in every case: no account, only invited, a zero balance, an account that pays
    part. On one Redis each bill is planned and applied in one script (settle_apply.lua); its twin on
    the staged path (the one a cluster takes) answers, records and moves money exactly alike."""
    running = start_registry("62")
    stub, reg = running.stub, running.registry

    def family() -> dict[str, str]:
        creator, child = enroll(stub, **GS), enroll(stub, itype=RESIDENT, birth="20150101", **GS)
        loner, spouse = enroll(stub, **GS), enroll(stub, birth="19820101", **GS)
        for pid in (creator, loner, spouse):
            credit(stub, pid, 1_000)
        fid = create(stub, creator).family_id
        invite(stub, fid, creator, child)  # under 16: a member at once
        invite(stub, fid, creator, spouse, cpb.RELATION_SPOUSE)  # invited, not accepted
        return {"creator": creator, "child": child, "loner": loner, "spouse": spouse, "fid": fid}

    def paths() -> list[str]:
        return [r.fields["path"] for r in caplog.records if getattr(r, "fields", {}).get("path")]

    def run(f: dict[str, str]) -> list[Any]:
        named = {v: k for k, v in f.items()}
        out: list[Any] = []
        for who in ("loner", "spouse", "child"):
            r = settle(stub, f[who], 5_000)
            out.append((r.acct_pay_fen, r.mulaid_pay_fen, r.cash_pay_fen, r.helper_reason))
        huabo(stub, f["fid"], f["creator"], 600)
        r = settle(stub, f["child"], 5_000)
        out.append((r.acct_pay_fen, r.mulaid_pay_fen, r.cash_pay_fen, r.helper_reason, r.family_id == f["fid"],
                    [(named[c.helper_id_number], c.amount_fen, c.balance_after_fen) for c in r.helper_charges]))
        records = stub.ListConsumptionRecords(pb.ListConsumptionRecordsRequest(id_number=f["child"])).records
        out.append([(x.role, named[x.helper_id_number], x.mulaid_pay_fen, x.state) for x in records])
        acct = account(stub, f["fid"])
        out.append((acct.balance_fen, {named[k]: v for k, v in shares(acct).items()}, [e.kind for e in acct.history]))
        stub.ReverseSettlement(pb.ReverseSettlementRequest(request_id=rid("rev"), settlement_id=r.settlement_id))
        out.append(account(stub, f["fid"]).balance_fen)
        family_sum_matches(rdb, "62", f["fid"])
        return out

    start = money(rdb, "62")
    got = {}
    for path in ("atomic", "staged"):
        reg.atomic = path == "atomic"
        f = family()
        caplog.clear()
        try:
            with caplog.at_level("INFO", logger="medaid.registry"):
                got[path] = run(f)
        finally:
            reg.atomic = True
        assert paths() == [path] * 4
    assert got["atomic"] == got["staged"]
    assert got["atomic"][:4] == [(1_000, 0, 4_000, ""), (1_000, 0, 4_000, "NOT_FAMILY_MEMBER"),
                                 (0, 0, 5_000, "FAMILY_ZERO_BALANCE"),
                                 (0, 600, 4_400, "FAMILY_INSUFFICIENT", True, [("creator", 600, 0)])]
    assert got["atomic"][4] == [("MEMBER", "creator", 600, "SETTLED")]
    assert got["atomic"][5] == (0, {}, ["CREATED", "JOINED", "INVITED", "TRANSFER_IN", "SPENT"])
    assert got["atomic"][6] == 600  # the reversal put the family share back
    credited = 2 * 3 * 1_000
    assert money(rdb, "62") == start + credited - 2 * 2_000  # own accounts paid 1 000 twice a family


def _gansu_family(stub: Any, credited: int, *lots: int) -> tuple[str, str, str]:
    """甘肃: a creator credited `credited` fen, a resident child in the account, one 划拨 per `lots`."""
    creator, child = enroll(stub, **GS), enroll(stub, itype=RESIDENT, birth="20150101", **GS)
    credit(stub, creator, credited)
    fid = create(stub, creator).family_id
    invite(stub, fid, creator, child)
    for amount in lots:
        huabo(stub, fid, creator, amount)
    return creator, child, fid


def _family_keys(fid: str) -> list[str]:
    fam = "reg:62:{fam}"
    return [f"{fam}:{part}:{fid}" for part in ("f", "m", "lots", "shares", "applied", "hist")]


def test_family_charge_applies_exactly_the_lots_the_plan_saw_or_nothing(start_registry, rdb):
    """lua/family_charge.lua decides nothing (SPEC §3b, one implementation of oldest first in
    rules.family_step): lot parts planned on a lot that has changed since are refused with nothing
    written; the parts as planned are applied exactly; the first outcome of an id sticks."""
    stub = start_registry("62").stub
    creator, child, fid = _gansu_family(stub, 1_000, 300, 500)
    keys = _family_keys(fid)
    assert rdb.exists(*keys) == 6, "the test's key names are the registry's"
    older, newer = sorted(int(f) for f in rdb.hkeys(keys[2]))
    charge = lua_source("medaid.registry", "family_charge")

    def run(sid: str, parts: str) -> list[Any]:
        return [x.decode() for x in rdb.eval(charge, 6, *keys, sid, child, parts, 1_000)]

    before = snapshot(rdb)
    assert run("s1", f"{older}:{creator}:400:300") == ["CONFLICT", ""]  # the plan saw 400 in a lot of 300
    assert run("s1", f"{newer}:{child}:500:100") == ["CONFLICT", ""]  # nor is the lot the child's
    assert snapshot(rdb) == before
    assert run("s1", f"{older}:{creator}:300:300,{newer}:{creator}:500:200") == ["OK", f"{creator}:500:300"]
    assert rdb.hgetall(keys[2]) == {f"{newer:012d}".encode(): f"{creator}:300".encode()}
    assert run("s1", "") == ["DUP", f"{creator}:500:300"]
    assert run("s2", "") == ["VOID", ""]
    assert run("s2", f"{newer}:{creator}:300:100") == ["VOID", ""]  # nothing taken stays nothing taken
    assert int(rdb.hget(keys[0], "bal")) == 300
    family_sum_matches(rdb, "62", fid)


def test_a_staged_family_charge_takes_the_lots_as_they_are_when_it_runs(start_registry, rdb):
    """A staged settlement's family charge is planned on what the account holds when it runs; money
    leaves the oldest lot between that plan and its script: the planned lot parts no longer hold, so
    the charge is planned again, oldest first, and what it cannot take is cash (SPEC §3b, §7)."""
    running = start_registry("62")
    stub, reg = running.stub, running.registry
    creator, child, fid = _gansu_family(stub, 1_000, 300, 500)
    f, _, lots, shares_key, _, _ = _family_keys(fid)
    start = money(rdb, "62")
    seen: list[str] = []

    def spent_meanwhile(point: str) -> None:
        if point == "family.before_charge" and not seen:  # what another member's 100 does
            seen.append(point)
            oldest = sorted(rdb.hkeys(lots))[0]
            rdb.hset(lots, oldest, f"{creator}:200")
            rdb.hincrby(f, "bal", -100)
            rdb.hincrby(shares_key, creator, -100)

    reg.atomic, reg.fault_hook = False, spent_meanwhile
    try:
        res = settle(stub, child, 1_000)
    finally:
        reg.atomic, reg.fault_hook = True, None
    assert seen
    assert (res.mulaid_pay_fen, res.cash_pay_fen, res.helper_reason) == (700, 300, "FAMILY_INSUFFICIENT")
    assert [(c.helper_id_number, c.amount_fen, c.balance_after_fen) for c in res.helper_charges] == [(creator, 700, 0)]
    assert rdb.hlen(lots) == 0
    assert money(rdb, "62") == start - 100 - 700
    family_sum_matches(rdb, "62", fid)


def test_a_family_account_funded_between_read_and_apply_is_planned_again(start_registry, rdb, caplog):
    """The plan for a member of an empty family account says cash; a 划拨 lands before the script
    applies it: settle_apply.lua finds the balance the plan saw changed, writes nothing, and the bill
    is planned again, with the family account paying (SPEC §3b, §7: a plan applies only what holds)."""
    running = start_registry("62")
    stub, reg = running.stub, running.registry
    creator, child = enroll(stub, **GS), enroll(stub, itype=RESIDENT, birth="20150101", **GS)
    credit(stub, creator, 1_000)
    fid = create(stub, creator).family_id
    invite(stub, fid, creator, child)
    start = money(rdb, "62")
    fam = "reg:62:{fam}"

    def funded_meanwhile(point: str) -> None:
        # What a 划拨 of 700 does, written directly (a gRPC call would wait on this very event loop).
        if point == "settle.before_apply" and not rdb.exists(f"{fam}:lots:{fid}"):
            rdb.hincrby(f"reg:62:{{p:{creator}}}:acct", "bal", -700)
            rdb.hincrby(f"{fam}:f:{fid}", "bal", 700)
            rdb.hset(f"{fam}:lots:{fid}", f"{999_999:012d}", f"{creator}:700")
            rdb.hincrby(f"{fam}:shares:{fid}", creator, 700)

    reg.fault_hook = funded_meanwhile
    try:
        with caplog.at_level("INFO", logger="medaid.registry"):
            res = settle(stub, child, 5_000)
    finally:
        reg.fault_hook = None
    assert (res.mulaid_pay_fen, res.cash_pay_fen, res.helper_reason) == (700, 4_300, "FAMILY_INSUFFICIENT")
    assert [r.fields["path"] for r in caplog.records if getattr(r, "fields", {}).get("path")] == ["atomic"]
    assert money(rdb, "62") == start - 700
    family_sum_matches(rdb, "62", fid)


# --- 冲正 of a 2208 of a family-account bill (SPEC §3b, §6) ---------------------------------------


def _reversed_family_bill(start_registry: Any) -> tuple[Any, Any, str, str, str, str, str]:
    """甘肃: the creator's 45,000 in the family account, a child's bill of 12,000 paid from it, reversed."""
    running = start_registry("62")
    stub = running.stub
    creator, child, fid = _gansu_family(stub, 100_000, 45_000)
    res = settle(stub, child, 12_000)
    assert (res.mulaid_pay_fen, res.family_id) == (12_000, fid)
    rev = rid("2208")
    stub.ReverseSettlement(pb.ReverseSettlementRequest(request_id=rev, settlement_id=res.settlement_id))
    assert account(stub, fid).balance_fen == 45_000
    return running, stub, creator, child, fid, res.settlement_id, rev


def test_undoing_a_reversal_takes_the_family_share_from_the_family_account(start_registry, rdb):
    """The family account pays its share again, from the same contributor; no personal account is
    touched; a second reversal gives it back again (under the undo's own marks), once."""
    _, stub, creator, child, fid, sid, rev = _reversed_family_bill(start_registry)
    start, personal = money(rdb, "62"), balance(stub, creator)
    req = pb.UndoReversalRequest(request_id=rid("2601"), reversal_id=rev)
    undo = stub.UndoReversal(req)
    assert (undo.outcome, undo.mulaid_pay_fen) == ("RESTORED", 12_000)
    assert [(c.helper_id_number, c.amount_fen) for c in undo.helper_charges] == [(creator, 12_000)]
    assert stub.UndoReversal(req) == undo
    assert (balance(stub, creator), account(stub, fid).balance_fen) == (personal, 33_000)
    assert money(rdb, "62") == start - 12_000
    assert stub.GetSettlement(pb.GetSettlementRequest(settlement_id=sid)).result.state == "SETTLED"
    family_sum_matches(rdb, "62", fid)
    again = stub.ReverseSettlement(pb.ReverseSettlementRequest(request_id=rid("2208"), settlement_id=sid))
    assert again.mulaid_refund_fen == 12_000
    assert (balance(stub, creator), account(stub, fid).balance_fen) == (personal, 45_000)
    assert money(rdb, "62") == start
    family_sum_matches(rdb, "62", fid)
    assert verdict.check(rdb).conserved


def test_undoing_a_reversal_is_refused_when_the_family_account_no_longer_covers_it(start_registry, rdb):
    """The family account has paid another bill since the reversal: the undo is refused before
    anything is written (UNDO_SOURCE_SHORT); no personal account pays in its place."""
    _, stub, _, child, _, _, rev = _reversed_family_bill(start_registry)
    assert settle(stub, child, 40_000).mulaid_pay_fen == 40_000  # 5,000 left
    refused(rdb, lambda: stub.UndoReversal(pb.UndoReversalRequest(request_id=rid("2601"), reversal_id=rev)),
            FP, "UNDO_SOURCE_SHORT")


def test_an_undo_cut_by_a_crash_then_short_of_family_money_gives_everything_back(start_registry, rdb):
    """A crash once the own share is taken; the family account is spent before the retry: the retry
    finds the share no longer there, gives the own share back and leaves the bill reversed."""
    running, stub, creator, child, fid, sid, rev = _reversed_family_bill(start_registry)
    start, personal = money(rdb, "62"), balance(stub, creator)
    req = pb.UndoReversalRequest(request_id=rid("2601"), reversal_id=rev)
    fired: list[str] = []

    def crash(p: str) -> None:
        if p == "undo.after_begin" and not fired:
            fired.append(p)
            raise InjectedFault(p)

    running.registry.fault_hook = crash
    try:
        with pytest.raises(grpc.RpcError):
            stub.UndoReversal(req)
    finally:
        running.registry.fault_hook = None
    assert fired
    spent = settle(stub, child, 40_000)
    assert spent.mulaid_pay_fen == 40_000
    with pytest.raises(grpc.RpcError) as ei:
        stub.UndoReversal(req)
    assert (ei.value.code(), reason(ei.value)) == (FP, "UNDO_SOURCE_SHORT")
    assert stub.GetSettlement(pb.GetSettlementRequest(settlement_id=sid)).result.state == "REVERSED"
    assert (balance(stub, creator), account(stub, fid).balance_fen) == (personal, 5_000)
    assert money(rdb, "62") == start - 40_000
    family_sum_matches(rdb, "62", fid)
    assert verdict.check(rdb).conserved


def test_a_member_not_using_the_account_is_told_so_on_both_paths(start_registry, rdb):
    """acct_used_flag=0 for a member of a funded family account: all cash, with the reason
    ACCOUNT_NOT_USED (SPEC §4: a reason whenever the bound source did not pay), as in 河北."""
    running = start_registry("62")
    stub, reg = running.stub, running.registry
    _, child, fid = _gansu_family(stub, 10_000, 5_000)
    stranger = enroll(stub, itype=RESIDENT, birth="20150101", **GS)
    for atomic in (True, False):
        reg.atomic = atomic
        try:
            r = settle(stub, child, 1_000, use_account=False)
            alone = settle(stub, stranger, 1_000, use_account=False)
        finally:
            reg.atomic = True
        assert (r.mulaid_pay_fen, r.cash_pay_fen, r.helper_reason) == (0, 1_000, "ACCOUNT_NOT_USED"), atomic
        assert (alone.cash_pay_fen, alone.helper_reason) == (1_000, ""), atomic  # no family: nothing to say
    assert account(stub, fid).balance_fen == 5_000


@pytest.mark.parametrize("atomic", [True, False], ids=["atomic", "staged"])
def test_a_policy_switched_to_no_cross_region_lets_no_family_account_pay_across_regions(start_registry, rdb, atomic):
    """甘肃 let a 兰州 creator take a 天水 child into the family account; the province then turns
    cross-region 共济 off (the registry restarts with the new policy). The membership stays (only a
    move or a leaving ends it) but the account pays nothing for the child of the other 统筹区: one rule
    (`rules.regions_apart`, creator against member) answers Diagnose, PreSettle and Settle alike, as
    it does for a binding. A member of the creator's own 统筹区 is still paid for."""
    allowed = start_registry("62").stub
    creator = enroll(allowed, **GS)
    far = enroll(allowed, itype=RESIDENT, birth="20150101", region="620500", division="620502")
    near = enroll(allowed, itype=RESIDENT, birth="20160101", **GS)
    credit(allowed, creator, 100_000)
    fid = create(allowed, creator).family_id
    invite(allowed, fid, creator, far)
    invite(allowed, fid, creator, near)
    huabo(allowed, fid, creator, 50_000)
    running = start_registry("62", policy=dataclasses.replace(policy_for("62"), cross_region_allowed=False))
    running.registry.atomic = atomic
    stub = running.stub
    d = stub.Diagnose(pb.DiagnoseRequest(member_id_number=far, helper_id_number=creator))
    assert (d.would_pay, [f.code for f in d.findings]) == (False, ["DIFFERENT_POOLING_REGION"])
    req = dict(patient_id_number=far, amount_fen=2_000, use_account=True, category=cpb.CATEGORY_OUTPATIENT,
               institution_code="H62050000001", institution_admdvs="620500")
    pre = stub.PreSettle(pb.PreSettleRequest(**req)).result
    res = stub.Settle(pb.SettleRequest(request_id=rid("2207"), **req)).result
    for r in (pre, res):
        assert (r.mulaid_pay_fen, r.cash_pay_fen, r.helper_reason) == (0, 2_000, "DIFFERENT_POOLING_REGION")
    assert account(stub, fid).balance_fen == 50_000
    # Nor does the account pay the far child's 居民医保 premium (代缴, SPEC §4b): refused, nothing written.
    refused(rdb, lambda: stub.PayResidentPremium(ppb.PayResidentPremiumRequest(
        request_id=rid("prem"), payer_id_number=creator, payee_id_number=far, relation=cpb.RELATION_CHILD,
        year="2027", source=ppb.PREMIUM_SOURCE_FAMILY_ACCOUNT, family_id=fid)), FP, "DIFFERENT_POOLING_REGION")
    d = stub.Diagnose(pb.DiagnoseRequest(member_id_number=near, helper_id_number=creator))
    assert (d.would_pay, list(d.findings)) == (True, [])
    assert settle(stub, near, 2_000).mulaid_pay_fen == 2_000
    assert account(stub, fid).balance_fen == 48_000
    assert verdict.check(rdb).conserved


def test_an_invitation_across_regions_cannot_be_accepted_once_the_province_turns_cross_region_off(
        start_registry, rdb):
    """甘肃 let a 兰州 creator invite a 天水 adult child; before the child accepts, the province turns
    cross-region 共济 off. Accepting is refused DIFFERENT_POOLING_REGION, as inviting would be now
    (`rules.regions_apart`, creator against member), and writes nothing; an invitee of the creator's own
    统筹区 still joins."""
    allowed = start_registry("62").stub
    creator = enroll(allowed, **GS)
    far = enroll(allowed, itype=RESIDENT, birth="20000101", region="620500", division="620502")
    near = enroll(allowed, itype=RESIDENT, birth="20010101", **GS)
    fid = create(allowed, creator).family_id
    assert state_of(invite(allowed, fid, creator, far), far) == fpb.MEMBERSHIP_STATE_INVITED
    invite(allowed, fid, creator, near)
    stub = start_registry("62", policy=dataclasses.replace(policy_for("62"), cross_region_allowed=False)).stub
    refused(rdb, lambda: accept(stub, fid, far), FP, "DIFFERENT_POOLING_REGION")
    assert state_of(account(stub, fid), far) == fpb.MEMBERSHIP_STATE_INVITED
    assert state_of(accept(stub, fid, near), near) == fpb.MEMBERSHIP_STATE_MEMBER


def test_a_withdrawal_by_someone_not_in_the_family_account_is_refused_not_a_member(start_registry, rdb):
    """回拨 (福建) asked by a person who is no member of the account says NOT_A_MEMBER, as a leaving
    does, not NO_UNSPENT_SHARE; an unknown account says FAMILY_NOT_FOUND. Nothing is written."""
    stub = start_registry("35").stub
    creator, stranger = enroll(stub, **FJ), enroll(stub, **FJ)
    credit(stub, creator, 300_000)
    fid = create(stub, creator, initial_transfer_fen=10_000).family_id
    refused(rdb, lambda: stub.WithdrawContribution(fpb.WithdrawContributionRequest(
        request_id=rid("wd"), family_id=fid, contributor_id_number=stranger)), FP, "NOT_A_MEMBER")
    refused(rdb, lambda: stub.LeaveFamilyAccount(fpb.LeaveFamilyAccountRequest(
        request_id=rid("l"), family_id=fid, member_id_number=stranger)), FP, "NOT_A_MEMBER")
    refused(rdb, lambda: stub.WithdrawContribution(fpb.WithdrawContributionRequest(
        request_id=rid("wd"), family_id="FA35XXXXXXXX", contributor_id_number=creator)),
        grpc.StatusCode.NOT_FOUND, "FAMILY_NOT_FOUND")


def test_a_burst_of_creations_in_one_province_all_create(start_registry, rdb):
    """Sixty-four family accounts created at once in one province (a seeding job, a busy morning): each
    creation waits its turn for the province's id counter; none is turned away FAMILY_BUSY, every
    account gets its own id, and a resend of each answers its own account."""
    stub = start_registry("62").stub
    creators = [enroll(stub, **GS) for _ in range(64)]
    requests = {c: rid("fam") for c in creators}
    with ThreadPoolExecutor(max_workers=64) as pool:
        made = list(pool.map(lambda c: create(stub, c, request_id=requests[c]), creators))
    assert len({a.family_id for a in made}) == 64
    assert [a.creator_id_number for a in made] == creators
    for c, a in zip(creators, made, strict=True):
        assert create(stub, c, request_id=requests[c]).family_id == a.family_id


def test_a_withdrawal_whose_share_is_spent_after_its_judgement_under_the_lock_is_judged_again(
        start_registry, rdb):
    """回拨 is judged under the family's lock on a fresh read (family_rules.check_end); a bill spends the
    whole share after that judgement, before family_end.lua runs: the script, which decides nothing,
    finds the share changed, writes nothing and answers AGAIN; judged again, the 回拨 is refused
    NO_UNSPENT_SHARE and leaves nothing behind."""
    running = start_registry("35")
    stub, reg = running.stub, running.registry
    creator, kid = enroll(stub, **FJ), enroll(stub, itype=RESIDENT, birth="20150101", **FJ)
    credit(stub, creator, 300_000)
    fid = create(stub, creator, initial_transfer_fen=10_000).family_id
    invite(stub, fid, creator, kid)
    spent: list[str] = []

    def bill_meanwhile(point: str) -> None:
        if point == "family.before_end" and not spent:
            spent.append(point)
            fam = "reg:35:{fam}"
            rdb.delete(f"{fam}:lots:{fid}")
            rdb.hdel(f"{fam}:shares:{fid}", creator)
            rdb.hincrby(f"{fam}:f:{fid}", "bal", -10_000)

    reg.fault_hook = bill_meanwhile
    try:
        with pytest.raises(grpc.RpcError) as ei:
            stub.WithdrawContribution(fpb.WithdrawContributionRequest(
                request_id="wd-judged", family_id=fid, contributor_id_number=creator))
    finally:
        reg.fault_hook = None
    assert spent
    assert (ei.value.code(), reason(ei.value)) == (FP, "NO_UNSPENT_SHARE"), ei.value.details()
    assert not rdb.zcard("reg:35:{open}:setl") and not rdb.exists(f"reg:35:{{fam}}:ret:{fid}")
    assert balance(stub, creator) == 290_000 and account(stub, fid).balance_fen == 0


def test_a_removal_whose_invitation_is_declined_after_its_judgement_is_judged_again(start_registry, rdb):
    """A removal of an open invitation is judged under the lock; the invitee declines before
    family_end.lua runs: the script finds the member entry changed and answers AGAIN, nothing written;
    judged again, the removal is refused NOT_A_MEMBER (a declined place is no one's to end) and the
    account is as the decline left it."""
    running = start_registry("62")
    stub, reg = running.stub, running.registry
    creator, adult = enroll(stub, **GS), enroll(stub, birth="19900101", **GS)
    fid = create(stub, creator).family_id
    invite(stub, fid, creator, adult)
    fam = "reg:62:{fam}"
    answered: list[tuple[bytes, int]] = []

    def declined_meanwhile(point: str) -> None:  # what family_respond.lua writes for a decline
        if point == "family.before_end" and not answered:
            m = json.loads(rdb.hget(f"{fam}:m:{fid}", adult))
            m["state"], m["ended_at"], m["resp"] = "DECLINED", m["invited_at"], "no-1"
            rdb.hset(f"{fam}:m:{fid}", adult, json.dumps(m))
            rdb.hdel(f"{fam}:of:{adult}", fid)
            answered.append((rdb.hget(f"{fam}:m:{fid}", adult), rdb.llen(f"{fam}:hist:{fid}")))

    reg.fault_hook = declined_meanwhile
    try:
        with pytest.raises(grpc.RpcError) as ei:
            stub.RemoveMember(fpb.RemoveMemberRequest(request_id=rid("rm"), family_id=fid, creator_id_number=creator,
                                                      member_id_number=adult))
    finally:
        reg.fault_hook = None
    assert answered
    assert (ei.value.code(), reason(ei.value)) == (FP, "NOT_A_MEMBER"), ei.value.details()
    assert (rdb.hget(f"{fam}:m:{fid}", adult), rdb.llen(f"{fam}:hist:{fid}")) == answered[0]
    assert not rdb.zcard("reg:62:{open}:setl") and not rdb.exists(f"{fam}:ret:{fid}")
    acct = account(stub, fid)
    assert state_of(acct, adult) == fpb.MEMBERSHIP_STATE_DECLINED
    assert "REMOVED" not in [e.kind for e in acct.history]
