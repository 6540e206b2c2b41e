"""The console's HTTP behaviour without a browser: sign-in and CSRF, a page whose registry does not
answer (a real closed port, not a mock) shows the reason in Chinese instead of failing, and the full
id number is shown (against a real registry) only for a stated reason."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import logging
import re
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from medaid.common.clock import FixedClock
from medaid.common.idnumber import make, mask
from medaid.common.logs import JsonFormatter
from medaid.common.v1 import common_pb2 as cpb
from medaid.console import operators as ops
from medaid.console.backend import Backend
from medaid.console.web import COOKIE, Console, make_app, new_request_id
from medaid.registry.v1 import family_pb2 as fpb
from medaid.registry.v1 import premium_pb2 as ppb
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.wallet.v1 import wallet_pb2 as wpb
from support import FACE, RESIDENT, SHANGHAI, balance, credit, dead_port, enroll, rid

PERSON = make("130102", "19800101", "123")


def console_on_a_dead_registry() -> Console:
    operators = ops.parse({"wang01": {"name": "王晓", "role": "console",
                                      "password": ops.hash_password("pass-word-1", n=2 ** 10)}})
    backend = Backend({"13": f"127.0.0.1:{dead_port()}"}, "", deadline_s=2.0)  # nothing listens there
    return Console(backend, operators, b"s" * 32, FixedClock(1_795_800_000_000))


async def login_token(client: TestClient) -> str:
    """The token the sign-in page gives this client (with its cookie), as a browser gets it."""
    page = await (await client.get("/login")).text()
    return re.search(r'id="login-form">\s*<input type="hidden" name="csrf" value="([0-9a-f]+)"', page).group(1)


async def post_login(client: TestClient, operator: str, password: str, **kw: Any) -> Any:
    """The sign-in form sent as the sign-in page makes it."""
    return await client.post("/login", data={"csrf": await login_token(client), "operator": operator,
                                             "password": password}, **kw)


async def signed_in(client: TestClient) -> str:
    """Sign the counter's test operator in; the CSRF token its pages carry."""
    await post_login(client, "wang01", "pass-word-1")
    return re.search(r'name="csrf" value="([0-9a-f]+)"', await (await client.get("/")).text()).group(1)


async def scenario() -> None:
    console = console_on_a_dead_registry()
    async with TestClient(TestServer(make_app(console))) as client:
        assert (await client.get("/person", allow_redirects=False)).headers["Location"] == "/login"
        refused = await post_login(client, "wang01", "wrong")
        assert refused.status == 401 and COOKIE not in client.session.cookie_jar.filter_cookies(client.make_url("/"))
        ok = await post_login(client, "wang01", "pass-word-1", allow_redirects=False)
        cookie = ok.headers["Set-Cookie"]
        assert ok.status == 303 and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        home = await (await client.get("/")).text()
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', home).group(1)
        assert (await client.post("/lookup", data={"id_number": PERSON})).status == 403  # no CSRF token
        page = await client.post("/lookup", data={"csrf": csrf, "id_number": PERSON})
        text = await page.text()
        assert page.status == 503 and "REGISTRY_UNAVAILABLE" in text and "请稍后" in text
        assert PERSON not in text
        wrong_check = PERSON[:-1] + ("1" if PERSON[-1] != "1" else "2")
        bad = await client.post("/lookup", data={"csrf": csrf, "id_number": wrong_check})
        assert bad.status == 422 and "不是有效的18位居民身份证号码" in await bad.text()
    await console.backend.close()


def test_sign_in_csrf_and_a_registry_that_does_not_answer() -> None:
    asyncio.run(scenario())


async def preferring(console: Console) -> None:
    async with TestClient(TestServer(make_app(console))) as client:
        async def back_to(next_path: str) -> str:
            resp = await client.post("/prefs", data={"next": next_path}, allow_redirects=False)
            assert resp.status == 303
            return resp.headers["Location"]

        assert await back_to("/person?p=abc-_=") == "/person?p=abc-_="
        # A browser reads a backslash as a slash and drops tabs: each of these would leave the site.
        for away in ("//evil.example", "/\\evil.example", "/\t/evil.example", "https://evil.example"):
            assert await back_to(away) == "/"
    await console.backend.close()


def test_large_type_sends_the_browser_back_only_to_a_page_of_the_console() -> None:
    asyncio.run(preferring(console_on_a_dead_registry()))


async def guessing() -> None:
    console = console_on_a_dead_registry()
    clock = console.clock
    assert isinstance(clock, FixedClock)

    async def sign_in(client: TestClient, password: str, operator: str = "wang01") -> int:
        resp = await post_login(client, operator, password, allow_redirects=False)
        if resp.status == 429:
            assert "登录失败次数过多" in await resp.text()
        return resp.status

    async with TestClient(TestServer(make_app(console))) as client:
        assert [await sign_in(client, f"guess-{i}") for i in range(ops.MAX_FAILURES)] == [401] * ops.MAX_FAILURES
        # Locked: the right password is refused too, and no session is issued.
        assert await sign_in(client, "pass-word-1") == 429
        assert COOKIE not in client.session.cookie_jar.filter_cookies(client.make_url("/"))
        # Another operator id from the same address is locked as well (the address counts).
        assert await sign_in(client, "whatever", operator="li02") == 429
        clock.advance(ops.LOCKOUT_MS - 1)
        assert await sign_in(client, "pass-word-1") == 429
        clock.advance(1)
        assert await sign_in(client, "pass-word-1") == 303  # the lockout ran out; a success clears the count
        assert await sign_in(client, "guess-again") == 401
    await console.backend.close()


def test_repeated_wrong_passwords_lock_sign_in_for_a_while() -> None:
    asyncio.run(guessing())


async def guessing_behind_an_ingress() -> None:
    console = console_on_a_dead_registry()
    console.trusted_proxies = ops.networks("127.0.0.1")  # the test client stands for the Ingress

    async def sign_in(client: TestClient, password: str, client_ip: str) -> int:
        resp = await post_login(client, "wang01", password,
                                 headers={"X-Forwarded-For": f"{client_ip}, 127.0.0.1"}, allow_redirects=False)
        return resp.status

    async with TestClient(TestServer(make_app(console))) as client:
        # One client guesses; the lockout is that client's (and the operator id's), not the Ingress's.
        assert [await sign_in(client, f"guess-{i}", "10.1.0.7") for i in range(ops.MAX_FAILURES)] == \
            [401] * ops.MAX_FAILURES
        assert await sign_in(client, "pass-word-1", "10.1.0.7") == 429
        resp = await post_login(client, "li02", "x",
                                 headers={"X-Forwarded-For": "10.1.0.8"}, allow_redirects=False)
        assert resp.status == 401  # another counter behind the same Ingress is not locked out
    await console.backend.close()


def test_behind_a_trusted_proxy_sign_in_failures_count_per_client() -> None:
    asyncio.run(guessing_behind_an_ingress())
    assert ops.client_address("10.9.9.9", "10.1.0.7", ops.networks("127.0.0.1")) == "10.9.9.9"  # not a proxy
    assert ops.client_address("127.0.0.1", "6.6.6.6, 10.1.0.7", ops.networks("127.0.0.1")) == "10.1.0.7"


async def revealing(registry_port: int, pid: str, why: str = "核对本人证件") -> None:
    operators = ops.parse({"wang01": {"name": "王晓", "role": "console",
                                      "password": ops.hash_password("pass-word-1", n=2 ** 10)}})
    console = Console(Backend({"13": f"127.0.0.1:{registry_port}"}, ""), operators, b"s" * 32,
                      FixedClock(1_795_800_000_000))
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        found = await client.post("/lookup", data={"csrf": csrf, "id_number": pid}, allow_redirects=False)
        person = found.headers["Location"]
        reveal = person.replace("/person?", "/person/reveal?")
        for blank in ("", "   "):  # the page's `required` is the browser's; a hand-made POST has no reason
            resp = await client.post(reveal, data={"csrf": csrf, "why": blank})
            text = await resp.text()
            assert resp.status == 422 and "请填写查看完整证件号码的原因" in text
            assert pid not in text and "王建国" not in text
        resp = await client.post(reveal, data={"csrf": csrf, "why": why})
        assert resp.status == 200 and pid in await resp.text()
    await console.backend.close()


def test_the_full_id_number_is_shown_only_for_a_stated_reason(hebei: Any) -> None:
    pid = enroll(hebei.stub, name="王建国")
    asyncio.run(revealing(hebei.port, pid))


async def family_forms(registry_port: int, creator: str, member: str) -> None:
    console = Console(Backend({"35": f"127.0.0.1:{registry_port}"}, ""), operators_for_tests(), b"s" * 32,
                      FixedClock(1_795_800_000_000))
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)

        async def family_url(pid: str) -> str:
            found = await client.post("/lookup", data={"csrf": csrf, "id_number": pid}, allow_redirects=False)
            return str(found.headers["Location"]).replace("/person?", "/family?")

        # The adult member, at the desk, confirms without face verification: the refusal is on the page.
        family = await family_url(member)
        family_id = re.search(r'name="family_id" value="([^"]+)"', await (await client.get(family)).text()).group(1)
        resp = await client.post(family.replace("/family?", "/family/respond?"), data={
            "csrf": csrf, "request_id": new_request_id(), "family_id": family_id, "answer": "accept",
            "attestation": ""})
        text = await resp.text()
        assert resp.status == 422 and "(VERIFICATION_REQUIRED)" in text and "人脸识别" in text

        # '1,50' is a slip (for 1.50), not ¥150: refused next to the amount, nothing moved.
        family = await family_url(creator)
        resp = await client.post(family.replace("/family?", "/family/transfer?"), data={
            "csrf": csrf, "request_id": new_request_id(), "family_id": family_id, "amount": "1,50"})
        text = await resp.text()
        assert resp.status == 422 and 'id="transfer-amount-error"' in text and "金额错误" in text
    await console.backend.close()


def operators_for_tests() -> dict[str, ops.Operator]:
    """The tests' operator, serving every province their consoles reach."""
    return dict(ops.parse({"wang01": {"name": "王晓", "role": "console", "provinces": ["13", "11", "62", "35"],
                                      "password": ops.hash_password("pass-word-1", n=2 ** 10)}}))


def test_a_refused_family_form_says_why_and_a_comma_slip_moves_nothing(start_registry: Any) -> None:
    fujian = start_registry("35")
    creator = enroll(fujian.stub, region="350100", division="350102")
    member = enroll(fujian.stub, region="350100", division="350102", birth="19850101")
    credit(fujian.stub, creator, 500_000)
    family_id = fujian.stub.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
        request_id=rid("create"), creator_id_number=creator, commitment=FACE)).account.family_id
    fujian.stub.InviteMember(fpb.InviteMemberRequest(request_id=rid("invite"), family_id=family_id,
                                                     creator_id_number=creator, member_id_number=member,
                                                     relation=cpb.RELATION_SPOUSE))
    asyncio.run(family_forms(fujian.port, creator, member))
    account = fujian.stub.GetFamilyAccount(fpb.GetFamilyAccountRequest(id_number=creator)).account
    assert account.balance_fen == 0 and balance(fujian.stub, creator) == 500_000
    assert [m.state for m in account.members if m.id_number == member] == [fpb.MEMBERSHIP_STATE_INVITED]


async def binding_for_a_child(registry_port: int, helper: str, child: str, guardian_typed: str,
                              then: str = "") -> list[int]:
    console = Console(Backend({"13": f"127.0.0.1:{registry_port}"}, ""), operators_for_tests(), b"s" * 32,
                      FixedClock(1_795_800_000_000))
    statuses = []
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        found = await client.post("/lookup", data={"csrf": csrf, "id_number": helper}, allow_redirects=False)
        bind_url = found.headers["Location"].replace("/person?", "/bindings/bind?")
        for typed in (guardian_typed, then or helper):
            resp = await client.post(bind_url, data={
                "csrf": csrf, "request_id": new_request_id(), "member": child, "relation": "CHILD",
                "method": "guardian", "guardian": typed})
            statuses.append(resp.status)
    await console.backend.close()
    return statuses


def test_a_guardians_number_is_logged_only_as_checked_and_masked(hebei: Any,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    helper = enroll(hebei.stub)
    child = enroll(hebei.stub, birth="20150101")
    to_full_width = str.maketrans("0123456789X", "０１２３４５６７８９Ｘ")  # typed with a Chinese IME
    full_width = helper.translate(to_full_width)
    # The same number with its check character wrong: no id number, refused, and not logged as typed.
    slip = (helper[:-1] + ("1" if helper[-1] != "1" else "2")).translate(to_full_width)
    with caplog.at_level(logging.INFO, logger="medaid.console"):
        assert asyncio.run(binding_for_a_child(hebei.port, helper, child, slip, then=full_width)) == [422, 200]
    lines = [JsonFormatter("console").format(r) for r in caplog.records if r.name == "medaid.console"]
    audit = [json.loads(line) for line in lines if '"action": "bind"' in line]
    assert [(a["outcome"], a["guardian"]) for a in audit] == [("INPUT_INVALID", ""), ("OK", mask(helper))]
    assert not any(full_width[:6] in line or slip[-4:] in line for line in lines)


async def serving_one_member(registry_port: int, at_desk: str, others: list[str]) -> list[int]:
    console = Console(Backend({"35": f"127.0.0.1:{registry_port}"}, ""), operators_for_tests(), b"s" * 32,
                      FixedClock(1_795_800_000_000))
    statuses = []
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        found = await client.post("/lookup", data={"csrf": csrf, "id_number": at_desk}, allow_redirects=False)
        family = str(found.headers["Location"]).replace("/person?", "/family?")
        family_id = re.search(r'name="family_id" value="([^"]+)"', await (await client.get(family)).text()).group(1)
        # A form sent from this person's page naming other members (a reference from another page).
        for action, other, extra in (("transfer", others[0], {"amount": "100"}), ("leave", others[1], {})):
            resp = await client.post(family.replace("/family?", f"/family/{action}?"), data={
                "csrf": csrf, "request_id": new_request_id(), "family_id": family_id,
                "member_ref": console.ref(other), **extra})
            statuses.append(resp.status)
    await console.backend.close()
    return statuses


def test_family_acts_on_a_persons_page_are_that_persons_own(start_registry: Any) -> None:
    fujian = start_registry("35")
    creator, adult = (enroll(fujian.stub, region="350100", division="350102") for _ in range(2))
    child = enroll(fujian.stub, region="350100", division="350102", birth="20150101")
    credit(fujian.stub, creator, 500_000)
    family_id = fujian.stub.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
        request_id=rid("create"), creator_id_number=creator, commitment=FACE)).account.family_id
    for kin in (adult, child):
        fujian.stub.InviteMember(fpb.InviteMemberRequest(request_id=rid("invite"), family_id=family_id,
                                                         creator_id_number=creator, member_id_number=kin,
                                                         relation=cpb.RELATION_CHILD))
    fujian.stub.RespondToInvitation(fpb.RespondToInvitationRequest(
        request_id=rid("respond"), family_id=family_id, member_id_number=adult, accept=True, verification=FACE))
    # The child is at the desk: no 划拨 from the creator's account, and the adult stays a member.
    statuses = asyncio.run(serving_one_member(fujian.port, child, [creator, adult]))
    account = fujian.stub.GetFamilyAccount(fpb.GetFamilyAccountRequest(id_number=creator)).account
    assert balance(fujian.stub, creator) == 500_000 and account.balance_fen == 0
    states = {m.id_number: m.state for m in account.members}
    assert states[adult] == fpb.MEMBERSHIP_STATE_MEMBER
    # What the page does is the child's own: no account to 划拨 from; leaving, the child leaves.
    assert statuses == [422, 200] and states.get(child, fpb.MEMBERSHIP_STATE_ENDED) == fpb.MEMBERSHIP_STATE_ENDED


async def looking_up_while_another_province_is_down(registry_port: int, insured: str, unknown: str) -> list[int]:
    # 35's registry does not answer (nothing listens on its port); the person is ACTIVE in 13.
    console = Console(Backend({"13": f"127.0.0.1:{registry_port}", "35": f"127.0.0.1:{dead_port()}"}, "",
                              deadline_s=2.0), operators_for_tests(), b"s" * 32, FixedClock(1_795_800_000_000))
    statuses = []
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        found = await client.post("/lookup", data={"csrf": csrf, "id_number": insured}, allow_redirects=False)
        statuses.append(found.status)
        if found.status == 303:
            statuses.append((await client.get(found.headers["Location"])).status)
        # Someone 13 does not know may be insured in 35: that waits for 35 (retryable).
        statuses.append((await client.post("/lookup", data={"csrf": csrf, "id_number": unknown})).status)
    await console.backend.close()
    return statuses


def test_a_person_insured_in_a_working_province_is_served_while_another_is_down(hebei: Any) -> None:
    insured = enroll(hebei.stub)
    unknown = make("130102", "19610203", "457")  # a birth date no other test uses: nobody's
    assert asyncio.run(looking_up_while_another_province_is_down(hebei.port, insured, unknown)) == [303, 200, 503]


async def adding_a_proxy_for_a_child(registry_port: int, holder: str, child: str) -> tuple[str, str]:
    console = Console(Backend({"13": f"127.0.0.1:{registry_port}"}, ""), operators_for_tests(), b"s" * 32,
                      FixedClock(1_795_800_000_000))
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        found = await client.post("/lookup", data={"csrf": csrf, "id_number": holder}, allow_redirects=False)
        bindings = str(found.headers["Location"]).replace("/person?", "/bindings?")
        page = await (await client.get(bindings)).text()
        resp = await client.post(bindings.replace("/bindings?", "/bindings/proxy?"), data={
            "csrf": csrf, "request_id": new_request_id(), "relative": child, "relation": "CHILD",
            "method": "guardian", "guardian": holder})
        assert resp.status == 422
        refused = await resp.text()
    await console.backend.close()
    return page, refused


def test_a_proxy_form_offers_no_guardian_path_since_a_proxy_needs_an_attestation(hebei: Any) -> None:
    holder, child = enroll(hebei.stub), enroll(hebei.stub, birth="20150101")
    page, refused = asyncio.run(adding_a_proxy_for_a_child(hebei.port, holder, child))
    proxy_form = page[page.index('id="proxy-form"'):]
    bind_form = page[page.index('id="bind-form"'):page.index('id="proxy-form"')]
    assert 'value="guardian"' in bind_form and 'value="guardian"' not in proxy_form
    assert "请选择身份核验方式" in refused  # not a registry refusal asking a child for face verification
    assert list(hebei.stub.ListProxyBindings(rpb.ListProxyBindingsRequest(id_number=holder)).as_holder) == []


def son_and_mother_with_wallets(national: Any) -> tuple[str, str]:
    """A 河北 employee son holding ¥100 and his 北京 resident mother, each with a 医保钱包 used where
    they are insured: the pair the wallet page's transfer tests send between."""
    r13, r11 = national.reg("13"), national.reg("11")
    son, mother = enroll(r13), enroll(r11, itype=RESIDENT, region="110000", division="110105")
    credit(r13, son, 10_000)
    for owner, place in ((son, "130100"), (mother, "110000")):
        national.wallet.stub.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=owner,
                                                              province=owner[:2], use_place_admdvs=place,
                                                              real_name=FACE))
    return son, mother


async def sending_for_a_son(national: Any, son: str, mother: str) -> list[tuple[int, str]]:
    backend = Backend({p: f"127.0.0.1:{r.port}" for p, r in national.registries.items()},
                      f"127.0.0.1:{national.wallet.port}")
    console = Console(backend, operators_for_tests(), b"s" * 32, national.clock)
    out = []
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        found = await client.post("/lookup", data={"csrf": csrf, "id_number": son}, allow_redirects=False)
        wallet = str(found.headers["Location"]).replace("/person?", "/wallet?")
        page = await (await client.get(wallet)).text()
        form = page[page.index('id="transfer-form"'):]
        form = form[:form.index("</form>")]
        out.append((0, " ".join(re.findall(r'name="method" value="(\w+)"', form))))
        # The limits are the wallet's policy: the form names none, a refusal names the wallet's own.
        out.append((0, "no fixed limit" if "2000元" not in form and "22:00" not in form else form))
        over = await client.post(wallet.replace("/wallet?", "/wallet/transfer?"), data={
            "csrf": csrf, "request_id": new_request_id(), "recipient": mother, "relation": "PARENT",
            "amount": "2000.01", "method": "password", "attestation": "v-0001"})
        out.append((over.status, "每笔最多2000元" if "每笔最多2000元" in await over.text() else "no limit shown"))
        for method in ("counter", "password"):
            resp = await client.post(wallet.replace("/wallet?", "/wallet/transfer?"), data={
                "csrf": csrf, "request_id": new_request_id(), "recipient": mother, "relation": "PARENT",
                "amount": "10", "method": method, "attestation": "v-0001"})
            out.append((resp.status, method))
    await console.backend.close()
    return out


def test_the_desk_sends_a_transfer_with_face_or_medicare_code_password_only(national: Any) -> None:
    r13 = national.reg("13")
    son, mother = son_and_mother_with_wallets(national)
    assert asyncio.run(sending_for_a_son(national, son, mother)) == [
        (0, "face password"), (0, "no fixed limit"), (422, "每笔最多2000元"), (422, "counter"), (200, "password")]
    (sent,) = national.wallet.stub.ListIncomingTransfers(
        wpb.ListIncomingTransfersRequest(recipient_id_number=mother)).transfers
    assert sent.amount_fen == 1_000 and balance(r13, son) == 9_000


def test_a_name_typed_in_the_reason_to_reveal_is_logged_masked(hebei: Any,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    pid = enroll(hebei.stub, name="王建国")
    with caplog.at_level(logging.INFO, logger="medaid.console"):
        asyncio.run(revealing(hebei.port, pid, why="核对王建国本人证件"))
    lines = [JsonFormatter("console").format(r) for r in caplog.records if r.name == "medaid.console"]
    (line,) = [json.loads(x) for x in lines if '"outcome": "OK"' in x and "reveal_id_number" in x]
    assert line["why"] == "核对王**本人证件" and not any("建国" in x for x in lines)


def test_an_id_number_or_given_name_typed_in_the_reason_to_reveal_is_logged_masked(
        hebei: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The reason is the operator's free text: an id number typed there (another person's, in
    full-width digits as an IME types them, split into groups, or cut by the field's 60 characters)
    and the person's given name alone are logged masked, as the person's full name is."""
    pid = enroll(hebei.stub, name="王建国")
    other = make("130102", "19751203", "555")
    wide = other.translate(str.maketrans("0123456789X", "０１２３４５６７８９Ｘ"))
    whys = [f"家属代办,证件{other}", f"核对{wide}", f"核对{other[:6]} {other[6:14]} {other[14:]}",
            "核" * 48 + other, "核对建国的证件", "旧证号130102800101555"]
    with caplog.at_level(logging.INFO, logger="medaid.console"):
        for why in whys:
            asyncio.run(revealing(hebei.port, pid, why=why))
    lines = [JsonFormatter("console").format(r) for r in caplog.records if r.name == "medaid.console"]
    logged = [json.loads(x)["why"] for x in lines if '"outcome": "OK"' in x and "reveal_id_number" in x]
    assert logged == [f"家属代办,证件{other[:6]}********{other[14:]}", f"核对{other[:6]}********{other[14:]}",
                      f"核对****** ******** {other[14:]}", "核" * 48 + "************", "核对**的证件",
                      "旧证号" + "*" * 15], logged
    assert not any(other[6:14] in x or "建国" in x or "１９７５" in x for x in lines)


async def pages_while_the_wallet_is_down(registry_port: int, pid: str) -> list[tuple[int, str]]:
    # The wallet service is stopped (nothing listens on its port); the registry answers.
    console = Console(Backend({"13": f"127.0.0.1:{registry_port}"}, f"127.0.0.1:{dead_port()}", deadline_s=2.0),
                      operators_for_tests(), b"s" * 32, FixedClock(1_795_800_000_000))
    pages = []
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        found = await client.post("/lookup", data={"csrf": csrf, "id_number": pid}, allow_redirects=False)
        for path in (found.headers["Location"], found.headers["Location"].replace("/person?", "/wallet?")):
            resp = await client.get(path)
            pages.append((resp.status, await resp.text()))
    await console.backend.close()
    return pages


def test_a_stopped_wallet_leaves_the_person_page_with_the_wallet_unknown(hebei: Any) -> None:
    pid = enroll(hebei.stub)
    credit(hebei.stub, pid, 12_345)
    (person_status, person), (wallet_status, wallet) = asyncio.run(pages_while_the_wallet_is_down(hebei.port, pid))
    # The registry's part stands; the wallet is unknown (not "no wallet"), and the registry is not blamed.
    assert person_status == 200 and "¥123.45" in person
    assert "医保钱包暂时无法查询" in person and "钱包信息未知" in person and "(WALLET_UNAVAILABLE)" in person
    assert "未开通医保钱包" not in person and "REGISTRY_UNAVAILABLE" not in person
    assert wallet_status == 503 and "医保钱包服务暂时无应答" in wallet and "(WALLET_UNAVAILABLE)" in wallet
    assert "REGISTRY_UNAVAILABLE" not in wallet and "参保地医保经办系统" not in wallet


async def unbinding_while_busy(registry_port: int, helper: str, deadline_s: float) -> tuple[int, str, float]:
    console = Console(Backend({"13": f"127.0.0.1:{registry_port}"}, "", deadline_s=deadline_s),
                      operators_for_tests(), b"s" * 32, FixedClock(1_795_800_000_000))
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        found = await client.post("/lookup", data={"csrf": csrf, "id_number": helper}, allow_redirects=False)
        bindings = str(found.headers["Location"]).replace("/person?", "/bindings?")
        ref = re.search(r'name="member_ref" value="([^"]+)"', await (await client.get(bindings)).text()).group(1)
        started = asyncio.get_running_loop().time()
        resp = await client.post(bindings.replace("/bindings?", "/bindings/unbind?"), data={
            "csrf": csrf, "request_id": new_request_id(), "member_ref": ref})
        took = asyncio.get_running_loop().time() - started
        text = await resp.text()
    await console.backend.close()
    return resp.status, text, took


def test_a_person_busy_in_another_flow_is_told_busy_within_the_deadline(hebei: Any, rdb: Any) -> None:
    """The member's lock is held by another flow (a settlement): the unbind that needs it is told
    the person is busy, to submit again, before the console's deadline; not that the province did
    not answer."""
    helper, member = enroll(hebei.stub), enroll(hebei.stub)
    hebei.stub.BindMutualAid(rpb.BindMutualAidRequest(request_id=rid("bind"), helper_id_number=helper,
                                                      member_id_number=member, relation=cpb.RELATION_SPOUSE,
                                                      member_verification=FACE))
    lock = f"{hebei.registry.k.person_tag(member)}:lock"
    rdb.set(lock, "another-flow:1", px=30_000)
    try:
        status, text, took = asyncio.run(unbinding_while_busy(hebei.port, helper, deadline_s=1.5))
    finally:
        rdb.delete(lock)
    assert status == 422 and "(PATIENT_BUSY)" in text and "请稍后再次提交" in text, text
    assert "无应答" not in text and "REGISTRY_UNAVAILABLE" not in text
    assert took < 1.5
    (binding,) = hebei.stub.ListBindings(rpb.ListBindingsRequest(id_number=helper)).as_helper
    assert binding.member_id_number == member and binding.active


async def signing_out(redis_port: int) -> list[int]:
    """Two console replicas sharing the session secret and the session store (real Redis): a cookie
    copied before sign-out is refused afterwards on both, while another operator's session stands."""
    import redis.asyncio as aioredis
    from medaid.console.sessions import RedisSessions

    operators = operators_for_tests()  # one file, read by both replicas

    def replica() -> Console:
        return Console(Backend({"13": f"127.0.0.1:{dead_port()}"}, ""), operators, b"s" * 32,
                       FixedClock(1_795_800_000_000),
                       sessions=RedisSessions(aioredis.Redis(host="127.0.0.1", port=redis_port)))

    a, b = replica(), replica()
    statuses = []
    async with TestClient(TestServer(make_app(a))) as at_a, TestClient(TestServer(make_app(b))) as at_b, \
            TestClient(TestServer(make_app(b))) as other:
        csrf = await signed_in(at_a)
        await signed_in(other)
        copied = {COOKIE: at_a.session.cookie_jar.filter_cookies(at_a.make_url("/"))[COOKIE].value}
        for client in (at_a, at_b):  # the copy works on either replica while the session is live
            statuses.append((await client.get("/", cookies=copied, allow_redirects=False)).status)
        statuses.append((await at_a.post("/logout", data={"csrf": csrf}, allow_redirects=False)).status)
        for client in (at_a, at_b):
            statuses.append((await client.get("/", cookies=copied, allow_redirects=False)).status)
            statuses.append((await client.post("/lookup", cookies=copied, data={
                "csrf": csrf, "id_number": PERSON}, allow_redirects=False)).status)
        statuses.append((await other.get("/", allow_redirects=False)).status)
    for c in (a, b):
        await c.backend.close()
        assert isinstance(c.sessions, RedisSessions)
        await c.sessions.close()
    return statuses


def test_a_cookie_copied_before_sign_out_is_refused_after_it_on_every_replica(redis_server: Any, rdb: Any) -> None:
    assert asyncio.run(signing_out(redis_server.port)) == [200, 200, 303, 303, 403, 303, 403, 200]


async def signing_out_alone() -> list[int]:
    console = console_on_a_dead_registry()  # no store configured: sessions held in the process
    statuses = []
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        copied = {COOKIE: client.session.cookie_jar.filter_cookies(client.make_url("/"))[COOKIE].value}
        statuses.append((await client.post("/logout", data={"csrf": csrf}, allow_redirects=False)).status)
        statuses.append((await client.get("/", cookies=copied, allow_redirects=False)).status)
    await console.backend.close()
    return statuses


def test_a_single_console_without_a_store_revokes_on_sign_out_too() -> None:
    assert asyncio.run(signing_out_alone()) == [303, 303]


async def a_password_changed(redis_port: int) -> list[int]:
    """An operator's password changed in the file (it leaked) and the console restarted with it, sharing
    the session secret and store: every session signed in with the old password ends at its next click,
    the copy an intruder holds too; signing in with the new one serves again."""
    import redis.asyncio as aioredis
    from medaid.console.sessions import RedisSessions

    def console_with(password: str) -> Console:
        operators = ops.parse({"wang01": {"name": "王晓", "role": "console", "provinces": ["13"],
                                          "password": ops.hash_password(password, n=2 ** 10)}})
        return Console(Backend({"13": f"127.0.0.1:{dead_port()}"}, ""), operators, b"s" * 32,
                       FixedClock(1_795_800_000_000),
                       sessions=RedisSessions(aioredis.Redis(host="127.0.0.1", port=redis_port)))

    before, after = console_with("pass-word-1"), console_with("pass-word-2")
    statuses = []
    async with TestClient(TestServer(make_app(before))) as old, TestClient(TestServer(make_app(after))) as new:
        csrf = await signed_in(old)
        copied = {COOKIE: old.session.cookie_jar.filter_cookies(old.make_url("/"))[COOKIE].value}
        statuses.append((await old.get("/", allow_redirects=False)).status)
        statuses.append((await new.get("/", cookies=copied, allow_redirects=False)).status)
        statuses.append((await new.post("/lookup", cookies=copied, data={"csrf": csrf, "id_number": PERSON},
                                        allow_redirects=False)).status)
        statuses.append((await post_login(new, "wang01", "pass-word-2", allow_redirects=False)).status)
        statuses.append((await new.get("/", allow_redirects=False)).status)
    for c in (before, after):
        await c.backend.close()
        assert isinstance(c.sessions, RedisSessions)
        await c.sessions.close()
    return statuses


def test_a_changed_password_ends_the_sessions_signed_in_with_the_old_one(redis_server: Any, rdb: Any) -> None:
    assert asyncio.run(a_password_changed(redis_server.port)) == [200, 303, 403, 303, 200]


async def signing_in_over_a_session() -> list[int]:
    """A counter's browser signed in again (the next operator at a shared PC, who did not sign the first
    out): the session it replaces ends, so a copy of its cookie is refused from then on."""
    console = console_on_a_dead_registry()
    statuses = []
    async with TestClient(TestServer(make_app(console))) as client:
        await signed_in(client)
        copied = {COOKIE: client.session.cookie_jar.filter_cookies(client.make_url("/"))[COOKIE].value}
        statuses.append((await client.get("/", cookies=copied, allow_redirects=False)).status)
        await signed_in(client)
        statuses.append((await client.get("/", allow_redirects=False)).status)
        statuses.append((await client.get("/", cookies=copied, allow_redirects=False)).status)
    await console.backend.close()
    return statuses


def test_signing_in_again_ends_the_session_it_replaces() -> None:
    assert asyncio.run(signing_in_over_a_session()) == [200, 200, 303]


async def a_store_that_does_not_answer(redis_server: Any) -> list[int]:
    import redis.asyncio as aioredis
    from medaid.console.sessions import RedisSessions

    port = dead_port()  # nothing listens there
    console = console_on_a_dead_registry()
    console.sessions = RedisSessions(aioredis.Redis(host="127.0.0.1", port=port, socket_timeout=1))
    signed = ops.issue(console.secret, "wang01")[1]  # a validly signed cookie nobody can confirm
    async with TestClient(TestServer(make_app(console))) as client:
        sign_in = await post_login(client, "wang01", "pass-word-1",
                                    allow_redirects=False)
        page = await client.get("/", cookies={COOKIE: signed}, allow_redirects=False)
        statuses = [sign_in.status, page.status]
    await console.backend.close()
    return statuses


def test_a_session_store_that_does_not_answer_signs_nobody_in(redis_server: Any) -> None:
    assert asyncio.run(a_store_that_does_not_answer(redis_server)) == [503, 503]


async def family_history_page(registry_port: int, creator: str) -> str:
    console = Console(Backend({"35": f"127.0.0.1:{registry_port}"}, ""), operators_for_tests(), b"s" * 32,
                      FixedClock(1_795_800_000_000))
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        found = await client.post("/lookup", data={"csrf": csrf, "id_number": creator}, allow_redirects=False)
        page = await (await client.get(str(found.headers["Location"]).replace("/person?", "/family?"))).text()
    await console.backend.close()
    return page


def test_every_family_history_event_is_named_in_chinese(start_registry: Any) -> None:
    """The 账户记录 table names each event of the account's history (family.proto FamilyEvent.kind) in
    Chinese: a share returned to a member who left, and a bill reversed, included."""
    fujian = start_registry("35")
    creator, adult = (enroll(fujian.stub, region="350100", division="350102") for _ in range(2))
    child = enroll(fujian.stub, region="350100", division="350102", birth="20150101", itype=RESIDENT)
    for pid in (creator, adult):
        credit(fujian.stub, pid, 500_000)
    family_id = fujian.stub.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
        request_id=rid("create"), creator_id_number=creator, commitment=FACE,
        initial_transfer_fen=10_000)).account.family_id
    for kin in (adult, child):
        fujian.stub.InviteMember(fpb.InviteMemberRequest(request_id=rid("invite"), family_id=family_id,
                                                         creator_id_number=creator, member_id_number=kin,
                                                         relation=cpb.RELATION_CHILD))
    fujian.stub.RespondToInvitation(fpb.RespondToInvitationRequest(
        request_id=rid("respond"), family_id=family_id, member_id_number=adult, accept=True, verification=FACE))
    fujian.stub.TransferIntoFamilyAccount(fpb.TransferIntoFamilyAccountRequest(
        request_id=rid("huabo"), family_id=family_id, contributor_id_number=adult, amount_fen=5_000))
    bill = fujian.stub.Settle(rpb.SettleRequest(
        request_id=rid("settle"), patient_id_number=child, amount_fen=3_000, use_account=True,
        category=cpb.CATEGORY_OUTPATIENT, institution_code="H35010000001", institution_admdvs="350100")).result
    fujian.stub.ReverseSettlement(rpb.ReverseSettlementRequest(request_id=rid("rev"),
                                                               settlement_id=bill.settlement_id))
    fujian.stub.WithdrawContribution(fpb.WithdrawContributionRequest(
        request_id=rid("withdraw"), family_id=family_id, contributor_id_number=creator))
    fujian.stub.LeaveFamilyAccount(fpb.LeaveFamilyAccountRequest(request_id=rid("leave"), family_id=family_id,
                                                                 member_id_number=adult))
    kinds = {e.kind for e in fujian.stub.GetFamilyAccount(fpb.GetFamilyAccountRequest(
        family_id=family_id)).account.history}
    assert kinds >= {"CREATED", "TRANSFER_IN", "JOINED", "SPENT", "REVERSED", "WITHDRAWN", "RETURNED", "LEFT"}
    page = asyncio.run(family_history_page(fujian.port, creator))
    table = page.split('id="h-h"', 1)[1].split("</table>", 1)[0]
    cells = re.findall(r"<tr><td>[^<]*</td><td>([^<]*)</td>", table)
    assert len(cells) == len(fujian.stub.GetFamilyAccount(fpb.GetFamilyAccountRequest(
        family_id=family_id)).account.history)
    assert all(re.fullmatch(r"[\u4e00-\u9fff]+", c) for c in cells), cells


async def premium_rows(national: Any, pid: str) -> list[str]:
    backend = Backend({p: f"127.0.0.1:{r.port}" for p, r in national.registries.items()},
                      f"127.0.0.1:{national.wallet.port}")
    console = Console(backend, operators_for_tests(), b"s" * 32, national.clock)
    async with TestClient(TestServer(make_app(console))) as client:
        await signed_in(client)
        page = await (await client.get(f"/premium?p={console.ref(pid)}")).text()
    await console.backend.close()
    table = page[page.index('id="premiums-table"'):]
    return re.findall(r"<tr><td>(\d{4})</td>", table[:table.index("</table>")])


def test_a_resident_who_paid_their_own_premium_sees_it_once(national: Any) -> None:
    """A resident who pays their own premium from their 医保钱包 is both its payer and its payee: the
    desk lists the payment once, with one 撤销 button, not once from each side."""
    r13, r62 = national.reg("13"), national.reg("62")
    daughter = enroll(r13)
    elder = enroll(r62, itype=RESIDENT, birth="19500101", region="620100", division="620102")
    credit(r13, daughter, 100_000)
    for owner, place in ((daughter, "130100"), (elder, "620100")):
        national.wallet.stub.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=owner,
                                                              province=owner[:2], use_place_admdvs=place,
                                                              real_name=FACE))
    sent = national.wallet.stub.CreateTransfer(wpb.CreateTransferRequest(
        request_id=rid("x"), sender_id_number=daughter, sender_province="13", recipient_id_number=elder,
        relation=cpb.RELATION_PARENT, amount_fen=50_000, verification=FACE)).transfer
    national.wallet.stub.AcceptTransfer(wpb.AcceptTransferRequest(request_id=rid("a"), transfer_id=sent.transfer_id,
                                                                  recipient_id_number=elder))
    r62.PayResidentPremium(ppb.PayResidentPremiumRequest(
        request_id=rid("prem"), payer_id_number=elder, payee_id_number=elder, year="2027",
        source=ppb.PREMIUM_SOURCE_WALLET))
    assert asyncio.run(premium_rows(national, elder)) == ["2027"]
async def binding_without_a_request_id(registry_port: int, helper: str, member: str) -> tuple[int, list[str]]:
    console = Console(Backend({"13": f"127.0.0.1:{registry_port}"}, ""), operators_for_tests(), b"s" * 32,
                      FixedClock(1_795_800_000_000))
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        resp = await client.post(f"/bindings/bind?p={console.ref(helper)}", data={
            "csrf": csrf, "member": member, "relation": "SPOUSE", "method": "face", "attestation": "face-1"})
        alerts = re.findall(r'role="alert"[^>]*>([^<]*)<', await resp.text())
    await console.backend.close()
    return resp.status, alerts


def test_a_form_without_its_request_id_asks_for_the_page_again_in_the_desks_words(hebei: Any) -> None:
    helper, member = enroll(hebei.stub), enroll(hebei.stub)
    status, alerts = asyncio.run(binding_without_a_request_id(hebei.port, helper, member))
    assert status == 422 and len(alerts) == 1, alerts
    assert "结算ID" not in alerts[0] and "刷新页面" in alerts[0], alerts
    assert not hebei.stub.ListBindings(rpb.ListBindingsRequest(id_number=helper)).as_helper


async def premium_form_year(national: Any, pid: str) -> str:
    backend = Backend({p: f"127.0.0.1:{r.port}" for p, r in national.registries.items()},
                      f"127.0.0.1:{national.wallet.port}")
    console = Console(backend, operators_for_tests(), b"s" * 32, national.clock)
    async with TestClient(TestServer(make_app(console))) as client:
        await signed_in(client)
        page = await (await client.get(f"/premium?p={console.ref(pid)}")).text()
    await console.backend.close()
    found = re.search(r'id="pay-year" name="year" value="([^"]*)"', page)
    assert found is not None, page
    return found.group(1)


def test_the_premium_form_offers_the_year_payable_today(national: Any) -> None:
    """The 代缴 form's year is the insurance year the province collects today (SPEC §4b, policy
    `premium_window`): the next one in its collection window, this one in a January extended period,
    none outside both (the desk types it)."""
    gansu = national.registries["62"]
    gansu.registry.ctx.policy = dataclasses.replace(gansu.registry.ctx.policy, premium_extension_end="02-28")
    payer = enroll(national.reg("62"), region="620100", division="620102")
    for day, year in (((2026, 11, 22), "2027"), ((2027, 1, 5), "2027"), ((2027, 2, 28), "2027"),
                      ((2027, 5, 1), "")):
        national.clock.set(int(datetime.datetime(*day, 10, 0, tzinfo=SHANGHAI).timestamp() * 1000))
        assert asyncio.run(premium_form_year(national, payer)) == year, day


async def pages_refused(registry_port: int) -> None:
    """A page whose registry refuses (a person it does not know) and one whose registry does not
    answer (nothing listens on 北京's port), through the console's own middleware."""
    console = Console(Backend({"13": f"127.0.0.1:{registry_port}", "11": f"127.0.0.1:{dead_port()}"}, "",
                              deadline_s=2.0), operators_for_tests(), b"s" * 32, FixedClock(1_795_800_000_000))
    app = make_app(console)

    async def person_in(request: Any) -> Any:  # a page's read of one province's record, as person pages make it
        await console.backend.registry(console.operator(request).role, request.match_info["province"], "GetPerson",
                                       rpb.GetPersonRequest(id_number=PERSON))
        raise AssertionError("a person nobody enrolled was found")

    app.router.add_get("/probe/{province}", person_in)
    async with TestClient(TestServer(app)) as client:
        await signed_in(client)
        assert (await client.get("/probe/13")).status == 422
        assert (await client.get("/probe/11")).status == 503
    await console.backend.close()


def test_a_refused_page_is_logged_by_the_one_level_rule(hebei: Any, caplog: pytest.LogCaptureFixture) -> None:
    """docs/operations.md "Logs": a refusal is an INFO line, a service that did not answer a WARNING one,
    in every process that answers it; the console's pages too."""
    with caplog.at_level(logging.INFO, logger="medaid.console"):
        asyncio.run(pages_refused(hebei.port))
    levels = {r.fields["reason"]: r.levelname for r in caplog.records  # type: ignore[attr-defined]
              if r.name == "medaid.console" and r.getMessage() == "page refused"}
    assert levels == {"PERSON_NOT_FOUND": "INFO", "REGISTRY_UNAVAILABLE": "WARNING"}


async def sending_while_the_registry_does_not_answer(sent: str) -> int:
    """An unbind from 共济绑定 while the person's registry does not answer: the form's action is refused
    before its call, at the read of the person it acts for."""
    console = console_on_a_dead_registry()
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        resp = await client.post(f"/bindings/unbind?p={console.ref(PERSON)}", data={
            "csrf": csrf, "request_id": sent, "member_ref": console.ref(PERSON[:-4] + "0000")})
        status = resp.status
    await console.backend.close()
    return status


def test_an_action_refused_at_the_read_of_its_person_is_logged_with_the_operator(
        caplog: pytest.LogCaptureFixture) -> None:
    """docs/console.md: every action is logged with the operator, the form's request id, the outcome and
    the person concerned (masked), also one the page could not get to the call of."""
    sent = new_request_id()
    with caplog.at_level(logging.INFO, logger="medaid.console"):
        assert asyncio.run(sending_while_the_registry_does_not_answer(sent)) == 503
    lines = [JsonFormatter("console").format(r) for r in caplog.records if r.name == "medaid.console"]
    audit = [json.loads(line) for line in lines if '"msg": "console action"' in line]
    assert [(a["operator"], a["action"], a["request_id"], a["outcome"], a["id_number"]) for a in audit] == [
        ("wang01", "/bindings/unbind", sent, "REGISTRY_UNAVAILABLE", mask(PERSON))], lines
    assert not any(PERSON in line for line in lines)


async def signing_in_with_the_password_in_the_wrong_field() -> list[int]:
    console = console_on_a_dead_registry()
    statuses = []
    async with TestClient(TestServer(make_app(console))) as client:
        statuses.append((await post_login(client, "wang01", "wrong-one")).status)
        for _ in range(6):  # the password typed into the operator field, until sign-in is locked
            statuses.append((await post_login(client, "pass-word-1", "")).status)
        statuses.append((await client.post("/login", data={"csrf": "x", "operator": "pass-word-1",
                                                           "password": ""})).status)
    await console.backend.close()
    return statuses


def test_a_password_typed_into_the_operator_field_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A failed sign-in logs the operator id, but what was typed into that field is logged only when
    it is one of the operators': a password typed there by mistake would be kept in clear in the log."""
    with caplog.at_level(logging.INFO, logger="medaid.console"):
        statuses = asyncio.run(signing_in_with_the_password_in_the_wrong_field())
    assert statuses == [401] * 5 + [429, 429, 403], statuses
    lines = [JsonFormatter("console").format(r) for r in caplog.records if r.name == "medaid.console"]
    refused = [json.loads(x) for x in lines if "sign-in refused" in x]
    assert [x["operator"] for x in refused][:1] == ["wang01"] and len(refused) == 8, refused
    assert not any("pass-word" in x for x in lines), lines
    assert all(x["operator"] == "unknown (11 characters)" for x in refused[1:]), refused


async def sign_in_pages_with_the_password_in_the_wrong_field() -> list[tuple[int, str]]:
    console = console_on_a_dead_registry()
    pages = []
    async with TestClient(TestServer(make_app(console))) as client:
        wrong = await post_login(client, "wang01", "wrong-one")
        pages.append((wrong.status, await wrong.text()))
        for _ in range(6):  # the password typed into the operator field, until sign-in is locked
            resp = await post_login(client, "pass-word-1", "")
            pages.append((resp.status, await resp.text()))
        resp = await client.post("/login", data={"csrf": "x", "operator": "pass-word-1", "password": ""})
        pages.append((resp.status, await resp.text()))
    await console.backend.close()
    return pages


def test_a_password_typed_into_the_operator_field_is_not_shown_back() -> None:
    """A refused sign-in shows back what was typed as the operator id only when it is one of the
    operators' (as the log line does): a password typed into that field by mistake would stay on the
    counter's screen, in the page's HTML, for anyone passing by."""
    pages = asyncio.run(sign_in_pages_with_the_password_in_the_wrong_field())
    assert [status for status, _ in pages] == [401] * 5 + [429, 429, 403], [status for status, _ in pages]
    assert 'name="operator"' in pages[0][1] and 'value="wang01"' in pages[0][1], pages[0][1]
    for status, page in pages[1:]:
        assert 'name="operator"' in page and "pass-word" not in page, (status, page)


async def sending_a_form_while_the_store_is_stopped() -> list[tuple[int, str]]:
    """A form, then a 再次提交, sent by a signed-in operator after the console's session store (its own
    redis-server) stopped: what the pages say of the business."""
    import redis.asyncio as aioredis
    from medaid.common.redis_server import RedisServer
    from medaid.console.sessions import RedisSessions

    with RedisServer() as store:
        console = console_on_a_dead_registry()
        console.sessions = RedisSessions(aioredis.Redis(host="127.0.0.1", port=store.port, socket_timeout=1))
        async with TestClient(TestServer(make_app(console))) as client:
            csrf = await signed_in(client)
            store.stop()
            said = []
            for data in ({"request_id": new_request_id(), "family_id": "F1", "amount": "250.00"},
                         {"resend": "a-sealed-form"}):
                sent = await client.post(f"/family/transfer?p={console.ref(PERSON)}", data={"csrf": csrf, **data})
                said.append((sent.status, await sent.text()))
        await console.backend.close()
        await console.sessions.client.aclose()
    return said


def test_a_form_sent_while_the_session_store_is_stopped_says_nothing_was_done() -> None:
    (status, said), (again, said_again) = asyncio.run(sending_a_form_while_the_store_is_stopped())
    assert status == 503 and "登录状态暂时无法核验" in said, said
    assert "刚才提交的业务没有办理" in said and "可能已经办理" not in said, said
    # A 再次提交 was not sent either, but the form sent first may have been done: it says so.
    assert again == 503 and "没有发出" in said_again and "可能已经办理" in said_again, said_again
