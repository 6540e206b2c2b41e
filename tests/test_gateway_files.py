"""The 9101 / 3202 / 9102 file rules (gateway/files.py): pure, no servers. The HTTP flow, the
institution's ownership of its files and refusals writing nothing are in test_gateway_hospital.py."""

from __future__ import annotations

import base64
import io
import zipfile

import pytest
from medaid.gateway import files
from medaid.gateway import schemas_reconcile as rs
from pydantic import ValidationError

ROW = "H13010100001202611221030000004\tMZ1\t130102198001011234\t128.50\t0.00\t100.00\t0"


def _zip(*entries: tuple[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries:
            z.writestr(name, data)
    return buf.getvalue()


def _upload(value: object) -> bytes:
    return rs.Input9101.model_validate({"fsUploadIn": {"in": value, "filename": "d.zip"}}).fsUploadIn.in_


def _reason(value: object) -> str:
    with pytest.raises(ValidationError) as info:
        _upload(value)
    return str(info.value.errors()[0]["type"])


def test_in_is_read_however_clients_serialise_a_byte_array():
    data = bytes(range(256)) * 3
    signed = [b - 256 if b > 127 else b for b in data]
    b64 = base64.b64encode(data).decode()
    assert _upload(b64) == data
    assert _upload("\n".join(b64[i:i + 76] for i in range(0, len(b64), 76))) == data  # MIME line breaks
    assert _upload(signed) == data  # a JSON array of Java's signed bytes
    assert _upload(list(data)) == data  # or of 0..255
    assert _upload(str(signed)) == data  # Arrays.toString(bytes) sent as text


@pytest.mark.parametrize(("value", "reason"), [
    ("", "INVALID_FILE"), ([], "INVALID_FILE"), ("not base64!", "INVALID_FILE"), ([1, 256], "INVALID_FILE"),
    ([True], "INVALID_FILE"), ("[1, 2", "INVALID_FILE"), (12, "INVALID_FILE"),
    ([0] * (files.MAX_FILE_BYTES + 1), "FILE_TOO_LARGE"),
    (base64.b64encode(b"x" * (files.MAX_FILE_BYTES + 1)).decode(), "FILE_TOO_LARGE"),
])
def test_unusable_uploads_are_refused_with_their_reason(value: object, reason: str):
    assert _reason(value) == reason


def test_the_serialised_upload_is_its_base64_so_a_resend_fingerprints_the_same():
    inp = rs.Input9101.model_validate({"fsUploadIn": {"in": [1, 2, -1], "filename": "a"}})
    assert inp.model_dump(mode="json")["fsUploadIn"]["in_"] == base64.b64encode(b"\x01\x02\xff").decode()


def test_detail_rows_are_the_inline_rows_in_every_written_form():
    utf8 = _zip(("a.txt", (ROW + "\n").encode()))
    gbk = _zip(("b.txt", ("\t".join(files.DETAIL_COLUMNS) + "\r\n" + ROW + "\textra\r\n").encode("gbk")))
    plain = (ROW + "\n\n").encode("utf-8-sig")
    for data in (utf8, gbk, plain):
        (row,) = files.detail_rows(data, rs.DetailRowIn)
        assert (row.setl_id, row.mdtrt_id, row.medfee_sumamt, row.fund_pay_sumamt, row.acct_pay, row.refd_setl_flag) \
            == ("H13010100001202611221030000004", "MZ1", 12_850, 0, 10_000, "0")
    (row,) = files.detail_rows(b"S1\tnull\t\t3\tnull\t\t01\n", rs.DetailRowIn)
    assert (row.mdtrt_id, row.medfee_sumamt, row.fund_pay_sumamt, row.acct_pay, row.refd_setl_flag) == \
        ("", 300, None, None, "1")
    (refund,) = files.detail_rows(b"R1\t\t\t-3.00\t0.00\t-1.00\t1\n", rs.DetailRowIn)  # a refund record
    assert (refund.medfee_sumamt, refund.acct_pay) == (-300, -100)
    two = files.detail_rows(_zip(("2.txt", b"S2\t\t\t2\n"), ("1.txt", b"S1\t\t\t1\n")), rs.DetailRowIn)
    assert [r.setl_id for r in two] == ["S1", "S2"]  # entries in name order


@pytest.mark.parametrize(("data", "reason", "where"), [
    (b"S1\t\t\t1.00\nS2\t\t\t-1\n", "INVALID_DETAIL_FILE", "第2行"),
    (b"S1\t\t\t1.00\t0.00\t-1.00\t0\n", "INVALID_DETAIL_FILE", "退费记录"),
    (b"S1\t\t\t1.001\n", "INVALID_DETAIL_FILE", "medfee_sumamt"),
    (b"\tM1\t\t1.00\n", "INVALID_DETAIL_FILE", "setl_id"),
    (b"S1\tM1\n", "INVALID_DETAIL_FILE", "medfee_sumamt"),
    (b"PK\x03\x04 not a zip", "INVALID_DETAIL_FILE", "zip"),
    (_zip(), "INVALID_DETAIL_FILE", "没有文件"),
])
def test_an_unreadable_detail_file_names_its_problem(data: bytes, reason: str, where: str):
    with pytest.raises(files.FileProblem) as info:
        files.detail_rows(data, rs.DetailRowIn)
    assert info.value.code == reason and where in info.value.context, info.value.context


def test_a_zip_that_unpacks_past_the_limit_is_refused_before_it_is_read(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(files, "MAX_TEXT_BYTES", 1000)
    with pytest.raises(files.FileProblem) as info:
        files.detail_rows(_zip(("a.txt", b"S1\t\t\t1\n" * 200)), rs.DetailRowIn)
    assert info.value.code == "FILE_TOO_LARGE"


def test_the_result_file_round_trips_and_keeps_one_line_per_row():
    rows = [["130102198001011234", "", "S1", "M1", "1", "0", "AMOUNT_DIFFERS: 金额不符\t(x)", "1.00", "0.00", "0.00"]]
    data = files.result_file("r.txt", rows)
    (line,) = files.read_result(data)
    assert line[1] == "null" and line[6] == "AMOUNT_DIFFERS: 金额不符 (x)" and len(line) == len(files.RESULT_COLUMNS)
    assert files.read_result(files.result_file("r.txt", [])) == []


def test_file_numbers_follow_the_message_and_file_names_are_checked():
    assert files.query_no("H1X") == files.query_no("H1X") != files.query_no("H1Y")
    assert len(files.query_no("H1X")) == 30
    for bad in ("", "a/b", "a\\b", "a\nb", "x" * 201):
        with pytest.raises(ValueError):
            rs.Input9101.model_validate({"fsUploadIn": {"in": "AA==", "filename": bad}})


def test_a_row_of_another_period_is_told_with_the_platforms_time():
    """OUT_OF_PERIOD (router/reconcile_details.py): the answer's row and the result file's line give the
    platform's time of the settlement, the day it is reconciled in (Beijing), and its figures."""
    from medaid.gateway import reconcile
    from medaid.router.v1 import router_pb2 as pb

    setl_ms = 1_795_363_199_900  # 2026-11-22 23:59:59.9, Beijing
    m = pb.Mismatch(setl_id="H13010100055202611221000000001", kind="OUT_OF_PERIOD", platform=pb.SettlementEntry(
        state="SETTLED", setlinfo=pb.SetlInfo(setl_time_unix_ms=setl_ms, medfee_sumamt_fen=2_000, acct_pay_fen=2_000,
                                              psn_part_amt_fen=2_000)))
    (out,) = reconcile._mismatches(pb.ReconcileDetailsResponse(mismatches=[m]))
    assert (out.stmt_rslt_type, out.setl_time, out.acct_pay) == ("OUT_OF_PERIOD", "2026-11-22 23:59:59", 2_000)
    (line,) = files.read_result(reconcile._result_zip("H13010100055", "r.txt", {}, [m]))
    assert line[6] == ("OUT_OF_PERIOD: 平台有此笔,但按平台时间不属于本对账期间,请计入平台时间所在日期的对账"
                       "(平台时间2026-11-22 23:59:59)")
    assert line[7:] == ["20.00", "0.00", "20.00"]
    missing = pb.Mismatch(setl_id="H13010100055202611221000000002", kind="MISSING_ON_PLATFORM")
    assert reconcile._mismatches(pb.ReconcileDetailsResponse(mismatches=[missing]))[0].setl_time == ""
