"""SPEC §3b's settlement step at its boundaries, on the real registries of 甘肃 (62) and 福建 (35) as
their policy files ship them: a bill the own account covers exactly, a family account holding
exactly the remainder and one fen less (it may pay part), an empty account, a charge that ends
exactly at a lot's edge, the creator's own bill, and the whole waterfall own account → own wallet →
family account → cash. PreSettle (2206) announces the split and writes nothing, Settle does exactly
that, Diagnose agrees."""

from __future__ import annotations

from typing import Any

import pytest
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import registry_pb2 as pb
from support import RESIDENT, balance, credit, enroll, rid, snapshot
from test_family import FJ, GS, accept, account, create, huabo, invite, shares
from test_wallet import Env

PLACE = {"62": (GS, "H62010000001"), "35": (FJ, "H35020000001")}


def requests(patient: str, amount: int, province: str) -> tuple[pb.PreSettleRequest, pb.SettleRequest]:
    place, institution = PLACE[province]
    common = dict(patient_id_number=patient, amount_fen=amount, use_account=True, category=cpb.CATEGORY_OUTPATIENT,
                  institution_code=institution, institution_admdvs=place["region"])
    return pb.PreSettleRequest(**common), pb.SettleRequest(request_id=rid("settle"), **common)


def split(res: Any) -> tuple[int, int, tuple[tuple[str, int], ...], int, str]:
    assert res.acct_pay_fen + res.wallet_pay_fen + res.mulaid_pay_fen + res.cash_pay_fen == res.amount_fen
    assert res.mulaid_pay_fen == sum(c.amount_fen for c in res.helper_charges)
    return (res.acct_pay_fen, res.wallet_pay_fen, tuple((c.helper_id_number, c.amount_fen) for c in res.helper_charges),
            res.cash_pay_fen, res.helper_reason)


def pre_then_settle(stub: Any, rdb: Any, patient: str, amount: int, province: str) -> Any:
    pre_req, req = requests(patient, amount, province)
    before = snapshot(rdb)
    pre = stub.PreSettle(pre_req).result
    assert snapshot(rdb) == before, "PreSettle wrote"
    res = stub.Settle(req).result
    assert split(pre) == split(res)
    pre.settlement_id, pre.state = res.settlement_id, res.state
    assert pre == res  # PreSettle announced the very answer, balances after included
    return res


# (province, patient's own balance, creator's 划拨, bill) -> (acct, family pays, cash, helper_reason)
CASES = [
    ("62", 1_000, 500, 1_000, (1_000, 0, 0, "")),  # own covers exactly: the family untouched
    ("62", 1_000, 500, 1_500, (1_000, 500, 0, "")),  # the family holds exactly the remainder
    ("62", 1_000, 500, 1_501, (1_000, 500, 1, "FAMILY_INSUFFICIENT")),  # one fen short: it pays part
    ("62", 0, 0, 1, (0, 0, 1, "FAMILY_ZERO_BALANCE")),
    ("35", 0, 1, 1, (0, 1, 0, "")),
    ("35", 300, 700, 1_001, (300, 700, 1, "FAMILY_INSUFFICIENT")),
]


@pytest.mark.parametrize("atomic", [True, False], ids=["atomic", "staged"])
@pytest.mark.parametrize(("province", "own", "funded", "amount", "want"), CASES)
def test_the_family_step_at_its_boundaries(start_registry, rdb, province, own, funded, amount, want, atomic):
    running = start_registry(province)
    running.registry.atomic = atomic
    stub = running.stub
    place = PLACE[province][0]
    creator = enroll(stub, **place)
    credit(stub, creator, 200_000 + funded)
    fid = create(stub, creator).family_id
    patient = enroll(stub, birth="19900101", **place)
    if own:
        credit(stub, patient, own)
    invite(stub, fid, creator, patient)
    accept(stub, fid, patient)
    if funded:
        huabo(stub, fid, creator, funded)
    d = stub.Diagnose(pb.DiagnoseRequest(member_id_number=patient, helper_id_number=creator))
    assert d.would_pay == (funded > 0) and [f.code for f in d.findings] == ([] if funded else ["FAMILY_ZERO_BALANCE"])
    res = pre_then_settle(stub, rdb, patient, amount, province)
    acct, fam, cash, why = want
    assert split(res) == (acct, 0, ((creator, fam),) if fam else (), cash, why)
    assert res.family_id == (fid if fam else "")
    assert balance(stub, patient) == own - acct == res.balance_after_fen
    assert account(stub, fid).balance_fen == funded - fam


def test_a_charge_ending_at_a_lots_edge_takes_nothing_of_the_next(start_registry, rdb):
    """福建: the creator's 划拨 first, a member's second; a bill of exactly the first lot charges the
    creator alone; one fen more takes one fen of the member's lot."""
    stub = start_registry("35").stub
    creator, son = enroll(stub, **FJ), enroll(stub, birth="19900101", **FJ)
    kid = enroll(stub, itype=RESIDENT, birth="20150101", **FJ)
    credit(stub, creator, 200_700)
    credit(stub, son, 200_500)
    fid = create(stub, creator, initial_transfer_fen=700).family_id
    invite(stub, fid, creator, son)
    accept(stub, fid, son)
    invite(stub, fid, creator, kid, cpb.RELATION_GRANDCHILD)
    huabo(stub, fid, son, 500)
    res = pre_then_settle(stub, rdb, kid, 700, "35")
    assert split(res) == (0, 0, ((creator, 700),), 0, "")
    assert {k: v for k, v in shares(account(stub, fid)).items() if v} == {son: 500}
    res = pre_then_settle(stub, rdb, kid, 1, "35")
    assert split(res) == (0, 0, ((son, 1),), 0, "")


def test_the_creators_own_bill_spends_their_account_first_then_their_share(start_registry, rdb):
    stub = start_registry("62").stub
    creator = enroll(stub, **GS)
    credit(stub, creator, 1_000)
    fid = create(stub, creator, initial_transfer_fen=600).family_id
    res = pre_then_settle(stub, rdb, creator, 401, "62")  # 400 own, then 1 of the family
    assert split(res) == (400, 0, ((creator, 1),), 0, "")
    assert balance(stub, creator) == 0 and account(stub, fid).balance_fen == 599


@pytest.mark.parametrize(("amount", "want"), [
    (3_500, (1_000, 2_000, 500, 0, "")),  # the family pays exactly what is left
    (3_501, (1_000, 2_000, 500, 1, "FAMILY_INSUFFICIENT")),
    (3_000, (1_000, 2_000, 0, 0, "")),  # own and wallet cover it exactly: the family untouched
])
def test_own_account_then_wallet_then_family_account_then_cash(national, rdb, amount, want):
    """SPEC §3b: 'own personal account first, then own wallet (§5), then the family account'."""
    env = Env(national, rdb)
    stub = env.reg("62")
    mother = env.person("62", bal=200_500)
    fid = create(stub, mother, initial_transfer_fen=500).family_id
    son = env.person("62", birth="19900101", bal=1_000)  # opens a wallet (use-place 620100)
    invite(stub, fid, mother, son)
    accept(stub, fid, son)
    father = env.person("13", bal=10_000)
    env.fund(father, "13", son, 2_000)  # a 河北 father's quota into the son's wallet
    acct, wallet, fam, cash, why = want
    res = pre_then_settle(stub, rdb, son, amount, "62")
    assert split(res) == (acct, wallet, ((mother, fam),) if fam else (), cash, why)
    assert env.wbal(son) == 2_000 - wallet and balance(stub, son) == 0
    assert account(stub, fid).balance_fen == 500 - fam
