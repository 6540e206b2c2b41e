"""The gateway's published contract held against its real answers, as a hospital-system vendor holds it.

Vendors generate their client from the OpenAPI document the gateway serves (/openapi.json) and
validate every answer against it. Here, over real HTTP against a real topology: the document is a
valid OpenAPI 3.1 document whose schemas are valid JSON Schema 2020-12; every transaction's real
answers, success and each kind of refusal, validate against the document's response schema (the
envelope, and the output of that transaction or of a refusal); amounts are JSON numbers with two
decimals, as the document says; every example the document and docs/gateway-reference.md give is
a request the document accepts and the gateway reads; 9101 / 9102 round-trip a file byte for byte.
"""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from medaid.gateway import files, openapi
from medaid.topology import GATEWAY_PATH
from support import RESIDENT, bind, credit, enroll
from test_gateway import NOBODY, Answer, Env, body_of, envelope, gateway_env, new_msgid, post_raw

DOCS = Path(__file__).resolve().parents[1] / "docs"
HOSPITAL = "H13010100001"


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with gateway_env() as e:
        yield e


@pytest.fixture(scope="module")
def doc(env: Env) -> dict[str, Any]:
    """The document as the gateway serves it (what a vendor's generator reads)."""
    with urllib.request.urlopen(f"http://{env.topo.address('gateway')}/openapi.json", timeout=10) as resp:
        return dict(json.loads(resp.read()))


def schema_of(doc: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    """A validator of components.schemas[name], its $refs resolved in the document."""
    return jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": doc["components"]})


def errors(validator: jsonschema.Draft202012Validator, instance: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in validator.iter_errors(instance)]


_OUTPUT = {infno: out.__name__ for infno, (_, _, out) in openapi.TRANSACTIONS.items()}
_AMOUNT = re.compile(r'"([a-z_]+)":(-?[0-9]+(?:\.[0-9]+)?)')


def check_answer(doc: dict[str, Any], infno: str, a: Answer) -> None:
    """`a` as the document declares it: the envelope, its output as this transaction's (or a refusal's),
    and every amount a JSON number with exactly two decimals (a ratio four)."""
    raw = json.loads(a.text)
    assert not errors(schema_of(doc, "ResponseEnvelope"), raw), (infno, errors(schema_of(doc, "ResponseEnvelope"), raw))
    out = _OUTPUT[infno] if a.infcode == 0 else "_RefusalOutput"
    assert a.infcode in (0, -1)
    problems = errors(schema_of(doc, out), raw["output"])
    assert not problems, (infno, out, problems, a.text[:600])
    props = {n: p for s in doc["components"]["schemas"].values() for n, p in s.get("properties", {}).items()
             if p.get("type") == "number"}
    for name, digits in _AMOUNT.findall(a.text):
        if name in props:
            places = 4 if name == "pool_prop_selfpay" else 2
            assert re.fullmatch(rf"-?[0-9]+\.[0-9]{{{places}}}", digits), (infno, name, digits)


def test_the_document_is_valid_openapi_3_1(doc: dict[str, Any]):
    """The structure OpenAPI 3.1 requires, every schema valid JSON Schema 2020-12, every $ref resolving,
    and every `default` and example an instance of its own schema (generators write defaults into code)."""
    assert doc["openapi"].startswith("3.1.") and doc["info"]["title"] and doc["info"]["version"]
    op = doc["paths"][GATEWAY_PATH]["post"]
    assert op["operationId"] == "callService" and set(op["responses"]) == {"200"}
    schemas = doc["components"]["schemas"]
    for schema in schemas.values():
        jsonschema.Draft202012Validator.check_schema(schema)
    text = json.dumps(doc)
    for ref in set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', text)):
        assert ref in schemas, ref

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if "default" in node and isinstance(node.get("type") or node.get("anyOf"), str | list):
                probe = {k: v for k, v in node.items() if k not in ("default", "description", "examples")}
                probe["components"] = doc["components"]
                assert jsonschema.Draft202012Validator(probe).is_valid(node["default"]), (where, node)
            for k, v in node.items():
                walk(v, f"{where}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}/{i}")

    walk(schemas, "#/components/schemas")
    request = schema_of(doc, "Request")
    for infno, ex in op["requestBody"]["content"]["application/json"]["examples"].items():
        assert not errors(request, ex["value"]), (infno, errors(request, ex["value"]))


def _statement(**change: Any) -> dict[str, Any]:
    return {"insutype": "310", "clr_type": "11", "setl_optins": "130100", "stmt_begndate": "2026-11-22",
            "stmt_enddate": "2026-11-22", "medfee_sumamt": "0.00", "fund_pay_sumamt": "0.00", "acct_pay": "0.00",
            "fixmedins_setl_cnt": 0, "refd_setl_flag": "1", **change}


def _download(e: Env, message: dict[str, Any]) -> tuple[str, bytes]:
    req = urllib.request.Request(e.url, data=body_of(message), method="POST",
                                 headers={"Content-Type": "application/json;charset=utf-8"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200
        return resp.headers["Content-Type"], resp.read()


def test_every_transactions_answers_validate_against_the_document(env: Env, doc: dict[str, Any]):
    """Success and each kind of refusal of every transaction, as the gateway answers them."""
    seen: dict[str, set[int]] = {}

    def post(infno: str, message: dict[str, Any]) -> Answer:
        a = env.post(message)
        check_answer(doc, infno, a)
        seen.setdefault(infno, set()).add(a.infcode)
        return a

    helper = enroll(env.hebei, name="张伟")
    credit(env.hebei, helper, 30_000)
    child = enroll(env.hebei, itype=RESIDENT, birth="20160101", name="张小雨")
    bind(env.hebei, helper, child)
    own = enroll(env.hebei, name="李强")
    credit(env.hebei, own, 5_000)
    nobody = NOBODY

    # 9001
    sign = post("9001", envelope("9001", input_={"signIn": {"opter_no": "0001", "mac": "", "ip": ""}})).ok()
    post("9001", envelope("9001", input_={"signIn": {"opter_no": "0" * 31}})).refused("INVALID_FIELD")
    post("9001", envelope("9001", input_={})).refused("MISSING_FIELD")
    assert sign["signinoutb"]["sign_no"]
    # 1101
    for pid in (child, helper):
        post("1101", envelope("1101", {"mdtrt_cert_type": "02", "mdtrt_cert_no": pid, "psn_cert_type": "01",
                                       "certno": pid, "psn_name": ""})).ok()
    post("1101", envelope("1101", {"mdtrt_cert_type": "02", "mdtrt_cert_no": nobody, "certno": nobody,
                                   "psn_cert_type": "01"})).refused("PERSON_NOT_FOUND")
    post("1101", envelope("1101", {"mdtrt_cert_type": "03", "mdtrt_cert_no": "SSC1", "certno": ""})).refused(
        "UNSUPPORTED_CERT_TYPE")
    post("1101", envelope("1101", {"mdtrt_cert_type": "02", "mdtrt_cert_no": child, "certno": child,
                                   "psn_cert_type": "01", "psn_name": "李四"})).refused("NAME_MISMATCH")

    def data_2207(pid: str, amount: Any, **extra: Any) -> dict[str, Any]:
        return {"psn_no": pid, "mdtrt_cert_type": "02", "mdtrt_cert_no": pid, "med_type": "11",
                "medfee_sumamt": amount, "psn_setlway": "01", "mdtrt_id": "MZ" + new_msgid()[-12:],
                "chrg_bchno": "CB1", "insutype": "310", "acct_used_flag": "1", **extra}

    # 2206 / 2207
    post("2206", envelope("2206", data_2207(child, "12.50"))).ok()
    post("2206", envelope("2206", data_2207(child, "12.505"))).refused("INVALID_AMOUNT")
    paid = envelope("2207", data_2207(child, "128.50"))
    s = post("2207", paid).ok()["setlinfo"]
    mine = envelope("2207", data_2207(own, Decimal("80.00"), psn_part_amt="60.00"))
    s2 = post("2207", mine).ok()["setlinfo"]
    assert s2["psn_cash_pay"] == Decimal("10.00")
    post("2207", envelope("2207", data_2207(child, "-1.00"))).refused("INVALID_AMOUNT")
    post("2207", envelope("2207", data_2207(nobody, "1.00"))).refused("PERSON_NOT_FOUND")
    post("2207", envelope("2207", data_2207(child, "1.00", mdtrt_cert_no=own))).refused("CERT_NO_MISMATCH")
    post("2207", envelope("2207", data_2207(child, "1.00", med_type="99"))).refused("UNSUPPORTED_MED_TYPE")
    post("2207", {**paid, "input": {"data": data_2207(child, "1.00")}}).refused("IDEMPOTENCY_KEY_REUSED")
    # 5203, 2208, 2601
    post("5203", envelope("5203", {"psn_no": child, "setl_id": s["setl_id"], "mdtrt_id": ""})).ok()
    post("5203", envelope("5203", {"psn_no": child, "setl_id": "X" * 30, "mdtrt_id": ""})).refused(
        "SETTLEMENT_NOT_FOUND")
    rev = envelope("2208", {"setl_id": s["setl_id"], "mdtrt_id": s["mdtrt_id"], "psn_no": child})
    r = post("2208", rev).ok()["setlinfo"]
    assert r["acct_mulaid_pay"] == -s["acct_mulaid_pay"]
    assert post("2208", envelope("2208", {"setl_id": s["setl_id"], "mdtrt_id": "", "psn_no": own})).infcode == -1
    assert post("2208", envelope("2208", {"setl_id": "Y" * 30, "psn_no": child})).infcode == -1
    post("5203", envelope("5203", {"psn_no": child, "setl_id": r["setl_id"], "mdtrt_id": ""})).ok()
    post("2601", envelope("2601", {"psn_no": child, "omsgid": rev["msgid"], "oinfno": "2208"})).ok()
    post("2601", envelope("2601", {"psn_no": own, "omsgid": mine["msgid"], "oinfno": "2207"})).ok()
    post("2601", envelope("2601", {"psn_no": own, "omsgid": "Z" * 30, "oinfno": "2207"}))  # nothing to undo
    assert post("2601", envelope("2601", {"psn_no": own, "omsgid": mine["msgid"], "oinfno": "2206"})).infcode == -1
    # 3201 / 3202
    post("3201", envelope("3201", _statement())).ok()
    post("3201", envelope("3201", _statement(medfee_sumamt="208.50", fixmedins_setl_cnt=2))).ok()
    post("3201", envelope("3201", _statement(stmt_begndate="2026-13-01"))).refused("INVALID_STMT_DATE")
    row = {"setl_id": s["setl_id"], "medfee_sumamt": "128.50", "acct_pay": "0.00", "refd_setl_flag": "0"}
    post("3202", envelope("3202", input_={"data": _statement(), "detail": [row]})).ok()
    post("3202", envelope("3202", input_={"data": _statement()})).refused("MISSING_FIELD")
    # 9101 / 9102
    text = f"{s['setl_id']}\t{s['mdtrt_id']}\t{child}\t128.50\t0.00\t0.00\t0\n".encode()
    up = post("9101", envelope("9101", input_={"fsUploadIn": {"in": base64.b64encode(text).decode(),
                                                              "filename": "明细.txt", "fixmedins_code": HOSPITAL}}))
    fileinfo = up.ok()
    post("9101", envelope("9101", input_={"fsUploadIn": {"in": "AA==", "filename": "../x"}})).refused(
        "INVALID_FILENAME")
    post("9101", envelope("9101", input_={"fsUploadIn": {"in": "@@", "filename": "x"}})).refused("INVALID_FILE")
    result = post("3202", envelope("3202", input_={"data": _statement(file_qury_no=fileinfo["file_qury_no"])})).ok()
    post("9102", envelope("9102", input_={"fsDownloadIn": {"file_qury_no": "0" * 30}})).refused("FILE_NOT_FOUND")
    ctype, body = _download(env, envelope("9102", input_={"fsDownloadIn": {
        "file_qury_no": result["fileinfo"]["file_qury_no"], "filename": "", "fixmedins_code": "plc"}}))
    assert ctype == "application/octet-stream" and body[:2] == b"PK"
    # Envelope refusals (any infno): not JSON, a wrong msgid, an unknown infno.
    for raw in (b"{", body_of({**envelope("1101", {}), "msgid": "short"}), body_of(envelope("1234", {}))):
        a = post_raw(env.url, raw)
        assert a.infcode == -1
        assert not errors(schema_of(doc, "ResponseEnvelope"), json.loads(a.text))
        assert not errors(schema_of(doc, "_RefusalOutput"), json.loads(a.text)["output"])
    assert all(seen[i] == {0, -1} for i in ("9001", "1101", "2206", "2207", "2208", "2601", "5203", "3201", "3202",
                                             "9101")), seen


def _reference_examples() -> list[dict[str, Any]]:
    """The messages docs/gateway-reference.md sends with curl (`-d '{…}'`), as written."""
    text = (DOCS / "gateway-reference.md").read_text(encoding="utf-8")
    return [json.loads(body) for body in re.findall(r"-d '(\{.*?\})'", text, flags=re.S)]


def test_the_documented_examples_are_requests_the_document_and_the_gateway_accept(env: Env, doc: dict[str, Any]):
    """Each example of the document and of the reference, sent as written: the document's Request schema
    accepts it and the gateway reads it (whatever the business answer, no refusal of its shape), and its
    answer validates against the document."""
    shape = {"INVALID_JSON", "INVALID_ENVELOPE", "MISSING_FIELD", "INVALID_FIELD", "INVALID_INPUT", "INVALID_AMOUNT",
             "INVALID_MSGID", "INVALID_FILE", "INVALID_FILENAME", "INVALID_STMT_DATE", "INVALID_DETAIL"}
    examples = doc["paths"][GATEWAY_PATH]["post"]["requestBody"]["content"]["application/json"]["examples"]
    messages = [ex["value"] for ex in examples.values()] + _reference_examples()
    assert len(messages) == len(examples) + 2
    request = schema_of(doc, "Request")
    for message in messages:
        assert not errors(request, message), (message["infno"], errors(request, message))
        a = post_raw(env.url, json.dumps(message, ensure_ascii=False).encode("utf-8"))
        if message["infno"] == "9102" and a.infcode == 0:
            continue
        check_answer(doc, message["infno"], a)
        assert a.infcode == 0 or a.output["medaid_ext"]["reason"] not in shape, (message["infno"], a.err_msg)


# --- 9101 / 9102 as a vendor's file client uses them ------------------------------------------------------


def _upload(e: Env, data: Any, filename: str, inst: str = HOSPITAL) -> Answer:
    value = base64.b64encode(data).decode() if isinstance(data, bytes) else data
    return e.post(envelope("9101", fixmedins=inst, input_={"fsUploadIn": {"in": value, "filename": filename,
                                                                          "fixmedins_code": inst}}))


def _fetch(e: Env, file_qury_no: str, inst: str = HOSPITAL) -> tuple[str, str, bytes]:
    ctype, body = _download(e, envelope("9102", fixmedins=inst, input_={"fsDownloadIn": {
        "file_qury_no": file_qury_no, "filename": "", "fixmedins_code": "plc"}}))
    return ctype, body.decode("utf-8") if ctype.startswith("application/json") else "", body


def test_a_file_round_trips_byte_for_byte(env: Env, doc: dict[str, Any]):
    """GBK and UTF-8 text, every byte value, a file of the largest size: 9102 answers the bytes 9101 took,
    named as uploaded (a Chinese name too), until dld_endtime (the file's key lives exactly that long)."""
    gbk = "张三\t李四\t128.50\r\n".encode("gbk")
    samples = [(gbk, "明细.txt"), ("张三\t李四\n".encode(), "utf8.txt"), (bytes(range(256)) * 64, "all.bin"),
               (b"\x00" * files.MAX_FILE_BYTES, "max.zip"), (b"x", "a..b.txt"),
               (b"y", "11月\u3000明细.txt")]  # a full-width space, as a Chinese desktop names a file
    for data, name in samples:
        a = _upload(env, data, name)
        check_answer(doc, "9101", a)
        out = a.ok()
        assert out["filename"] == name
        ctype, _, body = _fetch(env, out["file_qury_no"])
        assert ctype == "application/octet-stream" and body == data, name
        assert re.fullmatch(r"2026-11-24 10:0[0-9]:[0-9]{2}", out["dld_endtime"])  # now + file_ttl_s (two days)
        assert 172_700 < env.r.ttl(files.file_key(out["file_qury_no"])) <= 172_800
    # The same bytes as a Java byte array (signed) are the same file.
    out = _upload(env, [b - 256 if b > 127 else b for b in gbk], "java.txt").ok()
    assert _fetch(env, out["file_qury_no"])[2] == gbk


def test_file_refusals_answer_the_envelope_and_write_nothing(env: Env, doc: dict[str, Any]):
    """An empty or oversized file, a name that is a path, names a directory or hides characters, an
    unknown, another institution's or an expired file_qury_no: the refusal envelope, no file written,
    and no part of another institution's file in the answer."""
    before = set(env.r.scan_iter(match="gw:{file:*"))
    for data, name, code in ((b"", "e.txt", "INVALID_FILE"),
                             (b"x" * (files.MAX_FILE_BYTES + 1), "big.zip", "FILE_TOO_LARGE"),
                             (b"x", "../d.zip", "INVALID_FILENAME"), (b"x", "..\\d.zip", "INVALID_FILENAME"),
                             (b"x", "/etc/passwd", "INVALID_FILENAME"), (b"x", "..", "INVALID_FILENAME"),
                             (b"x", ".", "INVALID_FILENAME"), (b"x", "明细\u202etxt.exe", "INVALID_FILENAME"),
                             (b"x", "d\u200b.zip", "INVALID_FILENAME"), (b"x", "d\x85.zip", "INVALID_FILENAME"),
                             (b"x", "x" * 201, "INVALID_FILENAME")):
        a = _upload(env, data, name)
        check_answer(doc, "9101", a)
        a.refused(code)
    a = post_raw(env.url, body_of(envelope("9101", input_={"fsUploadIn": {
        "in": base64.b64encode(b"x" * 5 * 1024 * 1024).decode(), "filename": "5mb.zip"}})))
    a.refused("REQUEST_TOO_LARGE")
    assert set(env.r.scan_iter(match="gw:{file:*")) == before

    secret = "院内明细 130102198001011234".encode()
    no = _upload(env, secret, "ours.txt").ok()["file_qury_no"]
    for file_qury_no, inst in ((no, "H11010500001"), ("0" * 30, HOSPITAL), ("../" + no, HOSPITAL)):
        ctype, text, body = _fetch(env, file_qury_no, inst)
        assert ctype.startswith("application/json"), body[:100]
        a = Answer(body)
        a.refused("FILE_NOT_FOUND")
        check_answer(doc, "9102", a)
        assert "ours.txt" not in text and "院内明细" not in text and "130102198001011234" not in text
    env.r.pexpire(files.file_key(no), 1)  # past dld_endtime
    time.sleep(0.05)
    Answer(_fetch(env, no)[2]).refused("FILE_NOT_FOUND")


def test_every_field_of_the_document_is_named_in_chinese(doc: dict[str, Any]):
    """A vendor reads the generated model's comments: every property says in Chinese what it is, an amount
    by its national name (医疗费总额, 个人账户支出 …) and not only how amounts are written."""
    cjk = re.compile(r"[\u4e00-\u9fff]")
    generic = {"金额(元),两位小数的JSON数字", "比例,四位小数的JSON数字", "金额(元),可为空",
               "金额(元),字符串或数字,精确到分(两位以后的小数只能是0)", "合计金额(元),可为空,可为负(含退费冲减)",
               "合计金额(元),字符串或数字,精确到分,可为负(含退费冲减)"}
    missing = [f"{name}.{prop}: {p.get('description', '')!r}"
               for name, schema in doc["components"]["schemas"].items()
               for prop, p in schema.get("properties", {}).items()
               if not cjk.search(p.get("description", "")) or p.get("description") in generic]
    assert not missing, missing
    setl = doc["components"]["schemas"]["SetlInfoOut"]["properties"]
    assert setl["acct_pay"]["description"].startswith("个人账户支出")
    assert "两位小数" in setl["acct_pay"]["description"]
    assert doc["components"]["schemas"]["Data2207"]["properties"]["medfee_sumamt"]["description"].startswith(
        "医疗费总额")


def test_every_field_an_answer_always_carries_is_declared_required(doc: dict[str, Any]):
    """Answers carry every field of their schema (the fund fields at 0.00 too: a Java HIS reading
    `map.get(name).toString()` stops at a missing one), so a generated client may type none as optional."""
    schemas = doc["components"]["schemas"]
    answer = {ref for ref in re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(
        {k: v for k, v in schemas.items() if k.startswith(("Output", "_Refusal", "ResponseEnvelope"))}))}
    seen: set[str] = set()
    while answer - seen:
        name = (answer - seen).pop()
        seen.add(name)
        answer |= set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(schemas[name])))
    loose = {name: sorted(set(schemas[name]["properties"]) - set(schemas[name].get("required", [])))
             for name in seen | {k for k in schemas if k.startswith("Output")}}
    assert not {k: v for k, v in loose.items() if v}, loose


def test_the_document_accepts_the_number_forms_the_gateway_reads(env: Env, doc: dict[str, Any]):
    """docs/gateway-reference.md promises that dictionary codes and flags may come as JSON numbers, as
    client models typing them as numbers write them (the C# MZJS2207A's `int med_type`, `acct_used_flag`
    1 / 0, `mdtrt_cert_type` 2): the gateway settles such a message, so the document a vendor validates
    its messages against must accept it too."""
    helper = enroll(env.hebei, name="张伟")
    credit(env.hebei, helper, 10_000)
    request = schema_of(doc, "Request")
    messages = [
        envelope("1101", {"mdtrt_cert_type": 2, "mdtrt_cert_no": helper, "psn_cert_type": 1, "certno": helper}),
        envelope("2207", {"psn_no": helper, "mdtrt_cert_type": 2, "mdtrt_cert_no": helper, "med_type": 11,
                          "medfee_sumamt": Decimal("1.00"), "insutype": 310, "acct_used_flag": 1,
                          "mdtrt_id": "MZ-NUMBERS-1"}, insuplc="130100"),
        envelope("3201", {"stmt_begndate": "2026-11-22", "stmt_enddate": "2026-11-22", "insutype": 310,
                          "clr_type": 11, "medfee_sumamt": 0, "fixmedins_setl_cnt": 0, "refd_setl_flag": 0}),
    ]
    for message in messages:
        assert post_raw(env.url, body_of(message)).infcode == 0, message["infno"]
        plain = json.loads(body_of(message))
        assert not errors(request, plain), (message["infno"], errors(request, plain))
