"""What the console answers when something is wrong with the request rather than the business: a
person link that is bad or missing, a page that does not exist, a wrong method. Each answer is the
console's own page, in Chinese, with a way back to the look-up page."""

from __future__ import annotations

import asyncio
import re

from aiohttp.test_utils import TestClient, TestServer
from medaid.console.web import make_app
from test_console_http import PERSON, console_on_a_dead_registry, signed_in


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
