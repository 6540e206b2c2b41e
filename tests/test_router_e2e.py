"""End-to-end tests of the settlement router (1101 / 2206 / 2207 / 2208) across real processes.

One Topology for the module: redis-server, registries 13 河北 / 11 北京 / 62 甘肃, the national wallet
and the router, each its own OS process. Every test enrolls fresh people. Every credit, settlement,
reversal and transfer the tests make is written into a module ledger; the last test checks that
no fen was created or lost anywhere (SPEC §7 conservation).
"""

from __future__ import annotations

import itertools
import json
import time
import urllib.request
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import grpc
import pytest
import redis
from medaid.common import rpc
from medaid.common.errors import error_info
from medaid.common.idnumber import make
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import family_pb2 as fpb
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.registry.v1 import registry_pb2_grpc as rpb_grpc
from medaid.router.v1 import router_pb2 as pb
from medaid.router.v1 import router_pb2_grpc as pb_grpc
from medaid.topology import DEMO_CLOCK, GATEWAY_PATH, Topology
from medaid.wallet.v1 import wallet_pb2 as wpb
from medaid.wallet.v1 import wallet_pb2_grpc as wpb_grpc
from support import EMPLOYEE, FACE, RESIDENT, bind, enroll, logical_value, rid

HEBEI = pb.Institution(fixmedins_code="H13010100001", mdtrtarea_admvs="130100")  # 石家庄
BEIJING = pb.Institution(fixmedins_code="H11010500001", mdtrtarea_admvs="110000")
GANSU = pb.Institution(fixmedins_code="H62010200001", mdtrtarea_admvs="620100")  # 兰州
T = 10.0  # per-call deadline from the tests

_msg = itertools.count(1)


def msgid(inst: pb.Institution) -> str:
    """fixmedins_code (12) + yyyyMMddHHmmss (14) + sequence (4), unique in this module."""
    n = next(_msg)
    assert n < 10_000
    return f"{inst.fixmedins_code}20261122103000{n:04d}"


# --- the module ledger: every fen the tests put in or take out ------------------------------


@dataclass
class Ledger:
    credited: int = 0
    # setl_id -> fen the settlement took from accounts and wallets (acct + wallet + mulaid)
    spent: dict[str, int] = field(default_factory=dict)
    # setl_id -> fen a reversal gave back
    refunded: dict[str, int] = field(default_factory=dict)
    # transfer id -> fen, created and not yet accepted (debited from a registry, not yet in a wallet)
    in_flight: dict[str, int] = field(default_factory=dict)

    def settled(self, s: pb.SetlInfo) -> None:
        taken = s.acct_pay_fen + s.wallet_pay_fen + s.acct_mulaid_pay_fen
        previous = self.spent.setdefault(s.setl_id, taken)
        assert previous == taken, f"settlement {s.setl_id} answered two different splits"

    def reversed(self, r: pb.ReverseSettlementResponse) -> None:
        back = r.acct_refund_fen + r.wallet_refund_fen + r.mulaid_refund_fen
        previous = self.refunded.setdefault(r.setl_id, back)
        assert previous == back, f"reversal of {r.setl_id} answered two different refunds"

    def net_spend(self) -> int:
        return sum(self.spent.values()) - sum(self.refunded.values())


@dataclass
class Env:
    topo: Topology
    router: Any
    reg: dict[str, Any]
    wallet: Any
    r: redis.Redis
    ledger: Ledger
    channels: list[grpc.Channel]

    # registry shortcuts that keep the ledger

    def credit(self, province: str, pid: str, amount: int) -> int:
        resp = self.reg[province].CreditAccount(rpb.CreditAccountRequest(
            request_id=rid("credit"), id_number=pid, amount_fen=amount,
            kind=rpb.CREDIT_KIND_MONTHLY_CONTRIBUTION, period="202611"), timeout=T)
        self.ledger.credited += amount
        return int(resp.balance_fen)

    def balance(self, province: str, pid: str) -> int:
        return int(self.reg[province].GetPerson(rpb.GetPersonRequest(id_number=pid), timeout=T).person.balance_fen)

    def balances(self, province: str, *pids: str) -> list[int]:
        return [self.balance(province, p) for p in pids]

    def wallet_balance(self, pid: str) -> int:
        return int(self.wallet.GetWallet(wpb.GetWalletRequest(owner_id_number=pid), timeout=T).wallet.balance_fen)

    # router calls that keep the ledger

    def settle(self, req: pb.SettleRequest) -> pb.SetlInfo:
        s = self.router.Settle(req, timeout=T).setlinfo
        self.ledger.settled(s)
        return s

    def reverse(self, req: pb.ReverseSettlementRequest) -> pb.ReverseSettlementResponse:
        resp = self.router.ReverseSettlement(req, timeout=T)
        self.ledger.reversed(resp)
        return resp

    def fund_wallet(self, sender: str, recipient: str, amount: int, *, recipient_province: str = "11",
                    use_place: str = "110000", relation: int = cpb.RELATION_PARENT) -> None:
        """Open the recipient's 医保钱包 and send it `amount` from a 河北 employee's account."""
        self.wallet.OpenWallet(wpb.OpenWalletRequest(
            request_id=rid("open"), owner_id_number=recipient, province=recipient_province,
            use_place_admdvs=use_place, real_name=FACE), timeout=T)
        try:  # the sender holds a wallet too (SPEC §5)
            self.wallet.OpenWallet(wpb.OpenWalletRequest(
                request_id=rid("open"), owner_id_number=sender, province="13", use_place_admdvs="130100",
                real_name=FACE), timeout=T)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.ALREADY_EXISTS, exc
        tid = rid("xfer")
        t = self.wallet.CreateTransfer(wpb.CreateTransferRequest(
            request_id=tid, sender_id_number=sender, sender_province="13", recipient_id_number=recipient,
            relation=relation, amount_fen=amount, verification=FACE), timeout=T).transfer
        assert t.state == wpb.TRANSFER_STATE_PENDING_ACCEPT, wpb.TransferState.Name(t.state)
        self.ledger.in_flight[tid] = amount
        acc = self.wallet.AcceptTransfer(wpb.AcceptTransferRequest(
            request_id=rid("accept"), transfer_id=tid, recipient_id_number=recipient), timeout=T)
        assert acc.transfer.state == wpb.TRANSFER_STATE_COMPLETED
        del self.ledger.in_flight[tid]
        assert acc.wallet.balance_fen == amount

    def registry_keys(self) -> dict[bytes, Any]:
        """Every registry and directory key with its serialized value (equal: nothing was written). The
        recovery loop's fenced lock (`reg:<p>:{recovery}:…`) is taken every second whatever the traffic."""
        keys = sorted(k for k in [*self.r.scan_iter(match="reg:*"), *self.r.scan_iter(match="dir:*")]
                      if b"{recovery}" not in k)
        return {k: logical_value(self.r, k) for k in keys}


@pytest.fixture(scope="module")
def env():
    topo = Topology.start(clock=DEMO_CLOCK)
    channels: list[grpc.Channel] = []
    r = redis.Redis(host="127.0.0.1", port=topo.redis.port)
    try:
        def ch(name: str) -> grpc.Channel:
            c = grpc.insecure_channel(topo.address(name))
            channels.append(c)
            return c

        yield Env(
            topo=topo,
            router=pb_grpc.RouterServiceStub(ch("router")),
            reg={p: rpb_grpc.RegistryServiceStub(ch(f"registry-{p}")) for p in ("13", "11", "62")},
            wallet=wpb_grpc.WalletServiceStub(ch("wallet")),
            r=r,
            ledger=Ledger(),
            channels=channels,
        )
    finally:
        for c in channels:
            c.close()
        r.close()
        topo.stop()


def settle_req(inst: pb.Institution, psn: str, amount: int, *, flag: str = "1",
               category: int = cpb.CATEGORY_OUTPATIENT, insuplc: str = "", medfee: int = 0,
               mid: str | None = None, mdtrt_id: str = "") -> pb.SettleRequest:
    return pb.SettleRequest(msgid=mid or msgid(inst), institution=inst, input=pb.SettleInput(
        psn_no=psn, insuplc_admdvs=insuplc, psn_part_amt_fen=amount, medfee_sumamt_fen=medfee,
        acct_used_flag=flag, category=category, mdtrt_id=mdtrt_id or f"MDTRT-{next(_msg)}"))


def refused(call: Any, *args: Any, **kw: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call(*args, timeout=T, **kw)
    return err.value


def assert_refusal(exc: grpc.RpcError, code: grpc.StatusCode, reason: str) -> None:
    info = error_info(exc)
    assert exc.code() == code, (exc.code(), exc.details())
    assert info is not None, f"no ErrorInfo on {exc.code()} {exc.details()}"
    assert (info.reason, info.domain) == (reason, "medaid"), (info.reason, info.domain, exc.details())


def assert_adds_up(s: pb.SetlInfo) -> None:
    assert s.acct_pay_fen + s.wallet_pay_fen + s.acct_mulaid_pay_fen + s.psn_cash_pay_fen == s.psn_part_amt_fen
    assert min(s.acct_pay_fen, s.wallet_pay_fen, s.acct_mulaid_pay_fen, s.psn_cash_pay_fen) >= 0


def split(s: pb.SetlInfo) -> tuple[int, int, int, int, str, str]:
    return (s.acct_pay_fen, s.wallet_pay_fen, s.acct_mulaid_pay_fen, s.psn_cash_pay_fen,
            s.mulaid_helper_psn_no, s.mulaid_reason)


def child_of(stub: Any, *helpers: tuple[str, int]) -> str:
    """A fresh 10-year-old resident (no account, binds without face verification) with these helpers."""
    child = enroll(stub, itype=RESIDENT, birth="20160101")
    for helper, relation in helpers:
        bind(stub, helper, child, relation, verification=None)
    return child


# --- §4 waterfall, every row, through the router (2207) ------------------------------------


def test_waterfall_own_account_only(env):
    p = enroll(env.reg["13"])
    env.credit("13", p, 10_000)
    req = settle_req(HEBEI, p, 3_000, medfee=5_000)
    s = env.settle(req)
    assert_adds_up(s)
    assert split(s) == (3_000, 0, 0, 0, "", "")
    assert (s.setl_id, s.psn_no, s.psn_part_amt_fen, s.medfee_sumamt_fen) == (req.msgid, p, 3_000, 5_000)
    assert (s.mdtrt_id, s.fixmedins_code) == (req.input.mdtrt_id, HEBEI.fixmedins_code)
    assert s.balc_fen == 7_000 and s.insuplc_admdvs[:2] == "13"
    assert env.balance("13", p) == 7_000


def test_waterfall_own_account_then_helper(env):
    hb = env.reg["13"]
    member, helper = enroll(hb), enroll(hb)
    env.credit("13", member, 2_000)
    env.credit("13", helper, 50_000)
    bind(hb, helper, member, cpb.RELATION_SPOUSE)
    s = env.settle(settle_req(HEBEI, member, 5_000))
    assert_adds_up(s)
    assert split(s) == (2_000, 0, 3_000, 0, helper, "")
    assert s.wallet_reason == "WALLET_NOT_OPENED"
    assert s.balc_fen == 0
    assert env.balances("13", member, helper) == [0, 47_000]


def test_waterfall_richest_of_several_helpers_pays_all(env):
    hb = env.reg["13"]
    h1, h2, h3 = enroll(hb), enroll(hb), enroll(hb)
    for h, amount in ((h1, 1_000), (h2, 9_000), (h3, 5_000)):
        env.credit("13", h, amount)
    child = child_of(hb, (h1, cpb.RELATION_CHILD), (h2, cpb.RELATION_CHILD), (h3, cpb.RELATION_GRANDCHILD))
    s = env.settle(settle_req(HEBEI, child, 4_000))
    assert_adds_up(s)
    assert split(s) == (0, 0, 4_000, 0, h2, "")
    assert env.balances("13", h1, h2, h3) == [1_000, 5_000, 5_000]


def test_waterfall_richest_helper_insufficient_means_cash_never_pooled(env):
    hb = env.reg["13"]
    member, h1, h2 = enroll(hb), enroll(hb), enroll(hb)
    env.credit("13", member, 500)
    env.credit("13", h1, 1_000)
    env.credit("13", h2, 2_000)
    bind(hb, h1, member, cpb.RELATION_PARENT)
    bind(hb, h2, member, cpb.RELATION_SIBLING)
    # 500 own, 3,000 left: the richest helper holds 2,000 (< 3,000) and 1,000 + 2,000 is never pooled.
    s = env.settle(settle_req(HEBEI, member, 3_500))
    assert_adds_up(s)
    assert split(s) == (500, 0, 0, 3_000, "", "HELPER_INSUFFICIENT")
    assert env.balances("13", member, h1, h2) == [0, 1_000, 2_000]


def test_waterfall_zero_balance_helper(env):
    hb = env.reg["13"]
    helper = enroll(hb)
    child = child_of(hb, (helper, cpb.RELATION_CHILD))
    s = env.settle(settle_req(HEBEI, child, 1_000))
    assert_adds_up(s)
    assert split(s) == (0, 0, 0, 1_000, "", "HELPER_ZERO_BALANCE")
    assert env.balance("13", helper) == 0


def test_waterfall_proxy_only(env):
    hb = env.reg["13"]
    holder = enroll(hb)
    env.credit("13", holder, 50_000)
    relative = enroll(hb, itype=RESIDENT, birth="19500101")
    hb.BindProxy(rpb.BindProxyRequest(request_id=rid("proxy"), holder_id_number=holder,
                                      relative_id_number=relative, relation=cpb.RELATION_PARENT,
                                      relative_verification=FACE), timeout=T)
    s = env.settle(settle_req(HEBEI, relative, 1_000))
    assert_adds_up(s)
    assert split(s) == (0, 0, 0, 1_000, "", "PROXY_ONLY")
    assert env.balance("13", holder) == 50_000


def test_waterfall_acct_used_flag_0_is_all_cash(env):
    hb = env.reg["13"]
    member, helper = enroll(hb), enroll(hb)
    env.credit("13", member, 10_000)
    env.credit("13", helper, 10_000)
    bind(hb, helper, member, cpb.RELATION_CHILD)
    s = env.settle(settle_req(HEBEI, member, 2_000, flag="0"))
    assert_adds_up(s)
    assert split(s) == (0, 0, 0, 2_000, "", "ACCOUNT_NOT_USED")
    assert s.balc_fen == 10_000
    assert env.balances("13", member, helper) == [10_000, 10_000]


def test_waterfall_wallet_pays_after_own_account(env):
    hb, bj = env.reg["13"], env.reg["11"]
    sender = enroll(hb)  # a 河北 employee, near-kin of the 北京 patient
    env.credit("13", sender, 50_000)
    patient = enroll(bj, region="110000", division="110105", birth="19520202")
    env.credit("11", patient, 2_000)
    env.fund_wallet(sender, patient, 10_000)
    assert env.balance("13", sender) == 40_000
    # At a 北京 hospital (the wallet's use-place): own account first, then the wallet.
    s = env.settle(settle_req(BEIJING, patient, 5_000))
    assert_adds_up(s)
    assert split(s) == (2_000, 3_000, 0, 0, "", "")
    assert (s.balc_fen, s.wallet_balc_fen, s.wallet_reason) == (0, 7_000, "")
    assert s.insuplc_admdvs[:2] == "11"
    assert env.wallet_balance(patient) == 7_000 and env.balance("11", patient) == 0
    # At a 河北 hospital the wallet cannot pay (not its use-place): cash.
    s = env.settle(settle_req(HEBEI, patient, 1_000))
    assert_adds_up(s)
    assert split(s) == (0, 0, 0, 1_000, "", "")
    assert s.wallet_reason == "WALLET_OTHER_USE_PLACE"
    assert env.wallet_balance(patient) == 7_000
    # More than the wallet holds: the wallet pays what it has, the rest is cash.
    s = env.settle(settle_req(BEIJING, patient, 9_000))
    assert_adds_up(s)
    assert split(s) == (0, 7_000, 0, 2_000, "", "")
    assert (s.wallet_balc_fen, s.wallet_reason) == (0, "WALLET_INSUFFICIENT")
    assert env.wallet_balance(patient) == 0
    assert env.balance("13", sender) == 40_000  # the quota left the sender once, at transfer time


# --- routing ---------------------------------------------------------------------------------


def test_routing_from_every_institution_province_lands_in_registry_13(env):
    p = enroll(env.reg["13"], region="130200")
    env.credit("13", p, 30_000)
    expected = 30_000
    for inst in (HEBEI, BEIJING, GANSU):
        s = env.settle(settle_req(inst, p, 1_000))
        expected -= 1_000
        assert s.fixmedins_code == inst.fixmedins_code and s.insuplc_admdvs[:2] == "13"
        assert split(s) == (1_000, 0, 0, 0, "", "")
        assert s.balc_fen == expected
        assert env.balance("13", p) == expected
    for province in ("11", "62"):
        err = refused(env.reg[province].GetPerson, rpb.GetPersonRequest(id_number=p))
        assert_refusal(err, grpc.StatusCode.NOT_FOUND, "PERSON_NOT_FOUND")
        assert list(env.r.scan_iter(match=f"reg:{province}:*{p}*")) == []


def test_routing_by_insuplc_admdvs_when_given(env):
    p = enroll(env.reg["13"], region="130200")
    env.credit("13", p, 10_000)
    s = env.settle(settle_req(BEIJING, p, 1_000, insuplc="130200"))
    assert s.insuplc_admdvs == "130200" and s.acct_pay_fen == 1_000
    assert env.balance("13", p) == 9_000
    # insuplc_admdvs beats the directory: naming 北京 sends the bill to registry 11, which does not know p;
    # the directory knows p insured in 河北, so the field contradicts their place (not an unknown person).
    before = env.registry_keys()
    err = refused(env.router.Settle, settle_req(HEBEI, p, 1_000, insuplc="110000"))
    assert_refusal(err, grpc.StatusCode.FAILED_PRECONDITION, "INSURED_PLACE_MISMATCH")
    assert "130200" in (err.details() or "")
    assert env.registry_keys() == before
    assert env.balance("13", p) == 9_000


def test_routing_follows_a_move_from_13_to_11(env):
    hb, bj = env.reg["13"], env.reg["11"]
    p = enroll(hb)
    env.credit("13", p, 5_000)
    hb.UpdatePersonStatus(rpb.UpdatePersonStatusRequest(
        request_id=rid("status"), id_number=p, status=cpb.PERSON_STATUS_TERMINATED, moved_to_province="11"),
        timeout=T)
    bj.EnrollPerson(rpb.EnrollPersonRequest(request_id=rid("enroll"), id_number=p, name="张三",
                                            insurance_type=EMPLOYEE, pooling_region="110000"), timeout=T)
    env.credit("11", p, 3_000)
    for inst in (HEBEI, BEIJING):
        s = env.settle(settle_req(inst, p, 1_000))
        assert s.insuplc_admdvs[:2] == "11" and split(s) == (1_000, 0, 0, 0, "", "")
    assert env.balance("11", p) == 1_000
    assert env.balance("13", p) == 5_000  # the old province's account is untouched
    info = env.router.QueryPerson(pb.QueryPersonRequest(msgid=msgid(HEBEI), institution=HEBEI,
                                                        mdtrt_cert_type="02", mdtrt_cert_no=p), timeout=T)
    assert info.insuinfo[0].insuplc_admdvs == "110000"
    assert info.insuinfo[0].psn_insu_stas == cpb.PERSON_STATUS_ACTIVE
    # Naming the old insured place explicitly reaches registry 13, which refuses the terminated person.
    err = refused(env.router.Settle, settle_req(HEBEI, p, 1_000, insuplc="130100"))
    assert_refusal(err, grpc.StatusCode.FAILED_PRECONDITION, "MEMBER_NOT_INSURED")
    assert env.balance("13", p) == 5_000 and env.balance("11", p) == 1_000


def test_unknown_person_and_unknown_insured_place(env):
    stranger = make("130102", "19700707", "555")  # valid, never enrolled anywhere
    before = env.registry_keys()
    err = refused(env.router.Settle, settle_req(HEBEI, stranger, 1_000))
    assert_refusal(err, grpc.StatusCode.NOT_FOUND, "PERSON_NOT_FOUND")
    err = refused(env.router.PreSettle, pb.PreSettleRequest(
        msgid=msgid(HEBEI), institution=HEBEI, input=settle_req(HEBEI, stranger, 1_000).input))
    assert_refusal(err, grpc.StatusCode.NOT_FOUND, "PERSON_NOT_FOUND")
    err = refused(env.router.QueryPerson, pb.QueryPersonRequest(
        msgid=msgid(HEBEI), institution=HEBEI, mdtrt_cert_type="02", mdtrt_cert_no=stranger))
    assert_refusal(err, grpc.StatusCode.NOT_FOUND, "PERSON_NOT_FOUND")
    p = enroll(env.reg["13"])
    env.credit("13", p, 1_000)
    before = env.registry_keys()
    for place in ("440100", "810000"):  # 广东, 香港: no registry serves them
        err = refused(env.router.Settle, settle_req(HEBEI, p, 500, insuplc=place))
        assert_refusal(err, grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_INSURED_PLACE")
        err = refused(env.router.QueryPerson, pb.QueryPersonRequest(
            msgid=msgid(HEBEI), institution=HEBEI, mdtrt_cert_no=p, insuplc_admdvs=place))
        assert_refusal(err, grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_INSURED_PLACE")
    assert env.registry_keys() == before
    assert env.balance("13", p) == 1_000


def test_cross_province_visit_gansu_patient_at_beijing_hospital(env):
    gs = env.reg["62"]
    patient = enroll(gs, region="620100", division="620102")
    helper = enroll(gs, region="620100", division="620102")
    env.credit("62", patient, 1_000)
    env.credit("62", helper, 20_000)
    # 甘肃 runs the pooled family account (SPEC §3b): the helper creates it, 划拨s, the spouse joins.
    fid = gs.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
        request_id=rid("fam"), creator_id_number=helper, commitment=FACE, initial_transfer_fen=5_000),
        timeout=T).account.family_id
    gs.InviteMember(fpb.InviteMemberRequest(request_id=rid("inv"), family_id=fid, creator_id_number=helper,
                                            member_id_number=patient, relation=cpb.RELATION_SPOUSE), timeout=T)
    gs.RespondToInvitation(fpb.RespondToInvitationRequest(request_id=rid("acc"), family_id=fid,
                                                          member_id_number=patient, accept=True, verification=FACE),
                           timeout=T)
    s = env.settle(settle_req(BEIJING, patient, 3_000))
    assert_adds_up(s)
    assert split(s) == (1_000, 0, 2_000, 0, helper, "")  # acct_mulaid_pay: the family account's share
    assert s.insuplc_admdvs[:2] == "62" and s.fixmedins_code == BEIJING.fixmedins_code
    assert env.balances("62", patient, helper) == [0, 15_000]
    account = gs.GetFamilyAccount(fpb.GetFamilyAccountRequest(family_id=fid), timeout=T).account
    assert account.balance_fen == 3_000 and [(x.id_number, x.share_fen) for x in account.shares] == [(helper, 3_000)]
    for province in ("13", "11"):
        err = refused(env.reg[province].GetPerson, rpb.GetPersonRequest(id_number=patient))
        assert_refusal(err, grpc.StatusCode.NOT_FOUND, "PERSON_NOT_FOUND")


# --- refusals pass through unchanged -----------------------------------------------------------


def _same_refusal(router_err: grpc.RpcError, registry_err: grpc.RpcError) -> None:
    a, b = error_info(router_err), error_info(registry_err)
    assert a is not None and b is not None
    assert router_err.code() == registry_err.code()
    assert (a.reason, a.domain, dict(a.metadata)) == (b.reason, b.domain, dict(b.metadata))
    assert a.domain == "medaid"
    assert router_err.details() == registry_err.details()


def test_registry_refusals_reach_the_caller_unchanged(env):
    hb = env.reg["13"]
    p = enroll(hb)
    env.credit("13", p, 10_000)
    before = env.registry_keys()
    for category, code in ((cpb.CATEGORY_FITNESS, "CATEGORY_NOT_PAYABLE"),
                           (cpb.CATEGORY_CASH_WITHDRAWAL, "CATEGORY_NOT_PAYABLE"),
                           (cpb.CATEGORY_VACCINE, "CATEGORY_NOT_PAYABLE")):  # 河北 pays CHECKUP, not VACCINE
        via_router = refused(env.router.Settle, settle_req(HEBEI, p, 1_000, category=category))
        assert_refusal(via_router, grpc.StatusCode.FAILED_PRECONDITION, code)
        direct = refused(hb.Settle, rpb.SettleRequest(
            request_id=rid("direct"), patient_id_number=p, amount_fen=1_000, use_account=True, category=category,
            institution_code=HEBEI.fixmedins_code, institution_admdvs=HEBEI.mdtrtarea_admvs))
        _same_refusal(via_router, direct)
    assert env.registry_keys() == before
    assert env.balance("13", p) == 10_000

    suspended = enroll(hb)
    env.credit("13", suspended, 10_000)
    hb.UpdatePersonStatus(rpb.UpdatePersonStatusRequest(
        request_id=rid("status"), id_number=suspended, status=cpb.PERSON_STATUS_SUSPENDED), timeout=T)
    before = env.registry_keys()
    via_router = refused(env.router.Settle, settle_req(BEIJING, suspended, 1_000))
    assert_refusal(via_router, grpc.StatusCode.FAILED_PRECONDITION, "MEMBER_NOT_INSURED")
    direct = refused(hb.Settle, rpb.SettleRequest(
        request_id=rid("direct"), patient_id_number=suspended, amount_fen=1_000, use_account=True,
        category=cpb.CATEGORY_OUTPATIENT, institution_code=BEIJING.fixmedins_code,
        institution_admdvs=BEIJING.mdtrtarea_admvs))
    _same_refusal(via_router, direct)
    pre = refused(env.router.PreSettle, pb.PreSettleRequest(
        msgid=msgid(BEIJING), institution=BEIJING, input=settle_req(BEIJING, suspended, 1_000).input))
    assert_refusal(pre, grpc.StatusCode.FAILED_PRECONDITION, "MEMBER_NOT_INSURED")
    assert env.registry_keys() == before
    assert env.balance("13", suspended) == 10_000


# --- 2206 / 2207 idempotency ---------------------------------------------------------------------


def test_presettle_computes_the_split_and_moves_nothing(env):
    hb = env.reg["13"]
    member, helper = enroll(hb), enroll(hb)
    env.credit("13", member, 1_500)
    env.credit("13", helper, 8_000)
    bind(hb, helper, member, cpb.RELATION_PARENT)
    before = env.registry_keys()
    pre = env.router.PreSettle(pb.PreSettleRequest(
        msgid=msgid(HEBEI), institution=HEBEI, input=settle_req(HEBEI, member, 4_000).input), timeout=T).setlinfo
    assert env.registry_keys() == before
    assert_adds_up(pre)
    assert split(pre) == (1_500, 0, 2_500, 0, helper, "")
    s = env.settle(settle_req(HEBEI, member, 4_000))
    assert split(s) == split(pre) and s.balc_fen == pre.balc_fen == 0
    assert env.balances("13", member, helper) == [0, 5_500]


def test_settle_replay_same_msgid_settles_once(env):
    hb = env.reg["13"]
    p = enroll(hb)
    env.credit("13", p, 10_000)
    req = settle_req(HEBEI, p, 2_500)
    s1 = env.settle(req)
    s2 = env.settle(req)
    assert s1 == s2
    assert env.balance("13", p) == 7_500
    account = hb.GetAccount(rpb.GetAccountRequest(id_number=p), timeout=T)
    assert account.debited_total_fen == 2_500
    # Same msgid, different content: refused, nothing moves.
    for changed in (settle_req(HEBEI, p, 2_600, mid=req.msgid),
                    settle_req(pb.Institution(fixmedins_code=HEBEI.fixmedins_code, mdtrtarea_admvs="130200"),
                               p, 2_500, mid=req.msgid),
                    settle_req(HEBEI, p, 2_500, mid=req.msgid, flag="0")):
        err = refused(env.router.Settle, changed)
        assert_refusal(err, grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
    assert env.balance("13", p) == 7_500
    assert env.settle(req) == s1


def test_msgid_reused_for_another_person_in_another_province_is_refused(env):
    """msgid is the idempotency key end to end: each registry only sees its own ids, so the router must
    refuse a msgid already routed for someone else instead of letting a second province settle it."""
    hb, bj = env.reg["13"], env.reg["11"]
    a = enroll(hb)
    b = enroll(bj, region="110000", division="110105")
    env.credit("13", a, 10_000)
    env.credit("11", b, 10_000)
    first = settle_req(BEIJING, a, 1_000)
    s = env.settle(first)
    before = env.registry_keys()
    err = refused(env.router.Settle, settle_req(BEIJING, b, 1_000, mid=first.msgid))
    assert_refusal(err, grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
    assert env.registry_keys() == before
    # The same msgid as a 2208 of a settlement in another province: refused too.
    other = env.settle(settle_req(BEIJING, b, 500))
    before = env.registry_keys()
    err = refused(env.router.ReverseSettlement, pb.ReverseSettlementRequest(
        msgid=first.msgid, institution=BEIJING, setl_id=other.setl_id, psn_no=b))
    assert_refusal(err, grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
    assert env.registry_keys() == before
    assert env.balances("13", a) == [9_000] and env.balances("11", b) == [9_500]
    assert env.settle(first) == s


def test_a_msgid_resent_with_any_field_changed_is_refused_and_changes_nothing(env):
    """SPEC §7: a reused id with different fields is refused. The registry sees amounts and category;
    the visit (mdtrt_id), medfee_sumamt, med_type and insutype only the router sees: a 2207 resent
    with one of them changed is IDEMPOTENCY_KEY_REUSED, and 5203 still reports the first message."""
    hb = env.reg["13"]
    a = enroll(hb)
    env.credit("13", a, 10_000)
    first = settle_req(HEBEI, a, 1_000, medfee=1_500, mdtrt_id="VISIT-REAL")
    first.input.med_type, first.input.insutype = "11", "310"
    s = env.settle(first)
    changes = {"mdtrt_id": "VISIT-OTHER", "medfee_sumamt_fen": 9_900, "med_type": "12", "insutype": "390"}
    for name, value in changes.items():
        again = pb.SettleRequest()
        again.CopyFrom(first)
        setattr(again.input, name, value)
        before = env.registry_keys()
        assert_refusal(refused(env.router.Settle, again), grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
        assert env.registry_keys() == before, name
    assert env.settle(first) == s  # the identical resend is still the first answer
    found = env.router.QuerySettlement(pb.QuerySettlementRequest(
        msgid=msgid(HEBEI), institution=HEBEI, psn_no=a, setl_id=s.setl_id), timeout=T).settlement
    assert (found.setlinfo.mdtrt_id, found.setlinfo.medfee_sumamt_fen, found.med_type, found.insutype) == \
        ("VISIT-REAL", 1_500, "11", "310")
    assert env.balances("13", a) == [9_000]


def test_a_2208_naming_another_visit_is_refused(env):
    """A 2208 that names a visit (mdtrt_id) other than the settlement's reverses nothing."""
    hb = env.reg["13"]
    p = enroll(hb)
    env.credit("13", p, 10_000)
    s = env.settle(settle_req(HEBEI, p, 1_000, mdtrt_id="VISIT-A"))
    before = env.registry_keys()
    err = refused(env.router.ReverseSettlement, pb.ReverseSettlementRequest(
        msgid=msgid(HEBEI), institution=HEBEI, setl_id=s.setl_id, psn_no=p, mdtrt_id="VISIT-B"))
    assert_refusal(err, grpc.StatusCode.NOT_FOUND, "SETTLEMENT_NOT_FOUND")
    assert env.registry_keys() == before
    r = env.reverse(pb.ReverseSettlementRequest(msgid=msgid(HEBEI), institution=HEBEI, setl_id=s.setl_id, psn_no=p,
                                                mdtrt_id="VISIT-A"))
    assert r.acct_refund_fen == 1_000 and env.balances("13", p) == [10_000]


def test_a_5203_naming_another_visit_finds_nothing(env):
    """A 5203 that names a setl_id and a visit (mdtrt_id) other than the settlement's finds nothing, as
    a 2208 would: the hospital system's records are mixed up, and another visit's settlement must not
    be answered as this one's."""
    p = enroll(env.reg["13"])
    env.credit("13", p, 10_000)
    s = env.settle(settle_req(HEBEI, p, 1_000, mdtrt_id="VISIT-Q"))
    err = refused(env.router.QuerySettlement, pb.QuerySettlementRequest(
        msgid=msgid(HEBEI), institution=HEBEI, setl_id=s.setl_id, psn_no=p, mdtrt_id="VISIT-R"))
    assert_refusal(err, grpc.StatusCode.NOT_FOUND, "SETTLEMENT_NOT_FOUND")
    for visit in ("VISIT-Q", ""):
        found = env.router.QuerySettlement(pb.QuerySettlementRequest(
            msgid=msgid(HEBEI), institution=HEBEI, setl_id=s.setl_id, psn_no=p, mdtrt_id=visit))
        assert found.settlement.setlinfo.mdtrt_id == "VISIT-Q" and found.settlement.setlinfo.acct_pay_fen == 1_000


def test_a_reversal_is_not_undone_once_a_2601_cancelled_its_settlement(env):
    """2207 A, 2208 R, then a 2601 of A (ALREADY_REVERSED: A is cancelled for good), then a 2601 of R:
    refused ORIGINAL_CANCELLED, since restoring A would override the hospital's own cancellation."""
    hb = env.reg["13"]
    p = enroll(hb)
    env.credit("13", p, 10_000)
    a = settle_req(HEBEI, p, 1_000)
    s = env.settle(a)
    rev = pb.ReverseSettlementRequest(msgid=msgid(HEBEI), institution=HEBEI, setl_id=s.setl_id, psn_no=p)
    env.reverse(rev)
    undo_a = env.router.Undo(pb.UndoRequest(msgid=msgid(HEBEI), institution=HEBEI, psn_no=p, omsgid=a.msgid,
                                            oinfno="2207"), timeout=T)
    assert undo_a.outcome == "ALREADY_REVERSED"
    before = env.registry_keys()
    err = refused(env.router.Undo, pb.UndoRequest(msgid=msgid(HEBEI), institution=HEBEI, psn_no=p,
                                                  omsgid=rev.msgid, oinfno="2208"))
    assert_refusal(err, grpc.StatusCode.FAILED_PRECONDITION, "ORIGINAL_CANCELLED")
    assert env.registry_keys() == before and env.balances("13", p) == [10_000]
    assert_refusal(refused(env.router.Settle, a), grpc.StatusCode.FAILED_PRECONDITION, "ORIGINAL_CANCELLED")



def test_a_2601_that_restored_a_settlement_answers_its_resend_the_same_after_a_later_cancellation(env):
    """2207 A, 2208 R, 2601 U1 of R (RESTORED: A stands again), then 2601 U2 of A (REVERSED). A resend of
    U1 — the hospital lost its answer — is answered RESTORED as the first time (SPEC §7: a replay returns
    the first answer), not refused ORIGINAL_CANCELLED as if U1 had never been done; nothing moves."""
    p = enroll(env.reg["13"])
    env.credit("13", p, 10_000)
    a = settle_req(HEBEI, p, 1_000)
    s = env.settle(a)
    rev = pb.ReverseSettlementRequest(msgid=msgid(HEBEI), institution=HEBEI, setl_id=s.setl_id, psn_no=p)
    env.reverse(rev)
    u1 = pb.UndoRequest(msgid=msgid(HEBEI), institution=HEBEI, psn_no=p, omsgid=rev.msgid, oinfno="2208")
    first = env.router.Undo(u1, timeout=T)
    assert (first.outcome, first.acct_pay_fen) == ("RESTORED", 1_000)
    u2 = env.router.Undo(pb.UndoRequest(msgid=msgid(HEBEI), institution=HEBEI, psn_no=p, omsgid=a.msgid,
                                        oinfno="2207"), timeout=T)
    assert (u2.outcome, u2.acct_pay_fen) == ("REVERSED", 1_000)
    assert env.balances("13", p) == [10_000]
    before = env.registry_keys()
    assert env.router.Undo(u1, timeout=T) == first
    assert env.registry_keys() == before and env.balances("13", p) == [10_000]


def test_a_2207_whose_2601_reached_the_registry_first_is_refused_as_cancelled(env):
    """The race of a 2207 and its 2601: the router claimed the 2207's msgid, and the 2601 reached the
    registry first, which voided the id it had never seen (CancelRequest → VOIDED). The 2207 is then
    refused ORIGINAL_CANCELLED, not IDEMPOTENCY_KEY_REUSED, and so is its resend; nothing is written."""
    hb = env.reg["13"]
    p = enroll(hb)
    env.credit("13", p, 10_000)
    a = settle_req(HEBEI, p, 1_000)
    voided = hb.CancelRequest(rpb.CancelRequestRequest(request_id=rid("2601"), original_request_id=a.msgid),
                              timeout=T)
    assert voided.outcome == "VOIDED"
    before = env.registry_keys()
    for _ in range(2):
        assert_refusal(refused(env.router.Settle, a), grpc.StatusCode.FAILED_PRECONDITION, "ORIGINAL_CANCELLED")
    assert env.registry_keys() == before and env.balances("13", p) == [10_000]


# --- 2208 reversal ---------------------------------------------------------------------------------


def test_reversal_returns_every_fen_once(env):
    hb = env.reg["13"]
    member, helper = enroll(hb), enroll(hb)
    env.credit("13", member, 1_000)
    env.credit("13", helper, 20_000)
    bind(hb, helper, member, cpb.RELATION_CHILD)
    s = env.settle(settle_req(HEBEI, member, 5_000))
    assert split(s) == (1_000, 0, 4_000, 0, helper, "")
    assert env.balances("13", member, helper) == [0, 16_000]
    rev_req = pb.ReverseSettlementRequest(msgid=msgid(HEBEI), institution=HEBEI, setl_id=s.setl_id, psn_no=member,
                                          mdtrt_id=s.mdtrt_id)
    rev = env.reverse(rev_req)
    assert (rev.setl_id, rev.reversal_id) == (s.setl_id, rev_req.msgid)
    assert (rev.acct_refund_fen, rev.wallet_refund_fen, rev.mulaid_refund_fen) == (1_000, 0, 4_000)
    assert rev.mulaid_helper_psn_no == helper and rev.balc_fen == 1_000
    assert env.balances("13", member, helper) == [1_000, 20_000]
    assert env.reverse(rev_req) == rev  # the same 2208 resent: the first answer, no second refund
    assert env.balances("13", member, helper) == [1_000, 20_000]
    again = refused(env.router.ReverseSettlement, pb.ReverseSettlementRequest(
        msgid=msgid(HEBEI), institution=HEBEI, setl_id=s.setl_id, psn_no=member))
    assert_refusal(again, grpc.StatusCode.FAILED_PRECONDITION, "ALREADY_REVERSED")
    assert env.balances("13", member, helper) == [1_000, 20_000]
    # The reversed 2207 resent: still its first answer, and it does not settle again.
    assert env.settle(settle_req(HEBEI, member, 5_000, mid=s.setl_id, mdtrt_id=s.mdtrt_id)) == s
    assert env.balances("13", member, helper) == [1_000, 20_000]
    missing = refused(env.router.ReverseSettlement, pb.ReverseSettlementRequest(
        msgid=msgid(HEBEI), institution=HEBEI, setl_id=msgid(HEBEI), psn_no=member))
    assert_refusal(missing, grpc.StatusCode.NOT_FOUND, "SETTLEMENT_NOT_FOUND")


def test_reversal_returns_wallet_quota(env):
    hb, bj = env.reg["13"], env.reg["11"]
    sender = enroll(hb)
    env.credit("13", sender, 20_000)
    patient = enroll(bj, itype=RESIDENT, region="110000", division="110105", birth="19530303")
    env.fund_wallet(sender, patient, 6_000)
    s = env.settle(settle_req(BEIJING, patient, 4_000))
    assert split(s) == (0, 4_000, 0, 0, "", "") and s.wallet_balc_fen == 2_000
    rev = env.reverse(pb.ReverseSettlementRequest(msgid=msgid(BEIJING), institution=BEIJING, setl_id=s.setl_id,
                                                  psn_no=patient))
    assert (rev.acct_refund_fen, rev.wallet_refund_fen, rev.mulaid_refund_fen) == (0, 4_000, 0)
    assert env.wallet_balance(patient) == 6_000
    assert env.balance("13", sender) == 14_000


def test_reversal_only_of_this_persons_settlement_at_this_institution(env):
    """2208 names setl_id, psn_no and the institution: a settlement of another person, or one made by
    another institution, is not this caller's to reverse (as on the national platform: 结算信息不存在)."""
    hb = env.reg["13"]
    patient, other = enroll(hb), enroll(hb)
    env.credit("13", patient, 10_000)
    s = env.settle(settle_req(HEBEI, patient, 3_000))
    before = env.registry_keys()
    for inst, psn in ((HEBEI, other), (GANSU, patient), (pb.Institution(fixmedins_code="H13010100002",
                                                                        mdtrtarea_admvs="130100"), patient)):
        err = refused(env.router.ReverseSettlement, pb.ReverseSettlementRequest(
            msgid=msgid(inst), institution=inst, setl_id=s.setl_id, psn_no=psn))
        assert_refusal(err, grpc.StatusCode.NOT_FOUND, "SETTLEMENT_NOT_FOUND")
    assert env.registry_keys() == before
    assert env.balance("13", patient) == 7_000
    rev = env.reverse(pb.ReverseSettlementRequest(msgid=msgid(HEBEI), institution=HEBEI, setl_id=s.setl_id,
                                                  psn_no=patient))
    assert rev.acct_refund_fen == 3_000 and env.balance("13", patient) == 10_000


# --- bad input at the router -------------------------------------------------------------------------


def test_bad_input_is_refused_and_moves_nothing(env):
    p = enroll(env.reg["13"])
    env.credit("13", p, 10_000)
    code = HEBEI.fixmedins_code
    good = settle_req(HEBEI, p, 1_000)
    bad_inst = pb.Institution(fixmedins_code="h1301010000", mdtrtarea_admvs="130100")

    def variant(**changes: Any) -> pb.SettleRequest:
        req = pb.SettleRequest()
        req.CopyFrom(good)
        for name, value in changes.items():
            if name in ("msgid",):
                setattr(req, name, value)
            elif name == "institution":
                req.institution.CopyFrom(value)
            else:
                setattr(req.input, name, value)
        return req

    cases = [
        (variant(msgid=good.msgid[:-1]), "INVALID_MSGID"),  # 29 characters
        (variant(msgid=good.msgid + "1"), "INVALID_MSGID"),  # 31 characters
        (variant(msgid=""), "INVALID_MSGID"),
        (variant(msgid=f"{code}-02611221030000001"), "INVALID_MSGID"),  # not [0-9A-Za-z]
        (variant(msgid=f"{code}20261122103000000 "), "INVALID_MSGID"),
        (variant(msgid="６" * 30), "INVALID_MSGID"),  # full-width digits
        (variant(institution=bad_inst, msgid="h1301010000202611221030000001"), "INVALID_INSTITUTION_CODE"),
        (variant(institution=pb.Institution(fixmedins_code="", mdtrtarea_admvs="130100")),
         "INVALID_INSTITUTION_CODE"),
        (variant(acct_used_flag="2"), "INVALID_ACCT_USED_FLAG"),
        (variant(acct_used_flag=""), "INVALID_ACCT_USED_FLAG"),
        (variant(acct_used_flag="Y"), "INVALID_ACCT_USED_FLAG"),
        (variant(psn_part_amt_fen=0), "INVALID_AMOUNT"),
        (variant(psn_part_amt_fen=-100), "INVALID_AMOUNT"),
        (variant(medfee_sumamt_fen=999), "INVALID_AMOUNT"),  # total bill below the personal part
        (variant(psn_no=p[:-1] + ("0" if p[-1] != "0" else "1")), "INVALID_ID_NUMBER"),
        (variant(category=cpb.CATEGORY_UNSPECIFIED), "UNKNOWN_CATEGORY"),
    ]
    before = env.registry_keys()
    for req, why in cases:
        err = refused(env.router.Settle, req)
        assert_refusal(err, grpc.StatusCode.INVALID_ARGUMENT, why)
        pre = refused(env.router.PreSettle, pb.PreSettleRequest(msgid=req.msgid, institution=req.institution,
                                                                input=req.input))
        assert_refusal(pre, grpc.StatusCode.INVALID_ARGUMENT, why)
    for bad_msgid, why in ((good.msgid[:-1], "INVALID_MSGID"), (f"{code}_02611221030009999", "INVALID_MSGID")):
        err = refused(env.router.QueryPerson, pb.QueryPersonRequest(msgid=bad_msgid, institution=HEBEI,
                                                                    mdtrt_cert_no=p))
        assert_refusal(err, grpc.StatusCode.INVALID_ARGUMENT, why)
        err = refused(env.router.ReverseSettlement, pb.ReverseSettlementRequest(
            msgid=bad_msgid, institution=HEBEI, setl_id=good.msgid, psn_no=p))
        assert_refusal(err, grpc.StatusCode.INVALID_ARGUMENT, why)
    assert env.registry_keys() == before
    assert env.balance("13", p) == 10_000
    # The good request still settles: the refusals above left nothing behind under its msgid.
    s = env.settle(good)
    assert s.acct_pay_fen == 1_000 and env.balance("13", p) == 9_000


# --- a downstream registry stops and comes back ---------------------------------------------------------


def _health(env: Env) -> dict[str, tuple[str, bool]]:
    resp = env.router.GetDownstreamHealth(pb.GetDownstreamHealthRequest(), timeout=T)
    return {d.name: (d.address, d.serving) for d in resp.downstream}


def _assert_health(env: Env, expected: dict[str, tuple[str, bool]]) -> None:
    """GetDownstreamHealth comes to answer `expected`. Each check has its 1 s (router/service.py) and a
    process's status turns NOT_SERVING for a Redis ping slower than 0.5 s (--store-check-timeout-ms), so
    while the host stalls for a second (a loaded CI machine) one answer may name a live downstream down;
    the next one, after the stall, does not. Every answer names exactly the expected downstreams at their
    addresses, and never one expected down as serving."""
    deadline = time.monotonic() + T
    while True:
        got = _health(env)
        assert {name: address for name, (address, _) in got.items()} == \
            {name: address for name, (address, _) in expected.items()}
        assert not [name for name, (_, up) in got.items() if up and not expected[name][1]], got
        if got == expected or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert got == expected


def test_registry_down_then_back_settles_exactly_once(env):
    hb = env.reg["13"]
    p = enroll(hb)
    env.credit("13", p, 10_000)
    expected = {name: (env.topo.address(name), True) for name in ("registry-13", "registry-11", "registry-62",
                                                                  "registry-35", "wallet")}
    _assert_health(env, expected)
    req = settle_req(BEIJING, p, 4_000)
    before = env.registry_keys()
    env.topo.services["registry-13"].stop()
    try:
        err = refused(env.router.Settle, req)
        assert_refusal(err, grpc.StatusCode.UNAVAILABLE, "REGISTRY_UNAVAILABLE")
        assert error_info(err).metadata["province"] == "13"
        _assert_health(env, {**expected, "registry-13": (env.topo.address("registry-13"), False)})
        assert env.registry_keys() == before  # nothing moved, nothing claimed
    finally:
        env.topo.restart("registry-13")
    assert env.balance("13", p) == 10_000
    deadline = time.monotonic() + 30
    while True:
        try:
            s = env.settle(req)
            break
        except grpc.RpcError as exc:
            info = error_info(exc)
            if exc.code() != grpc.StatusCode.UNAVAILABLE or info is None or info.reason != "REGISTRY_UNAVAILABLE" \
                    or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert split(s) == (4_000, 0, 0, 0, "", "") and s.balc_fen == 6_000
    assert env.settle(req) == s
    assert env.balance("13", p) == 6_000
    assert hb.GetAccount(rpb.GetAccountRequest(id_number=p), timeout=T).debited_total_fen == 4_000
    _assert_health(env, expected)


def test_a_registry_back_from_a_restart_is_reached_by_the_very_next_call(env):
    """A registry down for seconds (a restart, a deploy) while hospitals keep calling: once it serves
    again, the router's next call reaches it. The router's channel to it must not go on answering
    REGISTRY_UNAVAILABLE for seconds while it waits out a reconnect backoff grown during the outage."""
    hb = env.reg["13"]
    p = enroll(hb)
    env.credit("13", p, 10_000)
    env.topo.services["registry-13"].stop()
    try:
        until = time.monotonic() + 6  # long enough for gRPC's reconnect backoff to grow past a second
        while time.monotonic() < until:
            err = refused(env.router.Settle, settle_req(HEBEI, p, 1_000))
            assert_refusal(err, grpc.StatusCode.UNAVAILABLE, "REGISTRY_UNAVAILABLE")
            time.sleep(0.3)
    finally:
        env.topo.restart("registry-13")
    started = time.monotonic()
    s = env.settle(settle_req(HEBEI, p, 1_000))
    assert split(s) == (1_000, 0, 0, 0, "", "") and s.balc_fen == 9_000
    assert time.monotonic() - started < rpc.DEFAULT_DEADLINE_S
    info = env.router.QueryPerson(pb.QueryPersonRequest(msgid=msgid(HEBEI), institution=HEBEI,
                                                        mdtrt_cert_type="02", mdtrt_cert_no=p), timeout=T)
    assert info.insuinfo[0].balc_fen == 9_000


# --- 1101 -----------------------------------------------------------------------------------------------


def _enroll_exact(stub: Any, pid: str, name: str, region: str, itype: int = EMPLOYEE) -> str:
    stub.EnrollPerson(rpb.EnrollPersonRequest(request_id=rid("enroll"), id_number=pid, name=name,
                                              insurance_type=itype, pooling_region=region), timeout=T)
    return pid


def _query(env: Env, pid: str, name: str = "", inst: pb.Institution = HEBEI) -> pb.QueryPersonResponse:
    return env.router.QueryPerson(pb.QueryPersonRequest(msgid=msgid(inst), institution=inst, mdtrt_cert_type="02",
                                                        mdtrt_cert_no=pid, psn_name=name), timeout=T)


def test_query_person_1101(env):
    hb, bj = env.reg["13"], env.reg["11"]
    # Sex from the 17th character (odd male, even female); 2026-11-22 is the 38th birthday of one
    # and the day before the 38th birthday of the other.
    father = _enroll_exact(hb, make("130102", "19881122", "031"), "张伟", "130100")
    mother = _enroll_exact(hb, make("130203", "19881123", "042"), "李娜", "130200")
    env.credit("13", father, 12_345)
    child = child_of(hb, (father, cpb.RELATION_CHILD), (mother, cpb.RELATION_CHILD))

    info = _query(env, father, "张伟", BEIJING)
    assert info.baseinfo == pb.BaseInfo(psn_no=father, certno=father, psn_name="张伟", gend="1",
                                        brdy="1988-11-22", age=38)
    assert len(info.insuinfo) == 1
    insu = info.insuinfo[0]
    assert (insu.balc_fen, insu.insutype, insu.psn_insu_stas, insu.insuplc_admdvs) == (
        12_345, cpb.INSURANCE_TYPE_EMPLOYEE, cpb.PERSON_STATUS_ACTIVE, "130100")
    assert (insu.wallet_opened, insu.wallet_balc_fen, insu.wallet_use_place_admdvs) == (False, 0, "")
    assert list(info.helpers) == []

    info = _query(env, mother, "李娜")
    assert (info.baseinfo.gend, info.baseinfo.brdy, info.baseinfo.age) == ("2", "1988-11-23", 37)
    assert (info.insuinfo[0].balc_fen, info.insuinfo[0].insuplc_admdvs) == (0, "130200")

    info = _query(env, child, inst=GANSU)
    assert (info.baseinfo.age, info.insuinfo[0].insutype) == (10, cpb.INSURANCE_TYPE_RESIDENT)
    assert [(h.psn_no, h.relation) for h in info.helpers] == [(father, cpb.RELATION_CHILD),
                                                              (mother, cpb.RELATION_CHILD)]

    # A 北京 resident whose 医保钱包 holds quota from the 河北 father.
    grandma = _enroll_exact(bj, make("110105", "19560505", "062"), "王秀英", "110000", RESIDENT)
    env.fund_wallet(father, grandma, 2_345)
    info = _query(env, grandma, "王秀英", BEIJING)
    insu = info.insuinfo[0]
    assert (info.baseinfo.gend, info.baseinfo.age) == ("2", 70)
    assert (insu.balc_fen, insu.insuplc_admdvs, insu.insutype) == (0, "110000", cpb.INSURANCE_TYPE_RESIDENT)
    assert (insu.wallet_opened, insu.wallet_balc_fen, insu.wallet_use_place_admdvs) == (True, 2_345, "110000")
    assert _query(env, father).insuinfo[0].balc_fen == 10_000

    err = refused(env.router.QueryPerson, pb.QueryPersonRequest(
        msgid=msgid(HEBEI), institution=HEBEI, mdtrt_cert_type="02", mdtrt_cert_no=father, psn_name="张伟伟"))
    assert_refusal(err, grpc.StatusCode.FAILED_PRECONDITION, "NAME_MISMATCH")
    for cert_type in ("01", "03"):  # e-credential, social-security card: not served here
        err = refused(env.router.QueryPerson, pb.QueryPersonRequest(
            msgid=msgid(HEBEI), institution=HEBEI, mdtrt_cert_type=cert_type, mdtrt_cert_no=father))
        assert_refusal(err, grpc.StatusCode.INVALID_ARGUMENT, "UNSUPPORTED_CERT_TYPE")
    # insuplc_admdvs, when given, decides where to ask: 甘肃 does not know him, the directory knows him
    # insured in 河北, so the field contradicts his place.
    err = refused(env.router.QueryPerson, pb.QueryPersonRequest(
        msgid=msgid(HEBEI), institution=HEBEI, mdtrt_cert_no=father, insuplc_admdvs="620100"))
    assert_refusal(err, grpc.StatusCode.FAILED_PRECONDITION, "INSURED_PLACE_MISMATCH")
    assert _query(env, father).baseinfo.psn_name == "张伟"


# --- conservation, last --------------------------------------------------------------------------------


def test_family_account_through_router_gateway_and_cli(env, tmp_path, capsys):
    """SPEC §3b end to end in 甘肃: created, invited and funded with the CLI, spent by 2207 through the
    router and through the JSON gateway (the family share is acct_mulaid_pay), reversed by 2208,
    dissolved with the CLI, every fen back where it came from."""
    from medaid import cli

    gs = env.reg["62"]
    creator = enroll(gs, region="620100", division="620102")
    child = enroll(gs, itype=RESIDENT, birth="20160101", region="620100", division="620102")
    env.credit("62", creator, 30_000)
    base = ["--topology", str(tmp_path / "none.json"), "--registry", f"62={env.topo.address('registry-62')}",
            "--json"]

    def run(*args: str) -> dict[str, Any]:
        assert cli.main([*base, *args]) == 0, capsys.readouterr().err
        out: dict[str, Any] = json.loads(capsys.readouterr().out)
        return out

    fid = run("family-create", creator, "--promise", "承诺书-0001", "--initial", "100.00")["account"]["family_id"]
    run("family-invite", fid, creator, child, "CHILD")
    assert run("family-transfer", fid, creator, "50.00")["balance_after_fen"] == "15000"
    s = env.settle(settle_req(GANSU, child, 4_000))
    assert split(s) == (0, 0, 4_000, 0, creator, "")
    url = f"http://{env.topo.services['gateway'].address}{GATEWAY_PATH}"
    envelope = {"infno": "2207", "msgid": msgid(GANSU), "mdtrtarea_admvs": "620100", "insuplc_admdvs": "",
                "recer_sys_code": "MBS_LOCAL", "dev_no": "", "dev_safe_info": "", "cainfo": "", "signtype": "",
                "infver": "V1.0", "opter_type": "1", "opter": "0001", "opter_name": "收费员",
                "inf_time": "2026-11-22 10:30:00", "fixmedins_code": GANSU.fixmedins_code,
                "fixmedins_name": "兰州市第一医院", "sign_no": "",
                "input": {"data": {"psn_no": child, "mdtrt_cert_type": "02", "mdtrt_cert_no": child, "med_type": "11",
                                   "medfee_sumamt": "120.00", "psn_setlway": "01", "mdtrt_id": f"MZ{next(_msg)}",
                                   "chrg_bchno": "CB0001", "insutype": "390", "acct_used_flag": "1"}}}
    req = urllib.request.Request(url, data=json.dumps(envelope, ensure_ascii=False).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=T) as resp:
        answer = json.loads(resp.read(), parse_float=Decimal)
    assert answer["infcode"] == 0, answer["err_msg"]
    setl = answer["output"]["setlinfo"]
    assert (str(setl["acct_mulaid_pay"]), str(setl["psn_cash_pay"]), str(setl["acct_pay"])) == \
        ("110.00", "10.00", "0.00")  # the family held ¥150 − ¥40 = ¥110
    env.ledger.spent[setl["setl_id"]] = 11_000
    env.reverse(pb.ReverseSettlementRequest(msgid=msgid(GANSU), institution=GANSU, setl_id=s.setl_id, psn_no=child))
    account = run("family", fid)["account"]
    assert account["balance_fen"] == "4000"  # the reversed ¥40 is back in the creator's sub-ledger
    returned = run("family-dissolve", fid, creator)["returned"]
    assert returned == [{"id_number": creator, "share_fen": "4000"}]
    assert env.balances("62", creator) == [30_000 - 15_000 + 4_000]
    # 代缴 of the child's 2027 resident premium from the creator's account, listed, cancelled.
    env.credit("62", creator, 40_000)
    paid = run("premium-pay", creator, child, "CHILD", "2027")["premium"]
    assert (paid["amount_fen"], paid["state"], paid["source"]) == ("40000", "PAID", "PREMIUM_SOURCE_ACCOUNT")
    assert [p["premium_id"] for p in run("premiums", "--payer", creator)["premiums"]] == [paid["premium_id"]]
    assert run("premium-cancel", creator, child, "2027")["premium"]["state"] == "CANCELLED"
    assert env.balances("62", creator) == [30_000 - 15_000 + 4_000 + 40_000]


def test_reconciliation_filters_by_insutype_and_clr_type_and_compares_the_shares_given(env):
    """3201 / 3202 count only the settlements of the statement's insutype and clr_type (医疗类别 11 门诊 →
    清算类别 11, 21 住院 → 21), and a 3202 row compares acct_mulaid_pay and psn_cash_pay when it gives them."""
    hb = env.reg["13"]
    inst = pb.Institution(fixmedins_code="H13010100077", mdtrtarea_admvs="130100")
    member, helper, worker = enroll(hb), enroll(hb), enroll(hb)
    env.credit("13", member, 1_000)
    env.credit("13", helper, 50_000)
    env.credit("13", worker, 1_000)
    bind(hb, helper, member, cpb.RELATION_SPOUSE)
    out = settle_req(inst, member, 5_000, medfee=6_000)  # 门诊, employee insurance: the helper pays 4,000
    out.input.insutype, out.input.med_type = "310", "11"
    inpatient = settle_req(inst, worker, 3_000)  # 住院, resident insurance: 2,000 in cash
    inpatient.input.insutype, inpatient.input.med_type = "390", "21"
    a, b = env.settle(out), env.settle(inpatient)
    assert split(a) == (1_000, 0, 4_000, 0, helper, "") and (b.acct_pay_fen, b.psn_cash_pay_fen) == (1_000, 2_000)

    def totals(**st: str) -> pb.Totals:
        return env.router.ReconcileTotals(pb.ReconcileTotalsRequest(
            msgid=msgid(inst), institution=inst, statement=pb.Statement(
                stmt_begndate="2026-11-22", stmt_enddate="2026-11-22", **st)), timeout=T).platform

    both = totals()
    assert (both.fixmedins_setl_cnt, both.medfee_sumamt_fen, both.acct_pay_fen, both.acct_mulaid_pay_fen,
            both.cash_payamt_fen) == (2, 9_000, 2_000, 4_000, 2_000)
    employee = totals(insutype="310")
    assert (employee.fixmedins_setl_cnt, employee.medfee_sumamt_fen, employee.acct_mulaid_pay_fen) == (1, 6_000, 4_000)
    ward = totals(clr_type="21")
    assert (ward.fixmedins_setl_cnt, ward.medfee_sumamt_fen, ward.cash_payamt_fen) == (1, 3_000, 2_000)
    assert totals(insutype="310", clr_type="21").fixmedins_setl_cnt == 0

    def details(mulaid: int, cash: int) -> pb.ReconcileDetailsResponse:
        rows = [pb.DetailRow(setl_id=a.setl_id, medfee_sumamt_fen=6_000, acct_pay_fen=1_000,
                             acct_mulaid_pay_fen=mulaid),
                pb.DetailRow(setl_id=b.setl_id, medfee_sumamt_fen=3_000, acct_pay_fen=1_000, psn_cash_pay_fen=cash)]
        return env.router.ReconcileDetails(pb.ReconcileDetailsRequest(
            msgid=msgid(inst), institution=inst, rows=rows,
            statement=pb.Statement(stmt_begndate="2026-11-22", stmt_enddate="2026-11-22")), timeout=T)

    agree = details(4_000, 2_000)
    assert (agree.stmt_rslt, list(agree.mismatches), agree.platform_cnt) == ("0", [], 2)
    differ = details(3_999, 2_001)
    assert [(m.setl_id, m.kind, m.fields) for m in differ.mismatches] == [
        (a.setl_id, "AMOUNT_DIFFERS", "acct_mulaid_pay"), (b.setl_id, "AMOUNT_DIFFERS", "psn_cash_pay")]
    assert differ.mismatches[0].platform.setlinfo.acct_mulaid_pay_fen == 4_000
    assert differ.mismatches[1].platform.insutype == "390"


def test_conservation_across_all_services(env):
    """credits == registry balances + wallet balances + in-flight transfers + net settled spend."""
    r, ledger = env.r, env.ledger
    # A little traffic of its own, so the identity is never checked on an empty ledger.
    hb = env.reg["13"]
    member, helper = enroll(hb), enroll(hb)
    env.credit("13", member, 700)
    env.credit("13", helper, 5_000)
    bind(hb, helper, member, cpb.RELATION_PARENT)
    kept = env.settle(settle_req(GANSU, member, 1_200))
    undone = env.settle(settle_req(HEBEI, member, 2_000))
    env.reverse(pb.ReverseSettlementRequest(msgid=msgid(HEBEI), institution=HEBEI, setl_id=undone.setl_id,
                                            psn_no=member))
    assert split(kept) == (700, 0, 500, 0, helper, "")
    assert env.balances("13", member, helper) == [0, 4_500]
    registry_total = 0
    for key in r.scan_iter(match="reg:*:acct"):
        bal = int(r.hget(key, "bal") or 0)
        assert bal >= 0, key
        registry_total += bal
    for key in r.scan_iter(match="reg:*:{fam}:f:*"):  # family accounts (SPEC §3b) hold money too
        bal = int(r.hget(key, "bal") or 0)
        assert bal >= 0, key
        registry_total += bal
    wallet_total = 0
    for key in r.scan_iter(match="wal:*:wallet"):
        bal = int(r.hget(key, "bal") or 0)
        assert bal >= 0, key
        wallet_total += bal
    in_flight = sum(ledger.in_flight.values())
    assert ledger.credited == registry_total + wallet_total + in_flight + ledger.net_spend(), {
        "credited": ledger.credited, "registries": registry_total, "wallets": wallet_total,
        "in_flight": in_flight, "net_spend": ledger.net_spend()}
    # Each account's own books agree with its balance.
    for province in ("13", "11", "62"):
        for key in r.scan_iter(match=f"reg:{province}:*:acct"):
            h = {k.decode(): int(v) for k, v in r.hgetall(key).items() if k in (b"bal", b"credited", b"debited")}
            if {"credited", "debited"} <= h.keys():
                assert h["bal"] == h["credited"] - h["debited"], key


def test_zero_padded_acct_used_flag_is_the_same_flag(env):
    """SPEC §6: acct_used_flag arrives as "1"/"0" and zero-padded as "01"/"00", at the router as at the
    gateway; "01" and "1" are one message (a resend changing only the padding is answered, not refused)."""
    p = enroll(env.reg["13"])
    env.credit("13", p, 10_000)
    pre = env.router.PreSettle(pb.PreSettleRequest(msgid=msgid(HEBEI), institution=HEBEI,
                                                   input=settle_req(HEBEI, p, 1_000, flag="01").input), timeout=T)
    assert pre.setlinfo.acct_pay_fen == 1_000
    used = settle_req(HEBEI, p, 1_000, flag="01")
    first = env.settle(used)
    assert first.acct_pay_fen == 1_000
    cash = env.settle(settle_req(HEBEI, p, 1_000, flag="00"))
    assert (cash.acct_pay_fen, cash.psn_cash_pay_fen) == (0, 1_000)
    used.input.acct_used_flag = "1"
    assert env.settle(used) == first
    assert env.balance("13", p) == 9_000
