"""The national JSON gateway over real HTTP, in front of a real topology (redis-server, three
registries, the wallet, the router and the gateway, each its own OS process).

Messages are built the way open-source hospital-system clients build them (newtouch openhis
`YiBaoInterface`, hsa-his, the C# `MZJS2207A` model): the national envelope with `input.data`,
their field names and nesting, amounts as strings or as JSON numbers, `med_type` even as a number.
Nothing here talks to the gateway other than over HTTP; setup (enrolment, credits, bindings,
wallets) goes to the registries and the wallet over gRPC, as an operator would.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import datetime as dt
import gzip
import hashlib
import itertools
import json
import re
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from medaid import topology
from medaid.common.clock import SHANGHAI
from medaid.common.idnumber import make
from medaid.common.v1 import common_pb2 as cpb
from medaid.gateway import amounts, files, reasons, schemas, signing, wire
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.registry.v1 import registry_pb2_grpc as rpb_grpc
from medaid.topology import DEMO_CLOCK, GATEWAY_PATH, ServiceProcess, Topology, start_service
from medaid.wallet.v1 import wallet_pb2 as wpb
from medaid.wallet.v1 import wallet_pb2_grpc as wpb_grpc
from pydantic import ValidationError
from pydantic_core import PydanticCustomError
from support import (
    RESIDENT,
    balance,
    bind,
    credit,
    enroll,
    fund_wallet,
    logical_value,
    new_id,
    new_id_x,
    rid,
    unmasked_id_numbers,
)

HOSPITAL = "H13010100001"  # a 石家庄 hospital
BEIJING_HOSPITAL = "H11010500001"
PHARMACY = "P13010200001"
AREA = {HOSPITAL: "130100", BEIJING_HOSPITAL: "110000", PHARMACY: "130100"}
SERVICES = Path(__file__).resolve().parents[1] / "services" / "medaid"
DEMO_START = dt.datetime(2026, 11, 22, 10, 0, tzinfo=SHANGHAI)
_msg = itertools.count(1)
NOBODY = make("110105", "19500101", "991")  # a valid id number nobody enrolls


# --- the wire -----------------------------------------------------------------------------------


def new_msgid(fixmedins: str = HOSPITAL) -> str:
    """fixmedins_code (12) + yyyyMMddHHmmss (14) + sequence (4), unique within the module."""
    n = next(_msg)
    return fixmedins + (DEMO_START + dt.timedelta(seconds=n)).strftime("%Y%m%d%H%M%S") + f"{n % 10000:04d}"


def envelope(infno: str, data: dict[str, Any] | None = None, *, fixmedins: str = HOSPITAL, insuplc: str = "",
             msgid: str | None = None, sign_no: str = "", input_: dict[str, Any] | None = None) -> dict[str, Any]:
    """The envelope exactly as the open-source clients fill it (every field present, most empty)."""
    return {
        "infno": infno,
        "msgid": msgid or new_msgid(fixmedins),
        "mdtrtarea_admvs": AREA[fixmedins],
        "insuplc_admdvs": insuplc,
        "recer_sys_code": "MBS_LOCAL",
        "dev_no": "",
        "dev_safe_info": "",
        "cainfo": "",
        "signtype": "SM2",
        "infver": "V1.0",
        "opter_type": "1",
        "opter": "0001",
        "opter_name": "收费员",
        "inf_time": "2026-11-22 10:00:00",
        "fixmedins_code": fixmedins,
        "fixmedins_name": "测试定点医药机构",
        "sign_no": sign_no,
        "input": input_ if input_ is not None else {"data": data or {}},
    }


def data_1101(id_number: str, name: str = "") -> dict[str, Any]:
    return {"mdtrt_cert_type": "02", "mdtrt_cert_no": id_number, "card_sn": "", "begntime": "",
            "psn_cert_type": "01", "certno": id_number, "psn_name": name}


def data_2207(psn_no: str, medfee: Any, *, med_type: Any = "11", flag: str = "1", **extra: Any) -> dict[str, Any]:
    data = {"psn_no": psn_no, "mdtrt_cert_type": "02", "mdtrt_cert_no": psn_no, "med_type": med_type,
            "medfee_sumamt": medfee, "psn_setlway": "01", "mdtrt_id": f"MZ{next(_msg):010d}",
            "chrg_bchno": f"CB{next(_msg):08d}", "insutype": "310", "acct_used_flag": flag, "invono": "",
            "fulamt_ownpay_amt": "", "overlmt_selfpay": "", "preselfpay_amt": "", "inscp_scp_amt": ""}
    data.update(extra)
    return data


def body_of(message: Any) -> bytes:
    """JSON text; Decimal values are written as JSON numbers with their exact digits (as a C#
    `decimal` or Java `BigDecimal` client writes them)."""
    text = json.dumps(message, ensure_ascii=False, default=lambda d: f"@@{d}@@")
    return re.sub(r'"@@(-?[0-9.Ee+]+)@@"', r"\1", text).encode("utf-8")


class Answer:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.text = raw.decode("utf-8")
        self.json: dict[str, Any] = json.loads(self.text, parse_float=Decimal)
        self.infcode = self.json["infcode"]
        self.err_msg: str = self.json["err_msg"]
        self.output: dict[str, Any] = self.json["output"]

    def ok(self) -> dict[str, Any]:
        assert self.infcode == 0, self.err_msg
        return self.output

    def refused(self, code: str) -> str:
        assert self.infcode == -1, self.text
        # The words, with the setting the refusal names (its metadata) after their first clause.
        setting = reasons.detail_zh(code, self.output["medaid_ext"].get("metadata"))
        assert self.err_msg.startswith(f"{code}: {reasons.with_detail(reasons.REASON_ZH[code], setting)}"), \
            self.err_msg
        assert self.output["medaid_ext"]["reason"] == code
        return self.err_msg


def post_raw(url: str, body: bytes, headers: dict[str, str] | None = None) -> Answer:
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json;charset=utf-8", **(headers or {})})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/json")
        return Answer(resp.read())


def snapshot(r: redis.Redis) -> dict[bytes, Any]:
    """Every key with its DUMP. The wallet's maintenance loop takes its fenced lock
    (`wal:{maint}:lock` / `:fence`) every 200 ms, and each registry's recovery loop its own
    (`reg:<p>:{recovery}:…`) every second, whatever the traffic, so those are left out."""
    return {k: logical_value(r, k) for k in sorted(r.keys("*")) if b"{maint}" not in k and b"{recovery}" not in k}


# --- fixtures -------------------------------------------------------------------------------------------


class Env:
    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.url = f"http://{topo.address('gateway')}{GATEWAY_PATH}"
        self.r = redis.Redis(host="127.0.0.1", port=topo.redis.port)
        self.channels = {n: grpc.insecure_channel(topo.address(n)) for n in ("registry-13", "registry-11", "wallet")}
        self.hebei = rpb_grpc.RegistryServiceStub(self.channels["registry-13"])
        self.beijing = rpb_grpc.RegistryServiceStub(self.channels["registry-11"])
        self.wallet = wpb_grpc.WalletServiceStub(self.channels["wallet"])

    def post(self, message: Any, url: str | None = None, headers: dict[str, str] | None = None) -> Answer:
        return post_raw(url or self.url, body_of(message), headers)

    def close(self) -> None:
        for ch in self.channels.values():
            ch.close()
        self.r.close()


@contextlib.contextmanager
def gateway_env(provinces: tuple[str, ...] | None = None, clean: tuple[str, ...] = ("gateway",)) -> Iterator[Env]:
    """The whole product (the registries of `provinces`, every province when None, the wallet, the
    router, the gateway) for the module-scoped `env` of the gateway's test files; each service named
    in `clean` must then exit cleanly."""
    topo = Topology.start(clock=DEMO_CLOCK) if provinces is None else Topology.start(provinces=provinces,
                                                                                        clock=DEMO_CLOCK)
    try:
        e = Env(topo)
    except BaseException:
        topo.stop()  # an Env that cannot be made (a province it needs not started) leaves no processes
        raise
    try:
        yield e
    finally:
        e.close()
        codes = topo.stop()
        for name in clean:
            assert codes[name] == 0, (codes, topo.services[name].log_lines[-20:])


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with gateway_env() as e:
        yield e


def family(e: Env, *, own: int = 0, helper_balance: int = 30_000) -> tuple[str, str]:
    """A 河北 helper (employee) bound to a child (resident, no personal account)."""
    helper = enroll(e.hebei, name="张伟")
    child = enroll(e.hebei, itype=RESIDENT, birth="20160101", name="张小雨")
    if helper_balance:
        credit(e.hebei, helper, helper_balance)
    bind(e.hebei, helper, child)
    return helper, child


# --- 1101 ----------------------------------------------------------------------------------------------


def test_1101_person_info_as_open_source_clients_ask_for_it(env: Env):
    helper, child = family(env, helper_balance=30_050)
    # From a 北京 hospital that does not know where the child is insured: routed by the directory.
    a = env.post(envelope("1101", data_1101(child, "张小雨"), fixmedins=BEIJING_HOSPITAL))
    out = a.ok()
    assert re.fullmatch(r"100000[0-9]{14}[0-9]{10}", a.json["inf_refmsgid"])
    assert re.fullmatch(r"2026112210[0-9]{7}", a.json["refmsg_time"])
    assert re.fullmatch(r"2026112210[0-9]{7}", a.json["respond_time"])
    assert a.err_msg == ""
    assert out["baseinfo"] == {"psn_no": child, "psn_cert_type": "01", "certno": child, "psn_name": "张小雨",
                               "gend": "1" if int(child[16]) % 2 else "2", "naty": "", "brdy": "2016-01-01",
                               "age": 10}
    [insu] = out["insuinfo"]
    assert insu["balc"] == Decimal("0.00") and '"balc":0.00' in a.text
    assert (insu["insutype"], insu["psn_insu_stas"], insu["insuplc_admdvs"]) == ("390", "1", "130100")
    assert out["medaid_ext"]["mulaid_helpers"] == [{"psn_no": helper, "relation": "CHILD"}]

    # The helper: an employee with ¥300.50 in the personal account, asked by certno only
    # (an 01 e-credential token beside the id number) and with the place of insurance given.
    data = {**data_1101(helper), "mdtrt_cert_type": "01", "mdtrt_cert_no": "ecToken-6f1e2d", "psn_name": "张伟"}
    a = env.post(envelope("1101", data, insuplc="130100"))
    [insu] = a.ok()["insuinfo"]
    assert insu["balc"] == Decimal("300.50") and '"balc":300.50' in a.text
    assert insu["insutype"] == "310"
    assert insu["medaid_ext"] == {"wallet_opened": False, "wallet_balc": Decimal("0.00"),
                                  "wallet_use_place_admdvs": "", "wallet_reason": "", "wallet_msg": ""}
    assert a.json["warn_msg"] == ""


def test_1101_says_a_suspended_terminated_or_deceased_person_is_not_insured_normally(env: Env):
    """人员参保状态 of the national dictionary: 1 正常, 2 暂停, 4 终止; a recorded death ends the
    insurance (SPEC §5b), so a front desk must see 4, not an empty status it may take for normal."""
    helper, child = family(env)
    for pid, change, stas in ((child, cpb.PERSON_STATUS_SUSPENDED, "2"), (child, cpb.PERSON_STATUS_TERMINATED, "4"),
                              (helper, cpb.PERSON_STATUS_DECEASED, "4")):
        if change == cpb.PERSON_STATUS_DECEASED:
            env.hebei.RecordDeath(rpb.RecordDeathRequest(request_id=rid("death"), id_number=pid, heir_id_number=child,
                                                         date_of_death="20261121"))
        else:
            env.hebei.UpdatePersonStatus(rpb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=pid,
                                                                       status=change))
        [insu] = env.post(envelope("1101", data_1101(pid))).ok()["insuinfo"]
        assert insu["psn_insu_stas"] == stas


def test_1101_refusals_carry_code_and_chinese(env: Env):
    _, child = family(env)
    before = snapshot(env.r)
    a = env.post(envelope("1101", data_1101(NOBODY)))
    assert a.refused("PERSON_NOT_FOUND") == ("PERSON_NOT_FOUND: 未查询到该人员的参保信息,本次未办理;"
                                             "请核对证件号码,或请其到参保地医保经办机构核实参保登记")
    a = env.post(envelope("1101", data_1101(child, "李四")))
    assert a.refused("NAME_MISMATCH") == ("NAME_MISMATCH: 姓名与参保登记信息不一致,本次未办理;"
                                          "请按身份证核对姓名后重新提交")
    a = env.post(envelope("1101", {**data_1101(child), "mdtrt_cert_type": "03", "mdtrt_cert_no": "SSC123",
                                   "certno": ""}))
    a.refused("UNSUPPORTED_CERT_TYPE")
    assert snapshot(env.r) == before


def test_1101_an_unsupported_credential_says_what_to_send(env: Env):
    """An 01 e-credential or an 03 social-security card is served when the person's 居民身份证号 comes
    beside it in certno: the refusal of one without it says so (not that only 02 is served), and names
    psn_cert_type when it is certno's type that is not a 居民身份证."""
    _, child = family(env)
    before = snapshot(env.r)
    for cert_type in ("01", "03"):
        err = env.post(envelope("1101", {**data_1101(child), "mdtrt_cert_type": cert_type, "mdtrt_cert_no": "SSC123",
                                         "certno": ""})).refused("UNSUPPORTED_CERT_TYPE")
        text = reasons.REASON_ZH["UNSUPPORTED_CERT_TYPE"]
        assert "certno" in text and "01" in text and "03" in text and "只支持" not in text, text
        assert err.endswith(f"(input.data.mdtrt_cert_type {cert_type})"), err
    err = env.post(envelope("1101", {**data_1101(child), "mdtrt_cert_type": "03", "mdtrt_cert_no": "SSC123",
                                     "psn_cert_type": "06"})).refused("UNSUPPORTED_CERT_TYPE")
    assert err.endswith("(input.data.psn_cert_type 06)"), err
    assert snapshot(env.r) == before
    out = env.post(envelope("1101", {**data_1101(child), "mdtrt_cert_type": "03", "mdtrt_cert_no": "SSC123"})).ok()
    assert out["baseinfo"]["psn_no"] == child



def test_1101_a_refused_number_or_name_is_named_where_the_message_has_it(env: Env):
    """The person's 居民身份证号 comes in mdtrt_cert_no (02) or, beside an 01/03 credential, in certno;
    when the router refuses it, err_msg names the field the front desk typed it into, by its place in
    the message (as a 2207's refusals name theirs), not the e-credential's or card's number, and the
    same for a name it refuses. Nothing is written."""
    _, child = family(env)
    bad = child[:17] + ("0" if child[17] != "0" else "1")  # a check character that does not check
    before = snapshot(env.r)
    for cert_type in ("01", "03"):
        err = env.post(envelope("1101", {**data_1101(bad), "mdtrt_cert_type": cert_type,
                                         "mdtrt_cert_no": "SSC123"})).refused("INVALID_ID_NUMBER")
        assert err.endswith("(input.data.certno)"), err
    err = env.post(envelope("1101", data_1101(bad))).refused("INVALID_ID_NUMBER")
    assert err.endswith("(input.data.mdtrt_cert_no)"), err
    err = env.post(envelope("1101", data_1101(child, "张\u3000小雨"))).refused("INVALID_NAME")
    assert err.endswith("(input.data.psn_name)"), err
    assert snapshot(env.r) == before

# --- 2206 / 2207: the waterfall through the envelope ----------------------------------------------------------


def wallet_family(e: Env) -> tuple[str, str, str]:
    """Patient (河北 employee, ¥20.00 own account, a 医保钱包 in 石家庄 holding ¥30.00 sent by a 北京
    child) and a 河北 helper with ¥100.00 bound to the patient."""
    patient = enroll(e.hebei, name="王建国", birth="19600101")
    credit(e.hebei, patient, 2_000)
    helper = enroll(e.hebei, name="王小明", birth="19880101")
    credit(e.hebei, helper, 10_000)
    bind(e.hebei, helper, patient, relation=cpb.RELATION_PARENT)
    sender = enroll(e.beijing, name="王小丽", birth="19900101", region="110000", division="110105")
    credit(e.beijing, sender, 50_000)
    fund_wallet(e.wallet, sender, patient, 3_000)
    return patient, helper, sender


def money_keys(r: redis.Redis) -> dict[bytes, Any]:
    return {k: v for k, v in snapshot(r).items() if k.startswith((b"reg:", b"wal:"))}


def test_waterfall_own_account_wallet_helper_cash_through_the_envelope(env: Env):
    patient, helper, _ = wallet_family(env)

    # 2206 预结算: the split, nothing moves (only the gateway's own msgid record is written).
    before = money_keys(env.r)
    pre = env.post(envelope("2206", data_2207(patient, "120.00"))).ok()["setlinfo"]
    assert (pre["acct_pay"], pre["wallet_pay"], pre["acct_mulaid_pay"], pre["psn_cash_pay"]) == \
        (Decimal("20.00"), Decimal("30.00"), Decimal("70.00"), Decimal("0.00"))
    assert pre["setl_id"] == "" and pre["medaid_ext"]["mulaid_psn_no"] == helper
    assert money_keys(env.r) == before
    assert balance(env.hebei, patient) == 2_000 and balance(env.hebei, helper) == 10_000

    # 2207 结算: own account ¥20.00 → own wallet ¥30.00 → one helper ¥70.00 → cash ¥0.00.
    msg = envelope("2207", data_2207(patient, "120.00"))
    a = env.post(msg)
    s = a.ok()["setlinfo"]
    assert s["setl_id"] == msg["msgid"] == s["medins_setl_id"]
    assert s["mdtrt_id"] == msg["input"]["data"]["mdtrt_id"] and s["psn_no"] == patient
    assert s["medfee_sumamt"] == s["psn_part_amt"] == Decimal("120.00")
    assert s["acct_pay"] == Decimal("20.00")
    assert s["wallet_pay"] == Decimal("30.00")
    assert s["acct_mulaid_pay"] == Decimal("70.00")
    assert s["psn_cash_pay"] == Decimal("0.00")
    assert s["balc"] == Decimal("0.00")
    assert s["fund_pay_sumamt"] == Decimal("0.00") and s["hifp_pay"] == Decimal("0.00")
    assert s["medaid_ext"]["mulaid_psn_no"] == helper
    assert s["medaid_ext"]["acct_pay_includes_mulaid"] is False
    assert re.fullmatch(r"2026-11-22 [0-9]{2}:[0-9]{2}:[0-9]{2}", s["setl_time"])
    assert a.json["warn_msg"] == ""  # nothing fell to cash
    for field in ("acct_pay", "wallet_pay", "acct_mulaid_pay", "psn_cash_pay", "medfee_sumamt", "balc"):
        assert re.search(rf'"{field}":[0-9]+\.[0-9]{{2}}[,}}]', a.text), field  # numbers, exactly 2 places
    assert balance(env.hebei, patient) == 0 and balance(env.hebei, helper) == 3_000
    w = env.wallet.GetWallet(wpb.GetWalletRequest(owner_id_number=patient)).wallet
    assert w.balance_fen == 0

    # A second bill the helper's ¥30.00 cannot cover: all or nothing, so no helper pays.
    a = env.post(envelope("2207", data_2207(patient, "100.00", med_type=41), fixmedins=PHARMACY))
    s = a.ok()["setlinfo"]
    assert (s["acct_pay"], s["wallet_pay"], s["acct_mulaid_pay"], s["psn_cash_pay"]) == \
        (Decimal("0.00"), Decimal("0.00"), Decimal("0.00"), Decimal("100.00"))
    ext = s["medaid_ext"]
    assert (ext["mulaid_reason"], ext["mulaid_psn_no"]) == ("HELPER_INSUFFICIENT", "")
    assert ext["mulaid_msg"] == reasons.PAID_NOTHING_ZH["HELPER_INSUFFICIENT"]
    assert "共济人账户未扣款" in ext["mulaid_msg"] and "不足部分" not in ext["mulaid_msg"]
    assert ext["wallet_reason"] == "WALLET_ZERO_BALANCE"
    assert f"HELPER_INSUFFICIENT: {ext['mulaid_msg']}" in a.json["warn_msg"]
    assert balance(env.hebei, helper) == 3_000


def test_amounts_as_json_numbers_and_strings_settle_the_exact_fen(env: Env):
    helper, child = family(env, helper_balance=100_000)
    # C# `decimal` style: a JSON number with its digits, med_type sent as a number (MZJS2207A: int med_type).
    a = env.post(envelope("2207", data_2207(child, Decimal("45.60"), med_type=41), fixmedins=PHARMACY))
    assert a.ok()["setlinfo"]["acct_mulaid_pay"] == Decimal("45.60")
    assert balance(env.hebei, helper) == 100_000 - 4_560
    # A decimal(18,4) column serialised as it is ("128.5000", C# decimal, Oracle NUMBER(18,4)): the zeros past
    # the fen change nothing, the amount is exact.
    for medfee, fen in (("0.01", 1), ("12.5", 1_250), (Decimal("7"), 700), (Decimal("1E+1"), 1_000), (3, 300),
                        ("12.5000", 1_250), (Decimal("10.500"), 1_050), (Decimal("0.0100"), 1)):
        before = balance(env.hebei, helper)
        s = env.post(envelope("2207", data_2207(child, medfee))).ok()["setlinfo"]
        assert s["acct_mulaid_pay"] == s["medfee_sumamt"] == Decimal(fen).scaleb(-2)
        assert balance(env.hebei, helper) == before - fen, medfee


def test_a_zero_written_with_a_minus_sign_is_zero(env: Env):
    """`-0.00` is zero, not a negative amount: what a HIS computing a policy range in floating point writes
    (`(0.1 + 0.2 - 0.3).toFixed(2)` in JavaScript, `f"{x:.2f}"` in Python). An optional amount so written
    settles as 0.00; a bill of -0.00 is refused for being zero, not for a sign it does not have."""
    helper, child = family(env, helper_balance=100_000)
    zero = {"fulamt_ownpay_amt": "-0.00", "overlmt_selfpay": Decimal("-0.00"), "preselfpay_amt": "-0",
            "inscp_scp_amt": Decimal("-0E+2")}
    s = env.post(envelope("2207", data_2207(child, "12.00", **zero))).ok()["setlinfo"]
    assert [s[f] for f in zero] == [Decimal("0.00")] * 4
    assert balance(env.hebei, helper) == 100_000 - 1_200
    before = snapshot(env.r)
    for bill in ("-0.00", Decimal("-0.00")):
        err = env.post(envelope("2207", data_2207(child, bill))).refused("INVALID_AMOUNT")
        assert "不能为负数" not in err and "须大于0" in err, err
    for negative in ("-0.01", Decimal("-0.01"), "-0.001"):
        err = env.post(envelope("2207", data_2207(child, "12.00", fulamt_ownpay_amt=negative))).refused(
            "INVALID_AMOUNT")
        assert "(input.data.fulamt_ownpay_amt: " in err, err
    assert snapshot(env.r) == before
    assert [amounts.amount_to_fen(v) for v in ("-0.00", "-0", "-0E+2", Decimal("-0.00"), " -0.00 ")] == [0] * 5
    assert amounts.signed_yuan_to_fen("-0.00") == 0


def test_amounts_a_java_his_writes_in_scientific_notation_settle_and_reconcile_to_the_fen(env: Env):
    """A Java HIS writing its BigDecimal amounts with stripTrailingZeros().toString() (openhis's 2207 and
    its 3202 detail rows) sends ¥100 as "1E+2" and ¥1,234.50 as "1.2345E+3": each is the value it
    writes, settled and reconciled to the fen; one past the fen ("1.2345E+1" = ¥12.345) is refused as
    "12.345" is, and writes nothing."""
    inst = "H13010100095"
    AREA[inst] = "130100"
    helper, child = family(env, helper_balance=300_000)
    before = snapshot(env.r)
    env.post(envelope("2207", data_2207(child, "1.2345E+1"), fixmedins=inst)).refused("INVALID_AMOUNT")
    assert snapshot(env.r) == before
    bill = data_2207(child, "1.2345E+3", psn_part_amt="1E+2", fulamt_ownpay_amt="1.5E+1", inscp_scp_amt="0")
    pre = env.post(envelope("2206", bill, fixmedins=inst)).ok()["setlinfo"]
    assert pre["acct_mulaid_pay"] == Decimal("100.00") and balance(env.hebei, helper) == 300_000
    s = env.post(envelope("2207", bill, fixmedins=inst)).ok()["setlinfo"]
    assert (s["medfee_sumamt"], s["psn_part_amt"], s["acct_mulaid_pay"], s["fulamt_ownpay_amt"]) == \
        (Decimal("1234.50"), Decimal("100.00"), Decimal("100.00"), Decimal("15.00"))
    assert balance(env.hebei, helper) == 300_000 - 10_000
    header = {**_statement_3201("2026-11-22", "2026-11-22"), "insutype": "", "clr_type": "",
              "medfee_sumamt": "1.2345E+3", "fund_pay_sumamt": "0", "acct_pay": "0", "cash_payamt": "0",
              "fixmedins_setl_cnt": 1, "refd_setl_flag": "0"}
    row = {"setl_id": s["setl_id"], "mdtrt_id": s["mdtrt_id"], "psn_no": child, "medfee_sumamt": "1.2345E+3",
           "fund_pay_sumamt": "0", "acct_pay": "0", "acct_mulaid_pay": "1E+2", "psn_cash_pay": "0",
           "refd_setl_flag": "0"}
    out = env.post(envelope("3202", fixmedins=inst, input_={"data": header, "detail": [row]})).ok()
    assert (out["stmtinfo"]["stmt_rslt"], out["detail"]) == ("0", []), out
    out = env.post(envelope("3202", fixmedins=inst, input_={"data": header, "detail": [
        {**row, "acct_mulaid_pay": "1.0001E+2"}]})).ok()  # ¥100.01: off by a fen
    assert [(m["stmt_rslt_type"], m["fields"]) for m in out["detail"]] == [("AMOUNT_DIFFERS", "acct_mulaid_pay")]
    line = "\t".join(row[c] for c in ("setl_id", "mdtrt_id", "psn_no", "medfee_sumamt", "fund_pay_sumamt",
                                       "acct_pay", "refd_setl_flag")) + "\n"
    upload = {"in": base64.b64encode(line.encode()).decode(), "filename": "detail.txt"}
    out = env.post(envelope("3202", fixmedins=inst, input_={"data": header, "fsUploadIn": upload})).ok()
    assert out["stmtinfo"]["stmt_rslt"] == "0", out["stmtinfo"]["stmt_rslt_dscr"]
    assert balance(env.hebei, helper) == 300_000 - 10_000


def test_psn_part_amt_extension_and_cash_only_flag(env: Env):
    helper, child = family(env)
    # The institution settled its funds elsewhere: only psn_part_amt (¥80.00 of ¥300.00) is settled here.
    a = env.post(envelope("2207", data_2207(child, "300.00", psn_part_amt="80.00", fulamt_ownpay_amt="12.00",
                                            insutype="390")))
    s = a.ok()["setlinfo"]
    assert (s["medfee_sumamt"], s["psn_part_amt"], s["acct_mulaid_pay"], s["fund_pay_sumamt"]) == \
        (Decimal("300.00"), Decimal("80.00"), Decimal("80.00"), Decimal("0.00"))
    assert s["fulamt_ownpay_amt"] == Decimal("12.00") and s["insutype"] == "390"
    assert balance(env.hebei, helper) == 30_000 - 8_000
    # acct_used_flag "0": cash only; the helper is not asked.
    a = env.post(envelope("2207", data_2207(child, "50.00", flag="0")))
    s = a.ok()["setlinfo"]
    assert (s["acct_mulaid_pay"], s["psn_cash_pay"]) == (Decimal("0.00"), Decimal("50.00"))
    assert s["medaid_ext"]["mulaid_reason"] == "ACCOUNT_NOT_USED"
    assert a.json["warn_msg"].startswith("ACCOUNT_NOT_USED: ")
    assert balance(env.hebei, helper) == 30_000 - 8_000


def test_refusal_from_inside_reaches_err_msg_and_writes_nothing(env: Env):
    helper, child = family(env)
    env.hebei.UpdatePersonStatus(rpb.UpdatePersonStatusRequest(
        request_id=rid("status"), id_number=child, status=cpb.PERSON_STATUS_SUSPENDED))
    # No money key moves, the gateway stores no answer for a refusal and the router keeps no msgid claim.
    before = money_keys(env.r)
    msgids = []
    for data, insuplc, code in ((data_2207(child, "10.00"), "", "MEMBER_NOT_INSURED"),
                                (data_2207(NOBODY, "10.00"), "", "PERSON_NOT_FOUND"),
                                (data_2207(child, "10.00"), "450199", "UNKNOWN_INSURED_PLACE")):
        msg = envelope("2207", data, insuplc=insuplc)
        msgids.append(msg["msgid"])
        a = env.post(msg)
        err = a.refused(code)
        assert a.output["medaid_ext"]["detail"], code  # the router's / registry's own words, for the integrator
        if code == "PERSON_NOT_FOUND":
            assert err == ("PERSON_NOT_FOUND: 未查询到该人员的参保信息,本次未办理;"
                           "请核对证件号码,或请其到参保地医保经办机构核实参保登记")
    assert money_keys(env.r) == before
    assert not [m for m in msgids if env.r.exists(f"gw:{{msg:{m}}}") or env.r.exists(f"rtr:{{mid:{m}}}")]
    assert balance(env.hebei, helper) == 30_000


def test_refused_2207_msgid_is_free_for_the_corrected_message(env: Env):
    """A refusal writes nothing anywhere: the msgid of a refused 2207 settles the corrected message."""
    helper, child = family(env)
    env.hebei.UpdatePersonStatus(rpb.UpdatePersonStatusRequest(
        request_id=rid("status"), id_number=child, status=cpb.PERSON_STATUS_SUSPENDED))
    msg = envelope("2207", data_2207(child, "10.00"))
    env.post(msg).refused("MEMBER_NOT_INSURED")
    assert not env.r.exists(f"rtr:{{mid:{msg['msgid']}}}") and not env.r.exists(f"gw:{{msg:{msg['msgid']}}}")
    fixed = {**msg, "input": {"data": data_2207(helper, "10.00")}}  # the front desk picked the wrong person
    a = env.post(fixed)
    s = a.ok()["setlinfo"]
    assert (s["setl_id"], s["psn_no"], s["acct_pay"]) == (msg["msgid"], helper, Decimal("10.00"))
    assert env.post(fixed).raw == a.raw
    env.post(msg).refused("IDEMPOTENCY_KEY_REUSED")  # once settled, the msgid is that message's
    assert balance(env.hebei, helper) == 29_000


def test_id_numbers_ending_in_lower_case_x_are_the_same_person(env: Env):
    pid = new_id_x()
    low = pid[:-1] + "x"
    env.hebei.EnrollPerson(rpb.EnrollPersonRequest(request_id=rid("enroll"), id_number=low, name="赵六",
                                                   insurance_type=cpb.INSURANCE_TYPE_EMPLOYEE,
                                                   pooling_region="130100"))
    credit(env.hebei, pid, 10_000)
    b = env.post(envelope("1101", data_1101(low, "赵六"))).ok()["baseinfo"]
    assert (b["psn_no"], b["certno"]) == (pid, pid)
    bill = data_2207(low, "10.00")
    msg = envelope("2207", bill)
    a = env.post(msg)
    s = a.ok()["setlinfo"]
    assert (s["psn_no"], s["certno"], s["acct_pay"]) == (pid, pid, Decimal("10.00"))
    # The same message with the id written with `X` is the same message: the first answer, byte for byte.
    assert env.post({**msg, "input": {"data": {**bill, "psn_no": pid, "mdtrt_cert_no": pid}}}).raw == a.raw
    r = env.post(envelope("2208", {"setl_id": s["setl_id"], "mdtrt_id": bill["mdtrt_id"], "psn_no": low}))
    assert r.ok()["setlinfo"]["psn_no"] == pid
    assert balance(env.hebei, pid) == 10_000
    assert not [k for k in env.r.scan_iter(match="*") if low.encode() in k]


def test_2207_answers_the_persons_pooling_region_and_refuses_another(env: Env):
    p = enroll(env.hebei, region="130200", division="130203")  # 唐山
    credit(env.hebei, p, 10_000)
    assert env.post(envelope("1101", data_1101(p))).ok()["insuinfo"][0]["insuplc_admdvs"] == "130200"
    for infno in ("2206", "2207"):
        s = env.post(envelope(infno, data_2207(p, "10.00"))).ok()["setlinfo"]
        assert s["medaid_ext"]["insuplc_admdvs"] == "130200", infno
    before = money_keys(env.r)
    msg = envelope("2207", data_2207(p, "10.00"), insuplc="130100")
    err = env.post(msg).refused("INSURED_PLACE_MISMATCH")
    assert "insuplc_admdvs" in err
    assert money_keys(env.r) == before
    assert not env.r.exists(f"gw:{{msg:{msg['msgid']}}}") and not env.r.exists(f"rtr:{{mid:{msg['msgid']}}}")
    s = env.post({**msg, "insuplc_admdvs": "130200"}).ok()["setlinfo"]
    assert s["medaid_ext"]["insuplc_admdvs"] == "130200"
    assert balance(env.hebei, p) == 8_000


def test_an_insuplc_of_another_province_is_a_place_mismatch_the_cashier_can_correct(env: Env):
    """A 河北 patient whose message names 北京 (110000) as the insured place: registry 11 does not know
    them, the directory does, so 1101, 2206 and 2207 answer INSURED_PLACE_MISMATCH with its Chinese
    text (send the place 1101 gives, or none), not PERSON_NOT_FOUND (which would send the patient to pay in cash);
    nothing is written, and the corrected 2207 under the same msgid settles."""
    p = enroll(env.hebei, region="130200", division="130203")  # 唐山
    credit(env.hebei, p, 10_000)
    before = money_keys(env.r)
    for infno, data in (("1101", data_1101(p)), ("2206", data_2207(p, "10.00")), ("2207", data_2207(p, "10.00"))):
        err = env.post(envelope(infno, data, insuplc="110000")).refused("INSURED_PLACE_MISMATCH")
        assert "insuplc_admdvs" in err and p not in err, (infno, err)
    msg = envelope("2207", data_2207(p, "10.00"), insuplc="110000")
    env.post(msg).refused("INSURED_PLACE_MISMATCH")
    assert money_keys(env.r) == before
    assert not env.r.exists(f"rtr:{{mid:{msg['msgid']}}}")
    s = env.post({**msg, "insuplc_admdvs": "130200"}).ok()["setlinfo"]
    assert s["medaid_ext"]["insuplc_admdvs"] == "130200"
    assert balance(env.hebei, p) == 9_000
    nobody = new_id("130102", "19700707")  # enrolled nowhere: still not found
    env.post(envelope("1101", data_1101(nobody), insuplc="110000")).refused("PERSON_NOT_FOUND")


def test_a_hospital_sending_its_district_code_settles_from_the_wallet_of_its_city(env: Env):
    """A 石家庄 hospital whose mdtrtarea_admvs is its district (130102 长安区): the patient's wallet,
    used in 石家庄 (130100), pays there, 2206 and 2207 alike; one of 唐山's districts (130203) is
    not the wallet's use-place and leaves the share to cash."""
    patient, helper, _ = wallet_family(env)
    # own account ¥20.00 first, then ¥20.00 of the wallet's ¥30.00
    for infno in ("2206", "2207"):
        msg = {**envelope(infno, data_2207(patient, "40.00")), "mdtrtarea_admvs": "130102"}
        s = env.post(msg).ok()["setlinfo"]
        assert (s["acct_pay"], s["wallet_pay"], s["acct_mulaid_pay"], s["psn_cash_pay"]) == \
            (Decimal("20.00"), Decimal("20.00"), Decimal("0.00"), Decimal("0.00")), infno
        assert s["medaid_ext"]["wallet_reason"] == ""
    assert env.wallet.GetWallet(wpb.GetWalletRequest(owner_id_number=patient)).wallet.balance_fen == 1_000
    msg = {**envelope("2207", data_2207(patient, "5.00")), "mdtrtarea_admvs": "130203"}
    s = env.post(msg).ok()["setlinfo"]
    assert (s["wallet_pay"], s["medaid_ext"]["wallet_reason"]) == (Decimal("0.00"), "WALLET_OTHER_USE_PLACE")
    assert s["acct_mulaid_pay"] == Decimal("5.00") and balance(env.hebei, helper) == 9_500
    assert env.wallet.GetWallet(wpb.GetWalletRequest(owner_id_number=patient)).wallet.balance_fen == 1_000


# --- 2208 -------------------------------------------------------------------------------------------------------


def test_2208_reverses_by_setl_id_once(env: Env):
    patient, helper, _ = wallet_family(env)
    bill = data_2207(patient, "120.00")
    setl = env.post(envelope("2207", bill)).ok()["setlinfo"]
    assert balance(env.hebei, patient) == 0 and balance(env.hebei, helper) == 3_000

    # A 2208 naming another visit: not this settlement; the words point at the visit, not the setl_id.
    other_visit = env.post(envelope("2208", {"setl_id": setl["setl_id"], "mdtrt_id": "MZ-OTHER", "psn_no": patient}))
    assert other_visit.refused("SETTLEMENT_NOT_FOUND").endswith("(input.data.mdtrt_id)")
    assert balance(env.hebei, patient) == 0 and balance(env.hebei, helper) == 3_000

    rev = envelope("2208", {"setl_id": setl["setl_id"], "mdtrt_id": bill["mdtrt_id"], "psn_no": patient})
    a = env.post(rev)
    r = a.ok()["setlinfo"]
    assert r["setl_id"] == rev["msgid"] and r["init_setl_id"] == setl["setl_id"]
    assert (r["mdtrt_id"], r["psn_no"]) == (bill["mdtrt_id"], patient)
    assert (r["acct_pay"], r["wallet_pay"], r["acct_mulaid_pay"]) == \
        (Decimal("-20.00"), Decimal("-30.00"), Decimal("-70.00"))
    assert r["balc"] == Decimal("20.00") and r["medaid_ext"]["mulaid_psn_no"] == helper
    # The reversal is a settlement record of its own (冲销), every figure of the 2207 negated, so a
    # client reading it with its 2207 model finds each field.
    assert (r["medfee_sumamt"], r["psn_part_amt"], r["psn_cash_pay"], r["fund_pay_sumamt"]) == \
        (Decimal("-120.00"), Decimal("-120.00"), Decimal("0.00"), Decimal("0.00"))
    assert (r["insutype"], r["med_type"], r["certno"], r["medins_setl_id"]) == ("310", "11", patient, rev["msgid"])
    assert balance(env.hebei, patient) == 2_000 and balance(env.hebei, helper) == 10_000
    assert env.wallet.GetWallet(wpb.GetWalletRequest(owner_id_number=patient)).wallet.balance_fen == 3_000

    # The same 2208 resent: the first answer, byte for byte; no second refund.
    assert env.post(rev).raw == a.raw
    assert balance(env.hebei, patient) == 2_000 and balance(env.hebei, helper) == 10_000
    # Another 2208 for the same settlement: refused, with the reversal that did it.
    again = env.post(envelope("2208", {"setl_id": setl["setl_id"], "mdtrt_id": bill["mdtrt_id"], "psn_no": patient}))
    again.refused("ALREADY_REVERSED")
    assert again.output["medaid_ext"]["metadata"]["reversal_id"] == rev["msgid"]
    assert balance(env.hebei, patient) == 2_000 and balance(env.hebei, helper) == 10_000
    unknown = env.post(envelope("2208", {"setl_id": new_msgid(), "mdtrt_id": "", "psn_no": patient}))
    assert unknown.refused("SETTLEMENT_NOT_FOUND").endswith("(input.data.setl_id)")


# --- msgid: the idempotency key -------------------------------------------------------------------------------


def test_resent_message_returns_the_first_answer_and_settles_once(env: Env):
    helper, child = family(env)
    msg = envelope("2207", data_2207(child, "25.00"))
    first = env.post(msg)
    first.ok()
    assert balance(env.hebei, helper) == 27_500
    again = env.post(msg)
    assert again.raw == first.raw  # same inf_refmsgid, same times, same split
    assert balance(env.hebei, helper) == 27_500
    # The same msgid with different content: refused, nothing written.
    before = snapshot(env.r)
    changed = json.loads(json.dumps(msg))
    changed["input"]["data"]["medfee_sumamt"] = "26.00"
    env.post(changed).refused("IDEMPOTENCY_KEY_REUSED")
    assert snapshot(env.r) == before
    # A 1101 is replayed too: the first answer, even after the balance changed.
    q = envelope("1101", data_1101(helper))
    first_q = env.post(q)
    env.post(envelope("2207", data_2207(child, "5.00")))
    assert env.post(q).raw == first_q.raw
    assert env.post(envelope("1101", data_1101(helper))).ok()["insuinfo"][0]["balc"] == Decimal("270.00")


def test_concurrent_duplicates_agree_on_one_answer_and_one_debit(env: Env):
    helper, child = family(env)
    msg = envelope("2207", data_2207(child, "40.00"))
    answers: list[Answer] = []
    lock = threading.Lock()

    def send() -> None:
        a = env.post(msg)
        with lock:
            answers.append(a)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(answers) == 8
    ok = [a for a in answers if a.infcode == 0]
    busy = [a for a in answers if a.infcode != 0]
    assert ok, [a.err_msg for a in answers]
    assert len({a.raw for a in ok}) == 1  # everyone who got an answer got the same one
    # A duplicate that found the first still running is told to resend the same msgid.
    for a in busy:
        assert a.output["medaid_ext"]["reason"] in ("PATIENT_BUSY", "SETTLEMENT_IN_PROGRESS", "CONTENDED"), a.err_msg
        assert "相同msgid" in a.err_msg or "原msgid" in a.err_msg
    assert env.post(msg).raw == ok[0].raw
    assert balance(env.hebei, helper) == 30_000 - 4_000


# --- malformed messages: infcode -1, a clear err_msg, nothing written ----------------------------------------------


def _without(d: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != key}


def _bad_cases(child: str) -> list[tuple[str, bytes, str, str]]:
    """(case, body, reason code, a fragment the err_msg must name)."""
    good = envelope("2207", data_2207(child, "10.00"))

    def with_data(**changes: Any) -> bytes:
        msg = json.loads(json.dumps(good))
        msg["msgid"] = new_msgid()
        msg["input"]["data"].update(changes)
        return body_of(msg)

    def with_env(**changes: Any) -> bytes:
        msg = json.loads(json.dumps(good))
        msg["msgid"] = new_msgid()
        msg.update(changes)
        return body_of(msg)

    return [
        ("missing infno", body_of(_without(good, "infno")), "MISSING_FIELD", "infno"),
        ("empty infno", with_env(infno=""), "INVALID_FIELD", "infno"),
        ("unknown infno", with_env(infno="2301"), "UNSUPPORTED_INFNO", "2301"),
        ("missing msgid", body_of(_without(good, "msgid")), "MISSING_FIELD", "msgid"),
        ("msgid too short", with_env(msgid=HOSPITAL + "202611221000001"), "INVALID_MSGID", "msgid"),
        ("msgid not alphanumeric", with_env(msgid=HOSPITAL + "2026-1122100000" + "001"), "INVALID_MSGID", "30位"),
        ("msgid too long", with_env(msgid=new_msgid() + "1"), "INVALID_MSGID", "msgid"),
        ("bad fixmedins_code", with_env(fixmedins_code="H1301"), "INVALID_INSTITUTION_CODE", "fixmedins_code"),
        ("bad mdtrtarea_admvs", with_env(mdtrtarea_admvs="13010"), "INVALID_ADMDVS", "mdtrtarea_admvs"),
        ("missing mdtrtarea_admvs", body_of(_without(good, "mdtrtarea_admvs")), "MISSING_FIELD",
         "mdtrtarea_admvs"),
        ("bad insuplc_admdvs", with_env(insuplc_admdvs="1300AA"), "INVALID_ADMDVS", "insuplc_admdvs"),
        ("3-decimal amount (string)", with_data(medfee_sumamt="10.005"), "INVALID_AMOUNT", "两位小数"),
        ("3-decimal amount (number)", with_data(medfee_sumamt=Decimal("10.005")), "INVALID_AMOUNT", "两位小数"),
        ("a cent written past two places", with_data(medfee_sumamt="10.0050"), "INVALID_AMOUNT", "两位小数"),
        ("a cent written past two places (number)", with_data(medfee_sumamt=Decimal("10.0010")), "INVALID_AMOUNT",
         "两位小数"),
        ("negative amount", with_data(medfee_sumamt="-10.00"), "INVALID_AMOUNT", "负数"),
        ("negative number", with_data(medfee_sumamt=Decimal("-1")), "INVALID_AMOUNT", "负数"),
        ("non-numeric amount", with_data(medfee_sumamt="10元"), "INVALID_AMOUNT", "medfee_sumamt"),
        ("boolean amount", with_data(medfee_sumamt=True), "INVALID_AMOUNT", "medfee_sumamt"),
        ("3-decimal optional amount", with_data(fulamt_ownpay_amt="1.001"), "INVALID_AMOUNT", "fulamt_ownpay_amt"),
        ("missing medfee_sumamt", body_of({**good, "msgid": new_msgid(), "input": {
            "data": _without(good["input"]["data"], "medfee_sumamt")}}), "MISSING_FIELD", "medfee_sumamt"),
        ("psn_part_amt above the bill", with_data(psn_part_amt="10.01"), "INVALID_AMOUNT", "psn_part_amt"),
        ("unknown med_type", with_data(med_type="99"), "UNSUPPORTED_MED_TYPE", "99"),
        ("bad acct_used_flag", with_data(acct_used_flag="Y"), "INVALID_ACCT_USED_FLAG", "acct_used_flag"),
        # A required flag sent as null (a Java or C# model's unset member) is missing, as every required
        # field sent so is (wire: null is absent); not a type error. "" is no flag.
        ("null acct_used_flag", with_data(acct_used_flag=None), "MISSING_FIELD",
         "(input.data.acct_used_flag)"),
        ("empty acct_used_flag", with_data(acct_used_flag=""), "INVALID_ACCT_USED_FLAG",
         "input.data.acct_used_flag"),
        ("boolean acct_used_flag", with_data(acct_used_flag=True), "INVALID_ACCT_USED_FLAG",
         "input.data.acct_used_flag"),
        ("input without data", with_env(input={"setlinfo": {}}), "MISSING_FIELD", "input.data"),
        ("input not an object", with_env(input=[1, 2]), "INVALID_INPUT", "input"),
        # `input` JSON-encoded as a string (a Java HIS): read under the same rules as the body.
        ("input a string nested too deep", with_env(input="[" * 100_000), "INVALID_INPUT", "input"),
        ("input a string with NaN", with_env(input='{"data": {"medfee_sumamt": NaN}}'), "INVALID_INPUT", "input"),
        ("not JSON", b'{"infno": "2207", "msgid": ', "INVALID_JSON", ""),
        ("NaN amount", with_data(medfee_sumamt="@@NAN@@").replace(b'"@@NAN@@"', b"NaN"), "INVALID_JSON", ""),
        ("not UTF-8", body_of(good).replace("测试".encode(), "测试".encode("gbk")), "INVALID_JSON", ""),
        ("a JSON array", b"[]", "INVALID_ENVELOPE", ""),
        ("bad id number", with_data(psn_no="130102201601010028"), "INVALID_ID_NUMBER", "psn_no"),
    ]


def test_malformed_messages_answer_minus_one_and_write_nothing(env: Env):
    helper, child = family(env)
    for case, body, code, fragment in _bad_cases(child):
        before = snapshot(env.r)
        a = post_raw(env.url, body)
        assert a.infcode == -1, (case, a.text)
        assert a.err_msg.startswith(f"{code}: {reasons.REASON_ZH[code]}"), (case, a.err_msg)
        assert fragment in a.err_msg, (case, a.err_msg)
        assert len(a.err_msg) <= 200
        assert re.fullmatch(r"[0-9]{30}", a.json["inf_refmsgid"]), case
        assert snapshot(env.r) == before, case
    assert balance(env.hebei, helper) == 30_000


def test_a_refusal_a_his_meets_says_that_nothing_was_done(env: Env):
    """The front desk reads err_msg to decide what to do: every refusal says that nothing was done
    (本次未…) and then what to do, also those that only name what is wrong: a place of insurance
    that is not the person's, a msgid reused for other content, a credential the product does not
    look people up by, a body too large; and the "not now" answers a resend with the same msgid
    clears."""
    _, child = family(env)
    first = envelope("2207", data_2207(child, "1.00"))
    env.post(first).ok()
    before = snapshot(env.r)
    reused = {**first, "input": {"data": {**first["input"]["data"], "medfee_sumamt": "2.00"}}}
    answers = {
        "INSURED_PLACE_MISMATCH": env.post(envelope("2207", data_2207(child, "1.00"), insuplc="130200")),
        "IDEMPOTENCY_KEY_REUSED": env.post(reused),
        "UNSUPPORTED_CERT_TYPE": env.post(envelope("1101", {**data_1101(child), "mdtrt_cert_type": "03",
                                                            "mdtrt_cert_no": "SSC123", "certno": ""})),
        "REQUEST_TOO_LARGE": post_raw(env.url, b" " * (1024 * 1024 + 1)),
        "SETTLEMENT_NOT_FOUND": env.post(envelope("2208", {"setl_id": new_msgid(), "mdtrt_id": "", "psn_no": child})),
    }
    for code, answer in answers.items():
        err = answer.refused(code)
        assert "本次未" in err, err
    assert snapshot(env.r) == before
    for code in ("PATIENT_BUSY", "CONTENDED"):  # a "not now": nothing done, resend the same msgid
        text = reasons.REASON_ZH[code]
        assert "本次未" in text and "相同msgid" in text, text


@pytest.mark.parametrize("infno", ["9001", "1101", "2207"])
@pytest.mark.parametrize(("field", "value"), [("mdtrtarea_admvs", "999999"), ("mdtrtarea_admvs", "000000"),
                                              ("insuplc_admdvs", "999999"), ("insuplc_admdvs", "000000")])
def test_an_admdvs_of_no_province_is_refused_at_the_edge(env: Env, infno: str, field: str, value: str):
    """An admdvs code is a GB/T 2260 division whose first two digits name a province: 999999 or 000000
    (a placeholder) is an unknown code, refused UNKNOWN_REGION naming the field as the router refuses
    it, also in a 9001 the gateway answers itself, and nothing is written (no sign-in, no settlement)."""
    _, child = family(env)
    data = {"9001": None, "1101": data_1101(child), "2207": data_2207(child, "1.00")}[infno]
    message = envelope(infno, data, input_={"signIn": {"opter_no": "0001", "mac": "", "ip": ""}}
                       if infno == "9001" else None)
    message[field] = value
    before = snapshot(env.r)
    err = env.post(message).refused("UNKNOWN_REGION")
    assert field in err, err
    assert snapshot(env.r) == before


@pytest.mark.parametrize(("infno", "change", "code", "where"), [
    ("1101", {"inf_time": "2026-11-22T10:00:00.1234567+08:00" + "0" * 8}, "INVALID_FIELD", "inf_time: 长度超过40位"),
    ("1101", {"opter": ["0001"]}, "INVALID_FIELD", "opter: 应为字符串"),
    ("1101", {"infno": ""}, "INVALID_FIELD", "infno: 长度至少1位"),
    ("1101", {"input": {"data": [1]}}, "INVALID_INPUT", "input.data: 应为JSON对象"),
    ("1101", {"input": {"data": {"mdtrt_cert_no": "1" * 51}}}, "INVALID_FIELD",
     "input.data.mdtrt_cert_no: 长度超过50位"),
    ("3201", {"fixmedins_setl_cnt": "十"}, "INVALID_FIELD", "input.data.fixmedins_setl_cnt: 应为整数"),
    ("3201", {"fixmedins_setl_cnt": -1}, "INVALID_FIELD", "input.data.fixmedins_setl_cnt: 不能小于0"),
    ("3201", {"fixmedins_setl_cnt": 10_000_001}, "INVALID_FIELD",
     "input.data.fixmedins_setl_cnt: 不能大于10000000"),
])
def test_a_length_or_type_refusal_says_why_in_chinese(env: Env, infno: str, change: dict[str, Any], code: str,
                                                      where: str):
    """err_msg is read at the front desk: a field too long, of the wrong type or out of range is named
    as sent and the reason given in Chinese, not as pydantic's type name (`too_long`, `int_parsing`)."""
    _, child = family(env)
    if infno == "1101":
        message = envelope("1101", data_1101(child))
        message.update({k: v for k, v in change.items() if k != "input"})
        if "input" in change:
            data = change["input"]["data"]
            message["input"] = {"data": {**data_1101(child), **data} if isinstance(data, dict) else data}
    else:
        message = envelope("3201", {**_statement_3201("2026-11-22", "2026-11-22"), **change})
    before = snapshot(env.r)
    err = env.post(message).refused(code)
    assert err.endswith(f"({where})"), err
    assert snapshot(env.r) == before


@pytest.mark.parametrize(("field", "value", "code"), [
    ("insutype", "3100000", "INVALID_INSUTYPE"),
    ("insutype", "31\x070", "INVALID_INSUTYPE"),
    ("med_type", "1111111", "INVALID_MED_TYPE"),
    ("med_type", "1\x0b1", "INVALID_MED_TYPE"),
])
def test_a_dictionary_code_that_is_no_code_is_refused_as_the_router_refuses_it(env: Env, field: str, value: str,
                                                                               code: str):
    """insutype and med_type are dictionary codes of at most 6 printable characters: one longer or with a
    control character is refused with the code the router gives over gRPC (INVALID_INSUTYPE /
    INVALID_MED_TYPE, as documented), naming the field, before anything is written; the same message
    with the code corrected, under the same msgid, settles."""
    _, child = family(env)
    msgid = new_msgid()
    before = snapshot(env.r)
    err = env.post(envelope("2207", data_2207(child, "1.00", **{field: value}), msgid=msgid)).refused(code)
    assert f"input.data.{field}" in err, err
    assert snapshot(env.r) == before
    env.post(envelope("2207", data_2207(child, "1.00"), msgid=msgid)).ok()


@pytest.mark.parametrize(("field", "value", "code"), [
    ("insutype", "31１", "INVALID_INSUTYPE"),
    ("insutype", "３１０", "INVALID_INSUTYPE"),
    ("med_type", "１１", "INVALID_MED_TYPE"),
])
def test_a_dictionary_code_in_full_width_digits_is_refused(env: Env, field: str, value: str, code: str):
    """A dictionary code is ASCII digits: one an input method wrote in full-width digits is no code, refused
    with the router's reason naming the field, and nothing is written; corrected, the msgid settles."""
    _, child = family(env)
    msgid = new_msgid()
    before = snapshot(env.r)
    err = env.post(envelope("2207", data_2207(child, "1.00", **{field: value}), msgid=msgid)).refused(code)
    assert f"input.data.{field}" in err, err
    assert snapshot(env.r) == before
    env.post(envelope("2207", data_2207(child, "1.00"), msgid=msgid)).ok()


@pytest.mark.parametrize("infno", ["3201", "3202"])
@pytest.mark.parametrize(("field", "value", "code"), [
    ("insutype", "3100000", "INVALID_INSUTYPE"),
    ("insutype", "31\x070", "INVALID_INSUTYPE"),
    ("clr_type", "1111111", "INVALID_CLR_TYPE"),
    ("clr_type", "1\x001", "INVALID_CLR_TYPE"),
    ("clr_type", "1\u200b1", "INVALID_CLR_TYPE"),
])
def test_a_statement_code_that_is_no_code_is_refused_naming_the_field(env: Env, infno: str, field: str,
                                                                      value: str, code: str):
    """A 3201 / 3202 statement's insutype and clr_type are dictionary codes as in a 2207: one longer than
    6 characters or with a control or invisible character is refused by the gateway with the router's
    code, naming the field (input.data.clr_type), before anything is written; corrected, the same
    msgid reconciles."""
    msgid = new_msgid()
    data = _statement_3201("2026-11-22", "2026-11-22")
    extra: dict[str, Any] = {"detail": [{"setl_id": "H13010100001202611221030999999", "medfee_sumamt": "0.00",
                                         "refd_setl_flag": "0"}]} if infno == "3202" else {}
    before = snapshot(env.r)
    err = env.post(envelope(infno, msgid=msgid, input_={"data": {**data, field: value}, **extra})).refused(code)
    assert f"input.data.{field}" in err, err
    assert snapshot(env.r) == before
    env.post(envelope(infno, msgid=msgid, input_={"data": data, **extra})).ok()


def test_a_detail_file_row_refusal_says_why_in_chinese(env: Env):
    """A 3202's detail file with a row that breaks a length or type rule is refused naming the line and
    the column, and why in Chinese, as an inline row would be (not pydantic's English sentence)."""
    before = snapshot(env.r)
    for line, why in ((b"S" * 65 + b"\t\t\t1.00\n", "第1行 setl_id: 长度超过64位"),
                      (b"S1\t\t\t1.00\nS2\t\t" + b"1" * 31 + b"\t1.00\n", "第2行 psn_no: 长度超过30位")):
        message = envelope("3202", input_={"data": _statement_3201("2026-11-22", "2026-11-22"), "fsUploadIn": {
            "in": base64.b64encode(line).decode(), "filename": "detail.txt"}})
        err = env.post(message).refused("INVALID_DETAIL_FILE")
        assert err.endswith(f"({why})"), err
    assert snapshot(env.r) == before


def test_3202_rows_out_of_range_are_refused_before_they_are_summed(env: Env):
    """A 3202 row's figure is a settlement's (at most one operation's limit) or a refund record's (the
    same, negative); a thousand rows of the largest yuan figure the message format can carry would add up
    past int64 in the header's sums: refused AMOUNT_TOO_LARGE, as a negative figure outside a refund
    record is INVALID_AMOUNT, and nothing is written."""
    before = snapshot(env.r)
    big = [{"setl_id": f"H13010100001202611221030{i:06d}", "medfee_sumamt": "99999999999999.99",
            "refd_setl_flag": "0"} for i in range(1000)]
    negative = [{"setl_id": "H13010100001202611221030000001", "medfee_sumamt": "1.00", "acct_pay": "-1.00",
                 "refd_setl_flag": "0"}]
    for rows, code, why in ((big, "AMOUNT_TOO_LARGE", "medfee_sumamt超过上限:每笔最多10000000000元"),
                            (negative, "INVALID_AMOUNT", "acct_pay不能为负数")):
        message = envelope("3202", input_={"data": _statement_3201("2026-11-22", "2026-11-22"), "detail": rows})
        err = env.post(message).refused(code)
        assert f"(input.detail.0: {why}" in err, err
    assert snapshot(env.r) == before


def test_http_surface(env: Env):
    with urllib.request.urlopen(f"http://{env.topo.address('gateway')}/healthz", timeout=5) as resp:
        assert json.loads(resp.read()) == {"status": "SERVING", "redis": "SERVING", "router": "SERVING"}
    assert env.topo.services["gateway"].healthy()
    assert topology.protocol_of("gateway") == "http" and topology.protocol_of("router") == "grpc"
    assert topology._wait_healthy(env.topo.address("gateway"), 5.0, "http")  # what `make up` / `make status` use
    assert not topology._wait_healthy(env.topo.address("gateway"), 0.5, "grpc")
    # Another path is not this service's: 404. On the call path every answer is the envelope (HTTP 200),
    # a GET included (tests/test_gateway_hospital.py covers the rest of the edge).
    req = urllib.request.Request(f"http://{env.topo.address('gateway')}/fsi/api/other", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=5)
    assert err.value.code == 404
    with urllib.request.urlopen(f"http://{env.topo.address('gateway')}{GATEWAY_PATH}", timeout=5) as resp:
        assert resp.status == 200 and Answer(resp.read()).infcode == -1


def test_a_compressed_body_is_read_and_one_that_does_not_decompress_is_refused_in_the_envelope(env: Env):
    """A HIS whose HTTP library compresses its requests (Content-Encoding gzip / deflate) is read as if
    it had sent the JSON itself; a body labelled gzip that is not is answered in the envelope (HTTP 200,
    infcode -1), like every other message the gateway cannot read, and writes nothing."""
    helper, child = family(env)
    message = envelope("1101", data_1101(child))
    first = post_raw(env.url, gzip.compress(body_of(message)), {"Content-Encoding": "gzip"})
    assert first.ok()["baseinfo"]["psn_no"] == child
    assert post_raw(env.url, zlib.compress(body_of(message)), {"Content-Encoding": "deflate"}).raw == first.raw
    before = snapshot(env.r)
    err = post_raw(env.url, b"not gzip at all", {"Content-Encoding": "gzip"}).refused("INVALID_CONTENT_ENCODING")
    assert err.endswith("(Content-Encoding gzip)"), err
    # Cut short, it decompresses to the start of a message: no JSON.
    post_raw(env.url, gzip.compress(body_of(message))[:40], {"Content-Encoding": "gzip"}).refused("INVALID_JSON")
    assert snapshot(env.r) == before


@pytest.mark.parametrize("coding", ["br", "zstd", "BR", "gzip, br"])
def test_a_body_in_a_coding_not_served_is_refused_in_the_envelope(env: Env, coding: str):
    """A HIS whose HTTP library compresses with brotli or zstd gets the envelope it parses (HTTP 200,
    infcode -1, INVALID_CONTENT_ENCODING naming the coding), not an HTTP 400 in plain text that names
    a Python module to install; nothing is written."""
    before = snapshot(env.r)
    body = body_of(envelope("1101", data_1101(NOBODY)))
    answer = post_raw(env.url, gzip.compress(body) if coding.startswith("gzip") else body,
                      {"Content-Encoding": coding})
    err = answer.refused("INVALID_CONTENT_ENCODING")
    assert err.endswith(f"(Content-Encoding {coding})"), err
    assert "install" not in answer.text
    assert snapshot(env.r) == before


def test_content_codings_are_read_as_http_lists_them(env: Env):
    """Content-Encoding is a list of codings in the order they were applied (`gzip, identity`), and
    `x-gzip` is gzip (RFC 9110 §8.4.1.3); a label that is no coding at all (`UTF-8`: what Apache
    HttpClient's `entity.setContentEncoding("UTF-8")`, meant as the charset, sends) leaves the body as sent."""
    helper, child = family(env)
    message = envelope("1101", data_1101(child))
    first = post_raw(env.url, body_of(message), {"Content-Encoding": "UTF-8"})
    assert first.ok()["baseinfo"]["psn_no"] == child
    zipped = gzip.compress(body_of(message))
    for coding, body in (("gzip, identity", zipped), ("x-gzip", zipped),
                         ("deflate, gzip", gzip.compress(zlib.compress(body_of(message)))),
                         ("identity", body_of(message))):
        assert post_raw(env.url, body, {"Content-Encoding": coding}).raw == first.raw, coding
    # The 1 MiB limit counts the message decompressed, however many codings it came in.
    bomb = gzip.compress(b" " * (2 << 20) + body_of(message))
    for coding, body in (("gzip", bomb), ("deflate, gzip", gzip.compress(zlib.compress(b" " * (2 << 20))))):
        post_raw(env.url, body, {"Content-Encoding": coding}).refused("REQUEST_TOO_LARGE")


def test_gateway_logs_name_transactions_and_mask_id_numbers(env: Env):
    helper, child = family(env)
    settlement = envelope("2207", data_2207(child, "1.00"))
    setl_id = env.post(settlement).ok()["setlinfo"]["setl_id"]
    env.post(envelope("1101", data_1101(child, "张小雨"))).ok()
    logs = "\n".join(env.topo.services["gateway"].log_lines)
    # One line per message: the 2207's names the patient (masked) and the settlement.
    (line,) = [x for x in map(json.loads, env.topo.services["gateway"].log_lines)
               if x.get("msgid") == settlement["msgid"]]
    assert (line["msg"], line["infno"], line["infcode"]) == ("answered", "2207", 0)
    assert (line["id_number"], line["setl_id"]) == (child[:6] + "********" + child[14:], setl_id)
    assert child not in logs and helper not in logs
    assert not unmasked_id_numbers(logs), "an unmasked id number in the logs"
    assert "张小雨" not in logs


# --- 9001 sign-in and request signatures (a second, strict gateway on the same router) -------------------------------

SECRET = "gateway-test-secret"


@pytest.fixture(scope="module")
def strict(env: Env):
    started = time.time()
    svc: ServiceProcess = start_service("gateway-strict", "medaid.gateway", [
        "--port", "0", "--redis-url", env.topo.redis.url, "--clock", DEMO_CLOCK,
        "--router", env.topo.address("router"), "--require-sign-in", "true",
        "--sign-key", SECRET, "--sign-alg", "hmac-sm3"])
    svc.protocol = "http"
    try:
        yield svc, started
    finally:
        assert svc.stop() == 0


def signed(message: dict[str, Any], started: float, *, key: str = SECRET,
           skew: int = 0) -> tuple[bytes, dict[str, str]]:
    body = body_of(message)
    ts = str(int(DEMO_START.timestamp() + (time.time() - started)) + skew)
    nonce = f"n{next(_msg)}"
    return body, {signing.TIMESTAMP: ts, signing.NONCE: nonce,
                  signing.SIGNATURE: signing.signature(key.encode(), "hmac-sm3", ts, nonce, body)}


def test_9001_sign_in_and_signed_requests_on_a_strict_gateway(env: Env, strict: tuple[ServiceProcess, float]):
    svc, started = strict
    url = f"http://{svc.address}{GATEWAY_PATH}"
    _, child = family(env)
    sign_in = envelope("9001", input_={"signIn": {"opter_no": "0001", "mac": "00-16-EA-AE-3C-40",
                                                    "ip": "10.1.2.3"}})
    before = snapshot(env.r)
    # Unsigned, badly signed, or signed too long ago: refused before anything else, nothing written.
    post_raw(url, body_of(sign_in)).refused("SIGNATURE_INVALID")
    body, headers = signed(sign_in, started, key="another-key")
    post_raw(url, body, headers).refused("SIGNATURE_INVALID")
    body, headers = signed(sign_in, started, skew=-3600)
    post_raw(url, body, headers).refused("SIGNATURE_INVALID")
    body, headers = signed(sign_in, started)
    post_raw(url, body + b" ", headers).refused("SIGNATURE_INVALID")  # the body is what is signed
    # Signed, but no sign_no: 1101 needs a 9001 first.
    body, headers = signed(envelope("1101", data_1101(child)), started)
    post_raw(url, body, headers).refused("SIGN_NO_INVALID")
    assert snapshot(env.r) == before

    body, headers = signed(sign_in, started)
    a = post_raw(url, body, headers)
    out = a.ok()["signinoutb"]
    sign_no = out["sign_no"]
    # 30 characters: the envelope's sign_no is 字符型(30), and HIS tables keep it so
    assert re.fullmatch(r"[0-9a-f]{30}", sign_no) and out["sign_time"].startswith("2026-11-22 ")
    assert 0 < env.r.ttl(f"gw:{{sign:{sign_no}}}") <= 86_400
    assert post_raw(url, body, headers).raw == a.raw  # a resent 9001: the same sign_no …
    assert 0 < env.r.ttl(f"gw:{{msg:{sign_in['msgid']}}}") <= 86_400  # … but never once it has expired

    body, headers = signed(envelope("1101", data_1101(child), sign_no=sign_no), started)
    assert post_raw(url, body, headers).ok()["baseinfo"]["psn_no"] == child
    # Another institution cannot use this sign_no.
    body, headers = signed(envelope("1101", data_1101(child), fixmedins=PHARMACY, sign_no=sign_no), started)
    post_raw(url, body, headers).refused("SIGN_NO_INVALID")
    # The development gateway of the topology checks neither.
    assert env.post(envelope("1101", data_1101(child))).ok()["baseinfo"]["psn_no"] == child

    # 9002 签退: another institution's or an unknown sign_no is refused and nothing is written.
    def sign_out(no: str, *, fixmedins: str = HOSPITAL, msgid: str | None = None) -> tuple[bytes, dict[str, str]]:
        return signed(envelope("9002", fixmedins=fixmedins, msgid=msgid, sign_no=no,
                               input_={"signOut": {"sign_no": no, "opter_no": "0001"}}), started)

    before = snapshot(env.r)
    post_raw(url, *sign_out(sign_no, fixmedins=PHARMACY)).refused("SIGN_NO_INVALID")
    post_raw(url, *sign_out("f" * 32)).refused("SIGN_NO_INVALID")
    body, headers = signed(envelope("9002", sign_no=sign_no, input_={"signOut": {"opter_no": "0001"}}), started)
    post_raw(url, body, headers).refused("MISSING_FIELD")
    assert snapshot(env.r) == before
    # Signed out: the time is answered, a resend gets the same answer, and so does a new 9002 of it.
    out_msgid = new_msgid(HOSPITAL)
    first = post_raw(url, *sign_out(sign_no, msgid=out_msgid))
    sign_time = first.ok()["signoutoutb"]["sign_time"]
    assert sign_time.startswith("2026-11-22 ") and sign_time >= out["sign_time"]
    assert post_raw(url, *sign_out(sign_no, msgid=out_msgid)).raw == first.raw
    assert post_raw(url, *sign_out(sign_no)).ok()["signoutoutb"]["sign_time"] == sign_time
    # … and the sign_no no longer stands for the hospital.
    body, headers = signed(envelope("1101", data_1101(child), sign_no=sign_no), started)
    assert "已签退" in post_raw(url, body, headers).refused("SIGN_NO_INVALID")


def test_a_timestamp_that_is_no_plain_number_is_a_bad_signature(env: Env, strict: tuple[ServiceProcess, float]):
    """X-Medaid-Timestamp is ASCII digits: a superscript or full-width digit, or a number longer than any
    time, is SIGNATURE_INVALID like any other bad timestamp, never an INTERNAL_ERROR (which tells the
    cashier the outcome is unknown); nothing is written."""
    svc, started = strict
    url = f"http://{svc.address}{GATEWAY_PATH}"
    sign_in = envelope("9001", input_={"signIn": {"opter_no": "0001"}})
    body, good = signed(sign_in, started)
    before = snapshot(env.r)
    # Header values travel as bytes: '²' and '１' written as their UTF-8 bytes.
    for ts in ("²".encode().decode("latin-1"), "１".encode().decode("latin-1") * 10, "9" * 5000,
               good[signing.TIMESTAMP] + "0" * 20, " " + good[signing.TIMESTAMP]):
        headers = {**good, signing.TIMESTAMP: ts}
        headers[signing.SIGNATURE] = signing.signature(SECRET.encode(), "hmac-sm3", ts, good[signing.NONCE], body)
        post_raw(url, body, headers).refused("SIGNATURE_INVALID")
    assert snapshot(env.r) == before
    assert post_raw(url, body, good).ok()["signinoutb"]["sign_no"]


# --- pieces, without processes --------------------------------------------------------------------------------------


def test_amount_parsing_is_exact_and_strict():
    """A message's amount (amount_to_fen): text or a number, one rule for its value. Text in scientific
    notation is what a Java HIS writes with BigDecimal.stripTrailingZeros().toString() ("1E+2" for
    ¥100): the value it writes, under the same rules as "100.00"."""
    good = {"128.50": 12_850, "128.5": 12_850, "0.01": 1, "0": 0, "00012.30": 1_230, " 7.00 ": 700,
            "99999999999999.99": 9_999_999_999_999_999, "128.5000": 12_850, "7.000000": 700,
            "1e2": 10_000, "1E+2": 10_000, "1.5E+3": 150_000, "1.2345E+3": 123_450, "1E2": 10_000,
            "1E-2": 1, "1.20E+1": 1_200, "0E+3": 0}
    for text, fen in good.items():
        assert amounts.amount_to_fen(text) == fen, text
    for text in ("1e2", "1E+2", "1.5E+3", "1.2345E+3", "1E-2", "1.2345E+1", "1E-3", "1E+14"):  # as JSON numbers
        number = wire.loads(f'{{"v": {text}}}'.encode())["v"]
        if text in good:
            assert amounts.amount_to_fen(number) == good[text], text
            continue
        with pytest.raises(PydanticCustomError):
            amounts.amount_to_fen(number)
    for value, fen in ((Decimal("128.50"), 12_850), (Decimal("1E+2"), 10_000), (128, 12_800), (0, 0),
                       (Decimal("128.5000"), 12_850), (Decimal("12.50000000000000000000000000000000"), 1_250)):
        assert amounts.amount_to_fen(value) == fen, value
        assert amounts.yuan_to_fen(value) == fen, value
    for bad in ("1.234", "1.2340", "1.0001", Decimal("1.0001"), Decimal("12345678901234.5600000000000001"),
                Decimal("1E-30"), "1.", ".5", "-0.01", "NaN", "", "１２", "1,000.00", "100000000000000",
                Decimal("1.234"), Decimal("-1"), Decimal("NaN"), Decimal("Infinity"), -1, True, 1.5, None, [1],
                "1.2345E+1", "1E-3", "-1E+2", "1E+14", "1.E+2", "E+2", "1E", "1E+", "1E+2.5", "１E+2", "1,000E+2",
                "1E+99999999999999999999", "+1E+2", "Infinity", "1_000"):
        for parse in (amounts.amount_to_fen, amounts.yuan_to_fen):
            with pytest.raises(PydanticCustomError) as err:
                parse(bad)
            assert err.value.type == "INVALID_AMOUNT", bad
    # What a person types (the CLI, the console): the same rule, but not in scientific notation.
    for typed in ("1e2", "1E+2"):
        with pytest.raises(PydanticCustomError):
            amounts.yuan_to_fen(typed)
    # The wire parser never makes a float.
    parsed = wire.loads(b'{"a": 0.1, "b": 1e-7, "c": [2.50]}')
    assert parsed == {"a": Decimal("0.1"), "b": Decimal("1e-7"), "c": [Decimal("2.50")]}
    assert wire.dumps({"x": amounts.fen_to_yuan(5), "y": amounts.fen_to_yuan(-12_850), "z": [1, "二"]}) == \
        '{"x":0.05,"y":-128.50,"z":[1,"二"]}'
    with pytest.raises(TypeError):
        wire.dumps({"f": 0.1})


@given(st.integers(min_value=0, max_value=10**16 - 1))
def test_fen_survive_the_wire_both_ways(fen: int):
    text = format(amounts.fen_to_yuan(fen), "f")
    assert re.fullmatch(r"[0-9]+\.[0-9]{2}", text)
    assert amounts.yuan_to_fen(text) == fen
    number = wire.loads(f'{{"v": {text}}}'.encode())["v"]
    assert amounts.yuan_to_fen(number) == fen


def test_2207_schema_accepts_client_variants_and_ignores_unknown_fields():
    data = data_2207("130102201601010027", Decimal("12.30"), med_type=14, mid_setl_flag="0",
                     exp_content={"oprn_flag": "0"}, pub_hosp_rfom_flag="1", card_token="x", fulamt_ownpay_amt=None)
    parsed = schemas.Input2207.model_validate({"data": data}).data
    assert (parsed.medfee_sumamt, parsed.med_type, parsed.settled_fen, parsed.fulamt_ownpay_amt) == \
        (1_230, "14", 1_230, None)
    env = schemas.Envelope.model_validate({**envelope("2207", data), "dev_no": None,
                                           "input": json.dumps({"data": {"x": 1}})})
    assert env.dev_no == "" and env.input == {"data": {"x": 1}}
    with pytest.raises(ValidationError):
        schemas.Input2207.model_validate({"data": {**data, "medfee_sumamt": 12.3}})  # a float never passes


def test_sm3_matches_the_standard_vectors_and_openssl():
    assert signing.PureSM3(b"abc").hexdigest() == \
        "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
    assert signing.PureSM3(b"abcd" * 16).hexdigest() == \
        "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732"
    try:
        hashlib.new("sm3")
    except ValueError:
        pytest.skip("this OpenSSL has no SM3; the pure-Python SM3 is what the gateway uses")
    for n in (0, 1, 55, 56, 63, 64, 65, 1000):
        data = bytes(range(256)) * 4
        assert signing.PureSM3(data[:n]).hexdigest() == hashlib.new("sm3", data[:n]).hexdigest(), n


# --- every reason code has an operator message -------------------------------------------------------------

_CODE = re.compile(r"^[A-Z][A-Z0-9_]{3,}$")
_CONSTRUCTORS = {"invalid", "refused", "not_found", "exists", "unavailable", "DomainError", "GatewayError",
                 "PydanticCustomError", "Finding", "unauthenticated", "denied", "Refusal"}


def _strings(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List)):
        return [s for e in node.elts for s in _strings(e)]
    if isinstance(node, ast.BoolOp):
        return [s for e in node.values for s in _strings(e)]
    if isinstance(node, ast.IfExp):
        return _strings(node.body) + _strings(node.orelse)
    return []


def reason_codes_in_source() -> dict[str, str]:
    """Every reason code the services can answer with: first arguments of the error constructors,
    values assigned to `*reason` names or keywords, keys of `*MESSAGES` / `*ERRORS` tables, and codes
    returned in tuples (e.g. the wallet port's `None, "WALLET_OTHER_USE_PLACE"`)."""
    found: dict[str, str] = {}

    def add(values: list[str], where: str) -> None:
        for v in values:
            if _CODE.match(v) and "_" in v:
                found.setdefault(v, where)

    for path in sorted(SERVICES.rglob("*.py")):
        if "/v1/" in path.as_posix():
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.relative_to(SERVICES)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                if name in _CONSTRUCTORS:
                    args = node.args[1:] if name == "DomainError" else node.args
                    if args:
                        add(_strings(args[0]), where)
                for kw in node.keywords:
                    if kw.arg and (kw.arg.endswith("reason") or (name == "Finding" and kw.arg == "code")):
                        add(_strings(kw.value), where)
            elif isinstance(node, ast.Assign):
                targets = [e for t in node.targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])]
                names = [getattr(t, "id", getattr(t, "attr", "")) for t in targets]
                if any(n.endswith("reason") for n in names):
                    add(_strings(node.value), where)
                if isinstance(node.value, ast.Dict) and any(("MESSAGES" in n.upper() or "ERRORS" in n.upper())
                                                            for n in names):
                    add([s for k in node.value.keys if k is not None for s in _strings(k)], where)
            elif isinstance(node, ast.Return) and isinstance(node.value, ast.Tuple):
                add(_strings(node.value), where)
    # validate.enum_name builds UNKNOWN_<FIELD> for each enum field it checks.
    for path in SERVICES.rglob("*.py"):
        for field in re.findall(r'enum_name\([^)]*"([a-z_]+)"\)', path.read_text()):
            found.setdefault(f"UNKNOWN_{field.upper()}", f"{path.name}: enum_name")
    return found


def test_every_reason_code_has_a_chinese_operator_message():
    found = reason_codes_in_source()
    # The extraction itself must see the codes named in SPEC (so this test can fail).
    for code in ("HELPER_INSUFFICIENT", "CROSS_PROVINCE", "RECIPIENT_NO_WALLET", "INVALID_MSGID", "INVALID_AMOUNT",
                 "WALLET_OTHER_USE_PLACE", "UNKNOWN_CATEGORY", "UNSUPPORTED_MED_TYPE", "SIGN_NO_INVALID"):
        assert code in found, code
    missing = {code: where for code, where in found.items() if code not in reasons.REASON_ZH}
    assert not missing, f"reason codes without an operator message in gateway/reasons.py: {missing}"
    for code, text in reasons.REASON_ZH.items():
        assert re.search(r"[\u4e00-\u9fff]", text), code
    assert reasons.operator_message("HELPER_INSUFFICIENT") == \
        "HELPER_INSUFFICIENT: 共济人个人账户余额不足以支付剩余金额,共济未支付的部分由个人现金支付,请向参保人收取"
    assert reasons.operator_message("SOMETHING_NEW", "x") == "SOMETHING_NEW: 业务处理失败(x)"


def test_beijing_helpers_in_turn_are_each_named_in_every_answer(env: Env):
    """北京: helpers pay in 备案 order, each what they can (SPEC §4); 2206, 2207, 5203, 2208 and 2601
    name every helper charged with their amount and balance after, `acct_mulaid_pay` their sum."""
    bj = {"region": "110000", "division": "110105"}
    child = enroll(env.beijing, itype=RESIDENT, birth="20160101", name="王小雨", **bj)
    helpers = [enroll(env.beijing, name=n, birth="19700101", **bj) for n in ("王一", "王二", "王三")]
    for h, fen in zip(helpers, (3_000, 10_000, 500), strict=True):
        credit(env.beijing, h, fen)
        bind(env.beijing, h, child)
    h1, h2, _ = helpers

    def named(ext: dict[str, Any]) -> list[tuple[str, Decimal, Decimal]]:
        return [(x["psn_no"], x["amount"], x["balc"]) for x in ext["mulaid_helpers"]]

    paid = [(h1, Decimal("30.00"), Decimal("0.00")), (h2, Decimal("70.00"), Decimal("30.00"))]
    pre = env.post(envelope("2206", data_2207(child, "100.00"), fixmedins=BEIJING_HOSPITAL)).ok()["setlinfo"]
    assert named(pre["medaid_ext"]) == paid and pre["acct_mulaid_pay"] == Decimal("100.00")
    bill = data_2207(child, "100.00")
    s = env.post(envelope("2207", bill, fixmedins=BEIJING_HOSPITAL)).ok()["setlinfo"]
    assert (s["acct_mulaid_pay"], s["psn_cash_pay"], s["medaid_ext"]["mulaid_psn_no"]) == \
        (Decimal("100.00"), Decimal("0.00"), h1)
    assert named(s["medaid_ext"]) == paid
    q = env.post(envelope("5203", {"psn_no": child, "setl_id": s["setl_id"], "mdtrt_id": ""},
                          fixmedins=BEIJING_HOSPITAL)).ok()["setlinfo"]
    assert named(q["medaid_ext"]) == paid
    rev = envelope("2208", {"setl_id": s["setl_id"], "mdtrt_id": bill["mdtrt_id"], "psn_no": child},
                   fixmedins=BEIJING_HOSPITAL)
    r = env.post(rev).ok()["setlinfo"]
    assert r["acct_mulaid_pay"] == Decimal("-100.00")
    assert named(r["medaid_ext"]) == [(h1, Decimal("-30.00"), Decimal("30.00")), (h2, Decimal("-70.00"),
                                                                                   Decimal("100.00"))]
    undo = env.post(envelope("2601", {"psn_no": child, "omsgid": rev["msgid"], "oinfno": "2208"},
                             fixmedins=BEIJING_HOSPITAL)).ok()["medaid_ext"]
    assert undo["outcome"] == "RESTORED" and undo["acct_mulaid_pay"] == Decimal("100.00")
    assert [(x["psn_no"], x["amount"]) for x in undo["mulaid_helpers"]] == [(h1, Decimal("30.00")),
                                                                           (h2, Decimal("70.00"))]
    assert [balance(env.beijing, h) for h in helpers] == [0, 3_000, 500]


def test_a_helper_who_paid_part_is_not_said_to_have_paid_nothing(env: Env):
    """The words for HELPER_INSUFFICIENT hold whether or not a helper paid part of the bill."""
    bj = {"region": "110000", "division": "110105"}
    child = enroll(env.beijing, itype=RESIDENT, birth="20160101", name="李小雨", **bj)
    helper = enroll(env.beijing, name="李一", birth="19700101", **bj)
    credit(env.beijing, helper, 1_000)
    bind(env.beijing, helper, child)
    a = env.post(envelope("2207", data_2207(child, "50.00"), fixmedins=BEIJING_HOSPITAL))
    s = a.ok()["setlinfo"]
    assert (s["acct_mulaid_pay"], s["psn_cash_pay"]) == (Decimal("10.00"), Decimal("40.00"))
    assert s["medaid_ext"]["mulaid_reason"] == "HELPER_INSUFFICIENT"
    assert "未使用共济支付" not in s["medaid_ext"]["mulaid_msg"] and "未使用共济支付" not in a.json["warn_msg"]


def test_a_2601_naming_a_query_msgid_is_refused_and_leaves_the_query_answerable(env: Env):
    """A 2601 whose omsgid was answered as a 1101 or a 2206 names no 2207 or 2208: refused
    ORIGINAL_MISMATCH, and the query's resend still gets its first answer (it was not voided)."""
    helper, child = family(env)
    for infno, data in (("1101", data_1101(child, "张小雨")), ("2206", data_2207(child, "10.00"))):
        first = envelope(infno, data)
        answer = env.post(first)
        answer.ok()
        before = money_keys(env.r)
        refused = env.post(envelope("2601", {"psn_no": child, "omsgid": first["msgid"], "oinfno": "2207"}))
        refused.refused("ORIGINAL_MISMATCH")
        assert money_keys(env.r) == before
        assert env.post(first).raw == answer.raw


def test_a_2601_sent_under_its_originals_msgid_says_so(env: Env):
    """A HIS that builds its 2601 from the lost 2207's envelope, changing only infno, sends it under
    the original's msgid. It is refused naming that mistake (not a msgid of the wrong shape: the
    msgid is well formed), nothing is written, and the 2207 it meant is not voided: resent, it settles."""
    helper, child = family(env)
    lost = envelope("2207", data_2207(child, "10.00"))
    before = snapshot(env.r)
    err = env.post(envelope("2601", {"psn_no": child, "omsgid": lost["msgid"], "oinfno": "2207"},
                            msgid=lost["msgid"])).refused("OMSGID_IS_THIS_MSGID")
    assert "本次未冲正" in err and "新的msgid" in err and "格式" not in err, err
    assert snapshot(env.r) == before
    assert env.post(lost).ok()["setlinfo"]["acct_mulaid_pay"] == Decimal("10.00")


@pytest.mark.parametrize(("data", "field"), [({"medfee_sumamt": "0"}, "medfee_sumamt"),
                                             ({"medfee_sumamt": "0.00"}, "medfee_sumamt"),
                                             ({"medfee_sumamt": "10.00", "psn_part_amt": "0"}, "psn_part_amt")])
def test_a_2207_of_nothing_names_the_field_it_came_in(env: Env, data: dict[str, str], field: str):
    """A bill of zero is refused INVALID_AMOUNT naming the field the client sent (psn_part_amt is an
    extension most clients never send), and writes nothing."""
    helper, child = family(env)
    bill = data_2207(child, data.pop("medfee_sumamt"), **data)
    before = money_keys(env.r)
    err = env.post(envelope("2207", bill)).refused("INVALID_AMOUNT")
    assert f"{field} 须大于0" in err and (field == "psn_part_amt" or "psn_part_amt" not in err)
    assert money_keys(env.r) == before


@pytest.mark.parametrize(("data", "field"), [({"medfee_sumamt": "99999999999999.99"}, "medfee_sumamt"),
                                             ({"medfee_sumamt": "99999999999999.99",
                                               "psn_part_amt": "99999999999999.99"}, "psn_part_amt"),
                                             ({"medfee_sumamt": "99999999999999.99",
                                               "psn_part_amt": "5.00"}, "medfee_sumamt"),
                                             *[({"medfee_sumamt": "20.00", name: "10000000000.01"}, name)
                                               for name in ("fulamt_ownpay_amt", "overlmt_selfpay",
                                                            "preselfpay_amt", "inscp_scp_amt")]])
def test_a_2207_over_the_limit_names_the_field_it_came_in(env: Env, data: dict[str, str], field: str):
    """The router refuses the settled amount as psn_part_amt; a client that sent only medfee_sumamt is
    told that field, in 2206 and 2207 alike, and nothing is written. A medfee_sumamt over the limit
    beside a small psn_part_amt is refused as itself. The field is named by its place in the message,
    as every other refusal names it, and the limit is said (¥10,000,000,000.00 in one operation)."""
    helper, child = family(env)
    for infno in ("2206", "2207"):
        extra = dict(data)
        bill = data_2207(child, extra.pop("medfee_sumamt"), **extra)
        before = money_keys(env.r)
        err = env.post(envelope(infno, bill)).refused("AMOUNT_TOO_LARGE")
        assert "金额超过单笔上限(每笔最多10000000000元);" in err and err.endswith(f"(input.data.{field})"), err
        assert field == "psn_part_amt" or "psn_part_amt" not in err, err
        assert money_keys(env.r) == before


def test_a_body_with_a_utf8_byte_order_mark_is_the_same_message(env: Env):
    """A .NET HIS that writes the body with `new StreamWriter(stream, Encoding.UTF8)` sends a UTF-8
    byte-order mark first: the message settles, and its resend without the mark is the same message."""
    helper, child = family(env, helper_balance=10_000)
    message = envelope("2207", data_2207(child, "12.34"))
    first = post_raw(env.url, b"\xef\xbb\xbf" + body_of(message))
    assert first.ok()["setlinfo"]["acct_mulaid_pay"] == Decimal("12.34")
    assert balance(env.hebei, helper) == 10_000 - 1_234
    assert env.post(message).raw == first.raw
    assert balance(env.hebei, helper) == 10_000 - 1_234


def test_a_2208_resent_after_its_stored_answer_expired_answers_the_first_reversal(env: Env):
    """The gateway keeps a message's answer for --msgid-ttl-s; a 2208 resent after that is answered
    from the registry's record of the reversal: the same reversal at the same time (setl_time is when
    it was reversed, as 5203 reports it, not when the resend came)."""
    helper, child = family(env, helper_balance=10_000)
    bill = data_2207(child, "8.00")
    s = env.post(envelope("2207", bill)).ok()["setlinfo"]
    reversal = envelope("2208", {"setl_id": s["setl_id"], "mdtrt_id": bill["mdtrt_id"], "psn_no": child})
    first = env.post(reversal).ok()["setlinfo"]
    q = env.post(envelope("5203", {"psn_no": child, "setl_id": s["setl_id"], "mdtrt_id": ""})).ok()
    assert first["setl_time"] == q["medaid_ext"]["reversed_time"]
    assert env.r.delete(f"gw:{{msg:{reversal['msgid']}}}") == 1  # as if --msgid-ttl-s had run out
    time.sleep(1.1)  # a later second
    again = env.post(reversal).ok()["setlinfo"]
    assert again == first
    assert balance(env.hebei, helper) == 10_000


def test_a_2601_answer_names_each_helper_with_what_moved(env: Env):
    """A 2601 answer's helpers add up to its acct_mulaid_pay, whichever way the money went."""
    helper, child = family(env, helper_balance=10_000)
    bill = data_2207(child, "7.00")
    settle = envelope("2207", bill)
    env.post(settle).ok()
    undo = env.post(envelope("2601", {"psn_no": child, "omsgid": settle["msgid"], "oinfno": "2207"})).ok()
    ext = undo["medaid_ext"]
    assert ext["outcome"] == "REVERSED" and ext["acct_mulaid_pay"] == Decimal("7.00")
    assert [(x["psn_no"], x["amount"], x["balc"]) for x in ext["mulaid_helpers"]] == \
        [(helper, Decimal("7.00"), Decimal("100.00"))]
    assert balance(env.hebei, helper) == 10_000


def test_a_2601_restoring_a_reversal_names_each_helpers_balance_after(env: Env):
    """A 2601 of a 2208 charges the helper again: the answer gives the helper's balance after that
    charge, as every other answer naming a helper does, never 0.00."""
    helper, child = family(env, helper_balance=10_000)
    settle = envelope("2207", data_2207(child, "7.00"))
    env.post(settle).ok()
    reversal = envelope("2208", {"setl_id": settle["msgid"], "psn_no": child})
    env.post(reversal).ok()
    undo = env.post(envelope("2601", {"psn_no": child, "omsgid": reversal["msgid"], "oinfno": "2208"})).ok()
    ext = undo["medaid_ext"]
    assert ext["outcome"] == "RESTORED" and ext["acct_mulaid_pay"] == Decimal("7.00")
    assert [(x["psn_no"], x["amount"], x["balc"]) for x in ext["mulaid_helpers"]] == \
        [(helper, Decimal("7.00"), Decimal("93.00"))]
    assert balance(env.hebei, helper) == 9_300


def test_a_2601_of_a_reversal_already_undone_says_nothing_moved(env: Env):
    """A second 2601 of the same 2208 (a new msgid: the HIS lost the first answer and started over)
    moves nothing, and its answer says so: amounts 0.00 and no helper, as ALREADY_REVERSED does."""
    helper, child = family(env, helper_balance=10_000)
    settle = envelope("2207", data_2207(child, "4.00"))
    env.post(settle).ok()
    reversal = envelope("2208", {"setl_id": settle["msgid"], "psn_no": child})
    env.post(reversal).ok()
    first = env.post(envelope("2601", {"psn_no": child, "omsgid": reversal["msgid"], "oinfno": "2208"})).ok()
    assert first["medaid_ext"]["outcome"] == "RESTORED"
    before = balance(env.hebei, helper)
    again = env.post(envelope("2601", {"psn_no": child, "omsgid": reversal["msgid"], "oinfno": "2208"}))
    ext = again.ok()["medaid_ext"]
    assert ext["outcome"] == "ALREADY_RESTORED" and again.json["warn_msg"].startswith("ALREADY_RESTORED: ")
    assert (ext["acct_pay"], ext["wallet_pay"], ext["acct_mulaid_pay"]) == (Decimal("0.00"),) * 3
    assert ext["mulaid_helpers"] == [] and ext["mulaid_psn_no"] == ""
    assert ext["setl_id"] == settle["msgid"]
    assert balance(env.hebei, helper) == before == 9_600


def test_a_resend_of_an_undone_2207_names_the_2601_that_undid_it(env: Env):
    """A second 2601 of the same 2207 (a new msgid) finds it reversed and changes nothing: the 2207's
    resend is refused ORIGINAL_CANCELLED naming the first 2601, the one that reversed it."""
    patient = enroll(env.hebei)
    credit(env.hebei, patient, 1_000)
    settle = envelope("2207", data_2207(patient, "3.00"))
    env.post(settle).ok()
    first = envelope("2601", {"psn_no": patient, "omsgid": settle["msgid"], "oinfno": "2207"})
    assert env.post(first).ok()["medaid_ext"]["outcome"] == "REVERSED"
    second = envelope("2601", {"psn_no": patient, "omsgid": settle["msgid"], "oinfno": "2207"})
    assert env.post(second).ok()["medaid_ext"]["outcome"] == "ALREADY_REVERSED"
    err_msg = env.post(settle).refused("ORIGINAL_CANCELLED")
    assert first["msgid"] in err_msg and second["msgid"] not in err_msg, err_msg
    assert balance(env.hebei, patient) == 1_000


def _post_declared(url: str, body: bytes, content_type: str) -> tuple[str, bytes]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200
        return resp.headers["Content-Type"], resp.read()


def test_a_body_declared_gbk_is_read_as_gbk_and_answered_in_it(env: Env):
    """A HIS on a Chinese Windows code page writes its JSON in GBK and says so (`charset=GBK`): the
    message is read as GBK (the name matches), answered in GB18030 with the Chinese of err_msg intact,
    and its resend in UTF-8 is the same message. A body declared GBK that is UTF-8 is still read."""
    helper, child = family(env, helper_balance=10_000)
    ask = json.dumps(envelope("1101", data_1101(child, "张小雨")), ensure_ascii=False)
    ctype, raw = _post_declared(env.url, ask.encode("gbk"), "application/json; charset=GBK")
    assert ctype.lower().replace(" ", "") == "application/json;charset=gb18030"
    person = Answer(raw.decode("gb18030").encode("utf-8")).ok()
    assert person["baseinfo"]["psn_name"] == "张小雨"
    wrong = json.dumps(envelope("1101", data_1101(child, "张小雪")), ensure_ascii=False)
    _, raw = _post_declared(env.url, wrong.encode("gb2312"), "application/json;charset=gb2312")
    Answer(raw.decode("gb18030").encode("utf-8")).refused("NAME_MISMATCH")

    message = envelope("2207", data_2207(child, "12.34"))
    _, raw = _post_declared(env.url, json.dumps(message, ensure_ascii=False).encode("gbk"),
                            "application/json;charset=GBK")
    first = Answer(raw.decode("gb18030").encode("utf-8"))
    assert first.ok()["setlinfo"]["acct_mulaid_pay"] == Decimal("12.34")
    assert env.post(message).raw == first.raw  # the same message in UTF-8: the first answer
    _, raw = _post_declared(env.url, body_of(message), "application/json;charset=GBK")  # mislabelled UTF-8
    assert Answer(raw.decode("gb18030").encode("utf-8")).raw == first.raw
    assert balance(env.hebei, helper) == 10_000 - 1_234
    # Refused before it is read (too large): the envelope in GB18030 all the same.
    ctype, raw = _post_declared(env.url, b" " * (1024 * 1024 + 1), "application/json;charset=GBK")
    assert "gb18030" in ctype.lower()
    Answer(raw.decode("gb18030").encode("utf-8")).refused("REQUEST_TOO_LARGE")


def test_a_gbk_body_that_declares_no_charset_is_read_as_gb18030_and_answered_in_it(env: Env):
    """A Delphi (Indy), VB or PowerBuilder HIS on a Chinese Windows writes its JSON in the code page
    (GBK) and declares no charset at all: a body that is not UTF-8 is read as GB18030 (the name matches,
    the settlement is made once) and answered in GB18030; a body without a charset that is UTF-8 stays
    UTF-8 both ways, and a body that declares UTF-8 and is not is still INVALID_JSON."""
    helper, child = family(env, helper_balance=10_000)
    ask = json.dumps(envelope("1101", data_1101(child, "张小雨")), ensure_ascii=False).encode("gbk")
    for content_type in ("application/json", "application/x-www-form-urlencoded", "text/plain"):
        ctype, raw = _post_declared(env.url, ask, content_type)
        assert ctype.lower().replace(" ", "") == "application/json;charset=gb18030", content_type
        assert Answer(raw.decode("gb18030").encode("utf-8")).ok()["baseinfo"]["psn_name"] == "张小雨"

    message = envelope("2207", data_2207(child, "12.34"))
    before = snapshot(env.r)
    _, raw = _post_declared(env.url, json.dumps(message, ensure_ascii=False).encode("gbk"), "application/json")
    first = Answer(raw.decode("gb18030").encode("utf-8"))
    assert first.ok()["setlinfo"]["acct_mulaid_pay"] == Decimal("12.34")
    assert env.post(message).raw == first.raw  # the same message in UTF-8: the first answer
    assert balance(env.hebei, helper) == 10_000 - 1_234
    assert snapshot(env.r) != before

    ctype, raw = _post_declared(env.url, body_of(envelope("1101", data_1101(child, "张小雨"))), "application/json")
    assert "utf-8" in ctype.lower()
    assert Answer(raw).ok()["baseinfo"]["psn_name"] == "张小雨"
    refused = post_raw(env.url, ask)  # declares charset=utf-8
    refused.refused("INVALID_JSON")


def test_1101_credential_types_sent_as_numbers_are_the_dictionary_codes(env: Env):
    """A client whose model types mdtrt_cert_type / psn_cert_type as an integer sends 2 for 02
    (居民身份证) and 1 for 01, as "1" is "01" for a flag: the same person is found."""
    helper, child = family(env)
    for cert_type, psn_cert_type, cert_no in ((2, 1, child), ("2", "1", child), (3, 1, "A01234567")):
        data = {**data_1101(child, "张小雨"), "mdtrt_cert_type": cert_type, "psn_cert_type": psn_cert_type,
                "mdtrt_cert_no": cert_no}
        out = env.post(envelope("1101", data)).ok()
        assert out["baseinfo"]["psn_no"] == child, (cert_type, psn_cert_type)


# --- 3201 / 3202: the period's dates as hospital systems write them ---------------------------------------------


def _statement_3201(begin: Any, end: Any) -> dict[str, Any]:
    return {"insutype": "310", "clr_type": "11", "setl_optins": "130100", "stmt_begndate": begin,
            "stmt_enddate": end, "medfee_sumamt": "0.00", "fund_pay_sumamt": "0.00", "acct_pay": "0.00",
            "fixmedins_setl_cnt": 0, "refd_setl_flag": "1"}


@pytest.mark.parametrize(("begin", "end"), [
    ("2026-11-22 00:00:00", "2026-11-22 00:00:00"),  # a Java HIS formatting a picked date (yyyy-MM-dd HH:mm:ss)
    ("2026-11-22 00:00:00", "2026-11-22 23:59:59"),  # .Date / .Date.AddDays(1).AddSeconds(-1) of a C# client
    ("20261122", "20261122"),  # the compact date (yyyyMMdd)
    ("2026-11-22T00:00:00", "2026-11-22T23:59:59"),  # a DateTime written by Newtonsoft / Jackson (ISO)
    # A C# model typing them DateTime (DateTimeKind.Local) through Newtonsoft: midnight in +08:00.
    ("2026-11-22T00:00:00+08:00", "2026-11-22T00:00:00+08:00"),
    ("2026-11-22T00:00:00+08:00", "2026-11-22T23:59:59+08:00"),
    ("2026-11-22T00:00:00+0800", "2026-11-22 00:00:00"),  # Java's yyyy-MM-dd'T'HH:mm:ssZ
    ("2026-11-22 00:00:00.000", "2026-11-22 00:00:00.0"),  # a java.sql.Timestamp's zeros past the second
    ("2026-11-22", "2026-11-22T23:59:59.9999999"),  # .AddDays(1).AddTicks(-1): the day's last instant
    # A java.util.Date through Jackson (UTC): Beijing's midnight, the day before in UTC.
    ("2026-11-21T16:00:00.000+00:00", "2026-11-22T15:59:59Z"),
])
def test_3201_takes_the_period_dates_in_the_shapes_hospital_systems_send(env: Env, begin: str, end: str):
    helper, child = family(env)
    env.post(envelope("2207", data_2207(child, "12.00"))).ok()
    plain = env.post(envelope("3201", _statement_3201("2026-11-22", "2026-11-22"))).ok()
    assert plain["medaid_ext"]["platform"]["fixmedins_setl_cnt"] >= 1
    assert env.post(envelope("3201", _statement_3201(begin, end))).ok() == plain


@pytest.mark.parametrize(("begin", "end"), [
    ("2026-11-22 08:00:00", "2026-11-22"),  # part of a day: the platform reconciles whole days
    ("2026-11-22", "2026-11-22 12:00:00"),
    ("2026-11-22 23:59:59", "2026-11-22"),  # the end of a day cannot begin a period
    ("2026-11-22 00:00:00.500", "2026-11-22"),
    ("2026-11-22T00:00:00Z", "2026-11-22"),  # midnight in UTC is 08:00 in Beijing: part of a day
    ("2026-11-22T00:00:00+09:00", "2026-11-22"),
    ("2026-11-22T00:00:00+99:00", "2026-11-22"),  # no such offset
    ("2026-11-22", "2026-11-22T08:00:00+08:00"),
    (1795276800000, "2026-11-22"),  # epoch milliseconds: which day depends on a time zone not given
    ("2026/11/22", "2026-11-22"),
    ("2026-02-30", "2026-02-30"),
])
def test_3201_refuses_a_period_date_that_is_not_a_whole_day(env: Env, begin: Any, end: Any):
    before = snapshot(env.r)
    err = env.post(envelope("3201", _statement_3201(begin, end))).refused("INVALID_STMT_DATE")
    assert "input.data.stmt_" in err
    assert snapshot(env.r) == before


def test_3201_says_in_chinese_why_a_period_date_is_refused(env: Env):
    """A date-time that is not midnight, or that is midnight in another zone than Beijing's (another
    hour in Beijing), is refused with a sentence saying which: the desk reads err_msg, not a format."""
    before = snapshot(env.r)
    err = env.post(envelope("3201", _statement_3201("2026-11-22T08:00:00+08:00", "2026-11-22"))).refused(
        "INVALID_STMT_DATE")
    assert err.endswith("(input.data.stmt_begndate: 时刻须为00:00:00,对账按整日)"), err
    err = env.post(envelope("3201", _statement_3201("2026-11-22", "2026-11-22T00:00:00Z"))).refused(
        "INVALID_STMT_DATE")
    assert err.endswith("(input.data.stmt_enddate: 按北京时间为08:00:00,对账按整日)"), err
    assert snapshot(env.r) == before


def test_a_refusal_of_the_whole_input_names_input_as_its_place(env: Env):
    """A refusal that is about the message's `input` as a whole (a 3202 with no detail, or with two)
    names `input` as its place, as a field's refusal names the field: not `input.`."""
    before = snapshot(env.r)
    statement = _statement_3201("2026-11-22", "2026-11-22")
    none = env.post(envelope("3202", input_={"data": statement})).refused("MISSING_FIELD")
    assert none.endswith("(input: 须提交明细:file_qury_no(9101上传的明细文件)、fsUploadIn(明细文件)或 detail)"), none
    rows = [{"setl_id": "X" * 30, "medfee_sumamt": "1.00", "acct_pay": "0.00", "psn_cash_pay": "0.00"}]
    two = env.post(envelope("3202", input_={"data": {**statement, "file_qury_no": "F" * 30}, "detail": rows}))
    assert two.refused("INVALID_DETAIL").endswith("(input: 明细只能提交一种:file_qury_no、fsUploadIn 或 detail)")
    assert snapshot(env.r) == before


def test_3201_and_3202_reconcile_one_clearing_agency_at_a_time(env: Env):
    """A 石家庄 hospital settles a 河北 patient and a 北京 patient (异地就医): it reconciles with each
    clearing agency (setl_optins: the patients' place of insurance) separately. Each agency's 3201
    and 3202 count only its own settlements, stmtinfo names the agency asked, and the 3202's result
    file lists only that agency's mismatches."""
    inst = "H13010100066"
    AREA[inst] = "130100"
    helper, child = family(env)
    bj = {"region": "110000", "division": "110105"}
    visitor = enroll(env.beijing, name="王五", birth="19800101", **bj)
    credit(env.beijing, visitor, 10_000)
    hb = env.post(envelope("2207", data_2207(child, "12.00"), fixmedins=inst)).ok()["setlinfo"]
    bjs = env.post(envelope("2207", data_2207(visitor, "40.00"), fixmedins=inst, insuplc="110000")).ok()["setlinfo"]

    def statement(optins: str, s: dict[str, Any]) -> dict[str, Any]:
        return {**_statement_3201("2026-11-22", "2026-11-22"), "insutype": "", "clr_type": "", "setl_optins": optins,
                "medfee_sumamt": str(s["medfee_sumamt"]), "acct_pay": str(s["acct_pay"]), "fixmedins_setl_cnt": 1}

    def row(s: dict[str, Any]) -> dict[str, Any]:
        return {"setl_id": s["setl_id"], "medfee_sumamt": s["medfee_sumamt"], "fund_pay_sumamt": "0.00",
                "acct_pay": s["acct_pay"], "refd_setl_flag": "0"}

    for optins, s in (("130100", hb), ("130000", hb), ("110000", bjs)):
        out = env.post(envelope("3201", statement(optins, s), fixmedins=inst)).ok()
        assert out["stmtinfo"] == {"setl_optins": optins, "stmt_rslt": "0", "stmt_rslt_dscr": "对账平"}, out
        out = env.post(envelope("3202", fixmedins=inst, input_={"data": statement(optins, s),
                                                               "detail": [row(s)]})).ok()
        assert out["stmtinfo"] == {"setl_optins": optins, "stmt_rslt": "0", "stmt_rslt_dscr": "对账平"}, out
        assert out["detail"] == [] and out["medaid_ext"]["platform_cnt"] == 1, out
    # Every agency at once (none named): the 北京 settlement the hospital left out is a mismatch.
    out = env.post(envelope("3202", fixmedins=inst, input_={"data": statement("", hb), "detail": [row(hb)]})).ok()
    assert [(d["setl_id"], d["stmt_rslt_type"]) for d in out["detail"]] == [(bjs["setl_id"], "MISSING_AT_INSTITUTION")]
    msg = envelope("9102", fixmedins=inst, input_={"fsDownloadIn": {
        "file_qury_no": out["fileinfo"]["file_qury_no"], "filename": "", "fixmedins_code": inst}})
    req = urllib.request.Request(env.url, data=body_of(msg), method="POST",
                                 headers={"Content-Type": "application/json;charset=utf-8"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert [r[2] for r in files.read_result(resp.read())] == [bjs["setl_id"]]
    # An agency code that is not a 6-digit admdvs is refused, naming the field.
    err = env.post(envelope("3201", statement("13010", hb), fixmedins=inst)).refused("INVALID_ADMDVS")
    assert "setl_optins" in err, err


def test_a_his_grouping_by_the_2207_clearing_fields_reconciles_each_group_flat(env: Env):
    """A hospital system stores clr_optins / clr_type from each 2207 (and 2208) answer and reconciles
    one 3201 / 3202 per (insutype, clr_type, setl_optins = clr_optins) group, with that group's totals:
    every one is 平. Patients of 石家庄, 唐山 (河北) and 北京 at one 石家庄 hospital, outpatient,
    emergency, inpatient, employees and a resident, one settlement reversed; 2206 and 5203 answer the
    same clearing fields as the 2207 did."""
    inst = "H13010100091"
    AREA[inst] = "130100"
    helper, child = family(env)  # a 石家庄 resident child whose helper pays
    local = enroll(env.hebei, name="赵六")
    tangshan = enroll(env.hebei, name="钱七", region="130200", division="130202")
    beijing = enroll(env.beijing, name="王五", birth="19800101", region="110000", division="110105")
    for stub, p in ((env.hebei, local), (env.hebei, tangshan), (env.beijing, beijing)):
        credit(stub, p, 50_000)
    bills = [(local, "12.00", "11", ""), (local, "300.00", "21", ""), (child, "8.50", "13", ""),
             (tangshan, "20.00", "11", ""), (tangshan, "15.00", "14", ""), (beijing, "40.00", "11", "110000"),
             (beijing, "900.00", "21", "110000")]
    records: list[dict[str, Any]] = []  # what the HIS stores: each 2207's answer, and each 2208's
    for psn, fee, med_type, insuplc in bills:
        data = data_2207(psn, fee, med_type=med_type, insutype="390" if psn == child else "310")
        pre = env.post(envelope("2206", data, fixmedins=inst, insuplc=insuplc)).ok()["setlinfo"]
        s = env.post(envelope("2207", data, fixmedins=inst, insuplc=insuplc)).ok()["setlinfo"]
        assert (pre["clr_optins"], pre["clr_way"], pre["clr_type"]) == (s["clr_optins"], s["clr_way"], s["clr_type"])
        assert s["clr_optins"] == s["medaid_ext"]["insuplc_admdvs"], s
        assert s["clr_type"] == {"11": "11", "13": "11", "14": "11", "21": "21"}[med_type], s
        q = env.post(envelope("5203", {"setl_id": s["setl_id"], "psn_no": psn, "mdtrt_id": ""}, fixmedins=inst,
                              insuplc=insuplc)).ok()["setlinfo"]
        assert (q["clr_optins"], q["clr_way"], q["clr_type"]) == (s["clr_optins"], s["clr_way"], s["clr_type"]), q
        records.append({**s, "refd_setl_flag": "0", "_mdtrt_id": data["mdtrt_id"], "_psn": psn, "_insuplc": insuplc})
    assert {r["clr_optins"] for r in records} == {"130100", "130200", "110000"}
    # 唐山's outpatient visit is refunded: the 2208 answer is a refund record of the same group.
    first = records[3]
    rev = env.post(envelope("2208", {"setl_id": first["setl_id"], "mdtrt_id": first["_mdtrt_id"],
                                     "psn_no": first["_psn"]}, fixmedins=inst)).ok()["setlinfo"]
    assert (rev["clr_optins"], rev["clr_way"], rev["clr_type"]) == \
        (first["clr_optins"], first["clr_way"], first["clr_type"]), rev
    records[3] = {**first, "refd_setl_flag": "1"}  # the HIS marks the settlement refunded
    refund = env.post(envelope("5203", {"setl_id": rev["setl_id"], "psn_no": first["_psn"], "mdtrt_id": ""},
                               fixmedins=inst)).ok()["setlinfo"]
    assert (refund["clr_optins"], refund["clr_type"]) == (first["clr_optins"], first["clr_type"]), refund
    records.append({**rev, "refd_setl_flag": "1"})

    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["insutype"], r["clr_type"], r["clr_optins"]), []).append(r)
    assert len(groups) == 6, sorted(groups)
    for (insutype, clr_type, optins), rows in sorted(groups.items()):
        def total(name: str, rows: list[dict[str, Any]] = rows) -> str:
            return str(sum((Decimal(str(r[name])) for r in rows), Decimal("0.00")))

        header = {"insutype": insutype, "clr_type": clr_type, "setl_optins": optins,
                  "stmt_begndate": "2026-11-22", "stmt_enddate": "2026-11-22",
                  "medfee_sumamt": total("medfee_sumamt"), "fund_pay_sumamt": total("fund_pay_sumamt"),
                  "acct_pay": total("acct_pay"), "cash_payamt": total("psn_cash_pay"),
                  "fixmedins_setl_cnt": len(rows), "refd_setl_flag": "1"}
        out = env.post(envelope("3201", header, fixmedins=inst)).ok()
        assert out["stmtinfo"] == {"setl_optins": optins, "stmt_rslt": "0", "stmt_rslt_dscr": "对账平"}, \
            (insutype, clr_type, optins, out)
        detail = [{"setl_id": r["setl_id"], "mdtrt_id": r["mdtrt_id"], "psn_no": r["psn_no"],
                   "medfee_sumamt": r["medfee_sumamt"], "fund_pay_sumamt": r["fund_pay_sumamt"],
                   "acct_pay": r["acct_pay"], "psn_cash_pay": r["psn_cash_pay"],
                   "refd_setl_flag": r["refd_setl_flag"]} for r in rows]
        out = env.post(envelope("3202", fixmedins=inst, input_={"data": header, "detail": detail})).ok()
        assert (out["stmtinfo"], out["detail"]) == \
            ({"setl_optins": optins, "stmt_rslt": "0", "stmt_rslt_dscr": "对账平"}, []), \
            (insutype, clr_type, optins, out)


def test_a_3202_mismatch_row_names_the_wallet_share(env: Env):
    """A mismatch row shows the platform's settlement: its shares add up to the settled part, the
    医保钱包's included (wallet_pay), as the 2207 answered them."""
    inst = "H13010100093"
    AREA[inst] = "130100"
    patient, _, _ = wallet_family(env)
    s = env.post(envelope("2207", data_2207(patient, "120.00"), fixmedins=inst)).ok()["setlinfo"]
    assert (s["acct_pay"], s["wallet_pay"], s["acct_mulaid_pay"]) == (Decimal("20.00"), Decimal("30.00"),
                                                                      Decimal("70.00"))
    header = {**_statement_3201("2026-11-22", "2026-11-22"), "medfee_sumamt": "120.00", "acct_pay": "20.01",
              "fixmedins_setl_cnt": 1}
    row = {"setl_id": s["setl_id"], "medfee_sumamt": "120.00", "fund_pay_sumamt": "0.00", "acct_pay": "20.01",
           "refd_setl_flag": "0"}
    out = env.post(envelope("3202", fixmedins=inst, input_={"data": header, "detail": [row]})).ok()
    [m] = out["detail"]
    assert (m["stmt_rslt_type"], m["fields"]) == ("AMOUNT_DIFFERS", "acct_pay"), m
    assert (m["acct_pay"], m["wallet_pay"], m["acct_mulaid_pay"], m["psn_cash_pay"]) == \
        (s["acct_pay"], s["wallet_pay"], s["acct_mulaid_pay"], s["psn_cash_pay"]), m
    assert m["acct_pay"] + m["wallet_pay"] + m["acct_mulaid_pay"] + m["psn_cash_pay"] == m["medfee_sumamt"], m


def test_a_3202_row_that_gives_the_wallet_share_is_compared_by_it(env: Env):
    """A detail row may give the 医保钱包 share as the 2207 answered it (wallet_pay), as it may give
    acct_mulaid_pay and psn_cash_pay: a row whose wallet_pay is off is AMOUNT_DIFFERS, naming it."""
    inst = "H13010100094"
    AREA[inst] = "130100"
    patient, _, _ = wallet_family(env)
    s = env.post(envelope("2207", data_2207(patient, "120.00"), fixmedins=inst)).ok()["setlinfo"]
    header = {**_statement_3201("2026-11-22", "2026-11-22"), "medfee_sumamt": "120.00", "acct_pay": "20.00",
              "fixmedins_setl_cnt": 1}
    row = {"setl_id": s["setl_id"], "medfee_sumamt": "120.00", "fund_pay_sumamt": "0.00", "acct_pay": "20.00",
           "acct_mulaid_pay": "70.00", "psn_cash_pay": "0.00", "wallet_pay": "30.00", "refd_setl_flag": "0"}
    out = env.post(envelope("3202", fixmedins=inst, input_={"data": header, "detail": [row]})).ok()
    assert (out["stmtinfo"]["stmt_rslt"], out["detail"]) == ("0", []), out
    out = env.post(envelope("3202", fixmedins=inst, input_={"data": header, "detail": [
        {**row, "wallet_pay": "29.99"}]})).ok()
    assert [(m["stmt_rslt_type"], m["fields"]) for m in out["detail"]] == [("AMOUNT_DIFFERS", "wallet_pay")], out
    env.post(envelope("3202", fixmedins=inst, input_={"data": header, "detail": [
        {**row, "wallet_pay": "-30.00"}]})).refused("INVALID_AMOUNT")


def test_3202_compares_its_header_totals_with_its_rows(env: Env):
    """A 3202's header (medfee_sumamt, fund_pay_sumamt, acct_pay, cash_payamt, fixmedins_setl_cnt) is
    the detail's own totals: a header that the rows do not add up to is 不平, naming each figure, even
    when every row agrees with the platform; a header that adds up is 平."""
    inst = "H13010100088"
    AREA[inst] = "130100"
    helper, child = family(env)
    a = env.post(envelope("2207", data_2207(child, "12.00"), fixmedins=inst)).ok()["setlinfo"]
    b = env.post(envelope("2207", data_2207(child, "3.50"), fixmedins=inst)).ok()["setlinfo"]
    rows = [{"setl_id": s["setl_id"], "mdtrt_id": s["mdtrt_id"], "psn_no": child, "medfee_sumamt": s["medfee_sumamt"],
             "fund_pay_sumamt": "0.00", "acct_pay": s["acct_pay"], "psn_cash_pay": s["psn_cash_pay"],
             "refd_setl_flag": "0"} for s in (a, b)]
    header = {**_statement_3201("2026-11-22", "2026-11-22"), "insutype": "", "clr_type": "",
              "medfee_sumamt": "15.50", "cash_payamt": "0.00", "fixmedins_setl_cnt": 2, "refd_setl_flag": "0"}

    def details(**changed: Any) -> dict[str, Any]:
        return env.post(envelope("3202", fixmedins=inst, input_={"data": {**header, **changed}, "detail": rows})).ok()

    agree = details()
    assert (agree["stmtinfo"]["stmt_rslt"], agree["stmtinfo"]["stmt_rslt_dscr"], agree["detail"]) == ("0", "对账平", [])
    for named, value in (("fixmedins_setl_cnt", 3), ("medfee_sumamt", "15.49"), ("acct_pay", "0.01"),
                         ("fund_pay_sumamt", "1.00"), ("cash_payamt", "9.99")):
        changed = {named: value}
        out = details(**changed)
        dscr = out["stmtinfo"]["stmt_rslt_dscr"]
        assert out["stmtinfo"]["stmt_rslt"] == "1" and out["detail"] == [], (changed, out)
        assert named in dscr and "明细合计" in dscr, (changed, dscr)
    wrong = details(medfee_sumamt="999.00", fixmedins_setl_cnt=7)["stmtinfo"]["stmt_rslt_dscr"]
    assert "结算笔数)不符:汇总7,明细合计2" in wrong and "医疗费总额)不符:汇总999.00,明细合计15.50" in wrong, wrong


def test_a_3202_whose_client_writes_its_unset_detail_as_null_is_reconciled(env: Env):
    """A C# or Java client model of 3202 writes every unset member as null: `detail: null` beside the
    detail file (`fsUploadIn`), or `fsUploadIn: null` beside inline rows. A null is an absent field,
    as for every other optional field of the interface, and the day is reconciled."""
    inst = "H13010100089"
    AREA[inst] = "130100"
    _, child = family(env)
    a = env.post(envelope("2207", data_2207(child, "12.00"), fixmedins=inst)).ok()["setlinfo"]
    header = {**_statement_3201("2026-11-22", "2026-11-22"), "insutype": "", "clr_type": "",
              "medfee_sumamt": "12.00", "acct_pay": a["acct_pay"], "fixmedins_setl_cnt": 1, "refd_setl_flag": "0",
              "file_qury_no": None}
    row = {"setl_id": a["setl_id"], "mdtrt_id": a["mdtrt_id"], "psn_no": child, "medfee_sumamt": "12.00",
           "fund_pay_sumamt": "0.00", "acct_pay": a["acct_pay"], "refd_setl_flag": "0"}
    line = "\t".join(str(row[c]) for c in ("setl_id", "mdtrt_id", "psn_no", "medfee_sumamt", "fund_pay_sumamt",
                                            "acct_pay", "refd_setl_flag")) + "\n"
    upload = {"in": base64.b64encode(line.encode()).decode(), "filename": "detail.txt", "fixmedins_code": inst}
    for input_ in ({"data": header, "fsUploadIn": upload, "detail": None},
                   {"data": header, "fsUploadIn": None, "detail": [row]}):
        out = env.post(envelope("3202", fixmedins=inst, input_=input_)).ok()
        assert out["stmtinfo"]["stmt_rslt"] == "0", out["stmtinfo"]["stmt_rslt_dscr"]


# --- a 居民身份证 credential names the person it is presented for ------------------------------------------------


def test_an_id_card_credential_of_another_person_is_refused_and_writes_nothing(env: Env):
    helper, child = family(env)
    other = make("130102", "19900101", "123")  # a valid id number: another person
    before = snapshot(env.r)
    for infno in ("2206", "2207"):
        for cert_type in ("02", 2, ""):
            data = data_2207(child, "10.00", mdtrt_cert_type=cert_type, mdtrt_cert_no=other)
            err = env.post(envelope(infno, data)).refused("CERT_NO_MISMATCH")
            assert "input.data" in err and other not in err, err
    err = env.post(envelope("1101", {**data_1101(child), "mdtrt_cert_no": other})).refused("CERT_NO_MISMATCH")
    assert other not in err and child not in err, err
    assert snapshot(env.r) == before
    assert balance(env.hebei, helper) == 30_000
    # The same id number (its check character in lower case too), or an 01 / 03 credential, is the person's.
    env.post(envelope("2207", data_2207(child, "10.00", mdtrt_cert_no=child.lower()))).ok()
    env.post(envelope("2207", data_2207(child, "10.00", mdtrt_cert_type="01", mdtrt_cert_no="E" + "7" * 30))).ok()
    env.post(envelope("2207", data_2207(child, "10.00", mdtrt_cert_type="03", mdtrt_cert_no=other))).ok()
    env.post(envelope("1101", {**data_1101(child), "mdtrt_cert_type": "03", "mdtrt_cert_no": other})).ok()
    assert balance(env.hebei, helper) == 27_000


def test_a_credential_number_that_is_no_credential_is_refused_and_writes_nothing(env: Env):
    """An 01 e-credential's token and an 03 social-security card's number are printable ASCII without a
    space: a number with a name typed after it, a control character, a full-width letter or a space
    in it is no credential, and nothing is settled on it (a 1101 answers nobody on it)."""
    helper, child = family(env)
    before = snapshot(env.r)
    bad = (f"{child}欧阳建国", "E7777\x017777", "E7777\u200b7777", "Ｅ77777777", "E7777 7777", "E\x7f7777")
    for cert_type in ("01", "03", 1, "3"):
        for number in bad:
            for infno in ("2206", "2207"):
                data = data_2207(child, "10.00", mdtrt_cert_type=cert_type, mdtrt_cert_no=number)
                err = env.post(envelope(infno, data)).refused("INVALID_CERT_NO")
                assert "input.data.mdtrt_cert_no" in err and child not in err, err
            err = env.post(envelope("1101", {**data_1101(child), "mdtrt_cert_type": cert_type,
                                             "mdtrt_cert_no": number})).refused("INVALID_CERT_NO")
            assert "input.data.mdtrt_cert_no" in err and child not in err, err
    too_long = data_2207(child, "10.00", mdtrt_cert_type="01", mdtrt_cert_no="E" * 500)
    assert env.post(envelope("2207", too_long)).infcode == -1
    assert snapshot(env.r) == before
    assert balance(env.hebei, helper) == 30_000
    # A real credential's number: letters, digits and the symbols a token may carry, up to 50 characters.
    for number in ("E" + "7" * 30, "440000ECQnjO8dF3dWi6xhIAfK1MlyqS", "A1234567-8_9.+/=:" + "Z" * 33):
        env.post(envelope("2207", data_2207(child, "10.00", mdtrt_cert_type="01", mdtrt_cert_no=number))).ok()
    env.post(envelope("1101", {**data_1101(child), "mdtrt_cert_type": "01",
                               "mdtrt_cert_no": "440000ECQnjO8dF3dWi6xhIAfK1MlyqS"})).ok()
    assert balance(env.hebei, helper) == 27_000


# --- 5203 answers the setlinfo the 2207 answered ---------------------------------------------------------------


def test_5203_answers_the_setlinfo_the_2207_answered_field_by_field(env: Env):
    """A HIS compares a 5203 with the 2207 answer it keeps: every field the same, the policy ranges the
    2207 sent (which the product does not compute) included."""
    helper, child = family(env)
    data = data_2207(child, "128.50", insutype="390", med_type="14", fulamt_ownpay_amt="3.10",
                     overlmt_selfpay=1.25, preselfpay_amt="2.00", inscp_scp_amt="122.15")
    settled = env.post(envelope("2207", data, insuplc="130100")).ok()["setlinfo"]
    assert (settled["fulamt_ownpay_amt"], settled["overlmt_selfpay"], settled["preselfpay_amt"],
            settled["inscp_scp_amt"]) == (Decimal("3.10"), Decimal("1.25"), Decimal("2.00"), Decimal("122.15"))
    for query in ({"setl_id": settled["setl_id"]}, {"mdtrt_id": data["mdtrt_id"]}):
        asked = env.post(envelope("5203", {"psn_no": child, "setl_id": "", "mdtrt_id": "", **query})).ok()
        assert asked["setlinfo"] == settled, {k: (v, asked["setlinfo"].get(k)) for k, v in settled.items()
                                              if asked["setlinfo"].get(k) != v}


def test_5203_of_a_settlement_indexed_before_the_policy_ranges_were_kept_answers_them_as_zero(env: Env):
    """An index entry written by an earlier router holds no policy ranges: 5203 still answers it, with
    those four at 0.00 (what it always answered) and every other field as the 2207 did."""
    helper, child = family(env)
    data = data_2207(child, "20.00", fulamt_ownpay_amt="1.00", inscp_scp_amt="19.00")
    msg = envelope("2207", data)
    settled = env.post(msg).ok()["setlinfo"]
    key, sid = f"rtr:{{inst:{HOSPITAL}}}:info", msg["msgid"]
    entry = json.loads(env.r.hget(key, sid))
    old = {k: v for k, v in entry.items() if k not in ("fulamt_ownpay_fen", "overlmt_selfpay_fen", "preselfpay_fen",
                                                        "inscp_scp_fen")}
    assert len(old) == len(entry) - 4
    env.r.hset(key, sid, json.dumps(old, ensure_ascii=False, separators=(",", ":")))
    asked = env.post(envelope("5203", {"psn_no": child, "setl_id": settled["setl_id"], "mdtrt_id": ""})).ok()
    zero = Decimal("0.00")
    assert asked["setlinfo"] == {**settled, "fulamt_ownpay_amt": zero, "overlmt_selfpay": zero,
                                 "preselfpay_amt": zero, "inscp_scp_amt": zero}


def test_5203_by_the_setl_id_of_a_2208_finds_the_refund_as_the_2208_answered_it(env: Env):
    """A HIS keeps the setl_id a 2208 answered (the refund's, 退费记录) and queries it with 5203: the refund
    is found, its figures negative as the 2208 answered them, naming the settlement it reversed; a
    2601 of a 2207 reverses under the 2601's id, found the same way. Once a 2601 undoes the 2208, the
    refund no longer stands and is not found."""
    helper, child = family(env)
    s = env.post(envelope("2207", data_2207(child, "12.00"))).ok()["setlinfo"]
    rev = env.post(envelope("2208", {"psn_no": child, "setl_id": s["setl_id"], "mdtrt_id": s["mdtrt_id"]})
                   ).ok()["setlinfo"]
    q = env.post(envelope("5203", {"psn_no": child, "setl_id": rev["setl_id"], "mdtrt_id": ""})).ok()
    got = q["setlinfo"]
    assert (got["setl_id"], got["mdtrt_id"], got["medfee_sumamt"], got["psn_part_amt"], got["acct_mulaid_pay"],
            got["acct_pay"], got["psn_cash_pay"], got["setl_time"]) == (
        rev["setl_id"], s["mdtrt_id"], rev["medfee_sumamt"], rev["psn_part_amt"], rev["acct_mulaid_pay"],
        rev["acct_pay"], rev["psn_cash_pay"], rev["setl_time"])
    assert got["medfee_sumamt"] == Decimal("-12.00") and got["medins_setl_id"] == rev["setl_id"]
    ext = q["medaid_ext"]
    assert (ext["setl_stas"], ext["init_setl_id"], ext["setl_ids"]) == ("REVERSED", s["setl_id"], [rev["setl_id"]])
    # The settlement itself is still answered as before; another person's refund is not this person's.
    assert env.post(envelope("5203", {"psn_no": child, "setl_id": s["setl_id"]})).ok()["setlinfo"]["setl_id"] \
        == s["setl_id"]
    other_helper, other = family(env)
    env.post(envelope("5203", {"psn_no": other, "setl_id": rev["setl_id"]})).refused("SETTLEMENT_NOT_FOUND")
    env.post(envelope("5203", {"psn_no": child, "setl_id": rev["setl_id"]}, fixmedins=PHARMACY)
             ).refused("SETTLEMENT_NOT_FOUND")

    # A 2601 of a 2207 reverses it under the 2601's msgid: that is the refund's setl_id.
    lost = envelope("2207", data_2207(child, "3.00"))
    env.post(lost).ok()
    undo = envelope("2601", {"psn_no": child, "omsgid": lost["msgid"], "oinfno": "2207"})
    assert env.post(undo).ok()["medaid_ext"]["outcome"] == "REVERSED"
    by_undo = env.post(envelope("5203", {"psn_no": child, "setl_id": undo["msgid"]})).ok()
    assert (by_undo["setlinfo"]["setl_id"], by_undo["setlinfo"]["psn_part_amt"], by_undo["medaid_ext"]["init_setl_id"]
            ) == (undo["msgid"], Decimal("-3.00"), lost["msgid"])

    # The 2208 undone by a 2601: the settlement stands again, its refund is gone.
    restore = envelope("2601", {"psn_no": child, "omsgid": rev["medins_setl_id"], "oinfno": "2208"})
    assert env.post(restore).ok()["medaid_ext"]["outcome"] == "RESTORED"
    env.post(envelope("5203", {"psn_no": child, "setl_id": rev["setl_id"]})).refused("SETTLEMENT_NOT_FOUND")


def test_5203_of_a_refund_answers_the_balances_the_2208_answered(env: Env):
    """balc is the balance right after the transaction (docs/gateway-reference.md): a 5203 of a refund
    answers the 2208's balc and each helper's balance after the refund, as recorded when it was
    refunded (not the settlement's balances, nor today's)."""
    patient = enroll(env.hebei, name="王芳")
    credit(env.hebei, patient, 1_000)
    helper = enroll(env.hebei, name="王强")
    credit(env.hebei, helper, 5_000)
    bind(env.hebei, helper, patient, relation=cpb.RELATION_SPOUSE)
    s = env.post(envelope("2207", data_2207(patient, "25.00"))).ok()["setlinfo"]
    assert (s["acct_pay"], s["acct_mulaid_pay"], s["balc"]) == (Decimal("10.00"), Decimal("15.00"), Decimal("0.00"))
    rev = env.post(envelope("2208", {"psn_no": patient, "setl_id": s["setl_id"], "mdtrt_id": s["mdtrt_id"]})
                   ).ok()["setlinfo"]
    assert rev["balc"] == Decimal("10.00")
    assert [(h["psn_no"], h["balc"]) for h in rev["medaid_ext"]["mulaid_helpers"]] == [(helper, Decimal("50.00"))]
    # Later money moves: the refund's balances are those right after it, not today's.
    env.post(envelope("2207", data_2207(patient, "4.00"))).ok()
    credit(env.hebei, helper, 700)
    got = env.post(envelope("5203", {"psn_no": patient, "setl_id": rev["setl_id"]})).ok()["setlinfo"]
    assert got["balc"] == rev["balc"]
    assert [(h["psn_no"], h["amount"], h["balc"]) for h in got["medaid_ext"]["mulaid_helpers"]] == \
        [(h["psn_no"], h["amount"], h["balc"]) for h in rev["medaid_ext"]["mulaid_helpers"]]
    assert got["medaid_ext"]["mulaid_psn_no"] == rev["medaid_ext"]["mulaid_psn_no"] == helper


def test_5203_of_a_refund_answers_every_figure_negated_as_the_2208_did(env: Env):
    """A 5203 of a refund answers each field the 2208 answered, the same: the policy ranges the 2207
    sent negated as the 2208 negates them (a refund record summed with its settlement is zero)."""
    helper, child = family(env)
    bill = data_2207(child, "25.00", fulamt_ownpay_amt="1.00", overlmt_selfpay="2.00", preselfpay_amt="3.00",
                     inscp_scp_amt="19.00")
    s = env.post(envelope("2207", bill)).ok()["setlinfo"]
    rev = env.post(envelope("2208", {"psn_no": child, "setl_id": s["setl_id"], "mdtrt_id": s["mdtrt_id"]})
                   ).ok()["setlinfo"]
    got = env.post(envelope("5203", {"psn_no": child, "setl_id": rev["setl_id"]})).ok()["setlinfo"]
    for name in ("setl_id", "mdtrt_id", "psn_no", "certno", "insutype", "med_type", "setl_time", "medfee_sumamt",
                 "fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt", "inscp_scp_amt", "fund_pay_sumamt",
                 "psn_part_amt", "acct_pay", "acct_mulaid_pay", "psn_cash_pay", "wallet_pay", "balc",
                 "medins_setl_id"):
        assert got[name] == rev[name], name
    assert (got["fulamt_ownpay_amt"], got["overlmt_selfpay"], got["preselfpay_amt"], got["inscp_scp_amt"]) == \
        (Decimal("-1.00"), Decimal("-2.00"), Decimal("-3.00"), Decimal("-19.00"))

def test_5203_says_whether_the_record_answered_is_a_refund(env: Env):
    """setlinfo.refd_setl_flag (退费结算标志), which client models of 5203 read: "1" for a refund record (a
    5203 by a 2208's setl_id), "0" for a settlement, reversed since or not; as the 2207 and the 2208
    said, so that a 5203 still answers field by field what they answered."""
    patient = enroll(env.hebei, name="王芳")
    credit(env.hebei, patient, 1_000)
    s = env.post(envelope("2207", data_2207(patient, "5.00"))).ok()["setlinfo"]
    assert s["refd_setl_flag"] == "0"
    by_setl = {"psn_no": patient, "setl_id": s["setl_id"]}
    assert env.post(envelope("5203", by_setl)).ok()["setlinfo"]["refd_setl_flag"] == "0"
    rev = env.post(envelope("2208", {"psn_no": patient, "setl_id": s["setl_id"], "mdtrt_id": s["mdtrt_id"]})
                   ).ok()["setlinfo"]
    assert env.post(envelope("5203", by_setl)).ok()["setlinfo"]["refd_setl_flag"] == "0"
    assert env.post(envelope("5203", {"psn_no": patient, "mdtrt_id": s["mdtrt_id"]})
                    ).ok()["setlinfo"]["refd_setl_flag"] == "0"
    refund = env.post(envelope("5203", {"psn_no": patient, "setl_id": rev["setl_id"]})).ok()["setlinfo"]
    assert (refund["setl_id"], refund["refd_setl_flag"], rev["refd_setl_flag"]) == (rev["setl_id"], "1", "1")


def test_a_visit_id_longer_than_30_is_taken_up_to_the_documented_64(env: Env):
    """docs/gateway-reference.md: mdtrt_id is at most 64 printable characters (INVALID_MDTRT_ID), as
    the router takes it; a HIS whose visit ids run past 30 characters settles and finds them again."""
    helper, child = family(env)
    long_id = "MZ" + "0123456789" * 6 + "AB"  # 64
    s = env.post(envelope("2207", data_2207(child, "3.00", mdtrt_id=long_id), insuplc="130100")).ok()["setlinfo"]
    assert s["mdtrt_id"] == long_id
    q = env.post(envelope("5203", {"psn_no": child, "mdtrt_id": long_id}, insuplc="130100")).ok()
    assert q["setlinfo"]["setl_id"] == s["setl_id"]
    before = snapshot(env.r)
    env.post(envelope("2207", data_2207(child, "3.00", mdtrt_id=long_id + "C"), insuplc="130100")).refused(
        "INVALID_MDTRT_ID")
    env.post(envelope("2207", data_2207(child, "3.00", mdtrt_id="MZ\x0001"), insuplc="130100")).refused(
        "INVALID_MDTRT_ID")
    env.post(envelope("5203", {"psn_no": child, "mdtrt_id": long_id + "C"}, insuplc="130100")).refused(
        "INVALID_MDTRT_ID")
    assert snapshot(env.r) == before
