"""What the console tells the desk, against a real registry: advice that fits the person's state,
and a 再次提交 refused because the sign-in ended or changed, which must not say that the form sent
first was not done (it may have been)."""

from __future__ import annotations

import asyncio
import html
import json
import re
import time
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from medaid.common.clock import FixedClock
from medaid.common.v1 import common_pb2 as cpb
from medaid.console.backend import Backend
from medaid.console.web import RESEND_TTL_S, Console, make_app, new_request_id
from medaid.registry.v1 import registry_pb2 as rpb
from support import RESIDENT, bind, credit, enroll, rid
from test_console_http import PERSON, console_on_a_dead_registry, operators_for_tests, signed_in


def findings(page: str) -> dict[str, str]:
    """The diagnosis page's findings: code → everything the desk reads for it."""
    return {code: re.sub(r"<[^>]+>", " ", body) for code, body in
            re.findall(r'<li data-code="([A-Z_]+)">(.*?)</li>', page, re.S)}


async def diagnosing(port: int, member: str, helpers: list[str]) -> list[tuple[int, str]]:
    console = Console(Backend({"11": f"127.0.0.1:{port}"}, ""), operators_for_tests(), b"s" * 32,
                      FixedClock(1_795_800_000_000))
    pages = []
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        for helper in helpers:
            resp = await client.post("/diagnose", data={"csrf": csrf, "member_ref": console.ref(member),
                                                        "helper": helper})
            pages.append((resp.status, await resp.text()))
    await console.backend.close()
    return pages


def test_the_desk_is_not_told_to_have_a_dead_helper_restore_their_insurance(start_registry: Any) -> None:
    beijing = start_registry("11")
    stub = beijing.stub
    place = dict(region="110000", division="110101")
    member = enroll(stub, itype=RESIDENT, birth="19500101", **place)
    helper, heir, suspended = enroll(stub, **place), enroll(stub, **place), enroll(stub, **place)
    credit(stub, helper, 3_000)
    bind(stub, helper, member)
    stub.RecordDeath(rpb.RecordDeathRequest(request_id=rid("death"), id_number=helper, heir_id_number=heir,
                                            heir_name="李四", date_of_death="20261120"))
    stub.UpdatePersonStatus(rpb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=suspended,
                                                          status=cpb.PERSON_STATUS_SUSPENDED))
    (dead_status, dead), (_, alive) = asyncio.run(diagnosing(beijing.port, member, [helper, suspended]))
    told = findings(dead)["HELPER_NOT_ACTIVE"]
    assert dead_status == 200 and "已死亡" in told and "恢复" not in told and "暂停" not in told, told
    assert "恢复正常参保" in findings(alive)["HELPER_NOT_ACTIVE"]


async def sending_again_after_the_sign_in_changed() -> list[tuple[int, str]]:
    """再次提交 (a form whose call got no answer, sent again under its request id) once the sign-in
    that drew it has ended, and once the operator has signed in again since."""
    console = console_on_a_dead_registry()
    seen = []
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        resend = {"csrf": csrf, "resend": "sealed-form"}
        await client.post("/logout", data={"csrf": csrf})
        resp = await client.post(f"/wallet/transfer?p={console.ref(PERSON)}", data=resend)
        seen.append((resp.status, await resp.text()))
        await signed_in(client)
        resp = await client.post(f"/wallet/transfer?p={console.ref(PERSON)}", data=resend)
        seen.append((resp.status, await resp.text()))
    await console.backend.close()
    return seen


def test_sending_again_after_the_sign_in_changed_does_not_say_the_first_was_not_done() -> None:
    for status, page in asyncio.run(sending_again_after_the_sign_in_changed()):
        said = re.search(r'id="page-error">([^<]*)<', page).group(1)
        assert status == 403 and "可能已经办理" in said and "没有办理" not in said, said
        assert "重新填写" not in said and PERSON not in page


async def sending_again_a_sealed_form(hours_sealed: float, hours_linked: float) -> tuple[int, str]:
    """再次提交 of a form sealed `hours_sealed` ago for the signed-in operator, whose page's link to the
    person was made `hours_linked` ago, sent from the current session."""
    console = console_on_a_dead_registry()
    now = int(time.time())
    link = console.fernet.encrypt_at_time(PERSON.encode(), now - int(hours_linked * 3600)).decode()
    path = f"/wallet/transfer?p={link}"
    body = json.dumps({"operator": "wang01", "path": path,
                       "fields": [["request_id", new_request_id()], ["amount", "10.00"]]}).encode()
    seal = console.fernet.encrypt_at_time(body, now - int(hours_sealed * 3600)).decode()
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        resp = await client.post(path, data={"csrf": csrf, "resend": seal})
        page = (resp.status, await resp.text())
        again = re.search(r'name="resend" value="([^"]+)"', page[1])
        if again:  # no answer again: sealed again, its references still judged as of the first sending
            resp = await client.post(path, data={"csrf": csrf, "resend": html.unescape(again.group(1))})
            page = (resp.status, await resp.text())
    await console.backend.close()
    return page


def test_a_sealed_form_is_judged_by_when_it_was_sent_and_lasts_a_day() -> None:
    """Its link to the person was good when the form was sent (7.5 hours after it was made): the form
    is sent again (the dead registry answers nothing: 503, 再次提交 again, and again), not refused as a
    stale link;
    a seal older than a day (RESEND_TTL_S) is refused, saying the first may have been done."""
    status, page = asyncio.run(sending_again_a_sealed_form(hours_sealed=1, hours_linked=8.5))
    assert status == 503 and 'id="resend-form"' in page, page
    status, page = asyncio.run(sending_again_a_sealed_form(hours_sealed=RESEND_TTL_S / 3600 + 0.5, hours_linked=9))
    said = re.search(r'id="page-error">([^<]*)<', page).group(1)
    assert status == 400 and "没有发出" in said and "可能已经办理" in said and "重新填写" not in said, said


async def sending_again_from_a_page_drawn_before_signing_in_again() -> tuple[str, str, int, str]:
    console = console_on_a_dead_registry()
    path = f"/wallet/transfer?p={console.ref(PERSON)}"
    seal = console.seal_form("wang01", path, [("request_id", new_request_id()), ("amount", "10.00")])
    async with TestClient(TestServer(make_app(console))) as client:
        old = await signed_in(client)
        await client.post("/logout", data={"csrf": old})
        new = await signed_in(client)
        resp = await client.post(path, data={"csrf": old, "resend": seal})
        page = await resp.text()
    await console.backend.close()
    return old, new, resp.status, page


def test_a_sealed_form_from_before_signing_in_again_is_offered_again_under_the_new_token() -> None:
    """The page of 再次提交 was drawn in the session before (its CSRF token is that session's): nothing
    is called, and the same operator is offered the same sealed form under the new session's token."""
    old, new, status, page = asyncio.run(sending_again_from_a_page_drawn_before_signing_in_again())
    form = re.search(r'<form method="post" action="([^"]+)" id="resend-form">(.*?)</form>', page, re.S)
    assert status == 200 and form is not None, page
    assert f'name="csrf" value="{new}"' in form.group(2) and old not in page
    assert html.unescape(form.group(1)).startswith("/wallet/transfer?p=") and PERSON not in page
