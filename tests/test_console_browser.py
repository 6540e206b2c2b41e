"""The 医保大厅 console in a real headless browser (Debian's chromium, Playwright), against a real
topology: three registries, the national wallet and the console, each its own process.

Setup (people, credits, bindings, wallets, settlements) goes to the services over gRPC as in the
other end-to-end tests; everything the operator does goes through the pages, and what the services
hold afterwards is read back over gRPC. MEDAID_CONSOLE_SCREENSHOTS=docs/console writes the
screenshots of the main pages that docs/console.md shows.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from browser import find_chromium
from medaid.common.idnumber import mask
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import family_pb2 as fpb
from medaid.registry.v1 import premium_pb2 as ppb
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.registry.v1 import registry_pb2_grpc as rpb_grpc
from medaid.topology import DEMO_CLOCK, Topology
from medaid.wallet.v1 import wallet_pb2 as wpb
from medaid.wallet.v1 import wallet_pb2_grpc as wpb_grpc
from support import FACE, RESIDENT, balance, bind, credit, enroll, rid, settle

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra: make setup")
SHOTS = os.environ.get("MEDAID_CONSOLE_SCREENSHOTS", "")


@pytest.fixture(scope="session")
def chromium() -> str:
    path, why = find_chromium(install=True)
    if not path:
        if os.environ.get("CI"):
            pytest.fail(f"the console's browser tests must run on CI: {why}")
        pytest.skip(why)
    return path


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Any]:
    # Module scope (every browser test is in this module): while Playwright's sync API runs, the main
    # thread has a running event loop, so asyncio.run in later test modules would fail.
    with playwright.sync_playwright() as p:
        # --no-sandbox: chromium's sandbox refuses to run as root (CI runs as root).
        b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield b
        finally:
            b.close()


class System:
    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.url = f"http://{topo.address('console')}"
        self.reg = {p: rpb_grpc.RegistryServiceStub(topo.channel(f"registry-{p}")) for p in ("13", "11", "62")}
        self.wallet = wpb_grpc.WalletServiceStub(topo.channel("wallet"))

    def bindings(self, helper: str) -> list[rpb.Binding]:
        return list(self.reg["13"].ListBindings(rpb.ListBindingsRequest(id_number=helper,
                                                                        include_ended=True)).as_helper)

    def audit_lines(self, action: str) -> list[str]:
        return [line for line in self.topo.services["console"].log_lines if f'"action": "{action}"' in line]


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    topo = Topology.start(provinces=("13", "11", "62"), router=False, clock=DEMO_CLOCK, console=True)
    try:
        yield System(topo)
    finally:
        if os.environ.get("MEDAID_CONSOLE_LOGS"):
            print("\n".join(topo.services["console"].log_lines[-40:]))
        topo.stop()


@pytest.fixture
def page(browser: Any, system: System) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800}, locale="zh-CN")
    pg = context.new_page()
    pg.set_default_timeout(10_000)
    pg.goto(system.url + "/login")
    sign_in(pg, system)
    pg.wait_for_url(system.url + "/")
    try:
        yield pg
    finally:
        context.close()


def shot(page: Any, name: str, show: str = "") -> None:
    """The viewport as docs/console/<name>.png, scrolled so that `show` (a selector) is in sight."""
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        if show:
            page.locator(show).scroll_into_view_if_needed()
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"))


def look_up(page: Any, system: System, id_number: str) -> None:
    page.goto(system.url + "/")
    page.fill("#lookup-id_number", id_number)
    submit(page, "#lookup-form button[type=submit]")
    page.wait_for_url(re.compile(r"/person\?p="))


def submit(page: Any, selector: str) -> None:
    """Click a button or link and wait for the page it leads to (the old page has the same ids)."""
    with page.expect_navigation():
        page.click(selector)


def sign_in(at: Any, system: System, operator: str = "", password: str = "") -> None:
    """An operator (the console's own unless named) signs in on the sign-in page `at` shows."""
    if not operator:
        operator, password = system.topo.console_login
    at.fill("#login-operator", operator)
    at.fill("#login-password", password)
    submit(at, "#login-form button[type=submit]")


def go(page: Any, label: str) -> None:
    submit(page, f"nav a:text-is('{label}')")


# --- sign-in, look-up, masking ---------------------------------------------------------------------

def test_sign_in_refuses_a_wrong_password(browser: Any, system: System) -> None:
    context = browser.new_context()
    pg = context.new_page()
    pg.goto(system.url + "/person")  # any page: sign in first
    assert pg.url.endswith("/login")
    pg.fill("#login-operator", system.topo.console_login[0])
    pg.fill("#login-password", "not-the-password")
    submit(pg, "#login-form button[type=submit]")
    assert "工号或密码错误" in pg.inner_text("#login-form")
    assert pg.input_value("#login-operator") == system.topo.console_login[0]
    context.close()


def test_look_up_shows_a_masked_person_and_reveals_on_a_logged_request(page: Any, system: System) -> None:
    pid = enroll(system.reg["13"], name="王建国", birth="19600101")
    credit(system.reg["13"], pid, 123_456)
    look_up(page, system, pid.lower())
    assert page.inner_text("#id-number") == mask(pid)
    assert pid not in page.content() and "王建国" not in page.content()
    assert page.inner_text("#name") == "王**"
    assert page.inner_text("#insurance-type") == "职工医保"
    assert page.inner_text("#status") == "正常参保"
    assert "石家庄 (130100)" in page.inner_text("#region")
    assert page.inner_text("#balance") == "¥1,234.56"
    assert page.inner_text("#wallet-summary") == "未开通医保钱包"
    shot(page, "person")
    page.fill("#why", "核对本人证件")
    submit(page, "#reveal")
    assert page.inner_text("#id-number") == pid and page.inner_text("#name") == "王建国"
    line = system.audit_lines("reveal_id_number")[-1]
    assert f'"operator": "{system.topo.console_login[0]}"' in line
    assert re.search(r'"request_id": "console-[a-z2-7]{26}"', line)
    assert pid not in line and mask(pid) in line  # logged, but the log itself stays masked


def test_a_post_without_the_session_csrf_token_is_refused(page: Any, system: System) -> None:
    helper = enroll(system.reg["13"])
    look_up(page, system, helper)
    person_url = page.url
    ref = person_url.split("p=", 1)[1]
    member = enroll(system.reg["13"])
    resp = page.request.post(f"{system.url}/bindings/bind?p={ref}", form={
        "csrf": "forged", "request_id": "console-" + "0" * 32, "member": member, "relation": "CHILD",
        "method": "face", "attestation": "face-1"})
    assert resp.status == 403
    assert system.bindings(helper) == []


# --- bindings -------------------------------------------------------------------------------------

def test_bind_with_face_verification_resend_has_one_effect_then_unbind(page: Any, system: System) -> None:
    helper = enroll(system.reg["13"], birth="19700101")
    member = enroll(system.reg["13"], birth="19980101")
    look_up(page, system, helper)
    go(page, "共济绑定")
    page.fill("#bind-member", member)
    page.select_option("#bind-relation", "CHILD")
    page.check("#bind-verification input[value=face]")
    page.fill("#bind-attestation", "face-20261122-0001")
    form = {"csrf": page.input_value("#bind-form input[name=csrf]"),
            "request_id": page.input_value("#bind-form input[name=request_id]"), "member": member,
            "relation": "CHILD", "method": "face", "attestation": "face-20261122-0001"}
    action = system.url + page.get_attribute("#bind-form", "action")
    submit(page, "#bind-form button[type=submit]")
    assert "已绑定" in page.inner_text("#bind-form .done")
    assert mask(member) in page.inner_text("#bindings-table") and member not in page.content()
    shot(page, "bindings")
    # The same form sent again (a double click, a browser resend): the registry answers the first bind.
    again = page.request.post(action, form=form)
    assert again.status == 200 and "已绑定" in again.text()  # a new bind would be refused ALREADY_BOUND
    active = [b for b in system.bindings(helper) if b.active]
    assert [(b.member_id_number, b.relation) for b in active] == [(member, cpb.RELATION_CHILD)]
    submit(page, f"#bindings-table button[aria-label='解除与 {mask(member)} 的绑定']")
    assert "已解除" in page.inner_text("#bind-form .done")
    assert [b.active for b in system.bindings(helper)] == [False]
    assert "已解除" in page.inner_text("#bindings-table")



def test_a_binding_prints_a_masked_a4_receipt_reached_by_keyboard(page: Any, system: System) -> None:
    helper = enroll(system.reg["13"], birth="19700101")
    member = enroll(system.reg["13"], birth="19980101")
    bind(system.reg["13"], helper, member, relation=cpb.RELATION_CHILD)
    look_up(page, system, helper)
    go(page, "共济绑定")
    link = f"#bindings-table a[aria-label='打印与 {mask(member)} 的绑定回执']"
    page.focus(link)
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert "家庭共济绑定回执" in page.inner_text("h1")
    sheet = page.inner_text("#receipt-facts")
    assert mask(helper) in sheet and mask(member) in sheet and "子女" in sheet
    assert helper not in page.content() and member not in page.content()
    printed = page.inner_text("#print-request-id")
    assert any(f'"request_id": "{printed}"' in line for line in system.audit_lines("receipt_binding"))
    shot(page, "binding-receipt")
    page.emulate_media(media="print")
    assert not page.is_visible("#print-button") and page.is_visible("#receipt-facts")
    pdf = page.pdf(format="A4", prefer_css_page_size=True)
    assert pdf.startswith(b"%PDF")
    page.emulate_media(media="screen")
    page.evaluate("window.print = () => { document.body.dataset.printed = 'yes'; }")
    page.keyboard.press("Tab")  # the first stop is the print button
    assert page.evaluate("document.activeElement.id") == "print-button"
    page.keyboard.press("Enter")
    assert page.get_attribute("body", "data-printed") == "yes"

def test_a_proxy_is_added_with_verification_and_removed(page: Any, system: System) -> None:
    holder = enroll(system.reg["13"], birth="19700101")
    relative = enroll(system.reg["13"], birth="19400101")
    look_up(page, system, holder)
    go(page, "共济绑定")
    page.fill("#proxy-relative", relative)
    page.select_option("#proxy-relation", "PARENT")
    page.check("#proxy-verification input[value=face]")
    page.fill("#proxy-attestation", "face-20261122-0002")
    submit(page, "#proxy-form button[type=submit]")
    assert "已添加亲情账户" in page.inner_text("#proxy-form .done")
    assert mask(relative) in page.inner_text("#proxies-table")
    listed = system.reg["13"].ListProxyBindings(rpb.ListProxyBindingsRequest(id_number=holder)).as_holder
    assert [(p.relative_id_number, p.relation) for p in listed] == [(relative, cpb.RELATION_PARENT)]
    # Each row's button names whose 亲情账户 it ends: a screen reader reads the button, not its row.
    submit(page, f"#proxies-table button[aria-label='解除与 {mask(relative)} 的亲情账户']")
    assert "已解除亲情账户" in page.inner_text("#proxy-form .done")
    assert list(system.reg["13"].ListProxyBindings(rpb.ListProxyBindingsRequest(id_number=holder)).as_holder) == []


def test_a_guardian_binds_an_under_16_member_without_face_verification(page: Any, system: System) -> None:
    helper = enroll(system.reg["13"], birth="19850101")
    child = enroll(system.reg["13"], birth="20150601")
    look_up(page, system, helper)
    go(page, "共济绑定")
    page.fill("#bind-member", child)
    page.select_option("#bind-relation", "CHILD")
    page.check("#bind-verification input[value=guardian]")
    page.fill("#bind-guardian", helper)
    submit(page, "#bind-form button[type=submit]")
    assert "已绑定" in page.inner_text("#bind-form .done")
    assert [b.member_id_number for b in system.bindings(helper) if b.active] == [child]


def test_a_refused_bind_shows_the_reason_at_its_field_keeps_the_input_and_writes_nothing(
        page: Any, system: System) -> None:
    helper = enroll(system.reg["13"], birth="19700101")
    adult = enroll(system.reg["13"], birth="19990101")
    look_up(page, system, helper)
    go(page, "共济绑定")
    page.fill("#bind-member", adult)
    page.select_option("#bind-relation", "CHILD")
    page.check("#bind-verification input[value=guardian]")  # a guardian cannot act for a 27-year-old
    page.fill("#bind-guardian", helper)
    submit(page, "#bind-form button[type=submit]")
    error = page.inner_text("#bind-verification-error")
    assert "完成人脸识别" in error and "(年满16周岁)" in error and "VERIFICATION_REQUIRED" in error
    assert page.input_value("#bind-member") == adult and page.input_value("#bind-relation") == "CHILD"
    assert "须本人人脸识别" in page.inner_text("#bind-need")
    shot(page, "bind-refused", "#bind-form button[type=submit]")
    assert system.bindings(helper) == []
    members = system.reg["13"].ListBindings(rpb.ListBindingsRequest(id_number=adult, include_ended=True))
    assert list(members.as_member) == []
    assert '"outcome": "VERIFICATION_REQUIRED"' in system.audit_lines("bind")[-1]


# --- diagnosis: each 原因 ---------------------------------------------------------------------------

def diagnose(page: Any, system: System, member: str, helper: str) -> dict[str, str]:
    page.goto(system.url + "/diagnose")
    page.fill("#diagnose-member", member)
    page.fill("#diagnose-helper", helper)
    submit(page, "#diagnose-form button[type=submit]")
    return {li.get_attribute("data-code"): li.inner_text() for li in page.query_selector_all("ol.findings li")}


def test_diagnosis_explains_each_reason_in_plain_words(page: Any, system: System) -> None:
    r13, r11 = system.reg["13"], system.reg["11"]
    helper = enroll(r13, birth="19700101")
    credit(r13, helper, 50_000)
    # 原因一: the member's insurance is suspended.
    lapsed = enroll(r13, birth="19950101")
    bind(r13, helper, lapsed)
    r13.UpdatePersonStatus(rpb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=lapsed,
                                                         status=cpb.PERSON_STATUS_SUSPENDED))
    found = diagnose(page, system, lapsed, helper)
    assert set(found) == {"MEMBER_NOT_INSURED"} and "原因一" in found["MEMBER_NOT_INSURED"]
    assert "恢复参保" in found["MEMBER_NOT_INSURED"]
    # 原因二: only a 亲情账户 between them.
    relative = enroll(r13, birth="19960101")
    r13.BindProxy(rpb.BindProxyRequest(request_id=rid("px"), holder_id_number=helper, relative_id_number=relative,
                                       relation=cpb.RELATION_CHILD, relative_verification=FACE))
    found = diagnose(page, system, relative, helper)
    assert set(found) == {"PROXY_ONLY"} and "原因二" in found["PROXY_ONLY"] and "亲情账户" in found["PROXY_ONLY"]
    shot(page, "diagnose")
    # 原因三: the helper's account is empty.
    poor = enroll(r13, birth="19720101")
    member = enroll(r13, birth="19970101")
    bind(r13, poor, member)
    found = diagnose(page, system, member, poor)
    assert set(found) == {"HELPER_ZERO_BALANCE"} and "原因三" in found["HELPER_ZERO_BALANCE"]
    assert "下月" in found["HELPER_ZERO_BALANCE"]
    # 原因四: the member is insured in another province (北京).
    away = enroll(r11, birth="19980101", region="110000", division="110105")
    found = diagnose(page, system, away, helper)
    assert "CROSS_PROVINCE" in found and "原因四" in found["CROSS_PROVINCE"] and "医保钱包" in found["CROSS_PROVINCE"]
    # And a pair that works says so.
    fine = enroll(r13, birth="19990101")
    bind(r13, helper, fine)
    diagnose(page, system, fine, helper)
    assert "可以共济" in page.inner_text("#verdict")


# --- consumption records, wallet, family account, 代缴 -----------------------------------------------

def test_consumption_records_filter_by_month_and_print_on_a4(page: Any, system: System) -> None:
    r13 = system.reg["13"]
    helper = enroll(r13, birth="19700101")
    credit(r13, helper, 80_000)
    member = enroll(r13, itype=RESIDENT, birth="19400101")
    bind(r13, helper, member, relation=cpb.RELATION_PARENT)
    paid = settle(r13, member, 12_345)
    assert paid.mulaid_pay_fen == 12_345
    look_up(page, system, helper)
    go(page, "消费记录")
    page.fill("#month", "2026-11")
    submit(page, "#month-form button[type=submit]")
    table = page.inner_text("#records-table")
    assert "¥123.45" in table and "共济人" in table and mask(member) in table and "共 1 笔" in table
    shot(page, "records")
    page.fill("#month", "2026-10")
    submit(page, "#month-form button[type=submit]")
    assert "没有记录" in page.inner_text("#records-table")
    page.fill("#month", "2026-11")
    submit(page, "#month-form button[type=submit]")
    submit(page, "#print-link")
    page.emulate_media(media="print")
    assert not page.is_visible("#print-button")  # the toolbar is not printed
    assert "¥123.45" in page.inner_text("#records-table") and "家庭共济消费记录" in page.inner_text("h1")
    shot(page, "records-print")
    page.emulate_media(media="screen")
    page.evaluate("window.print = () => { document.body.dataset.printed = 'yes'; }")  # headless cannot print
    page.click("#print-button")
    assert page.get_attribute("body", "data-printed") == "yes"  # the button works under the console's CSP
    page.emulate_media(media="print")
    pdf = page.pdf(format="A4", prefer_css_page_size=True)
    boxes = {tuple(round(float(x)) for x in m) for m in re.findall(rb"/MediaBox \[0 0 ([\d.]+) ([\d.]+)\]", pdf)}
    assert pdf.startswith(b"%PDF") and boxes == {(595, 842)}  # A4: 210 × 297 mm in points
    page.emulate_media(media="screen")


def pending_transfer(system: System, amount_fen: int, *, birth: str) -> tuple[str, str, wpb.Transfer]:
    """A 河北 parent born `birth` and their 北京 employee child, both with a wallet, and a transfer of
    `amount_fen` from the child to the parent, not yet accepted: (parent, child, transfer)."""
    r13, r11 = system.reg["13"], system.reg["11"]
    parent = enroll(r13, birth=birth)
    child = enroll(r11, birth="19900101", region="110000", division="110105")
    credit(r11, child, 50_000)
    for owner, prov, place in ((parent, "13", "130100"), (child, "11", "110000")):
        system.wallet.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=owner, province=prov,
                                                       use_place_admdvs=place, real_name=FACE))
    t = system.wallet.CreateTransfer(wpb.CreateTransferRequest(
        request_id=rid("xfer"), sender_id_number=child, sender_province="11", recipient_id_number=parent,
        relation=cpb.RELATION_PARENT, amount_fen=amount_fen, verification=FACE)).transfer
    return parent, child, t


def test_wallet_page_shows_lots_by_sender_transfer_states_and_changes_the_use_place(
        page: Any, system: System) -> None:
    holder, sender, t = pending_transfer(system, 30_000, birth="19600101")
    system.wallet.AcceptTransfer(wpb.AcceptTransferRequest(request_id=rid("acc"), transfer_id=t.transfer_id,
                                                           recipient_id_number=holder))
    look_up(page, system, holder)
    go(page, "医保钱包")
    assert page.inner_text("#wallet-balance") == "¥300.00"
    assert mask(sender) in page.inner_text("#senders-table") and "¥300.00" in page.inner_text("#senders-table")
    assert t.transfer_id in page.inner_text("#lots-table")
    assert "已完成" in page.inner_text("#transfers-table")
    shot(page, "wallet")
    page.fill("#use_place-use_place", "110000")  # another province: refused, nothing changes
    submit(page, "#use-place-form button[type=submit]")
    assert "USE_PLACE_OUTSIDE_PROVINCE" in page.inner_text("#use_place-use_place-error")
    page.fill("#use_place-use_place", "130200")
    submit(page, "#use-place-form button[type=submit]")
    assert "唐山" in page.inner_text("#use-place")
    got = system.wallet.GetWallet(wpb.GetWalletRequest(owner_id_number=holder)).wallet
    assert got.use_place_admdvs == "130200"


def test_the_wallet_page_pages_through_the_whole_history(page: Any, system: System) -> None:
    """105 entries (a transfer received, 104 spends): the page lists the newest 100 and says the list
    is cut; 更早的记录 lists the 5 before, down to the first (the transfer received), no id number in
    the address; 回到最新 goes back."""
    holder, sender, t = pending_transfer(system, 30_000, birth="19610101")
    system.wallet.AcceptTransfer(wpb.AcceptTransferRequest(request_id=rid("acc"), transfer_id=t.transfer_id,
                                                           recipient_id_number=holder))
    for _ in range(104):
        system.wallet.SpendWallet(wpb.SpendWalletRequest(request_id=rid("spend"), owner_id_number=holder,
                                                         amount_fen=1, category=cpb.CATEGORY_OUTPATIENT,
                                                         spending_admdvs="130100"))
    look_up(page, system, holder)
    go(page, "医保钱包")
    assert page.locator("#entries-table tbody tr").count() == 100
    assert page.inner_text("#entries-cut").startswith("只列出最近 100 条(未列全),更早的流水在下一页")
    submit(page, "#entries-older")
    assert holder not in page.url and sender not in page.url
    assert page.locator("#entries-table tbody tr").count() == 5
    assert "更早的流水,本页 5 条,已列到最早的一条" in page.inner_text("#entries-cut")
    assert page.locator("#entries-table tbody tr").last.inner_text().split("\t")[1] == "收到划转额度"
    assert page.locator("#entries-older").count() == 0
    shot(page, "wallet-older", "#entries-table")
    submit(page, "#entries-cut a.newest")
    assert page.locator("#entries-table tbody tr").count() == 100


def test_the_desk_accepts_a_pending_transfer_for_a_recipient_without_the_app(page: Any, system: System) -> None:
    mother, son, t = pending_transfer(system, 12_000, birth="19500101")
    look_up(page, system, mother)
    go(page, "医保钱包")
    assert t.transfer_id in page.inner_text("#pending-table") and mask(son) in page.inner_text("#pending-table")
    assert "待接收" in page.inner_text("#transfers-table")
    # Without the identity check ticked (the browser would insist; the console checks again) nothing happens.
    page.evaluate("document.querySelector('.accept-form input[name=identity_checked]').removeAttribute('required')")
    submit(page, ".accept-form button[type=submit]")
    assert "核验接收人本人身份" in page.inner_text("#accept-identity-error")
    get = wpb.GetTransferRequest(transfer_id=t.transfer_id)
    assert system.wallet.GetTransfer(get).transfer.state == wpb.TRANSFER_STATE_PENDING_ACCEPT
    page.check(".accept-form input[name=identity_checked]")
    submit(page, ".accept-form button[type=submit]")
    assert f"已代为接收划转 {t.transfer_id}" in page.inner_text("[role=status]")
    assert page.inner_text("#wallet-balance") == "¥120.00"
    assert "没有待接收的划转" in page.inner_text("#pending-table")
    assert system.wallet.GetTransfer(get).transfer.state == wpb.TRANSFER_STATE_COMPLETED
    shot(page, "wallet-accept")


def test_a_transfer_accepted_at_the_desk_prints_a_receipt_for_each_side(page: Any, system: System) -> None:
    mother, son, t = pending_transfer(system, 8_800, birth="19530101")
    look_up(page, system, mother)
    go(page, "医保钱包")
    assert page.locator("#transfers-table a.receipt-link").count() == 0  # nothing done in her name yet
    page.check(".accept-form input[name=identity_checked]")
    submit(page, ".accept-form button[type=submit]")
    link = f"#transfers-table a[aria-label='打印划转 {t.transfer_id}(转入 ¥88.00)的回执']"
    page.focus(link)
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.inner_text("h1") == "医保钱包划转接收回执"
    sheet = page.inner_text("#receipt-facts")
    assert "接收医保钱包划转" in sheet and mask(son) in sheet and mask(mother) in sheet and "¥88.00" in sheet
    assert mother not in page.content() and son not in page.content()
    printed = page.inner_text("#print-request-id")
    assert any(f'"request_id": "{printed}"' in line for line in system.audit_lines("receipt_transfer"))
    page.emulate_media(media="print")
    assert not page.is_visible("#print-button") and page.is_visible("#receipt-facts")
    assert page.pdf(format="A4", prefer_css_page_size=True).startswith(b"%PDF")
    page.emulate_media(media="screen")
    submit(page, "#receipt-back")  # back to her 医保钱包 page
    assert t.transfer_id in page.inner_text("#transfers-table")
    # The son's page prints his: sent, and accepted since, its transfer id the 业务流水号.
    look_up(page, system, son)
    go(page, "医保钱包")
    submit(page, f"#transfers-table a[aria-label='打印划转 {t.transfer_id}(转出 ¥88.00)的回执']")
    assert page.inner_text("h1") == "医保钱包划转回执"
    assert page.inner_text("#receipt-business-id") == t.transfer_id
    assert "已接收" in page.inner_text("#receipt-facts")
    shot(page, "wallet-receipt")


def test_the_desk_opens_a_wallet_for_the_person_or_through_a_near_kin(page: Any, system: System) -> None:
    r13 = system.reg["13"]
    mother, daughter = enroll(r13, birth="19480101"), enroll(r13, birth="19750101")
    look_up(page, system, mother)
    go(page, "医保钱包")
    assert page.input_value("#open_wallet-use_place") == "130100"  # where the person is insured
    # No real-name verification: refused at that field, and no wallet.
    submit(page, "#open-wallet-form button[type=submit]")
    assert "核验编号" in page.inner_text("#open_wallet-verification")
    with pytest.raises(grpc.RpcError) as err:
        system.wallet.GetWallet(wpb.GetWalletRequest(owner_id_number=mother))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # The daughter opens it for her mother, who is verified at the counter (承诺书).
    page.check("#open_wallet-verification input[value=counter]")
    page.fill("#open_wallet-attestation", "承诺书-0101")
    page.fill("#open_wallet-opened_by", daughter)
    page.select_option("#open_wallet-opened_by_relation", "CHILD")
    submit(page, "#open-wallet-form button[type=submit]")
    assert f"由近亲属 {mask(daughter)} 代为开通" in page.inner_text("[role=status]")
    assert page.inner_text("#wallet-balance") == "¥0.00" and "石家庄" in page.inner_text("#use-place")
    got = system.wallet.GetWallet(wpb.GetWalletRequest(owner_id_number=mother)).wallet
    assert (got.use_place_admdvs, got.opened_by_id_number) == ("130100", daughter)


def test_the_desk_sends_a_transfer_for_a_sender_and_the_recipient_gets_it(page: Any, system: System) -> None:
    r13, r11 = system.reg["13"], system.reg["11"]
    mother = enroll(r13, birth="19520101")
    son = enroll(r11, birth="19820101", region="110000", division="110105")
    credit(r11, son, 50_000)
    for owner, prov, place in ((mother, "13", "130100"), (son, "11", "110000")):
        system.wallet.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=owner, province=prov,
                                                       use_place_admdvs=place, real_name=FACE))
    look_up(page, system, son)
    go(page, "医保钱包")
    page.fill("#transfer-recipient", mother)
    page.select_option("#transfer-relation", "PARENT")
    page.fill("#transfer-amount", "2000.01")  # over the limit of one transfer: refused, nothing moves
    page.fill("#transfer-attestation", "face-20261122-0101")
    submit(page, "#transfer-form button[type=submit]")
    assert "AMOUNT_OVER_LIMIT" in page.inner_text("#transfer-amount-error")
    assert system.wallet.ListIncomingTransfers(
        wpb.ListIncomingTransfersRequest(recipient_id_number=mother)).transfers == []
    page.fill("#transfer-amount", "150.00")
    page.fill("#transfer-attestation", "face-20261122-0102")
    submit(page, "#transfer-form button[type=submit]")
    assert f"150.00 划入 {mask(mother)} 的医保钱包" in page.inner_text("[role=status]")
    (t,) = system.wallet.ListIncomingTransfers(wpb.ListIncomingTransfersRequest(recipient_id_number=mother)).transfers
    assert (t.sender_id_number, t.amount_fen, t.state) == (son, 15_000, wpb.TRANSFER_STATE_PENDING_ACCEPT)
    # The sender's page lists it as sent, waiting, and blocking the next one until then.
    row = page.locator("#transfers-table tbody tr", has_text=t.transfer_id)
    assert row.locator(".transfer-direction").inner_text() == "转出"
    assert "此前不能再发起划转" in row.inner_text()
    # At the mother's page it waits to be accepted.
    look_up(page, system, mother)
    go(page, "医保钱包")
    assert t.transfer_id in page.inner_text("#pending-table")
    row = page.locator("#transfers-table tbody tr", has_text=t.transfer_id)
    assert row.locator(".transfer-direction").inner_text() == "转入"
    assert "此前不能再发起划转" not in row.inner_text()


def test_the_desk_ends_a_wallet_relationship_at_the_holders_request(page: Any, system: System) -> None:
    holder, sender, t = pending_transfer(system, 30_000, birth="19580101")
    system.wallet.AcceptTransfer(wpb.AcceptTransferRequest(request_id=rid("acc"), transfer_id=t.transfer_id,
                                                           recipient_id_number=holder))
    assert balance(system.reg["11"], sender) == 20_000
    look_up(page, system, holder)
    go(page, "医保钱包")
    assert page.inner_text("#wallet-balance") == "¥300.00"
    page.check(".end-form input[name=asked]")
    submit(page, ".end-form button[type=submit]")
    assert f"已结束与 {mask(sender)} 的钱包关系:未使用额度 ¥300.00 退回划转人" in page.inner_text("[role=status]")
    assert page.inner_text("#wallet-balance") == "¥0.00" and "没有额度" in page.inner_text("#senders-table")
    assert balance(system.reg["11"], sender) == 50_000  # every fen home


def test_family_account_create_invite_and_transfer_in_a_pooled_province(page: Any, system: System) -> None:
    r62 = system.reg["62"]
    creator = enroll(r62, birth="19700101", region="620100", division="620102")
    credit(r62, creator, 100_000)
    child = enroll(r62, birth="20150101", region="620100", division="620102")
    look_up(page, system, creator)
    go(page, "家庭共济账户")
    page.fill("#create-attestation", "承诺书-0001")
    submit(page, "#create-form button[type=submit]")
    assert "已创建家庭共济账户" in page.inner_text("#family-done")
    page.fill("#invite-member", child)
    page.select_option("#invite-relation", "CHILD")
    submit(page, "#invite-form button[type=submit]")
    assert mask(child) in page.inner_text("#members-table")
    page.fill("#transfer-amount", "250.00")
    submit(page, "#transfer-form button[type=submit]")
    assert page.inner_text("#family-balance") == "¥250.00"
    shot(page, "family")
    account = r62.GetFamilyAccount(fpb.GetFamilyAccountRequest(id_number=creator)).account
    assert account.balance_fen == 25_000 and {m.id_number for m in account.members} == {creator, child}
    assert "¥250.00" in page.inner_text("#shares-table")
    # 解散 asks for a confirmation first; then the unspent share goes back to the creator's account.
    submit(page, "#dissolve-form button[type=submit]")
    assert "请勾选确认" in page.inner_text("#dissolve-form")
    assert r62.GetPerson(rpb.GetPersonRequest(id_number=creator)).person.balance_fen == 75_000
    page.check("#dissolve-form input[name=confirm]")
    submit(page, "#dissolve-form button[type=submit]")
    assert "已解散" in page.inner_text("#family-done")
    assert r62.GetPerson(rpb.GetPersonRequest(id_number=creator)).person.balance_fen == 100_000


def test_the_same_transfer_from_a_second_window_is_asked_about_before_it_is_done_twice(
        browser: Any, system: System) -> None:
    """Two windows on one person's page each draw a request id: the same 划拨 (or wallet transfer) sent
    from the second minutes after the first would be a second business. The form says when the first
    was done, does nothing, and does it once the operator ticks 确认再次办理; the first form sent again
    (its own id) is answered by its first outcome, never asked about."""
    r62, creator = _gansu_family_creator(system)
    context, pg, other = _two_windows(browser)
    other.set_default_timeout(10_000)
    pg.goto(system.url + "/login")
    sign_in(pg, system)
    look_up(pg, system, creator)
    go(pg, "家庭共济账户")
    other.goto(pg.url)  # the page opened in a second window (a tab left open, a colleague's screen)
    pg.fill("#transfer-amount", "250.00")
    submit(pg, "#transfer-form button[type=submit]")
    assert "已划拨 ¥250.00" in pg.inner_text("#family-done")
    pg.reload()  # the browser sends the first form again, under its id: its answer, not a question
    assert "已划拨 ¥250.00" in pg.inner_text("#family-done") and pg.locator("#transfer-again").count() == 0
    other.fill("#transfer-amount", "250.00")
    other_id = other.input_value("#transfer-form input[name=request_id]")
    submit(other, "#transfer-form button[type=submit]")
    said = other.inner_text("#transfer-again-error")
    assert "办理过一笔相同的划拨(¥250.00)" in said and "本次没有办理" in said and "确认再次办理" in said, said
    assert other.input_value("#transfer-amount") == "250.00"
    assert other.input_value("#transfer-form input[name=request_id]") == other_id
    account = r62.GetFamilyAccount(fpb.GetFamilyAccountRequest(id_number=creator)).account
    assert account.balance_fen == 25_000 and balance(r62, creator) == 75_000  # nothing written
    # Confirmed with the keyboard alone (the box is labelled and reached by Tab): a second 划拨.
    other.focus("#transfer-again")
    other.keyboard.press("Space")
    with other.expect_navigation():
        other.keyboard.press("Enter")
    assert "已划拨 ¥250.00" in other.inner_text("#family-done")
    account = r62.GetFamilyAccount(fpb.GetFamilyAccountRequest(id_number=creator)).account
    assert account.balance_fen == 50_000 and balance(r62, creator) == 50_000

    # The wallet alike: a transfer the recipient has accepted, sent again from the second window.
    r13, r11 = system.reg["13"], system.reg["11"]
    mother = enroll(r13, birth="19520101")
    son = enroll(r11, birth="19820101", region="110000", division="110105")
    credit(r11, son, 50_000)
    for owner, prov, place in ((mother, "13", "130100"), (son, "11", "110000")):
        system.wallet.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=owner, province=prov,
                                                       use_place_admdvs=place, real_name=FACE))
    look_up(pg, system, son)
    go(pg, "医保钱包")
    other.goto(pg.url)
    for window, attestation in ((pg, "face-20261122-0201"), (other, "face-20261122-0202")):
        window.fill("#transfer-recipient", mother)
        window.select_option("#transfer-relation", "PARENT")
        window.fill("#transfer-amount", "150.00")
        window.fill("#transfer-attestation", attestation)
        submit(window, "#transfer-form button[type=submit]")
        if window is pg:
            (t,) = system.wallet.ListIncomingTransfers(
                wpb.ListIncomingTransfersRequest(recipient_id_number=mother)).transfers
            system.wallet.AcceptTransfer(wpb.AcceptTransferRequest(request_id=rid("acc"), transfer_id=t.transfer_id,
                                                                   recipient_id_number=mother))
    said = other.inner_text("#transfer-again-error")
    assert "办理过一笔相同的医保钱包划转(¥150.00)" in said and "本次没有办理" in said, said
    assert balance(r11, son) == 35_000 and len(system.wallet.ListIncomingTransfers(
        wpb.ListIncomingTransfersRequest(recipient_id_number=mother)).transfers) == 1
    other.fill("#transfer-attestation", "face-20261122-0203")
    other.check("#transfer-again")
    submit(other, "#transfer-form button[type=submit]")
    assert f"150.00 划入 {mask(mother)} 的医保钱包" in other.inner_text("[role=status]")
    assert balance(r11, son) == 20_000
    context.close()


def test_premium_for_a_near_kin_is_paid_once(page: Any, system: System) -> None:
    r13 = system.reg["13"]
    payer = enroll(r13, birth="19700101")
    credit(r13, payer, 100_000)
    payee = enroll(r13, itype=RESIDENT, birth="19450101")
    look_up(page, system, payer)
    go(page, "代缴居民医保")
    page.fill("#pay-payee", payee)
    page.select_option("#pay-relation", "PARENT")
    page.fill("#pay-year", "2027")
    submit(page, "#pay-form button[type=submit]")
    assert "已为" in page.inner_text("#pay-form .done")
    page.fill("#pay-payee", payee)
    page.select_option("#pay-relation", "PARENT")
    page.fill("#pay-year", "2027")
    submit(page, "#pay-form button[type=submit]")
    assert "PREMIUM_ALREADY_PAID" in page.inner_text("#pay-year-error")
    listed = r13.ListResidentPremiums(ppb.ListResidentPremiumsRequest(payee_id_number=payee)).premiums
    assert [(p.year, p.amount_fen) for p in listed] == [("2027", 40_000)]


# --- large type and keyboard-only use ---------------------------------------------------------------

# Each refusal shown next to a field, and the controls it concerns: a screen reader reads a refusal with
# the control it describes (aria-describedby), and the control says it is invalid (aria-invalid).
UNTIED_ERRORS = """() => [...document.querySelectorAll('.field-error')].filter(err => {
  const described = [...document.querySelectorAll(`[aria-describedby~="${err.id}"]`)];
  return !err.id || !described.length || described.some(c => c.getAttribute('aria-invalid') !== 'true');
}).map(err => err.id || err.textContent)"""


def refused_fields(page: Any, form: str) -> list[str]:
    """Send the form as filled (the browser's own checks off, as a browser without them would), and the
    ids of the refusals next to its fields on the page that comes back; each is tied to its controls."""
    page.evaluate(f"document.getElementById('{form}').noValidate = true")
    submit(page, f"#{form} button[type=submit]")
    assert page.evaluate(UNTIED_ERRORS) == [], page.content()
    return sorted(page.evaluate("[...document.querySelectorAll('.field-error')].map(e => e.id)"))


def test_every_refusal_next_to_a_field_describes_its_controls(page: Any, system: System) -> None:
    """The relation, the verification, the fund source, a near-kin's relation and a confirmation box are
    refused next to themselves as a typed field is: announced with the control, which is marked invalid."""
    r13, r62 = system.reg["13"], system.reg["62"]
    helper, member = enroll(r13, birth="19700101"), enroll(r13, birth="19900101")
    look_up(page, system, helper)
    go(page, "共济绑定")
    page.fill("#bind-member", member)
    assert refused_fields(page, "bind-form") == ["bind-relation-error", "bind-verification-error"]
    page.fill("#proxy-relative", member)
    page.check("#proxy-form input[name=method][value=face]")
    assert refused_fields(page, "proxy-form") == ["proxy-relation-error", "proxy-verification-error"]
    go(page, "医保钱包")
    page.fill("#open_wallet-opened_by", member)
    assert refused_fields(page, "open-wallet-form") == ["open_wallet-opened_by_relation-error",
                                                        "open_wallet-verification-error"]
    creator = enroll(r62, birth="19700101", region="620100", division="620102")
    look_up(page, system, creator)
    go(page, "代缴居民医保")
    page.fill("#pay-payee", enroll(r62, itype=RESIDENT, birth="19450101", region="620100", division="620102"))
    page.select_option("#pay-relation", "PARENT")
    page.select_option("#pay-source", "family")
    assert refused_fields(page, "pay-form") == ["pay-source-error"]
    go(page, "家庭共济账户")
    assert refused_fields(page, "create-form") == ["create-verification-error"]
    page.fill("#create-attestation", "承诺书-0002")
    submit(page, "#create-form button[type=submit]")
    assert refused_fields(page, "dissolve-form") == ["dissolve-confirm-error"]



def test_large_type_and_keyboard_only_look_up(page: Any, system: System) -> None:
    pid = enroll(system.reg["13"])
    page.goto(system.url + "/")
    small = page.evaluate("parseFloat(getComputedStyle(document.body).fontSize)")
    submit(page, "#large-toggle")
    assert "large" in (page.get_attribute("body", "class") or "")
    assert page.evaluate("parseFloat(getComputedStyle(document.body).fontSize)") > small * 1.2
    page.focus("#lookup-id_number")
    page.keyboard.type(pid)
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/person\?p="))
    assert page.inner_text("#id-number") == mask(pid)
    page.goto(system.url + "/")
    page.keyboard.press("Tab")  # the first stop is the skip link
    assert page.evaluate("document.activeElement.className") == "skip"
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"  # focus is visible


# --- whom an operator serves ------------------------------------------------------------------------

def test_an_operator_of_a_hebei_hall_is_refused_a_person_insured_in_beijing(browser: Any, system: System) -> None:
    beijing = enroll(system.reg["11"], region="110000", division="110101", name="赵敏")
    credit(system.reg["11"], beijing, 70_000)
    # A 河北 hall's operator, added to the console's file (it reads the file at startup).
    from medaid.console.operators import write_file

    extra = Path(system.topo.console_dir) / "hebei.toml"
    write_file(extra, {"hb01": ("河北窗口", "console", "hebei-pass-1")}, {"hb01": ["13"]})
    path = Path(system.topo.console_dir) / "operators.toml"
    path.write_text(path.read_text(encoding="utf-8") + "\n" + extra.read_text(encoding="utf-8"), encoding="utf-8")
    system.topo.restart("console")

    def signed_in(operator: str, password: str) -> Any:
        context = browser.new_context(viewport={"width": 1280, "height": 800}, locale="zh-CN")
        pg = context.new_page()
        pg.set_default_timeout(10_000)
        pg.goto(system.url + "/login")
        sign_in(pg, system, operator, password)
        return pg

    national = signed_in(*system.topo.console_login)  # the topology's operator serves every province it runs
    look_up(national, system, beijing)
    go(national, "共济绑定")
    bindings_link = national.url
    national.context.close()
    pg = signed_in("hb01", "hebei-pass-1")
    pg.fill("#lookup-id_number", beijing.lower())
    submit(pg, "#lookup-form button[type=submit]")
    said = pg.inner_text("#lookup-id_number-error")
    assert "不在本工号可办理的参保省份" in said and "本工号可办理:河北" in said
    assert pg.url.endswith("/lookup")  # no page of the person's
    # A link to one of the person's pages (a bookmark, a colleague's screen) is refused just the same.
    pg.goto(bindings_link)
    assert "不在本工号可办理的参保省份" in pg.inner_text("#page-error")
    content = pg.content()
    assert beijing not in content and mask(beijing) not in content and "赵" not in content and "700.00" not in content
    refused = [line for line in system.audit_lines("/bindings") if "OPERATOR_OUTSIDE_PROVINCE" in line]
    assert refused and '"operator": "hb01"' in refused[-1] and mask(beijing) in refused[-1]
    assert not [line for line in system.topo.services["console"].log_lines if beijing in line]
    pg.context.close()


# --- a sign-in that ends while a form is open -------------------------------------------------------

def _gansu_family_creator(system: System) -> tuple[Any, str]:
    """A 甘肃 person with ¥1,000 in their personal account and an empty family account of their own."""
    r62 = system.reg["62"]
    creator = enroll(r62, birth="19700101", region="620100", division="620102")
    credit(r62, creator, 100_000)
    r62.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(request_id=rid("create"), creator_id_number=creator,
                                                           commitment=FACE))
    return r62, creator


def _two_windows(browser: Any) -> tuple[Any, Any, Any]:
    """One browser (one cookie jar) with two windows: (context, the form's window, the other)."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, locale="zh-CN")
    pg, other = context.new_page(), context.new_page()
    pg.set_default_timeout(10_000)
    return context, pg, other


def test_a_form_sent_after_the_sign_in_ended_writes_nothing_and_leads_back_through_sign_in(
        browser: Any, system: System) -> None:
    r62, creator = _gansu_family_creator(system)
    context, pg, other = _two_windows(browser)
    pg.goto(system.url + "/login")
    sign_in(pg, system)
    look_up(pg, system, creator)
    go(pg, "家庭共济账户")
    family_page = pg.url
    pg.fill("#transfer-amount", "250.00")
    first_id = pg.input_value("#transfer-form input[name=request_id]")
    # Meanwhile the sign-in ends (退出登录 in another window; the day's session running out alike).
    other.goto(system.url + "/")
    submit(other, "form[action='/logout'] button[type=submit]")
    submit(pg, "#transfer-form button[type=submit]")
    said = pg.inner_text("main")
    assert "登录" in said and "没有办理" in said, said
    assert creator not in pg.content()
    account = r62.GetFamilyAccount(fpb.GetFamilyAccountRequest(id_number=creator)).account
    assert account.balance_fen == 0 and balance(r62, creator) == 100_000  # nothing written
    # The page leads to sign-in, and sign-in back to the page the form was on: a fresh form.
    submit(pg, "#sign-in-again")
    sign_in(pg, system)
    assert pg.url.split("?")[0] == family_page.split("?")[0] and mask(creator) in pg.inner_text("main")
    assert pg.input_value("#transfer-form input[name=request_id]") != first_id
    pg.fill("#transfer-amount", "250.00")
    submit(pg, "#transfer-form button[type=submit]")
    assert "已划拨 ¥250.00" in pg.inner_text("#family-done")
    account = r62.GetFamilyAccount(fpb.GetFamilyAccountRequest(id_number=creator)).account
    assert account.balance_fen == 25_000 and balance(r62, creator) == 75_000
    context.close()


def test_a_form_opened_before_signing_in_again_writes_nothing_and_leads_back_to_its_page(
        browser: Any, system: System) -> None:
    r62, creator = _gansu_family_creator(system)
    context, pg, other = _two_windows(browser)

    def at_the_sign_in_page(at: Any) -> None:
        at.goto(system.url + "/login")
        sign_in(at, system)

    at_the_sign_in_page(pg)
    look_up(pg, system, creator)
    go(pg, "家庭共济账户")
    pg.fill("#transfer-amount", "250.00")
    # Meanwhile the operator signs out and in again in another window: a new session, with its own token.
    other.goto(system.url + "/")
    submit(other, "form[action='/logout'] button[type=submit]")
    at_the_sign_in_page(other)
    submit(pg, "#transfer-form button[type=submit]")
    said = pg.inner_text("main")
    assert "没有办理" in said and "刷新" not in said, said
    pg.reload()  # the browser sends the same form again: refused the same
    assert "没有办理" in pg.inner_text("main")
    account = r62.GetFamilyAccount(fpb.GetFamilyAccountRequest(id_number=creator)).account
    assert account.balance_fen == 0 and balance(r62, creator) == 100_000  # nothing written
    submit(pg, "#form-page-again")
    assert mask(creator) in pg.inner_text("main")
    pg.fill("#transfer-amount", "250.00")
    submit(pg, "#transfer-form button[type=submit]")
    assert "已划拨 ¥250.00" in pg.inner_text("#family-done")
    assert balance(r62, creator) == 75_000
    context.close()


def test_a_form_sent_again_after_signing_in_anew_has_one_effect_and_is_the_operators_alone(
        browser: Any, system: System) -> None:
    """A 划拨 whose call got no answer (the registry died after the debit) leaves a page with 再次提交;
    the sign-in ends meanwhile (outages are when they do). After signing in again the same operator
    sends it again under its request id: one 划拨, its answer shown. Sent from another operator's
    session, or with its seal or fields changed, it is refused and nothing is called."""
    from medaid.console.operators import write_file

    path = Path(system.topo.console_dir) / "operators.toml"
    if "[operators.desk02]" not in path.read_text(encoding="utf-8"):
        extra = Path(system.topo.console_dir) / "desk02.toml"
        write_file(extra, {"desk02": ("窗口二号", "console", "desk02-pass-1")}, {"desk02": ["13", "11", "62"]})
        path.write_text(path.read_text(encoding="utf-8") + "\n" + extra.read_text(encoding="utf-8"), encoding="utf-8")
        system.topo.restart("console")
    r62 = system.reg["62"]
    creator = enroll(r62, birth="19700101", region="620100", division="620102")
    credit(r62, creator, 100_000)
    r62.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(request_id=rid("create"), creator_id_number=creator,
                                                           commitment=FACE))
    context = browser.new_context(viewport={"width": 1280, "height": 800}, locale="zh-CN")
    pg, other = context.new_page(), context.new_page()
    pg.set_default_timeout(20_000)

    def sent_under(request_id: str) -> list[str]:
        return [line for line in system.topo.services["console"].log_lines if request_id in line]

    pg.goto(system.url + "/login")
    sign_in(pg, system)
    look_up(pg, system, creator)
    go(pg, "家庭共济账户")
    family_page = pg.url
    pg.fill("#transfer-amount", "250.00")
    first_id = pg.input_value("#transfer-form input[name=request_id]")
    # The lock the crash leaves expires after 3 s (--lock-ttl-ms; 10 s by default); the recovery loop takes
    # the cut 划拨 1 s after it began (--recovery-grace-ms; 15 s by default).
    locks = {"MEDAID_LOCK_TTL_MS": "3000"}
    system.topo.restart("registry-62", env={"MEDAID_FAULT": "family.after_debit", **locks})
    try:
        submit(pg, "#transfer-form button[type=submit]")
    finally:
        system.topo.restart("registry-62", env={"MEDAID_RECOVERY_GRACE_MS": "1000", **locks})
    assert "再次提交" in pg.inner_text("main") and creator not in pg.content()
    seal = pg.input_value("#resend-form input[name=resend]")
    action = system.url + (pg.get_attribute("#resend-form", "action") or "")
    # The registry answers again (the console's channel reconnects), and its recovery has finished the
    # 划拨 the crash cut short (the lock it held lapsed): what 再次提交 is answered with is known.
    other.goto(system.url + "/login")
    sign_in(other, system)
    for _ in range(150):
        other.goto(family_page)
        if other.locator("#transfer-form").count() and \
                r62.GetFamilyAccount(fpb.GetFamilyAccountRequest(id_number=creator)).account.balance_fen:
            break
        other.wait_for_timeout(200)
    # Another operator, signed in at their own counter, sends the sealed form: refused, nothing called.
    desk02 = browser.new_context(viewport={"width": 1280, "height": 800}, locale="zh-CN").new_page()
    desk02.goto(system.url + "/login")
    sign_in(desk02, system, "desk02", "desk02-pass-1")
    csrf = desk02.input_value("form[action='/logout'] input[name=csrf]")
    refused = desk02.request.post(action, form={"csrf": csrf, "resend": seal})
    assert refused.status == 403 and "其他工号" in refused.text() and creator not in refused.text(), refused.text()
    assert "RESEND_OTHER_OPERATOR" in refused.text()
    for _ in range(50):  # the console's log is read from its stderr as it comes
        logged_refusal = [x for x in system.audit_lines("/family/transfer") if "RESEND_OTHER_OPERATOR" in x]
        if logged_refusal:
            break
        desk02.wait_for_timeout(100)
    line = logged_refusal[-1]
    assert '"operator": "desk02"' in line and mask(creator) in line and first_id in line, line
    assert not [x for x in system.topo.services["console"].log_lines if creator in x]
    desk02.context.close()
    logged = len(sent_under(first_id))
    # The operator's own session, with the seal changed, or a field added beside it: refused alike.
    csrf = other.input_value("form[action='/logout'] input[name=csrf]")
    tampered = seal[:60] + ("A" if seal[60] != "A" else "B") + seal[61:]
    for form in ({"csrf": csrf, "resend": tampered}, {"csrf": csrf, "resend": seal, "amount": "900.00"}):
        resp = pg.request.post(action, form=form)
        assert resp.status == 400 and "没有发出" in resp.text() and "重新填写" not in resp.text(), resp.text()
    assert len(sent_under(first_id)) == logged  # nothing called, nothing logged under the form's id

    # The sign-in ends (退出登录 in the other window; the day's session running out alike).
    submit(other, "form[action='/logout'] button[type=submit]")
    submit(pg, "#resend-form button[type=submit]")
    said = pg.inner_text("main")
    assert "没有发出" in said and "可能已经办理" in said and "重新填写" not in said, said
    # Sign in again, and send it again under its request id: the first 划拨's answer, one 划拨.
    submit(pg, "#sign-in-again")
    sign_in(pg, system)
    assert "再次提交" in pg.inner_text("main") and creator not in pg.content()
    submit(pg, "#resend-form button[type=submit]")
    assert "已划拨 ¥250.00" in pg.inner_text("#family-done")
    account = r62.GetFamilyAccount(fpb.GetFamilyAccountRequest(id_number=creator)).account
    assert account.balance_fen == 25_000 and balance(r62, creator) == 75_000
    done = [x for x in system.audit_lines("transfer") if f'"request_id": "{first_id}"' in x]
    assert done and '"outcome": "OK"' in done[-1] and '"operator": "counter01"' in done[-1], done
    context.close()
