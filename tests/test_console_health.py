"""The console's health: readiness (`/healthz`) is the console's own (it serves pages, its session
store answers), so one province's registry or the wallet being down leaves every replica in service
for the people it can still serve; `/healthz/backends` names each registry and the wallet, so
monitoring (and `make status`) still see the outage. Real console process, real registries and
wallet, a real closed port for a session store that does not answer."""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from medaid import topology
from medaid.common.clock import FixedClock
from medaid.common.idnumber import mask
from medaid.console import operators as ops
from medaid.console.backend import Backend
from medaid.console.sessions import RedisSessions
from medaid.console.web import Console, make_app
from medaid.registry.v1 import registry_pb2_grpc as rpb_grpc
from medaid.topology import DEMO_CLOCK, Topology
from support import dead_port, enroll


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def look_up(base: str, login: tuple[str, str], pid: str) -> tuple[int, str]:
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    token = re.search(r'id="login-form">\s*<input type="hidden" name="csrf" value="([0-9a-f]+)"',
                      browser.open(base + "/login").read().decode()).group(1)
    browser.open(base + "/login", urllib.parse.urlencode({"csrf": token, "operator": login[0],
                                                          "password": login[1]}).encode())
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', browser.open(base + "/").read().decode()).group(1)
    try:
        page = browser.open(base + "/lookup", urllib.parse.urlencode({"csrf": csrf, "id_number": pid}).encode())
        return page.status, page.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_one_province_down_leaves_the_console_ready_and_names_the_province(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    topo = Topology.start(provinces=("13", "35"), router=False, clock=DEMO_CLOCK, console=True)
    try:
        pid = enroll(rpb_grpc.RegistryServiceStub(topo.channel("registry-13")))
        base = f"http://{topo.address('console')}"
        assert get(base + "/healthz") == (200, {"serving": True, "sessions": True})
        everyone = {"registry-13": True, "registry-35": True, "wallet": True}
        assert get(base + "/healthz/backends") == (200, {"serving": True, "downstream": everyone})

        topo.services["registry-35"].kill()
        # The console itself still serves: readiness stays 200 (every replica stays in the Service) …
        assert get(base + "/healthz") == (200, {"serving": True, "sessions": True})
        # … and a person insured in 河北 is served, as docs/console.md promises.
        status, page = look_up(base, topo.console_login, pid)
        assert status == 200 and re.search(r'id="id-number">([^<]*)<', page).group(1) == mask(pid)
        # Monitoring still sees which backend is down.
        assert get(base + "/healthz/backends") == (503, {"serving": False,
                                                         "downstream": {**everyone, "registry-35": False}})

        # `make status` reads the state `make up` wrote: it names the registry DOWN and exits 1,
        # while the console's own line says SERVING.
        monkeypatch.chdir(tmp_path)
        topology.STATE_FILE.parent.mkdir(parents=True)
        topology.STATE_FILE.write_text(json.dumps({"addresses": {n: topo.address(n) for n in topo.ports}}))
        capsys.readouterr()
        assert topology.main(["status"]) == 1
        lines = {line.split()[0]: line.split()[-1] for line in capsys.readouterr().out.splitlines()}
        assert lines == {"registry-13": "SERVING", "registry-35": "DOWN", "wallet": "SERVING", "console": "SERVING"}

        topo.services["wallet"].kill()
        assert get(base + "/healthz") == (200, {"serving": True, "sessions": True})
        assert get(base + "/healthz/backends") == (503, {"serving": False, "downstream": {
            "registry-13": True, "registry-35": False, "wallet": False}})
    finally:
        topo.stop()


async def health_with_store(port: int) -> tuple[int, Any]:
    operators = ops.parse({"wang01": {"name": "王晓", "role": "console",
                                      "password": ops.hash_password("pass-word-1", n=2 ** 10)}})
    console = Console(Backend({"13": f"127.0.0.1:{dead_port()}"}, ""), operators, b"s" * 32,
                      FixedClock(1_795_800_000_000))
    store = RedisSessions(aioredis.Redis(host="127.0.0.1", port=port, socket_timeout=1))
    console.sessions = store
    async with TestClient(TestServer(make_app(console))) as client:
        resp = await client.get("/healthz")
        answer = resp.status, await resp.json()
    await console.backend.close()
    await store.close()
    return answer


def test_readiness_follows_the_consoles_own_session_store(redis_server: Any) -> None:
    # A store that answers: ready, although the only registry configured does not listen.
    assert asyncio.run(health_with_store(redis_server.port)) == (200, {"serving": True, "sessions": True})
    # A store that does not answer: nobody can be signed in or served (docs/console.md), so not ready.
    assert asyncio.run(health_with_store(dead_port())) == (503, {"serving": False, "sessions": False})
