"""The 医保钱包 page's lists against the real wallet and registries: the wallet's listings give the
newest entries and transfers only (no paging), so a list cut short says so on the page, with a way to
list more, instead of passing for the whole history."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from medaid.common.v1 import common_pb2 as cpb
from medaid.console import pages_wallet
from medaid.console.backend import Backend
from medaid.console.web import Console, make_app
from medaid.wallet.v1 import wallet_pb2 as wpb
from support import FACE, credit, enroll, rid
from test_console_http import operators_for_tests, signed_in


async def wallet_pages(national: Any, pid: str) -> tuple[str, str]:
    backend = Backend({p: f"127.0.0.1:{r.port}" for p, r in national.registries.items()},
                      f"127.0.0.1:{national.wallet.port}")
    console = Console(backend, operators_for_tests(), b"s" * 32, national.clock)
    async with TestClient(TestServer(make_app(console))) as client:
        csrf = await signed_in(client)
        found = await client.post("/lookup", data={"csrf": csrf, "id_number": pid}, allow_redirects=False)
        wallet = str(found.headers["Location"]).replace("/person?", "/wallet?")
        first = await client.get(wallet)
        assert first.status == 200
        page = await first.text()
        link = re.search(r'id="entries-cut">[^<]*<a href="([^"]+)"', page)
        assert link, page[page.find('id="t-h"'):]
        more = await client.get(link.group(1).replace("&amp;", "&"))
        assert more.status == 200
        text = await more.text()
    await backend.close()
    return page, text


def rows(page: str, table: str) -> int:
    body = page[page.index(f'id="{table}"'):]
    return body[:body.index("</table>")].count("<tr><td>")


def test_a_wallet_list_cut_short_says_so_and_offers_more(national: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three transfers received (three 收到划转额度 entries) where the page lists two of each: both lists
    say they are cut (未列全) and link to a page that lists more; that page lists all three, uncut."""
    monkeypatch.setattr(pages_wallet, "ENTRIES_SHOWN", 2, raising=False)
    monkeypatch.setattr(pages_wallet, "MAX_TRANSFERS", 2)
    monkeypatch.setattr(pages_wallet, "ENTRIES_SHOWN_MORE", 5, raising=False)
    monkeypatch.setattr(pages_wallet, "TRANSFERS_SHOWN_MORE", 5, raising=False)
    r13, r11 = national.reg("13"), national.reg("11")
    mother = enroll(r13, birth="19550101")
    w = national.wallet.stub
    w.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=mother, province="13",
                                       use_place_admdvs="130100", real_name=FACE))
    for n in range(3):
        child = enroll(r11, region="110000", division="110105", birth=f"198{n}0101")
        credit(r11, child, 10_000)
        w.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=child, province="11",
                                           use_place_admdvs="110000", real_name=FACE))
        t = w.CreateTransfer(wpb.CreateTransferRequest(
            request_id=rid("xfer"), sender_id_number=child, sender_province="11", recipient_id_number=mother,
            relation=cpb.RELATION_PARENT, amount_fen=100 + n, verification=FACE)).transfer
        w.AcceptTransfer(wpb.AcceptTransferRequest(request_id=rid("accept"), transfer_id=t.transfer_id,
                                                   recipient_id_number=mother))
    page, more = asyncio.run(wallet_pages(national, mother))
    assert rows(page, "entries-table") == 2 and rows(page, "transfers-table") == 2
    assert "只列出最近 2 条(未列全)" in page and "只列出最近 2 笔(未列全)" in page
    assert rows(more, "entries-table") == 3 and rows(more, "transfers-table") == 3
    assert "未列全" not in more
