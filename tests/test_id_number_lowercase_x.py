"""SPEC §6: id numbers may end in a lower-case `x`; every edge normalises it to `X`, and the
normalised id is what is stored and answered. Registry, wallet and router over gRPC, and the CLI;
the JSON gateway's part is in test_gateway.py. Real services and Redis, in-process."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from conftest import National, RunningRouter
from medaid import cli
from medaid.common.redis_client import scan_keys
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.router.v1 import router_pb2 as pb
from medaid.wallet.v1 import wallet_pb2 as wpb
from support import EMPLOYEE, FACE, RESIDENT, credit, new_id_x, rid

HEBEI = pb.Institution(fixmedins_code="H13010100001", mdtrtarea_admvs="130100")
T = 10.0
_seq = itertools.count(1)


def lower(pid: str) -> str:
    assert pid.endswith("X")
    return pid[:-1] + "x"


def enroll_x(stub: object, *, region: str = "130100", division: str = "130102", birth: str = "19800101",
             itype: int = EMPLOYEE) -> str:
    """Enroll a fresh person whose id number ends in X, sent with a lower-case x."""
    pid = new_id_x(division, birth)
    person = stub.EnrollPerson(rpb.EnrollPersonRequest(  # type: ignore[attr-defined]
        request_id=rid("enroll"), id_number=lower(pid), name="张三", insurance_type=itype,
        pooling_region=region), timeout=T).person
    assert person.id_number == pid
    return pid


def no_lower_case_key(r: redis.Redis, *pids: str) -> None:
    keys = list(scan_keys(r))
    for pid in pids:
        assert not [k for k in keys if lower(pid).encode() in k], pid
        assert [k for k in keys if pid.encode() in k], pid


def test_registry_stores_and_answers_upper_case_x(national: National, rdb: redis.Redis):
    hb = national.reg("13")
    helper = enroll_x(hb)
    child = enroll_x(hb, birth="20160101", itype=RESIDENT)
    assert credit(hb, lower(helper), 5_000) == 5_000
    for asked in (helper, lower(helper)):
        person = hb.GetPerson(rpb.GetPersonRequest(id_number=asked), timeout=T).person
        assert (person.id_number, person.balance_fen) == (helper, 5_000)
    [outcome] = hb.GetPersons(rpb.GetPersonsRequest(id_numbers=[lower(child)]), timeout=T).outcomes
    assert outcome.person.id_number == child
    b = hb.BindMutualAid(rpb.BindMutualAidRequest(
        request_id=rid("bind"), helper_id_number=lower(helper), member_id_number=lower(child),
        relation=cpb.RELATION_CHILD), timeout=T).binding
    assert (b.helper_id_number, b.member_id_number) == (helper, child)
    listed = hb.ListBindings(rpb.ListBindingsRequest(id_number=lower(child)), timeout=T)
    assert [x.helper_id_number for x in listed.as_member] == [helper]
    s = hb.Settle(rpb.SettleRequest(request_id=rid("settle"), patient_id_number=lower(child), amount_fen=1_000,
                                    use_account=True, category=cpb.CATEGORY_OUTPATIENT,
                                    institution_code=HEBEI.fixmedins_code), timeout=T).result
    assert (s.patient_id_number, s.helper_id_number, s.mulaid_pay_fen) == (child, helper, 1_000)
    no_lower_case_key(rdb, helper, child)


def test_wallet_stores_and_answers_upper_case_x(national: National, rdb: redis.Redis):
    hb, bj = national.reg("13"), national.reg("11")
    sender = enroll_x(hb)
    credit(hb, sender, 10_000)
    owner = enroll_x(bj, region="110000", division="110105", birth="19560505", itype=RESIDENT)
    w = national.wallet.stub.OpenWallet(wpb.OpenWalletRequest(
        request_id=rid("open"), owner_id_number=lower(owner), opened_by_id_number=lower(owner), province="11",
        use_place_admdvs="110000", real_name=FACE), timeout=T).wallet
    assert (w.owner_id_number, w.opened_by_id_number) == (owner, owner)
    national.wallet.stub.OpenWallet(wpb.OpenWalletRequest(
        request_id=rid("open"), owner_id_number=lower(sender), province="13", use_place_admdvs="130100",
        real_name=FACE), timeout=T)
    t = national.wallet.stub.CreateTransfer(wpb.CreateTransferRequest(
        request_id=rid("xfer"), sender_id_number=lower(sender), sender_province="13",
        recipient_id_number=lower(owner), relation=cpb.RELATION_PARENT, amount_fen=2_000, verification=FACE),
        timeout=T).transfer
    assert (t.sender_id_number, t.recipient_id_number) == (sender, owner)
    acc = national.wallet.stub.AcceptTransfer(wpb.AcceptTransferRequest(
        request_id=rid("accept"), transfer_id=t.transfer_id, recipient_id_number=lower(owner)), timeout=T)
    assert acc.wallet.balance_fen == 2_000
    got = national.wallet.stub.GetWallet(wpb.GetWalletRequest(owner_id_number=lower(owner)), timeout=T)
    assert got.wallet.owner_id_number == owner and [lot.sender_id_number for lot in got.lots] == [sender]
    [bal] = national.wallet.stub.GetWalletBalances(wpb.GetWalletBalancesRequest(
        owner_id_numbers=[lower(owner)]), timeout=T).balances
    assert (bal.owner_id_number, bal.opened, bal.balance_fen) == (owner, True, 2_000)
    no_lower_case_key(rdb, sender, owner)


@pytest.mark.parametrize("batch", [True, False], ids=["batched", "one-by-one"])
def test_router_answers_upper_case_x(batch: bool, start_router: Callable[..., RunningRouter], national: National):
    router = start_router(batch=batch).stub
    hb = national.reg("13")
    p = enroll_x(hb)
    credit(hb, p, 10_000)
    info = router.QueryPerson(pb.QueryPersonRequest(msgid=f"H1301010000120261122120000{next(_seq):04d}",
                                                    institution=HEBEI, mdtrt_cert_type="02",
                                                    mdtrt_cert_no=lower(p)), timeout=T)
    assert (info.baseinfo.psn_no, info.baseinfo.certno) == (p, p)

    def req(mid: str, psn: str) -> pb.SettleRequest:
        return pb.SettleRequest(msgid=mid, institution=HEBEI, input=pb.SettleInput(
            psn_no=psn, psn_part_amt_fen=1_000, acct_used_flag="1", category=cpb.CATEGORY_OUTPATIENT))

    mid = f"H1301010000120261122120000{next(_seq):04d}"
    pre = router.PreSettle(pb.PreSettleRequest(msgid=mid, institution=HEBEI, input=req(mid, lower(p)).input),
                           timeout=T).setlinfo
    assert pre.psn_no == p
    s = router.Settle(req(mid, lower(p)), timeout=T).setlinfo
    assert (s.psn_no, s.acct_pay_fen) == (p, 1_000)
    assert router.Settle(req(mid, p), timeout=T).setlinfo == s  # the same message, written either way
    r = router.ReverseSettlement(pb.ReverseSettlementRequest(
        msgid=f"H1301010000120261122120000{next(_seq):04d}", institution=HEBEI, setl_id=s.setl_id,
        psn_no=lower(p)), timeout=T)
    assert r.acct_refund_fen == 1_000
    assert hb.GetPerson(rpb.GetPersonRequest(id_number=p), timeout=T).person.balance_fen == 10_000


def test_cli_sends_upper_case_x(start_router: Callable[..., RunningRouter], national: National, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]):
    router = start_router()
    pid = new_id_x()
    base = ["--topology", str(tmp_path / "none.json"), "--router", router.address,
            "--registry", f"13=127.0.0.1:{national.registries['13'].port}", "--json"]

    def run(*args: str) -> dict:
        assert cli.main([*base, *args]) == 0, capsys.readouterr().err
        return json.loads(capsys.readouterr().out)

    assert run("enroll", lower(pid), "张三", "EMPLOYEE", "130100")["person"]["id_number"] == pid
    assert run("credit", lower(pid), "100.00")["balance_fen"] == "10000"
    assert run("lookup", lower(pid))["baseinfo"]["psn_no"] == pid
    assert run("settle", lower(pid), "10.00")["setlinfo"]["psn_no"] == pid
    # What the CLI puts on the wire is already normalised.
    assert cli.build_parser().parse_args(["settle", lower(pid), "1.00"]).psn_no == pid
