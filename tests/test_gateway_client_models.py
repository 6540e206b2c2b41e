"""What open-source hospital clients read from the gateway's answers (SPEC §6, NATIONAL-INTERFACE.md).

Each client family sends its messages in its own shape and reads the answer into its own model:

* a Java HIS (the hsa-his style): `input` as a JSON-encoded string, unset policy amounts as "",
  fields of its own beside the interface's; it reads every fund field of a 2206 / 2207 `setlinfo`
  with `map.get(name).toString()` (a missing one is a NullPointerException) and then parses it as
  a BigDecimal, and writes `REFD_SETL_FLAG` in capitals in a 3201;
* a C# client (the openhis `YiBaoInterface` models, Newtonsoft.Json): every unset string as null,
  amounts as `decimal`; it deserialises `setlinfo` (2207, 2208) and `setldetail` into its classes.

Over real HTTP against a real topology (redis-server, registries, wallet, router, gateway).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from medaid.common.v1 import common_pb2 as cpb
from support import bind, credit, enroll
from test_gateway import Answer, Env, body_of, envelope, gateway_env, snapshot

_seq = itertools.count(1)

# The fund and policy fields of setlinfo a Java HIS reads with `.toString()` after a 2206 / 2207.
JAVA_SETLINFO_AMOUNTS = ("medfee_sumamt", "overlmt_selfpay", "preselfpay_amt", "inscp_scp_amt", "act_pay_dedc",
                         "hifp_pay", "pool_prop_selfpay", "cvlserv_pay", "hifes_pay", "hifmi_pay", "hifob_pay",
                         "maf_pay", "oth_pay", "psn_cash_pay", "hosp_part_amt", "acct_mulaid_pay", "fund_pay_sumamt",
                         "acct_pay")
# setlinfo of the C# models' 2207 and 2208 classes: the national fields the product fills (the
# person's own particulars, psn_name … cvlserv_flag, are 1101's and are not repeated: a missing
# field is null to these models, an empty one would not parse into their DateTime).
CSHARP_SETLINFO_2207 = ("mdtrt_id", "setl_id", "psn_no", "psn_cert_type", "certno", "insutype", "setl_time",
                        "med_type", "medfee_sumamt", "fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt",
                        "inscp_scp_amt", "act_pay_dedc", "hifp_pay", "pool_prop_selfpay", "cvlserv_pay", "hifes_pay",
                        "hifmi_pay", "hifob_pay", "maf_pay", "oth_pay", "fund_pay_sumamt", "psn_part_amt", "acct_pay",
                        "psn_cash_pay", "hosp_part_amt", "balc", "acct_mulaid_pay", "medins_setl_id", "clr_optins",
                        "clr_way", "clr_type")
CSHARP_SETLINFO_2208 = ("mdtrt_id", "setl_id", "clr_optins", "setl_time", "medfee_sumamt", "fulamt_ownpay_amt",
                        "overlmt_selfpay", "preselfpay_amt", "inscp_scp_amt", "act_pay_dedc", "hifp_pay",
                        "pool_prop_selfpay", "cvlserv_pay", "hifes_pay", "hifmi_pay", "hifob_pay", "maf_pay", "oth_pay",
                        "fund_pay_sumamt", "psn_part_amt", "acct_pay", "balc", "acct_mulaid_pay", "hosp_part_amt",
                        "medins_setl_id")
NOT_AMOUNTS = {"mdtrt_id", "setl_id", "psn_no", "psn_cert_type", "certno", "insutype", "setl_time", "med_type",
               "medins_setl_id", "clr_optins", "clr_way", "clr_type"}


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with gateway_env() as e:
        yield e


def patient(e: Env) -> tuple[str, str]:
    """A patient with ¥50.00 of their own and a bound helper with ¥1000.00."""
    p = enroll(e.hebei, name="王建国", birth="19600101")
    credit(e.hebei, p, 5_000)
    h = enroll(e.hebei, name="王小明", birth="19880101")
    credit(e.hebei, h, 100_000)
    bind(e.hebei, h, p, relation=cpb.RELATION_PARENT)
    return p, h


def assert_envelope(a: Answer) -> None:
    """The answer's envelope as every client reads it: infcode a number, the ids and times in the
    platform's formats, the other strings present and never null."""
    assert a.json["infcode"] == 0 and type(a.json["infcode"]) is int, a.text
    assert re.fullmatch(r"[0-9]{6}[0-9]{14}[0-9]{10}", a.json["inf_refmsgid"])
    assert re.fullmatch(r"[0-9]{17}", a.json["refmsg_time"]) and re.fullmatch(r"[0-9]{17}", a.json["respond_time"])
    for name in ("err_msg", "warn_msg", "cainfo", "signtype"):
        assert isinstance(a.json[name], str), name


def assert_fields(setlinfo: dict[str, Any], names: tuple[str, ...]) -> None:
    missing = [n for n in names if setlinfo.get(n) is None]
    assert not missing, f"fields a client model reads are missing: {missing}"
    for n in names:
        kind = str if n in NOT_AMOUNTS else Decimal
        assert isinstance(setlinfo[n], kind), (n, setlinfo[n])


# --- a Java HIS -------------------------------------------------------------------------------------------------


def java_message(infno: str, data: dict[str, Any], insuplc: str = "130100") -> dict[str, Any]:
    """The envelope as a Java HIS fills it, with `input` a JSON-encoded string."""
    m = envelope(infno, insuplc=insuplc, msgid=f"H130101000012026112210{next(_seq):08d}")
    m["input"] = body_of({"data": data}).decode("utf-8")  # BigDecimal amounts as numbers
    return m


def java_2207(psn_no: str, medfee: str, mdtrt_id: str) -> dict[str, Any]:
    return {"psn_no": psn_no, "mdtrt_cert_type": "02", "mdtrt_cert_no": psn_no, "card_sn": "", "psn_cert_type": "01",
            "certno": psn_no, "psn_type": "1101", "psn_name": "王建国", "med_type": "11",
            "medfee_sumamt": Decimal(medfee), "psn_setlway": "01", "mdtrt_id": mdtrt_id, "chrg_bchno": "0",
            "insutype": "310", "acct_used_flag": "1", "invono": "", "fulamt_ownpay_amt": "", "overlmt_selfpay": "",
            "preselfpay_amt": "", "inscp_scp_amt": "", "pub_hosp_rfom_flag": "", "mdtrt_mode": "0",
            "mid_setl_flag": "0"}


def test_a_java_his_reads_every_fund_field_of_2206_2207_and_5203_as_a_number(env: Env):
    p, _ = patient(env)
    data = java_2207(p, "128.50", "MZJ01")
    for infno in ("2206", "2207"):
        a = env.post(java_message(infno, data))
        assert_envelope(a)
        assert_fields(a.ok()["setlinfo"], JAVA_SETLINFO_AMOUNTS)
        assert a.output["setldetail"] == []
        s = a.output["setlinfo"]
        assert (s["acct_pay"], s["acct_mulaid_pay"], s["psn_cash_pay"]) == (Decimal("50.00"), Decimal("78.50"), 0)
        for fund in ("act_pay_dedc", "cvlserv_pay", "hifes_pay", "hifmi_pay", "hifob_pay", "maf_pay", "oth_pay",
                     "pool_prop_selfpay"):
            assert s[fund] == 0, fund  # no pooled fund in this product
    setl_id = a.output["setlinfo"]["setl_id"]
    q = env.post(java_message("5203", {"psn_no": p, "setl_id": setl_id, "mdtrt_id": "MZJ01"}))
    assert_fields(q.ok()["setlinfo"], JAVA_SETLINFO_AMOUNTS)
    assert q.output["setlinfo"] == a.output["setlinfo"]  # 5203 answers what the 2207 answered


# --- a C# client --------------------------------------------------------------------------------------------------


def csharp_message(infno: str, input_: dict[str, Any], insuplc: str | None = "130100") -> dict[str, Any]:
    """The envelope as Newtonsoft.Json writes the C# model: every string it did not set is null."""
    m = envelope(infno, insuplc=insuplc or "", msgid=f"H130101000012026112211{next(_seq):08d}", input_=input_)
    m.update(dev_no=None, dev_safe_info=None, cainfo="", signtype=None, sign_no=None)
    if insuplc is None:
        m["insuplc_admdvs"] = None
    return m


def test_a_csharp_client_deserialises_the_2207_and_2208_records(env: Env):
    p, _ = patient(env)
    data = {"psn_no": p, "mdtrt_cert_type": "02", "mdtrt_cert_no": p, "med_type": "11",
            "medfee_sumamt": Decimal("30.00"), "psn_setlway": "01", "mdtrt_id": "MZC01", "chrg_bchno": "CB01",
            "insutype": "310", "acct_used_flag": "1",
            "invono": None, "fulamt_ownpay_amt": Decimal("1.20"), "overlmt_selfpay": Decimal("0"),
            "preselfpay_amt": Decimal("0.23"), "inscp_scp_amt": Decimal("28.57"), "expContent": None}
    a = env.post(csharp_message("2207", {"data": data}))
    assert_envelope(a)
    s = a.ok()["setlinfo"]
    assert_fields(s, CSHARP_SETLINFO_2207)
    assert isinstance(a.output["setldetail"], list)

    r = env.post(csharp_message("2208", {"data": {"setl_id": s["setl_id"], "mdtrt_id": "MZC01", "psn_no": p,
                                                  "expContent": None}}))
    assert_envelope(r)
    rev = r.ok()["setlinfo"]
    assert_fields(rev, CSHARP_SETLINFO_2208)
    assert isinstance(r.output["setldetail"], list)  # the national 2208 carries setldetail as 2207 does
    # The reversal record: the 2207's figures negated, the policy ranges as the 2207 sent them.
    assert (rev["medfee_sumamt"], rev["acct_pay"], rev["acct_mulaid_pay"]) == (Decimal("-30.00"), Decimal("-30.00"), 0)
    assert (rev["fulamt_ownpay_amt"], rev["preselfpay_amt"], rev["inscp_scp_amt"]) == (
        Decimal("-1.20"), Decimal("-0.23"), Decimal("-28.57"))
    assert rev["setl_id"] != s["setl_id"] and rev["balc"] == Decimal("50.00")


# What Newtonsoft.Json (and System.Text.Json) write for a C# `DateTime` set from DateTime.Now: ISO 8601
# with seven decimals of the second and the local offset, 33 characters.
CSHARP_NOW = "2026-11-22T10:00:00.1234567+08:00"


def test_a_csharp_client_typing_inf_time_and_begntime_as_datetime_is_understood(env: Env):
    """C# SDKs whose envelope model types `inf_time` (and 1101's `begntime`) as `DateTime` (NY_YBJ_SDK's
    `BaseReq`, a WinForms demo's `Request`) send it as Newtonsoft writes a DateTime.Now. The field is not
    used: the messages are answered as the same ones with a text time, and a refusal still writes nothing."""
    p, _ = patient(env)
    m = csharp_message("1101", {"data": {"mdtrt_cert_type": "02", "mdtrt_cert_no": p, "card_sn": None,
                                         "begntime": CSHARP_NOW, "psn_cert_type": "01", "certno": p,
                                         "psn_name": "王建国"}})
    m["inf_time"] = CSHARP_NOW
    assert env.post(m).ok()["baseinfo"]["psn_no"] == p
    data = {"psn_no": p, "mdtrt_cert_type": "02", "mdtrt_cert_no": p, "med_type": "11",
            "medfee_sumamt": Decimal("12.00"), "psn_setlway": "01", "mdtrt_id": "MZT01", "chrg_bchno": "CB01",
            "insutype": "310", "acct_used_flag": "1"}
    m = csharp_message("2207", {"data": data})
    m["inf_time"] = CSHARP_NOW
    s = env.post(m).ok()["setlinfo"]
    assert (s["acct_pay"], s["psn_cash_pay"]) == (Decimal("12.00"), 0)
    # Longer than any date-time a client writes is still refused, and the refusal writes nothing.
    m = csharp_message("2207", {"data": {**data, "mdtrt_id": "MZT02"}})
    m["inf_time"] = CSHARP_NOW + "X" * 40
    before = snapshot(env.r)
    env.post(m).refused("INVALID_FIELD")
    assert snapshot(env.r) == before


def test_a_java_his_3201_that_excludes_refunds_in_capitals_is_reconciled_without_them(env: Env):
    """A Java HIS writes the flag `REFD_SETL_FLAG` ('0': refunds excluded) in capitals; the platform's
    Java JSON binding matches field names without regard to case, and so does the gateway: a day of
    two settlements, one of them reversed, agrees with the one that stands, refunds left out."""
    p, _ = patient(env)
    inst = "H13010100077"

    def send(infno: str, data: dict[str, Any]) -> Answer:
        m = java_message(infno, data)
        m["fixmedins_code"] = inst
        m["msgid"] = inst + m["msgid"][12:]
        return env.post(m)

    a = send("2207", java_2207(p, "12.00", "MZR01")).ok()["setlinfo"]
    b = send("2207", java_2207(p, "3.00", "MZR02")).ok()["setlinfo"]
    send("2208", {"setl_id": b["setl_id"], "mdtrt_id": "MZR02", "psn_no": p}).ok()
    day = {"insutype": "310", "clr_type": "11", "REFD_SETL_FLAG": "0", "setl_optins": "130100",
           "stmt_begndate": "2026-11-22", "stmt_enddate": "2026-11-22", "medfee_sumamt": "12.00",
           "fund_pay_sumamt": Decimal("0.00"), "acct_pay": a["acct_pay"], "fixmedins_setl_cnt": 1}
    rec = send("3201", day).ok()["stmtinfo"]
    assert rec["stmt_rslt"] == "0", rec["stmt_rslt_dscr"]
    # The same flag in lower case as the interface writes it: the same answer; both at once, the
    # interface's own spelling decides.
    assert send("3201", {**day, "refd_setl_flag": "0"}).ok()["stmtinfo"]["stmt_rslt"] == "0"
    both = send("3201", {**day, "refd_setl_flag": "1", "fixmedins_setl_cnt": 3, "medfee_sumamt": "12.00"}).ok()
    assert both["stmtinfo"]["stmt_rslt"] == "0", both["stmtinfo"]["stmt_rslt_dscr"]


# --- a Java HIS that names its institution medins_code -------------------------------------------------------------


def medins_message(infno: str, data: dict[str, Any], inst: str) -> dict[str, Any]:
    """The envelope as hsa-his (`InsureCommonUtil.getInsurCommonParam`, `InsureInterfaceParamDTO`) sends
    it: the institution as `medins_code`, its 医保中心 as `insur_code`, no fixmedins_code /
    fixmedins_name / infver / recer_sys_code, and `input` a JSON-encoded string."""
    return {"infno": infno, "insuplc_admdvs": "130100", "medins_code": inst, "insur_code": "130100",
            "mdtrtarea_admvs": "130100", "msgid": f"{inst}20261122120000{next(_seq) % 10_000:04d}",
            "opter": "0001", "opter_name": "收费员", "input": body_of({"data": data}).decode("utf-8")}


def test_a_his_naming_its_institution_medins_code_settles_as_that_institution(env: Env):
    p, _ = patient(env)
    inst, other = "H13010100081", "H13010100082"
    first = medins_message("2207", java_2207(p, "12.00", "MZM01"), inst)
    a = env.post(first)
    s = a.ok()["setlinfo"]
    assert (s["acct_pay"], s["psn_cash_pay"]) == (Decimal("12.00"), 0)
    # The settlement is that institution's: found by its own 5203 (in either spelling), not another's.
    query = {"psn_no": p, "setl_id": s["setl_id"], "mdtrt_id": "MZM01"}
    assert env.post(medins_message("5203", query, inst)).ok()["setlinfo"] == s
    m = envelope("5203", query, fixmedins="H13010100001", insuplc="130100")
    m["fixmedins_code"] = inst
    assert env.post(m).ok()["setlinfo"] == s
    env.post(medins_message("5203", query, other)).refused("SETTLEMENT_NOT_FOUND")
    # Resent, the same answer; a malformed medins_code is refused as fixmedins_code is, and writes nothing.
    assert env.post(first).raw == a.raw
    bad = medins_message("2207", java_2207(p, "1.00", "MZM02"), inst)
    bad["medins_code"] = inst.lower()
    before = snapshot(env.r)
    env.post(bad).refused("INVALID_INSTITUTION_CODE")
    assert snapshot(env.r) == before
    # Both spellings: the interface's own (fixmedins_code) decides, medins_code may be another code.
    both = medins_message("2207", java_2207(p, "2.00", "MZM03"), inst)
    both["fixmedins_code"], both["medins_code"] = inst, "12345678901234567890"
    assert env.post(both).ok()["setlinfo"]["psn_cash_pay"] == 0


# --- a HIS whose message comes from an Oracle row: every name in capitals ----------------------------------------


def test_a_his_writing_names_in_capitals_settles_what_it_asked_in_every_transaction(env: Env):
    """A HIS that builds `data` from a database row (Oracle answers column names in capitals) writes
    `PSN_NO`, `MEDFEE_SUMAMT`, `PSN_PART_AMT` …; the platform's Java JSON binding matches names without
    regard to case, and so does the gateway for every transaction and the envelope itself: a part the
    institution asks to settle (`PSN_PART_AMT`) is that part, not the whole bill."""
    p, h = patient(env)

    def caps(d: dict[str, Any]) -> dict[str, Any]:
        return {k.upper(): v for k, v in d.items()}

    def message(infno: str, data: dict[str, Any]) -> dict[str, Any]:
        return caps({**envelope(infno, insuplc="130100", msgid=f"H130101000012026112211{next(_seq):08d}"),
                     "input": {"DATA": caps(data)}})

    info = env.post(message("1101", {"mdtrt_cert_type": "02", "mdtrt_cert_no": p, "psn_cert_type": "01",
                                     "certno": p, "psn_name": "王建国"})).ok()
    assert info["baseinfo"]["psn_no"] == p
    bill = {**java_2207(p, "100.00", "MZC01"), "psn_part_amt": "30.00"}
    pre = env.post(message("2206", bill)).ok()["setlinfo"]
    assert (pre["medfee_sumamt"], pre["psn_part_amt"]) == (Decimal("100.00"), Decimal("30.00"))
    first = message("2207", bill)
    a = env.post(first)
    s = a.ok()["setlinfo"]
    assert (s["psn_part_amt"], s["acct_pay"], s["acct_mulaid_pay"], s["mdtrt_id"]) == (
        Decimal("30.00"), Decimal("30.00"), 0, "MZC01")
    assert env.post(first).raw == a.raw  # resent: the first answer
    # The same message with the names as the interface writes them is the same message.
    lower = {k.lower(): v for k, v in first.items()}
    lower["input"] = {"data": {k.lower(): v for k, v in first["INPUT"]["DATA"].items()}}
    assert env.post(lower).raw == a.raw
    q = env.post(message("5203", {"psn_no": p, "setl_id": s["setl_id"], "mdtrt_id": "MZC01"})).ok()
    assert q["setlinfo"] == s
    r = env.post(message("2208", {"setl_id": s["setl_id"], "mdtrt_id": "MZC01", "psn_no": p})).ok()["setlinfo"]
    assert r["acct_pay"] == Decimal("-30.00") and r["balc"] == Decimal("50.00")


def test_the_institution_is_read_in_any_case_in_either_spelling(env: Env):
    """Names are read in any case, medins_code too: `MEDINS_CODE` alone is the institution, and beside
    `FIXMEDINS_CODE` (the interface's own name in capitals) it is another of the hospital's codes, which
    does not decide which institution settles."""
    p, _ = patient(env)
    inst, other = "H13010100083", "H13010100084"
    # The interface's own name in capitals, and an hsa-his style medins_code naming another code.
    both = medins_message("2207", java_2207(p, "3.00", "MZK01"), other)
    both["FIXMEDINS_CODE"] = inst
    both["msgid"] = f"{inst}20261122120000{next(_seq) % 10_000:04d}"
    s = env.post(both).ok()["setlinfo"]
    query = {"psn_no": p, "setl_id": s["setl_id"], "mdtrt_id": "MZK01"}
    assert env.post(medins_message("5203", query, inst)).ok()["setlinfo"] == s
    env.post(medins_message("5203", query, other)).refused("SETTLEMENT_NOT_FOUND")
    # medins_code written in capitals, without fixmedins_code: that is the institution.
    caps = medins_message("2207", java_2207(p, "4.00", "MZK02"), inst)
    caps["MEDINS_CODE"] = caps.pop("medins_code")
    s = env.post(caps).ok()["setlinfo"]
    query = {"psn_no": p, "setl_id": s["setl_id"], "mdtrt_id": "MZK02"}
    assert env.post(medins_message("5203", query, inst)).ok()["setlinfo"] == s
