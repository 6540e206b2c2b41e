"""Diagnose of a bill (SPEC §4 diagnosis, `DiagnoseRequest.amount_fen`): given the bill at hand, Diagnose
says what 共济 from this helper would pay of it and why not more, by the settlement engine's own plan,
and agrees with a 2206 pre-settlement of the same bill at the router. Without an amount the answer is
as it always was. Real registries, wallet and router over gRPC."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import grpc
import pytest
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import family_pb2 as fpb
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.router.v1 import router_pb2 as opb
from support import FACE, RESIDENT, bind, credit, enroll, reason, rid, settle, snapshot

HEBEI = opb.Institution(fixmedins_code="H13010100001", mdtrtarea_admvs="130100")
GANSU = opb.Institution(fixmedins_code="H62010200001", mdtrtarea_admvs="620100")
GS = {"region": "620100", "division": "620102"}
_seq = iter(range(1, 10_000))


def presettle_2206(router: Any, inst: opb.Institution, psn: str, amount: int) -> opb.SetlInfo:
    mid = f"{inst.fixmedins_code}20261122103000{next(_seq):04d}"
    return router.stub.PreSettle(opb.PreSettleRequest(msgid=mid, institution=inst, input=opb.SettleInput(
        psn_no=psn, psn_part_amt_fen=amount, medfee_sumamt_fen=amount, acct_used_flag="1",
        category=cpb.CATEGORY_OUTPATIENT, mdtrt_id=f"MDTRT-D{mid[-4:]}")), timeout=10).setlinfo


def diagnose(stub: Any, member: str, helper: str, amount: int = 0) -> rpb.DiagnoseResponse:
    return stub.Diagnose(rpb.DiagnoseRequest(member_id_number=member, helper_id_number=helper, amount_fen=amount))


def agrees(d: rpb.DiagnoseResponse, pre: opb.SetlInfo) -> None:
    bill = d.bill
    assert bill.state == "PRE_SETTLEMENT"
    assert (bill.acct_pay_fen, bill.wallet_pay_fen, bill.mulaid_pay_fen, bill.cash_pay_fen, bill.helper_reason) == \
        (pre.acct_pay_fen, pre.wallet_pay_fen, pre.acct_mulaid_pay_fen, pre.psn_cash_pay_fen, pre.mulaid_reason)


def test_a_bill_the_only_helper_cannot_cover_is_diagnosed_as_settlement_would_pay_it(national, start_router, rdb):
    """河北 (all or nothing, 不凑钱): a helper holding ¥50 would pay a ¥30 bill whole, but nothing of a
    ¥200 one. Without an amount Diagnose says would_pay (the helper is ready); with the ¥200 bill it says
    the helper pays ¥0 of it, HELPER_INSUFFICIENT with the split in Chinese, exactly as a 2206 of that
    bill at the router and the settlement itself; with the ¥30 bill it pays ¥30."""
    router = start_router()
    hb = national.reg("13")
    helper, member = enroll(hb), enroll(hb, itype=RESIDENT, birth="20150101")
    credit(hb, helper, 5_000)
    bind(hb, helper, member, verification=None)
    before = snapshot(rdb)
    plain = diagnose(hb, member, helper)
    assert plain.would_pay and not plain.findings and not plain.HasField("bill") and plain.mulaid_pay_fen == 0

    big = diagnose(hb, member, helper, 20_000)
    assert not big.would_pay and big.mulaid_pay_fen == 0
    assert [f.code for f in big.findings] == ["HELPER_INSUFFICIENT"]
    message = big.findings[0].message
    assert "¥200.00" in message and "¥50.00" in message and "凑钱" in message, message
    agrees(big, presettle_2206(router, HEBEI, member, 20_000))

    small = diagnose(hb, member, helper, 3_000)
    assert small.would_pay and small.mulaid_pay_fen == 3_000 and not small.findings
    agrees(small, presettle_2206(router, HEBEI, member, 3_000))
    assert snapshot(rdb) == before, "Diagnose and PreSettle write nothing"
    assert settle(hb, member, 20_000).helper_reason == "HELPER_INSUFFICIENT"


def test_a_family_account_that_pays_part_of_a_bill_says_how_much_and_why_not_more(national, start_router):
    """甘肃 (POOLED_ACCOUNT): the family account holds ¥100 and may pay part of a bill: of a ¥300 bill it
    pays ¥100 and says FAMILY_INSUFFICIENT, the rest cash, as a 2206 of that bill says."""
    router = start_router()
    gs = national.reg("62")
    creator, child = enroll(gs, **GS), enroll(gs, itype=RESIDENT, birth="20150101", **GS)
    credit(gs, creator, 50_000)
    fid = gs.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
        request_id=rid("fam"), creator_id_number=creator, commitment=FACE,
        initial_transfer_fen=10_000)).account.family_id
    gs.InviteMember(fpb.InviteMemberRequest(request_id=rid("inv"), family_id=fid, creator_id_number=creator,
                                            member_id_number=child, relation=cpb.RELATION_CHILD))
    assert diagnose(gs, child, creator).would_pay
    d = diagnose(gs, child, creator, 30_000)
    assert d.would_pay and d.mulaid_pay_fen == 10_000 and d.bill.family_id == fid
    assert [f.code for f in d.findings] == ["FAMILY_INSUFFICIENT"]
    assert "¥100.00" in d.findings[0].message and "¥200.00" in d.findings[0].message, d.findings[0].message
    agrees(d, presettle_2206(router, GANSU, child, 30_000))


def test_a_member_no_bill_can_be_planned_for_gets_the_findings_alone(national):
    """A SUSPENDED member: no settlement of theirs can be planned, so Diagnose of a bill answers the
    findings (MEMBER_NOT_INSURED) and no split, not an error."""
    hb = national.reg("13")
    helper, member = enroll(hb), enroll(hb, itype=RESIDENT, birth="20150101")
    credit(hb, helper, 5_000)
    bind(hb, helper, member, verification=None)
    hb.UpdatePersonStatus(rpb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=member,
                                                        status=cpb.PERSON_STATUS_SUSPENDED))
    d = diagnose(hb, member, helper, 3_000)
    assert not d.would_pay and not d.HasField("bill") and d.mulaid_pay_fen == 0
    assert "MEMBER_NOT_INSURED" in [f.code for f in d.findings]


@pytest.mark.parametrize(("amount", "why"), [(-1, "INVALID_AMOUNT"), (2**63 - 1, "AMOUNT_TOO_LARGE")])
def test_a_negative_or_absurd_bill_is_invalid_argument(national, rdb, amount, why):
    hb = national.reg("13")
    helper, member = enroll(hb), enroll(hb, itype=RESIDENT, birth="20150101")
    before = snapshot(rdb)
    with pytest.raises(grpc.RpcError) as ei:
        diagnose(hb, member, helper, amount)
    assert (ei.value.code(), reason(ei.value)) == (grpc.StatusCode.INVALID_ARGUMENT, why)
    assert snapshot(rdb) == before


BJ = {"region": "110000", "division": "110105"}
BEIJING = opb.Institution(fixmedins_code="H11010500001", mdtrtarea_admvs="110000")
_YUAN = re.compile(r"¥([0-9,]+\.[0-9]{2})")


def beijing_family(bj: Any, *balances: int) -> tuple[str, list[str]]:
    """A 北京 child and helpers bound in this order (备案 order), holding `balances`."""
    child = enroll(bj, itype=RESIDENT, birth="20160101", **BJ)
    helpers = []
    for fen in balances:
        helper = enroll(bj, birth="19700101", **BJ)
        if fen:
            credit(bj, helper, fen)
        bind(bj, helper, child)
        helpers.append(helper)
    return child, helpers


def split_of(message: str) -> list[int]:
    """The split a bill finding opens with: 个人负担, then 个人账户, 医保钱包, 共济 and 个人现金 (fen)."""
    head = message.split("。", 1)[0]
    head = re.sub(r"\(其中[^)]*\)", "", head)  # this helper's part of the 共济, beside the whole
    return [int(Decimal(v.replace(",", "")) * 100) for v in _YUAN.findall(head)]


def test_a_beijing_helper_with_nothing_to_pay_is_not_told_helpers_never_pool(national, start_router):
    """北京 draws helpers in turn (按备案顺序): the first, holding ¥0, pays nothing of a ¥50 bill, the
    second pays its ¥10, the rest is cash. Diagnose of the first says so: not that the province never
    takes money from several helpers (不凑钱, which is 河北's rule), and its split adds up to the bill
    (共济 ¥10, cash ¥40), as a 2206 of it at the router answers."""
    router = start_router()
    bj = national.reg("11")
    child, (first, second) = beijing_family(bj, 0, 1_000)
    d = diagnose(bj, child, first, 5_000)
    agrees(d, presettle_2206(router, BEIJING, child, 5_000))
    assert d.mulaid_pay_fen == 0 and not d.would_pay
    [bill] = [f for f in d.findings if f.code == "HELPER_INSUFFICIENT"]
    assert "凑钱" not in bill.message, bill.message
    assert split_of(bill.message) == [5_000, 0, 0, 1_000, 4_000], bill.message
    assert "¥10.00" in bill.message.split("。", 1)[1], bill.message  # what the other helpers paid

    d = diagnose(bj, child, second, 5_000)
    assert d.would_pay and d.mulaid_pay_fen == 1_000
    [bill] = [f for f in d.findings if f.code == "HELPER_INSUFFICIENT"]
    assert split_of(bill.message) == [5_000, 0, 0, 1_000, 4_000], bill.message


def test_a_split_with_helpers_in_turn_names_the_whole_mulaid_and_this_helpers_part(national, start_router):
    """北京: helpers holding ¥30 and ¥10 pay ¥40 of a ¥50 bill. Diagnose of the second says 共济 ¥40
    (its own ¥10 beside it) and cash ¥10: the split adds up to the bill."""
    router = start_router()
    bj = national.reg("11")
    child, (_, second) = beijing_family(bj, 3_000, 1_000)
    d = diagnose(bj, child, second, 5_000)
    agrees(d, presettle_2206(router, BEIJING, child, 5_000))
    assert d.would_pay and d.mulaid_pay_fen == 1_000
    [bill] = [f for f in d.findings if f.code == "HELPER_INSUFFICIENT"]
    assert split_of(bill.message) == [5_000, 0, 0, 4_000, 1_000], bill.message
    assert "¥10.00" in bill.message and "凑钱" not in bill.message, bill.message


def test_a_helper_another_pays_before_is_not_said_to_be_short_of_a_bill_it_could_pay(national, start_router):
    """河北 (largest balance first, all or nothing): helpers holding ¥50 and ¥40; the first pays a ¥30
    bill whole. Diagnose of the second says another helper pays first (OTHER_HELPER_FIRST), not that
    its ¥40 is short of the ¥30 (HELPER_INSUFFICIENT)."""
    router = start_router()
    hb = national.reg("13")
    child = enroll(hb, itype=RESIDENT, birth="20150101")
    first, second = enroll(hb), enroll(hb)
    credit(hb, first, 5_000)
    credit(hb, second, 4_000)
    bind(hb, first, child, verification=None)
    bind(hb, second, child, verification=None)
    d = diagnose(hb, child, second, 3_000)
    agrees(d, presettle_2206(router, HEBEI, child, 3_000))
    assert not d.would_pay and d.mulaid_pay_fen == 0
    assert [f.code for f in d.findings] == ["OTHER_HELPER_FIRST"], d.findings


def test_a_beijing_bill_earlier_helpers_cover_is_not_said_to_fall_to_cash(national, start_router):
    """北京 (in turn): helpers holding ¥30 and ¥10. A ¥20 bill the first pays whole: Diagnose of the
    second says the earlier helper pays it (OTHER_HELPER_FIRST), not HELPER_INSUFFICIENT. A ¥35 bill
    the first pays ¥30 of and the second ¥5: nothing is cash, so no finding at all."""
    router = start_router()
    bj = national.reg("11")
    child, (_, second) = beijing_family(bj, 3_000, 1_000)
    d = diagnose(bj, child, second, 2_000)
    agrees(d, presettle_2206(router, BEIJING, child, 2_000))
    assert not d.would_pay and d.mulaid_pay_fen == 0
    assert [f.code for f in d.findings] == ["OTHER_HELPER_FIRST"], d.findings
    message = d.findings[0].message
    assert "备案在先" in message and "现金" not in message.split("。", 1)[1], message
    assert split_of(message) == [2_000, 0, 0, 2_000, 0], message

    d = diagnose(bj, child, second, 3_500)
    agrees(d, presettle_2206(router, BEIJING, child, 3_500))
    assert d.would_pay and d.mulaid_pay_fen == 500 and not d.findings, d.findings


def test_a_wallet_whose_use_place_is_another_region_is_explained(national, rdb):
    """SPEC §5: wallet money pays at designated institutions of its use-place (a 统筹区 of the owner's
    province, named at opening, changed by the owner at once: 使用地变更). A 河北 child living in 石家庄
    (130100) whose wallet's use-place is 唐山 (130200): a bill at home shows wallet_pay 0
    (WALLET_OTHER_USE_PLACE), and the front desk is told why, with both places and the step that fixes it."""
    from test_wallet import Env
    env = Env(national, rdb)
    hb = env.reg("13")
    helper, mother = env.person("13", bal=5_000), env.person("13", bal=10_000)
    child = env.person("13", itype=RESIDENT, birth="20150101", wallet=False)
    env.open(child, "13", use_place="130200")
    bind(hb, helper, child, verification=None)
    env.fund(mother, "13", child, 10_000)
    assert env.wbal(child) == 10_000
    d = diagnose(hb, child, helper, 20_000)
    assert (d.bill.wallet_pay_fen, d.bill.wallet_reason) == (0, "WALLET_OTHER_USE_PLACE")
    [message] = [f.message for f in d.findings if f.code == "WALLET_OTHER_USE_PLACE"]
    assert "石家庄" in message and "唐山" in message and "使用地变更" in message, message


def test_a_helper_who_cannot_pay_for_another_reason_is_not_said_to_be_short_of_the_bill(national, start_router, rdb):
    """A bill's 共济 reason is the waterfall's, of the helpers it could draw on. Where this helper is not
    one of them (not bound, suspended, no family account, invited but not joined), the findings already
    say why; the bill must not add that this helper's balance is short (河北: ¥30 'short' of ¥20), nor
    speak of a personal account in a pooled province, nor give a bare code ('原因见本项代码')."""
    router = start_router()
    hb, bj, gs = national.reg("13"), national.reg("11"), national.reg("62")
    child = enroll(hb, itype=RESIDENT, birth="20150101")
    stranger = enroll(hb)
    credit(hb, stranger, 3_000)
    d = diagnose(hb, child, stranger, 2_000)
    agrees(d, presettle_2206(router, HEBEI, child, 2_000))
    assert [f.code for f in d.findings] == ["NOT_BOUND"], d.findings

    kid, (suspended, empty) = beijing_family(bj, 3_000, 0)
    bj.UpdatePersonStatus(rpb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=suspended,
                                                        status=cpb.PERSON_STATUS_SUSPENDED))
    d = diagnose(bj, kid, suspended, 2_000)
    agrees(d, presettle_2206(router, BEIJING, kid, 2_000))
    assert [f.code for f in d.findings] == ["HELPER_NOT_ACTIVE"], d.findings

    creator = enroll(gs, **GS)
    credit(gs, creator, 3_000)
    grandma = enroll(gs, itype=RESIDENT, birth="19500101", **GS)
    d = diagnose(gs, grandma, creator, 2_000)
    agrees(d, presettle_2206(router, GANSU, grandma, 2_000))
    assert [f.code for f in d.findings] == ["NOT_FAMILY_MEMBER"], d.findings
    from test_family import create, invite
    fid = create(gs, creator, initial_transfer_fen=1_000).family_id
    invite(gs, fid, creator, grandma, cpb.RELATION_PARENT)
    d = diagnose(gs, grandma, creator, 2_000)
    agrees(d, presettle_2206(router, GANSU, grandma, 2_000))
    assert [f.code for f in d.findings] == ["INVITATION_NOT_ACCEPTED"], d.findings
    assert all("原因见本项代码" not in f.message for f in d.findings), d.findings


def test_a_beijing_helper_with_nothing_filed_before_one_who_pays_is_not_said_to_come_after(national, start_router):
    """北京 (in turn, 按备案顺序): the first helper filed holds ¥0, the second ¥10 pays a ¥5 bill whole.
    Diagnose of the first must not say the bill is paid by a helper filed before it (备案在先): the
    payer was filed after; the first is passed over for its empty account (原因三), which is said."""
    router = start_router()
    bj = national.reg("11")
    child, (first, _) = beijing_family(bj, 0, 1_000)
    d = diagnose(bj, child, first, 500)
    agrees(d, presettle_2206(router, BEIJING, child, 500))
    assert not d.would_pay and d.mulaid_pay_fen == 0
    assert [f.code for f in d.findings] == ["HELPER_ZERO_BALANCE"], d.findings
    assert all("备案在先" not in f.message for f in d.findings), d.findings
