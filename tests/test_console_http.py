"""The console's HTTP behaviour without a browser: sign-in and CSRF, and a page whose registry does
not answer (a real closed port, not a mock) shows the reason in Chinese instead of failing."""

from __future__ import annotations

import asyncio
import re

from aiohttp.test_utils import TestClient, TestServer
from medaid.common.clock import FixedClock
from medaid.common.idnumber import make
from medaid.common.redis_server import free_port
from medaid.console import operators as ops
from medaid.console.backend import Backend
from medaid.console.web import COOKIE, Console, make_app

PERSON = make("130102", "19800101", "123")


def console_on_a_dead_registry() -> Console:
    operators = ops.parse({"wang01": {"name": "王晓", "role": "console",
                                      "password": ops.hash_password("pass-word-1", n=2 ** 10)}})
    backend = Backend({"13": f"127.0.0.1:{free_port()}"}, "", deadline_s=2.0)  # nothing listens there
    return Console(backend, operators, b"s" * 32, FixedClock(1_795_800_000_000))


async def scenario() -> None:
    console = console_on_a_dead_registry()
    async with TestClient(TestServer(make_app(console))) as client:
        assert (await client.get("/person", allow_redirects=False)).headers["Location"] == "/login"
        refused = await client.post("/login", data={"operator": "wang01", "password": "wrong"})
        assert refused.status == 401 and COOKIE not in client.session.cookie_jar.filter_cookies(client.make_url("/"))
        ok = await client.post("/login", data={"operator": "wang01", "password": "pass-word-1"},
                               allow_redirects=False)
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
