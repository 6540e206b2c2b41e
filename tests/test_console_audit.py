"""Every act of an operator's at the console leaves one `console action` line, refused ones too, with
the operator and a request id, nothing in it unmasked: against real registries, the console's log
captured as its JSON lines."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from medaid.common.clock import FixedClock
from medaid.common.logs import JsonFormatter
from medaid.console.backend import Backend
from medaid.console.web import Console, make_app, new_request_id
from medaid.registry.v1 import family_pb2 as fpb
from support import FACE, balance, credit, enroll, rid
from test_console_http import operators_for_tests, signed_in


def audit_lines(caplog: pytest.LogCaptureFixture) -> tuple[list[dict[str, Any]], list[str]]:
    """The `console action` lines, and every console line as written."""
    lines = [JsonFormatter("console").format(r) for r in caplog.records if r.name == "medaid.console"]
    return [o for o in map(json.loads, lines) if o["msg"] == "console action"], lines


async def refused_reads(registry_port: int, pid: str, slip: str) -> list[int]:
    console = Console(Backend({"13": f"127.0.0.1:{registry_port}"}, ""), operators_for_tests(), b"s" * 32,
                      FixedClock(1_795_800_000_000))
    statuses = []
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        for typed in (slip, "王建国"):  # a number with its check character wrong; a name typed instead
            statuses.append((await client.post("/lookup", data={"csrf": csrf, "id_number": typed})).status)
        resp = await client.post("/diagnose", data={"csrf": csrf, "member": pid, "helper": slip})
        statuses.append(resp.status)
        found = await client.post("/lookup", data={"csrf": csrf, "id_number": pid}, allow_redirects=False)
        records = str(found.headers["Location"]).replace("/person?", "/records?")
        statuses.append((await client.get(records + "&month=2026-3")).status)
        statuses.append((await client.get(records.replace("/records?", "/records/print?") + "&month=2026-3")).status)
        # A form sent with a link no console made (edited by hand): refused before anything is read.
        statuses.append((await client.post("/bindings/bind?p=not-a-reference", data={
            "csrf": csrf, "request_id": new_request_id(), "member": pid, "relation": "CHILD"})).status)
    await console.backend.close()
    return statuses


def test_every_refused_look_up_diagnosis_and_form_leaves_one_masked_audit_line(
        hebei: Any, caplog: pytest.LogCaptureFixture) -> None:
    pid = enroll(hebei.stub, name="王建国")
    slip = pid[:-1] + ("1" if pid[-1] != "1" else "2")
    with caplog.at_level(logging.INFO, logger="medaid.console"):
        assert asyncio.run(refused_reads(hebei.port, pid, slip)) == [422, 422, 422, 400, 400, 400]
    audit, lines = audit_lines(caplog)
    refused = [(o["action"], o["outcome"]) for o in audit if o["outcome"] != "OK"]
    assert refused == [("lookup", "INPUT_INVALID"), ("lookup", "INPUT_INVALID"), ("diagnose", "INPUT_INVALID"),
                       ("records", "INPUT_INVALID"), ("records_print", "INPUT_INVALID"),
                       ("/bindings/bind", "HTTP_400")], refused
    assert all(o["operator"] == "wang01" and o["request_id"].startswith("console-") for o in audit)
    assert not any(slip in x or pid in x or "建国" in x for x in lines)


async def family_forms_by_hand(registry_port: int, creator: str, family_id: str) -> list[tuple[int, str]]:
    console = Console(Backend({"35": f"127.0.0.1:{registry_port}"}, ""), operators_for_tests(), b"s" * 32,
                      FixedClock(1_795_800_000_000))
    out = []
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        found = await client.post("/lookup", data={"csrf": csrf, "id_number": creator}, allow_redirects=False)
        family = str(found.headers["Location"]).replace("/person?", "/family?")
        for action, fid in (("transfer", "王建国"), ("transfer", f"{family_id} {creator}"), ("dissolve", ""),
                            ("transfer", family_id)):
            resp = await client.post(family.replace("/family?", f"/family/{action}?"), data={
                "csrf": csrf, "request_id": new_request_id(), "family_id": fid, "amount": "1", "confirm": "1"})
            out.append((resp.status, await resp.text()))
    await console.backend.close()
    return out


def test_a_malformed_family_id_is_refused_at_the_console_and_never_logged(
        start_registry: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A family id the registries would never make (a name, an id number beside it, none) posted by a
    hand-made form: a Chinese 400 before anything is called, one audit line without it; the account's
    own still moves money."""
    fujian = start_registry("35")
    creator = enroll(fujian.stub, region="350100", division="350102")
    credit(fujian.stub, creator, 500_000)
    family_id = fujian.stub.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
        request_id=rid("create"), creator_id_number=creator, commitment=FACE)).account.family_id
    with caplog.at_level(logging.INFO, logger="medaid.console"):
        out = asyncio.run(family_forms_by_hand(fujian.port, creator, family_id))
    assert [s for s, _ in out] == [400, 400, 400, 200], [s for s, _ in out]
    assert all("家庭共济账户编号格式错误" in text for _, text in out[:3])
    audit, lines = audit_lines(caplog)
    acts = [(o["action"], o["outcome"]) for o in audit if o["action"] != "lookup"]
    assert acts == [("transfer", "INVALID_FAMILY_ID"), ("transfer", "INVALID_FAMILY_ID"),
                    ("dissolve", "INVALID_FAMILY_ID"), ("transfer", "OK")], acts
    assert not any("建国" in x or creator in x for x in lines)
    assert [o.get("family_id") for o in audit if o["action"] != "lookup"] == [None, None, None, family_id]
    account = fujian.stub.GetFamilyAccount(fpb.GetFamilyAccountRequest(id_number=creator)).account
    assert account.balance_fen == 100 and balance(fujian.stub, creator) == 500_000 - 100
