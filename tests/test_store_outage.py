"""Redis unreachable: every service and every RPC answers UNAVAILABLE with ErrorInfo reason
STORE_UNAVAILABLE (domain "medaid") and a message that names no host or port; grpc.health.v1 says
NOT_SERVING while a service's own Redis is down and SERVING once it is back (the name `liveness`
stays SERVING); the gateway's /healthz is 503 during the outage and 200 after, its /livez 200
throughout; the gateway answers a retryable infcode -1 in Chinese. A message refused during the
outage succeeds when resent with the same msgid afterwards, and moves money once.

Two layers: in-process servers against a Redis port nobody listens on (the translation, the
watchdog, the client's retries), then the real processes (`Topology`) with their own redis-server,
killed (-9) and restarted on the same port. A second router and gateway run on another Redis that
stays up, so that a registry's or a router's refusal can be seen passed through unchanged.
"""

from __future__ import annotations

import collections
import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import redis
import redis.exceptions as rx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from medaid.common import errors, rpc
from medaid.common.redis_client import client
from medaid.common.redis_server import RedisServer
from medaid.common.server import LIVENESS, StoreCheck, start_server
from medaid.common.transport import store_error
from medaid.common.v1 import common_pb2 as cpb
from medaid.gateway import reasons
from medaid.registry import policy as policy_mod
from medaid.registry.service import Registry
from medaid.registry.servicer import register
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.registry.v1 import registry_pb2_grpc as rpb_grpc
from medaid.router.v1 import router_pb2 as pb
from medaid.router.v1 import router_pb2_grpc as pb_grpc
from medaid.topology import DEMO_CLOCK, GATEWAY_PATH, ServiceProcess, Topology, start_service
from medaid.wallet.v1 import wallet_pb2 as wpb
from medaid.wallet.v1 import wallet_pb2_grpc as wpb_grpc
from support import (
    FACE,
    RESIDENT,
    bind,
    credit,
    dead_port,
    enroll,
    new_id,
    revive,
    rid,
    settle_request,
    test_clock,
)
from test_metrics import scrape

T = 10.0
HOSPITAL = pb.Institution(fixmedins_code="H13010100001", mdtrtarea_admvs="130100")
REGISTRY = rpb.DESCRIPTOR.services_by_name["RegistryService"].full_name
_msg = iter(range(1, 10_000))


def msgid() -> str:
    return f"{HOSPITAL.fixmedins_code}20261122103000{next(_msg):04d}"


def assert_store_unavailable(exc: grpc.RpcError, *hidden: str) -> None:
    """UNAVAILABLE, ErrorInfo STORE_UNAVAILABLE in domain medaid, and none of `hidden` anywhere in
    what the caller receives (the message and every detail)."""
    assert exc.code() == grpc.StatusCode.UNAVAILABLE, (exc.code(), exc.details())
    info = errors.error_info(exc)
    assert info is not None, f"no ErrorInfo: {exc.details()}"
    assert (info.reason, info.domain) == ("STORE_UNAVAILABLE", "medaid"), (info.reason, info.domain)
    status = rpc_status.from_call(exc)
    assert status is not None
    wire = exc.details() + status.SerializeToString().decode("latin-1")
    for word in ("127.0.0.1", "localhost", *hidden):
        assert word not in wire, f"{word!r} in {exc.details()!r}"


def failed(call: Callable[..., Any], request: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=T)
    return err.value


def health(address: str, service: str = "") -> int:
    with grpc.insecure_channel(address) as ch:
        return int(health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service),
                                                         timeout=2).status)


def wait_health(addresses: list[str], status: int, within_s: float) -> float:
    """Seconds until every address's overall health is `status` (fails after `within_s`)."""
    start = time.monotonic()
    while True:
        now = {a: health(a) for a in addresses}
        if all(s == status for s in now.values()):
            return time.monotonic() - start
        assert time.monotonic() - start < within_s, f"health after {within_s}s: {now}"
        time.sleep(0.1)


# --- the translation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("exc", [
    rx.ConnectionError("Error 111 connecting to 127.0.0.1:6390. Connection refused."),
    rx.TimeoutError("Timeout reading from 10.0.0.7:6379"),
    rx.BusyLoadingError("Redis is loading the dataset in memory"),
    rx.MaxConnectionsError("Too many connections"),
    rx.ClusterDownError("The cluster is down"),
    rx.MasterDownError("Link with MASTER is down and replica-serve-stale-data is set to 'no'."),
    rx.TryAgainError("Multiple keys request during rehashing of slot"),
    rx.ReadOnlyError("You can't write against a read only replica."),
    rx.ClusterError("TTL exhausted."),
    rx.SlotNotCoveredError("Slot 42 is not covered by the cluster."),
    rx.ResponseError("MISCONF Errors writing to the AOF file: No space left on device"),
    rx.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
    rx.ResponseError("Command # 2 (EVALSHA ab12) of pipeline caused error: ('OOM command not allowed when used "
                     "memory > \'maxmemory\'.',)"),
    rx.RedisClusterException("Redis Cluster cannot be connected. Please provide at least one reachable node"),
    rx.ResponseError("BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSCRIPT."),
    rx.ResponseError("Command # 1 (EVALSHA ab12) of pipeline caused error: ('BUSY Valkey is busy running a "
                     "script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.',)"),
    ConnectionRefusedError(111, "Connection refused"),
    OSError(113, "No route to host"),
], ids=lambda e: type(e).__name__)
def test_store_failures_become_store_unavailable_without_addresses(exc: BaseException):
    found = errors.from_store(exc)
    assert found is not None
    assert (found.code, found.reason) == (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE")
    assert found.retryable and not found.metadata
    assert found.message == errors.STORE_UNAVAILABLE_MESSAGE and not any(c.isdigit() for c in found.message)
    assert store_error(exc) == found


def test_a_wrapped_store_failure_counts_and_other_errors_do_not():
    try:
        try:
            raise rx.ConnectionError("Error 111 connecting to 127.0.0.1:7001")
        except rx.ConnectionError as cause:
            raise RuntimeError("the cluster client gave up") from cause
    except RuntimeError as wrapped:
        assert errors.from_store(wrapped) is not None
    for other in (rx.ResponseError("ERR Error running script (call to f_1234): bad argument"),
                  rx.NoScriptError("No matching script"), rx.ResponseError("BUSYKEY Target key name already exists."),
                  rx.ResponseError("BUSYGROUP Consumer Group name already exists"),
                  rx.DataError("Invalid input of type: 'NoneType'"),
                  rx.WatchError("transaction aborted"), rx.RedisClusterException("shard_hint is deprecated"),
                  ValueError("bad"), KeyError("x"), errors.refused("INSUFFICIENT_BALANCE", "no")):
        assert errors.from_store(other) is None, other


# --- in-process servers against a Redis nobody listens on ------------------------------------------------------


class CountCalls(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        self.calls[details.method] += 1
        return await continuation(details)


@dataclass
class Dead:
    """A registry whose Redis port has nothing listening (yet)."""
    redis_port: int
    port: int
    counter: CountCalls
    running: Any
    store: Any

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
def dead(loop_thread: Any) -> Iterator[Dead]:
    redis_port = dead_port()

    async def boot() -> Dead:
        store = client(f"redis://127.0.0.1:{redis_port}/0")
        registry = Registry(store, policy_mod.load(policy_mod.find_policy_file("13")), clock=test_clock())
        counter = CountCalls()
        running = await start_server(lambda s: register(s, registry), interceptors=[counter], store=store,
                                     store_check=StoreCheck(interval_s=0.1, timeout_s=0.3))
        return Dead(redis_port, running.port, counter, running, store)

    d = loop_thread.run(boot())
    try:
        yield d
    finally:
        async def stop() -> None:
            await d.running.stop(0)
            await d.store.aclose()

        loop_thread.run(stop())


def test_every_registry_rpc_kind_answers_store_unavailable(dead: Dead):
    hidden = str(dead.redis_port)
    with grpc.insecure_channel(dead.address) as ch:
        stub = rpb_grpc.RegistryServiceStub(ch)
        pid = new_id()
        assert_store_unavailable(failed(stub.GetPerson, rpb.GetPersonRequest(id_number=pid)), hidden)
        assert_store_unavailable(failed(stub.EnrollPerson, rpb.EnrollPersonRequest(
            request_id=rid("enroll"), id_number=pid, name="张三", insurance_type=RESIDENT,
            pooling_region="130100")), hidden)
        assert_store_unavailable(failed(stub.Settle, settle_request(pid, 1_000)), hidden)
        # A batch answers each item on its own: every item is a retryable STORE_UNAVAILABLE.
        batch = stub.SettleBatch(rpb.SettleBatchRequest(
            requests=[settle_request(pid, 1_000), settle_request(new_id(), 2_000)]), timeout=T)
        assert [(o.error.code, o.error.reason) for o in batch.outcomes] == \
            [(grpc.StatusCode.UNAVAILABLE.value[0], "STORE_UNAVAILABLE")] * 2
        assert all(hidden not in o.error.message and "127.0.0.1" not in o.error.message for o in batch.outcomes)
        # A request refused on its own merits is still refused as before (nothing reaches Redis).
        with pytest.raises(grpc.RpcError) as err:
            stub.GetPerson(rpb.GetPersonRequest(id_number="123"), timeout=T)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_health_follows_the_store_and_liveness_does_not(dead: Dead):
    assert health(dead.address) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert health(dead.address, REGISTRY) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert health(dead.address, LIVENESS) == health_pb2.HealthCheckResponse.SERVING
    server = RedisServer(appendfsync="no", port=revive(dead.redis_port)).start()
    try:
        assert wait_health([dead.address], health_pb2.HealthCheckResponse.SERVING, 5) < 5
        assert health(dead.address, REGISTRY) == health_pb2.HealthCheckResponse.SERVING
        with grpc.insecure_channel(dead.address) as ch:  # and the calls work again
            pid = enroll(rpb_grpc.RegistryServiceStub(ch))
            assert rpb_grpc.RegistryServiceStub(ch).GetPerson(rpb.GetPersonRequest(id_number=pid),
                                                              timeout=T).person.id_number == pid
        server.kill()
        assert wait_health([dead.address], health_pb2.HealthCheckResponse.NOT_SERVING, 5) < 5
        assert health(dead.address, LIVENESS) == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.cleanup()


def test_service_clients_retry_store_unavailable_per_the_service_config(dead: Dead, loop_thread: Any):
    policy = json.loads(rpc.service_config([REGISTRY]))["methodConfig"][0]["retryPolicy"]
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"]

    async def call() -> grpc.aio.AioRpcError:
        async with rpc.channel(dead.address, [REGISTRY]) as ch:
            try:
                await rpb_grpc.RegistryServiceStub(ch).GetPerson(rpb.GetPersonRequest(id_number=new_id()),
                                                                  timeout=T)
            except grpc.aio.AioRpcError as exc:
                return exc
        raise AssertionError("GetPerson succeeded without a Redis")

    exc = loop_thread.run(call())
    assert_store_unavailable(exc, str(dead.redis_port))
    # Every attempt the policy allows reached the server, and the last one's status came back.
    assert dead.counter.calls[f"/{REGISTRY}/GetPerson"] == policy["maxAttempts"]


def test_an_outage_does_not_multiply_the_calls_a_service_receives(dead: Dead, loop_thread: Any):
    """Every call failing: once the retries spent the channel's tokens (gRPC retryThrottling), each call is
    tried once, so the calls a failing service receives grow with the calls made, not four times them."""
    config = json.loads(rpc.service_config([REGISTRY]))
    throttling = config["retryThrottling"]
    calls = 60

    async def many() -> list[grpc.aio.AioRpcError]:
        failed: list[grpc.aio.AioRpcError] = []
        async with rpc.channel(dead.address, [REGISTRY]) as ch:
            stub = rpb_grpc.RegistryServiceStub(ch)
            for _ in range(calls):
                try:
                    await stub.GetPerson(rpb.GetPersonRequest(id_number=new_id()), timeout=T)
                except grpc.aio.AioRpcError as exc:
                    failed.append(exc)
        return failed

    failed = loop_thread.run(many())
    assert len(failed) == calls
    for exc in failed:  # each still answered with the server's own reason
        assert_store_unavailable(exc, str(dead.redis_port))
    # Retries stop once the tokens fall to half of maxTokens, one token per failed attempt.
    received = dead.counter.calls[f"/{REGISTRY}/GetPerson"]
    assert received <= calls + throttling["maxTokens"] / 2 + 1, received


# --- the real processes --------------------------------------------------------------------------------------


@dataclass
class Outage:
    topo: Topology
    spare: RedisServer  # stays up: the second router's and gateway's store
    router2: ServiceProcess  # on `spare`, in front of the topology's registry
    gateway2: ServiceProcess  # on `spare`, in front of the topology's router
    channels: list[grpc.Channel]
    registry: Any
    wallet: Any
    router: Any
    router_spare: Any
    patient: str
    helper: str

    @property
    def redis_port(self) -> str:
        return str(self.topo.redis.port)

    def grpc_addresses(self) -> list[str]:
        return [self.topo.address(n) for n in ("registry-13", "wallet", "router")]

    def redis_down(self) -> None:
        self.topo.redis.kill()
        wait_health(self.grpc_addresses(), health_pb2.HealthCheckResponse.NOT_SERVING, 5)

    def redis_up(self) -> None:
        if self.topo.redis.proc is None or self.topo.redis.proc.poll() is not None:
            self.topo.redis.start()
        wait_health(self.grpc_addresses(), health_pb2.HealthCheckResponse.SERVING, 5)


@pytest.fixture(scope="module")
def outage() -> Iterator[Outage]:
    topo = Topology.start(provinces=("13",), clock=DEMO_CLOCK)
    spare = RedisServer(appendfsync="no").start()
    extra: list[ServiceProcess] = []
    channels: list[grpc.Channel] = []
    try:
        extra.append(start_service("router-spare", "medaid.router", [
            "--port", "0", "--redis-url", spare.url, "--clock", DEMO_CLOCK,
            "--registries", f"13={topo.address('registry-13')}"]))
        extra.append(start_service("gateway-spare", "medaid.gateway", [
            "--port", "0", "--redis-url", spare.url, "--clock", DEMO_CLOCK, "--router", topo.address("router")]))

        def ch(address: str) -> grpc.Channel:
            channels.append(grpc.insecure_channel(address))
            return channels[-1]

        registry = rpb_grpc.RegistryServiceStub(ch(topo.address("registry-13")))
        helper = enroll(registry, name="张伟")
        patient = enroll(registry, itype=RESIDENT, birth="20160101", name="张小雨")
        credit(registry, helper, 50_000)
        bind(registry, helper, patient)
        yield Outage(topo, spare, extra[0], extra[1], channels, registry,
                     wpb_grpc.WalletServiceStub(ch(topo.address("wallet"))),
                     pb_grpc.RouterServiceStub(ch(topo.address("router"))),
                     pb_grpc.RouterServiceStub(ch(extra[0].address)), patient, helper)
    finally:
        for c in channels:
            c.close()
        for svc in extra:
            svc.stop()
        if topo.redis.proc is None or topo.redis.proc.poll() is not None:
            topo.redis.start()  # so that the services stop on a store they can reach
        spare.cleanup()
        codes = topo.stop()
        assert set(codes.values()) == {0}, codes


def settle_2207(patient: str, amount: int, mid: str | None = None, insuplc: str = "") -> pb.SettleRequest:
    return pb.SettleRequest(msgid=mid or msgid(), institution=HOSPITAL, input=pb.SettleInput(
        psn_no=patient, insuplc_admdvs=insuplc, psn_part_amt_fen=amount, acct_used_flag="1",
        category=cpb.CATEGORY_OUTPATIENT, mdtrt_id=f"MZ{next(_msg):08d}"))


def test_registry_wallet_and_router_answer_store_unavailable_while_redis_is_down(outage: Outage):
    outage.redis_down()
    p, hidden = outage.patient, outage.redis_port
    # registry: a read and a write
    assert_store_unavailable(failed(outage.registry.GetPerson, rpb.GetPersonRequest(id_number=p)), hidden)
    assert_store_unavailable(failed(outage.registry.CreditAccount, rpb.CreditAccountRequest(
        request_id=rid("credit"), id_number=outage.helper, amount_fen=100,
        kind=rpb.CREDIT_KIND_MONTHLY_CONTRIBUTION, period="202611")), hidden)
    # wallet: a read and a write
    assert_store_unavailable(failed(outage.wallet.GetWallet, wpb.GetWalletRequest(owner_id_number=p)), hidden)
    assert_store_unavailable(failed(outage.wallet.OpenWallet, wpb.OpenWalletRequest(
        request_id=rid("open"), owner_id_number=outage.helper, province="13", use_place_admdvs="130100",
        real_name=FACE)), hidden)
    # router: its own store (the directory, msgid claims) and a registry behind it
    assert_store_unavailable(failed(outage.router.QueryPerson, pb.QueryPersonRequest(
        msgid=msgid(), institution=HOSPITAL, mdtrt_cert_type="02", mdtrt_cert_no=p)), hidden)
    assert_store_unavailable(failed(outage.router.PreSettle, pb.PreSettleRequest(
        msgid=msgid(), institution=HOSPITAL, input=settle_2207(p, 1_000, insuplc="130100").input)), hidden)
    assert_store_unavailable(failed(outage.router.Settle, settle_2207(p, 1_000)), hidden)
    assert_store_unavailable(failed(outage.router.ReverseSettlement, pb.ReverseSettlementRequest(
        msgid=msgid(), institution=HOSPITAL, setl_id=msgid(), psn_no=p, insuplc_admdvs="130100")), hidden)
    for address in outage.grpc_addresses():
        assert health(address, LIVENESS) == health_pb2.HealthCheckResponse.SERVING
    # The router on a store that is up stays SERVING: health follows each service's own Redis.
    assert health(outage.router2.address) == health_pb2.HealthCheckResponse.SERVING


def test_router_passes_a_registry_store_unavailable_through_unchanged(outage: Outage):
    """The router's store is up (router-spare): its SettleBatch to the registry fails in the registry."""
    outage.redis_up()
    before = outage.registry.GetPerson(rpb.GetPersonRequest(id_number=outage.helper), timeout=T).person
    outage.redis_down()
    direct = outage.registry.SettleBatch(rpb.SettleBatchRequest(
        requests=[settle_request(outage.patient, 2_000)]), timeout=T).outcomes[0].error
    req = settle_2207(outage.patient, 2_000, insuplc="130100")
    routed = failed(outage.router_spare.Settle, req)
    assert_store_unavailable(routed, outage.redis_port)
    # The router answers the registry's per-item outcome unchanged: same code, reason and message.
    info = errors.error_info(routed)
    assert info is not None
    assert (routed.code().value[0], info.reason, routed.details()) == (direct.code, direct.reason, direct.message)
    # Resent with the same msgid once Redis is back: settled, and the helper paid once.
    outage.redis_up()
    s = outage.router_spare.Settle(req, timeout=T).setlinfo
    assert (s.setl_id, s.acct_mulaid_pay_fen, s.mulaid_helper_psn_no) == (req.msgid, 2_000, outage.helper)
    assert outage.router_spare.Settle(req, timeout=T).setlinfo == s
    after = outage.registry.GetPerson(rpb.GetPersonRequest(id_number=outage.helper), timeout=T).person
    assert after.balance_fen == before.balance_fen - 2_000


def _envelope(patient: str, medfee: str, mid: str) -> bytes:
    return json.dumps({
        "infno": "2207", "msgid": mid, "mdtrtarea_admvs": HOSPITAL.mdtrtarea_admvs, "insuplc_admdvs": "",
        "fixmedins_code": HOSPITAL.fixmedins_code, "opter": "0001", "inf_time": "2026-11-22 10:00:00",
        "input": {"data": {"psn_no": patient, "mdtrt_cert_type": "02", "mdtrt_cert_no": patient, "med_type": "11",
                           "medfee_sumamt": medfee, "mdtrt_id": f"MZ{next(_msg):08d}", "acct_used_flag": "1"}},
    }, ensure_ascii=False).encode("utf-8")


def _post(address: str, body: bytes) -> dict[str, Any]:
    req = urllib.request.Request(f"http://{address}{GATEWAY_PATH}", data=body, method="POST",
                                 headers={"Content-Type": "application/json;charset=utf-8"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200
        return dict(json.loads(resp.read().decode("utf-8")))


def _healthz(address: str, path: str = "/healthz") -> tuple[int, dict[str, str]]:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def assert_retryable_store_answer(answer: dict[str, Any], *hidden: str) -> None:
    assert answer["infcode"] == -1, answer
    assert answer["err_msg"] == f"STORE_UNAVAILABLE: {reasons.REASON_ZH['STORE_UNAVAILABLE']}", answer["err_msg"]
    assert "重试" in answer["err_msg"]
    ext = answer["output"]["medaid_ext"]
    assert (ext["reason"], ext["retryable"]) == ("STORE_UNAVAILABLE", True), ext
    text = json.dumps(answer, ensure_ascii=False)
    for word in ("127.0.0.1", "localhost", *hidden):
        assert word not in text, (word, text)


def test_gateway_answers_a_retryable_2207_while_redis_is_down(outage: Outage):
    gateway = outage.topo.address("gateway")
    mid_own, mid_router = msgid(), msgid()
    outage.redis_down()
    # The gateway's own store (msgid answers) is down.
    assert_retryable_store_answer(_post(gateway, _envelope(outage.patient, "10.00", mid_own)), outage.redis_port)
    # The gateway's store is up, the router's is not: the router's refusal, passed on.
    answer = _post(outage.gateway2.address, _envelope(outage.patient, "20.00", mid_router))
    assert_retryable_store_answer(answer, outage.redis_port)
    assert answer["output"]["medaid_ext"]["detail"] == errors.STORE_UNAVAILABLE_MESSAGE
    status, report = _healthz(gateway)
    assert (status, report["redis"], report["router"]) == (503, "DOWN", "DOWN"), report
    status, report = _healthz(outage.gateway2.address)
    assert (status, report["redis"], report["router"]) == (503, "SERVING", "DOWN"), report
    # Liveness does not follow Redis: Kubernetes takes the gateways out of rotation, not restarts them.
    assert _healthz(gateway, "/livez") == (200, {"status": "SERVING"})
    # Back up: both messages, resent unchanged, settle.
    outage.redis_up()
    assert _healthz(gateway)[0] == 200 and _healthz(outage.gateway2.address)[0] == 200
    assert _healthz(gateway, "/livez")[0] == 200
    for address, mid, fee in ((gateway, mid_own, "10.00"), (outage.gateway2.address, mid_router, "20.00")):
        ok = _post(address, _envelope(outage.patient, fee, mid))
        assert ok["infcode"] == 0, ok["err_msg"]
        assert ok["output"]["setlinfo"]["setl_id"] == mid



def test_the_gateways_own_store_failing_a_message_is_logged_as_every_services_is(outage: Outage):
    """docs/operations.md "Logs": a Redis outage is an ERROR line in every process that meets it, `store
    unavailable` for each call it fails, with the exception the store raised (scrubbed where it is made,
    by the one rule every service's line follows: transport.store_error); the message answered names
    neither the store's address nor its port."""
    gateway = outage.topo.services["gateway"]
    outage.redis_down()
    seen = len(gateway.log_lines)
    try:
        answer = _post(gateway.address, _envelope(outage.patient, "1.00", msgid()))
        time.sleep(0.3)
        lines = [json.loads(line) for line in list(gateway.log_lines)[seen:] if line.startswith("{")]
    finally:
        outage.redis_up()
    assert_retryable_store_answer(answer, outage.redis_port)
    failed_lines = [o for o in lines if o["level"] == "error"]
    assert [o["msg"] for o in failed_lines] == ["store unavailable"], failed_lines
    assert failed_lines[0]["error"].split(":")[0] in ("ConnectionError", "TimeoutError"), failed_lines


def test_health_turns_not_serving_within_seconds_and_serving_after_a_restart(outage: Outage):
    outage.redis_up()
    p = outage.patient
    assert outage.registry.GetPerson(rpb.GetPersonRequest(id_number=p), timeout=T).person.id_number == p
    outage.topo.redis.kill()
    assert wait_health(outage.grpc_addresses(), health_pb2.HealthCheckResponse.NOT_SERVING, 5) < 5
    port = outage.topo.redis.port
    outage.topo.redis.start()  # same port, same data directory (AOF)
    assert outage.topo.redis.port == port
    assert wait_health(outage.grpc_addresses(), health_pb2.HealthCheckResponse.SERVING, 5) < 5
    # Everything acknowledged before the kill is there, and every service answers again.
    assert outage.registry.GetPerson(rpb.GetPersonRequest(id_number=p), timeout=T).person.id_number == p
    s = outage.router.Settle(settle_2207(p, 500), timeout=T).setlinfo
    assert s.acct_mulaid_pay_fen == 500
    with pytest.raises(grpc.RpcError) as err:
        outage.wallet.GetWallet(wpb.GetWalletRequest(owner_id_number=p), timeout=T)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND



def test_health_is_exported_as_a_gauge_that_follows_the_store(outage: Outage):
    """medaid_health_serving: 1 while a service's health is SERVING, 0 while NOT_SERVING (its Redis does
    not answer), so an alert can ask for an outage that lasts rather than count Redis errors, which one
    reconnect raises. A process without gRPC health (the gateway) exports no such series: never a 0."""
    outage.redis_up()
    grpc_services = ("registry-13", "wallet", "router")
    ports = {n: outage.topo.services[n].metrics_port for n in grpc_services}

    def serving() -> dict[str, float | None]:
        return {n: scrape(p).get(("medaid_health_serving", frozenset())) for n, p in ports.items()}

    assert serving() == dict.fromkeys(grpc_services, 1.0)
    try:
        outage.redis_down()
        assert serving() == dict.fromkeys(grpc_services, 0.0)
    finally:
        outage.redis_up()
    assert serving() == dict.fromkeys(grpc_services, 1.0)
    gateway = scrape(outage.topo.services["gateway"].metrics_port)
    assert not any(name == "medaid_health_serving" for name, _ in gateway)


@dataclass
class Served:
    """A 河北 registry served alone on a Redis of its own: the Redis, the registry's port, a stub of
    it and an admin connection to the Redis (short socket timeout: it may meet a Redis that answers
    nobody)."""
    server: RedisServer
    port: int
    stub: rpb_grpc.RegistryServiceStub
    admin: redis.Redis


@contextlib.contextmanager
def served_alone(loop_thread: Any) -> Iterator[Served]:
    server = RedisServer(appendfsync="no").start()

    async def boot() -> Any:
        store = client(server.url)
        registry = Registry(store, policy_mod.load(policy_mod.find_policy_file("13")), clock=test_clock())
        running = await start_server(lambda s: register(s, registry), store=store)
        return running, store

    running, store = loop_thread.run(boot())
    admin = server.connection(socket_timeout=0.2)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            yield Served(server, running.port, rpb_grpc.RegistryServiceStub(ch), admin)
    finally:
        async def stop() -> None:
            await running.stop(0)
            await store.aclose()

        loop_thread.run(stop())
        admin.close()
        server.cleanup()


def test_a_full_redis_refusing_writes_is_store_unavailable_and_the_resend_moves_money_once(loop_thread: Any):
    """A Redis at `maxmemory` with `noeviction` refuses every write (OOM) while it answers reads: the
    registry answers the write UNAVAILABLE / STORE_UNAVAILABLE (retry later), not INTERNAL, and the
    same request resent once memory is freed moves the money once."""
    with served_alone(loop_thread) as served:
        stub, admin = served.stub, served.admin
        pid = enroll(stub)
        request = rpb.CreditAccountRequest(request_id=rid("credit"), id_number=pid, amount_fen=5_000,
                                           kind=rpb.CREDIT_KIND_MONTHLY_CONTRIBUTION, period="202611")
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)  # every write is refused from here on
        assert_store_unavailable(failed(stub.CreditAccount, request), str(served.server.port))
        # Reads still answer, and the refused write wrote nothing.
        assert stub.GetPerson(rpb.GetPersonRequest(id_number=pid), timeout=T).person.balance_fen == 0
        admin.config_set("maxmemory", 0)
        assert stub.CreditAccount(request, timeout=T).balance_fen == 5_000
        assert stub.CreditAccount(request, timeout=T).balance_fen == 5_000  # a replay, not a second credit
        assert stub.GetPerson(rpb.GetPersonRequest(id_number=pid), timeout=T).person.balance_fen == 5_000
