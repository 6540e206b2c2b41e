"""The printed 回执 the desk gives a person for what it did in their name (a binding and its ending, a
划拨, a 代缴 and its cancelling, a 医保钱包 transfer sent, accepted or returned), against real registries
and the real wallet: drawn from the registry's record, reached by
the link on the row of the business, masked, with its 打印流水号 that of its own `console action`
line and the business's own request id where the registry keeps it; a link that names nothing done
prints nothing and says so."""

from __future__ import annotations

import asyncio
import html
import logging
import re
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from medaid.common.clock import FixedClock
from medaid.common.idnumber import mask
from medaid.console import operators as ops
from medaid.console.backend import Backend
from medaid.console.web import Console, make_app, new_request_id
from medaid.wallet.v1 import wallet_pb2 as wpb
from support import FACE, RESIDENT, credit, enroll, rid, unmasked_id_numbers
from test_console_audit import audit_lines
from test_console_forms import national_console
from test_console_http import signed_in
from test_console_premium import YEAR


def receipt_links(page: str) -> list[str]:
    return [html.unescape(h) for h in re.findall(r'<a href="([^"]+)" class="receipt-link"', page)]


def facts(page: str) -> dict[str, str]:
    return dict(re.findall(r'<tr><th scope="row">([^<]*)</th><td>([^<]*)</td></tr>', page))


def printed_id(page: str) -> str:
    return re.search(r'<span id="print-request-id">([^<]+)</span>', page).group(1)


async def receipt(client: TestClient, link: str) -> tuple[int, str, str]:
    resp = await client.get(link)
    return resp.status, await resp.text(), resp.headers.get("X-Request-Id", "")


async def binding_receipts(national: Any, helper: str, member: str) -> list[tuple[int, str, str]]:
    console = national_console(national)
    got = []
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        await client.post(f"/bindings/bind?p={console.ref(helper)}", data={
            "csrf": csrf, "request_id": new_request_id(), "member": member, "relation": "PARENT",
            "method": "face", "attestation": "face-1"})
        for pid in (helper, member):  # each side's page links the binding's receipt
            links = receipt_links(await (await client.get(f"/bindings?p={console.ref(pid)}")).text())
            assert len(links) == 1, links
            got.append(await receipt(client, links[0]))
        national.clock.advance(60_000)
        await client.post(f"/bindings/unbind?p={console.ref(helper)}", data={
            "csrf": csrf, "request_id": new_request_id(), "member_ref": console.ref(member)})
        links = receipt_links(await (await client.get(f"/bindings?p={console.ref(helper)}")).text())
        got.append(await receipt(client, links[0]))
        # A link edited to name a person the helper never bound: nothing printed.
        stranger = enroll(national.reg("13"), birth="19700101")
        got.append(await receipt(client, f"/bindings/receipt?p={console.ref(helper)}&m={console.ref(stranger)}"))
        got.append(await receipt(client, f"/bindings/receipt?p={console.ref(helper)}&m=edited"))
    await console.backend.close()
    return got


def test_a_binding_and_its_ending_each_print_a_masked_receipt(national: Any, caplog: pytest.LogCaptureFixture
                                                               ) -> None:
    r13 = national.reg("13")
    helper, member = enroll(r13, birth="19800101", name="王建国"), enroll(r13, birth="19500101", name="王大山")
    with caplog.at_level(logging.INFO, logger="medaid.console"):
        (s1, bound, id1), (s2, other_side, _), (s3, ended, id3), (s4, missing, _), (s5, edited, _) = \
            asyncio.run(binding_receipts(national, helper, member))
    assert (s1, s2, s3) == (200, 200, 200)
    for page in (bound, other_side, ended):
        assert facts(page)["共济人(出钱的一方)"] == mask(helper) and facts(page)["被共济人(用钱的一方)"] == mask(member)
        assert facts(page)["被共济人是共济人的"] == "父母"
        assert unmasked_id_numbers(page) == [] and "王建国" not in page and "王大山" not in page, page
        assert "经办机构(盖章)" in page and "经办人:wang01" in page
    assert facts(bound)["业务"] == "家庭共济绑定" and "王**" in bound
    assert facts(ended)["业务"] == "解除家庭共济绑定" and facts(ended)["状态"] == "已解除"
    assert "解除时间" in facts(ended)
    # The sheet's 打印流水号 is its own request's id, under which its printing is logged.
    assert printed_id(bound) == id1 and printed_id(ended) == id3
    audit, lines = audit_lines(caplog)
    printed = [(a["request_id"], a["outcome"]) for a in audit if a["action"] == "receipt_binding"]
    assert (id1, "OK") in printed and (id3, "OK") in printed
    assert printed[-1][1] == "RECEIPT_NOT_FOUND"  # the edited link that named a stranger
    assert not any(unmasked_id_numbers(line) for line in lines)
    assert s4 == 404 and "未找到该笔业务的办理记录,没有打印回执" in missing and "共济绑定" in missing
    assert "print-request-id" not in missing
    assert s5 == 400 and "链接已失效" in edited


async def family_receipts(national: Any, creator: str, member: str) -> dict[str, Any]:
    console = national_console(national)
    seen: dict[str, Any] = {}
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)

        async def post(path: str, who: str, **fields: str) -> str:
            resp = await client.post(f"{path}?p={console.ref(who)}", data={"csrf": csrf, **fields})
            return await resp.text()

        page = await post("/family/create", creator, request_id=new_request_id(), attestation="cm-1")
        fid = re.search(r'name="family_id" value="([^"]+)"', page).group(1)
        seen["rid"] = new_request_id()
        page = await post("/family/transfer", creator, request_id=seen["rid"], family_id=fid, amount="12.50")
        links = receipt_links(page)
        seen["links"] = links
        seen["sheet"] = await receipt(client, links[0])
        # The same 划拨's receipt asked on another person's page (a link edited): not theirs.
        seen["other"] = await receipt(client, re.sub(r"p=[^&]+", f"p={console.ref(member)}", links[0]))
        seen["fid"] = fid
    await console.backend.close()
    return seen


def test_a_family_account_transfer_prints_a_receipt_with_its_business_id(national: Any,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    r62 = national.reg("62")
    creator = enroll(r62, region="620100", division="620102")
    member = enroll(r62, region="620100", division="620102", birth="19850101")
    credit(r62, creator, 100_000)
    with caplog.at_level(logging.INFO, logger="medaid.console"):
        seen = asyncio.run(family_receipts(national, creator, member))
    assert len(seen["links"]) == 1, seen["links"]  # the 划拨 row; creating the account moved no money
    status, sheet, printed = seen["sheet"]
    assert status == 200 and facts(sheet)["业务"] == "家庭共济账户划拨", sheet
    assert facts(sheet)["金额"] == "¥12.50(从本人个人账户划入家庭共济账户)"
    assert facts(sheet)["家庭共济账户"] == seen["fid"] and facts(sheet)["办理人"] == mask(creator)
    assert re.search(r'<span id="receipt-business-id">([^<]+)</span>', sheet).group(1) == seen["rid"]
    assert printed_id(sheet) == printed and unmasked_id_numbers(sheet) == []
    audit, _ = audit_lines(caplog)
    # The 业务流水号 finds the 划拨's own line; the 打印流水号 the printing's.
    assert [a["outcome"] for a in audit if a["action"] == "transfer" and a["request_id"] == seen["rid"]] == ["OK"]
    assert [a["business_id"] for a in audit if a["action"] == "receipt_family" and a["request_id"] == printed] \
        == [seen["rid"]]
    assert seen["other"][0] == 404 and "没有打印回执" in seen["other"][1]


async def premium_receipts(national: Any, payer: str, kid: str) -> list[tuple[int, str, str]]:
    console = national_console(national)
    got = []
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        rid = new_request_id()
        page = await (await client.post(f"/premium/pay?p={console.ref(payer)}", data={
            "csrf": csrf, "request_id": rid, "payee": kid, "relation": "CHILD", "year": YEAR,
            "source": "account"})).text()
        got.append((0, rid, ""))
        links = receipt_links(page)
        assert len(links) == 1, page
        got.append(await receipt(client, links[0]))
        # The payee's page lists the payment too, but the receipt is the payer's to take.
        assert receipt_links(await (await client.get(f"/premium?p={console.ref(kid)}")).text()) == []
        got.append(await receipt(client, links[0].replace(f"year={YEAR}", "year=1999")))
    await console.backend.close()
    return got


def test_a_premium_paid_at_the_desk_prints_a_receipt(national: Any) -> None:
    r13 = national.reg("13")
    payer, kid = enroll(r13), enroll(r13, itype=RESIDENT, birth="20100101")
    credit(r13, payer, 100_000)
    (_, rid, _), (status, sheet, printed), (s_missing, missing, _) = asyncio.run(premium_receipts(national, payer, kid))
    assert status == 200 and facts(sheet)["业务"] == "代缴城乡居民医保", sheet
    assert facts(sheet)["缴费人"] == mask(payer) and facts(sheet)["被代缴人"] == mask(kid)
    assert facts(sheet)["缴费年度"] == f"{YEAR} 年度" and facts(sheet)["资金来源"] == "个人账户"
    assert facts(sheet)["状态"] == "已缴费" and facts(sheet)["金额"].startswith("¥")
    assert re.search(r'<span id="receipt-business-id">([^<]+)</span>', sheet).group(1) == rid
    assert printed_id(sheet) == printed and unmasked_id_numbers(sheet) == []
    assert s_missing == 404 and "代缴居民医保" in missing


async def receipt_for_another_province(path: str, person: str, registry_port: int,
                                       wallet_port: int | None = None) -> tuple[int, str]:
    """The receipt page `path` of 河北 `person` (`{ref}` in it: theirs) asked by an operator who serves
    北京 only."""
    only_beijing = dict(ops.parse({"wang01": {"name": "王晓", "role": "console", "provinces": ["11"],
                                              "password": ops.hash_password("pass-word-1", n=2 ** 10)}}))
    wallet = f"127.0.0.1:{wallet_port}" if wallet_port is not None else ""
    console = Console(Backend({"13": f"127.0.0.1:{registry_port}"}, wallet), only_beijing, b"s" * 32,
                      FixedClock(1_795_800_000_000))
    async with TestClient(TestServer(make_app(console))) as client:
        await signed_in(client)
        resp = await client.get(path.format(ref=console.ref(person)))
        text = await resp.text()
    await console.backend.close()
    return resp.status, text


def test_a_receipt_of_a_person_the_operator_does_not_serve_is_refused(hebei: Any) -> None:
    helper = enroll(hebei.stub)
    status, text = asyncio.run(receipt_for_another_province("/bindings/receipt?p={ref}&m={ref}", helper,
                                                            hebei.port))
    assert status == 403 and "OPERATOR_OUTSIDE_PROVINCE" in text and "print-request-id" not in text



async def transfer_receipts(national: Any, son: str, mother: str) -> dict[str, Any]:
    """The son sends his mother ¥10 at the desk, she accepts it there, he sends ¥5 more and she ends
    the relationship (the ¥5 waiting goes back): each side's 医保钱包 page, and the receipts its links
    print, along the way."""
    console = national_console(national)
    seen: dict[str, Any] = {}
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)

        async def wallet_links(who: str) -> list[str]:
            return receipt_links(await (await client.get(f"/wallet?p={console.ref(who)}")).text())

        async def send(amount: str) -> str:
            sent = new_request_id()
            await client.post(f"/wallet/transfer?p={console.ref(son)}", data={
                "csrf": csrf, "request_id": sent, "recipient": mother, "relation": "PARENT", "amount": amount,
                "method": "password", "attestation": "code-1", "source": "account"})
            return sent

        seen["rid"] = await send("10")
        seen["son_links"] = await wallet_links(son)
        seen["pending"] = await receipt(client, seen["son_links"][0])
        # Waiting for her, nothing was done in her name: no link, and her page's link edited to it prints nothing.
        seen["mother_links_pending"] = await wallet_links(mother)
        seen["edited"] = await receipt(client, f"/wallet/receipt?p={console.ref(mother)}&t={seen['rid']}")
        seen["made_up"] = await receipt(client, f"/wallet/receipt?p={console.ref(son)}&t=no-such-transfer")
        national.clock.advance(60_000)
        await client.post(f"/wallet/accept?p={console.ref(mother)}", data={
            "csrf": csrf, "request_id": new_request_id(), "transfer_id": seen["rid"], "identity_checked": "yes"})
        seen["mother_links"] = await wallet_links(mother)
        seen["accepted"] = await receipt(client, seen["mother_links"][0])
        seen["son_after"] = await receipt(client, seen["son_links"][0])
        national.clock.advance(60_000)
        seen["rid2"] = await send("5")
        await client.post(f"/wallet/end?p={console.ref(mother)}", data={
            "csrf": csrf, "request_id": new_request_id(), "sender_ref": console.ref(son), "asked": "yes"})
        seen["son_links_end"] = await wallet_links(son)
        returned = [link for link in seen["son_links_end"] if seen["rid2"] in link]
        seen["returned"] = await receipt(client, returned[0])
    await console.backend.close()
    return seen


def test_a_wallet_transfer_prints_a_receipt_for_the_sender_and_once_accepted_for_the_recipient(
        national: Any, caplog: pytest.LogCaptureFixture) -> None:
    r13, r11 = national.reg("13"), national.reg("11")
    son = enroll(r13, name="李明")
    mother = enroll(r11, itype=RESIDENT, region="110000", division="110105", birth="19550101", name="张秀英")
    credit(r13, son, 10_000)
    for owner, place in ((son, "130100"), (mother, "110000")):
        national.wallet.stub.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=owner,
                                                              province=owner[:2], use_place_admdvs=place,
                                                              real_name=FACE))
    with caplog.at_level(logging.INFO, logger="medaid.console"):
        seen = asyncio.run(transfer_receipts(national, son, mother))
    assert len(seen["son_links"]) == 1 and seen["mother_links_pending"] == [], seen
    status, sheet, printed = seen["pending"]
    assert status == 200 and facts(sheet)["业务"] == "医保钱包划转", sheet
    assert facts(sheet)["划转人"] == mask(son) and facts(sheet)["接收人"] == mask(mother)
    assert facts(sheet)["接收人是划转人的"] == "父母" and facts(sheet)["金额"] == "¥10.00"
    assert facts(sheet)["划出"] == "划转人的个人账户" and facts(sheet)["状态"].startswith("待接收:已从本人个人账户划出")
    # The transfer id is the request id the form sent it under: its 业务流水号 finds the transfer's own line.
    assert re.search(r'<span id="receipt-business-id">([^<]+)</span>', sheet).group(1) == seen["rid"]
    assert printed_id(sheet) == printed and unmasked_id_numbers(sheet) == []
    assert "李明" not in sheet and "李*" in sheet and "经办机构(盖章)" in sheet and "经办人:wang01" in sheet
    for key in ("edited", "made_up"):
        s_missing, missing, _ = seen[key]
        assert s_missing == 404 and "未找到该笔业务的办理记录,没有打印回执" in missing and "医保钱包" in missing
        assert "print-request-id" not in missing
    # Accepted for her at the desk: her receipt (the wallet keeps no request id of an acceptance).
    status, sheet, printed_a = seen["accepted"]
    assert len(seen["mother_links"]) == 1 and status == 200, sheet
    assert facts(sheet)["业务"] == "接收医保钱包划转" and facts(sheet)["划转号"] == seen["rid"]
    assert facts(sheet)["状态"] == "已接收:额度已计入本人医保钱包" and "接收时间" in facts(sheet)
    assert "receipt-business-id" not in sheet and "张秀英" not in sheet and unmasked_id_numbers(sheet) == []
    assert printed_id(sheet) == printed_a
    status, sheet, _ = seen["son_after"]  # his link prints the transfer as it stands now
    assert status == 200 and facts(sheet)["状态"].startswith("已接收") and "接收时间" in facts(sheet)
    # The ¥5 waiting when she ended the relationship went back: his receipt says so.
    status, sheet, _ = seen["returned"]
    assert status == 200 and facts(sheet)["业务"] == "医保钱包划转退回", sheet
    assert facts(sheet)["金额"] == "¥5.00" and facts(sheet)["状态"].startswith("已退回") and "退回时间" in facts(sheet)
    audit, lines = audit_lines(caplog)
    assert [a["outcome"] for a in audit if a["action"] == "transfer" and a["request_id"] == seen["rid"]] == ["OK"]
    assert [a["business_id"] for a in audit if a["action"] == "receipt_transfer" and a["request_id"] == printed] \
        == [seen["rid"]]
    assert [a["outcome"] for a in audit if a["action"] == "receipt_transfer"].count("RECEIPT_NOT_FOUND") == 2
    assert not any(unmasked_id_numbers(line) for line in lines)


def test_a_transfer_receipt_of_a_person_the_operator_does_not_serve_is_refused(national: Any) -> None:
    son = enroll(national.reg("13"))
    status, text = asyncio.run(receipt_for_another_province("/wallet/receipt?p={ref}&t=any-transfer", son,
                                                            national.registries["13"].port, national.wallet.port))
    assert status == 403 and "OPERATOR_OUTSIDE_PROVINCE" in text and "print-request-id" not in text
