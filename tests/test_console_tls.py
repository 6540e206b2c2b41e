"""The console over mTLS: it presents its own `console` certificate, and the registries' and the
wallet's authorization table lets that identity serve the counter (and nothing it should not)."""

from __future__ import annotations

import http.cookiejar
import json
import re
import urllib.parse
import urllib.request

import grpc
import pytest
from medaid.common import rpc
from medaid.common.idnumber import mask
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.registry.v1 import registry_pb2_grpc as rpb_grpc
from medaid.topology import DEMO_CLOCK, Topology
from support import enroll, reason, rid


def test_console_over_mtls_looks_a_person_up_as_the_console_identity() -> None:
    topo = Topology.start(provinces=("13",), router=False, clock=DEMO_CLOCK, console=True, tls=True)
    try:
        pid = enroll(rpb_grpc.RegistryServiceStub(topo.channel("registry-13")))
        base = f"http://{topo.address('console')}"
        health = json.loads(urllib.request.urlopen(base + "/healthz", timeout=5).read())
        assert health == {"serving": True, "sessions": True}
        # The services behind, asked over mTLS, are reported apart from the console's own readiness.
        backends = json.loads(urllib.request.urlopen(base + "/healthz/backends", timeout=5).read())
        assert backends == {"serving": True, "downstream": {"registry-13": True, "wallet": True}}
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        operator, password = topo.console_login
        token = re.search(r'id="login-form">\s*<input type="hidden" name="csrf" value="([0-9a-f]+)"',
                          browser.open(base + "/login").read().decode()).group(1)
        browser.open(base + "/login", urllib.parse.urlencode({"csrf": token, "operator": operator,
                                                              "password": password}).encode())
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', browser.open(base + "/").read().decode()).group(1)
        page = browser.open(base + "/lookup", urllib.parse.urlencode({"csrf": csrf, "id_number": pid}).encode())
        assert re.search(r'id="id-number">([^<]*)<', page.read().decode()).group(1) == mask(pid)
        # The same certificate may not enroll or credit: the services' table says so, not only the console.
        with rpc.sync_channel(topo.address("registry-13"), tls=topo.tls("console")) as ch:
            with pytest.raises(grpc.RpcError) as refused:
                rpb_grpc.RegistryServiceStub(ch).CreditAccount(rpb.CreditAccountRequest(
                    request_id=rid("c"), id_number=pid, amount_fen=100, kind=rpb.CREDIT_KIND_MONTHLY_CONTRIBUTION))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert reason(refused.value) == "CALLER_NOT_ALLOWED"
    finally:
        topo.stop()
