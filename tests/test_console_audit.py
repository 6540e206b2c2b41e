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
from support import enroll
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
