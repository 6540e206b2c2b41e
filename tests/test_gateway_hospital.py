"""A hospital's day against the gateway, in the message shapes of existing clients (SPEC §6).

Over real HTTP against a real topology (redis-server, registries, wallet, router, gateway, each
its own process). The messages come from tests/fixtures/his/: complete messages in the styles of
a Python SDK, a C# client and a Java HIS, for 9001 / 1101 / 2206 / 2207 / 2208 / 2601 / 5203 /
3201 / 3202; each style signs in, looks a patient up, pre-settles, settles, reverses, undoes (2601),
queries and reconciles a day, and the books must balance to the fen. Then 2601 under concurrency
and retries, with the money conserved; the edge (deep nesting, oversize bodies); the OpenAPI
document, Swagger UI, and Schemathesis against the live gateway.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import threading
import time
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, settings
from medaid.common import msgid as msgids
from medaid.common.v1 import common_pb2 as cpb
from medaid.gateway import files, openapi, reasons
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.topology import GATEWAY_PATH
from medaid.wallet.v1 import wallet_pb2 as wpb
from support import FACE, balance, bind, credit, enroll, logical_value, new_id_x, rid
from test_gateway import Answer, Env, body_of, gateway_env, post_raw, snapshot
from test_tracing import patient_with_wallet

FIXTURES = Path(__file__).parent / "fixtures" / "his"
STYLES = ("python_sdk", "csharp_client", "java_his")
DAY = "2026-11-22"
_seq = itertools.count(1)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with gateway_env() as e:
        yield e


# --- messages from the fixtures --------------------------------------------------------------------------


def _yuan(fen: int) -> Decimal:
    return Decimal(fen).scaleb(-2)


def fill(template: Any, values: dict[str, Any]) -> Any:
    """The fixture with its "$name" placeholders replaced; "$x:str" / "$x:num" write the fen value x
    as a decimal-yuan string / JSON number (the two ways clients write amounts)."""
    if isinstance(template, dict):
        return {k: fill(v, values) for k, v in template.items()}
    if isinstance(template, list):
        return [fill(v, values) for v in template]
    if isinstance(template, str) and template.startswith("$"):
        name, _, kind = template[1:].partition(":")
        value = values[name]
        if kind == "str":
            return f"{_yuan(value):.2f}"
        if kind == "num":
            return _yuan(value)
        return value
    return template


class Hospital:
    """One institution whose system builds every message in one client's style."""

    def __init__(self, e: Env, style: str, fixmedins: str) -> None:
        self.e = e
        self.style = style
        self.fixmedins = fixmedins
        self.templates = json.loads((FIXTURES / f"{style}.json").read_text(encoding="utf-8"))["messages"]
        self.sign_no = ""

    def new_msgid(self) -> str:
        n = next(_seq)
        if self.style == "python_sdk":
            return uuid.uuid4().hex.upper()[:30]  # what the SDK sends
        if self.style == "csharp_client":
            return f"MZ{n:028d}"  # a vendor's own counter: not the institution's code
        return f"{self.fixmedins}20261122103000{n % 10_000:04d}"  # the documented shape

    def message(self, infno: str, msgid: str | None = None, **values: Any) -> dict[str, Any]:
        base = {"msgid": msgid or self.new_msgid(), "fixmedins": self.fixmedins, "sign_no": self.sign_no,
                "insuplc": "130100", "recer": "MBS_LOCAL", "inf_time": "2026-11-22 10:30:00",
                "med_type": 11 if self.style == "csharp_client" else "11", "mdtrt_id": "", "setl_id": "",
                "chrg_bchno": "", "psn_name": ""}
        base["chrg_bchno"] = f"CB{base['msgid'][-10:]}"  # the same message, when resent, is the same
        if "psn_no" in values and self.style == "java_his":
            values["psn_no"] = values["psn_no"].lower()  # typed as printed on the card
        return fill(self.templates[infno], {**base, **values})

    def send(self, infno: str, msgid: str | None = None, **values: Any) -> Answer:
        msg = self.message(infno, msgid, **values)
        return self.e.post(msg)

    def download(self, file_qury_no: str, filename: str = "") -> bytes:
        """9102: the file itself (application/octet-stream); a refusal is the envelope (AssertionError)."""
        msg = self.message("9102", file_qury_no=file_qury_no, filename=filename)
        req = urllib.request.Request(self.e.url, data=body_of(msg), method="POST",
                                     headers={"Content-Type": "application/json;charset=utf-8"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200
            body = resp.read()
            assert resp.headers["Content-Type"] == "application/octet-stream", body[:300]
            assert "filename*=UTF-8''" in resp.headers["Content-Disposition"]
            return body


def detail_file(style: str, rows: list[dict[str, Any]], patient: str) -> bytes:
    """The 3202 detail file as each style writes it: a zip of a TAB-separated txt (files.py); the Java
    HIS writes GBK with CRLF and a header line, the others UTF-8."""
    cols = files.DETAIL_COLUMNS
    lines = [[str(r[c]) if c != "psn_no" else patient for c in cols] for r in rows]
    if style == "java_his":
        text = "\r\n".join(["\t".join(cols)] + ["\t".join(x) for x in lines]) + "\r\n"
        raw = text.encode("gbk")
    else:
        raw = ("\n".join("\t".join(x) for x in lines) + "\n").encode("utf-8")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("detail.txt", raw)
    return buf.getvalue()


def encode_file(style: str, data: bytes) -> Any:
    """`fsUploadIn.in` as each style serialises a byte array: base64 text (the SDK, Newtonsoft), or the
    signed bytes as Java's Arrays.toString writes them."""
    if style == "java_his":
        return str([b - 256 if b > 127 else b for b in data])
    return base64.b64encode(data).decode()


def refused(a: Answer, code: str) -> None:
    assert a.infcode == -1, a.text
    assert a.err_msg.startswith(f"{code}: {reasons.REASON_ZH[code]}"), a.err_msg


def shares(s: dict[str, Any]) -> tuple[Decimal, ...]:
    return s["acct_pay"], s["wallet_pay"], s["acct_mulaid_pay"], s["psn_cash_pay"]


def patient_with_helper(e: Env, *, own: int, helper_balance: int, x: bool = False) -> tuple[str, str]:
    patient = enroll(e.hebei, name="王建国", birth="19600101") if not x else _enroll_x(e)
    credit(e.hebei, patient, own)
    helper = enroll(e.hebei, name="王小明", birth="19880101")
    if helper_balance:
        credit(e.hebei, helper, helper_balance)
    bind(e.hebei, helper, patient, relation=cpb.RELATION_PARENT)
    return patient, helper


def _enroll_x(e: Env) -> str:
    pid = new_id_x(birth="19600101")
    e.hebei.EnrollPerson(rpb.EnrollPersonRequest(request_id=rid("enroll"), id_number=pid, name="王建国",
                                                 insurance_type=cpb.INSURANCE_TYPE_EMPLOYEE, pooling_region="130100"))
    return pid


# --- a day of each client style -------------------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
def test_a_hospital_day_in_each_client_style(env: Env, style: str):
    h = Hospital(env, style, f"H130101000{STYLES.index(style) + 21}")
    patient, helper = patient_with_helper(env, own=5_000, helper_balance=100_000, x=style == "java_his")

    # 9001 签到, 1101 人员信息获取
    h.sign_no = h.send("9001").ok()["signinoutb"]["sign_no"]
    info = h.send("1101", psn_no=patient, psn_name="王建国").ok()
    assert info["baseinfo"]["psn_no"] == patient and info["insuinfo"][0]["balc"] == Decimal("50.00")

    # 2206 预结算 moves nothing; 2207 结算: own ¥50.00, the helper ¥78.50.
    pre = h.send("2206", psn_no=patient, medfee=12_850, mdtrt_id="MZA").ok()["setlinfo"]
    assert shares(pre) == (Decimal("50.00"), Decimal("0.00"), Decimal("78.50"), Decimal("0.00"))
    assert balance(env.hebei, patient) == 5_000
    mid_a = h.new_msgid()
    a = h.send("2207", mid_a, psn_no=patient, medfee=12_850, mdtrt_id="MZA").ok()["setlinfo"]
    assert shares(a) == (Decimal("50.00"), Decimal("0.00"), Decimal("78.50"), Decimal("0.00"))
    assert a["setl_id"] == mid_a  # 字符型(30), whatever shape of msgid the client sends
    assert h.send("2207", mid_a, psn_no=patient, medfee=12_850, mdtrt_id="MZA").ok()["setlinfo"] == a  # resent

    # 2207 then 2208 结算撤销: every fen back.
    b = h.send("2207", psn_no=patient, medfee=2_000, mdtrt_id="MZB").ok()["setlinfo"]
    assert shares(b) == (Decimal("0.00"), Decimal("0.00"), Decimal("20.00"), Decimal("0.00"))
    h.send("2208", psn_no=patient, setl_id=b["setl_id"], mdtrt_id="MZB").ok()
    assert balance(env.hebei, helper) == 100_000 - 7_850

    # 2601 of a 2207 whose answer was lost: reversed; its msgid resent later is refused.
    mid_c = h.new_msgid()
    h.send("2207", mid_c, psn_no=patient, medfee=1_000, mdtrt_id="MZC")  # the answer never reached the HIS
    undo = h.send("2601", psn_no=patient, omsgid=mid_c, oinfno="2207").ok()["medaid_ext"]
    assert undo["outcome"] == "REVERSED" and undo["acct_mulaid_pay"] == Decimal("10.00")
    refused(h.send("2207", mid_c, psn_no=patient, medfee=1_000, mdtrt_id="MZC"), "ORIGINAL_CANCELLED")

    # 2601 of a 2207 that never arrived: answered, remembered, and the late original refused.
    mid_d = h.new_msgid()
    late = h.send("2601", psn_no=patient, omsgid=mid_d, oinfno="2207")
    assert late.ok()["medaid_ext"]["outcome"] == "VOIDED" and late.json["warn_msg"].startswith("VOIDED: ")
    refused(h.send("2207", mid_d, psn_no=patient, medfee=1_000, mdtrt_id="MZD"), "ORIGINAL_CANCELLED")

    # 2601 of a 2208 whose answer was lost: the settlement stands again, paid by the same accounts.
    e_ = h.send("2207", psn_no=patient, medfee=3_000, mdtrt_id="MZE").ok()["setlinfo"]
    mid_rev = h.new_msgid()
    h.send("2208", mid_rev, psn_no=patient, setl_id=e_["setl_id"], mdtrt_id="MZE").ok()
    helper_before = balance(env.hebei, helper)
    restored = h.send("2601", psn_no=patient, omsgid=mid_rev, oinfno="2208").ok()["medaid_ext"]
    assert restored["outcome"] == "RESTORED" and restored["acct_mulaid_pay"] == Decimal("30.00")
    assert balance(env.hebei, helper) == helper_before - 3_000
    refused(h.send("2208", mid_rev, psn_no=patient, setl_id=e_["setl_id"], mdtrt_id="MZE"), "ORIGINAL_CANCELLED")

    # 5203 by setl_id and by the visit.
    q = h.send("5203", psn_no=patient, setl_id=a["setl_id"])
    got = q.ok()
    assert shares(got["setlinfo"]) == shares(a) and got["medaid_ext"]["setl_stas"] == "SETTLED"
    assert got["setlinfo"]["mdtrt_id"] == "MZA" and got["setlinfo"]["medfee_sumamt"] == Decimal("128.50")
    by_visit = h.send("5203", psn_no=patient, mdtrt_id="MZB").ok()
    assert by_visit["setlinfo"]["setl_id"] == b["setl_id"] and by_visit["medaid_ext"]["setl_stas"] == "REVERSED"

    # 3201 对总账 with the HIS's own figures: settlements A, B, C, E and the reversals of B and C.
    standing = [(a, 12_850), (e_, 3_000)]
    totals = {"sum_medfee": 12_850 + 3_000, "sum_fund": 0, "sum_acct": 5_000, "count": 2, "refd": "0", "day": DAY}
    rec = h.send("3201", **totals).ok()
    assert rec["stmtinfo"]["stmt_rslt"] == "0", rec["stmtinfo"]["stmt_rslt_dscr"]
    with_refunds = {**totals, "refd": "1", "count": 6}  # 4 settlements, 2 reversals netting to zero
    rec = h.send("3201", **with_refunds).ok()
    assert rec["stmtinfo"]["stmt_rslt"] == "0", rec["stmtinfo"]["stmt_rslt_dscr"]
    wrong = h.send("3201", **{**totals, "sum_acct": 4_999}).ok()
    assert wrong["stmtinfo"]["stmt_rslt"] == "1" and "acct_pay" in wrong["stmtinfo"]["stmt_rslt_dscr"]
    assert wrong["medaid_ext"]["platform"]["acct_pay"] == Decimal("50.00")

    # 3202 对明细账: the HIS's list agrees; then one missing, one amount wrong, one it thinks stands.
    def row(s: dict[str, Any], medfee: int, refd: str = "0") -> dict[str, Any]:
        return {"setl_id": s["setl_id"], "mdtrt_id": s["mdtrt_id"], "psn_no": patient, "medfee_sumamt": _yuan(medfee),
                "fund_pay_sumamt": Decimal("0.00"), "acct_pay": s["acct_pay"], "refd_setl_flag": refd}
    rows = [row(s, m) for s, m in standing]
    ok = h.send("3202", **totals, detail=rows).ok()
    assert ok["stmtinfo"]["stmt_rslt"] == "0" and ok["detail"] == [], ok
    bad = [row(a, 12_851), row(b, 2_000)]  # A's amount off by a fen, B listed as standing, E missing
    out = h.send("3202", **{**totals, "refd": "1"}, detail=bad).ok()
    kinds = {(d["setl_id"], d["stmt_rslt_type"]) for d in out["detail"]}
    sid_c = mid_c  # reversed by the 2601: refunds
    assert kinds == {(a["setl_id"], "AMOUNT_DIFFERS"), (b["setl_id"], "REVERSED"),  # are included ("1"), so
                     (e_["setl_id"], "MISSING_AT_INSTITUTION"), (sid_c, "MISSING_AT_INSTITUTION")}, out["detail"]
    assert next(d for d in out["detail"] if d["stmt_rslt_type"] == "AMOUNT_DIFFERS")["fields"] == "medfee_sumamt"
    assert out["stmtinfo"]["stmt_rslt"] == "1"

    # The same detail as the national flow carries it: uploaded as a file (9101), reconciled by its
    # file_qury_no (3202), and the result file fetched (9102) lists the same mismatches.
    up = h.send("9101", file=encode_file(h.style, detail_file(h.style, bad, patient)), filename="detail.txt.zip").ok()
    mid_3202 = h.new_msgid()
    by_file = h.send("3202_file", mid_3202, **{**totals, "refd": "1"}, file_qury_no=up["file_qury_no"]).ok()
    assert by_file["detail"] == out["detail"] and by_file["stmtinfo"] == out["stmtinfo"], by_file
    info = by_file["fileinfo"]
    assert info["dld_endtime"] > "2026-11-22" and info["filename"].endswith(".txt.zip")
    result = files.read_result(h.download(info["file_qury_no"], info["filename"]))
    assert {(r[2], r[6].split(":")[0]) for r in result} == kinds, result
    line = next(r for r in result if r[2] == a["setl_id"])  # the platform's figures, in yuan
    assert line[4] == "1" and line[7:] == [f"{_yuan(12_850):.2f}", "0.00", f"{a['acct_pay']:.2f}"], line
    assert line[0] == patient and line[3] == a["setl_id"][-30:]
    # A resent 3202 answers the same file; the inline 3202 made a result file of its own.
    again = h.send("3202_file", mid_3202, **{**totals, "refd": "1"}, file_qury_no=up["file_qury_no"]).ok()
    assert again["fileinfo"] == info
    assert out["fileinfo"]["file_qury_no"] != info["file_qury_no"]
    assert len(files.read_result(h.download(out["fileinfo"]["file_qury_no"]))) == len(result)

    # The money: the patient paid A and E from the own account; the helper paid A's and E's share.
    assert balance(env.hebei, patient) == 0
    assert balance(env.hebei, helper) == 100_000 - 7_850 - 3_000

    # 9002 签退 at the end of the day.
    out_time = h.send("9002").ok()["signoutoutb"]["sign_time"]
    assert out_time.startswith("2026-11-22 ")
    assert env.r.hget(f"gw:{{sign:{h.sign_no}}}", "out") is not None


@pytest.mark.parametrize("style", ["python_sdk", "java_his"])
def test_reconciliation_totals_that_net_below_zero_are_compared_not_refused(env: Env, style: str):
    """With refunds counted, a day whose reversals of earlier days outweigh its settlements nets below
    zero (the platform's own figures do): the institution's negative totals, as a string or a JSON
    number, are compared to the fen, never refused as INVALID_AMOUNT."""
    h = Hospital(env, style, f"H130101000{41 + STYLES.index(style)}")
    totals = {"sum_medfee": -1_234, "sum_fund": 0, "sum_acct": -1_001, "count": 2, "refd": "1", "day": "2026-11-21"}
    rec = h.send("3201", **totals).ok()
    assert rec["stmtinfo"]["stmt_rslt"] == "1"
    assert "medfee_sumamt(医疗费总额)不符:机构-12.34,平台0.00" in rec["stmtinfo"]["stmt_rslt_dscr"], rec
    assert "acct_pay(个人账户支付)不符:机构-10.01,平台0.00" in rec["stmtinfo"]["stmt_rslt_dscr"], rec
    three_places = h.message("3201", **totals)
    three_places["input"]["data"]["medfee_sumamt"] = "-12.345"
    refused(env.post(three_places), "INVALID_AMOUNT")


def test_3202_takes_refund_records_as_the_2208_answered_them(env: Env):
    """Many hospital systems keep a reversal as a row of its own (退费记录): the 2208's setl_id, its
    figures negative as the 2208 answered them, refd_setl_flag 1, beside the settlement's own row
    (flag 0). Such a detail agrees to the fen; a refund off by a fen or left out is named, in the
    answer and in the result file."""
    h = Hospital(env, "java_his", "H13010100051")
    patient, _ = patient_with_helper(env, own=1_000, helper_balance=100_000)
    a = h.send("2207", psn_no=patient, medfee=3_000, mdtrt_id="MZR1").ok()["setlinfo"]
    b = h.send("2207", psn_no=patient, medfee=500, mdtrt_id="MZR2").ok()["setlinfo"]
    ra = h.send("2208", psn_no=patient, setl_id=a["setl_id"], mdtrt_id="MZR1").ok()["setlinfo"]
    rb = h.send("2208", psn_no=patient, setl_id=b["setl_id"], mdtrt_id="MZR2").ok()["setlinfo"]
    assert (ra["medfee_sumamt"], ra["acct_pay"], ra["acct_mulaid_pay"]) == (Decimal("-30.00"), Decimal("-10.00"),
                                                                          Decimal("-20.00"))

    def row(s: dict[str, Any], refd: str) -> dict[str, Any]:
        return {"setl_id": s["setl_id"], "mdtrt_id": s["mdtrt_id"], "psn_no": patient,
                "medfee_sumamt": s["medfee_sumamt"], "fund_pay_sumamt": s["fund_pay_sumamt"], "acct_pay": s["acct_pay"],
                "refd_setl_flag": refd}
    totals = {"sum_medfee": 0, "sum_fund": 0, "sum_acct": 0, "count": 4, "refd": "1", "day": DAY}
    ok = h.send("3202", **totals, detail=[row(a, "0"), row(ra, "1"), row(b, "0"), row(rb, "1")]).ok()
    assert ok["stmtinfo"]["stmt_rslt"] == "0" and ok["detail"] == [], ok
    assert ok["medaid_ext"]["platform_cnt"] == 4

    off = [row(a, "0"), {**row(ra, "1"), "acct_pay": ra["acct_pay"] - Decimal("0.01")}, row(b, "0")]
    up = h.send("9101", file=encode_file(h.style, detail_file(h.style, off, patient)), filename="d.zip").ok()
    out = h.send("3202_file", **totals, file_qury_no=up["file_qury_no"]).ok()
    assert {(d["setl_id"], d["stmt_rslt_type"], d["fields"]) for d in out["detail"]} == {
        (ra["setl_id"], "AMOUNT_DIFFERS", "acct_pay"), (rb["setl_id"], "MISSING_AT_INSTITUTION", ""),
        (b["setl_id"], "REVERSED", "")}, out["detail"]  # without its refund, B is listed as standing
    result = files.read_result(h.download(out["fileinfo"]["file_qury_no"]))
    line = next(r for r in result if r[2] == rb["setl_id"])  # the refund as the 2208 answered it
    assert line[3] == rb["setl_id"] and line[4:6] == ["1", "1"], line
    assert line[7:] == [f"{rb['medfee_sumamt']:.2f}", "0.00", f"{rb['acct_pay']:.2f}"] == ["-5.00", "0.00", "0.00"]

    # A row naming another person or visit than the settlement's is named too (where the row gives them).
    other = enroll(env.hebei, name="赵六")
    mixed = [{**row(a, "0"), "psn_no": other}, {**row(ra, "1"), "mdtrt_id": "MZR9"}, {**row(b, "0"), "psn_no": "",
                                                                                     "mdtrt_id": ""}, row(rb, "1")]
    out = h.send("3202", **totals, detail=mixed).ok()
    assert {(d["setl_id"], d["stmt_rslt_type"], d["fields"]) for d in out["detail"]} == {
        (a["setl_id"], "INFO_DIFFERS", "psn_no"), (ra["setl_id"], "INFO_DIFFERS", "mdtrt_id")}, out["detail"]

    # Negative figures only in a refund record.
    refused(h.send("3202", **totals, detail=[{**row(a, "0"), "medfee_sumamt": Decimal("-30.00")}]), "INVALID_AMOUNT")


# --- 9101 / 9102 files ------------------------------------------------------------------------------------------


def _file_keys(e: Env) -> set[bytes]:
    return set(e.r.scan_iter(match="gw:{file:*"))


def test_files_are_the_uploading_institutions_and_refusals_write_nothing(env: Env):
    h = Hospital(env, "python_sdk", "H13010100071")
    other = Hospital(env, "csharp_client", "H13010100072")
    day = {"sum_medfee": 100, "sum_fund": 0, "sum_acct": 0, "count": 1, "refd": "1", "day": DAY}
    good = detail_file("python_sdk", [{"setl_id": h.fixmedins + "20261122103000" + "9999", "mdtrt_id": "M1",
                                       "medfee_sumamt": "1.00", "fund_pay_sumamt": "0.00", "acct_pay": "0.00",
                                       "refd_setl_flag": "0"}], "130102198001011232")
    mid = h.new_msgid()
    up = h.send("9101", mid, file=encode_file("python_sdk", good), filename="d.txt.zip").ok()
    # A resend is answered the same; the same msgid with another file is refused.
    assert h.send("9101", mid, file=encode_file("python_sdk", good), filename="d.txt.zip").ok() == up
    h.send("9101", mid, file=encode_file("python_sdk", good + b"x"), filename="d.txt.zip").refused(
        "IDEMPOTENCY_KEY_REUSED")
    assert h.download(up["file_qury_no"]) == good
    # The answer is kept no longer than the file it names (a resend after that makes the file again).
    file_ttl = env.r.ttl(files.file_key(up["file_qury_no"]))
    assert 172_700 < file_ttl <= 172_800
    assert 0 < env.r.ttl(f"gw:{{msg:{msgids.scoped(h.fixmedins, mid)}}}") <= file_ttl
    # Another institution cannot fetch it nor reconcile against it, and an unknown number is no file.
    before = _file_keys(env)
    refused(other.e.post(other.message("9102", file_qury_no=up["file_qury_no"], filename="")), "FILE_NOT_FOUND")
    refused(other.send("3202_file", **day, file_qury_no=up["file_qury_no"]), "FILE_NOT_FOUND")
    refused(h.send("3202_file", **day, file_qury_no="0" * 30), "FILE_NOT_FOUND")
    # Bad uploads and unreadable detail files are refused, naming what is wrong; nothing is written.
    refused(h.send("9101", file="不是base64", filename="d.zip"), "INVALID_FILE")
    refused(h.send("9101", file="", filename="d.zip"), "INVALID_FILE")
    refused(h.send("9101", file=encode_file("python_sdk", good), filename="../d.zip"), "INVALID_FILENAME")
    refused(h.send("9101", file=base64.b64encode(b"x" * (files.MAX_FILE_BYTES + 1)).decode(), filename="d"),
            "FILE_TOO_LARGE")
    theirs = h.message("9101", file=encode_file("python_sdk", good), filename="d.zip")
    theirs["input"]["fsUploadIn"]["fixmedins_code"] = other.fixmedins
    refused(env.post(theirs), "INSTITUTION_MISMATCH")
    assert _file_keys(env) == before
    bad_amount = b"S1\tM1\t130102198001011232\t1.00\t0\t0\t0\nS2\tM2\t130102198001011232\t1.005\t0\t0\t0\n"
    up_bad = h.send("9101", file=encode_file("python_sdk", bad_amount), filename="bad.txt").ok()
    a = h.send("3202_file", **day, file_qury_no=up_bad["file_qury_no"])
    refused(a, "INVALID_DETAIL_FILE")
    assert "第2行" in a.err_msg and "medfee_sumamt" in a.err_msg, a.err_msg
    up_zip = h.send("9101", file=encode_file("python_sdk", b"PK\x03\x04broken"), filename="b.zip").ok()
    refused(h.send("3202_file", **day, file_qury_no=up_zip["file_qury_no"]), "INVALID_DETAIL_FILE")
    assert _file_keys(env) == before | {files.file_key(up_bad["file_qury_no"]).encode(),
                                        files.file_key(up_zip["file_qury_no"]).encode()}  # no result files
    # A 3202 names its detail once: inline or by file.
    refused(h.send("3202_file", **day, file_qury_no=""), "MISSING_FIELD")
    both = h.message("3202_file", **day, file_qury_no=up["file_qury_no"])
    both["input"]["detail"] = [{"setl_id": "S1", "medfee_sumamt": "1.00"}]
    refused(env.post(both), "INVALID_DETAIL")


def test_a_file_as_a_json_byte_array_and_a_plain_text_detail_are_read(env: Env):
    h = Hospital(env, "java_his", "H13010100073")
    sid = h.fixmedins + "202611221030009998"
    text = f"{sid}\tM1\t130102198001011232\t2.50\tnull\t\t0\n".encode()
    signed = [b - 256 if b > 127 else b for b in text]
    up = h.send("9101", file=signed, filename="plain.txt").ok()
    assert h.download(up["file_qury_no"], "plain.txt") == text
    out = h.send("3202_file", sum_medfee=250, sum_fund=0, sum_acct=0, count=1, refd="1", day=DAY,
                 file_qury_no=up["file_qury_no"]).ok()
    assert [(d["setl_id"], d["stmt_rslt_type"]) for d in out["detail"]] == [(sid, "MISSING_ON_PLATFORM")]
    (line,) = files.read_result(h.download(out["fileinfo"]["file_qury_no"]))
    assert line[:7] == ["130102198001011232", "M1", sid, sid[-30:], "1", "0", "MISSING_ON_PLATFORM: 平台无此结算"]
    assert line[7:] == ["2.50", "0.00", "0.00"]


def test_a_3202_may_carry_its_detail_file_inline_as_fsuploadin(env: Env):
    """Some systems send the detail file with the 3202 itself (`input.fsUploadIn`, as a 9101 carries
    it) instead of uploading it first: read as if uploaded, the same answer as by file_qury_no."""
    h = Hospital(env, "java_his", "H13010100074")
    other = Hospital(env, "python_sdk", "H13010100075")
    sid = h.fixmedins + "202611221030009997"
    text = f"{sid}\tM1\t130102198001011232\t2.50\t0\t0\t0\n".encode()
    day = {"sum_medfee": 250, "sum_fund": 0, "sum_acct": 0, "count": 1, "refd": "1", "day": DAY}
    up = h.send("9101", file=encode_file(h.style, text), filename="plain.txt").ok()
    by_no = h.send("3202_file", **day, file_qury_no=up["file_qury_no"]).ok()

    def inline(file: Any, filename: str = "detail.txt", code: str | None = None) -> dict[str, Any]:
        m = h.message("3202_file", **day, file_qury_no="")
        m["input"]["fsUploadIn"] = {"in": file, "filename": filename, "fixmedins_code": code or h.fixmedins}
        return m

    a = env.post(inline(encode_file(h.style, text))).ok()
    assert (a["stmtinfo"], a["detail"]) == (by_no["stmtinfo"], by_no["detail"]), a
    assert [(d["setl_id"], d["stmt_rslt_type"]) for d in a["detail"]] == [(sid, "MISSING_ON_PLATFORM")]
    (line,) = files.read_result(h.download(a["fileinfo"]["file_qury_no"]))
    assert line[2] == sid
    # The rows themselves under fsUploadIn[] (a client's own node for them): read as `detail[]`.
    rows = inline(None)
    rows["input"]["fsUploadIn"] = [{"setl_id": sid, "mdtrt_id": "M1", "psn_no": "130102198001011232",
                                    "medfee_sumamt": Decimal("2.50"), "fund_pay_sumamt": 0, "acct_pay": 0}]
    b = env.post(rows).ok()
    assert (b["stmtinfo"], b["detail"]) == (by_no["stmtinfo"], by_no["detail"]), b
    # Refused as a 9101 and a 3202 by file would be, writing nothing: another institution's name on
    # it, a file that is not one, an unreadable detail, and a detail named twice.
    before = _file_keys(env)
    refused(env.post(inline(encode_file(h.style, text), code=other.fixmedins)), "INSTITUTION_MISMATCH")
    refused(env.post(inline("不是base64")), "INVALID_FILE")
    refused(env.post(inline(encode_file(h.style, text), filename="../d.txt")), "INVALID_FILENAME")
    refused(env.post(inline(encode_file(h.style, b"S1\tM1\t\t1.005\n"))), "INVALID_DETAIL_FILE")
    twice = inline(encode_file(h.style, text))
    twice["input"]["data"]["file_qury_no"] = up["file_qury_no"]
    refused(env.post(twice), "INVALID_DETAIL")
    rows["input"]["detail"] = rows["input"]["fsUploadIn"]
    refused(env.post(rows), "INVALID_DETAIL")
    assert _file_keys(env) == before


def test_a_large_hospitals_day_is_reconciled_from_one_file(env: Env):
    """A 3202 of 50,000 rows (router MAX_ROWS) with ids of the longest kind: both its request and its
    answer are larger than gRPC's 4 MiB default on the gateway → router hop. One row is a real
    settlement; the others the platform never saw."""
    from medaid.router.reconcile import MAX_ROWS

    h = Hospital(env, "python_sdk", "H13010100075")
    patient, _ = patient_with_helper(env, own=10_000, helper_balance=0)
    real = h.send("2207", psn_no=patient, medfee=1_234, mdtrt_id="MZBIG").ok()["setlinfo"]
    rows = [{"setl_id": real["setl_id"], "mdtrt_id": "MZBIG", "medfee_sumamt": "12.34", "fund_pay_sumamt": "0.00",
             "acct_pay": "12.34", "refd_setl_flag": "0"}]
    rows += [{"setl_id": f"{h.fixmedins}-20261122-{n:042d}", "mdtrt_id": f"MZ{n:028d}", "medfee_sumamt": "1.00",
              "fund_pay_sumamt": "0.00", "acct_pay": "0.00", "refd_setl_flag": "0"} for n in range(1, MAX_ROWS)]
    assert len(rows) == MAX_ROWS
    day = {"sum_medfee": 0, "sum_fund": 0, "sum_acct": 0, "count": MAX_ROWS, "refd": "1", "day": DAY}
    data = detail_file("python_sdk", rows, patient)
    assert len(data) <= files.MAX_FILE_BYTES
    up = h.send("9101", file=encode_file("python_sdk", data), filename="big.txt.zip").ok()
    out = h.send("3202_file", **day, file_qury_no=up["file_qury_no"]).ok()
    kinds = [(d["setl_id"], d["stmt_rslt_type"]) for d in out["detail"]]
    assert kinds == [(r["setl_id"], "MISSING_ON_PLATFORM") for r in rows[1:]]
    assert (out["medaid_ext"]["platform_cnt"], out["medaid_ext"]["fixmedins_setl_cnt"]) == (1, MAX_ROWS)
    result = files.read_result(h.download(out["fileinfo"]["file_qury_no"]))
    assert len(result) == MAX_ROWS - 1 and result[-1][2] == rows[-1]["setl_id"]
    # One row more is refused, and makes no result file.
    before = _file_keys(env)
    more = rows + [{**rows[-1], "setl_id": f"{h.fixmedins}-20261122-{MAX_ROWS:042d}"}]
    up_more = h.send("9101", file=encode_file("python_sdk", detail_file("python_sdk", more, patient)),
                     filename="more.txt.zip").ok()
    refused(h.send("3202_file", **day, file_qury_no=up_more["file_qury_no"]), "INVALID_DETAIL")
    assert _file_keys(env) == before | {files.file_key(up_more["file_qury_no"]).encode()}


# --- 2601 rules -------------------------------------------------------------------------------------------------


def test_2601_is_idempotent_and_refuses_what_is_not_this_institutions(env: Env):
    h = Hospital(env, "java_his", "H13010100031")
    other = Hospital(env, "java_his", "H13010100032")
    patient, _ = patient_with_helper(env, own=10_000, helper_balance=0)
    mid = h.new_msgid()
    s = h.send("2207", mid, psn_no=patient, medfee=1_000, mdtrt_id="MZ1").ok()["setlinfo"]
    undo_msgid = h.new_msgid()
    first = h.send("2601", undo_msgid, psn_no=patient, omsgid=mid, oinfno="2207")
    assert first.ok()["medaid_ext"]["outcome"] == "REVERSED"
    assert h.send("2601", undo_msgid, psn_no=patient, omsgid=mid, oinfno="2207").raw == first.raw
    again = h.send("2601", psn_no=patient, omsgid=mid, oinfno="2207").ok()  # another 2601: already done
    assert again["medaid_ext"]["outcome"] == "ALREADY_REVERSED"
    assert balance(env.hebei, patient) == 10_000
    # Another institution cannot undo this one's message, nor a wrong person or transaction.
    before = snapshot(env.r)
    refused(other.send("2601", psn_no=patient, omsgid=mid, oinfno="2207"), "ORIGINAL_OF_ANOTHER_INSTITUTION")
    refused(h.send("2601", psn_no=patient, omsgid=mid, oinfno="2208"), "ORIGINAL_MISMATCH")
    refused(h.send("2601", psn_no=patient, omsgid=mid, oinfno="2206"), "UNSUPPORTED_OINFNO")
    assert snapshot(env.r) == before
    assert s["setl_id"] == mid


def test_a_setl_id_is_the_30_character_msgid_of_any_shape_and_names_one_institutions_settlement(env: Env):
    """setl_id is 字符型(30): a client whose msgids do not start with its code (a uuid, a counter) is told
    its own msgid, and names the settlement by it; the id with the institution's code in front, which
    answers once gave, still names it too. Two institutions may send the same msgid."""
    h, other = Hospital(env, "python_sdk", "H13010100033"), Hospital(env, "python_sdk", "H13010100034")
    patient, _ = patient_with_helper(env, own=10_000, helper_balance=0)
    mid = h.new_msgid()
    s = h.send("2207", mid, psn_no=patient, medfee=1_000, mdtrt_id="MZ1").ok()["setlinfo"]
    t = other.send("2207", mid, psn_no=patient, medfee=2_000, mdtrt_id="MZ1").ok()["setlinfo"]
    assert s["setl_id"] == t["setl_id"] == mid and len(mid) == 30
    assert h.send("5203", psn_no=patient, setl_id=mid).ok()["setlinfo"]["medfee_sumamt"] == Decimal("10.00")
    assert other.send("5203", psn_no=patient, setl_id=mid).ok()["setlinfo"]["medfee_sumamt"] == Decimal("20.00")
    assert h.send("5203", psn_no=patient, setl_id=h.fixmedins + mid).ok()["setlinfo"]["setl_id"] == mid

    rev_mid = h.new_msgid()
    rev = h.send("2208", rev_mid, psn_no=patient, setl_id=mid, mdtrt_id="MZ1").ok()["setlinfo"]
    assert rev["setl_id"] == rev_mid and rev["init_setl_id"] == mid
    assert balance(env.hebei, patient) == 10_000 - 2_000  # only h's settlement was reversed
    again = other.send("2208", psn_no=patient, setl_id=other.fixmedins + mid, mdtrt_id="MZ1").ok()["setlinfo"]
    assert again["init_setl_id"] == mid and balance(env.hebei, patient) == 10_000

    # 3202 names the settlements as the answers did, and its mismatches name them the same way.
    totals = {"sum_medfee": 1_000, "sum_fund": 0, "sum_acct": 1_000, "count": 1, "refd": "1", "day": DAY}
    rows = [{"setl_id": mid, "mdtrt_id": "MZ1", "psn_no": patient, "medfee_sumamt": Decimal("10.00"),
             "fund_pay_sumamt": Decimal("0.00"), "acct_pay": Decimal("10.00"), "refd_setl_flag": "0"}]
    out = h.send("3202", **totals, detail=rows).ok()
    assert {(d["setl_id"], d["stmt_rslt_type"]) for d in out["detail"]} == {(mid, "REVERSED")}, out["detail"]
    out = h.send("3202", **totals, detail=[{**rows[0], "setl_id": h.new_msgid()}]).ok()
    assert (mid, "MISSING_AT_INSTITUTION") in {(d["setl_id"], d["stmt_rslt_type"]) for d in out["detail"]}


def test_5203_2208_and_2601_find_a_settlement_of_a_person_who_has_moved_province_since(env: Env):
    """5203, 2208 and 2601 ask the province that holds the settlement (the router's index), not the one
    insuring the person now: after a move from 13 to 11 the settlement is still registry 13's, and a
    2601 of its 2207 must reverse it there, not answer VOIDED (never arrived) with the money kept."""
    h = Hospital(env, "python_sdk", "H13010100037")
    patient = enroll(env.hebei, name="赵敏", birth="19700101")
    credit(env.hebei, patient, 5_000)
    s = h.send("2207", psn_no=patient, medfee=1_200, mdtrt_id="MZM").ok()["setlinfo"]
    t = h.send("2207", psn_no=patient, medfee=300, mdtrt_id="MZN").ok()["setlinfo"]
    env.hebei.UpdatePersonStatus(rpb.UpdatePersonStatusRequest(
        request_id=rid("status"), id_number=patient, status=cpb.PERSON_STATUS_TERMINATED, moved_to_province="11"))
    env.beijing.EnrollPerson(rpb.EnrollPersonRequest(request_id=rid("enroll"), id_number=patient, name="赵敏",
                                                     insurance_type=cpb.INSURANCE_TYPE_EMPLOYEE,
                                                     pooling_region="110000"))
    for by in ({"setl_id": s["setl_id"]}, {"mdtrt_id": "MZM"}):
        q = h.send("5203", insuplc="", psn_no=patient, **by).ok()
        assert q["setlinfo"]["setl_id"] == s["setl_id"] and q["setlinfo"]["acct_pay"] == Decimal("12.00"), by
    # A 2601 of that 2207 reverses it there: it arrived, and its money is given back.
    undo = h.send("2601", insuplc="", psn_no=patient, omsgid=s["setl_id"], oinfno="2207").ok()["medaid_ext"]
    assert (undo["outcome"], undo["acct_pay"]) == ("REVERSED", Decimal("12.00"))
    assert balance(env.hebei, patient) == 5_000 - 300
    again = h.send("2601", insuplc="", psn_no=patient, omsgid=s["setl_id"], oinfno="2207").ok()["medaid_ext"]
    assert again["outcome"] == "ALREADY_REVERSED" and balance(env.hebei, patient) == 5_000 - 300
    rev = h.send("2208", insuplc="", psn_no=patient, setl_id=t["setl_id"], mdtrt_id="MZN").ok()["setlinfo"]
    assert rev["init_setl_id"] == t["setl_id"] and balance(env.hebei, patient) == 5_000


def _money_keys(r: redis.Redis) -> dict[bytes, Any]:
    """Every registry key's contents but the lock machinery (a refused 2601 may have taken the patient's
    lock). Contents, not DUMP bytes: rewriting a field with its own value can reorder a hash's encoding."""
    return {k: logical_value(r, k) for k in r.scan_iter(match="reg:*")
            if b"{recovery}" not in k and not k.endswith((b":fence", b":lock"))}


def test_2601_of_a_2208_is_refused_when_a_source_no_longer_covers_it(env: Env):
    """Undoing a reversal takes back exactly what it returned from the same accounts, or nothing."""
    h = Hospital(env, "python_sdk", "H13010100033")
    patient, helper = patient_with_helper(env, own=2_000, helper_balance=10_000)
    s = h.send("2207", psn_no=patient, medfee=8_000, mdtrt_id="MZ1").ok()["setlinfo"]
    assert shares(s) == (Decimal("20.00"), Decimal("0.00"), Decimal("60.00"), Decimal("0.00"))
    rev = h.new_msgid()
    h.send("2208", rev, psn_no=patient, setl_id=s["setl_id"], mdtrt_id="MZ1").ok()
    # The helper spends at another hospital meanwhile: ¥60.00 is no longer there.
    helper_bill = Hospital(env, "python_sdk", "H13010100034")
    helper_bill.send("2207", psn_no=helper, medfee=5_000, mdtrt_id="MZ9").ok()
    money = _money_keys(env.r)
    undo_mid = h.new_msgid()
    a = h.send("2601", undo_mid, psn_no=patient, omsgid=rev, oinfno="2208")
    refused(a, "UNDO_SOURCE_SHORT")
    assert a.output["medaid_ext"]["metadata"]["source"] == "acct_mulaid_pay"
    assert _money_keys(env.r) == money
    q = h.send("5203", psn_no=patient, setl_id=s["setl_id"]).ok()
    assert q["medaid_ext"]["setl_stas"] == "REVERSED"
    assert (balance(env.hebei, patient), balance(env.hebei, helper)) == (2_000, 5_000)
    # The helper is credited again: the same 2601 (same msgid, judged afresh) now succeeds.
    credit(env.hebei, helper, 1_000)
    assert h.send("2601", undo_mid, psn_no=patient, omsgid=rev, oinfno="2208").ok()["medaid_ext"]["outcome"] == \
        "RESTORED"
    assert (balance(env.hebei, patient), balance(env.hebei, helper)) == (0, 0)


def test_2601_undoes_a_reversal_with_a_wallet_share(env: Env):
    h = Hospital(env, "csharp_client", "H13010100035")
    patient = enroll(env.hebei, name="李桂兰", birth="19500101")
    credit(env.hebei, patient, 1_000)
    sender = enroll(env.beijing, name="李明", birth="19800101", region="110000", division="110105")
    credit(env.beijing, sender, 50_000)
    env.wallet.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=patient, province="13",
                                                use_place_admdvs="130100", real_name=FACE))
    env.wallet.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=sender, province="11",
                                                use_place_admdvs="110000", real_name=FACE))  # both sides hold one
    t = env.wallet.CreateTransfer(wpb.CreateTransferRequest(
        request_id=rid("xfer"), sender_id_number=sender, sender_province="11", recipient_id_number=patient,
        relation=cpb.RELATION_PARENT, amount_fen=4_000, verification=FACE)).transfer
    env.wallet.AcceptTransfer(wpb.AcceptTransferRequest(request_id=rid("accept"), transfer_id=t.transfer_id,
                                                        recipient_id_number=patient))
    s = h.send("2207", psn_no=patient, medfee=3_000, mdtrt_id="MZW").ok()["setlinfo"]
    assert shares(s) == (Decimal("10.00"), Decimal("20.00"), Decimal("0.00"), Decimal("0.00"))
    rev = h.new_msgid()
    h.send("2208", rev, psn_no=patient, setl_id=s["setl_id"], mdtrt_id="MZW").ok()
    assert h.send("2601", psn_no=patient, omsgid=rev, oinfno="2208").ok()["medaid_ext"]["wallet_pay"] == \
        Decimal("20.00")
    wallet = env.wallet.GetWallet(wpb.GetWalletRequest(owner_id_number=patient)).wallet
    assert (balance(env.hebei, patient), wallet.balance_fen) == (0, 2_000)
    # Reversed again (a new 2208): each source gets its share back once more.
    h.send("2208", psn_no=patient, setl_id=s["setl_id"], mdtrt_id="MZW").ok()
    wallet = env.wallet.GetWallet(wpb.GetWalletRequest(owner_id_number=patient)).wallet
    assert (balance(env.hebei, patient), wallet.balance_fen) == (1_000, 4_000)


def _restart_registry(e: Env, fault: str = "", grace_ms: int = 2000,
                      settings: dict[str, str] | None = None) -> None:
    e.topo.recovery_grace_ms = grace_ms
    e.topo.restart("registry-13", env={"MEDAID_FAULT": fault, **(settings or {})})


def test_3202_names_a_settlement_still_being_finished_in_progress_not_missing(env: Env):
    """A listed settlement whose registry has not finished it (crashed after the wallet's share) is the
    platform's, unfinished: IN_PROGRESS with what it holds, never MISSING_ON_PLATFORM (which would tell
    the hospital to settle it again); once recovery finishes it, the same detail agrees."""
    h = Hospital(env, "python_sdk", "H13010100036")
    patient = patient_with_wallet(env)  # ¥10 in the account, ¥40 in the wallet
    mid = h.new_msgid()
    # The lock the crash leaves on the patient expires after 3 s (--lock-ttl-ms; 10 s by default). The
    # registry's own recovery loop (--recovery-grace-ms: grace_ms is the wallet's) leaves the settlement
    # to the hospital's resend.
    quiet = {"MEDAID_RECOVERY_GRACE_MS": "3600000", "MEDAID_LOCK_TTL_MS": "3000"}
    _restart_registry(env, "settle.after_wallet_debit", grace_ms=3_600_000, settings=quiet)
    try:
        assert h.send("2207", mid, psn_no=patient, medfee=3_000, mdtrt_id="MZI").infcode == -1  # it crashed
        env.topo.services["registry-13"].proc.wait(timeout=15)
        _restart_registry(env, grace_ms=3_600_000, settings=quiet)  # up again, the settlement left unfinished
        totals = {"sum_medfee": 3_000, "sum_fund": 0, "sum_acct": 1_000, "count": 1, "refd": "1", "day": DAY}
        rows = [{"setl_id": mid, "mdtrt_id": "MZI", "psn_no": patient, "medfee_sumamt": Decimal("30.00"),
                 "fund_pay_sumamt": Decimal("0.00"), "acct_pay": Decimal("10.00"), "refd_setl_flag": "0"}]
        out = h.send("3202", **totals, detail=rows).ok()
        assert [(d["setl_id"], d["stmt_rslt_type"], d["setl_stas"]) for d in out["detail"]] == \
            [(mid, "IN_PROGRESS", "IN_PROGRESS")], out["detail"]
        assert out["stmtinfo"]["stmt_rslt"] == "1" and out["medaid_ext"]["in_progress_cnt"] == 1
        line = files.read_result(h.download(out["fileinfo"]["file_qury_no"]))[0]
        assert line[2:4] == [mid, mid] and line[6] == "IN_PROGRESS: 平台结算正在处理,请稍后重新对账", line
        # The hospital resends its 2207: the settlement is finished, and the same detail agrees. Until
        # the crashed attempt's lock on the patient runs out the registry cannot take the patient, and
        # the answer says to send the same msgid again (the gateway does not repeat what the router
        # already retried), which a hospital does.
        deadline = time.monotonic() + 30
        while (again := h.send("2207", mid, psn_no=patient, medfee=3_000, mdtrt_id="MZI")).infcode != 0:
            assert again.output["medaid_ext"]["retryable"] is True, again.err_msg
            assert time.monotonic() < deadline, again.err_msg
            time.sleep(0.5)
        s = again.ok()["setlinfo"]
        assert shares(s) == (Decimal("10.00"), Decimal("20.00"), Decimal("0.00"), Decimal("0.00"))
        out = h.send("3202", **totals, detail=rows).ok()
        assert out["stmtinfo"]["stmt_rslt"] == "0" and out["detail"] == [], out
    finally:
        _restart_registry(env)


# --- conservation: 2601s interleaved with 2207 / 2208, concurrently and resent -----------------------------


def _money(r: redis.Redis) -> int:
    total = sum(int(r.hget(k, "bal") or 0) for k in r.scan_iter(match="reg:*:acct"))
    return total + sum(int(r.hget(k, "bal") or 0) for k in r.scan_iter(match="wal:*:wallet"))


def test_conservation_across_2601s_interleaved_with_2207_and_2208_under_concurrency_and_retries(env: Env):
    h = Hospital(env, "python_sdk", "H13010100041")
    people = [patient_with_helper(env, own=3_000, helper_balance=20_000) for _ in range(4)]
    credited = sum(3_000 + 20_000 for _ in people)
    before = _money(env.r)
    lock = threading.Lock()
    setl_ids: list[str] = []

    def twice(infno: str, msgid: str, **values: Any) -> list[Answer]:
        """The same message sent twice at once (a retry racing the original)."""
        body = body_of(h.message(infno, msgid, **values))
        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(lambda _: post_raw(env.url, body), range(2)))

    def story(patient: str, n: int) -> None:
        for i in range(3):
            mid = h.new_msgid()
            settled = [a for a in twice("2207", mid, psn_no=patient, medfee=1_500 + 700 * i, mdtrt_id=f"V{n}{i}")
                       if a.infcode == 0]
            if not settled:
                continue
            sid = settled[0].output["setlinfo"]["setl_id"]
            with lock:
                setl_ids.append(sid)
            if i == 0:  # lost answer → 2601 of the 2207, racing a resend of the 2207 itself
                twice("2601", h.new_msgid(), psn_no=patient, omsgid=mid, oinfno="2207")
            elif i == 1:  # reversed, then the reversal undone (both resent), then reversed again
                rev = h.new_msgid()
                twice("2208", rev, psn_no=patient, setl_id=sid, mdtrt_id=f"V{n}{i}")
                twice("2601", h.new_msgid(), psn_no=patient, omsgid=rev, oinfno="2208")
                twice("2208", h.new_msgid(), psn_no=patient, setl_id=sid, mdtrt_id=f"V{n}{i}")

    with ThreadPoolExecutor(len(people)) as pool:
        list(pool.map(lambda x: story(x[1][0], x[0]), enumerate(people)))

    # The platform's own records say what stands; what stands was spent, the rest is in the accounts.
    spent = 0
    for sid in setl_ids:
        got = h.send("5203", setl_id=sid, psn_no="").ok()
        if got["medaid_ext"]["setl_stas"] == "SETTLED":
            s = got["setlinfo"]
            spent += int((s["acct_pay"] + s["wallet_pay"] + s["acct_mulaid_pay"]) * 100)
    assert _money(env.r) == before - spent and before >= credited
    assert spent == sum(3_000 + 20_000 - balance(env.hebei, p) - balance(env.hebei, hp) for p, hp in people)
    for p, hp in people:
        assert balance(env.hebei, p) >= 0 and balance(env.hebei, hp) >= 0
        for who in (p, hp):
            ledger = [json.loads(x) for x in env.r.lrange(f"reg:13:{{p:{who}}}:ledger", 0, -1)]
            assert sum(x["amount"] for x in ledger) == balance(env.hebei, who), who
    # 3201 agrees with what the platform answered, to the fen.
    standing_acct = 0
    for sid in setl_ids:
        got = h.send("5203", setl_id=sid, psn_no="").ok()
        if got["medaid_ext"]["setl_stas"] == "SETTLED":
            standing_acct += int(got["setlinfo"]["acct_pay"] * 100)
    rec = h.send("3201", sum_medfee=0, sum_fund=0, sum_acct=standing_acct, count=0, refd="0", day=DAY).ok()
    assert rec["medaid_ext"]["platform"]["acct_pay"] == _yuan(standing_acct)


# --- the edge ---------------------------------------------------------------------------------------------------


def test_edge_answers_are_envelopes_with_http_200(env: Env):
    deep = b'{"infno":"2207","input":' + b"[" * 1000 + b"]" * 1000 + b"}"
    refused(post_raw(env.url, deep), "INVALID_JSON")
    refused(post_raw(env.url, b"[" * 100_000), "INVALID_JSON")
    big = b'{"infno":"2207","pad":"' + b"x" * (1024 * 1024) + b'"}'
    refused(post_raw(env.url, big), "REQUEST_TOO_LARGE")
    req = urllib.request.Request(env.url, method="GET")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
        refused(Answer(resp.read()), "INVALID_ENVELOPE")
    # The address written with a closing slash is the same endpoint.
    refused(post_raw(env.url + "/", b'{"infno": "9999"}'), "MISSING_FIELD")


def test_real_client_shapes_are_accepted(env: Env):
    h = Hospital(env, "python_sdk", "H13010100051")
    patient, _ = patient_with_helper(env, own=10_000, helper_balance=0)
    msg = h.message("2207", uuid.uuid4().hex.upper()[:30], psn_no=patient, medfee=100, mdtrt_id="MZ1")
    msg["input"]["data"]["acct_used_flag"] = "01"
    msg["input"]["data"]["mdtrt_id"] = None
    msg["input"]["data"]["fulamt_ownpay_amt"] = None
    assert env.post(msg).ok()["setlinfo"]["acct_pay"] == Decimal("1.00")
    msg = h.message("2207", psn_no=patient, medfee=100, mdtrt_id="MZ2")
    msg["input"]["data"]["acct_used_flag"] = "00"
    assert env.post(msg).ok()["setlinfo"]["psn_cash_pay"] == Decimal("1.00")
    # Two institutions may use the same msgid: each is its own message.
    shared = uuid.uuid4().hex.upper()[:30]
    other = Hospital(env, "python_sdk", "H13010100052")
    one = h.send("2207", shared, psn_no=patient, medfee=200, mdtrt_id="MZ3").ok()["setlinfo"]
    two = other.send("2207", shared, psn_no=patient, medfee=300, mdtrt_id="MZ4").ok()["setlinfo"]
    assert one["setl_id"] == two["setl_id"] == shared  # each names its own institution's settlement
    assert balance(env.hebei, patient) == 10_000 - 100 - 200 - 300
    assert other.send("5203", psn_no=patient, setl_id=shared).ok()["setlinfo"]["mdtrt_id"] == "MZ4"


# --- the contract: OpenAPI, Swagger UI, Schemathesis --------------------------------------------------------


def _get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.headers["Content-Type"], resp.read()


def test_openapi_document_and_swagger_ui_are_served_without_a_cdn(env: Env):
    base = f"http://{env.topo.address('gateway')}"
    status, ctype, raw = _get(base + "/openapi.json")
    doc = json.loads(raw)
    assert doc == json.loads(json.dumps(openapi.document()))
    assert status == 200 and ctype.startswith("application/json") and doc["openapi"] == "3.1.0"
    examples = doc["paths"][GATEWAY_PATH]["post"]["requestBody"]["content"]["application/json"]["examples"]
    assert sorted(examples) == sorted(["9001", "9002", "1101", "2206", "2207", "2208", "2601", "5203", "3201", "3202",
                                       "9101", "9102"])
    schemas = doc["components"]["schemas"]
    amount = schemas["Data2207"]["properties"]["medfee_sumamt"]
    assert {x["type"] for x in amount["anyOf"]} == {"string", "number"} and "元" in amount["description"]
    assert schemas["Data2207"]["properties"]["acct_used_flag"]["description"].startswith("个人账户使用标志")
    assert schemas["SetlInfoOut"]["properties"]["acct_pay"]["type"] == "number"
    for infno, ex in examples.items():  # each example is a message the gateway reads (no schema refusal)
        a = post_raw(env.url, body_of(ex["value"]))
        assert a.infcode == 0 or a.output["medaid_ext"]["reason"] not in (
            "INVALID_JSON", "INVALID_ENVELOPE", "MISSING_FIELD", "INVALID_FIELD", "INVALID_INPUT", "INVALID_AMOUNT",
            "INVALID_MSGID"), (infno, a.err_msg)
    status, ctype, page = _get(base + "/docs")
    assert status == 200 and ctype.startswith("text/html")
    assert b"http://" not in page and b"https://" not in page and b"/openapi.json" in page
    status, ctype, js = _get(base + "/docs/static/swagger-ui-bundle.js")
    assert status == 200 and len(js) > 100_000 and b"SwaggerUIBundle" in js


# The document the gateway serves (test_openapi_document_… checks it is this one), called live.
contract = schemathesis.openapi.from_dict(openapi.document())


@contract.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_live_gateway_keeps_its_openapi_contract(case: Any, env: Env):
    """No server error, the declared status, content type and answer schema, for generated messages.
    Not `negative_data_rejection` nor `unsupported_method`: by the interface's contract a malformed
    message (or another method than POST) is answered HTTP 200 with infcode -1 (the envelope) rather than
    an HTTP 4xx / 405; the answer schema covers that refusal."""
    case.call_and_validate(base_url=f"http://{env.topo.address('gateway')}",
                           excluded_checks=[schemathesis.checks.negative_data_rejection,
                                            schemathesis.checks.unsupported_method])
