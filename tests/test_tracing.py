"""Trace context across the four hops (docs/operations.md "Tracing"): one 2207 sent to the gateway is
logged under one trace id by the gateway, the router, the registry and the wallet; a caller's
`traceparent` is kept; each item of a batch keeps its own trace; sampled calls export spans whose ids
are those of the logs.

A real topology (redis-server, registries 13 and 11, wallet, router, gateway), its processes' own
log lines read back (Topology captures each process's stderr)."""

from __future__ import annotations

import contextvars
import http.cookiejar
import json
import re
import secrets
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from medaid.common import otel, tracing
from medaid.router.v1 import router_pb2 as rtpb
from medaid.router.v1 import router_pb2_grpc as router_pb_grpc
from medaid.topology import DEMO_CLOCK, Topology
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from support import RESIDENT, credit, enroll, fund_wallet
from test_gateway import AREA, HOSPITAL, Env, data_2207, envelope, family, new_msgid

FOUR = ("gateway", "router", "registry-13", "wallet")


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    topo = Topology.start(provinces=("13", "11"), clock=DEMO_CLOCK, console=True)
    e = Env(topo)
    try:
        yield e
    finally:
        e.close()
        topo.stop()


def lines(env: Env, process: str) -> list[dict[str, Any]]:
    out = []
    for line in list(env.topo.services[process].log_lines):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def logged(env: Env, process: str, trace_id: str, timeout: float = 5.0, msg: str = "") -> list[dict[str, Any]]:
    """The process's log lines of that trace (`msg`: only those), waiting for the log pipe to deliver
    them: a trace's first lines may arrive before the one looked for."""
    deadline = time.monotonic() + timeout
    while True:
        found = [x for x in lines(env, process) if x.get("trace_id") == trace_id and (not msg or x.get("msg") == msg)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def patient_with_wallet(env: Env) -> str:
    """A 河北 patient with 10 yuan in the account and 40 yuan in the wallet (from a 北京 sender)."""
    patient = enroll(env.hebei, name="李桂兰", birth="19500101")
    credit(env.hebei, patient, 1_000)
    sender = enroll(env.beijing, name="李明", birth="19800101", region="110000", division="110105")
    credit(env.beijing, sender, 50_000)
    fund_wallet(env.wallet, sender, patient, 4_000)
    return patient


def answered(env: Env, msgid: str) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = [x for x in lines(env, "gateway") if x.get("msg") == "answered" and x.get("msgid") == msgid]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"the gateway never logged its answer to {msgid}")


def test_one_2207_is_logged_under_one_trace_id_by_all_four_services(env: Env):
    patient = patient_with_wallet(env)
    message = envelope("2207", data_2207(patient, "30.00"))
    setl = env.post(message).ok()["setlinfo"]
    assert float(setl["wallet_pay"]) == 20.0  # the wallet paid a share: all four services took part
    trace_id = answered(env, message["msgid"])["trace_id"]  # started at the edge: no traceparent was sent
    assert re.fullmatch(r"[0-9a-f]{32}", trace_id)
    for process in FOUR:
        found = logged(env, process, trace_id)
        assert found, f"{process} logged nothing under trace {trace_id}"
        assert all(x.get("request_id") for x in found), found  # and the request each hop handled
    assert any(x["path"] == "staged" for x in logged(env, "registry-13", trace_id, msg="settled"))
    assert logged(env, "wallet", trace_id, msg="wallet spent")
    assert not logged(env, "registry-11", trace_id, timeout=0)  # a province the message never reached


def test_a_callers_traceparent_is_kept(env: Env):
    patient = patient_with_wallet(env)
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    message = envelope("2207", data_2207(patient, "30.00"))
    env.post(message, headers={"traceparent": f"00-{trace_id}-{parent}-01"}).ok()
    assert answered(env, message["msgid"])["trace_id"] == trace_id
    for process in FOUR:
        assert logged(env, process, trace_id), process


def test_a_malformed_traceparent_starts_a_new_trace(env: Env):
    _, child = family(env)
    message = envelope("2207", data_2207(child, "5.00"))
    env.post(message, headers={"traceparent": "00-" + "0" * 32 + "-" + "1" * 16 + "-01"}).ok()
    trace_id = answered(env, message["msgid"])["trace_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", trace_id) and trace_id != "0" * 32
    assert logged(env, "registry-13", trace_id)


def test_an_envelope_in_capitals_is_logged_by_its_infno_and_msgid(env: Env):
    """A hospital system that writes the envelope's names in capitals (`INFNO`, `MSGID`) is logged under
    them, refused or not, as the envelope reads them (in any case; sent in two cases, the interface's
    own spelling decides)."""
    _, child = family(env)
    message = {k.upper(): v for k, v in envelope("2207", data_2207(child, "5.00")).items()}
    env.post(message).ok()
    line = answered(env, message["MSGID"])
    assert line["infno"] == "2207" and line["reason"] == ""
    refused = {k.upper(): v for k, v in envelope("9999", {}).items()}
    refused["infno"] = "9998"  # both spellings: the interface's own decides
    env.post(refused).refused("UNSUPPORTED_INFNO")
    assert answered(env, refused["MSGID"])["infno"] == "9998"


def test_each_settlement_of_a_batch_keeps_its_own_trace(env: Env):
    """Concurrent 2207s to one province travel together in SettleBatch calls; each is still settled
    and logged under the trace of its own message."""
    children = [family(env)[1] for _ in range(8)]
    sent = [(envelope("2207", data_2207(c, "3.00")), secrets.token_hex(16)) for c in children]
    with ThreadPoolExecutor(len(sent)) as pool:
        list(pool.map(lambda m: env.post(m[0], headers={"traceparent": f"00-{m[1]}-{secrets.token_hex(8)}-00"})
                      .ok(), sent))
    for message, trace_id in sent:
        settled = logged(env, "registry-13", trace_id, msg="settled")
        assert [x["request_id"] for x in settled] == [message["msgid"]]


def test_the_router_called_directly_starts_a_trace_or_keeps_the_callers(env: Env):
    """A hospital system may call the router over gRPC: the router is then the edge of the trace."""
    _, child = family(env)
    with grpc.insecure_channel(env.topo.address("router")) as ch:
        router = router_pb_grpc.RouterServiceStub(ch)

        def query(metadata: tuple[tuple[str, str], ...] = ()) -> str:
            msgid = new_msgid(HOSPITAL)
            router.QueryPerson(rtpb.QueryPersonRequest(
                msgid=msgid, institution=rtpb.Institution(fixmedins_code=HOSPITAL, mdtrtarea_admvs=AREA[HOSPITAL]),
                mdtrt_cert_type="02", mdtrt_cert_no=child), timeout=10, metadata=metadata)
            return msgid

        started = query()
        kept_id = secrets.token_hex(16)
        kept = query((("traceparent", f"00-{kept_id}-{secrets.token_hex(8)}-01"),))
    deadline = time.monotonic() + 5
    while True:
        by_msgid = {x.get("request_id"): x.get("trace_id") for x in lines(env, "router") if x.get("msg") == "1101"}
        if (started in by_msgid and kept in by_msgid) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert re.fullmatch(r"[0-9a-f]{32}", by_msgid[started] or "")
    assert by_msgid[kept] == kept_id


def test_a_console_action_is_logged_under_the_trace_of_the_calls_it_made(env: Env):
    """The console is an edge too: an operator's action and the registry's lines for it share a trace
    id, so the audit line of a 绑定 finds what the registry did."""
    base = f"http://{env.topo.address('console')}"
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def page(path: str, form: dict[str, str] | None = None) -> str:
        body = urllib.parse.urlencode(form).encode() if form is not None else None
        with browser.open(urllib.request.Request(base + path, data=body), timeout=30) as resp:
            return str(resp.read().decode())

    operator, password = env.topo.console_login
    token = re.search(r'id="login-form">\s*<input type="hidden" name="csrf" value="([0-9a-f]+)"',
                      page("/login")).group(1)
    page("/login", {"csrf": token, "operator": operator, "password": password})
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page("/")).group(1)
    helper = enroll(env.hebei, name="赵刚")
    child = enroll(env.hebei, itype=RESIDENT, birth="20160101", name="赵小花")
    ref = re.search(r'href="/bindings\?p=([^"&]+)"', page("/lookup", {"csrf": csrf, "id_number": helper})).group(1)
    request_id = "console-" + secrets.token_hex(16)
    page(f"/bindings/bind?p={ref}", {"csrf": csrf, "request_id": request_id, "member": child,
                                      "relation": "CHILD", "method": "guardian", "guardian": helper})
    deadline = time.monotonic() + 5
    while not (audit := [x for x in lines(env, "console") if x.get("request_id") == request_id]):
        assert time.monotonic() < deadline, "the console never logged the bind"
        time.sleep(0.05)
    (line,) = audit
    assert (line["action"], line["outcome"]) == ("bind", "OK")
    assert re.fullmatch(r"[0-9a-f]{32}", line.get("trace_id", "")), line
    assert logged(env, "registry-13", line["trace_id"], msg="bound")
    assert child not in json.dumps(line, ensure_ascii=False) and helper not in json.dumps(line, ensure_ascii=False)


def test_tracing_context_unit_rules():
    contextvars.copy_context().run(_tracing_context_unit_rules)  # leaves this thread's context as it was


def _tracing_context_unit_rules() -> None:
    assert tracing.parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01") == (
        "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", True)
    for bad in ("", "garbage", "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01"):
        assert tracing.parse(bad) is None, bad
    call = tracing.start("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00", "req-1")
    assert (call.trace_id, call.parent_span_id, call.sampled) == ("0af7651916cd43dd8448eb211c80319c",
                                                                  "b7ad6b7169203331", False)
    assert call.span_id != call.parent_span_id
    # Outgoing calls name this hop's span as their parent, and the request they are made for (this
    # one's id, the origin of what follows); a traceparent already given stays.
    assert tracing.outgoing([("authorization", "x")]) == (("authorization", "x"), ("traceparent", call.traceparent()),
                                                          ("medaid-origin-id", "req-1"))
    assert tracing.outgoing([("traceparent", "t")]) == (("traceparent", "t"), ("medaid-origin-id", "req-1"))
    with tracing.item("00-11111111111111111111111111111111-2222222222222222-01", "item"):
        assert tracing.current() is not None and tracing.current().trace_id == "1" * 32  # type: ignore[union-attr]
    assert tracing.current() is call
    # A call made for another request passes that origin on; a batch item or an entry acted for is its own.
    header, origin = tracing.incoming([("traceparent", call.traceparent()), ("medaid-origin-id", "H130101")])
    inner = tracing.start(header, "setl-abc", origin)
    assert inner.origin_id == "H130101" and dict(tracing.outgoing())["medaid-origin-id"] == "H130101"
    with tracing.acting_for("xfer-1"):
        assert dict(tracing.outgoing())["medaid-origin-id"] == "xfer-1"
    with tracing.item("", "H130102"):
        assert dict(tracing.outgoing())["medaid-origin-id"] == "H130102"
    assert tracing.start(header, "H130101", origin).origin_id == ""  # its own: no second name
    tracing.start(None, "医保-1")  # no ASCII metadata value: not passed on
    assert "medaid-origin-id" not in dict(tracing.outgoing())


def test_sampled_calls_export_spans_with_the_ids_of_the_logs():
    contextvars.copy_context().run(_sampled_calls_export_spans)


def _sampled_calls_export_spans() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(id_generator=otel.ids())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    otel.use(provider)
    try:
        call = tracing.start("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "req-2")
        otel.end_span(otel.start_span("RegistryService/Settle", call), "FAILED_PRECONDITION", "HELPER_NOT_EMPLOYEE")
    finally:
        otel.use(None)
    (span,) = exporter.get_finished_spans()
    assert f"{span.context.trace_id:032x}" == call.trace_id
    assert f"{span.context.span_id:016x}" == call.span_id
    assert span.parent is not None and f"{span.parent.span_id:016x}" == "b7ad6b7169203331"
    assert span.attributes is not None and span.attributes["medaid.reason"] == "HELPER_NOT_EMPLOYEE"
