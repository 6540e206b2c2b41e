"""The console's forms as a hand-made or repeated POST meets them, against real registries and a
real wallet: a form sent several times at once (a double click) acts once and every copy shows the
same answer; every POST route refuses a missing or wrong CSRF token and writes nothing."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from medaid.common.clock import FixedClock
from medaid.common.v1 import common_pb2 as cpb
from medaid.console import operators as ops
from medaid.console.backend import Backend
from medaid.console.web import COOKIE, Console, make_app, new_request_id
from medaid.wallet.v1 import wallet_pb2 as wpb
from support import FACE, RESIDENT, balance, credit, enroll, rid, snapshot
from test_console_http import (
    console_on_a_dead_registry,
    login_token,
    operators_for_tests,
    post_login,
    signed_in,
    son_and_mother_with_wallets,
)

COPIES = 6  # a double click, a browser resending, an impatient operator


def outcome(page: str) -> tuple[list[str], list[str]]:
    """What a page says about the form sent: its success messages and its refusals."""
    return (re.findall(r'<p class="done" role="status"[^>]*>([^<]*)</p>', page),
            re.findall(r'role="alert"[^>]*>([^<]*)<', page))


def national_console(national: Any) -> Console:
    backend = Backend({p: f"127.0.0.1:{r.port}" for p, r in national.registries.items()},
                      f"127.0.0.1:{national.wallet.port}")
    return Console(backend, operators_for_tests(), b"s" * 32, national.clock)


async def clicking_every_form_several_times(national: Any, people: dict[str, str]) -> list[tuple[str, Any]]:
    console = national_console(national)
    seen: list[tuple[str, Any]] = []
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)

        async def at_once(who: str, path: str, **fields: str) -> None:
            data = {"csrf": csrf, "request_id": new_request_id(), **fields}
            url = f"{path}?p={console.ref(people[who])}"
            sent = await asyncio.gather(*(client.post(url, data=data) for _ in range(COPIES)))
            pages = {(r.status, tuple(map(tuple, outcome(await r.text())))) for r in sent}
            seen.append((path, pages))

        async def family_id(who: str) -> str:
            page = await (await client.get(f"/family?p={console.ref(people[who])}")).text()
            return re.search(r'name="family_id" value="([^"]+)"', page).group(1)

        await at_once("helper", "/bindings/bind", member=people["member"], relation="SPOUSE", method="face",
                      attestation="face-1")
        await at_once("helper", "/bindings/unbind", member_ref=console.ref(people["member"]))
        await at_once("helper", "/bindings/proxy", relative=people["member"], relation="SPOUSE", method="face",
                      attestation="face-1")
        await at_once("helper", "/bindings/remove-proxy", holder_ref=console.ref(people["helper"]),
                      relative_ref=console.ref(people["member"]))
        await at_once("son", "/wallet/open", use_place="130100", method="face", attestation="face-1")
        await at_once("son", "/wallet/use-place", use_place="130200")
        await at_once("son", "/wallet/transfer", recipient=people["mother"], relation="PARENT", amount="10",
                      method="password", attestation="code-1", source="account")
        page = await (await client.get(f"/wallet?p={console.ref(people['mother'])}")).text()
        transfer_id = re.search(r'name="transfer_id" value="([^"]+)"', page).group(1)
        await at_once("mother", "/wallet/accept", transfer_id=transfer_id, identity_checked="yes")
        await at_once("mother", "/wallet/end", sender_ref=console.ref(people["son"]), asked="yes")
        await at_once("son", "/premium/pay", payee=people["kid"], relation="CHILD", year="2027", source="account")
        await at_once("son", "/premium/cancel", payee_ref=console.ref(people["kid"]), year="2027")
        await at_once("creator", "/family/create", attestation="promise-1", amount="100")
        fid = await family_id("creator")
        await at_once("creator", "/family/invite", family_id=fid, member=people["spouse"], relation="SPOUSE")
        await at_once("spouse", "/family/respond", family_id=fid, answer="accept", attestation="face-2")
        await at_once("creator", "/family/transfer", family_id=fid, amount="50")
        await at_once("creator", "/family/remove", family_id=fid, member_ref=console.ref(people["spouse"]))
        await at_once("creator", "/family/dissolve", family_id=fid, confirm="1")
    await console.backend.close()
    return seen


def test_a_form_sent_several_times_at_once_acts_once_and_every_copy_shows_its_answer(national: Any) -> None:
    r13, r11, r62 = national.reg("13"), national.reg("11"), national.reg("62")
    people = {"helper": enroll(r13), "member": enroll(r13), "son": enroll(r13),
              "mother": enroll(r11, itype=RESIDENT, region="110000", division="110105"),
              "kid": enroll(r13, itype=RESIDENT, birth="20100101"),
              "creator": enroll(r62, region="620100", division="620102"),
              "spouse": enroll(r62, region="620100", division="620102")}
    credit(r13, people["son"], 100_000)
    credit(r62, people["creator"], 100_000)
    national.wallet.stub.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=people["mother"],
                                                          province="11", use_place_admdvs="110000", real_name=FACE))
    for path, pages in asyncio.run(clicking_every_form_several_times(national, people)):
        assert len(pages) == 1, (path, pages)
        ((status, (done, refused)),) = pages
        assert status == 200 and len(done) == 1 and not refused, (path, pages)
    # Each act once: ¥10 sent and returned by 结束钱包关系, ¥400 paid and cancelled, ¥150 划拨 and returned.
    assert balance(r13, people["son"]) == 100_000 and balance(r62, people["creator"]) == 100_000


async def posting_without_the_reference(national: Any, people: dict[str, str], fid: str,
                                        rdb: Any) -> list[tuple[str, str, int, bool, bool]]:
    """The forms whose person is a hidden reference (an encrypted id number), sent by hand without
    it or with one the console did not make."""
    console = national_console(national)
    seen = []
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        before = snapshot(rdb)
        for who, path, key, page_mark, extra in (
                ("helper", "/bindings/unbind", "member_ref", 'id="bind-form"', {}),
                ("helper", "/bindings/remove-proxy", "relative_ref", 'id="proxy-form"',
                 {"holder_ref": console.ref(people["helper"])}),
                ("helper", "/bindings/remove-proxy", "holder_ref", 'id="proxy-form"',
                 {"relative_ref": console.ref(people["member"])}),
                ("mother", "/wallet/end", "sender_ref", 'id="senders-table"', {"asked": "yes"}),
                ("son", "/premium/cancel", "payee_ref", 'id="pay-form"', {"year": "2027"}),
                ("creator", "/family/remove", "member_ref", 'id="remove-form"', {"family_id": fid})):
            for sent in ("", "not-a-reference"):
                data = {"csrf": csrf, "request_id": new_request_id(), **extra}
                if sent:
                    data[key] = sent
                resp = await client.post(f"{path}?p={console.ref(people[who])}", data=data)
                page = await resp.text()
                seen.append((path, key, resp.status, page_mark in page, "请刷新页面后重新办理" in page))
        assert snapshot(rdb) == before
    await console.backend.close()
    return seen


def test_a_form_sent_without_its_hidden_reference_comes_back_with_a_chinese_error(national: Any, rdb: Any) -> None:
    from medaid.registry.v1 import family_pb2 as fpb

    r13, r11, r62 = national.reg("13"), national.reg("11"), national.reg("62")
    people = {"helper": enroll(r13), "member": enroll(r13), "son": enroll(r13),
              "mother": enroll(r11, itype=RESIDENT, region="110000", division="110105"),
              "creator": enroll(r62, region="620100", division="620102")}
    credit(r13, people["son"], 100_000)
    for owner, place in ((people["son"], "130100"), (people["mother"], "110000")):
        national.wallet.stub.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=owner,
                                                              province=owner[:2], use_place_admdvs=place,
                                                              real_name=FACE))
    sent = national.wallet.stub.CreateTransfer(wpb.CreateTransferRequest(
        request_id=rid("t"), sender_id_number=people["son"], sender_province="13",
        recipient_id_number=people["mother"], relation=cpb.RELATION_PARENT, amount_fen=1_000,
        source=wpb.TRANSFER_SOURCE_PERSONAL_ACCOUNT,
        verification=FACE)).transfer
    national.wallet.stub.AcceptTransfer(wpb.AcceptTransferRequest(request_id=rid("a"), transfer_id=sent.transfer_id,
                                                                  recipient_id_number=people["mother"]))
    fid = r62.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
        request_id=rid("create"), creator_id_number=people["creator"], commitment=FACE)).account.family_id
    seen = asyncio.run(posting_without_the_reference(national, people, fid, rdb))
    assert [s for s in seen if s[2:] != (422, True, True)] == []


async def diagnosing_with_a_forged_reference(hebei_port: int, helper: str) -> tuple[int, str]:
    console = Console(Backend({"13": f"127.0.0.1:{hebei_port}"}, ""), operators_for_tests(), b"s" * 32,
                      FixedClock(1_795_800_000_000))
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        resp = await client.post("/diagnose", data={"csrf": csrf, "member_ref": "not-a-reference", "helper": helper})
        page = await resp.text()
    await console.backend.close()
    return resp.status, page


def test_a_diagnosis_with_a_forged_reference_asks_for_the_members_number(hebei: Any) -> None:
    status, page = asyncio.run(diagnosing_with_a_forged_reference(hebei.port, enroll(hebei.stub)))
    assert status == 422 and 'id="diagnose-member-error"' in page and "请刷新页面后重新办理" in page
    assert 'name="member_ref"' not in page and 'id="diagnose-member"' in page


FULL_WIDTH = str.maketrans("0123456789X.,", "０１２３４５６７８９Ｘ．，")


async def sending_in_full_width(national: Any, son: str, mother: str) -> tuple[int, str]:
    console = national_console(national)
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        resp = await client.post(f"/wallet/transfer?p={console.ref(son)}", data={
            "csrf": csrf, "request_id": new_request_id(), "recipient": mother.translate(FULL_WIDTH),
            "relation": "PARENT", "amount": "１２.５０", "method": "password", "attestation": "code-1",
            "source": "account"})
        page = await resp.text()
    await console.backend.close()
    return resp.status, page


def test_an_amount_typed_in_full_width_digits_is_taken_as_an_id_number_is(national: Any) -> None:
    r13 = national.reg("13")
    son, mother = son_and_mother_with_wallets(national)
    status, page = asyncio.run(sending_in_full_width(national, son, mother))
    assert status == 200 and "¥12.50" in outcome(page)[0][0], outcome(page)
    (sent,) = national.wallet.stub.ListIncomingTransfers(
        wpb.ListIncomingTransfersRequest(recipient_id_number=mother)).transfers
    assert sent.amount_fen == 1_250 and balance(r13, son) == 8_750


def post_routes(app: Any) -> list[str]:
    """Every path the console takes a POST on, from its router (`/family/{action}` for each action)."""
    from medaid.console.pages_family import ACTIONS

    paths = []
    for resource in app.router.resources():
        if any(route.method == "POST" for route in resource):
            path = resource.canonical
            paths += [path.replace("{action}", a) for a in ACTIONS] if "{action}" in path else [path]
    return paths


async def posting_without_the_token(national: Any, people: dict[str, str], rdb: Any) -> list[tuple[str, str, int]]:
    console = national_console(national)
    app = make_app(console)
    refused = []
    async with TestClient(TestServer(app)) as client:
        csrf = await signed_in(client)
        before = snapshot(rdb)
        # What each form would do with the right token: enough for any of them to write something.
        fields = {"member": people["member"], "relation": "SPOUSE", "method": "face", "attestation": "face-1",
                  "relative": people["member"], "recipient": people["mother"], "amount": "10", "source": "account",
                  "use_place": "130100", "payee": people["kid"], "year": "2027", "why": "核对", "confirm": "1",
                  "identity_checked": "yes", "asked": "yes", "id_number": people["helper"], "next": "/",
                  "member_ref": console.ref(people["member"]), "sender_ref": console.ref(people["son"]),
                  "payee_ref": console.ref(people["kid"]), "holder_ref": console.ref(people["helper"]),
                  "relative_ref": console.ref(people["member"]), "helper": people["member"]}
        for path in post_routes(app):
            if path == "/login":
                continue  # signing in has a token of its own (below)
            for token in ({}, {"csrf": "0" * 64}, {"csrf": csrf[:-1] + ("0" if csrf[-1] != "0" else "1")}):
                url = f"{path}?p={console.ref(people['helper'])}"
                resp = await client.post(url, data={**fields, "request_id": new_request_id(), **token},
                                         allow_redirects=False)
                refused.append((path, "none" if not token else "wrong", resp.status))
        assert snapshot(rdb) == before  # nothing written by any refused POST
        # The same form with the session's token does act: the refusals above were the token's.
        resp = await client.post(f"/bindings/bind?p={console.ref(people['helper'])}",
                                 data={**fields, "request_id": new_request_id(), "csrf": csrf})
        refused.append(("/bindings/bind", "right", resp.status))
    await console.backend.close()
    return refused


def test_every_post_route_refuses_a_missing_or_wrong_csrf_token_and_writes_nothing(national: Any, rdb: Any) -> None:
    r13, r11 = national.reg("13"), national.reg("11")
    people = {"helper": enroll(r13), "member": enroll(r13), "son": enroll(r13),
              "mother": enroll(r11, itype=RESIDENT, region="110000", division="110105"),
              "kid": enroll(r13, itype=RESIDENT, birth="20100101")}
    credit(r13, people["helper"], 100_000)
    before = snapshot(rdb)
    *refused, (_, _, with_token) = asyncio.run(posting_without_the_token(national, people, rdb))
    assert {path for path, _, _ in refused} >= {"/logout", "/prefs", "/lookup", "/person/reveal", "/bindings/bind",
                                                 "/wallet/transfer", "/wallet/end", "/premium/pay",
                                                 "/family/dissolve"}
    assert [r for r in refused if r[2] != 403] == []
    assert with_token == 200 and snapshot(rdb) != before


async def signing_in_from_another_site() -> list[int]:
    """A page of another site posts the sign-in form (login CSRF): with no token, a made-up one, or
    the token of a sign-in page without the cookie it came with."""
    console = console_on_a_dead_registry()
    statuses = []
    async with TestClient(TestServer(make_app(console))) as client:
        stolen = await login_token(client)
        client.session.cookie_jar.clear()
        for token in ("", "0" * 64, stolen):
            for _ in range(ops.MAX_FAILURES):  # not counted as failed sign-ins: no lockout follows
                resp = await client.post("/login", data={"operator": "wang01", "password": "pass-word-1",
                                                         **({"csrf": token} if token else {})},
                                         allow_redirects=False)
                statuses.append(resp.status)
                assert "登录页面已失效" in await resp.text()
                assert COOKIE not in client.session.cookie_jar.filter_cookies(client.make_url("/"))
                client.session.cookie_jar.clear()
        # The console's own sign-in page signs in.
        statuses.append((await post_login(client, "wang01", "pass-word-1", allow_redirects=False)).status)
        statuses.append((await client.get("/", allow_redirects=False)).status)
    await console.backend.close()
    return statuses


def test_signing_in_needs_the_token_of_the_consoles_own_sign_in_page() -> None:
    assert asyncio.run(signing_in_from_another_site()) == [403] * 3 * ops.MAX_FAILURES + [303, 200]


def row_forms(page: str, css_class: str, key: str) -> list[tuple[str, str]]:
    """Each row form of a table (its class): its request id and the value of its hidden `key`."""
    forms = re.findall(rf'<form [^>]*class="{css_class}">(.*?)</form>', page, re.S)
    return [(re.search(r'name="request_id" value="([^"]+)"', f).group(1),
             re.search(rf'name="{key}" value="([^"]+)"', f).group(1)) for f in forms]


async def working_down_the_rows(national: Any, mother: str) -> tuple[list[tuple[str, str]], list[Any]]:
    """The 代为接收 and 结束钱包关系 buttons of one drawing of the page, each pressed in turn (the
    operator works down the list; the browser may not have drawn the answer to the first yet)."""
    console = national_console(national)
    url = f"/wallet?p={console.ref(mother)}"
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        rows = row_forms(await (await client.get(url)).text(), "accept-form", "transfer_id")
        answers = []
        for request_id, transfer_id in rows:
            resp = await client.post(url.replace("/wallet?", "/wallet/accept?"), data={
                "csrf": csrf, "request_id": request_id, "transfer_id": transfer_id, "identity_checked": "yes"})
            answers.append((resp.status, outcome(await resp.text())))
        ends = row_forms(await (await client.get(url)).text(), "end-form", "sender_ref")
        for request_id, sender_ref in ends:
            resp = await client.post(url.replace("/wallet?", "/wallet/end?"), data={
                "csrf": csrf, "request_id": request_id, "sender_ref": sender_ref, "asked": "yes"})
            answers.append((resp.status, outcome(await resp.text())))
    await console.backend.close()
    return rows + ends, answers


def test_each_row_of_the_wallet_page_is_a_form_of_its_own(national: Any) -> None:
    r13, r11 = national.reg("13"), national.reg("11")
    sons, mother = [enroll(r13), enroll(r13)], enroll(r11, itype=RESIDENT, region="110000", division="110105")
    for owner, place in ((sons[0], "130100"), (sons[1], "130100"), (mother, "110000")):
        national.wallet.stub.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=owner,
                                                              province=owner[:2], use_place_admdvs=place,
                                                              real_name=FACE))
    for son in sons:
        credit(r13, son, 10_000)
        national.wallet.stub.CreateTransfer(wpb.CreateTransferRequest(
            request_id=rid("t"), sender_id_number=son, sender_province="13", recipient_id_number=mother,
            relation=cpb.RELATION_PARENT, amount_fen=1_000, source=wpb.TRANSFER_SOURCE_PERSONAL_ACCOUNT,
            verification=FACE))
    forms, answers = asyncio.run(working_down_the_rows(national, mother))
    assert len(forms) == 4 and len({request_id for request_id, _ in forms}) == 4, forms
    assert [(status, len(done), refused) for status, (done, refused) in answers] == [(200, 1, [])] * 4, answers
    # Both accepted, then both relationships ended: each son has his ¥10 back.
    assert [balance(r13, son) for son in sons] == [10_000, 10_000]


async def wallet_page_of(national: Any, pid: str) -> str:
    console = national_console(national)
    async with TestClient(TestServer(make_app(console))) as client:
        await signed_in(client)
        page = await (await client.get(f"/wallet?p={console.ref(pid)}")).text()
    await console.backend.close()
    return page


def test_the_wallet_lots_name_the_sending_province(national: Any) -> None:
    r13, r11 = national.reg("13"), national.reg("11")
    son, mother = enroll(r13), enroll(r11, itype=RESIDENT, region="110000", division="110105")
    for owner, place in ((son, "130100"), (mother, "110000")):
        national.wallet.stub.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=owner,
                                                              province=owner[:2], use_place_admdvs=place,
                                                              real_name=FACE))
    credit(r13, son, 10_000)
    t = national.wallet.stub.CreateTransfer(wpb.CreateTransferRequest(
        request_id=rid("t"), sender_id_number=son, sender_province="13", recipient_id_number=mother,
        relation=cpb.RELATION_PARENT, amount_fen=1_000, source=wpb.TRANSFER_SOURCE_PERSONAL_ACCOUNT,
        verification=FACE)).transfer
    national.wallet.stub.AcceptTransfer(wpb.AcceptTransferRequest(request_id=rid("a"), transfer_id=t.transfer_id,
                                                                  recipient_id_number=mother))
    table = asyncio.run(wallet_page_of(national, mother)).split('id="lots-table"', 1)[1].split("</table>", 1)[0]
    cells = re.findall(r"<tr><td>[^<]*</td><td>[^<]*</td><td>([^<]*)</td>", table)
    assert cells == ["河北 (13)"], table



async def opening_and_sending_at_the_desk(national: Any, son: str, mother: str, ids: tuple[str, str]
                                          ) -> list[tuple[int, str]]:
    console = national_console(national)
    pages = []
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        for path, who, fields in (
                ("/wallet/open", mother, {"use_place": "110000", "method": "face", "attestation": "face-1"}),
                ("/wallet/transfer", son, {"recipient": mother, "relation": "PARENT", "amount": "3.00",
                                           "method": "password", "attestation": "code-1", "source": "account"})):
            resp = await client.post(f"{path}?p={console.ref(who)}",
                                     data={"csrf": csrf, "request_id": ids[len(pages)], **fields})
            pages.append((resp.status, await resp.text()))
    await console.backend.close()
    return pages


def test_a_forms_request_id_finds_every_line_it_caused_in_every_service(national: Any) -> None:
    """docs/operations.md "Tracing": a console form is the edge of what it causes, as a 2207 is. Its
    `console action` line names the form's request id (the idempotency key), and every line of every
    service its call led to names that id, as its request or its origin: the registry's `wallet noted`
    for a wallet opened at the desk (a note that names no request of its own), the wallet's lines of a
    transfer sent there. None names the id of the HTTP request that carried the form instead (which
    its `console action` line does not name)."""
    import json
    import logging

    from medaid.common.logs import JsonFormatter

    r13, r11 = national.reg("13"), national.reg("11")
    son, mother = enroll(r13), enroll(r11, itype=RESIDENT, region="110000", division="110105")
    credit(r13, son, 10_000)
    national.wallet.stub.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=son,
                                                          province="13", use_place_admdvs="130100", real_name=FACE))
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    keep, root = Keep(), logging.getLogger()
    keep.setFormatter(JsonFormatter("test"))
    level = root.level
    root.addHandler(keep)
    root.setLevel(logging.INFO)
    form_ids = (new_request_id(), new_request_id())
    try:
        pages = asyncio.run(opening_and_sending_at_the_desk(national, son, mother, form_ids))
        time.sleep(0.2)
    finally:
        root.removeHandler(keep)
        root.setLevel(level)
    assert [status for status, _ in pages] == [200, 200], [outcome(page) for _, page in pages]
    found = [json.loads(line) for line in lines]
    for action, form_id in zip(("open_wallet", "transfer"), form_ids, strict=True):
        (line,) = [o for o in found if o["msg"] == "console action" and o.get("action") == action]
        assert line["request_id"] == form_id and line["outcome"] == "OK", line
    # The note the wallet sent the registry about the wallet opened: no request of its own, the form's origin.
    noted = [o for o in found if o["msg"] == "wallet noted"]
    assert [o.get("origin_id") for o in noted] == [form_ids[0]], noted
    # A line of the form's own request says it was made for nothing further up.
    own = [o for o in found if o.get("request_id") in form_ids]
    assert {o["msg"] for o in own} >= {"transfer created", "transfer debited", "console action"}, own
    assert not [o for o in own if o.get("origin_id") not in (None, o["request_id"])], own
