"""Every log line of every service, over a short real run of the whole topology (redis-server, four
registries, the wallet, the router, the gateway and the console, each its own process): settlements
and reversals, 1101s, wallet transfers, family acts, 代缴, a death, refusals, bad input at the
gateway, a refused console form, a registry stopped and a store outage.

The rules (docs/operations.md "Tracing", docs/security.md): each line is one JSON object; a line that
names a request carries a trace id, and one 2207's lines share it across services; a line written for
a request carries its request id (a batch item's line its item's), but for the lines the docs name; no id number (18
characters, `X` or `x`) and no person's name in clear in any line, tracebacks and error details
included; a refusal is not an error, a store outage is; money in whole fen, as integers."""

from __future__ import annotations

import base64
import http.cookiejar
import json
import os
import re
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from medaid.common import errors
from medaid.common.redis_server import RedisServer
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.registry.v1 import registry_pb2_grpc as rpb_grpc
from medaid.topology import DEMO_CLOCK, Topology, start_service
from medaid.wallet.v1 import wallet_pb2 as wpb
from support import FACE, RESIDENT, bind, credit, enroll, fund_wallet, new_id, new_id_x, rid
from test_family import GS, create, huabo, invite
from test_gateway import BEIJING_HOSPITAL, NOBODY, Env, data_1101, data_2207, envelope, post_raw
from test_premiums import pay
from test_store_outage import health, wait_health

# Every name the run gives a person: none may reach a log line in clear.
NAMES = ("欧阳建国", "司马小雨", "诸葛桂兰", "上官明辉", "皇甫继承", "慕容春花", "东方小宝", "令狐大山", "独孤秀英")
_ID18 = re.compile(r"(?<![0-9])[1-9][0-9]{16}[0-9Xx](?![0-9Xx])")
_HEX_IDS = re.compile(r"(?<![0-9a-fA-F])(?:[0-9a-f]{32}|[0-9a-f]{16})(?![0-9a-fA-F])")
# Fields that are times or ratios, not money: a float there is fine.
# The lines that say a process's own Redis does not answer.
_STORE_DOWN = ("store unavailable", "store not answering: health NOT_SERVING",
               "session store unavailable")
# docs/operations.md "Tracing": the lines that carry a trace id and no request id. Notes one service
# sends another about a person (they share the trace of the request that caused them), the
# background passes (a trace of their own), and lines of calls that name no request (reads, a
# batch as a whole: `medaid.rpc`'s answers), a message the gateway could not read (no msgid).
_NOTES = ("wallet noted", "owner status noted")
_BACKGROUND = ("recovery", "recovery deferred", "premium lifts deferred", "recovery pass failed",
               "recovery passes skipped: the store cannot serve", "maintenance",
               "maintenance passes skipped: the store cannot serve", "recovery passes resumed",
               "maintenance passes resumed",
               "maintenance pass failed", "maintenance lease lost; pass cancelled", "return deferred",
               "transfers indexed", "transfer abandoned")
_NOT_MONEY = re.compile(r"^(ts|.*_(ms|s|seconds|ratio))$")
_MONEY = re.compile(r"^(amount|.*_fen|.*_pay|.*_refund)$")


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    topo = Topology.start(provinces=("13", "11", "62"), clock=DEMO_CLOCK, console=True)
    e = Env(topo)
    e.channels["registry-62"] = grpc.insecure_channel(topo.address("registry-62"))
    try:
        yield e
    finally:
        e.close()
        if topo.redis.proc is None or topo.redis.proc.poll() is not None:
            topo.redis.start()
        topo.stop()


class Desk:
    """The console over HTTP, signed in."""

    def __init__(self, env: Env) -> None:
        self.base = f"http://{env.topo.address('console')}"
        self.browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        operator, password = env.topo.console_login
        token = re.search(r'id="login-form">\s*<input type="hidden" name="csrf" value="([0-9a-f]+)"',
                          self.page("/login")[1]).group(1)
        self.page("/login", {"csrf": token, "operator": operator, "password": password})
        self.csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', self.page("/")[1]).group(1)

    def page(self, path: str, form: dict[str, str] | None = None) -> tuple[int, str]:
        body = urllib.parse.urlencode(form).encode() if form is not None else None
        try:
            with self.browser.open(urllib.request.Request(self.base + path, data=body), timeout=30) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()


def run_everything(env: Env) -> dict[str, str]:
    """The run; returns each 2207's msgid by what it was."""
    hebei, beijing = env.hebei, env.beijing
    gansu = rpb_grpc.RegistryServiceStub(env.channels["registry-62"])
    msgids: dict[str, str] = {}
    # A 河北 family: a helper and a child, bound.
    helper = enroll(hebei, name=NAMES[0])
    child = enroll(hebei, itype=RESIDENT, birth="20160101", name=NAMES[1])
    credit(hebei, helper, 30_000)
    bind(hebei, helper, child)
    # A 河北 patient whose check character is X, with a wallet funded by a 北京 sender.
    patient = new_id_x("130102", "19500101")
    hebei.EnrollPerson(rpb.EnrollPersonRequest(request_id=rid("enroll"), id_number=patient, name=NAMES[2],
                                               insurance_type=cpb.INSURANCE_TYPE_EMPLOYEE, pooling_region="130100"))
    credit(hebei, patient, 1_000)
    sender = enroll(beijing, name=NAMES[3], region="110000", division="110105")
    credit(beijing, sender, 50_000)
    fund_wallet(env.wallet, sender, patient, 4_000)
    with pytest.raises(grpc.RpcError):  # over the per-transfer limit: refused
        env.wallet.CreateTransfer(wpb.CreateTransferRequest(
            request_id=rid("xfer"), sender_id_number=sender, sender_province="11", recipient_id_number=patient,
            relation=cpb.RELATION_PARENT, amount_fen=400_000, verification=FACE))
    # 1101s, 2207s and a 2208 through the gateway.
    env.post(envelope("1101", data_1101(child, NAMES[1]), fixmedins=BEIJING_HOSPITAL)).ok()
    env.post(envelope("1101", data_1101(patient.lower(), NAMES[2]))).ok()
    env.post(envelope("1101", data_1101(NOBODY, NAMES[4])))  # nobody: refused
    for what, who, fee in (("mulaid", child, "30.00"), ("wallet", patient, "30.00"), ("nobody", NOBODY, "5.00")):
        message = envelope("2207", data_2207(who, fee))
        msgids[what] = message["msgid"]
        answer = env.post(message)
        if what == "mulaid":
            setl = answer.ok()["setlinfo"]
            env.post(envelope("2208", {"setl_id": setl["setl_id"], "mdtrt_id": message["input"]["data"]["mdtrt_id"],
                                       "psn_no": child})).ok()
    env.post(envelope("2207", data_2207(patient, "1.00"), msgid=msgids["wallet"]))  # a resend, other content
    # Bad input at the gateway: not JSON, a wrong check character, an amount that is no amount, a name.
    post_raw(env.url, f'{{"infno": "2207", "input": {{"data": {{"psn_no": "{child}"'.encode())
    env.post(envelope("2207", data_2207(child[:-1] + ("1" if child[-1] != "1" else "2"), "5.00")))
    env.post(envelope("2207", data_2207(child, f"{child}元", psn_name=NAMES[1])))
    env.post(envelope("2207", data_2207(child, -5, psn_name=NAMES[1])))
    env.post(envelope("1101", {"mdtrt_cert_type": "02", "mdtrt_cert_no": f"{NAMES[1]}{child}"}))
    # Family acts and 代缴 in 甘肃.
    creator = enroll(gansu, name=NAMES[5], **GS)
    kid = enroll(gansu, itype=RESIDENT, birth="20150101", name=NAMES[6], **GS)
    credit(gansu, creator, 100_000)
    fid = create(gansu, creator).family_id
    invite(gansu, fid, creator, kid)
    huabo(gansu, fid, creator, 3_000)
    with pytest.raises(grpc.RpcError):
        huabo(gansu, fid, creator, 10_000_000)  # more than the balance: refused
    try:
        pay(gansu, creator, kid)
    except grpc.RpcError:
        pass  # refused or not, it was logged
    with pytest.raises(grpc.RpcError):
        pay(gansu, creator, new_id("620102", "20150101"))  # nobody: refused
    # A death, with the estate to an heir named in the request.
    dying = enroll(hebei, name=NAMES[7], birth="19400101")
    credit(hebei, dying, 12_345)
    env.wallet.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=dying, province="13",
                                                use_place_admdvs="130100", real_name=FACE))
    env.wallet.CreateTransfer(wpb.CreateTransferRequest(  # still waiting for its recipient at the death
        request_id=rid("xfer"), sender_id_number=sender, sender_province="11", recipient_id_number=dying,
        relation=cpb.RELATION_PARENT, amount_fen=1_000, verification=FACE))
    hebei.RecordDeath(rpb.RecordDeathRequest(request_id=rid("death"), id_number=dying, heir_id_number=helper,
                                             heir_name=NAMES[4], date_of_death="20261121"))
    with pytest.raises(grpc.RpcError):  # the dead do not bind
        bind(hebei, helper, dying, cpb.RELATION_PARENT)
    # The console: a lookup, a refused form, an id number typed with a name.
    desk = Desk(env)
    adult = enroll(hebei, name=NAMES[8], birth="19820304")
    ref = re.search(r'href="/bindings\?p=([^"&]+)"',
                    desk.page("/lookup", {"csrf": desk.csrf, "id_number": helper})[1]).group(1)
    desk.page(f"/bindings/bind?p={ref}", {"csrf": desk.csrf, "request_id": "console-" + secrets.token_hex(16),
                                          "member": adult, "relation": "SPOUSE", "method": "guardian",
                                          "guardian": helper})
    desk.page("/lookup", {"csrf": desk.csrf, "id_number": f"{NAMES[8]} {adult}"})
    desk.page("/lookup", {"csrf": desk.csrf, "id_number": new_id_x()})
    # A registry stopped: 北京's person cannot be served.
    env.topo.services["registry-11"].stop()
    env.post(envelope("2207", data_2207(sender, "5.00"), fixmedins=BEIJING_HOSPITAL))
    env.post(envelope("1101", data_1101(sender, NAMES[3]), fixmedins=BEIJING_HOSPITAL))
    desk.page("/lookup", {"csrf": desk.csrf, "id_number": sender})
    # The store down: every service's calls fail.
    env.topo.redis.kill()
    addresses = [env.topo.address(n) for n in ("registry-13", "wallet", "router")]
    wait_health(addresses, health_pb2.HealthCheckResponse.NOT_SERVING, 10)
    message = envelope("2207", data_2207(child, "7.00"))
    msgids["outage"] = message["msgid"]
    env.post(message)
    with pytest.raises(grpc.RpcError):
        credit(hebei, helper, 100)
    with pytest.raises(grpc.RpcError):
        env.wallet.GetWallet(wpb.GetWalletRequest(owner_id_number=patient))
    desk.page("/lookup", {"csrf": desk.csrf, "id_number": helper})
    env.topo.redis.start()
    wait_health(addresses, health_pb2.HealthCheckResponse.SERVING, 10)
    env.post(message).ok()  # the same msgid, once the store is back
    time.sleep(1.5)  # the pipes deliver the last lines
    return msgids


def parsed(env: Env) -> dict[str, list[tuple[str, Any]]]:
    """Each process's lines, each with what json.loads made of it (None: not JSON)."""
    out: dict[str, list[tuple[str, Any]]] = {}
    for name, svc in env.topo.services.items():
        rows = []
        for line in list(svc.log_lines):
            try:
                rows.append((line, json.loads(line)))
            except json.JSONDecodeError:
                rows.append((line, None))
        out[name] = rows
    return out


def not_fen(value: Any, key: str = "") -> list[str]:
    """Money written other than as whole fen: a float anywhere but a time, a money field not an integer."""
    if isinstance(value, float) and not _NOT_MONEY.match(key):
        return [f"{key}={value!r}"]
    if _MONEY.match(key) and not isinstance(value, int | dict | list):
        return [f"{key}={value!r}"]
    if isinstance(value, dict):
        return [x for k, v in value.items() for x in not_fen(v, str(k))]
    if isinstance(value, list):
        return [x for v in value for x in not_fen(v, key)]
    return []


def test_every_line_of_every_service_keeps_the_log_rules(env: Env):
    msgids = run_everything(env)
    logs = parsed(env)
    if os.environ.get("MEDAID_DUMP_LOGS"):
        Path(os.environ["MEDAID_DUMP_LOGS"]).write_text(
            "\n".join(f"{n} {line}" for n, rows in logs.items() for line, _ in rows))
    broken: list[str] = []
    for name, rows in logs.items():
        for line, obj in rows:
            if not isinstance(obj, dict):
                broken.append(f"{name}: not one JSON object: {line[:300]}")
                continue
            text = _HEX_IDS.sub("<hex>", line)
            if _ID18.search(text):
                broken.append(f"{name}: an id number in clear: {line[:400]}")
            if any(n in line or n[1:] in line for n in NAMES):
                broken.append(f"{name}: a name in clear: {line[:400]}")
            if obj.get("request_id") and not obj.get("trace_id"):
                broken.append(f"{name}: a request's line without its trace id: {line[:300]}")
            if bad := not_fen(obj):
                broken.append(f"{name}: money not in whole fen {bad}: {line[:300]}")
            reason = str(obj.get("reason") or obj.get("outcome") or "")
            if obj.get("level") in ("error", "critical") and reason and "UNAVAILABLE" not in reason \
                    and reason not in ("INTERNAL", "INTERNAL_ERROR"):
                broken.append(f"{name}: a refusal logged as an error: {line[:300]}")
    # A request's lines carry its id (docs/operations.md "Tracing"); a batch item's line its item's.
    with_id = {o["trace_id"] for rows in logs.values() for _, o in rows
               if isinstance(o, dict) and o.get("trace_id") and o.get("request_id")}
    for name, rows in logs.items():
        for line, obj in rows:
            if not isinstance(obj, dict) or not obj.get("trace_id") or obj.get("request_id"):
                continue
            msg = obj.get("msg")
            if msg in _NOTES:
                if obj["trace_id"] not in with_id:
                    broken.append(f"{name}: a note outside the trace of the request that caused it: {line[:300]}")
            elif msg not in _BACKGROUND and obj.get("logger") != "medaid.rpc" \
                    and not (msg == "answered" and not obj.get("msgid")):
                broken.append(f"{name}: a request's line without its request id: {line[:300]}")
    for name, rows in logs.items():
        for line, obj in rows:
            if isinstance(obj, dict) and obj.get("msg") == "transfer debited" \
                    and obj.get("request_id") != obj.get("transfer"):
                broken.append(f"{name}: a debit's line not under its transfer id: {line[:300]}")
    # One 2207's lines share its trace id at the gateway, the router and the registry.
    for what in ("mulaid", "wallet"):
        answered, *_ = [o for _, o in logs["gateway"] if isinstance(o, dict) and o.get("msg") == "answered"
                       and o.get("msgid") == msgids[what]]
        trace = answered.get("trace_id")
        for name in ("router", "registry-13") + (("wallet",) if what == "wallet" else ()):
            if not any(isinstance(o, dict) and o.get("trace_id") == trace for _, o in logs[name]):
                broken.append(f"{name}: no line of the {what} 2207's trace {trace}")
    # The store outage is an error wherever it was met: each process's watchdog, each call it failed.
    for name in ("registry-13", "wallet", "router", "gateway"):
        if not any(isinstance(o, dict) and o.get("level") == "error" and o.get("msg") in _STORE_DOWN
                   for _, o in logs[name]):
            broken.append(f"{name}: the store outage left no error line")
    for name, rows in logs.items():
        for line, obj in rows:
            if isinstance(obj, dict) and obj.get("msg") in _STORE_DOWN and obj.get("level") != "error":
                broken.append(f"{name}: a store outage below ERROR: {line[:300]}")
    assert not broken, "\n".join(broken)


def _lines(topo: Topology, name: str) -> list[dict[str, Any]]:
    out = []
    for line in list(topo.services[name].log_lines):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def test_a_province_or_store_that_does_not_answer_is_seen_at_warning():
    """At WARNING (what `make bench` runs), an answer that says a service or a store did not answer
    (REGISTRY_UNAVAILABLE, STORE_UNAVAILABLE passed on) is a warning line at every process that
    answers it; a refusal stays below (INFO), so a refused message writes nothing there."""
    topo = Topology.start(provinces=("13", "11"), clock=DEMO_CLOCK, log_level="WARNING")
    e = Env(topo)
    beijing_store = RedisServer(appendfsync="always")
    try:
        patient = enroll(e.hebei, name=NAMES[0])
        credit(e.hebei, patient, 10_000)
        sender = enroll(e.beijing, name=NAMES[3], region="110000", division="110105")
        credit(e.beijing, sender, 10_000)
        for owner, province, place in ((patient, "13", "130100"), (sender, "11", "110000")):
            e.wallet.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=owner,
                                                      province=province, use_place_admdvs=place, real_name=FACE))
        e.post(envelope("2207", data_2207(patient, "3.00"))).ok()
        e.post(envelope("2207", data_2207(NOBODY, "3.00")))  # refused: nobody
        e.post(envelope("2207", data_2207(patient, "9999999.00")))  # refused or not: a rule's answer
        time.sleep(1)
        for name in ("router", "gateway", "registry-13"):
            answered = [o for o in _lines(topo, name) if o.get("reason") or o.get("trace_id")]
            assert not answered, f"{name} wrote lines for what was answered: {answered}"
        # 北京's registry stopped: the router answers REGISTRY_UNAVAILABLE, the gateway passes it on,
        # the wallet answers a 北京 sender's transfer so too.
        topo.services["registry-11"].stop()
        e.post(envelope("2207", data_2207(sender, "5.00"), fixmedins=BEIJING_HOSPITAL))
        with pytest.raises(grpc.RpcError) as raised:
            e.wallet.CreateTransfer(wpb.CreateTransferRequest(
                request_id=rid("xfer"), sender_id_number=sender, sender_province="11", recipient_id_number=patient,
                relation=cpb.RELATION_PARENT, amount_fen=1_000, verification=FACE))
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        # 北京's registry back, on a store of its own that then stops: the registry answers
        # STORE_UNAVAILABLE, the router and the gateway pass it on.
        beijing_store.start()
        module, args = topo.args_for("registry-11")
        args[args.index("--redis-url") + 1] = beijing_store.plain_url
        topo.services["registry-11"] = start_service("registry-11", module, args)
        beijing_store.kill()
        e.post(envelope("2207", data_2207(sender, "6.00"), fixmedins=BEIJING_HOSPITAL))
        time.sleep(1.5)
        missing = [f"{name}: no warning line with {reason}" for name, reasons in (
            ("router", ("REGISTRY_UNAVAILABLE", "STORE_UNAVAILABLE")),
            ("gateway", ("REGISTRY_UNAVAILABLE", "STORE_UNAVAILABLE")),
            ("wallet", ("REGISTRY_UNAVAILABLE",)))
            for reason in reasons if not any(
                o.get("level") == "warning" and reason in (o.get("reason"), o.get("outcome"))
                for o in _lines(topo, name))]
        assert not missing, "\n".join(missing) + "\n" + "\n".join(
            f"{n} {o}" for n in ("router", "gateway", "wallet") for o in _lines(topo, n))
    finally:
        e.close()
        topo.stop()
        beijing_store.cleanup()


def test_a_downstream_that_answers_with_an_unexpected_error_is_seen_at_warning():
    """A registry that answers the router with an error it does not describe (no ErrorInfo: here the
    router is pointed at a process that serves no RegistryService, UNIMPLEMENTED) did answer, but not
    as it should: not a refusal for the caller to mend. At WARNING, the router's and the gateway's
    lines of DOWNSTREAM_ERROR are there, as a province that does not answer is."""
    topo = Topology.start(provinces=("13", "11"), clock=DEMO_CLOCK, log_level="WARNING")
    e = Env(topo)
    try:
        patient = enroll(e.hebei, name=NAMES[0])
        credit(e.hebei, patient, 10_000)
        module, args = topo.args_for("router")
        args[args.index("--registries") + 1] = f"13={topo.address('wallet')}"  # no RegistryService there
        topo.services["router"].stop()
        topo.services["router"] = start_service("router", module, args)
        answer = e.post(envelope("2207", data_2207(patient, "3.00")))
        assert answer.infcode == -1 and answer.output["medaid_ext"]["reason"] == "DOWNSTREAM_ERROR", answer.text
        time.sleep(1)
        missing = [f"{name}: no warning line with DOWNSTREAM_ERROR" for name in ("router", "gateway")
                   if not any(o.get("level") == "warning" and o.get("reason") == "DOWNSTREAM_ERROR"
                              for o in _lines(topo, name))]
        assert not missing, "\n".join(missing) + "\n" + "\n".join(
            f"{n} {o}" for n in ("router", "gateway") for o in _lines(topo, n))
    finally:
        e.close()
        topo.stop()


def _wallet_patient(e: Env) -> str:
    """A 河北 patient with ¥10 in the account and ¥40 in a 医保钱包 a 北京 sender funded."""
    patient = enroll(e.hebei, name=NAMES[2])
    credit(e.hebei, patient, 1_000)
    sender = enroll(e.beijing, name=NAMES[3], region="110000", division="110105")
    credit(e.beijing, sender, 50_000)
    fund_wallet(e.wallet, sender, patient, 4_000)
    return patient


def _naming(topo: Topology, request: str) -> dict[str, list[str]]:
    """Each process's lines that name `request` (a grep of it), by message."""
    return {name: [o.get("msg", "") for o in _lines(topo, name) if request in json.dumps(o, ensure_ascii=False)]
            for name in topo.services}


def test_a_msgid_finds_every_line_of_its_2207_in_every_service_recovery_included():
    """docs/operations.md "Tracing": from a hospital's msgid to every line of every service. The wallet's
    spend for a 2207 runs under the registry's own id for it (a digest); it names the msgid too
    (`origin_id`, carried in the call's metadata), whether the 2207's own call or the registry's
    recovery, after a crash, made it."""
    topo = Topology.start(provinces=("13", "11"), clock=DEMO_CLOCK)
    e = Env(topo)
    try:
        patient = _wallet_patient(e)
        message = envelope("2207", data_2207(patient, "30.00"))
        e.post(message).ok()
        time.sleep(1)
        found = _naming(topo, message["msgid"])
        missing = [name for name in ("gateway", "router", "registry-13", "wallet") if not found[name]]
        assert not missing and "wallet spent" in found["wallet"], f"no line of {missing} names it: {found}"
        crashed = envelope("2207", data_2207(patient, "20.00"))
        # registry-13 dies before the wallet's share; the patient's lock it leaves expires after 3 s
        # (--lock-ttl-ms; 10 s by default), when the recovery loop (a 200 ms grace) can take the 2207.
        locks = {"MEDAID_LOCK_TTL_MS": "3000"}
        topo.restart("registry-13", env={"MEDAID_FAULT": "settle.after_own_debit", **locks})
        assert e.post(crashed).infcode == -1
        topo.services["registry-13"].proc.wait(timeout=15)
        topo.restart("registry-13", env={"MEDAID_RECOVERY_GRACE_MS": "200", **locks})
        deadline = time.monotonic() + 40
        while _naming(topo, "setl-")["wallet"].count("wallet spent") < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(1)
        assert _naming(topo, "setl-")["wallet"].count("wallet spent") == 2, "recovery did not finish the 2207"
        found = _naming(topo, crashed["msgid"])
        assert "wallet spent" in found["wallet"] and found["registry-13"], found
    finally:
        e.close()
        topo.stop()


def test_a_store_that_refuses_writes_leaves_no_client_text_in_the_log():
    """A Redis that refuses writes (here NOREPLICAS: `min-replicas-to-write 1` and no replica; MISCONF
    and OOM read alike) fails a pipeline, and redis-py's error names the command it failed with its
    first arguments: what a message sent. The client is answered STORE_UNAVAILABLE with nothing of it;
    the `store unavailable` line names the command, not its arguments: a 9101 whose file is named
    after a person leaves the name in no line, nor in the answer."""
    topo = Topology.start(provinces=("13", "11"), clock=DEMO_CLOCK)
    e = Env(topo)
    try:
        content = f"H13010100001X\tMZ1\t{NOBODY}\t1.00\t0\t0\t0\t{NAMES[3]}\n".encode()
        message = envelope("9101", input_={"fsUploadIn": {"in": base64.b64encode(content).decode(),
                                                          "filename": f"{NAMES[4]}明细.txt"}})
        e.r.config_set("min-replicas-to-write", 1)
        try:
            answer = e.post(message)
        finally:
            e.r.config_set("min-replicas-to-write", 0)
        answer.refused("STORE_UNAVAILABLE")
        assert not any(n in answer.text for n in NAMES), answer.text
        time.sleep(1)
        lines = list(topo.services["gateway"].log_lines)
        assert any('"store unavailable"' in line and "NOREPLICAS" in line for line in lines), "\n".join(lines)
        named = [line for line in lines if any(n in line or n[1:] in line for n in NAMES)]
        assert not named, "\n".join(named)
        e.post(message).ok()  # the same msgid once the store writes again
    finally:
        e.close()
        topo.stop()


def test_a_name_a_caller_put_where_an_id_belongs_is_not_logged_in_clear(env: Env):
    """A HIS that fills a msgid or an infno with the patient's name (a misplaced field), or a caller that
    names a person in a gRPC request id: the answer refuses the id, and the lines that name the request
    (its `request_id`, the gateway's `msgid` and `infno`) keep the name masked like any other."""
    name, other = "欧阳建国", "慕容春花"
    env.post(envelope("2207", data_2207(new_id(), "1.00"), msgid=f"H13010100001{name}"))
    env.post(envelope(other, {"psn_no": new_id()}))
    with pytest.raises(grpc.RpcError):
        env.hebei.Settle(rpb.SettleRequest(request_id=f"r-{name}", patient_id_number=new_id(), amount_fen=5))
    time.sleep(0.3)  # the last lines reach the collected output
    leaked = [f"{svc}: {line[:300]}" for svc in ("gateway", "registry-13")
              for line in env.topo.services[svc].log_lines if name in line or other in line]
    assert not leaked, "\n".join(leaked)


def test_a_failure_inside_a_service_names_no_person_to_its_callers_nor_in_its_lines(env: Env):
    """An exception a service does not describe (here a person's record it cannot read) is answered
    UNKNOWN with the ErrorInfo reason INTERNAL_ERROR and words of its own: never the exception's text,
    which may hold what the service read (a name, an id number), on to the router and to the hospital.
    Its error line, traceback included, carries the call's trace id and masks the person as any line does."""
    import redis

    name = "欧阳建国"
    pid = enroll(env.hebei, name=name)
    store = redis.Redis.from_url(env.topo.redis.plain_url)
    store.hset(f"reg:13:{{p:{pid}}}:person", "tier", f"{name} {pid}")  # a record the code cannot read
    trace = secrets.token_hex(16)
    try:
        with pytest.raises(grpc.RpcError) as raised:
            env.hebei.GetPerson(rpb.GetPersonRequest(id_number=pid),
                                metadata=(("traceparent", f"00-{trace}-{secrets.token_hex(8)}-01"),))
        answer = env.post(envelope("1101", data_1101(pid, name)))
    finally:
        store.delete(f"reg:13:{{p:{pid}}}:person")
    assert raised.value.code() == grpc.StatusCode.UNKNOWN
    info = errors.error_info(raised.value)
    assert info is not None and info.reason == "INTERNAL_ERROR"
    assert name not in (raised.value.details() or "") and pid not in (raised.value.details() or "")
    assert answer.infcode == -1 and answer.output["medaid_ext"]["reason"] == "INTERNAL_ERROR", answer.text
    assert name not in answer.text and pid not in answer.text, answer.text
    time.sleep(0.5)  # the last lines reach the collected output
    leaked = [f"{svc}: {line[:400]}" for svc in ("gateway", "router", "registry-13")
              for line in env.topo.services[svc].log_lines if name in line or name[1:] in line or pid in line]
    assert not leaked, "\n".join(leaked)
    failed = [json.loads(line) for line in env.topo.services["registry-13"].log_lines
              if trace in line and '"level": "error"' in line]
    assert failed and all("exc" in o for o in failed), failed


def test_a_store_outage_is_one_error_line_at_a_registry_not_a_traceback_each_recovery_pass():
    """A Redis outage is an ERROR line `store not answering: health NOT_SERVING` once (docs/operations.md):
    the registry's recovery loop, which runs each second and meets the same outage every pass, says
    one WARNING line for the whole outage, no traceback, and still counts each such pass `pass_failed`
    for MedaidRecoveryPassFailing. A pass that fails for another reason is still an ERROR line with its
    traceback."""
    from test_metrics import scrape, value

    store = RedisServer(appendfsync="always").start()
    registry = start_service("registry-13", "medaid.registry", [
        "--port", "0", "--redis-url", store.plain_url, "--recovery-interval-ms", "100",
        "--store-check-ms", "100", "--redis-timeout-ms", "300"])
    try:
        wait_health([registry.address], health_pb2.HealthCheckResponse.SERVING, 10)
        store.kill()
        wait_health([registry.address], health_pb2.HealthCheckResponse.NOT_SERVING, 10)
        deadline = time.monotonic() + 15
        while value(scrape(registry.metrics_port), "medaid_recovery_actions_total", action="pass_failed") < 10:
            assert time.monotonic() < deadline, "failed recovery passes not counted"
            time.sleep(0.2)
    finally:
        assert registry.stop() == 0
        store.cleanup()
    lines = [json.loads(line) for line in registry.log_lines if line.startswith("{\"ts\"")]
    errors_ = [o for o in lines if o["level"] == "error"]
    assert [o["msg"] for o in errors_] == ["store not answering: health NOT_SERVING"], errors_
    skipped = [o for o in lines if o["msg"] == "recovery passes skipped: the store cannot serve"]
    assert [o["level"] for o in skipped] == ["warning"], skipped


@pytest.mark.parametrize("fault", ["killed", "full"])
def test_a_store_that_cannot_serve_is_one_warning_line_at_the_wallet_not_a_silent_pass_each_second(fault: str):
    """The wallet's maintenance loop, like a registry's recovery loop, meets a store that cannot serve
    every pass: one WARNING line for the whole streak, naming what Redis said, and each pass counted
    `pass_failed`. A Redis at `maxmemory` under `noeviction` (OOM; MISCONF, NOREPLICAS and READONLY
    read alike) still answers PING, so health stays SERVING and no `store not answering` line says why
    the passes fail: this line does. Killed, the store check's ERROR line is the only error."""
    from test_metrics import scrape, value

    store = RedisServer(appendfsync="no").start()
    admin = store.connection()
    wallet = start_service("wallet", "medaid.wallet", [
        "--port", "0", "--redis-url", store.plain_url, "--maintenance-interval-ms", "100",
        "--store-check-ms", "100", "--redis-timeout-ms", "300"])
    try:
        wait_health([wallet.address], health_pb2.HealthCheckResponse.SERVING, 10)
        if fault == "killed":
            store.kill()
            wait_health([wallet.address], health_pb2.HealthCheckResponse.NOT_SERVING, 10)
        else:
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", 1)
        deadline = time.monotonic() + 15
        while value(scrape(wallet.metrics_port), "medaid_recovery_actions_total", action="pass_failed") < 10:
            assert time.monotonic() < deadline, "failed maintenance passes not counted"
            time.sleep(0.2)
        if fault == "full":
            assert health(wallet.address) == health_pb2.HealthCheckResponse.SERVING  # PING answers
            admin.config_set("maxmemory", 0)
            # The store writes again: the next pass goes through and the log says so, once.
            while not any('"maintenance passes resumed"' in line for line in list(wallet.log_lines)):
                assert time.monotonic() < deadline + 10, "no line says the passes resumed"
                time.sleep(0.1)
    finally:
        assert wallet.stop() == 0
        admin.close()
        store.cleanup()
    lines = [json.loads(line) for line in wallet.log_lines if line.startswith("{\"ts\"")]
    errors_ = [o for o in lines if o["level"] == "error"]
    assert [o["msg"] for o in errors_] == (["store not answering: health NOT_SERVING"] if fault == "killed"
                                           else []), errors_
    skipped = [o for o in lines if o["msg"] == "maintenance passes skipped: the store cannot serve"]
    assert [o["level"] for o in skipped] == ["warning"], lines[-5:]
    resumed = [o for o in lines if o["msg"] == "maintenance passes resumed"]
    assert [o["level"] for o in resumed] == (["info"] if fault == "full" else []), resumed
    if fault == "full":
        assert "OOM" in skipped[0]["error"] or "maxmemory" in skipped[0]["error"], skipped
