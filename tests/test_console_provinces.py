"""A 医保大厅 serves the people insured in its own provinces (docs/console.md, Operators): an operator
of a 河北 hall neither acts for nor reads the personal data of someone insured in 北京, on any page
or form, and the refusal writes nothing and is logged with the operator (id numbers masked). What
SPEC lets cross a province still does: a 河北 helper's diagnosis of a member insured in 北京 (原因四).
Real registries and the real wallet on loopback; the console in-process over HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from medaid.common.logs import JsonFormatter
from medaid.console import operators as ops
from medaid.console.backend import Backend
from medaid.console.web import Console, make_app, new_request_id
from medaid.gateway.reasons import with_detail, zh
from medaid.registry.v1 import registry_pb2 as rpb
from support import FACE, balance, credit, enroll

PASSWORD = "pass-word-1"


def operators(**provinces: list[str] | None) -> dict[str, ops.Operator]:
    """Operators by id, each serving the provinces given (None: the file names none)."""
    return ops.parse({op_id: {"name": "王晓", "role": "console", "password": ops.hash_password(PASSWORD, n=2 ** 10),
                              **({"provinces": p} if p is not None else {})} for op_id, p in provinces.items()})


async def signed_in(client: TestClient, operator: str) -> str:
    page = await (await client.get("/login")).text()
    token = re.search(r'id="login-form">\s*<input type="hidden" name="csrf" value="([0-9a-f]+)"', page).group(1)
    await client.post("/login", data={"csrf": token, "operator": operator, "password": PASSWORD})
    return re.search(r'name="csrf" value="([0-9a-f]+)"', await (await client.get("/")).text()).group(1)


def national_console(national: Any, ops_: dict[str, ops.Operator]) -> Console:
    backend = Backend({p: f"127.0.0.1:{r.port}" for p, r in national.registries.items()},
                      f"127.0.0.1:{national.wallet.port}")
    return Console(backend, ops_, b"s" * 32, national.clock)


async def a_hebei_hall(national: Any, beijing: str, beijing_kin: str, hebei: str) -> dict[str, Any]:
    console = national_console(national, operators(hb01=["130000"]))
    seen: dict[str, Any] = {}
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client, "hb01")
        found = await client.post("/lookup", data={"csrf": csrf, "id_number": beijing.lower()},
                                  allow_redirects=False)
        seen["lookup"] = (found.status, await found.text())
        ref = console.ref(beijing)  # a link to the person made anyhow: every page checks again
        for path in ("/person", "/bindings", "/records", "/records/print", "/wallet", "/family", "/premium"):
            resp = await client.get(f"{path}?p={ref}")
            seen[path] = (resp.status, await resp.text())
        rid = new_request_id()
        bind = await client.post(f"/bindings/bind?p={ref}", data={
            "csrf": csrf, "request_id": rid, "member": beijing_kin, "relation": "CHILD", "method": "face",
            "attestation": "face-001"})
        seen["bind"] = (bind.status, await bind.text(), rid)
        reveal = await client.post(f"/person/reveal?p={ref}", data={"csrf": csrf, "why": "本人要求",
                                                                     "request_id": new_request_id()})
        seen["reveal"] = (reveal.status, await reveal.text())
        # Diagnosis: the 河北 helper's of a member insured in 北京 is what the desk is for (原因四);
        # the 北京 helper's of a 河北 member is asked of 河北 (the helper is not insured there);
        # a pair both insured in 北京 is not this hall's.
        for name, member, helper in (("cross", beijing, hebei), ("reverse", hebei, beijing),
                                     ("beijing", beijing_kin, beijing)):
            resp = await client.post("/diagnose", data={"csrf": csrf, "member": member, "helper": helper})
            seen[f"diagnose-{name}"] = (resp.status, await resp.text())
        mine = await client.post("/lookup", data={"csrf": csrf, "id_number": hebei}, allow_redirects=False)
        seen["own"] = mine.status
    await console.backend.close()
    return seen


def test_an_operator_serves_only_the_people_insured_in_their_provinces(
        national: Any, caplog: pytest.LogCaptureFixture) -> None:
    beijing = enroll(national.registries["11"].stub, region="110000", division="110101", name="李四")
    beijing_kin = enroll(national.registries["11"].stub, region="110000", division="110101", birth="20050101")
    hebei = enroll(national.registries["13"].stub)
    credit(national.registries["11"].stub, beijing, 80_000)
    credit(national.registries["13"].stub, hebei, 50_000)
    with caplog.at_level(logging.INFO, logger="medaid.console"):
        seen = asyncio.run(a_hebei_hall(national, beijing, beijing_kin, hebei))
    text = with_detail(zh("OPERATOR_OUTSIDE_PROVINCE"), "本工号可办理:河北")  # the provinces after what was refused
    status, page = seen["lookup"]
    assert status == 403 and text in page and "OPERATOR_OUTSIDE_PROVINCE" in page and "本工号可办理:河北" in page
    for path in ("/person", "/bindings", "/records", "/records/print", "/wallet", "/family", "/premium", "bind",
                 "reveal"):
        status, page = seen[path][:2]
        assert status == 403, path
        assert text in page and "OPERATOR_OUTSIDE_PROVINCE" in page, path
        # Nothing of the person's: neither the number (in any form), nor the name, nor the balance.
        assert beijing not in page and beijing[-4:] not in page and "李" not in page and "800.00" not in page, path
        assert "再次提交" not in page, path  # nothing was called: nothing to send again
    # The refused bind wrote nothing.
    assert list(national.registries["11"].stub.ListBindings(
        rpb.ListBindingsRequest(id_number=beijing, include_ended=True)).as_helper) == []
    assert balance(national.registries["11"].stub, beijing) == 80_000
    status, page = seen["diagnose-cross"]
    assert status == 200 and "CROSS_PROVINCE" in page and "原因四" in page
    status, page = seen["diagnose-reverse"]
    assert status == 200 and "HELPER_NOT_INSURED" in page and "800.00" not in page
    status, page = seen["diagnose-beijing"]
    assert status == 422 and text in page
    assert seen["own"] == 303
    # Each refusal is logged with the operator and the people masked; no full number anywhere.
    lines = [JsonFormatter("console").format(r) for r in caplog.records if r.name == "medaid.console"]
    refused = [line for line in lines if '"outcome": "OPERATOR_OUTSIDE_PROVINCE"' in line]
    assert all('"operator": "hb01"' in line for line in refused)
    actions = {re.search(r'"action": "([^"]+)"', line).group(1) for line in refused}
    assert {"lookup", "/person", "/bindings", "/records", "/wallet", "/family", "/premium", "/bindings/bind",
            "diagnose"} <= actions
    assert any(f'"request_id": "{seen["bind"][2]}"' in line for line in refused)
    assert not [line for line in lines if beijing in line or beijing_kin in line]


async def unscoped(national: Any, hebei: str) -> tuple[dict[str, frozenset[str]], int, str]:
    console = national_console(national, operators(old01=None))
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client, "old01")
        resp = await client.post("/lookup", data={"csrf": csrf, "id_number": hebei}, allow_redirects=False)
        page = await resp.text()
    await console.backend.close()
    return console.unscoped(), resp.status, page


def test_an_operator_without_provinces_serves_nobody_where_the_console_reaches_several(national: Any) -> None:
    hebei = enroll(national.registries["13"].stub)
    listed, status, page = asyncio.run(unscoped(national, hebei))
    assert listed == {"old01": frozenset()}
    assert status == 403 and zh("OPERATOR_NO_PROVINCES") in page and "OPERATOR_NO_PROVINCES" in page


def test_the_provinces_an_operator_serves() -> None:
    op = operators(a=["13", "110000"], b=[], c=None)
    assert op["a"].provinces == {"13", "11"} and op["b"].provinces == frozenset() and op["c"].provinces is None
    assert ops.provinces_served(op["a"], ["13", "11", "35"]) == {"13", "11"}
    assert ops.provinces_served(op["b"], ["13"]) == frozenset()
    # Not set: the console's own province where it is in front of one; else nobody.
    assert ops.provinces_served(op["c"], ["13"]) == {"13"}
    assert ops.provinces_served(op["c"], ["13", "11"]) == frozenset()
    for bad in (["130100"], ["99"], ["1"], "13", [13]):
        with pytest.raises(ops.OperatorError, match="provinces"):
            operators(x=bad)  # type: ignore[arg-type]


def test_a_bind_for_a_person_of_the_operators_province_still_works(national: Any) -> None:
    helper = enroll(national.registries["13"].stub)
    member = enroll(national.registries["13"].stub, birth="19900101")

    async def binding() -> int:
        console = national_console(national, operators(hb01=["13"]))
        async with TestClient(TestServer(make_app(console))) as client:
            csrf = await signed_in(client, "hb01")
            resp = await client.post(f"/bindings/bind?p={console.ref(helper)}", data={
                "csrf": csrf, "request_id": new_request_id(), "member": member, "relation": "SPOUSE",
                "method": "face", "attestation": FACE.attestation_id})
            status = resp.status
        await console.backend.close()
        return status

    assert asyncio.run(binding()) == 200
    assert [b.member_id_number for b in national.registries["13"].stub.ListBindings(
        rpb.ListBindingsRequest(id_number=helper)).as_helper] == [member]


def test_the_console_names_at_start_each_operator_without_provinces(tmp_path: Any) -> None:
    from medaid.topology import start_service

    path = tmp_path / "operators.toml"
    ops.write_file(path, {"old01": ("王晓", "console", PASSWORD), "hb01": ("李娜", "console", PASSWORD)},
                   {"hb01": ["13"]})
    console = start_service("console", "medaid.console", [
        "--registries", "13=127.0.0.1:7001,11=127.0.0.1:7003", "--operators", str(path), "--metrics-port", "off"],
        env={"MEDAID_TLS_DIR": ""})
    try:
        lines = [json.loads(line) for line in console.log_lines]
    finally:
        console.stop()
    warned = [x for x in lines if x.get("msg") == "operator without provinces"]
    assert [(x["level"], x["operator"], x["serves"]) for x in warned] == [("warning", "old01", [])]


def test_a_province_that_is_no_province_stops_the_console_at_start(tmp_path: Any) -> None:
    path = tmp_path / "operators.toml"
    path.write_text('[operators.hb01]\nrole = "console"\nprovinces = ["130100"]\n'
                    f'password = "{ops.hash_password(PASSWORD, n=2 ** 10)}"\n', encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "medaid.console", "--registries", "13=127.0.0.1:7001",
                           "--operators", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "--operators (MEDAID_OPERATORS)" in done.stderr and "'130100' is not a province" in done.stderr


def test_a_would_pay_verdict_names_what_pays_in_the_provinces_model(national: Any) -> None:
    """SPEC §3b: in 甘肃 (POOLED_ACCOUNT) a member's 共济 is the family account, and Diagnose's balance
    is the family account's; the desk's verdict must not say the creator's personal account pays, nor
    show the family account's balance as the helper's. In 河北 (BIND_AND_DEDUCT) the helper's account pays."""
    from test_family import GS, create, invite
    gs, hb = national.registries["62"].stub, national.registries["13"].stub
    creator = enroll(gs, **GS)
    credit(gs, creator, 80_000)
    kid = enroll(gs, birth="20150101", **GS)
    invite(gs, create(gs, creator, initial_transfer_fen=12_300).family_id, creator, kid)
    helper, child = enroll(hb), enroll(hb, birth="20150101")
    credit(hb, helper, 45_600)
    from support import bind
    bind(hb, helper, child, verification=None)

    async def verdicts() -> list[str]:
        console = national_console(national, operators(op01=["620000", "130000"]))
        out = []
        async with TestClient(TestServer(make_app(console))) as client:
            csrf = await signed_in(client, "op01")
            for member, who in ((kid, creator), (child, helper)):
                resp = await client.post("/diagnose", data={"csrf": csrf, "member": member, "helper": who})
                page = await resp.text()
                out.append(re.search(r'id="verdict">([^<]*)<', page).group(1))
        await console.backend.close()
        return out

    pooled, bound = asyncio.run(verdicts())
    assert "家庭共济账户" in pooled and "个人账户支付" not in pooled and "123.00" in pooled, pooled
    assert "共济人个人账户" in bound and "456.00" in bound, bound
