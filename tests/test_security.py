"""Across real processes: mTLS between services, per-caller authorization by certificate
identity, institution authentication at the router, per-institution rate limits, masked listings.

Every refusal is checked to write nothing: a Redis snapshot (every key with its DUMP) before and after.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import time
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from medaid.common import authz, errors, tls
from medaid.common.idnumber import mask
from medaid.common.ratelimit import TokenBuckets
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.registry.v1 import registry_pb2_grpc as rpb_grpc
from medaid.router import security
from medaid.router.v1 import router_pb2 as pb
from medaid.router.v1 import router_pb2_grpc as pb_grpc
from medaid.topology import DEMO_CLOCK, GATEWAY_PATH, Topology
from medaid.wallet.v1 import wallet_pb2 as wpb
from medaid.wallet.v1 import wallet_pb2_grpc as wpb_grpc
from support import FACE, RESIDENT, bind, credit, enroll, new_id_x, reason, rid, unmasked_id_numbers
from support import snapshot as _snapshot

HEBEI = "H13010100001"  # has a certificate (CN = its code) and a token
BEIJING = "H11010500001"  # has a certificate and a token
AREA = {HEBEI: "130100", BEIJING: "110000", "H62010000001": "620100"}
_seq = itertools.count(1)


def snapshot(r: redis.Redis) -> dict[bytes, Any]:
    """Every key with its contents, but the wallet maintenance loop's fenced lock (`wal:{maint}:lock` /
    `:fence`), which it takes every 200 ms, and the registries' recovery loops' (`reg:<p>:{recovery}:…`),
    taken every second, whatever the traffic."""
    return {k: v for k, v in _snapshot(r).items() if b"{maint}" not in k and b"{recovery}" not in k}


def msgid(code: str) -> str:
    n = next(_seq)
    t = dt.datetime(2026, 11, 22, 10, 0) + dt.timedelta(seconds=n)
    return f"{code}{t:%Y%m%d%H%M%S}{n % 10000:04d}"


def inst(code: str) -> pb.Institution:
    return pb.Institution(fixmedins_code=code, mdtrtarea_admvs=AREA[code])


def settle_req(code: str, patient: str, amount: int) -> pb.SettleRequest:
    return pb.SettleRequest(msgid=msgid(code), institution=inst(code), input=pb.SettleInput(
        psn_no=patient, psn_part_amt_fen=amount, acct_used_flag="1", category=cpb.CATEGORY_OUTPATIENT))


def query_req(code: str, patient: str) -> pb.QueryPersonRequest:
    return pb.QueryPersonRequest(msgid=msgid(code), institution=inst(code), mdtrt_cert_type="02",
                                 mdtrt_cert_no=patient)


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def refused(call: Any, code: grpc.StatusCode, why: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == code, (err.value.code(), err.value.details())
    assert reason(err.value) == why, (reason(err.value), err.value.details())


@pytest.fixture(scope="module")
def topo():
    t = Topology.start(clock=DEMO_CLOCK, tls=True)
    try:
        yield t
    finally:
        t.stop()


@pytest.fixture(scope="module")
def r(topo):
    client = redis.Redis(port=topo.redis.port)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def family(topo):
    """A 河北 helper with ¥300 and the child bound to them, enrolled by an operator over mTLS."""
    with topo.channel("registry-13") as ch:
        hebei = rpb_grpc.RegistryServiceStub(ch)
        helper = enroll(hebei)
        child = enroll(hebei, itype=RESIDENT, birth="20160101")
        credit(hebei, helper, 30_000)
        bind(hebei, helper, child)
    return helper, child


# --- transport ---------------------------------------------------------------------------------


def test_plaintext_client_is_refused_and_writes_nothing(topo, r):
    before = snapshot(r)
    for name in ("registry-13", "wallet", "router"):
        with grpc.insecure_channel(topo.address(name)) as ch:
            if name == "registry-13":
                call = lambda ch=ch: rpb_grpc.RegistryServiceStub(ch).EnrollPerson(  # noqa: E731
                    rpb.EnrollPersonRequest(request_id=rid("plain"), id_number="130102198001017773", name="张三",
                                            insurance_type=cpb.INSURANCE_TYPE_EMPLOYEE, pooling_region="130100"),
                    timeout=3)
            elif name == "wallet":
                call = lambda ch=ch: wpb_grpc.WalletServiceStub(ch).GetClearingReport(  # noqa: E731
                    wpb.GetClearingReportRequest(month="202611"), timeout=3)
            else:
                call = lambda ch=ch: pb_grpc.RouterServiceStub(ch).GetDownstreamHealth(  # noqa: E731
                    pb.GetDownstreamHealthRequest(), timeout=3)
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, (name, err.value.details())
    assert snapshot(r) == before
    # The same calls over mTLS as the operator are answered (so the refusals above are the transport's).
    with topo.channel("wallet") as ch:
        assert wpb_grpc.WalletServiceStub(ch).GetClearingReport(wpb.GetClearingReportRequest(month="202611"),
                                                                 timeout=3).month == "202611"


def test_client_certificate_from_another_ca_is_refused(topo, r, tmp_path):
    tls.generate(tmp_path / "other", ["operator"], ca_name="somebody else's CA")
    mine = topo.tls("operator")
    theirs = tls.load("operator", tls_dir=str(tmp_path / "other"))
    assert mine is not None and theirs is not None
    # Their certificate, our CA as the trust root: the server refuses the client certificate.
    forged = grpc.ssl_channel_credentials(root_certificates=mine.root_ca, private_key=theirs.private_key,
                                          certificate_chain=theirs.cert_chain)
    # TLS but no client certificate at all.
    anonymous = grpc.ssl_channel_credentials(root_certificates=mine.root_ca)
    before = snapshot(r)
    for creds in (forged, anonymous, theirs.channel_credentials()):
        for name in ("registry-13", "router"):
            with grpc.secure_channel(topo.address(name), creds) as ch:
                with pytest.raises(grpc.RpcError) as err:
                    if name == "router":
                        pb_grpc.RouterServiceStub(ch).GetDownstreamHealth(pb.GetDownstreamHealthRequest(), timeout=3)
                    else:
                        rpb_grpc.RegistryServiceStub(ch).CreditAccount(rpb.CreditAccountRequest(
                            request_id=rid("forged"), id_number="130102198001017773", amount_fen=100,
                            kind=rpb.CREDIT_KIND_MONTHLY_CONTRIBUTION), timeout=3)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE, (name, err.value.details())
    assert snapshot(r) == before
    with topo.channel("router") as ch:  # our own operator certificate is accepted
        health = pb_grpc.RouterServiceStub(ch).GetDownstreamHealth(pb.GetDownstreamHealthRequest(), timeout=3)
    assert {d.name for d in health.downstream if d.serving} == {"registry-13", "registry-11", "registry-62",
                                                                        "registry-35", "wallet"}


# --- service identities ------------------------------------------------------------------------


def test_router_settles_through_registries_with_its_certificate(topo, family):
    helper, child = family
    with topo.channel("router", HEBEI) as ch:  # the hospital's own certificate
        router = pb_grpc.RouterServiceStub(ch)
        req = settle_req(HEBEI, child, 4_000)
        s = router.Settle(req, timeout=5).setlinfo
        assert (s.acct_mulaid_pay_fen, s.mulaid_helper_psn_no, s.psn_cash_pay_fen) == (4_000, helper, 0)
        assert router.Settle(req, timeout=5).setlinfo == s  # a resend settles once
        rev = router.ReverseSettlement(pb.ReverseSettlementRequest(
            msgid=msgid(HEBEI), institution=inst(HEBEI), setl_id=s.setl_id, psn_no=child), timeout=5)
        assert rev.mulaid_refund_fen == 4_000
        pre = router.PreSettle(pb.PreSettleRequest(msgid=msgid(HEBEI), institution=inst(HEBEI),
                                                   input=req.input), timeout=5).setlinfo
        assert pre.acct_mulaid_pay_fen == 4_000


def post(topo: Topology, message: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
    req = urllib.request.Request(f"http://{topo.address('gateway')}{GATEWAY_PATH}",
                                 data=json.dumps(message, ensure_ascii=False).encode(), method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read(), parse_float=Decimal)  # type: ignore[no-any-return]


def envelope(code: str, infno: str, data: dict[str, Any], sign_no: str = "") -> dict[str, Any]:
    return {"infno": infno, "msgid": msgid(code), "mdtrtarea_admvs": AREA[code], "insuplc_admdvs": "",
            "recer_sys_code": "MBS_LOCAL", "infver": "V1.0", "opter_type": "1", "opter": "0001",
            "opter_name": "收费员", "inf_time": "2026-11-22 10:00:00", "fixmedins_code": code,
            "fixmedins_name": "测试医院", "sign_no": sign_no, "input": data}


def person_1101(code: str, person: str) -> dict[str, Any]:
    return envelope(code, "1101", {"data": {"mdtrt_cert_type": "02", "mdtrt_cert_no": person, "card_sn": "",
                                            "begntime": "", "psn_cert_type": "01", "certno": person, "psn_name": ""}})


def settle_2207(code: str, person: str, medfee: str, sign_no: str = "") -> dict[str, Any]:
    return envelope(code, "2207", {"data": {
        "psn_no": person, "mdtrt_cert_type": "02", "mdtrt_cert_no": person, "med_type": "11", "medfee_sumamt": medfee,
        "mdtrt_id": f"MZ{next(_seq):08d}", "acct_used_flag": "1"}}, sign_no)


def test_gateway_reaches_the_router_with_its_certificate(topo, family):
    _, child = family
    # An institution's bearer token is checked by the gateway and travels on to the router.
    bad = post(topo, person_1101(HEBEI, child), {"Authorization": "Bearer not-a-real-token-at-all"})
    assert bad["infcode"] == -1 and bad["err_msg"].startswith("INSTITUTION_TOKEN_INVALID: "), bad["err_msg"]
    other = post(topo, person_1101(HEBEI, child), {"Authorization": f"Bearer {topo.institution_tokens[BEIJING]}"})
    assert other["infcode"] == -1 and other["err_msg"].startswith("INSTITUTION_MISMATCH: "), other["err_msg"]
    good = post(topo, person_1101(HEBEI, child), {"Authorization": f"Bearer {topo.institution_tokens[HEBEI]}"})
    assert good["infcode"] == 0, good["err_msg"]
    assert good["output"]["baseinfo"]["psn_no"] == child


def test_gateway_refuses_an_uncredentialed_2207_in_the_mtls_profile(topo, r, family):
    helper, child = family
    token = {"Authorization": f"Bearer {topo.institution_tokens[HEBEI]}"}
    before = snapshot(r)
    # No credential: refused in the envelope, in Chinese, before anything is written (no settlement,
    # no stored answer, no sign-in). 9001 itself needs a token or a signature.
    for message in (settle_2207(HEBEI, child, "12.00"), settle_2207(HEBEI, child, "12.00", sign_no="0" * 32),
                    envelope(HEBEI, "9001", {"signIn": {"opter_no": "0001", "mac": "", "ip": ""}})):
        answer = post(topo, message)
        assert answer["infcode"] == -1, answer
        assert answer["output"]["medaid_ext"]["reason"] == (
            "SIGN_NO_INVALID" if message["sign_no"] else "CREDENTIAL_REQUIRED"), answer
        assert answer["err_msg"].startswith(answer["output"]["medaid_ext"]["reason"] + ": 须提供定点医药机构凭证"
                                            if not message["sign_no"] else "SIGN_NO_INVALID: 签到编号"), answer
        assert snapshot(r) == before
    # A token: settled, helper pays.
    ok = post(topo, settle_2207(HEBEI, child, "12.00"), token)
    assert ok["infcode"] == 0, ok["err_msg"]
    assert ok["output"]["setlinfo"]["acct_mulaid_pay"] == Decimal("12.00")
    # A sign_no from a token-credentialed 9001 serves the following calls of that institution only.
    signed = post(topo, envelope(HEBEI, "9001", {"signIn": {"opter_no": "0001", "mac": "", "ip": ""}}), token)
    assert signed["infcode"] == 0, signed["err_msg"]
    sign_no = signed["output"]["signinoutb"]["sign_no"]
    by_sign_in = post(topo, settle_2207(HEBEI, child, "3.00", sign_no=sign_no))
    assert by_sign_in["infcode"] == 0, by_sign_in["err_msg"]
    before = snapshot(r)
    elsewhere = post(topo, envelope(BEIJING, "1101", person_1101(BEIJING, helper)["input"], sign_no=sign_no))
    assert elsewhere["output"]["medaid_ext"]["reason"] == "SIGN_NO_INVALID", elsewhere
    assert snapshot(r) == before


def test_direct_settle_on_a_registry_is_only_for_the_router(topo, r, family):
    helper, child = family
    item = rpb.SettleRequest(request_id=msgid(HEBEI), patient_id_number=child, amount_fen=1_000, use_account=True,
                             category=cpb.CATEGORY_OUTPATIENT, institution_code=HEBEI, institution_admdvs="130100")
    before = snapshot(r)
    for identity in ("operator", "bench", "wallet", "gateway", HEBEI):
        with topo.channel("registry-13", identity) as ch:
            reg = rpb_grpc.RegistryServiceStub(ch)
            for call in (lambda reg=reg: reg.Settle(item, timeout=3),
                         lambda reg=reg: reg.SettleBatch(rpb.SettleBatchRequest(requests=[item]), timeout=3),
                         lambda reg=reg: reg.PreSettle(rpb.PreSettleRequest(
                             patient_id_number=child, amount_fen=1_000, use_account=True,
                             category=cpb.CATEGORY_OUTPATIENT, institution_code=HEBEI), timeout=3),
                         lambda reg=reg: reg.ReverseSettlement(rpb.ReverseSettlementRequest(
                             request_id=rid("rev"), settlement_id=item.request_id), timeout=3)):
                refused(call, grpc.StatusCode.PERMISSION_DENIED, "CALLER_NOT_ALLOWED")
    assert snapshot(r) == before
    # The same Settle as the router is carried out (the refusals above are the identity's).
    with topo.channel("registry-13", "router") as ch:
        res = rpb_grpc.RegistryServiceStub(ch).Settle(item, timeout=3).result
    assert (res.mulaid_pay_fen, res.helper_id_number) == (1_000, helper)
    assert snapshot(r) != before


def test_transfer_debits_and_wallet_spends_are_only_for_the_wallet_and_registries(topo, r):
    with topo.channel("registry-13") as c13, topo.channel("registry-11") as c11, topo.channel("wallet") as cw:
        hebei, beijing = rpb_grpc.RegistryServiceStub(c13), rpb_grpc.RegistryServiceStub(c11)
        wallet = wpb_grpc.WalletServiceStub(cw)
        son = enroll(hebei)
        mother = enroll(beijing, itype=RESIDENT, region="110000", division="110105", birth="19550101")
        credit(hebei, son, 100_000)
        wallet.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=mother, province="11",
                                                use_place_admdvs="110000", real_name=FACE), timeout=5)
        wallet.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=son, province="13",
                                                use_place_admdvs="130100", real_name=FACE), timeout=5)
    before = snapshot(r)
    debit = rpb.DebitForTransferRequest(transfer_id=rid("xfer"), sender_id_number=son, amount_fen=10_000,
                                        recipient_province="11")
    for identity in ("router", "operator", "bench", "registry"):
        with topo.channel("registry-13", identity) as ch:
            reg = rpb_grpc.RegistryServiceStub(ch)
            for call in (lambda reg=reg: reg.DebitForTransfer(debit, timeout=3),
                         lambda reg=reg: reg.RefundTransfer(rpb.RefundTransferRequest(
                             transfer_id=debit.transfer_id, sender_id_number=son, amount_fen=10_000), timeout=3),
                         lambda reg=reg: reg.CreditLotReturn(rpb.CreditLotReturnRequest(
                             return_id=rid("ret"), sender_id_number=son, amount_fen=10_000,
                             transfer_id=debit.transfer_id), timeout=3),
                         lambda reg=reg: reg.NoteWallet(rpb.NoteWalletRequest(id_number=son, use_place_admdvs="130100"),
                                                timeout=3)):
                refused(call, grpc.StatusCode.PERMISSION_DENIED, "CALLER_NOT_ALLOWED")
    for identity in ("router", "operator", "gateway"):
        with topo.channel("wallet", identity) as ch:
            refused(lambda ch=ch: wpb_grpc.WalletServiceStub(ch).SpendWallet(wpb.SpendWalletRequest(
                request_id=rid("spend"), owner_id_number=mother, amount_fen=100, category=cpb.CATEGORY_OUTPATIENT,
                spending_admdvs="110000"), timeout=3), grpc.StatusCode.PERMISSION_DENIED, "CALLER_NOT_ALLOWED")
    assert snapshot(r) == before
    # The saga itself runs: the wallet debits the 河北 registry with its certificate, and a 北京
    # settlement through the router spends the wallet with the registry's certificate.
    with topo.channel("wallet") as cw:
        wallet = wpb_grpc.WalletServiceStub(cw)
        t = wallet.CreateTransfer(wpb.CreateTransferRequest(
            request_id=rid("xfer"), sender_id_number=son, sender_province="13", recipient_id_number=mother,
            relation=cpb.RELATION_PARENT, amount_fen=60_000, verification=FACE), timeout=10).transfer
        assert t.state == wpb.TRANSFER_STATE_PENDING_ACCEPT
        acc = wallet.AcceptTransfer(wpb.AcceptTransferRequest(request_id=rid("acc"), transfer_id=t.transfer_id,
                                                              recipient_id_number=mother), timeout=10)
        assert acc.transfer.state == wpb.TRANSFER_STATE_COMPLETED
    with topo.channel("router", BEIJING) as ch:
        s = pb_grpc.RouterServiceStub(ch).Settle(settle_req(BEIJING, mother, 25_000), timeout=10).setlinfo
    assert (s.wallet_pay_fen, s.psn_cash_pay_fen) == (25_000, 0)


# --- institutions at the router ------------------------------------------------------------------


def test_institutions_authenticate_and_act_only_for_themselves(topo, r, family):
    _, child = family
    token = topo.institution_tokens[HEBEI]
    before = snapshot(r)
    with topo.channel("router", "operator") as ch:  # a certificate that is no institution's
        router = pb_grpc.RouterServiceStub(ch)
        refused(lambda: router.Settle(settle_req(HEBEI, child, 500), timeout=5),
                grpc.StatusCode.UNAUTHENTICATED, "INSTITUTION_UNAUTHENTICATED")
        for header in ("Bearer wrong-token-0123456789", "Bearer ", "Basic " + token, token):
            refused(lambda h=header: router.Settle(settle_req(HEBEI, child, 500), timeout=5,
                                                   metadata=[("authorization", h)]),
                    grpc.StatusCode.UNAUTHENTICATED, "INSTITUTION_TOKEN_INVALID")
        # A valid token used for another institution's fixmedins_code.
        for call in (lambda: router.Settle(settle_req(BEIJING, child, 500), timeout=5, metadata=bearer(token)),
                     lambda: router.QueryPerson(query_req(BEIJING, child), timeout=5, metadata=bearer(token))):
            refused(call, grpc.StatusCode.PERMISSION_DENIED, "INSTITUTION_MISMATCH")
    with topo.channel("router", HEBEI) as ch:  # the 河北 hospital's certificate, another code in the request
        router = pb_grpc.RouterServiceStub(ch)
        refused(lambda: router.Settle(settle_req(BEIJING, child, 500), timeout=5),
                grpc.StatusCode.PERMISSION_DENIED, "INSTITUTION_MISMATCH")
        refused(lambda: router.Settle(settle_req(HEBEI, child, 500), timeout=5,
                                      metadata=bearer(topo.institution_tokens[BEIJING])),
                grpc.StatusCode.PERMISSION_DENIED, "INSTITUTION_MISMATCH")
    assert snapshot(r) == before
    with topo.channel("router", "operator") as ch:  # the right token settles
        s = pb_grpc.RouterServiceStub(ch).Settle(settle_req(HEBEI, child, 500), timeout=5,
                                                  metadata=bearer(token)).setlinfo
    assert s.acct_mulaid_pay_fen == 500
    assert snapshot(r) != before


def test_rate_limit_is_per_institution(tmp_path):
    topo = Topology.start(provinces=("13",), wallet=False, gateway=False, clock=DEMO_CLOCK, tls=True,
                          rate_limit_rps=1, rate_limit_burst=3)
    try:
        r = redis.Redis(port=topo.redis.port)
        with topo.channel("registry-13") as ch:
            reg = rpb_grpc.RegistryServiceStub(ch)
            patient = enroll(reg)
            credit(reg, patient, 50_000)
        with topo.channel("router", HEBEI) as ch_a, topo.channel("router", "operator") as ch_b:
            a, b = pb_grpc.RouterServiceStub(ch_a), pb_grpc.RouterServiceStub(ch_b)
            for _ in range(3):  # the burst
                a.QueryPerson(query_req(HEBEI, patient), timeout=5)
            before = snapshot(r)
            with pytest.raises(grpc.RpcError) as err:
                a.Settle(settle_req(HEBEI, patient, 700), timeout=5)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert reason(err.value) == "RATE_LIMITED"
            assert snapshot(r) == before  # refused before the handler: nothing written
            # Another institution (by token) is not starved.
            s = b.Settle(settle_req("H62010000001", patient, 700), timeout=5,
                         metadata=bearer(topo.institution_tokens["H62010000001"])).setlinfo
            assert s.acct_pay_fen == 700
            time.sleep(1.2)  # one token a second refills
            assert a.Settle(settle_req(HEBEI, patient, 700), timeout=5).setlinfo.acct_pay_fen == 700
        r.close()
    finally:
        topo.stop()


def test_replicated_registry_over_mtls():
    """A replica list (`a:1|b:2`) has no single host name to check: the router checks the service's
    identity in the replicas' certificates instead (common/rpc.py)."""
    topo = Topology.start(provinces=("13",), gateway=False, clock=DEMO_CLOCK, tls=True, replicas={"registry-13": 2})
    try:
        with topo.channel("registry-13") as ch:
            reg = rpb_grpc.RegistryServiceStub(ch)
            patient = enroll(reg)
            credit(reg, patient, 5_000)
        with topo.channel("router", HEBEI) as ch:
            router = pb_grpc.RouterServiceStub(ch)
            for _ in range(4):  # round-robin: both replicas answer
                assert router.Settle(settle_req(HEBEI, patient, 100), timeout=5).setlinfo.acct_pay_fen == 100
            health = router.GetDownstreamHealth(pb.GetDownstreamHealthRequest(), timeout=5)
        assert {(d.name, d.serving) for d in health.downstream} == \
            {("registry-13#1", True), ("registry-13#2", True), ("wallet", True)}
    finally:
        topo.stop()


# --- masking ---------------------------------------------------------------------------------------


def test_listings_mask_counterparts_for_callers_that_are_not_privileged(topo, family):
    helper, child = family
    with topo.channel("router", HEBEI) as ch:
        s = pb_grpc.RouterServiceStub(ch).Settle(settle_req(HEBEI, child, 300), timeout=5).setlinfo
        q = pb_grpc.RouterServiceStub(ch).QueryPerson(query_req(HEBEI, child), timeout=5)
    # 1101 to an institution: the patient in clear, the helper masked.
    assert q.baseinfo.psn_no == child and [h.psn_no for h in q.helpers] == [mask(helper)]
    views = {}
    for identity in ("operator", "bench"):
        with topo.channel("registry-13", identity) as ch:
            reg = rpb_grpc.RegistryServiceStub(ch)
            views[identity] = (
                reg.ListBindings(rpb.ListBindingsRequest(id_number=child), timeout=3),
                reg.ListBindings(rpb.ListBindingsRequest(id_number=helper), timeout=3),
                reg.ListConsumptionRecords(rpb.ListConsumptionRecordsRequest(id_number=helper), timeout=3),
                reg.GetSettlement(rpb.GetSettlementRequest(settlement_id=s.setl_id), timeout=3).result,
            )
    as_member, as_helper, records, setl = views["operator"]  # privileged: everything in clear
    assert [(b.helper_id_number, b.member_id_number) for b in as_member.as_member] == [(helper, child)]
    assert [(b.helper_id_number, b.member_id_number) for b in as_helper.as_helper] == [(helper, child)]
    assert {(x.helper_id_number, x.member_id_number) for x in records.records} == {(helper, child)}
    assert (setl.patient_id_number, setl.helper_id_number) == (child, helper)
    as_member, as_helper, records, setl = views["bench"]  # not privileged: only the person asked about
    assert [(b.helper_id_number, b.member_id_number) for b in as_member.as_member] == [(mask(helper), child)]
    assert [(b.helper_id_number, b.member_id_number) for b in as_helper.as_helper] == [(helper, mask(child))]
    assert records.records and {(x.helper_id_number, x.member_id_number) for x in records.records} == \
        {(helper, mask(child))}
    assert (setl.patient_id_number, setl.helper_id_number) == (child, mask(helper))
    # The wallet: lot senders are counterparts of the owner.
    with topo.channel("registry-11") as ch:
        mother = enroll(rpb_grpc.RegistryServiceStub(ch), itype=RESIDENT, region="110000", division="110105",
                        birth="19560101")
    with topo.channel("registry-13") as ch:
        son = enroll(rpb_grpc.RegistryServiceStub(ch))
        credit(rpb_grpc.RegistryServiceStub(ch), son, 10_000)
    with topo.channel("wallet") as ch:
        wallet = wpb_grpc.WalletServiceStub(ch)
        wallet.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=mother, province="11",
                                                use_place_admdvs="110000", real_name=FACE), timeout=5)
        wallet.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=son, province="13",
                                                use_place_admdvs="130100", real_name=FACE), timeout=5)
        t = wallet.CreateTransfer(wpb.CreateTransferRequest(
            request_id=rid("xfer"), sender_id_number=son, sender_province="13", recipient_id_number=mother,
            relation=cpb.RELATION_PARENT, amount_fen=5_000, verification=FACE), timeout=10).transfer
        wallet.AcceptTransfer(wpb.AcceptTransferRequest(request_id=rid("acc"), transfer_id=t.transfer_id,
                                                        recipient_id_number=mother), timeout=10)
        clear = wallet.GetWallet(wpb.GetWalletRequest(owner_id_number=mother), timeout=3)
        clear_t = wallet.GetTransfer(wpb.GetTransferRequest(transfer_id=t.transfer_id), timeout=3).transfer
    assert [lot.sender_id_number for lot in clear.lots] == [son] and dict(clear.remaining_by_sender_fen) == {son: 5_000}
    assert (clear_t.sender_id_number, clear_t.recipient_id_number) == (son, mother)
    with topo.channel("wallet", "bench") as ch:
        wallet = wpb_grpc.WalletServiceStub(ch)
        masked = wallet.GetWallet(wpb.GetWalletRequest(owner_id_number=mother), timeout=3)
        masked_t = wallet.GetTransfer(wpb.GetTransferRequest(transfer_id=t.transfer_id), timeout=3).transfer
        masked_in = wallet.ListIncomingTransfers(wpb.ListIncomingTransfersRequest(recipient_id_number=mother),
                                                 timeout=3).transfers
        masked_out = wallet.ListOutgoingTransfers(wpb.ListOutgoingTransfersRequest(sender_id_number=son),
                                                  timeout=3).transfers
    # Transfers to a recipient: the recipient asked about in clear, the senders masked; and the
    # other way round for a sender's transfers.
    assert [(x.sender_id_number, x.recipient_id_number) for x in masked_in] == [(mask(son), mother)]
    assert [(x.sender_id_number, x.recipient_id_number) for x in masked_out] == [(son, mask(mother))]
    assert masked.wallet.owner_id_number == mother and masked.wallet.balance_fen == 5_000
    assert [lot.sender_id_number for lot in masked.lots] == [mask(son)]
    assert dict(masked.remaining_by_sender_fen) == {mask(son): 5_000}
    assert (masked_t.sender_id_number, masked_t.recipient_id_number) == (mask(son), mask(mother))


def test_logs_of_every_service_mask_id_numbers(topo, family):
    helper, child = family
    with topo.channel("registry-13", "gateway") as ch:  # one refusal of our own, to be logged
        refused(lambda: rpb_grpc.RegistryServiceStub(ch).GetPerson(rpb.GetPersonRequest(id_number=child), timeout=3),
                grpc.StatusCode.PERMISSION_DENIED, "CALLER_NOT_ALLOWED")
    time.sleep(0.3)  # let the log pipes drain
    logs = {name: "\n".join(svc.log_lines) for name, svc in topo.services.items()}
    for name, text in logs.items():
        assert not unmasked_id_numbers(text), f"an unmasked id number reached the logs of {name}"
    everything = "\n".join(logs.values())
    assert mask(helper) in everything  # ids are logged, masked (so the check above can fail)
    assert '"CALLER_NOT_ALLOWED"' in logs["registry-13"]  # refusals are logged


# --- units: token file, buckets, policy ---------------------------------------------------------


def test_token_file_and_token_buckets(tmp_path: Path):
    path = tmp_path / "tokens.toml"
    security.write_tokens(path, {HEBEI: "a-long-enough-token-1", BEIJING: "a-long-enough-token-2"})
    assert "a-long-enough-token" not in path.read_text()  # only digests are stored
    assert security.load_tokens(path) == {security.digest("a-long-enough-token-1"): HEBEI,
                                          security.digest("a-long-enough-token-2"): BEIJING}
    path.write_text('[tokens]\nH13010100001 = "short"\n')
    with pytest.raises(SystemExit):
        security.load_tokens(path)
    path.write_text('[tokens]\nh1301 = "a-long-enough-token-1"\n')
    with pytest.raises(SystemExit):
        security.load_tokens(path)
    now = [0.0]
    buckets = TokenBuckets(2, 3, clock=lambda: now[0])
    assert [buckets.take("A") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("A") == pytest.approx(0.5)
    assert buckets.take("B") == 0.0  # another key has its own bucket
    now[0] = 0.5
    assert buckets.take("A") == 0.0 and buckets.take("A") > 0


def test_policy_table_names_real_methods_only():
    from medaid.wallet.v1 import wallet_pb2

    services = {authz.REGISTRY: rpb.DESCRIPTOR.services_by_name["RegistryService"],
                authz.WALLET: wallet_pb2.DESCRIPTOR.services_by_name["WalletService"],
                authz.ROUTER: pb.DESCRIPTOR.services_by_name["RouterService"]}
    for table in authz.POLICIES.values():
        for method in table:
            svc, _, name = method.strip("/").partition("/")
            if svc in services:
                assert name in services[svc].methods_by_name, method
    # Every method of each service has a rule (nothing is left to the default deny by omission).
    for role, svc in (("registry", authz.REGISTRY), ("wallet", authz.WALLET), ("router", authz.ROUTER)):
        names = {m.name for m in services[svc].methods}
        assert names == {m.rsplit("/", 1)[1] for m in authz.POLICIES[role] if m.startswith(f"/{svc}/")}
    assert authz.POLICIES["registry"][f"/{authz.REGISTRY}/Settle"] == {"router"}
    assert authz.POLICIES["registry"][f"/{authz.REGISTRY}/DebitForTransfer"] == {"wallet"}


def test_cli_speaks_mtls_as_operator_and_institutions_by_token(topo, family, capsys, tmp_path):
    from medaid import cli

    helper, child = family
    base = ["--topology", str(tmp_path / "none.json"), "--router", topo.address("router"),
            "--registry", f"13={topo.address('registry-13')}", "--tls-dir", topo.tls_dir]
    assert cli.main([*base, "--json", "credit", helper, "1.00"]) == 0
    assert json.loads(capsys.readouterr().out)["balance_fen"]
    settle = ["settle", child, "2.00", "--fixmedins", HEBEI]
    assert cli.main([*base, "--json", *settle]) == 1  # the operator is no institution
    assert json.loads(capsys.readouterr().out)["error"]["reason"] == "INSTITUTION_UNAUTHENTICATED"
    assert cli.main([*base, "--json", "--token", topo.institution_tokens[HEBEI], *settle]) == 0
    assert json.loads(capsys.readouterr().out)["setlinfo"]["acct_mulaid_pay_fen"] == "200"
    assert cli.main([*base, "--json", "--identity", HEBEI, *settle]) == 0  # the hospital's own certificate
    capsys.readouterr()
    plain = [*(a for a in base if a not in ("--tls-dir", topo.tls_dir)), "--tls-dir", ""]
    assert cli.main([*plain, "--json", "credit", helper, "1.00"]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "UNAVAILABLE"


def test_a_registry_acts_on_wallets_only_for_its_own_province(topo, r):
    """SPEC §5: wallet quota is spent at the use-place, so only that province's registry settles it,
    refunds it, and reports its insured people's status and ends. A registry certificate of another
    province (`registry-11`), or one naming no province (`registry`), is refused and writes nothing."""
    tls.generate(topo.tls_dir, ["registry-11", "registry-13"])  # the CA is reused
    with topo.channel("registry-13") as c13, topo.channel("wallet") as cw:
        hebei = rpb_grpc.RegistryServiceStub(c13)
        wallet = wpb_grpc.WalletServiceStub(cw)
        son = enroll(hebei)
        mother = enroll(hebei, itype=RESIDENT, birth="19550101")
        credit(hebei, son, 100_000)
        for pid in (son, mother):
            wallet.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=pid, province="13",
                                                    use_place_admdvs="130100", real_name=FACE), timeout=5)
        t = wallet.CreateTransfer(wpb.CreateTransferRequest(
            request_id=rid("xfer"), sender_id_number=son, sender_province="13", recipient_id_number=mother,
            relation=cpb.RELATION_PARENT, amount_fen=50_000, verification=FACE), timeout=10).transfer
        wallet.AcceptTransfer(wpb.AcceptTransferRequest(request_id=rid("acc"), transfer_id=t.transfer_id,
                                                        recipient_id_number=mother), timeout=10)

    def spend(ref: str) -> wpb.SpendWalletRequest:
        return wpb.SpendWalletRequest(request_id=ref, owner_id_number=mother, amount_fen=1_000,
                                      category=cpb.CATEGORY_OUTPATIENT, spending_admdvs="130100")

    with topo.channel("wallet", "registry-13") as ch:
        spent = rid("spend")
        wpb_grpc.WalletServiceStub(ch).SpendWallet(spend(spent), timeout=5)
    before = snapshot(r)
    for identity in ("registry-11", "registry"):
        with topo.channel("wallet", identity) as ch:
            w = wpb_grpc.WalletServiceStub(ch)
            for call in (
                lambda w=w: w.SpendWallet(spend(rid("spend")), timeout=5),
                lambda w=w: w.SpendWallet(wpb.SpendWalletRequest(
                    owner_id_number=mother, amount_fen=1_000, category=cpb.CATEGORY_OUTPATIENT,
                    spending_admdvs="130100", check_only=True), timeout=5),
                lambda w=w: w.RefundWalletSpend(wpb.RefundWalletSpendRequest(
                    request_id=rid("ref"), spend_id=spent, owner_id_number=mother), timeout=5),
                lambda w=w: w.RefundWalletSpend(wpb.RefundWalletSpendRequest(  # made in 13: not to bar
                    request_id=rid("ref"), spend_id=spent, owner_id_number=mother, cancel_if_absent=True),
                    timeout=5),
                lambda w=w: w.EndPersonWalletRelationships(wpb.EndPersonWalletRelationshipsRequest(
                    request_id=rid("end"), id_number=son, reason="TERMINATED", province="13"), timeout=5),
                lambda w=w: w.NoteOwnerStatus(wpb.NoteOwnerStatusRequest(id_number=mother, province="13"), timeout=5),
            ):
                refused(call, grpc.StatusCode.PERMISSION_DENIED, "REGISTRY_OUTSIDE_PROVINCE")
    with topo.channel("wallet", "registry") as ch:  # a spend not made: no province's to bar
        refused(lambda: wpb_grpc.WalletServiceStub(ch).RefundWalletSpend(wpb.RefundWalletSpendRequest(
            request_id=rid("ref"), spend_id=rid("spend"), owner_id_number=mother, cancel_if_absent=True),
            timeout=5), grpc.StatusCode.PERMISSION_DENIED, "REGISTRY_OUTSIDE_PROVINCE")
    with topo.channel("wallet", "registry-13") as ch:  # every relationship: not one province's to end
        refused(lambda: wpb_grpc.WalletServiceStub(ch).EndPersonWalletRelationships(
            wpb.EndPersonWalletRelationshipsRequest(request_id=rid("end"), id_number=son, reason="TERMINATED"),
            timeout=5), grpc.StatusCode.PERMISSION_DENIED, "REGISTRY_OUTSIDE_PROVINCE")
    assert snapshot(r) == before
    with topo.channel("wallet", "registry-13") as ch:  # the use-place's own registry goes on as before
        w = wpb_grpc.WalletServiceStub(ch)
        assert w.RefundWalletSpend(wpb.RefundWalletSpendRequest(
            request_id=rid("ref"), spend_id=spent, owner_id_number=mother), timeout=5).refunded_fen == 1_000
        assert w.SpendWallet(spend(rid("spend")), timeout=5).spent_fen == 1_000
        w.NoteOwnerStatus(wpb.NoteOwnerStatusRequest(id_number=mother, province="13"), timeout=5)
    # A spend not made that 北京's registry bars is barred for 北京's spends only: 河北's goes on.
    ref = rid("spend")
    with topo.channel("wallet", "registry-11") as ch:
        assert wpb_grpc.WalletServiceStub(ch).RefundWalletSpend(wpb.RefundWalletSpendRequest(
            request_id=rid("ref"), spend_id=ref, owner_id_number=mother, cancel_if_absent=True),
            timeout=5).refunded_fen == 0
    with topo.channel("wallet", "registry-13") as ch:
        w = wpb_grpc.WalletServiceStub(ch)
        assert w.SpendWallet(spend(ref), timeout=5).spent_fen == 1_000
        # 河北's own bar holds for 河北's spends.
        ref = rid("spend")
        assert w.RefundWalletSpend(wpb.RefundWalletSpendRequest(
            request_id=rid("ref"), spend_id=ref, owner_id_number=mother, cancel_if_absent=True),
            timeout=5).refunded_fen == 0
        refused(lambda: w.SpendWallet(spend(ref), timeout=5), grpc.StatusCode.FAILED_PRECONDITION,
                "SPEND_CANCELLED")


def test_releasing_a_senders_lots_keeps_to_the_callers_province(topo, r):
    """ReleaseSenderLots, like EndPersonWalletRelationships, acts for the calling registry's province
    only: another province's registry sends home none of a 河北 sender's lots (what he sent as its
    insured: nothing), a certificate naming no province is refused and writes nothing, and 河北's own
    registry releases them."""
    tls.generate(topo.tls_dir, ["registry-11", "registry-13"])  # the CA is reused
    with topo.channel("registry-13") as c13, topo.channel("wallet") as cw:
        hebei = rpb_grpc.RegistryServiceStub(c13)
        wallet = wpb_grpc.WalletServiceStub(cw)
        son = enroll(hebei)
        mother = enroll(hebei, itype=RESIDENT, birth="19550101")
        credit(hebei, son, 100_000)
        for pid in (son, mother):
            wallet.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=pid, province="13",
                                                    use_place_admdvs="130100", real_name=FACE), timeout=5)
        t = wallet.CreateTransfer(wpb.CreateTransferRequest(
            request_id=rid("xfer"), sender_id_number=son, sender_province="13", recipient_id_number=mother,
            relation=cpb.RELATION_PARENT, amount_fen=20_000, verification=FACE), timeout=10).transfer
        wallet.AcceptTransfer(wpb.AcceptTransferRequest(request_id=rid("acc"), transfer_id=t.transfer_id,
                                                        recipient_id_number=mother), timeout=10)

    def release() -> wpb.ReleaseSenderLotsRequest:
        return wpb.ReleaseSenderLotsRequest(request_id=rid("rel"), sender_id_number=son, reason="TERMINATED")

    before = snapshot(r)
    with topo.channel("wallet", "registry") as ch:
        refused(lambda: wpb_grpc.WalletServiceStub(ch).ReleaseSenderLots(release(), timeout=5),
                grpc.StatusCode.PERMISSION_DENIED, "REGISTRY_OUTSIDE_PROVINCE")
    assert snapshot(r) == before
    with topo.channel("wallet", "registry-11") as ch:
        assert wpb_grpc.WalletServiceStub(ch).ReleaseSenderLots(release(), timeout=5).returned_fen == 0
    with topo.channel("wallet") as cw:
        assert wpb_grpc.WalletServiceStub(cw).GetWallet(wpb.GetWalletRequest(owner_id_number=mother),
                                                        timeout=5).wallet.balance_fen == 20_000
    with topo.channel("wallet", "registry-13") as ch:
        assert wpb_grpc.WalletServiceStub(ch).ReleaseSenderLots(release(), timeout=5).returned_fen == 20_000


def test_a_settlement_recovered_after_its_patient_moved_province_converges(topo, r):
    """SPEC §7 with mTLS: registry-13 dies (kill -9) after a 2207's own-account step, its wallet share
    planned and not yet spent. The patient then moves to 甘肃 and her wallet follows her there. The 河北
    recovery loop cannot spend the share any more (the use-place is 620100 now) and bars the spend it
    planned: that bar is 河北's own act on 河北's spend, not an act for 甘肃, so the wallet takes it, the
    settlement is completed with the share as cash, and money is conserved to the fen. 甘肃's registry
    still cannot bar or refund 河北's spends."""
    from medaid.bench import money

    tls.generate(topo.tls_dir, ["registry-13", "registry-62"])  # the CA is reused
    with topo.channel("registry-13") as c13, topo.channel("wallet") as cw:
        hebei, wallet = rpb_grpc.RegistryServiceStub(c13), wpb_grpc.WalletServiceStub(cw)
        son = enroll(hebei)
        mother = enroll(hebei, itype=RESIDENT, birth="19550101")
        credit(hebei, son, 100_000)
        for pid in (son, mother):
            wallet.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=pid, province="13",
                                                    use_place_admdvs="130100", real_name=FACE), timeout=5)
        t = wallet.CreateTransfer(wpb.CreateTransferRequest(
            request_id=rid("xfer"), sender_id_number=son, sender_province="13", recipient_id_number=mother,
            relation=cpb.RELATION_PARENT, amount_fen=50_000, verification=FACE), timeout=10).transfer
        wallet.AcceptTransfer(wpb.AcceptTransferRequest(request_id=rid("acc"), transfer_id=t.transfer_id,
                                                        recipient_id_number=mother), timeout=10)
    made = rid("spend")  # a 河北 spend made before she moves: 河北's registry refunds it after the move
    with topo.channel("wallet", "registry-13") as ch:
        assert wpb_grpc.WalletServiceStub(ch).SpendWallet(wpb.SpendWalletRequest(
            request_id=made, owner_id_number=mother, amount_fen=2_000, category=cpb.CATEGORY_OUTPATIENT,
            spending_admdvs="130100"), timeout=5).spent_fen == 2_000
    sid = rid("2207")
    settle = rpb.SettleRequest(request_id=sid, patient_id_number=mother, amount_fen=10_000, use_account=True,
                               category=cpb.CATEGORY_OUTPATIENT, institution_code=HEBEI,
                               institution_admdvs="130100")
    # The lock the crash leaves on her expires after 3 s (--lock-ttl-ms; 10 s by default); the recovery
    # loop takes the settlement 8 s after it began (--recovery-grace-ms; 15 s by default): time enough
    # for the move below, which waits for that lock.
    locks = {"MEDAID_LOCK_TTL_MS": "3000"}
    topo.restart("registry-13", env={"MEDAID_FAULT": "settle.after_own_debit", **locks})
    try:
        with topo.channel("registry-13", "router") as ch:
            with pytest.raises(grpc.RpcError):
                rpb_grpc.RegistryServiceStub(ch).Settle(settle, timeout=10)
        proc = topo.services["registry-13"].proc
        proc.wait(timeout=15)
        assert proc.returncode == -9
    finally:
        topo.restart("registry-13", env={"MEDAID_RECOVERY_GRACE_MS": "8000", **locks})
    # She moves to 甘肃 (her 河北 wallet relationships end: the son's quota goes home) and her wallet
    # follows her there, all before the 河北 recovery loop's grace period is over.
    deadline = time.monotonic() + 30
    with topo.channel("registry-13") as c13, topo.channel("registry-62") as c62, topo.channel("wallet") as cw:
        hebei, gansu = rpb_grpc.RegistryServiceStub(c13), rpb_grpc.RegistryServiceStub(c62)
        wallet = wpb_grpc.WalletServiceStub(cw)
        moved = rpb.UpdatePersonStatusRequest(request_id=rid("move"), id_number=mother,
                                              status=cpb.PERSON_STATUS_TERMINATED, moved_to_province="62")
        while True:  # the dead holder's lock on her expires first
            try:
                hebei.UpdatePersonStatus(moved, timeout=10)
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline, exc.details()
                time.sleep(0.2)
        gansu.EnrollPerson(rpb.EnrollPersonRequest(request_id=rid("enroll"), id_number=mother, name="李四",
                                                   insurance_type=RESIDENT, pooling_region="620100"), timeout=10)
        got = wallet.ChangeUsePlace(wpb.ChangeUsePlaceRequest(request_id=rid("up"), owner_id_number=mother,
                                                              use_place_admdvs="620100"), timeout=10).wallet
        assert (got.province, got.use_place_admdvs) == ("62", "620100")
        # The settlement converges: the recovery loop finishes it, the wallet's share as cash.
        deadline = time.monotonic() + 45
        while True:
            try:
                rec = hebei.GetSettlement(rpb.GetSettlementRequest(settlement_id=sid), timeout=10)
                break
            except grpc.RpcError as exc:  # SETTLEMENT_IN_PROGRESS while it is open
                assert exc.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline, (
                    exc.details(), [x for x in topo.services["registry-13"].log_lines if "deferred" in x][-2:])
                time.sleep(0.5)
        assert rec.result.state == "SETTLED", rec
        assert (rec.result.wallet_pay_fen, rec.result.cash_pay_fen) == (0, 10_000)
        open_entries = [m.decode() for m in r.zrange("reg:13:{open}:setl", 0, -1)]
        assert not [e for e in open_entries if mother in e], open_entries
    # A spend made in 河北 is 河北's to refund, wherever the wallet is used now, and never 甘肃's.
    before = snapshot(r)
    with topo.channel("wallet", "registry-62") as ch:
        for cancel in (False, True):
            refused(lambda cancel=cancel: wpb_grpc.WalletServiceStub(ch).RefundWalletSpend(
                wpb.RefundWalletSpendRequest(request_id=rid("ref"), spend_id=made, owner_id_number=mother,
                                             cancel_if_absent=cancel), timeout=5),
                grpc.StatusCode.PERMISSION_DENIED, "REGISTRY_OUTSIDE_PROVINCE")
    assert snapshot(r) == before
    with topo.channel("wallet", "registry-13") as ch:
        assert wpb_grpc.WalletServiceStub(ch).RefundWalletSpend(wpb.RefundWalletSpendRequest(
            request_id=rid("ref"), spend_id=made, owner_id_number=mother), timeout=10).refunded_fen == 2_000
    report = money.check(r)
    assert report.conserved, report.as_dict()


def test_a_registry_certificate_naming_no_province_is_told_apart_from_a_wallet_outage(topo, r):
    """docs/operations.md "A registry the wallet refuses": a registry that presents a certificate naming no
    province (the shared `registry` one of earlier releases) has its wallet acts refused
    (REGISTRY_OUTSIDE_PROVINCE). That is no outage, and an operator must be able to tell: its client hears
    WALLET_REFUSED_REGISTRY (still UNAVAILABLE: the act is finished once the certificate is fixed) with the
    wallet's own reason in the metadata; each recovery pass counts the entries the wallet refused
    (medaid_recovery_actions_total{action="wallet_refused"}) and says so in a log line, id numbers masked.
    With its own certificate back, a resend with the same request id finishes the act."""
    from test_metrics import scrape, value

    tls.generate(topo.tls_dir, ["registry", "registry-13"])  # the CA is reused
    with topo.channel("registry-13") as c13, topo.channel("wallet") as cw:
        mother = enroll(rpb_grpc.RegistryServiceStub(c13), itype=RESIDENT, birth="19550102")
        wpb_grpc.WalletServiceStub(cw).OpenWallet(wpb.OpenWalletRequest(
            request_id=rid("open"), owner_id_number=mother, province="13", use_place_admdvs="130100",
            real_name=FACE), timeout=5)
    suspend = rpb.UpdatePersonStatusRequest(request_id=rid("status"), id_number=mother,
                                            status=cpb.PERSON_STATUS_SUSPENDED)
    bare = topo.restart("registry-13", env={"MEDAID_TLS_CERT": str(Path(topo.tls_dir) / "registry.crt"),
                                            "MEDAID_TLS_KEY": str(Path(topo.tls_dir) / "registry.key"),
                                            "MEDAID_RECOVERY_GRACE_MS": "100"})
    try:
        with topo.channel("registry-13") as ch:
            with pytest.raises(grpc.RpcError) as err:
                rpb_grpc.RegistryServiceStub(ch).UpdatePersonStatus(suspend, timeout=10)
        assert (err.value.code(), reason(err.value)) == (grpc.StatusCode.UNAVAILABLE, "WALLET_REFUSED_REGISTRY"), (
            err.value.details())
        info = errors.error_info(err.value)
        assert info is not None
        assert dict(info.metadata) == {"wallet_reason": "REGISTRY_OUTSIDE_PROVINCE", "caller_province": ""}
        deadline = time.monotonic() + 20
        while value(scrape(bare.metrics_port), "medaid_recovery_actions_total", action="wallet_refused") < 2:
            assert time.monotonic() < deadline, "wallet refusals not counted by the recovery passes"
            time.sleep(0.2)
        lines = [json.loads(x) for x in bare.log_lines if "wallet refused this registry" in x]
        assert lines, bare.log_lines[-5:]
        fields = lines[-1]
        assert (fields["wallet_reason"], fields["caller_province"]) == ("REGISTRY_OUTSIDE_PROVINCE", "")
        assert fields["wallet_refused"] >= 1
        assert mask(mother) in json.dumps(fields, ensure_ascii=False)
        assert not [x for x in bare.log_lines if mother in x]
    finally:
        topo.restart("registry-13")
    with topo.channel("registry-13") as ch:  # its own certificate back: the resend finishes the act
        got = rpb_grpc.RegistryServiceStub(ch).UpdatePersonStatus(suspend, timeout=10)
    assert got.person.status == cpb.PERSON_STATUS_SUSPENDED
    assert not [m for m in r.zrange("reg:13:{open}:setl", 0, -1) if mother.encode() in m]


def test_the_premium_list_masks_counterparts_for_callers_that_are_not_privileged(topo):
    """ListResidentPremiums is a listing like the others (SPEC §4b, the list for the tax bureau): an
    unprivileged caller sees in clear only the payer or payee asked about; the other party, and the
    contributors a family account charged, masked."""
    from medaid.registry.v1 import family_pb2 as fpb
    from medaid.registry.v1 import premium_pb2 as ppb
    gs = {"region": "620100", "division": "620102"}
    with topo.channel("registry-62") as ch:
        reg = rpb_grpc.RegistryServiceStub(ch)
        creator, child = enroll(reg, **gs), enroll(reg, itype=RESIDENT, birth="20150101", **gs)
        credit(reg, creator, 100_000)
        fid = reg.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
            request_id=rid("fam"), creator_id_number=creator, commitment=FACE, initial_transfer_fen=50_000),
            timeout=10).account.family_id
        reg.InviteMember(fpb.InviteMemberRequest(request_id=rid("inv"), family_id=fid, creator_id_number=creator,
                                                 member_id_number=child, relation=cpb.RELATION_CHILD), timeout=10)
        paid = reg.PayResidentPremium(ppb.PayResidentPremiumRequest(
            request_id=rid("prem"), payer_id_number=creator, payee_id_number=child, relation=cpb.RELATION_CHILD,
            year="2027", source=ppb.PREMIUM_SOURCE_FAMILY_ACCOUNT, family_id=fid), timeout=10).premium
    assert paid.contributors == f"{creator}:{paid.amount_fen}"
    asks = {"payee": ppb.ListResidentPremiumsRequest(payee_id_number=child),
            "payer": ppb.ListResidentPremiumsRequest(payer_id_number=creator),
            "year": ppb.ListResidentPremiumsRequest(year="2027")}
    views = {}
    for identity in ("operator", "bench"):
        with topo.channel("registry-62", identity) as ch:
            reg = rpb_grpc.RegistryServiceStub(ch)
            views[identity] = {
                k: [(p.payer_id_number, p.payee_id_number, p.contributors)
                    for p in reg.ListResidentPremiums(q, timeout=3).premiums if p.premium_id == paid.premium_id]
                for k, q in asks.items()}
    whole = [(creator, child, paid.contributors)]
    assert views["operator"] == {"payee": whole, "payer": whole, "year": whole}
    hidden = f"{mask(creator)}:{paid.amount_fen}"
    assert views["bench"] == {"payee": [(mask(creator), child, hidden)],
                              "payer": [(creator, mask(child), f"{creator}:{paid.amount_fen}")],
                              "year": [(mask(creator), mask(child), hidden)]}


def test_a_person_asked_about_with_a_lower_case_check_character_stays_clear(topo):
    """An unprivileged caller that writes the person's check character `x` (as card readers send it)
    asked about that person: the answer shows them in clear, under the id number as stored (`X`), and
    their name with it; only the people the request does not name are masked (`authz.named`, the
    wallet's masking too)."""
    helper, child = new_id_x(), new_id_x(birth="20160101")
    with topo.channel("registry-13") as ch:
        hebei = rpb_grpc.RegistryServiceStub(ch)
        for pid, itype in ((helper, cpb.INSURANCE_TYPE_EMPLOYEE), (child, RESIDENT)):
            hebei.EnrollPerson(rpb.EnrollPersonRequest(request_id=rid("enroll"), id_number=pid, name="张三",
                                                       insurance_type=itype, pooling_region="130100"), timeout=5)
        credit(hebei, helper, 10_000)
        bind(hebei, helper, child)
    with topo.channel("registry-13", "bench") as ch:
        reg = rpb_grpc.RegistryServiceStub(ch)
        person = reg.GetPerson(rpb.GetPersonRequest(id_number=child.lower()), timeout=3).person
        listed = reg.ListBindings(rpb.ListBindingsRequest(id_number=child.lower()), timeout=3)
    assert (person.id_number, person.name) == (child, "张三")
    assert [(b.helper_id_number, b.member_id_number) for b in listed.as_member] == [(mask(helper), child)]
