"""What the console answers when something is wrong with the request rather than the business: a
person link that is bad or missing, a page that does not exist, a wrong method, a refusal from a form
the page no longer draws, and digits of another script typed into a year or a use-place. Each answer
is the console's own page, in Chinese, with the reason shown and a way back, and nothing is called."""

from __future__ import annotations

import asyncio
import html
import json
import logging
import re
from collections.abc import Callable
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from medaid.common.clock import FixedClock
from medaid.common.logs import JsonFormatter
from medaid.common.server import start_server
from medaid.common.v1 import common_pb2 as cpb
from medaid.console import rules
from medaid.console.backend import Backend
from medaid.console.web import Console, make_app, new_request_id
from medaid.directory import Directory
from medaid.registry.servicer import register
from medaid.registry.v1 import family_pb2 as fpb
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.registry.v1 import registry_pb2_grpc
from medaid.wallet.v1 import wallet_pb2 as wpb
from support import (
    FACE,
    RESIDENT,
    balance,
    bind,
    credit,
    dead_port,
    enroll,
    fund_wallet,
    rid,
    settle,
    snapshot,
)
from test_console_forms import national_console, outcome
from test_console_http import (
    PERSON,
    console_on_a_dead_registry,
    operators_for_tests,
    signed_in,
    son_and_mother_with_wallets,
)
from test_wallet_retry import Crash, CrashOnce

ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")


def assert_console_page(status: int, content_type: str, page: str) -> None:
    """The console's own layout, a Chinese message and a link back to the look-up page."""
    assert content_type == "text/html", (status, content_type, page)
    assert '<html lang="zh-CN">' in page and 'id="page-error"' in page and '<a href="/">' in page, page
    assert re.search(r'id="page-error">[^<]*[\u4e00-\u9fff]', page), page
    assert "Not Found" not in page and "Method Not Allowed" not in page and "Bad Request" not in page


async def asking_for_what_is_not_there() -> list[tuple[str, int]]:
    console = console_on_a_dead_registry()
    seen = []
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        forged = console.ref(PERSON)[:-4] + "AAAA"
        for method, path in (("GET", "/person?p=not-a-reference"), ("GET", "/person"),
                             ("GET", f"/wallet?p={forged}"), ("POST", "/person/reveal?p=x"),
                             ("GET", "/no-such-page"), ("GET", "/lookup"), ("PUT", "/family/dissolve")):
            resp = await client.request(method, path, data={"csrf": csrf, "why": "核对"})
            page = await resp.text()
            assert_console_page(resp.status, resp.content_type, page)
            assert PERSON not in page and PERSON[-4:] not in page
            assert resp.headers.get("X-Request-Id") and "frame-ancestors 'none'" in resp.headers[
                "Content-Security-Policy"]
            if resp.status == 405:
                assert "POST" in resp.headers["Allow"]
            seen.append((path, resp.status))
    await console.backend.close()
    return seen


def test_a_bad_link_an_unknown_page_or_a_wrong_method_gets_the_consoles_own_chinese_page() -> None:
    assert [status for _, status in asyncio.run(asking_for_what_is_not_there())] == [400] * 4 + [404, 405, 405]


async def posting_past_the_body_limit() -> list[tuple[int, str, str]]:
    """A form whose body is past the console's limit (64 KiB: text pasted into a field by mistake),
    signed in and on the sign-in page."""
    console = console_on_a_dead_registry()
    seen = []
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        for path, data in (("/lookup", {"csrf": csrf, "id_number": "1" * 70_000}),
                           ("/login", {"csrf": "x", "operator": "w" * 70_000, "password": "p"})):
            resp = await client.post(path, data=data)
            seen.append((resp.status, resp.content_type, await resp.text()))
    await console.backend.close()
    return seen


def test_a_form_too_large_gets_the_consoles_own_chinese_page() -> None:
    for status, content_type, page in asyncio.run(posting_past_the_body_limit()):
        assert status == 413
        assert_console_page(status, content_type, page)
        assert "提交的内容过大" in page and "Maximum request body size" not in page, page


async def dissolving_twice(registry_port: int, creator: str) -> list[tuple[int, list[str], list[str]]]:
    console = Console(Backend({"35": f"127.0.0.1:{registry_port}"}, ""), operators_for_tests(), b"s" * 32,
                      FixedClock(1_795_800_000_000))
    seen = []
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        family = f"/family?p={console.ref(creator)}"
        family_id = re.search(r'name="family_id" value="([^"]+)"', await (await client.get(family)).text()).group(1)
        # The same page open in two tabs: 解散 from one, then from the other (a new request id each).
        for _ in range(2):
            resp = await client.post(family.replace("/family?", "/family/dissolve?"), data={
                "csrf": csrf, "request_id": new_request_id(), "family_id": family_id, "confirm": "1"})
            done, refused = outcome(await resp.text())
            seen.append((resp.status, done, refused))
    await console.backend.close()
    return seen


def test_a_refusal_from_a_form_the_page_no_longer_draws_is_still_shown(start_registry: Any) -> None:
    fujian = start_registry("35")
    creator = enroll(fujian.stub, region="350100", division="350102")
    credit(fujian.stub, creator, 500_000)
    fujian.stub.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
        request_id=rid("create"), creator_id_number=creator, commitment=FACE, initial_transfer_fen=10_000))
    (first, again) = asyncio.run(dissolving_twice(fujian.port, creator))
    assert first[0] == 200 and first[1] and not first[2], first
    status, done, refused = again
    assert status == 422 and not done and len(refused) == 1, again
    assert re.search(r"[\u4e00-\u9fff].*\([A-Z_]+\)", refused[0]), again


async def typing_other_digits(national: Any, son: str, mother: str) -> list[tuple[str, int, str]]:
    console = national_console(national)
    seen = []
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        year = str(national.clock.today().year + 1).translate(ARABIC_INDIC)
        place = "130100".translate(ARABIC_INDIC)
        for path, who, fields, error_id in (
                ("/premium/pay", son, {"payee": mother, "relation": "PARENT", "year": year, "source": "account"},
                 "pay-year-error"),
                ("/wallet/use-place", son, {"use_place": place}, "use_place-use_place-error"),
                ("/wallet/open", mother, {"use_place": place, "method": "face", "attestation": "face-1"},
                 "open_wallet-use_place-error")):
            resp = await client.post(f"{path}?p={console.ref(who)}", data={
                "csrf": csrf, "request_id": new_request_id(), **fields})
            page = await resp.text()
            found = re.search(rf'id="{error_id}"[^>]*>([^<]*)<', page)
            seen.append((path, resp.status, found.group(1) if found else page))
    await console.backend.close()
    return seen


def test_digits_of_another_script_get_the_forms_own_error_and_call_nothing(
        national: Any, caplog: pytest.LogCaptureFixture) -> None:
    r13, r11 = national.reg("13"), national.reg("11")
    son, mother = enroll(r13), enroll(r11, itype=RESIDENT, region="110000", division="110105")
    credit(r13, son, 100_000)
    national.wallet.stub.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=son,
                                                          province="13", use_place_admdvs="130100",
                                                          real_name=FACE))
    with caplog.at_level(logging.INFO, logger="medaid.console"):
        seen = asyncio.run(typing_other_digits(national, son, mother))
    assert seen == [("/premium/pay", 422, rules.refusal_text("INVALID_YEAR")),
                    ("/wallet/use-place", 422, rules.refusal_text("INVALID_ADMDVS")),
                    ("/wallet/open", 422, rules.refusal_text("INVALID_ADMDVS"))]
    audit = [json.loads(JsonFormatter("console").format(r)) for r in caplog.records
             if r.name == "medaid.console" and r.getMessage() == "console action"]
    audit = [a for a in audit if a["action"] != "wallet"]  # the wallet page's own view of the person
    assert [(a["action"], a["outcome"]) for a in audit] == [
        ("pay", "INPUT_INVALID"), ("use_place", "INPUT_INVALID"), ("open_wallet", "INPUT_INVALID")]
    wallet = national.wallet.stub.GetWallet(wpb.GetWalletRequest(owner_id_number=son))
    assert wallet.wallet.use_place_admdvs == "130100"


async def opening_from_two_windows(national: Any, owner: str) -> list[tuple[int, list[str], list[str]]]:
    console = national_console(national)
    seen = []
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        # The 开通 page open in two windows: sent from one, then from the other (a request id each).
        for attestation in ("face-1", "face-2"):
            resp = await client.post(f"/wallet/open?p={console.ref(owner)}", data={
                "csrf": csrf, "request_id": new_request_id(), "use_place": "130100", "method": "face",
                "attestation": attestation})
            done, refused = outcome(await resp.text())
            seen.append((resp.status, done, refused))
    await console.backend.close()
    return seen


def test_opening_a_wallet_that_is_open_by_now_says_so(national: Any) -> None:
    owner = enroll(national.reg("13"))
    first, again = asyncio.run(opening_from_two_windows(national, owner))
    assert first[0] == 200 and first[1] and not first[2], first
    status, done, refused = again
    assert status == 422 and not done and refused == [
        f"{rules.refusal_text('WALLET_EXISTS')}(WALLET_EXISTS)"], again


async def paying_for_a_child_insured_elsewhere(national: Any, payer: str, payee: str) -> tuple[int, list[str]]:
    console = national_console(national)
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        resp = await client.post(f"/premium/pay?p={console.ref(payer)}", data={
            "csrf": csrf, "request_id": new_request_id(), "payee": payee, "relation": "CHILD",
            "year": str(national.clock.today().year + 1), "source": "account"})
        status, (_, refused) = resp.status, outcome(await resp.text())
    await console.backend.close()
    return status, refused


def test_a_premium_for_a_near_kin_insured_in_another_province_is_refused_as_such(national: Any, rdb: Any) -> None:
    r13, r11 = national.reg("13"), national.reg("11")
    payer = enroll(r13)
    payee = enroll(r11, itype=RESIDENT, region="110000", division="110105", birth="20100101")
    credit(r13, payer, 100_000)
    before = snapshot(rdb)
    status, refused = asyncio.run(paying_for_a_child_insured_elsewhere(national, payer, payee))
    # The payer is insured here (河北); what stands in the way is the payee's province (SPEC §4b), not
    # the payer's insurance.
    assert status == 422 and len(refused) == 1 and refused[0].endswith("(CROSS_PROVINCE)"), refused
    assert refused[0].startswith(rules.refusal_text("CROSS_PROVINCE", words=rules.PREMIUM_WORDS)), refused
    assert snapshot(rdb) == before and balance(r13, payer) == 100_000


def a_wallet_with_history(national: Any, whose: str = "mother") -> str:
    """A mother's (or her son's) 医保钱包 page after a son's ¥10 was accepted, and she ended the
    relationship with him: the ¥10 went back (LOT_IN, LOT_RELEASE) and a ¥3 that a crash had stopped
    before its debit failed (RELATIONSHIP_ENDED)."""
    r13 = national.reg("13")
    son, mother = son_and_mother_with_wallets(national)

    def send(fen: int) -> str:
        return national.wallet.stub.CreateTransfer(wpb.CreateTransferRequest(
            request_id=rid("t"), sender_id_number=son, sender_province="13", recipient_id_number=mother,
            relation=cpb.RELATION_PARENT, amount_fen=fen, source=wpb.TRANSFER_SOURCE_PERSONAL_ACCOUNT,
            verification=FACE)).transfer.transfer_id

    national.wallet.stub.AcceptTransfer(wpb.AcceptTransferRequest(request_id=rid("a"), transfer_id=send(1_000),
                                                                  recipient_id_number=mother))
    # A second transfer stopped by a crash before its debit (CREATED): ending the relationship fails it.
    hook = CrashOnce("transfer.after_create")
    national.wallet.wallet.fault_hook = hook
    try:
        with pytest.raises(grpc.RpcError):
            send(300)
    finally:
        national.wallet.wallet.fault_hook = None
    assert hook.fired
    national.wallet.stub.EndWalletRelationship(wpb.EndWalletRelationshipRequest(
        request_id=rid("end"), sender_id_number=son, holder_id_number=mother, requested_by_id_number=mother))
    assert balance(r13, son) == 10_000

    async def page() -> str:
        console = national_console(national)
        async with TestClient(TestServer(make_app(console))) as client:
            await signed_in(client)
            text = await (await client.get(f"/wallet?p={console.ref(son if whose == 'son' else mother)}")).text()
        await console.backend.close()
        return text

    return str(asyncio.run(page()))


def table(page: str, table_id: str) -> str:
    return re.search(rf'<table id="{table_id}">(.*?)</table>', page, re.S).group(1)


CODE = re.compile(r"\b[A-Z][A-Z_]{2,}\b")  # a service's code (LOT_IN, RELATIONSHIP_ENDED), not Chinese


def test_the_wallet_entries_are_named_in_chinese(national: Any) -> None:
    entries = table(a_wallet_with_history(national), "entries-table")
    kinds = re.findall(r"<tr><td>[^<]*</td><td>([^<]*)</td>", entries)
    assert len(kinds) == 2 and not CODE.findall(entries), entries
    assert all(re.search(r"[\u4e00-\u9fff]", kind) for kind in kinds), kinds


def test_why_a_transfer_went_back_is_said_in_chinese(national: Any) -> None:
    transfers = table(a_wallet_with_history(national, "son"), "transfers-table")
    notes = re.findall(r'<td class="transfer-state">[^<]*</td><td>[^<]*</td>\s*<td>([^<]*)</td>', transfers)
    assert len(notes) == 2 and not CODE.findall(" ".join(notes)), transfers
    assert rules.refusal_text("RELATIONSHIP_ENDED") in notes, transfers


async def diagnosing_while_the_members_registry_is_down(national: Any, redis_port: int, member: str,
                                                        helper: str) -> tuple[int, str]:
    """A console in front of 河北's registry and a 北京 registry that does not answer (nothing listens
    on its port), finding people by the national person directory as deployed."""
    client = aioredis.Redis(host="127.0.0.1", port=redis_port)
    backend = Backend({"13": f"127.0.0.1:{national.registries['13'].port}", "11": f"127.0.0.1:{dead_port()}"},
                      f"127.0.0.1:{national.wallet.port}", deadline_s=2.0, directory=Directory(client))
    console = Console(backend, operators_for_tests(), b"s" * 32, national.clock)
    async with TestClient(TestServer(make_app(console))) as http:
        csrf = await signed_in(http)
        resp = await http.post("/diagnose", data={"csrf": csrf, "member": member, "helper": helper})
        page = await resp.text()
    await backend.close()
    await client.aclose()
    return resp.status, page


def test_a_diagnosis_is_given_by_the_helpers_registry_while_the_members_does_not_answer(
        national: Any, redis_server: Any) -> None:
    """The helper's registry answers the diagnosis on its own (it finds a member insured elsewhere,
    原因四, by the directory): a 河北 helper's pair is diagnosed while 北京's registry is down."""
    r13, r11 = national.reg("13"), national.reg("11")
    helper = enroll(r13, birth="19700101")
    credit(r13, helper, 50_000)
    member = enroll(r11, itype=RESIDENT, birth="19400101", region="110000", division="110105")
    status, page = asyncio.run(diagnosing_while_the_members_registry_is_down(national, redis_server.port, member,
                                                                             helper))
    assert status == 200, re.findall(r'role="alert"[^>]*>([^<]*)<', page)
    assert 'data-code="CROSS_PROVINCE"' in page and "原因四" in page


async def sending_too_much(national: Any, son: str, mother: str, amount: str) -> tuple[int, str]:
    console = national_console(national)
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        resp = await client.post(f"/wallet/transfer?p={console.ref(son)}", data={
            "csrf": csrf, "request_id": new_request_id(), "recipient": mother, "relation": "PARENT",
            "amount": amount, "method": "password", "attestation": "code-1", "source": "account"})
        page = await resp.text()
    await console.backend.close()
    return resp.status, page


def test_an_amount_past_the_counters_limit_is_said_to_be_too_large(national: Any, rdb: Any) -> None:
    """More than one operation's limit (the services', ¥10,000,000,000) is a typing slip at the
    counter: the amount field says the amount is over the limit (AMOUNT_TOO_LARGE's words, with the
    limit in yuan), not that it is malformed, and nothing is called."""
    son, mother = son_and_mother_with_wallets(national)
    before = snapshot(rdb)
    for amount in ("10000000000.01", "10,000,000,000.01"):
        status, page = asyncio.run(sending_too_much(national, son, mother, amount))
        error = re.search(r'id="transfer-amount-error"[^>]*>([^<]*)<', page)
        assert status == 422 and error is not None, (amount, re.findall(r'role="alert"[^>]*>([^<]*)<', page))
        assert error.group(1) == ("金额超过单笔上限(每笔最多10000000000元);"
                                  "本次未受理,请更正后重新提交"), (amount, error.group(1))
    assert snapshot(rdb) == before


async def sending_into_a_crash(national: Any, son: str, mother: str) -> list[tuple[int, str, str, list[str]]]:
    """The son's 发起划转 at the desk, the wallet failing after it debited his account (an answer
    without ErrorInfo: gRPC UNKNOWN), then the form as the page gave it back submitted again."""
    console = national_console(national)
    seen = []
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        sent = new_request_id()
        for _ in range(2):
            resp = await client.post(f"/wallet/transfer?p={console.ref(son)}", data={
                "csrf": csrf, "request_id": sent, "recipient": mother, "relation": "PARENT", "amount": "10",
                "method": "password", "attestation": "code-1", "source": "account"})
            page = await resp.text()
            form = page[page.index('id="transfer-form"'):]
            kept = re.search(r'name="request_id" value="([^"]+)"', form[:form.index("</form>")]).group(1)
            done, refused = outcome(page)
            seen.append((resp.status, sent, kept, refused or done))
            sent = kept  # what the operator's second press of 提交 sends
    await console.backend.close()
    return seen


def test_a_form_whose_call_ended_without_an_outcome_keeps_its_request_id(national: Any) -> None:
    """A call that failed inside the service (gRPC UNKNOWN or INTERNAL, no ErrorInfo) may have taken
    effect, as a deadline may: the form keeps its request id, so submitting it again is answered by
    the first call's outcome and moves the money once, not a second time under a new id."""
    r13 = national.reg("13")
    son, mother = son_and_mother_with_wallets(national)
    hook = CrashOnce("transfer.after_debit")
    national.wallet.wallet.fault_hook = hook
    try:
        (failed, again) = asyncio.run(sending_into_a_crash(national, son, mother))
    finally:
        national.wallet.wallet.fault_hook = None
    assert hook.fired
    assert failed[0] == 422 and failed[3] and failed[3][0].endswith("(INTERNAL_ERROR)"), failed
    assert "再次提交" in failed[3][0] and failed[2] == failed[1], failed  # the same id, for the same business
    assert again[0] == 200 and again[3] and "已发起划转" in again[3][0], again
    sent = national.wallet.stub.ListIncomingTransfers(
        wpb.ListIncomingTransfersRequest(recipient_id_number=mother)).transfers
    assert [t.amount_fen for t in sent] == [1_000] and balance(r13, son) == 9_000


def crash_at(point: str) -> Callable[[str], None]:
    """A fault hook that fails every call reaching `point`, until it is taken away."""
    def hook(at: str) -> None:
        if at == point:
            raise Crash(at)
    return hook


async def record_states(national: Any, people: list[str]) -> list[list[str]]:
    """The 状态 column of each person's 消费记录 page."""
    console = national_console(national)
    states = []
    async with TestClient(TestServer(make_app(console))) as client:
        await signed_in(client)
        for pid in people:
            page = await (await client.get(f"/records?p={console.ref(pid)}")).text()
            table = page[page.index('<table id="records-table">'):page.index("</table>")]
            states.append(re.findall(r'<td class="num">[^<]*</td><td>([^<]*)</td></tr>', table))
    await console.backend.close()
    return states


def test_a_settlement_whose_reversal_is_unfinished_is_shown_in_progress_on_both_sides(national: Any) -> None:
    """While a reversal is unfinished (its helper's share already back, the member's side not
    closed yet), the member's and the helper's 消费记录 both say 处理中, as GetSettlement and 5203 say
    IN_PROGRESS; once it finishes both say 已撤销."""
    r13 = national.reg("13")
    patient, helper = enroll(r13, birth="19600101"), enroll(r13, birth="19880101")
    credit(r13, patient, 2_000)
    credit(r13, helper, 10_000)
    bind(r13, helper, patient, relation=cpb.RELATION_PARENT)
    sender = enroll(national.reg("11"), birth="19900101", region="110000", division="110105")
    credit(national.reg("11"), sender, 50_000)
    fund_wallet(national.wallet.stub, sender, patient, 3_000)
    done = settle(r13, patient, 12_000)
    assert (done.wallet_pay_fen, done.mulaid_pay_fen) == (3_000, 7_000), done
    assert asyncio.run(record_states(national, [patient, helper])) == [["已结算"], ["已结算"]]
    reverse = rpb.ReverseSettlementRequest(request_id=rid("rev"), settlement_id=done.settlement_id)
    # The registry stops after the helper's and the wallet's shares are back, before the member's
    # side is closed (as a process that dies there, or a wallet that does not answer, leaves it).
    national.registries["13"].registry.fault_hook = crash_at("reverse.after_helper_refund")
    try:
        with pytest.raises(grpc.RpcError):
            r13.ReverseSettlement(reverse)
        got = r13.GetSettlement(rpb.GetSettlementRequest(settlement_id=done.settlement_id)).result
        assert got.state == "IN_PROGRESS" and balance(r13, helper) == 10_000, got
        assert asyncio.run(record_states(national, [patient, helper])) == [["处理中"], ["处理中"]]
    finally:
        national.registries["13"].registry.fault_hook = None
    r13.ReverseSettlement(reverse)
    assert asyncio.run(record_states(national, [patient, helper])) == [["已撤销"], ["已撤销"]]


async def sending_into_a_crash_then_a_slip(national: Any, son: str,
                                           mother: str) -> list[tuple[int, str, str, list[str]]]:
    """As sending_into_a_crash, but the operator's second press comes with a slip in the amount
    ('1,0': refused by the form itself) and the third with the amount corrected."""
    console = national_console(national)
    seen = []
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        sent = new_request_id()
        for amount in ("10", "1,0", "10"):
            resp = await client.post(f"/wallet/transfer?p={console.ref(son)}", data={
                "csrf": csrf, "request_id": sent, "recipient": mother, "relation": "PARENT", "amount": amount,
                "method": "password", "attestation": "code-1", "source": "account"})
            page = await resp.text()
            form = page[page.index('id="transfer-form"'):]
            kept = re.search(r'name="request_id" value="([^"]+)"', form[:form.index("</form>")]).group(1)
            done, refused = outcome(page)
            seen.append((resp.status, sent, kept, refused or done))
            sent = kept
    await console.backend.close()
    return seen


def test_a_form_without_an_outcome_keeps_its_request_id_through_a_typing_slip(national: Any) -> None:
    """The form of a call that may have taken effect keeps its request id; a slip the form itself
    refuses (nothing is called) does not trade it for a new one: the corrected form is answered by the
    first call's outcome, and the money moves once."""
    r13 = national.reg("13")
    son, mother = son_and_mother_with_wallets(national)
    hook = CrashOnce("transfer.after_debit")
    national.wallet.wallet.fault_hook = hook
    try:
        failed, slip, again = asyncio.run(sending_into_a_crash_then_a_slip(national, son, mother))
    finally:
        national.wallet.wallet.fault_hook = None
    assert hook.fired and failed[0] == 422 and failed[2] == failed[1], failed
    assert slip[0] == 422 and slip[2] == failed[1], slip  # the slip keeps the id of the call without an outcome
    assert again[0] == 200 and again[3] and "已发起划转" in again[3][0], again
    sent = national.wallet.stub.ListIncomingTransfers(
        wpb.ListIncomingTransfersRequest(recipient_id_number=mother)).transfers
    assert [t.amount_fen for t in sent] == [1_000] and balance(r13, son) == 9_000


def hidden_fields(form: str) -> dict[str, str]:
    return {name: html.unescape(value)
            for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form)}


def resent(console: Console, hidden: dict[str, str]) -> dict[str, str]:
    """What a 再次提交 form sends: its CSRF token and the fields it carries sealed (Console.seal_form)."""
    sealed = json.loads(console.fernet.decrypt(hidden["resend"].encode()))
    return {"csrf": hidden["csrf"], **dict(sealed["fields"])}


async def paying_while_the_registry_goes_down(fujian: Any, loop_thread: Any, creator: str) -> dict[str, Any]:
    """The creator's 划拨 of ¥100 at the desk: the registry dies right after the debit (the call gets
    no answer) and does not answer the page's redraw either; then it is back, and the operator presses
    再次提交 on the page the console gave."""
    console = Console(Backend({"35": f"127.0.0.1:{fujian.port}"}, "", deadline_s=2.0), operators_for_tests(),
                      b"s" * 32, FixedClock(1_795_800_000_000))
    seen: dict[str, Any] = {}
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        family = f"/family?p={console.ref(creator)}"
        family_id = re.search(r'name="family_id" value="([^"]+)"', await (await client.get(family)).text()).group(1)
        sent = {"csrf": csrf, "request_id": new_request_id(), "family_id": family_id, "amount": "100"}  # 划拨 ¥100
        resp = await client.post(family.replace("/family?", "/family/transfer?"), data=sent)
        page = await resp.text()
        seen["failed"] = (resp.status, page)
        form = re.search(r'<form method="post" action="([^"]+)" id="resend-form">(.*?)</form>', page, re.S)
        assert form is not None, page
        seen["sent"], seen["resend"] = sent, resent(console, hidden_fields(form.group(2)))

        async def back() -> Any:
            return await start_server(lambda s: register(s, fujian.registry), port=fujian.port)

        fujian.registry.fault_hook = None
        running = loop_thread.run(back())
        try:
            again = await client.post(html.unescape(form.group(1)), data=hidden_fields(form.group(2)))
            seen["again"] = (again.status, outcome(await again.text()))
            with grpc.insecure_channel(f"127.0.0.1:{fujian.port}") as channel:
                stub = registry_pb2_grpc.RegistryServiceStub(channel)
                got = stub.GetFamilyAccount(fpb.GetFamilyAccountRequest(family_id=family_id, id_number=creator))
                seen["after"] = (balance(stub, creator), got.account.balance_fen)
        finally:
            loop_thread.run(running.server.stop(0))
    await console.backend.close()
    return seen


def test_a_form_whose_call_and_page_get_no_answer_can_be_sent_again_under_its_id(
        start_registry: Any, loop_thread: Any) -> None:
    """A 划拨 whose call gets no answer, and whose page then cannot be drawn either (the registry is
    down): the console's error page carries the form as sent, with its request id and the session's
    CSRF token, so 再次提交 is answered by the first call's outcome and the money moves once; opening
    the page again would make a new request id, and a second 划拨."""
    fujian = start_registry("35")
    creator = enroll(fujian.stub, region="350100", division="350102")
    credit(fujian.stub, creator, 500_000)
    fujian.stub.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
        request_id=rid("create"), creator_id_number=creator, commitment=FACE))

    def dies_after_the_debit(point: str) -> None:
        if point == "family.after_debit":
            # The process goes: this call ends without an answer, and nothing after it is answered.
            asyncio.get_running_loop().create_task(fujian.server.stop(1.0))
            raise Crash(point)

    fujian.registry.fault_hook = dies_after_the_debit
    seen = asyncio.run(paying_while_the_registry_goes_down(fujian, loop_thread, creator))
    status, page = seen["failed"]
    assert status == 503 and "再次提交" in page, page
    assert seen["resend"] == seen["sent"], seen["resend"]  # the same request id, fields and CSRF token
    assert seen["again"][0] == 200 and seen["again"][1][0] and "已划拨" in seen["again"][1][0][0], seen["again"]
    assert seen["after"] == (490_000, 10_000), seen["after"]  # ¥100 out of the account, once


async def binding_while_the_registry_goes_down(hebei: Any, loop_thread: Any, helper: str,
                                               member: str) -> dict[str, Any]:
    """A bind at the desk whose call gets no answer (the registry dies right after its write) and
    whose page cannot be drawn either; then the registry is back and the operator presses 再次提交."""
    console = Console(Backend({"13": f"127.0.0.1:{hebei.port}"}, "", deadline_s=2.0), operators_for_tests(),
                      b"s" * 32, FixedClock(1_795_800_000_000))
    seen: dict[str, Any] = {}
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        sent = {"csrf": csrf, "request_id": new_request_id(), "member": member, "relation": "CHILD",
                "method": "face", "attestation": "face-0001"}
        resp = await client.post(f"/bindings/bind?p={console.ref(helper)}", data=sent)
        page = await resp.text()
        seen["failed"], seen["sent"] = (resp.status, page), sent
        form = re.search(r'<form method="post" action="([^"]+)" id="resend-form">(.*?)</form>', page, re.S)
        assert form is not None, page
        seen["resend"] = resent(console, hidden_fields(form.group(2)))

        async def back() -> Any:
            return await start_server(lambda s: register(s, hebei.registry), port=hebei.port)

        hebei.registry.fault_hook = None
        running = loop_thread.run(back())
        try:
            # Sealed for the bind form: sent to another form it is refused, and nothing is called.
            elsewhere = html.unescape(form.group(1)).replace("/bindings/bind?", "/bindings/proxy?")
            seen["elsewhere"] = (await client.post(elsewhere, data=hidden_fields(form.group(2)))).status
            again = await client.post(html.unescape(form.group(1)), data=hidden_fields(form.group(2)))
            seen["again"] = (again.status, outcome(await again.text()))
            with grpc.insecure_channel(f"127.0.0.1:{hebei.port}") as channel:
                stub = registry_pb2_grpc.RegistryServiceStub(channel)
                listed = stub.ListBindings(rpb.ListBindingsRequest(id_number=helper, include_ended=True))
                seen["bindings"] = [(b.member_id_number, b.active) for b in listed.as_helper]
        finally:
            loop_thread.run(running.server.stop(0))
    await console.backend.close()
    return seen


def test_the_page_to_send_a_bind_again_carries_no_id_number_in_clear(start_registry: Any, loop_thread: Any) -> None:
    """The error page after a bind that got no answer carries the form to send again, but not the
    member's id number in clear (no id number travels in a hidden field in clear: docs/console.md);
    再次提交 is still answered under the form's own request id: one binding."""
    hebei = start_registry("13")
    helper, member = enroll(hebei.stub, birth="19700101"), enroll(hebei.stub, birth="19950101")

    def dies_after_the_write(point: str) -> None:
        if point == "bind.after_write":
            asyncio.get_running_loop().create_task(hebei.server.stop(1.0))
            raise Crash(point)

    hebei.registry.fault_hook = dies_after_the_write
    seen = asyncio.run(binding_while_the_registry_goes_down(hebei, loop_thread, helper, member))
    status, page = seen["failed"]
    assert status == 503 and "再次提交" in page, page
    for pid in (member, helper):
        assert pid not in page and pid[6:14] not in page, page  # nor its date of birth
    assert seen["resend"] == seen["sent"], seen["resend"]  # the same request id, fields and CSRF token
    assert seen["elsewhere"] == 400, seen["elsewhere"]
    assert seen["again"][0] == 200 and seen["again"][1][0] and "已绑定" in seen["again"][1][0][0], seen["again"]
    # Answered by the first call's outcome (a new request id would be refused ALREADY_BOUND): one binding.
    assert seen["bindings"] == [(member, True)], seen["bindings"]


def test_an_amount_that_is_no_amount_to_move_is_told_in_the_desks_words(national: Any, rdb: Any) -> None:
    """A transfer's (or a 划拨's) amount typed as nothing, 0, a negative, letters or three decimals:
    the amount field says what a counter amount must be and that nothing was done. It is not the
    gateway's INVALID_AMOUNT, which speaks to a hospital of its bill (结算金额, the reconciliation
    totals and refunds that may be negative): no such thing is on a transfer form."""
    son, mother = son_and_mother_with_wallets(national)
    before = snapshot(rdb)
    for amount in ("", "0", "0.00", "-5", "abc", "12.345", "1e3"):
        status, page = asyncio.run(sending_too_much(national, son, mother, amount))
        error = re.search(r'id="transfer-amount-error"[^>]*>([^<]*)<', page)
        assert status == 422 and error is not None, (amount, re.findall(r'role="alert"[^>]*>([^<]*)<', page))
        said = error.group(1)
        assert "结算" not in said and "对账" not in said and "退费" not in said, (amount, said)
        assert said == ("金额错误:须为大于0的金额,以元为单位、最多两位小数(如 12.50);"
                        "本次未受理,请更正后重新提交"), (amount, said)
    assert snapshot(rdb) == before
    assert rules.refusal_text("INVALID_AMOUNT") == said  # the one text, whichever side caught it


async def transfer_refusals(national: Any, son: str, mother: str, resident: str) -> list[tuple[str, int, str]]:
    """The refusals a hall meets on the 医保钱包 page's 发起划转 and 代为接收, each sent at the desk."""
    console = national_console(national)
    seen = []
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)

        async def post(what: str, who: str, path: str, **fields: str) -> None:
            resp = await client.post(f"{path}?p={console.ref(who)}", data={
                "csrf": csrf, "request_id": new_request_id(), **fields})
            seen.append((what, resp.status, " ".join(re.findall(r'role="alert"[^>]*>([^<]*)<', await resp.text()))))

        sent = {"recipient": mother, "relation": "PARENT", "amount": "10", "method": "password",
                "attestation": "code-1", "source": "account"}
        await post("AMOUNT_OVER_LIMIT", son, "/wallet/transfer", **{**sent, "amount": "2000.01"})
        await post("SELF_TRANSFER", son, "/wallet/transfer", **{**sent, "recipient": son})
        await post("SENDER_NOT_EMPLOYEE", resident, "/wallet/transfer", **{**sent, "relation": "CHILD"})
        await post("TRANSFER_NOT_FOUND", mother, "/wallet/accept", transfer_id="console-edited", identity_checked="yes")
        national.clock.advance(13 * 3_600_000)  # 23:00 in Shanghai
        await post("OUTSIDE_TRANSFER_HOURS", son, "/wallet/transfer", **sent)
    await console.backend.close()
    return seen


def test_each_transfer_refusal_at_the_desk_says_what_was_not_done_and_what_to_do(national: Any, rdb: Any) -> None:
    """The operator reads the refusal to the person at the counter: each says the transfer (or the
    acceptance) was not done, and what to do next, with no money moved."""
    r13, r11 = national.reg("13"), national.reg("11")
    son, resident = enroll(r13), enroll(r13, itype=RESIDENT, birth="19500101")
    mother = enroll(r11, itype=RESIDENT, region="110000", division="110105")
    credit(r13, son, 300_000)
    for owner, place in ((son, "130100"), (mother, "110000"), (resident, "130100")):
        national.wallet.stub.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=owner,
                                                              province=owner[:2], use_place_admdvs=place,
                                                              real_name=FACE))
    before = snapshot(rdb)
    seen = asyncio.run(transfer_refusals(national, son, mother, resident))
    assert [(what, status) for what, status, _ in seen] == [(what, 422) for what, _, _ in seen], seen
    for what, _, said in seen:
        assert said.endswith(f"({what})"), (what, said)
        assert "本次未" in said, (what, said)
        assert re.search(r"[;;]\s*(请|可)", said), (what, said)  # a next step after what was not done
    assert snapshot(rdb) == before
