"""The 代缴居民医保 page against real registries: a payment is cancelled with the registry that holds
it, the one the page lists it from (the payer's, SPEC §4b)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from medaid.common.v1 import common_pb2 as cpb
from medaid.console.web import make_app, new_request_id
from medaid.registry.v1 import premium_pb2 as ppb
from medaid.registry.v1 import registry_pb2 as pb
from support import RESIDENT, balance, credit, dead_port, enroll, rid
from test_console_forms import national_console, outcome
from test_console_http import signed_in

YEAR = "2027"  # the tests' today is 2026-11-22: inside the 2027 window


async def cancelling_at_the_desk(national: Any, payer: str) -> tuple[int, list[str], list[str]]:
    console = national_console(national)
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        url = f"/premium?p={console.ref(payer)}"
        page = await (await client.get(url)).text()
        row = re.search(r'<form method="post" action="(/premium/cancel\?[^"]+)" class="inline">(.*?)</form>',
                        page, re.S)
        assert row, page
        fields = dict(re.findall(r'name="([a-z_]+)" value="([^"]*)"', row.group(2)))
        resp = await client.post(row.group(1).replace("&amp;", "&"), data={**fields, "csrf": csrf})
        done, refused = outcome(await resp.text())
    await console.backend.close()
    return resp.status, done, refused


def test_a_premium_is_cancelled_where_it_was_paid_after_the_payee_moved(national: Any) -> None:
    r13, r11 = national.reg("13"), national.reg("11")
    payer = enroll(r13)
    kid = enroll(r13, itype=RESIDENT, birth="20100101")
    credit(r13, payer, 100_000)
    r13.PayResidentPremium(ppb.PayResidentPremiumRequest(
        request_id=rid("prem"), payer_id_number=payer, payee_id_number=kid, relation=cpb.RELATION_CHILD,
        year=YEAR, source=ppb.PREMIUM_SOURCE_ACCOUNT))
    paid = balance(r13, payer)
    assert paid < 100_000
    # The child moves to 北京 and is insured there now; the payment stays with the payer's registry.
    r13.UpdatePersonStatus(pb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=kid,
                                                        status=cpb.PERSON_STATUS_TERMINATED, moved_to_province="11"))
    r11.EnrollPerson(pb.EnrollPersonRequest(request_id=rid("enroll"), id_number=kid, name="张三",
                                            insurance_type=RESIDENT, pooling_region="110000"))
    status, done, refused = asyncio.run(cancelling_at_the_desk(national, payer))
    assert (status, refused) == (200, []) and len(done) == 1, (status, done, refused)
    assert balance(r13, payer) == 100_000
    listed = r13.ListResidentPremiums(ppb.ListResidentPremiumsRequest(payer_id_number=payer)).premiums
    assert [p.state for p in listed] == ["CANCELLED"]


def submitted(form_html: str, **typed: str) -> dict[str, str]:
    """What a browser sends for a form as drawn (inputs' values, each select's selected or first
    option), with what the operator typed or chose on top."""
    data = dict(re.findall(r'<input type="(?:hidden|text)"[^>]*?name="([a-z_]+)" value="([^"]*)"', form_html))
    data.update(re.findall(r'<input type="(?:hidden|text)"[^>]*?id="[^"]*" name="([a-z_]+)" value="([^"]*)"',
                           form_html))
    for name, options in re.findall(r'<select[^>]*name="([a-z_]+)"[^>]*>(.*?)</select>', form_html, re.S):
        values = re.findall(r'<option value="([^"]*)"( selected)?', options)
        chosen = [v for v, sel in values if sel] or [v for v, _ in values]
        if chosen:
            data[name] = chosen[0]
    return {**data, **typed}


async def paying_from_the_family_account(registry_port: int, payers: list[str], payee: str
                                         ) -> list[tuple[int, list[str], list[str], list[str]]]:
    from medaid.common.clock import FixedClock
    from medaid.console.backend import Backend
    from medaid.console.web import Console
    from test_console_http import operators_for_tests
    console = Console(Backend({"35": f"127.0.0.1:{registry_port}"}, ""), operators_for_tests(), b"s" * 32,
                      FixedClock(1_795_800_000_000))
    seen = []
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        for payer in payers:
            url = f"/premium?p={console.ref(payer)}"
            page = await (await client.get(url)).text()
            form = re.search(r'<form method="post" action="(/premium/pay\?[^"]+)" id="pay-form">(.*?)</form>',
                             page, re.S)
            offered = re.findall(r'<option value="(FA[0-9A-Z]+)"', form.group(2))
            data = submitted(form.group(2), payee=payee, relation="SIBLING", year=YEAR, source="family", csrf=csrf)
            resp = await client.post(form.group(1).replace("&amp;", "&"), data=data)
            seen.append((resp.status, *outcome(await resp.text()), offered))
    await console.backend.close()
    return seen


def test_a_premium_from_the_family_account_is_paid_from_an_account_the_page_offers(start_registry: Any) -> None:
    from medaid.registry.v1 import family_pb2 as fpb
    from support import FACE
    fj = {"region": "350200", "division": "350203"}
    fujian = start_registry("35")
    stub = fujian.stub
    creator, stranger = enroll(stub, **fj), enroll(stub, **fj)
    aunt = enroll(stub, itype=RESIDENT, birth="19600101", **fj)
    credit(stub, creator, 300_000)
    fid = stub.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
        request_id=rid("fam"), creator_id_number=creator, commitment=FACE,
        initial_transfer_fen=60_000)).account.family_id
    stub.InviteMember(fpb.InviteMemberRequest(request_id=rid("inv"), family_id=fid, creator_id_number=creator,
                                              member_id_number=aunt, relation=cpb.RELATION_SIBLING, temporary=True))
    (paid, none) = asyncio.run(paying_from_the_family_account(fujian.port, [creator, stranger], aunt))
    assert paid[0] == 200 and len(paid[1]) == 1 and not paid[2] and paid[3] == [fid], paid
    assert stub.GetFamilyAccount(fpb.GetFamilyAccountRequest(family_id=fid)).account.balance_fen < 60_000
    # Someone in no family account is told so next to 资金来源, and nothing is asked of the registry.
    assert none[0] == 422 and none[3] == [] and len(none[2]) == 1 and "家庭共济账户" in none[2][0], none
    assert "编号格式错误" not in none[2][0]


async def paying_for(national: Any, payer: str, payee: str) -> tuple[int, list[str]]:
    console = national_console(national)
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        resp = await client.post(f"/premium/pay?p={console.ref(payer)}", data={
            "csrf": csrf, "request_id": new_request_id(), "payee": payee, "relation": "CHILD", "year": YEAR,
            "source": "account"})
        _, refused = outcome(await resp.text())
    await console.backend.close()
    return resp.status, refused


def test_a_refused_premium_speaks_of_payer_and_payee_not_of_helper_and_member(national: Any) -> None:
    r13, r11 = national.reg("13"), national.reg("11")
    payer = enroll(r13)
    credit(r13, payer, 100_000)
    payee = enroll(r11, itype=RESIDENT, birth="20100101", region="110000", division="110105")
    status, refused = asyncio.run(paying_for(national, payer, payee))
    assert status == 422 and len(refused) == 1 and "(CROSS_PROVINCE)" in refused[0], refused
    assert "被代缴人在外省参保" in refused[0] and "共济人" not in refused[0], refused
    assert balance(r13, payer) == 100_000


def test_the_premium_words_change_who_is_named_not_the_family_account() -> None:
    from medaid.console import rules
    assert rules.refusal_text("HELPER_NOT_INSURED", words=rules.PREMIUM_WORDS) == (
        "缴费人未在本省参保登记,本次未办理;外省参保的近亲属可使用医保钱包划转")
    assert rules.refusal_text("DIFFERENT_POOLING_REGION", words=rules.PREMIUM_WORDS) == (
        "缴费人与被代缴人不在同一统筹区,本省不支持跨统筹区代缴,本次未代缴,缴费人账户和家庭共济账户均未扣款;"
        "可改用医保钱包")
    assert rules.refusal_text("FAMILY_INSUFFICIENT", words=rules.PREMIUM_WORDS) == rules.refusal_text(
        "FAMILY_INSUFFICIENT")


async def the_payees_page(national: Any, payee: str) -> tuple[str, str, int, list[str]]:
    """The 代缴 page of `payee`, the page its link to the payer leads to, and a cancel of the premium
    sent from the payee's page as if it offered one."""
    console = national_console(national)
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        page = await (await client.get(f"/premium?p={console.ref(payee)}")).text()
        link = re.search(r'<a href="([^"]+)" class="payer-page">', page)
        payers = await (await client.get(link.group(1).replace("&amp;", "&"))).text() if link else ""
        resp = await client.post(f"/premium/cancel?p={console.ref(payee)}", data={
            "csrf": csrf, "request_id": new_request_id(), "payee_ref": console.ref(payee), "year": YEAR})
        _, refused = outcome(await resp.text())
    await console.backend.close()
    return page, payers, resp.status, refused


def test_the_payees_page_cannot_cancel_a_premium_someone_else_paid(national: Any) -> None:
    """The desk acts for the person whose page is open: on the payee's page a payment their mother made
    is listed with the way to her page, not cancelled (NOT_THE_PAYER), the money and the coverage kept."""
    r13 = national.reg("13")
    payer = enroll(r13)
    kid = enroll(r13, itype=RESIDENT, birth="20100101")
    credit(r13, payer, 100_000)
    r13.PayResidentPremium(ppb.PayResidentPremiumRequest(
        request_id=rid("prem"), payer_id_number=payer, payee_id_number=kid, relation=cpb.RELATION_CHILD,
        year=YEAR, source=ppb.PREMIUM_SOURCE_ACCOUNT))
    paid = balance(r13, payer)
    page, payers, status, refused = asyncio.run(the_payees_page(national, kid))
    assert 'action="/premium/cancel' not in page and 'class="payer-page">由缴费人撤销</a>' in page, page
    assert 'action="/premium/cancel' in payers, payers  # the payer's page offers the cancel
    assert status == 422 and len(refused) == 1 and "(NOT_THE_PAYER)" in refused[0], (status, refused)
    assert balance(r13, payer) == paid < 100_000
    listed = r13.ListResidentPremiums(ppb.ListResidentPremiumsRequest(payee_id_number=kid)).premiums
    assert [p.state for p in listed] == ["PAID"]


def test_a_moved_payees_page_lists_the_premium_their_old_province_holds(national: Any) -> None:
    """A payee who moved province since being paid for is found in the new province, while the payment
    stays with the payer's registry: the payee's 代缴 page lists it from there, with the way to the
    payer's page, where it is cancelled."""
    r13, r11 = national.reg("13"), national.reg("11")
    payer = enroll(r13)
    kid = enroll(r13, itype=RESIDENT, birth="20100101")
    credit(r13, payer, 100_000)
    r13.PayResidentPremium(ppb.PayResidentPremiumRequest(
        request_id=rid("prem"), payer_id_number=payer, payee_id_number=kid, relation=cpb.RELATION_CHILD,
        year=YEAR, source=ppb.PREMIUM_SOURCE_ACCOUNT))
    r13.UpdatePersonStatus(pb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=kid,
                                                        status=cpb.PERSON_STATUS_TERMINATED, moved_to_province="11"))
    r11.EnrollPerson(pb.EnrollPersonRequest(request_id=rid("enroll"), id_number=kid, name="张三",
                                            insurance_type=RESIDENT, pooling_region="110000"))
    page, payers, _, _ = asyncio.run(the_payees_page(national, kid))
    rows = re.findall(r"<tr><td>(\d{4})</td>.*?</tr>", page, re.S)
    assert rows == [YEAR] and 'class="payer-page">由缴费人撤销</a>' in page, page
    assert "没有代缴记录" not in page
    assert 'action="/premium/cancel' in payers, payers


def test_a_payer_who_moved_province_cancels_from_their_page_where_they_paid(national: Any) -> None:
    """The payer moved to 北京 after paying in 河北: their 代缴 page (found in 北京) lists the payment the
    河北 registry holds and cancels it there, the money back to the 河北 account it came from."""
    r13, r11 = national.reg("13"), national.reg("11")
    payer = enroll(r13)
    kid = enroll(r13, itype=RESIDENT, birth="20100101")
    credit(r13, payer, 100_000)
    r13.PayResidentPremium(ppb.PayResidentPremiumRequest(
        request_id=rid("prem"), payer_id_number=payer, payee_id_number=kid, relation=cpb.RELATION_CHILD,
        year=YEAR, source=ppb.PREMIUM_SOURCE_ACCOUNT))
    r13.UpdatePersonStatus(pb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=payer,
                                                        status=cpb.PERSON_STATUS_TERMINATED, moved_to_province="11"))
    r11.EnrollPerson(pb.EnrollPersonRequest(request_id=rid("enroll"), id_number=payer, name="张三",
                                            insurance_type=cpb.INSURANCE_TYPE_EMPLOYEE, pooling_region="110000"))
    status, done, refused = asyncio.run(cancelling_at_the_desk(national, payer))
    assert (status, refused) == (200, []) and len(done) == 1, (status, done, refused)
    assert balance(r13, payer) == 100_000
    listed = r13.ListResidentPremiums(ppb.ListResidentPremiumsRequest(payer_id_number=payer)).premiums
    assert [p.state for p in listed] == ["CANCELLED"]


def test_a_registry_that_does_not_answer_is_named_on_the_premium_page(national: Any) -> None:
    """One province's registry down: the 代缴 page still lists what the others hold, and says which
    province it could not ask."""
    from medaid.console.backend import Backend
    from medaid.console.web import Console
    from test_console_http import operators_for_tests
    r13 = national.reg("13")
    payer = enroll(r13)
    kid = enroll(r13, itype=RESIDENT, birth="20100101")
    credit(r13, payer, 100_000)
    r13.PayResidentPremium(ppb.PayResidentPremiumRequest(
        request_id=rid("prem"), payer_id_number=payer, payee_id_number=kid, relation=cpb.RELATION_CHILD,
        year=YEAR, source=ppb.PREMIUM_SOURCE_ACCOUNT))

    async def page() -> str:
        addresses = {p: f"127.0.0.1:{r.port}" for p, r in national.registries.items()}
        console = Console(Backend({**addresses, "62": f"127.0.0.1:{dead_port()}"}, f"127.0.0.1:{national.wallet.port}",
                                  deadline_s=1.0), operators_for_tests(), b"s" * 32, national.clock)
        async with TestClient(TestServer(make_app(console))) as client:
            await signed_in(client)
            text = await (await client.get(f"/premium?p={console.ref(payer)}")).text()
        await console.backend.close()
        return text

    text = asyncio.run(page())
    assert re.findall(r"<tr><td>(\d{4})</td>", text) == [YEAR], text
    assert "暂时无应答" in text and "甘肃 (62)" in text, text
