"""The 消费记录 page of a person who moved province, against real registries: the records of the
province they left stay there (SPEC §4, §5b), and the desk lists them beside the new province's."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from medaid.common.redis_server import free_port
from medaid.common.v1 import common_pb2 as cpb
from medaid.console.backend import Backend
from medaid.console.web import Console, make_app
from medaid.directory import Directory
from medaid.registry.v1 import registry_pb2 as rpb
from support import bind, credit, enroll, rid, settle
from test_console_forms import national_console
from test_console_http import operators_for_tests, signed_in


async def records_pages(console: Console, people: list[str]) -> list[str]:
    pages = []
    async with TestClient(TestServer(make_app(console))) as client:
        await signed_in(client)
        for pid in people:
            for path in ("/records", "/records/print"):
                pages.append(await (await client.get(f"{path}?p={console.ref(pid)}")).text())
    await console.backend.close()
    return pages


def rows_of(page: str) -> list[tuple[str, str]]:
    """(共济支付, 状态) of each row of the records table, without the province a row is kept in."""
    table = page[page.index('<table id="records-table">'):page.index("</table>")]
    return re.findall(r'<td class="num">([^<]*)</td><td>([^<]*)(?:<small class="kept-in">[^<]*</small>)?</td></tr>',
                      table)


def moved_member(national: Any) -> tuple[str, str]:
    """A 河北 member whose helper paid ¥70.00 of a bill, then moved to 北京 and is insured there."""
    r13, r11 = national.reg("13"), national.reg("11")
    member, helper = enroll(r13, birth="19600101"), enroll(r13, birth="19880101")
    credit(r13, helper, 10_000)
    bind(r13, helper, member, relation=cpb.RELATION_PARENT)
    assert settle(r13, member, 7_000).mulaid_pay_fen == 7_000
    r13.UpdatePersonStatus(rpb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=member,
                                                         status=cpb.PERSON_STATUS_TERMINATED, moved_to_province="11"))
    r11.EnrollPerson(rpb.EnrollPersonRequest(request_id=rid("enroll"), id_number=member, name="张三",
                                             insurance_type=cpb.INSURANCE_TYPE_EMPLOYEE, pooling_region="110000"))
    return member, helper


def test_a_moved_persons_records_list_those_their_old_province_keeps(national: Any) -> None:
    """The member moved to 北京 after their helper paid in 河北: their 消费记录 (found in 北京) lists the
    record 河北 keeps, marked as kept there, on the screen and on the printed sheet, as the helper's does."""
    member, helper = moved_member(national)
    pages = asyncio.run(records_pages(national_console(national), [member, helper]))
    for page in pages:
        assert rows_of(page) == [("¥70.00", "已结算")], page
        assert "共济支付合计 ¥70.00" in page, page
    assert all("(记录在河北 (13))</small>" in page for page in pages[:2]), pages[:2]
    assert not any("记录在" in page for page in pages[2:]), pages[2:]  # the helper is insured where it is kept


def test_a_moved_persons_records_follow_the_directory(national: Any, redis_server: Any) -> None:
    """A console that finds people by the national person directory, as deployed, lists them too; a
    registry that does not answer is named under the table, the others' records still listed."""
    member, _ = moved_member(national)

    async def pages() -> list[str]:
        client = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
        addresses = {p: f"127.0.0.1:{r.port}" for p, r in national.registries.items()}
        console = Console(Backend({**addresses, "62": f"127.0.0.1:{free_port()}"}, f"127.0.0.1:{national.wallet.port}",
                                  deadline_s=1.0, directory=Directory(client)),
                          operators_for_tests(), b"s" * 32, national.clock)
        try:
            return await records_pages(console, [member])
        finally:
            await client.aclose()

    for page in asyncio.run(pages()):
        assert rows_of(page) == [("¥70.00", "已结算")], page
        assert "暂时无应答" in page and "甘肃 (62)" in page, page
