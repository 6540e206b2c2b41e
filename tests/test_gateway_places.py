"""What a hospital system is told about the fields of its message, over real HTTP against a real
topology (redis-server, registries, wallet, router, gateway, each its own OS process): a field sent
as null is the field absent (a Java or C# client model writes an unset member so), every
refusal names the field it refuses by its place in the message, and a body in another charset than
it declares is told to declare its own.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from medaid.gateway import reasons
from support import credit, enroll
from test_gateway import (
    Answer,
    Env,
    _post_declared,
    data_1101,
    data_2207,
    envelope,
    family,
    gateway_env,
    money_keys,
    new_msgid,
    snapshot,
)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with gateway_env(provinces=("13", "11")) as e:
        yield e


def _with_null(message: dict[str, Any], path: str) -> dict[str, Any]:
    """`message` with the member at `path` (`input.data.psn_no`) sent as null."""
    out = copy.deepcopy(message)
    *parents, last = path.split(".")
    node = out
    for name in parents:
        node = node[name]
    node[last] = None
    return out


def _messages(child: str) -> dict[str, dict[str, Any]]:
    return {
        "1101": envelope("1101", data_1101(child)),
        "2207": envelope("2207", data_2207(child, "1.00")),
        "2208": envelope("2208", {"setl_id": new_msgid(), "mdtrt_id": "", "psn_no": child}),
        "2601": envelope("2601", {"psn_no": child, "omsgid": new_msgid(), "oinfno": "2207"}),
        "9002": envelope("9002", input_={"signOut": {"sign_no": "S" * 20, "opter_no": ""}}),
        "9102": envelope("9102", input_={"fsDownloadIn": {"file_qury_no": "F" * 30, "filename": ""}}),
    }


@pytest.mark.parametrize(("infno", "path"), [
    ("1101", "msgid"), ("1101", "infno"), ("1101", "fixmedins_code"), ("1101", "mdtrtarea_admvs"),
    ("1101", "input.data"),
    ("2207", "input.data.psn_no"), ("2207", "input.data.med_type"), ("2207", "input.data.medfee_sumamt"),
    ("2207", "input.data.acct_used_flag"),
    ("2208", "input.data.setl_id"), ("2208", "input.data.psn_no"),
    ("2601", "input.data.psn_no"), ("2601", "input.data.omsgid"), ("2601", "input.data.oinfno"),
    ("9002", "input.signOut"), ("9002", "input.signOut.sign_no"),
    ("9102", "input.fsDownloadIn.file_qury_no"),
])
def test_a_required_field_sent_as_null_is_told_missing(env: Env, infno: str, path: str):
    """A HIS whose model serialises an unset member as null is told the field is missing
    (MISSING_FIELD, naming its place), as when it leaves the member out, not that it should be a
    string; nothing is written."""
    _, child = family(env)
    message = _messages(child)[infno]
    before = snapshot(env.r)
    absent = copy.deepcopy(message)
    *parents, last = path.split(".")
    node = absent
    for name in parents:
        node = node[name]
    del node[last]
    told_absent = env.post(absent).refused("MISSING_FIELD")
    told_null = env.post(_with_null(message, path)).refused("MISSING_FIELD")
    assert told_null == told_absent, (told_null, told_absent)
    assert told_null == f"MISSING_FIELD: {reasons.REASON_ZH['MISSING_FIELD']}({path})", told_null
    assert snapshot(env.r) == before


def test_an_optional_field_sent_as_null_is_the_field_absent(env: Env):
    """Every optional field sent as null reads as absent: a 2207 whose optional members are all null
    settles as the same 2207 without them, and is the same message (its resend with the members
    left out is answered with the first answer)."""
    p = enroll(env.hebei, name="李四")
    credit(env.hebei, p, 10_000)
    data = data_2207(p, "10.00")
    optional = ("mdtrt_cert_type", "mdtrt_cert_no", "psn_setlway", "mdtrt_id", "chrg_bchno", "insutype",
                "invono", "mid_setl_flag", "fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt",
                "inscp_scp_amt", "psn_part_amt")
    nulls = {**data, **dict.fromkeys(optional)}
    msg = envelope("2207", nulls)
    msg.update(dict.fromkeys(("insuplc_admdvs", "fixmedins_name", "recer_sys_code", "dev_no", "sign_no",
                              "inf_time", "opter")))
    first = env.post(msg)
    assert first.ok()["setlinfo"]["acct_pay"] == 10
    without = {k: v for k, v in msg.items() if v is not None}
    without["input"] = {"data": {k: v for k, v in nulls.items() if v is not None}}
    assert env.post(without).raw == first.raw
    assert money_keys(env.r) and first.json["err_msg"] == ""


def test_every_transaction_names_a_refused_field_by_its_place_in_the_message(env: Env):
    """One rule, whichever transaction and whether the gateway or the router refuses: a field of the
    message's `input` is named by its place (`input.data.setl_id`), an envelope field by its own name
    (`insuplc_admdvs`), as 2207 and 1101 always named theirs. Nothing is written."""
    helper, child = family(env)
    bill = data_2207(child, "10.00")
    setl = env.post(envelope("2207", bill)).ok()["setlinfo"]
    query = envelope("1101", data_1101(child))
    env.post(query).ok()
    before = money_keys(env.r)
    cases = [
        (envelope("2208", {"setl_id": new_msgid(), "mdtrt_id": "", "psn_no": child}),
         "SETTLEMENT_NOT_FOUND", "(input.data.setl_id)"),
        (envelope("2208", {"setl_id": setl["setl_id"], "mdtrt_id": "MZ-OTHER", "psn_no": child}),
         "SETTLEMENT_NOT_FOUND", "(input.data.mdtrt_id)"),
        (envelope("2208", {"setl_id": setl["setl_id"], "mdtrt_id": "", "psn_no": helper}),
         "SETTLEMENT_NOT_FOUND", "(input.data.setl_id)"),
        (envelope("2208", {"setl_id": setl["setl_id"], "mdtrt_id": "", "psn_no": child}, insuplc="130200"),
         "INSURED_PLACE_MISMATCH", "(insuplc_admdvs)"),
        (envelope("2601", {"psn_no": child, "omsgid": query["msgid"], "oinfno": "2207"}),
         "ORIGINAL_MISMATCH", f"(input.data.omsgid {query['msgid']} 是 1101 交易,不是 2207)"),
        (envelope("5203", {"psn_no": "", "setl_id": "", "mdtrt_id": "x\x07"}),
         "INVALID_MDTRT_ID", "(input.data.mdtrt_id: "),
        (envelope("3201", {"stmt_begndate": "2026-11-22", "stmt_enddate": "2026-11-22", "setl_optins": "13010",
                           "medfee_sumamt": "0", "fixmedins_setl_cnt": 0}),
         "INVALID_ADMDVS", "(input.data.setl_optins)"),
    ]
    for message, code, where in cases:
        err = env.post(message).refused(code)
        context = err.removeprefix(f"{code}: {reasons.REASON_ZH[code]}")
        assert context.startswith(where), (message["infno"], err)
    assert money_keys(env.r) == before


def test_a_5203_and_a_2208_judge_a_contradicting_insured_place_alike(env: Env):
    """A 石家庄 hospital's 5203 and 2208 of a 唐山 patient's settlement naming 石家庄 (130100), 河北's
    own code or 北京 as the insured place: both refused INSURED_PLACE_MISMATCH naming the envelope's
    field, nothing written; with the settlement's place, or none, both are answered."""
    p = enroll(env.hebei, region="130200", division="130203")  # 唐山
    credit(env.hebei, p, 10_000)
    setl = env.post(envelope("2207", data_2207(p, "10.00"))).ok()["setlinfo"]
    before = snapshot(env.r)
    for place in ("130100", "130000", "110000"):
        for infno, data in (("5203", {"psn_no": p, "setl_id": setl["setl_id"], "mdtrt_id": ""}),
                            ("5203", {"psn_no": "", "setl_id": setl["setl_id"], "mdtrt_id": ""}),
                            ("5203", {"psn_no": p, "setl_id": "", "mdtrt_id": setl["mdtrt_id"]}),
                            ("2208", {"psn_no": p, "setl_id": setl["setl_id"], "mdtrt_id": ""})):
            err = env.post(envelope(infno, data, insuplc=place)).refused("INSURED_PLACE_MISMATCH")
            assert err.endswith("(insuplc_admdvs)") and p not in err, (infno, place, err)
    assert snapshot(env.r) == before
    for place in ("130200", ""):
        q = env.post(envelope("5203", {"psn_no": p, "setl_id": setl["setl_id"], "mdtrt_id": ""}, insuplc=place))
        assert q.ok()["setlinfo"]["setl_id"] == setl["setl_id"]
    r = env.post(envelope("2208", {"psn_no": p, "setl_id": setl["setl_id"], "mdtrt_id": ""}, insuplc="130200"))
    assert r.ok()["setlinfo"]["init_setl_id"] == setl["setl_id"]


@pytest.mark.parametrize("content_type", ["application/json;charset=utf-8", "application/json; charset=UTF8",
                                          "application/json; charset=ISO-8859-1"])
def test_a_gbk_body_declared_utf8_is_told_to_declare_its_charset(env: Env, content_type: str):
    """A HIS that writes its JSON in GBK (a Chinese Windows code page) but whose HTTP library declares
    UTF-8 is refused INVALID_JSON, and err_msg says what to do: the body is not UTF-8, declare
    charset=GBK (or send UTF-8), not only that the JSON is invalid; a body that is not JSON at all is
    not told about its charset. Nothing is written; declared GBK, the same bytes are read."""
    _, child = family(env)
    ask = json.dumps(envelope("1101", data_1101(child, "张小雨")), ensure_ascii=False).encode("gbk")
    before = snapshot(env.r)
    _, raw = _post_declared(env.url, ask, content_type)
    err = Answer(raw).refused("INVALID_JSON")
    assert err == (f"INVALID_JSON: {reasons.REASON_ZH['INVALID_JSON']}"
                   "(报文不是UTF-8编码:GBK编码的报文请在Content-Type中声明charset=GBK)"), err
    assert len(err) <= 200
    assert snapshot(env.r) == before
    _, raw = _post_declared(env.url, b'{"infno": "1101", "msgid": ', content_type)
    assert "charset" not in Answer(raw).refused("INVALID_JSON")
    _, raw = _post_declared(env.url, ask, "application/json; charset=GBK")
    assert Answer(raw.decode("gb18030").encode("utf-8")).ok()["baseinfo"]["psn_name"] == "张小雨"
