"""What the console tells the desk, against a real registry: advice that fits the person's state,
and a 再次提交 refused because the sign-in ended or changed, which must not say that the form sent
first was not done (it may have been)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from medaid.common.clock import FixedClock
from medaid.common.v1 import common_pb2 as cpb
from medaid.console.backend import Backend
from medaid.console.web import Console, make_app
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
