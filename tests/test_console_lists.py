"""The 医保钱包 page's lists against the real wallet and registries: the page lists the newest entries
and transfers, says when a list is cut short (未列全) and links to the page before (更早的记录, the
wallet's page tokens), to the first entry and the first transfer; nothing is skipped or listed twice
while transfers arrive between pages, no id number is in clear on any page or link, and a link edited
by hand lists the newest again, said so."""

from __future__ import annotations

import asyncio
import html
import logging
import re
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from medaid.common.v1 import common_pb2 as cpb
from medaid.console import pages_wallet
from medaid.console.backend import Backend
from medaid.console.web import Console, make_app
from medaid.wallet.v1 import wallet_pb2 as wpb
from support import FACE, credit, enroll, rid, snapshot
from test_console_audit import audit_lines
from test_console_http import operators_for_tests, signed_in
from test_wallet import at


def rows(page: str, table: str) -> int:
    body = page[page.index(f'id="{table}"'):]
    return body[:body.index("</table>")].count("<tr><td>")


def transfer_ids(page: str) -> list[str]:
    body = page[page.index('id="transfers-table"'):]
    return re.findall(r"<tr><td>([^<]+)</td><td class=\"transfer-direction\">", body[:body.index("</table>")])


def older(page: str, table: str) -> str | None:
    link = re.search(rf'id="{table}-older" href="([^"]+)"', page)
    return html.unescape(link.group(1)) if link else None


class Family:
    """A 河北 mother with a wallet and three 北京 children with wallets, each of whom sent her money
    (accepted: three 收到划转额度 entries); she passed ¥0.50 on to the second (转赠: an outgoing
    transfer, a fourth entry), all at different minutes."""

    def __init__(self, national: Any) -> None:
        self.n = national
        self.w = national.wallet.stub
        r13, r11 = national.reg("13"), national.reg("11")
        self.mother = enroll(r13, birth="19550101")
        self.w.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=self.mother, province="13",
                                                use_place_admdvs="130100", real_name=FACE))
        self.kids = []
        self.order: list[str] = []  # the transfers, oldest first
        for n in range(3):
            child = enroll(r11, region="110000", division="110105", birth=f"198{n}0101")
            credit(r11, child, 10_000)
            self.w.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=child, province="11",
                                                    use_place_admdvs="110000", real_name=FACE))
            self.kids.append(child)
            national.clock.set(at(22, 10, n))
            t = self.send(child, self.mother, 100 + n)
            self.w.AcceptTransfer(wpb.AcceptTransferRequest(request_id=rid("accept"), transfer_id=t,
                                                            recipient_id_number=self.mother))
        national.clock.set(at(22, 10, 30))
        self.send(self.mother, self.kids[1], 50, relation=cpb.RELATION_CHILD, source=wpb.TRANSFER_SOURCE_WALLET)

    def send(self, sender: str, recipient: str, amount: int, **kw: Any) -> str:
        province = "13" if sender == self.mother else "11"
        t = self.w.CreateTransfer(wpb.CreateTransferRequest(
            request_id=rid("xfer"), sender_id_number=sender, sender_province=province, recipient_id_number=recipient,
            relation=kw.pop("relation", cpb.RELATION_PARENT), amount_fen=amount, verification=FACE, **kw)).transfer
        self.order.append(t.transfer_id)
        return str(t.transfer_id)


async def browse(national: Any, pid: str, steps: Any) -> list[tuple[int, str]]:
    """The wallet page of `pid`, then each page `steps(page)` gives the address of (until None)."""
    backend = Backend({p: f"127.0.0.1:{r.port}" for p, r in national.registries.items()},
                      f"127.0.0.1:{national.wallet.port}")
    console = Console(backend, operators_for_tests(), b"s" * 32, national.clock)
    pages: list[tuple[int, str]] = []
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        found = await client.post("/lookup", data={"csrf": csrf, "id_number": pid}, allow_redirects=False)
        address: str | None = str(found.headers["Location"]).replace("/person?", "/wallet?")
        while address is not None:
            resp = await client.get(address)
            pages.append((resp.status, await resp.text()))
            address = steps(pages[-1][1], len(pages))
    await backend.close()
    return pages


@pytest.fixture
def small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pages_wallet, "ENTRIES_SHOWN", 2)
    monkeypatch.setattr(pages_wallet, "TRANSFERS_SHOWN", 2)


def test_a_wallet_list_cut_short_says_so_and_pages_to_the_first(national: Any, small_pages: None) -> None:
    """Four entries and four transfers (three in, one out) two a page: the first page says each list is
    cut (未列全) and links to the page before; that one lists the rest, says it reached the first and
    links back to the newest. Every transfer, to her and from her, is listed once, newest first."""
    f = Family(national)
    pages = asyncio.run(browse(national, f.mother, lambda page, n: older(page, "transfers") if n < 5 else None))
    assert [status for status, _ in pages] == [200, 200]
    first, second = pages[0][1], pages[1][1]
    assert rows(first, "entries-table") == 2 and rows(first, "transfers-table") == 2
    assert "只列出最近 2 条(未列全)" in first and "只列出最近 2 笔(未列全)" in first
    assert transfer_ids(first) + transfer_ids(second) == f.order[::-1]
    assert "更早的划转,本页 2 笔,已列到最早的一笔" in second and 'class="newest"' in second
    assert older(second, "transfers") is None
    entries = asyncio.run(browse(national, f.mother, lambda page, n: older(page, "entries")))
    assert [rows(page, "entries-table") for _, page in entries] == [2, 2]
    assert "更早的流水,本页 2 条,已列到最早的一条" in entries[1][1]


def test_transfers_arriving_between_pages_are_neither_skipped_nor_listed_twice(national: Any,
                                                                                small_pages: None) -> None:
    """While the operator reads the first page a fourth child's transfer arrives: the page before lists
    what was older, once each, and the new one is on the newest page only."""
    f = Family(national)
    r11 = national.reg("11")
    late = enroll(r11, region="110000", division="110105", birth="19900101")
    credit(r11, late, 10_000)
    f.w.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=late, province="11",
                                         use_place_admdvs="110000", real_name=FACE))
    seen: dict[str, str] = {}

    def steps(page: str, n: int) -> str | None:
        if n == 1:
            national.clock.set(at(22, 11))
            seen["late"] = f.send(late, f.mother, 999)
        return older(page, "transfers")

    pages = asyncio.run(browse(national, f.mother, steps))
    listed = [tid for _, page in pages for tid in transfer_ids(page)]
    assert listed == f.order[:4][::-1] and seen["late"] not in listed
    newest = asyncio.run(browse(national, f.mother, lambda page, n: None))[0][1]
    assert transfer_ids(newest)[0] == seen["late"]


def test_no_id_number_is_in_clear_on_any_page_nor_in_a_link(national: Any, small_pages: None) -> None:
    f = Family(national)
    pages = asyncio.run(browse(national, f.mother, lambda page, n: older(page, "transfers") or older(page, "entries")
                               if n < 5 else None))
    assert len(pages) >= 2
    for _, page in pages:
        for pid in [f.mother, *f.kids]:
            assert pid not in page


def test_a_page_link_edited_by_hand_lists_the_newest_and_says_so(national: Any, small_pages: None,
                                                                   rdb: Any, caplog: pytest.LogCaptureFixture
                                                                   ) -> None:
    f = Family(national)
    edits = iter(("&e=AAAA", "&ti=bm90IGEgdG9rZW4&to=-", "&e=" + "x" * 400))

    def steps(page: str, n: int) -> str | None:
        link = older(page, "entries")
        edit = next(edits, None)
        return re.sub(r"&e=[^&]*", edit, link) if link and edit else None

    before = snapshot(rdb)
    with caplog.at_level(logging.INFO, logger="medaid.console"):
        pages = asyncio.run(browse(national, f.mother, steps))
    assert [status for status, _ in pages] == [200, 400, 400, 400]
    for _, page in pages[1:]:
        assert pages_wallet.PAGE_INVALID_TEXT in page
        assert rows(page, "entries-table") == 2 and "只列出最近 2 条(未列全)" in page
    audit, _ = audit_lines(caplog)
    assert [o["outcome"] for o in audit if o["action"] == "wallet"] == ["OK"] + ["INPUT_INVALID"] * 3
    assert snapshot(rdb) == before
