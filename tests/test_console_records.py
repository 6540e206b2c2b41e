"""The 消费记录 page of a person who moved province, against real registries: the records of the
province they left stay there (SPEC §4, §5b), and the desk lists them beside the new province's."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from medaid.common.idnumber import mask
from medaid.common.logs import JsonFormatter
from medaid.common.v1 import common_pb2 as cpb
from medaid.console import pages_person, rules
from medaid.console.backend import Backend
from medaid.console.web import Console, make_app
from medaid.directory import Directory
from medaid.registry.v1 import registry_pb2 as rpb
from support import bind, credit, dead_port, enroll, rid, settle
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
    for page in pages[:2]:  # the member's: paid for them
        assert "作为共济人支付合计 ¥0.00,作为被共济人受共济合计 ¥70.00" in page, page
    for page in pages[2:]:  # the helper's: paid by them
        assert "作为共济人支付合计 ¥70.00,作为被共济人受共济合计 ¥0.00" in page, page
    assert all("(记录在河北 (13))</small>" in page for page in pages[:2]), pages[:2]
    assert not any("记录在" in page for page in pages[2:]), pages[2:]  # the helper is insured where it is kept


async def pages_with_gansu_down(national: Any, redis_server: Any,
                                pages: Callable[[Console, list[str]], Awaitable[list[str]]], pid: str) -> list[str]:
    """`pages` of `pid` from a console that finds people by the national person directory, as deployed,
    with 甘肃's registry not answering."""
    client = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
    addresses = {p: f"127.0.0.1:{r.port}" for p, r in national.registries.items()}
    console = Console(Backend({**addresses, "62": f"127.0.0.1:{dead_port()}"}, f"127.0.0.1:{national.wallet.port}",
                              deadline_s=1.0, directory=Directory(client)),
                      operators_for_tests(), b"s" * 32, national.clock)
    try:
        return await pages(console, [pid])
    finally:
        await client.aclose()


def test_a_moved_persons_records_follow_the_directory(national: Any, redis_server: Any) -> None:
    """A console that finds people by the national person directory, as deployed, lists them too; a
    registry that does not answer is named under the table, the others' records still listed."""
    member, _ = moved_member(national)

    for page in asyncio.run(pages_with_gansu_down(national, redis_server, records_pages, member)):
        assert rows_of(page) == [("¥70.00", "已结算")], page
        assert "暂时无应答" in page and "甘肃 (62)" in page, page


async def person_pages(console: Console, people: list[str]) -> list[str]:
    pages = []
    async with TestClient(TestServer(make_app(console))) as client:
        await signed_in(client)
        for pid in people:
            pages.append(await (await client.get(f"/person?p={console.ref(pid)}")).text())
    await console.backend.close()
    return pages


def kept_accounts(page: str) -> list[tuple[str, str, str]]:
    """(where, 参保状态, 个人账户余额) of each row of the person page's table of accounts kept elsewhere."""
    table = page[page.index('<table id="accounts-elsewhere">'):]
    table = table[:table.index("</table>")]
    return re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td><td class=\"num\">([^<]*)</td></tr>", table)


def test_a_moved_persons_page_shows_the_account_their_old_province_keeps(national: Any) -> None:
    """The member moved to 北京 with ¥12.34 left in their 河北 personal account (the old province keeps
    it, SPEC §5b): their page, found in 北京, shows 北京's account and, apart, the 河北 one with its
    balance, so the desk can tell them where that money is; a person insured in one province only has
    no such table."""
    r13, r11 = national.reg("13"), national.reg("11")
    member, helper = enroll(r13, birth="19600101"), enroll(r13, birth="19880101")
    credit(r13, member, 1_234)
    r13.UpdatePersonStatus(rpb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=member,
                                                         status=cpb.PERSON_STATUS_TERMINATED, moved_to_province="11"))
    r11.EnrollPerson(rpb.EnrollPersonRequest(request_id=rid("enroll"), id_number=member, name="张三",
                                             insurance_type=cpb.INSURANCE_TYPE_EMPLOYEE, pooling_region="110000"))
    old = r13.GetPerson(rpb.GetPersonRequest(id_number=member)).person
    assert old.balance_fen == 1_234 and old.status == cpb.PERSON_STATUS_TERMINATED
    mine, helpers = asyncio.run(person_pages(national_console(national), [member, helper]))
    assert 'id="balance">¥0.00<' in mine and 'id="region">北京 (110000)<' in mine, mine
    assert kept_accounts(mine) == [("河北 (13)", "终止参保(已转往 北京 (11))", "¥12.34")], mine
    assert 'id="accounts-elsewhere"' not in helpers, helpers


def test_a_person_page_names_a_registry_that_does_not_answer_under_the_accounts_kept_elsewhere(
        national: Any, redis_server: Any) -> None:
    """A console that finds people by the directory, 甘肃's registry down: the moved member's page is
    served from 北京 with 河北's account listed, and says 甘肃 was not asked in vain."""
    member, _ = moved_member(national)

    page, = asyncio.run(pages_with_gansu_down(national, redis_server, person_pages, member))
    assert 'id="region">北京 (110000)<' in page, page
    assert kept_accounts(page) == [("河北 (13)", "终止参保(已转往 北京 (11))", "¥0.00")], page
    assert "其中可能保留的个人账户未能列出:甘肃 (62)" in page, page


def many_records(hebei: Any, n: int) -> str:
    """A member whose helper paid ¥0.01 of each of n bills."""
    member, helper = enroll(hebei.stub, birth="19600101"), enroll(hebei.stub, birth="19880101")
    credit(hebei.stub, helper, 100_000)
    bind(hebei.stub, helper, member, relation=cpb.RELATION_PARENT)
    for _ in range(n):
        assert settle(hebei.stub, member, 1).mulaid_pay_fen == 1
    return member


def caption_of(page: str) -> str:
    return re.search(r"<caption>([^<]*)</caption>", page).group(1)  # type: ignore[union-attr]


def test_a_list_longer_than_a_registry_answers_at_once_is_listed_whole(hebei: Any) -> None:
    """A registry answers at most 500 records a page. A member with 501 共济 records: the page and the
    printed sheet list all 501 (the console asks for the next page), their sum the total, not cut."""
    member = many_records(hebei, 501)
    console = Console(Backend({"13": f"127.0.0.1:{hebei.port}"}, ""), operators_for_tests(), b"s" * 32,
                      hebei.clock)
    page, printed = asyncio.run(records_pages(console, [member]))
    for shown in (page, printed):
        assert len(rows_of(shown)) == 501, shown
        assert caption_of(shown) == "全部月份,共 501 笔,作为共济人支付合计 ¥0.00,作为被共济人受共济合计 ¥5.01", \
            caption_of(shown)
        assert 'id="records-cut"' not in shown, shown


def test_a_list_longer_than_the_console_lists_says_it_is_cut(hebei: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the most the console lists from one registry (RECORDS_CAP, here 120 in pages of 50) the page
    lists the newest ones only, says the list is cut and how to see the rest (by month), and does not
    present their sum as the total; at the cap exactly nothing is cut."""
    monkeypatch.setattr(pages_person, "RECORDS_CAP", 120)
    monkeypatch.setattr(pages_person, "RECORDS_PAGE", 50)
    member = many_records(hebei, 120)

    def shown() -> list[str]:
        console = Console(Backend({"13": f"127.0.0.1:{hebei.port}"}, ""), operators_for_tests(), b"s" * 32,
                          hebei.clock)
        return asyncio.run(records_pages(console, [member]))

    for page in shown():
        assert len(rows_of(page)) == 120 and 'id="records-cut"' not in page, page
        assert caption_of(page) == "全部月份,共 120 笔,作为共济人支付合计 ¥0.00,作为被共济人受共济合计 ¥1.20", \
            caption_of(page)
    assert settle(hebei.stub, member, 1).mulaid_pay_fen == 1
    for page in shown():
        assert len(rows_of(page)) == 120, page
        assert caption_of(page) == ("全部月份,列出最近 120 笔(未列全),"
                                    "所列作为共济人支付合计 ¥0.00,作为被共济人受共济合计 ¥1.20"), caption_of(page)
        assert 'id="records-cut"' in page and "一次最多列出最近的 120 笔" in page and "请按月份筛选" in page, page


def test_the_records_total_keeps_what_a_person_paid_apart_from_what_was_paid_for_them(hebei: Any) -> None:
    """A person who paid ¥30.00 of their mother's bill as her 共济人 and had ¥70.00 of their own paid by
    their spouse as 被共济人: the page and the sheet give each direction its own sum, never one
    共济支付合计 of ¥100.00 that is neither."""
    r13 = hebei.stub
    person, mother, spouse = enroll(r13), enroll(r13, birth="19500101"), enroll(r13, birth="19810101")
    credit(r13, person, 3_000)
    credit(r13, spouse, 7_000)
    bind(r13, person, mother, relation=cpb.RELATION_PARENT)
    assert settle(r13, mother, 3_000).mulaid_pay_fen == 3_000
    r13.UnbindMutualAid(rpb.UnbindMutualAidRequest(request_id=rid("unbind"), helper_id_number=person,
                                                   member_id_number=mother))
    bind(r13, spouse, person, relation=cpb.RELATION_SPOUSE)
    assert settle(r13, person, 7_000).mulaid_pay_fen == 7_000  # their own account is empty now
    console = Console(Backend({"13": f"127.0.0.1:{hebei.port}"}, ""), operators_for_tests(), b"s" * 32,
                      hebei.clock)
    for page in asyncio.run(records_pages(console, [person])):
        assert sorted(rows_of(page)) == [("¥30.00", "已结算"), ("¥70.00", "已结算")], page
        assert caption_of(page) == "全部月份,共 2 笔,作为共济人支付合计 ¥30.00,作为被共济人受共济合计 ¥70.00", \
            caption_of(page)


def test_a_month_the_records_cannot_be_listed_for_is_refused_in_chinese_and_reads_nothing(hebei: Any) -> None:
    """The month in the 消费记录 link is the operator's (typed where the browser has no month picker, or
    a link edited): one that is no month, or one before any record can be (1969), answers 400 in
    Chinese on the screen (next to 月份, the typed text kept) and on the sheet, and lists nothing,
    never every month as if none were asked for nor a server error; full-width digits are read as
    ASCII, and the month records begin in (1970-01, Beijing time) is listed."""
    member = many_records(hebei, 1)
    console = Console(Backend({"13": f"127.0.0.1:{hebei.port}"}, ""), operators_for_tests(), b"s" * 32,
                      hebei.clock)
    month = rules.month_of(hebei.clock.now_ms())
    bad = ("0000-01", "2026-13", "2026-3", "abc", "-1", "9" * 40, "1969-12", "2026-１")

    async def pages() -> list[tuple[str, str, int, str]]:
        shown = []
        async with TestClient(TestServer(make_app(console))) as client:
            await signed_in(client)
            for m in (*bad, month.translate(str.maketrans("0123456789", "０１２３４５６７８９")), "1970-01"):
                for path in ("/records", "/records/print"):
                    r = await client.get(path, params={"p": console.ref(member), "month": m})
                    shown.append((m, path, r.status, await r.text()))
        await console.backend.close()
        return shown

    shown = asyncio.run(pages())
    for m, path, status, page in shown:
        if m in bad:
            assert status == 400 and "月份" in page and 'id="records-table"' not in page, (m, path, status, page)
            if path == "/records":
                assert 'aria-invalid="true"' in page and 'id="month-error"' in page, page
        elif m == "1970-01":
            assert status == 200 and rows_of(page) == [], (m, path, status, page)
        else:
            assert status == 200 and rows_of(page) == [("¥0.01", "已结算")] and caption_of(page).startswith(month), \
                (m, path, status, page)


def test_a_printed_sheet_names_its_request_and_is_logged_as_printed(hebei: Any,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A printed 消费记录 sheet leaves the hall with a person's records on it: it carries the request id
    its `console action` line is logged under (action records_print, apart from the screen's
    `records`), so the security auditor finds from the paper who printed it and when; the person is
    masked on the sheet and in the line alike, and the sheet's controls are not printed."""
    member = many_records(hebei, 1)
    console = Console(Backend({"13": f"127.0.0.1:{hebei.port}"}, ""), operators_for_tests(), b"s" * 32,
                      hebei.clock)

    async def printed() -> tuple[str, str]:
        async with TestClient(TestServer(make_app(console))) as client:
            await signed_in(client)
            r = await client.get("/records/print", params={"p": console.ref(member)})
            sheet = await r.text()
        await console.backend.close()
        return r.headers["X-Request-Id"], sheet

    with caplog.at_level(logging.INFO, logger="medaid.console"):
        rid_, sheet = asyncio.run(printed())
    lines = [json.loads(JsonFormatter("console").format(r)) for r in caplog.records if r.name == "medaid.console"]
    logged = [x for x in lines if x.get("action") == "records_print"]
    assert [(x["request_id"], x["operator"], x["id_number"], x["outcome"]) for x in logged] == \
        [(rid_, "wang01", mask(member), "OK")], lines
    body = sheet[sheet.index('<article class="sheet">'):sheet.index("</article>")]
    assert f'<span id="print-request-id">{rid_}</span>' in body and "wang01" in body, body
    assert mask(member) in body and member not in sheet, sheet
    assert "<button" not in body and "<form" not in body, body
