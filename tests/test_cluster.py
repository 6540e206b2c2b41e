"""The whole product on a real Redis Cluster: configuration alone, no code path of its own.

One module-scoped `Topology(cluster=True)`: a local Redis Cluster of 3 masters with a replica each (the same
redis-server binary as every other test, free loopback ports, AOF `appendfsync always`), and
registries 13 河北 / 11 北京 / 62 甘肃, the national wallet, the router and the JSON gateway as
separate OS processes, each given only the cluster URL (`redis+cluster://h:p,h:p,h:p`).

On a cluster a Lua script or a MULTI/EXEC whose keys hash to different slots is refused
(CROSSSLOT, or the client's own "all keys must map to the same key slot"), so every flow below
also proves its scripts and transactions touch one slot. The last-but-one test checks that every
Lua script of the product actually ran on the cluster here; the last kills -9 every master,
brings the cluster back from its AOF and checks not a fen moved and the services carry on.

The module's tests build on each other's traffic (the conservation checks read everything the
module did), so they run in file order.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any

import grpc
import pytest
import redis
import redis.asyncio
from medaid import demo
from medaid.bench import money
from medaid.common.redis_client import BoundedRedisCluster, client, cluster_seeds, scan_keys, sync_client
from medaid.common.redis_server import RedisCluster
from medaid.common.scripts import lua_source
from medaid.common.v1 import common_pb2 as cpb
from medaid.directory import _SET as DIRECTORY_SCRIPT
from medaid.registry.context import SCRIPTS as REGISTRY_SCRIPTS
from medaid.registry.keys import Keys
from medaid.registry.v1 import family_pb2 as fpb
from medaid.registry.v1 import premium_pb2 as ppb
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.registry.v1 import registry_pb2_grpc as rpb_grpc
from medaid.router.v1 import router_pb2 as pb
from medaid.router.v1 import router_pb2_grpc as pb_grpc
from medaid.topology import DEMO_CLOCK, Topology
from medaid.wallet.keys import WalletKeys
from medaid.wallet.service import SCRIPTS as WALLET_SCRIPTS
from medaid.wallet.v1 import wallet_pb2 as wpb
from medaid.wallet.v1 import wallet_pb2_grpc as wpb_grpc
from support import EMPLOYEE, FACE, RESIDENT, Timeline, dead_port, new_id, reason, rid

T = 10.0  # per-call deadline
GRACE_MS = 1_000  # the wallet's --recovery-grace-ms
RECOVERY_S = 30.0
FP = grpc.StatusCode.FAILED_PRECONDITION
PLACE = {"13": "130100", "11": "110000", "62": "620100", "35": "350200"}
DIVISION = {"13": "130102", "11": "110105", "62": "620102", "35": "350203"}
HEBEI = pb.Institution(fixmedins_code="H13010100001", mdtrtarea_admvs="130100")
W = wpb.TransferState


class Env:
    def __init__(self, topo: Topology, timeline: Timeline) -> None:
        self.topo = topo
        self.timeline = timeline
        assert isinstance(topo.redis, RedisCluster)
        self.cluster: RedisCluster = topo.redis
        self.r = sync_client(self.cluster.url)
        self._channels: dict[tuple[str, int], grpc.Channel] = {}
        self.credited = 0  # fen this module credited through its own helpers
        self.ran: set[str] = set()  # tests of this module that passed

    # processes; one channel per process incarnation, so a restart never waits on a reconnect backoff

    def _channel(self, name: str) -> grpc.Channel:
        key = (name, self.topo.services[name].proc.pid)
        if key not in self._channels:
            self._channels[key] = grpc.insecure_channel(self.topo.address(name))
        return self._channels[key]

    def reg(self, province: str) -> Any:
        return rpb_grpc.RegistryServiceStub(self._channel(f"registry-{province}"))

    @property
    def wallet(self) -> Any:
        return wpb_grpc.WalletServiceStub(self._channel("wallet"))

    @property
    def router(self) -> Any:
        return pb_grpc.RouterServiceStub(self._channel("router"))

    def restart(self, name: str, fault: str = "") -> None:
        self.topo.clock = self.timeline.spec()
        self.topo.restart(name, env={"MEDAID_FAULT": fault})

    def router_reaches_hebei(self, pid: str) -> None:
        """Until the router's channel to registry-13 (backing off after that registry's restarts) works:
        a 1101 query for `pid`, which reads only."""
        deadline = time.monotonic() + RECOVERY_S
        for n in range(10_000):
            try:
                self.router.QueryPerson(pb.QueryPersonRequest(
                    msgid=f"H1301010000120261122105959{n:04d}", institution=HEBEI, mdtrt_cert_type="02",
                    mdtrt_cert_no=pid), timeout=T)
                return
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline, exc.details()
                time.sleep(0.1)

    def crashes(self, call: Callable[[], Any], name: str) -> grpc.RpcError:
        """`call` fails because `name` SIGKILLed itself at its armed fault point."""
        with pytest.raises(grpc.RpcError) as ei:
            call()
        proc = self.topo.services[name].proc
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        assert proc.returncode == -9, (f"{name} should have been killed -9, got {proc.returncode}; the call "
                                       f"failed with {ei.value.code().name} {ei.value.details()}")
        return ei.value

    def ensure_up(self) -> None:
        for name, svc in list(self.topo.services.items()):
            if svc.proc.poll() is not None:
                self.restart(name)

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()
        self.r.close()

    # people and money

    def person(self, prov: str, *, itype: int = EMPLOYEE, bal: int = 0, birth: str = "19800101") -> str:
        pid = new_id(DIVISION[prov], birth)
        self.reg(prov).EnrollPerson(rpb.EnrollPersonRequest(
            request_id=rid("enroll"), id_number=pid, name="张三", insurance_type=itype,
            pooling_region=PLACE[prov]), timeout=T)
        if bal:
            self.credit(prov, pid, bal)
        return pid

    def credit(self, prov: str, pid: str, amount: int) -> None:
        self.reg(prov).CreditAccount(rpb.CreditAccountRequest(
            request_id=rid("credit"), id_number=pid, amount_fen=amount,
            kind=rpb.CREDIT_KIND_MONTHLY_CONTRIBUTION, period="202611"), timeout=T)
        self.credited += amount

    def bal(self, prov: str, pid: str) -> int:
        return int(self.reg(prov).GetPerson(rpb.GetPersonRequest(id_number=pid), timeout=T).person.balance_fen)

    def bind(self, prov: str, helper: str, member: str, relation: int = cpb.RELATION_CHILD,
             face: bool = True) -> rpb.BindMutualAidResponse:
        req = rpb.BindMutualAidRequest(request_id=rid("bind"), helper_id_number=helper, member_id_number=member,
                                       relation=relation)
        if face:
            req.member_verification.CopyFrom(FACE)
        return self.reg(prov).BindMutualAid(req, timeout=T)

    def settle_req(self, patient: str, amount: int, *, prov: str = "13", request_id: str = "") -> rpb.SettleRequest:
        return rpb.SettleRequest(request_id=request_id or rid("2207"), patient_id_number=patient, amount_fen=amount,
                                 use_account=True, category=cpb.CATEGORY_OUTPATIENT,
                                 institution_code="H11010500001" if prov == "11" else "H13010100001",
                                 institution_admdvs=PLACE[prov])

    def settle(self, patient: str, amount: int, *, prov: str = "13", request_id: str = "") -> rpb.SettlementResult:
        return self.reg(prov).Settle(self.settle_req(patient, amount, prov=prov, request_id=request_id),
                                     timeout=T).result

    def registry_state(self) -> dict[bytes, Any]:
        """Every registry and directory key on every master with its contents (equal: nothing written).
        (The wallet's maintenance loop writes its lease every pass, so wallet keys are left out, and each
        registry's recovery loop takes its fenced lock every second: `reg:<p>:{recovery}:…` too.)"""
        return {k: self.contents(k) for k in sorted([*scan_keys(self.r, "reg:*"), *scan_keys(self.r, "dir:*")])
                if b"{recovery}" not in k}

    def contents(self, key: bytes) -> Any:
        """A key's value (not DUMP bytes: an AOF reload may re-encode a hash in another order)."""
        kind = self.r.type(key)
        if kind == b"hash":
            return self.r.hgetall(key)
        if kind == b"list":
            return self.r.lrange(key, 0, -1)
        if kind == b"set":
            return self.r.smembers(key)
        if kind == b"zset":
            return self.r.zrange(key, 0, -1, withscores=True)
        return self.r.get(key)

    def refused(self, call: Callable[[], Any], code: grpc.StatusCode, why: str) -> grpc.RpcError:
        before = self.registry_state()
        with pytest.raises(grpc.RpcError) as ei:
            call()
        assert (ei.value.code(), reason(ei.value)) == (code, why), ei.value.details()
        assert self.registry_state() == before, f"refused {why} wrote to Redis"
        return ei.value

    # wallet

    def family(self, funds: int = 100_000) -> tuple[str, str]:
        """A 河北 employee (with `funds`) and his 北京 resident mother with a 医保钱包 at 110000."""
        son = self.person("13", bal=funds)
        mother = self.person("11", itype=RESIDENT, birth="19550101")
        self.wallet.OpenWallet(wpb.OpenWalletRequest(
            request_id=rid("open"), owner_id_number=mother, province="11", use_place_admdvs="110000",
            real_name=FACE), timeout=T)
        self.wallet.OpenWallet(wpb.OpenWalletRequest(  # the sender holds a wallet too (SPEC §5)
            request_id=rid("open"), owner_id_number=son, province="13", use_place_admdvs="130100",
            real_name=FACE), timeout=T)
        return son, mother

    def send(self, son: str, mother: str, amount: int, tid: str = "") -> wpb.Transfer:
        return self.wallet.CreateTransfer(wpb.CreateTransferRequest(
            request_id=tid or rid("xfer"), sender_id_number=son, sender_province="13", recipient_id_number=mother,
            relation=cpb.RELATION_PARENT, amount_fen=amount, verification=FACE), timeout=T).transfer

    def accept(self, mother: str, tid: str, request_id: str = "") -> wpb.AcceptTransferResponse:
        return self.wallet.AcceptTransfer(wpb.AcceptTransferRequest(
            request_id=request_id or rid("acc"), transfer_id=tid, recipient_id_number=mother), timeout=T)

    def transfer(self, tid: str) -> wpb.Transfer:
        return self.wallet.GetTransfer(wpb.GetTransferRequest(transfer_id=tid), timeout=T).transfer

    def wait_state(self, tid: str, states: tuple[int, ...]) -> wpb.Transfer:
        deadline = time.monotonic() + RECOVERY_S
        last: Any = None
        while time.monotonic() < deadline:
            try:
                t = self.transfer(tid)
                last = W.Name(t.state)
                if t.state in states:
                    return t
            except grpc.RpcError as exc:
                last = f"{exc.code().name} {reason(exc)}"
            time.sleep(0.1)
        raise AssertionError(f"transfer {tid} never reached {[W.Name(s) for s in states]}; last {last}\n"
                             + "\n".join(self.topo.services["wallet"].log_lines[-15:]))

    def ledger_refs(self, pid: str, ref: str) -> list[tuple[str, int]]:
        acct = self.reg("13").GetAccount(rpb.GetAccountRequest(id_number=pid, ledger_limit=500), timeout=T)
        return [(e.kind, e.amount_fen) for e in sorted(acct.entries, key=lambda e: e.seq) if e.ref == ref]

    def lots_for(self, mother: str, tid: str) -> int:
        w = self.wallet.GetWallet(wpb.GetWalletRequest(owner_id_number=mother), timeout=T)
        return sum(1 for lot in w.lots if lot.transfer_id == tid)

    def conserved(self) -> money.MoneyReport:
        """The money verdict over every master; transfers may be in flight, never half-done."""
        rep = money.check(self.r)
        assert rep.conserved, rep.as_dict()
        return rep


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    timeline = Timeline()
    topo = Topology.start(cluster=True, clock=DEMO_CLOCK, recovery_grace_ms=GRACE_MS)
    e = Env(topo, timeline)
    try:
        yield e
    finally:
        e.close()
        topo.stop()


@pytest.fixture(autouse=True)
def _track(request: pytest.FixtureRequest, env: Env) -> Iterator[None]:
    """Restart whatever an earlier failed case left dead; note which tests passed."""
    env.ensure_up()
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed == failed:
        env.ran.add(request.node.originalname)


# --- the cluster itself ----------------------------------------------------------------------------


def test_services_run_on_a_three_master_cluster_by_url_alone(env: Env):
    """Three masters, each with a replica (Topology's default): the URL seeds every node, and every
    node, replicas too, keeps AOF with appendfsync always."""
    url = env.cluster.url
    assert env.cluster.masters == 3 and env.cluster.replicas >= 1
    nodes = 3 * (1 + env.cluster.replicas)
    assert url.startswith("redis+cluster://") and len(url.removeprefix("redis+cluster://").split(",")) == nodes
    for name in env.topo.services:
        _, args = env.topo.args_for(name)
        assert args[args.index("--redis-url") + 1] == url, name
    masters = env.r.get_primaries()
    assert sorted(n.port for n in masters) == sorted(n.port for n in env.cluster.masters_now())
    assert len(masters) == 3 and len(env.r.get_replicas()) == 3 * env.cluster.replicas
    for port in env.cluster.ports:
        node = redis.Redis(host="127.0.0.1", port=port)
        try:
            info = node.execute_command("CLUSTER", "INFO").decode()
            assert "cluster_state:ok" in info and f"cluster_known_nodes:{nodes}" in info
            assert node.config_get("appendfsync") == {"appendfsync": "always"}
            assert node.config_get("cluster-require-full-coverage") == {"cluster-require-full-coverage": "no"}
        finally:
            node.close()


def test_cluster_url_form():
    assert cluster_seeds("redis+cluster://10.0.0.1:7001,10.0.0.2:7002") == (
        "redis://10.0.0.1:7001", [("10.0.0.1", 7001), ("10.0.0.2", 7002)])
    assert cluster_seeds("rediss+cluster://u:p%40ss@a:1,b:2/0?ssl_cert_reqs=none") == (
        "rediss://u:p%40ss@a:1?ssl_cert_reqs=none", [("a", 1), ("b", 2)])
    with pytest.raises(ValueError):
        cluster_seeds("redis+cluster://a:1,b:2/3")  # a cluster has database 0 only
    with pytest.raises(ValueError):
        cluster_seeds("redis+cluster://a,b:2")


def test_cluster_client_waits_for_a_connection_instead_of_failing(env: Env):
    """Like the single-Redis blocking pool: 400 concurrent calls on a client of 4 connections per node."""

    async def burst() -> list[Any]:
        r = client(env.cluster.url, max_connections=4)
        assert isinstance(r, BoundedRedisCluster)
        try:
            await asyncio.gather(*(r.incr(f"test:{{burst:{i % 50}}}") for i in range(400)))
            async with r.pipeline(transaction=False) as pipe:
                for i in range(50):
                    pipe.get(f"test:{{burst:{i}}}")
                    pipe.delete(f"test:{{burst:{i}}}")
                return await pipe.execute()
        finally:
            await r.aclose()

    assert asyncio.run(burst())[::2] == [b"8"] * 50
    single = client("redis://127.0.0.1:1/0")
    assert isinstance(single, redis.asyncio.Redis)
    asyncio.run(single.aclose())


# --- (a) registry rules over gRPC ----------------------------------------------------------------


def test_bind_refusals_write_nothing(env: Env):
    helper = env.person("13")
    member = env.person("13", itype=RESIDENT, birth="19550101")
    assert env.bind("13", helper, member, cpb.RELATION_PARENT).binding.active
    env.refused(lambda: env.bind("13", helper, member, cpb.RELATION_PARENT),
                grpc.StatusCode.ALREADY_EXISTS, "ALREADY_BOUND")
    spouse_a, spouse_b = env.person("13"), env.person("13", birth="19820101")
    env.bind("13", spouse_a, spouse_b, cpb.RELATION_SPOUSE)
    env.refused(lambda: env.bind("13", spouse_b, spouse_a, cpb.RELATION_SPOUSE), FP, "REVERSE_BINDING")
    in_law = env.person("13", itype=RESIDENT, birth="19500101")
    env.refused(lambda: env.bind("13", helper, in_law, cpb.RELATION_PARENT_IN_LAW), FP, "RELATION_NOT_ALLOWED")
    # 甘肃 runs the pooled family account: it binds no helpers (one model per province).
    g1 = env.person("62")
    child = env.person("62", itype=RESIDENT, birth="20150101")
    env.refused(lambda: env.bind("62", g1, child, face=False), FP, "MODEL_POOLED")
    # Unbinding ends it; then the reverse direction binds.
    ended = env.reg("13").UnbindMutualAid(rpb.UnbindMutualAidRequest(
        request_id=rid("unbind"), helper_id_number=spouse_a, member_id_number=spouse_b), timeout=T).binding
    assert not ended.active and ended.end_reason == "UNBOUND"
    assert env.bind("13", spouse_b, spouse_a, cpb.RELATION_SPOUSE).binding.active
    # Each bind's entry (written in its write's round trip, across slots) went with its answer.
    assert not placed(env, "13", b"B|")


def test_settle_refusals_of_the_patient_write_nothing_not_even_the_fence(env: Env):
    """Every bill on a cluster takes the staged path, under the patient's fenced lock. A new bill for
    a patient not enrolled, SUSPENDED, or insured elsewhere than the message says is refused before
    that lock: the patient's fence counter stays as it was, with every other key."""
    env.refused(lambda: env.settle(new_id(DIVISION["13"]), 1_000), grpc.StatusCode.NOT_FOUND, "PERSON_NOT_FOUND")
    patient = env.person("13", bal=5_000)
    env.reg("13").UpdatePersonStatus(rpb.UpdatePersonStatusRequest(
        request_id=rid("status"), id_number=patient, status=cpb.PERSON_STATUS_SUSPENDED), timeout=T)
    env.refused(lambda: env.settle(patient, 1_000), FP, "MEMBER_NOT_INSURED")
    env.reg("13").UpdatePersonStatus(rpb.UpdatePersonStatusRequest(
        request_id=rid("status"), id_number=patient, status=cpb.PERSON_STATUS_ACTIVE), timeout=T)
    elsewhere = env.settle_req(patient, 1_000)
    elsewhere.insured_region = "130200"
    env.refused(lambda: env.reg("13").Settle(elsewhere, timeout=T), FP, "INSURED_PLACE_MISMATCH")
    assert env.settle(patient, 1_000).acct_pay_fen == 1_000


def test_a_bind_killed_before_its_write_has_its_id_freed_by_recovery(env: Env):
    """kill -9 of registry-13 once a bind claimed its id and checked its people, before its write: once
    it is back, its recovery loop frees the id (idem_free.lua, on the claim's own slot) with the entry.
    The same id with a corrected member then binds; the member first sent has no binding."""
    helper = env.person("13")
    wrong, right = (env.person("13", itype=RESIDENT, birth=b) for b in ("20150101", "20160101"))
    req_id = rid("bind")

    def bind_to(member: str) -> rpb.BindMutualAidRequest:
        return rpb.BindMutualAidRequest(request_id=req_id, helper_id_number=helper, member_id_number=member,
                                        relation=cpb.RELATION_CHILD, member_verification=FACE)

    env.restart("registry-13", "bind.before_write")
    env.crashes(lambda: env.reg("13").BindMutualAid(bind_to(wrong), timeout=T), "registry-13")
    claim = f"{Keys('13').ns}:{{rid:{req_id}}}"
    assert env.r.hget(claim, "state") == b"PENDING" and placed(env, "13", b"B|")
    env.restart("registry-13")
    deadline = time.monotonic() + RECOVERY_S
    while (env.r.exists(claim) or placed(env, "13", b"B|")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not env.r.exists(claim) and not placed(env, "13", b"B|")
    got = env.reg("13").BindMutualAid(bind_to(right), timeout=T).binding
    assert (got.member_id_number, got.active) == (right, True), got
    listed = env.reg("13").ListBindings(rpb.ListBindingsRequest(id_number=wrong, include_ended=True), timeout=T)
    assert not listed.as_member


def test_waterfall_with_a_helper_reversal_and_idempotent_replay(env: Env):
    member, rich, poor = env.person("13", bal=2_000), env.person("13", bal=50_000), env.person("13", bal=1_000)
    env.bind("13", rich, member, cpb.RELATION_SPOUSE)
    env.bind("13", poor, member, cpb.RELATION_SIBLING)
    sid = rid("2207")
    res = env.settle(member, 5_000, request_id=sid)
    assert (res.acct_pay_fen, res.mulaid_pay_fen, res.cash_pay_fen, res.helper_id_number) == (2_000, 3_000, 0, rich)
    assert [env.bal("13", p) for p in (member, rich, poor)] == [0, 47_000, 1_000]
    # A replay answers the first result and moves nothing; the same id for another bill is refused.
    assert env.settle(member, 5_000, request_id=sid) == res
    env.refused(lambda: env.settle(member, 6_000, request_id=sid), grpc.StatusCode.ALREADY_EXISTS,
                "IDEMPOTENCY_KEY_REUSED")
    assert [env.bal("13", p) for p in (member, rich, poor)] == [0, 47_000, 1_000]
    # All or nothing, never pooled: 60,000 left and the richest helper holds 47,000 -> cash.
    short = env.settle(member, 60_000)
    assert (short.mulaid_pay_fen, short.cash_pay_fen, short.helper_reason) == (0, 60_000, "HELPER_INSUFFICIENT")
    # Reversal returns every fen where it came from, once.
    rev_id = rid("2208")
    rev = env.reg("13").ReverseSettlement(rpb.ReverseSettlementRequest(
        request_id=rev_id, settlement_id=sid), timeout=T)
    assert (rev.acct_refund_fen, rev.mulaid_refund_fen, rev.helper_id_number) == (2_000, 3_000, rich)
    assert env.reg("13").ReverseSettlement(rpb.ReverseSettlementRequest(
        request_id=rev_id, settlement_id=sid), timeout=T) == rev
    assert [env.bal("13", p) for p in (member, rich, poor)] == [2_000, 50_000, 1_000]
    records = env.reg("13").ListConsumptionRecords(rpb.ListConsumptionRecordsRequest(id_number=rich),
                                                    timeout=T).records
    assert [(r.settlement_id, r.mulaid_pay_fen, r.state) for r in records] == [(sid, 3_000, "REVERSED")]


def test_undo_of_a_reversal_and_a_voided_request_on_the_cluster(env: Env):
    """冲正 (2601) in the registry, each step on its own slot: a request id that never arrived is voided;
    a reversal is undone (the same accounts pay again); undone again after the helper spent: refused, and
    what the attempt took goes back."""
    member, helper = env.person("13", bal=1_000), env.person("13", bal=10_000)
    env.bind("13", helper, member, cpb.RELATION_SPOUSE)
    never = rid("2207")
    cancel = rpb.CancelRequestRequest(request_id=rid("2601"), original_request_id=never)
    void = env.reg("13").CancelRequest(cancel, timeout=T)
    assert void.outcome == "VOIDED"
    assert env.reg("13").CancelRequest(cancel, timeout=T) == void  # the cancel's own claim, on its own slot
    other = rid("2207")
    env.refused(lambda: env.reg("13").CancelRequest(rpb.CancelRequestRequest(
        request_id=cancel.request_id, original_request_id=other), timeout=T), grpc.StatusCode.ALREADY_EXISTS,
        "IDEMPOTENCY_KEY_REUSED")
    env.refused(lambda: env.settle(member, 100, request_id=never), grpc.StatusCode.FAILED_PRECONDITION,
                "ORIGINAL_CANCELLED")
    env.settle(member, 100, request_id=other)  # never voided by the refused reuse
    env.credit("13", member, 100)
    sid = rid("2207")
    env.settle(member, 4_000, request_id=sid)  # own 1,000, helper 3,000
    rev = rid("2208")
    env.reg("13").ReverseSettlement(rpb.ReverseSettlementRequest(request_id=rev, settlement_id=sid), timeout=T)
    undo = env.reg("13").UndoReversal(rpb.UndoReversalRequest(request_id=rid("2601"), reversal_id=rev), timeout=T)
    assert (undo.outcome, undo.acct_pay_fen, undo.mulaid_pay_fen) == ("RESTORED", 1_000, 3_000)
    assert [env.bal("13", p) for p in (member, helper)] == [0, 7_000]
    rev2 = rid("2208")
    env.reg("13").ReverseSettlement(rpb.ReverseSettlementRequest(request_id=rev2, settlement_id=sid), timeout=T)
    assert [env.bal("13", p) for p in (member, helper)] == [1_000, 10_000]
    # The helper's money moves between the check and the charge (a debit on the cluster, via the script
    # a transfer uses): the attempt is refused and gives back what it took.
    env.settle(helper, 8_000)
    env.refused(lambda: env.reg("13").UndoReversal(rpb.UndoReversalRequest(
        request_id=rid("2601"), reversal_id=rev2), timeout=T), grpc.StatusCode.FAILED_PRECONDITION,
        "UNDO_SOURCE_SHORT")
    assert [env.bal("13", p) for p in (member, helper)] == [1_000, 2_000]
    # Giving an attempt back (restore_return.lua, restore_abort.lua) runs only when a source changes between
    # the check and the charge (tests/test_undo_registry.py makes that happen in-process); here each runs once
    # on its keys, which the cluster accepts only when they share a slot. Neither finds anything to do.
    k = Keys("13")
    r = sync_client(env.cluster.url)
    try:
        ref = f"{sid}:u99"
        assert r.eval(lua_source("medaid.registry", "restore_return"), 4, k.account(helper), k.ledger(helper),
                      k.applied(helper), k.consumption(helper), ref, 1, 0, "x", "{}") == [b"NONE", b""]
        assert r.eval(lua_source("medaid.registry", "restore_abort"), 4, k.settlement(member, sid),
                      k.account(member), k.ledger(member), k.fence(member), 0, "nobody", 0, "x", "mark") == \
            [b"BADSTATE", b"REVERSED"]
        r.hdel(k.applied(helper), ref)
    finally:
        r.close()
    assert [env.bal("13", p) for p in (member, helper)] == [1_000, 2_000]


def test_proxy_only_relative_gets_no_mutual_aid(env: Env):
    holder = env.person("13", bal=9_000)
    mother = env.person("13", itype=RESIDENT, birth="19520101")
    env.reg("13").BindProxy(rpb.BindProxyRequest(request_id=rid("proxy"), holder_id_number=holder,
                                                 relative_id_number=mother, relation=cpb.RELATION_PARENT,
                                                 relative_verification=FACE), timeout=T)
    res = env.settle(mother, 1_000)
    assert (res.cash_pay_fen, res.helper_reason) == (1_000, "PROXY_ONLY")
    assert env.bal("13", holder) == 9_000


def test_make_run_story_runs_unchanged_on_the_cluster(env: Env, capsys: pytest.CaptureFixture[str]):
    demo.story(env.topo)
    out = capsys.readouterr().out
    for expected in ("共济 ¥128.50", "PROXY_ONLY", "RELATION_NOT_ALLOWED", "MODEL_POOLED", "甘肃 family account",
                     "reversed", "钱包 ¥380.00", "13 → 11: ¥380.00", "1101 → infcode 0",
                     "acct_mulaid_pay 58.00 (共济人 张伟", "infcode -1: INVALID_AMOUNT"):
        assert expected in out, expected


# --- (b) the wallet and its transfer saga ----------------------------------------------------------


def test_transfer_spend_reversal_and_lots_going_home(env: Env):
    son, mother = env.family()
    t = env.send(son, mother, 30_000)
    assert t.state == W.TRANSFER_STATE_PENDING_ACCEPT and env.bal("13", son) == 70_000
    acc = env.accept(mother, t.transfer_id)
    assert acc.transfer.state == W.TRANSFER_STATE_COMPLETED and acc.wallet.balance_fen == 30_000
    # Waterfall step 2 at a 北京 hospital, then its reversal back to the very lot.
    res = env.settle(mother, 12_000, prov="11")
    assert (res.wallet_pay_fen, res.cash_pay_fen) == (12_000, 0)
    rev = env.reg("11").ReverseSettlement(rpb.ReverseSettlementRequest(
        request_id=rid("2208"), settlement_id=res.settlement_id), timeout=T)
    assert rev.wallet_refund_fen == 12_000
    kept = env.settle(mother, 5_000, prov="11")
    assert kept.wallet_pay_fen == 5_000
    # A spend id barred before any spend had it (what a registry does before it gives a wallet share
    # to cash): a later spend with it is refused and moves nothing.
    barred = rid("sid")
    assert env.wallet.RefundWalletSpend(wpb.RefundWalletSpendRequest(
        request_id=rid("rev"), spend_id=barred, owner_id_number=mother, cancel_if_absent=True),
        timeout=T).refunded_fen == 0
    with pytest.raises(grpc.RpcError) as late:
        env.wallet.SpendWallet(wpb.SpendWalletRequest(request_id=barred, owner_id_number=mother, amount_fen=1_000,
                                                      category=cpb.CATEGORY_OUTPATIENT, spending_admdvs="110000"),
                               timeout=T)
    assert late.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert env.wallet.GetWallet(wpb.GetWalletRequest(owner_id_number=mother), timeout=T).wallet.balance_fen == 25_000
    # A second transfer waits for acceptance when the son's insurance ends: it goes straight back,
    # and the 25,000 left of the accepted lot comes home too.
    pending = env.send(son, mother, 20_000)
    assert env.bal("13", son) == 50_000
    env.reg("13").UpdatePersonStatus(rpb.UpdatePersonStatusRequest(
        request_id=rid("status"), id_number=son, status=cpb.PERSON_STATUS_TERMINATED), timeout=T)
    assert env.transfer(pending.transfer_id).state == W.TRANSFER_STATE_RETURNED
    assert env.bal("13", son) == 95_000
    w = env.wallet.GetWallet(wpb.GetWalletRequest(owner_id_number=mother), timeout=T)
    assert w.wallet.balance_fen == 0 and list(w.lots) == []
    env.conserved()


def test_wallet_killed_after_the_debit_recovers_exactly_once(env: Env):
    son, mother = env.family()
    tid = rid("xfer")
    env.restart("wallet", "transfer.after_debit")
    err = env.crashes(lambda: env.send(son, mother, 60_000, tid), "wallet")
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
    env.restart("wallet")
    # The recovery loop alone moves it on; the client's retry with the same id sees the same transfer.
    assert env.wait_state(tid, (W.TRANSFER_STATE_PENDING_ACCEPT,)).amount_fen == 60_000
    t = env.send(son, mother, 60_000, tid)
    assert (t.transfer_id, t.state) == (tid, W.TRANSFER_STATE_PENDING_ACCEPT)
    assert env.accept(mother, tid).wallet.balance_fen == 60_000
    assert env.ledger_refs(son, tid) == [("TRANSFER_OUT", -60_000)]
    assert env.lots_for(mother, tid) == 1 and env.bal("13", son) == 40_000
    env.conserved()


def test_wallet_killed_after_the_credit_recovers_exactly_once(env: Env):
    son, mother = env.family()
    tid, acc_id = rid("xfer"), rid("acc")
    assert env.send(son, mother, 25_000, tid).state == W.TRANSFER_STATE_PENDING_ACCEPT
    env.restart("wallet", "accept.after_credit")
    err = env.crashes(lambda: env.accept(mother, tid, acc_id), "wallet")
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
    env.restart("wallet")
    assert env.wait_state(tid, (W.TRANSFER_STATE_COMPLETED,)).amount_fen == 25_000
    acc = env.accept(mother, tid, acc_id)
    assert acc.transfer.state == W.TRANSFER_STATE_COMPLETED and acc.wallet.balance_fen == 25_000
    assert env.ledger_refs(son, tid) == [("TRANSFER_OUT", -25_000)]
    assert env.lots_for(mother, tid) == 1
    # The sender's one-pending slot was released: a new transfer is admitted.
    assert env.send(son, mother, 100).state == W.TRANSFER_STATE_PENDING_ACCEPT
    env.conserved()


def test_wallet_killed_before_recording_gives_the_reservation_back(env: Env):
    son, mother = env.family()
    tid = rid("xfer")
    env.restart("wallet", "transfer.after_reserve")
    env.crashes(lambda: env.send(son, mother, 10_000, tid), "wallet")
    env.restart("wallet")
    # Nothing was debited: the recovery loop alone records it FAILED (a stalled creator could still wake
    # up) and gives the reservation back.
    k = WalletKeys()
    deadline = time.monotonic() + RECOVERY_S
    while env.r.hexists(k.reserved(son), tid) or env.r.zscore(k.inflight(), tid) is not None:
        assert time.monotonic() < deadline, "the reservation was never given back"
        time.sleep(0.1)
    t = env.transfer(tid)
    assert (t.state, t.failure_reason) == (W.TRANSFER_STATE_FAILED, "TRANSFER_ABANDONED")
    assert env.r.get(k.pending(son)) is None and env.bal("13", son) == 100_000
    assert env.r.zscore(k.incoming(mother), tid) is not None  # listed on her side, as on his
    # The client's retry with the same request id gets that answer; a new one goes through.
    with pytest.raises(grpc.RpcError) as ei:
        env.send(son, mother, 10_000, tid)
    assert reason(ei.value) == "TRANSFER_ABANDONED"
    again = rid("xfer")
    assert env.send(son, mother, 10_000, again).state == W.TRANSFER_STATE_PENDING_ACCEPT
    assert env.ledger_refs(son, tid) == [] and env.ledger_refs(son, again) == [("TRANSFER_OUT", -10_000)]
    env.conserved()


def test_registry_killed_after_the_debit_is_driven_to_completion(env: Env):
    son, mother = env.family()
    tid = rid("xfer")
    env.restart("registry-13", "transfer.after_debit")
    proc = env.topo.services["registry-13"].proc
    # The client sends, and resends with the same id while the wallet's channel to the just restarted
    # registry is still backing off (refused before anything was recorded), until the debit kills it.
    deadline = time.monotonic() + RECOVERY_S
    while proc.poll() is None and time.monotonic() < deadline:
        with pytest.raises(grpc.RpcError) as ei:
            env.send(son, mother, 40_000, tid)
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE, ei.value.details()
        try:
            proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            pass
    assert proc.returncode == -9, "the registry never reached its fault point"
    env.restart("registry-13")
    assert env.wait_state(tid, (W.TRANSFER_STATE_PENDING_ACCEPT,)).amount_fen == 40_000
    assert env.accept(mother, tid).transfer.state == W.TRANSFER_STATE_COMPLETED
    assert env.ledger_refs(son, tid) == [("TRANSFER_OUT", -40_000)]
    assert env.bal("13", son) == 60_000
    env.conserved()


def test_a_helper_suspended_while_a_crashed_settlement_waits_another_pays(env: Env):
    """kill -9 of registry-13 after a bill's own debit (the staged path: every bill on a cluster); the
    planned, richest helper is suspended before it is back. Its recovery loop finishes the bill: that
    charge cannot be taken, so the rest is planned again (settle_extend.lua) and the other helper pays;
    each helper is charged at most once, and a resend answers the same."""
    member = env.person("13", bal=1_000)
    rich, other = env.person("13", bal=50_000, birth="19700101"), env.person("13", bal=9_000, birth="19710101")
    env.bind("13", rich, member, cpb.RELATION_SPOUSE)
    env.bind("13", other, member, cpb.RELATION_SIBLING)
    sid = rid("2207")
    env.restart("registry-13", "settle.after_own_debit")
    env.crashes(lambda: env.settle(member, 5_000, request_id=sid), "registry-13")
    env.r.hset(f"reg:13:{{p:{rich}}}:person", "status", "SUSPENDED")  # as UpdatePersonStatus writes it
    env.restart("registry-13")
    deadline = time.monotonic() + RECOVERY_S
    while env.bal("13", other) != 5_000 and time.monotonic() < deadline:
        time.sleep(0.2)
    res = env.settle(member, 5_000, request_id=sid)
    assert (res.acct_pay_fen, res.mulaid_pay_fen, res.cash_pay_fen, res.helper_id_number) == (1_000, 4_000, 0, other)
    assert [env.bal("13", p) for p in (member, rich, other)] == [0, 50_000, 5_000]
    env.conserved()


# --- (c) concurrent settlements and the money verdict ------------------------------------------------


def test_concurrent_settlements_through_the_router_conserve_money(env: Env):
    before = env.conserved()
    credited_before = env.credited
    rng = random.Random(6)
    helpers = [env.person("13", bal=200_000) for _ in range(5)]
    members = [env.person("13", bal=rng.randrange(0, 3_000)) for _ in range(25)]
    for i, m in enumerate(members):
        env.bind("13", helpers[i % len(helpers)], m, cpb.RELATION_SIBLING)
    msgids = [f"H1301010000120261122110000{i:04d}" for i in range(300)]
    bills = [(mid, members[rng.randrange(len(members))], rng.randrange(100, 6_000)) for mid in msgids]
    bills += [bills[rng.randrange(len(bills))] for _ in range(40)]  # resends of the same msgid
    rng.shuffle(bills)

    def go(bill: tuple[str, str, int]) -> pb.SetlInfo:
        mid, psn, amount = bill
        request = pb.SettleRequest(msgid=mid, institution=HEBEI, input=pb.SettleInput(
            psn_no=psn, psn_part_amt_fen=amount, acct_used_flag="1", category=cpb.CATEGORY_OUTPATIENT,
            mdtrt_id=f"MD-{mid}"))
        for attempt in range(5):
            try:
                return env.router.Settle(request, timeout=T).setlinfo
            except grpc.RpcError as exc:
                # UNAVAILABLE is the documented "resend the same msgid" answer, e.g. when the registry
                # did not answer within the router's deadline on a loaded host; the resend must then
                # give the one outcome (checked below with the other resends).
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == 4:
                    raise
                time.sleep(0.5)
        raise AssertionError("unreachable")

    env.router_reaches_hebei(members[0])
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(go, bills))
    taken: dict[str, int] = {}
    for (mid, _, amount), s in zip(bills, answers, strict=True):
        assert s.acct_pay_fen + s.wallet_pay_fen + s.acct_mulaid_pay_fen + s.psn_cash_pay_fen == amount
        paid = s.acct_pay_fen + s.acct_mulaid_pay_fen
        assert taken.setdefault(mid, paid) == paid, f"{mid} answered two different splits"
    after = env.conserved()
    assert after.credits_in_fen - before.credits_in_fen == env.credited - credited_before
    assert after.settled_net_fen - before.settled_net_fen == sum(taken.values())
    assert sum(taken.values()) > 0 and after.negative_balances == 0


def test_2601_through_the_router_on_the_cluster(env: Env):
    """2601 冲正 through the router: the original's msgid claim is voided on its own slot
    (msgid_void.lua), by the first 2601 for good; a second 2601 changes nothing, and the original's
    resend is refused."""
    p = env.person("13", bal=5_000)
    env.router_reaches_hebei(p)
    settle = pb.SettleRequest(msgid="H13010100001202611221200000001", institution=HEBEI, input=pb.SettleInput(
        psn_no=p, psn_part_amt_fen=2_000, acct_used_flag="1", category=cpb.CATEGORY_FITNESS))
    # Refused by a rule: its claim leaves (msgid_release.lua); the corrected message takes the msgid,
    # settles and binds it for good (msgid_done.lua).
    env.refused(lambda: env.router.Settle(settle, timeout=T), FP, "CATEGORY_NOT_PAYABLE")
    assert not env.r.exists(f"rtr:{{mid:{settle.msgid}}}")
    settle.input.category = cpb.CATEGORY_OUTPATIENT
    assert env.router.Settle(settle, timeout=T).setlinfo.acct_pay_fen == 2_000
    assert env.r.hget(f"rtr:{{mid:{settle.msgid}}}", "done") == b"1"
    first, second = ("H1301010000120261122120000000" + d for d in "23")
    for mid, outcome in ((first, "REVERSED"), (second, "ALREADY_REVERSED")):
        assert env.router.Undo(pb.UndoRequest(msgid=mid, institution=HEBEI, psn_no=p, omsgid=settle.msgid,
                                              oinfno="2207"), timeout=T).outcome == outcome
    assert env.r.hget(f"rtr:{{mid:{settle.msgid}}}", "fp") == f"void:{first}".encode()
    env.refused(lambda: env.router.Settle(settle, timeout=T), FP, "ORIGINAL_CANCELLED")
    never = "H13010100001202611221200000004"  # a 2207 that never arrived: voided where nobody claimed it
    assert env.router.Undo(pb.UndoRequest(msgid="H13010100001202611221200000005", institution=HEBEI, psn_no=p,
                                          omsgid=never, oinfno="2207"), timeout=T).outcome == "VOIDED"
    env.refused(lambda: env.router.Settle(pb.SettleRequest(msgid=never, institution=HEBEI, input=settle.input),
                                          timeout=T), FP, "ORIGINAL_CANCELLED")
    assert env.bal("13", p) == 5_000
    env.conserved()


# --- (d) family accounts and 代缴 (SPEC §3b, §4b): scripts on the {fam} slot, staged money moves ------


def _family_35(env: Env, creator_bal: int = 320_000) -> tuple[Any, str, str, str]:
    """A 福建 family account: the creator (¥1,000 in) and the son (¥500 in) contribute."""
    fj = env.reg("35")
    creator, son = env.person("35", bal=creator_bal), env.person("35", bal=300_000, birth="19900101")
    fid = fj.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
        request_id=rid("fam"), creator_id_number=creator, commitment=FACE, initial_transfer_fen=100_000),
        timeout=T).account.family_id
    fj.InviteMember(fpb.InviteMemberRequest(request_id=rid("inv"), family_id=fid, creator_id_number=creator,
                                            member_id_number=son, relation=cpb.RELATION_CHILD), timeout=T)
    fj.RespondToInvitation(fpb.RespondToInvitationRequest(request_id=rid("acc"), family_id=fid, member_id_number=son,
                                                          accept=True, verification=FACE), timeout=T)
    fj.TransferIntoFamilyAccount(fpb.TransferIntoFamilyAccountRequest(
        request_id=rid("hb"), family_id=fid, contributor_id_number=son, amount_fen=50_000), timeout=T)
    return fj, fid, creator, son


def placed(env: Env, prov: str, kind: bytes) -> list[bytes]:
    """Entries of binds, 亲情账户 additions, invitations or creations (`kind` B|, Q| or F|) left in the
    province's recovery index."""
    return [e for e in env.r.zrange(Keys(prov).open_settlements(), 0, -1) if e.startswith(kind)]


def _family_balance(fj: Any, fid: str) -> int:
    return int(fj.GetFamilyAccount(fpb.GetFamilyAccountRequest(family_id=fid), timeout=T).account.balance_fen)


def test_family_account_and_premiums_on_the_cluster(env: Env):
    before = env.conserved()
    fj, fid, creator, son = _family_35(env)
    kid = env.person("35", itype=RESIDENT, birth="20150101")
    aunt = env.person("35", itype=RESIDENT, birth="19600101")
    fj.InviteMember(fpb.InviteMemberRequest(request_id=rid("inv"), family_id=fid, creator_id_number=creator,
                                            member_id_number=kid, relation=cpb.RELATION_GRANDCHILD), timeout=T)
    fj.InviteMember(fpb.InviteMemberRequest(request_id=rid("inv"), family_id=fid, creator_id_number=creator,
                                            member_id_number=aunt, relation=cpb.RELATION_SIBLING, temporary=True),
                    timeout=T)
    assert not placed(env, "35", b"F|")  # each creation's and invitation's entry went with its answer
    env.refused(lambda: fj.InviteMember(fpb.InviteMemberRequest(  # refused by family_invite.lua: entry withdrawn
        request_id=rid("inv"), family_id=fid, creator_id_number=creator, member_id_number=kid,
        relation=cpb.RELATION_GRANDCHILD), timeout=T), grpc.StatusCode.ALREADY_EXISTS, "ALREADY_MEMBER")
    env.refused(lambda: fj.TransferIntoFamilyAccount(fpb.TransferIntoFamilyAccountRequest(
        request_id=rid("hb"), family_id=fid, contributor_id_number=son, amount_fen=100), timeout=T),
        FP, "MONTHLY_LIMIT_REACHED")
    # 2207 for the kid: the staged path charges the {fam} slot, oldest contribution first.
    res = env.settle(kid, 120_000, prov="35")
    assert [(c.helper_id_number, c.amount_fen) for c in res.helper_charges] == [(creator, 100_000), (son, 20_000)]
    fj.ReverseSettlement(rpb.ReverseSettlementRequest(request_id=rid("rev"), settlement_id=res.settlement_id),
                         timeout=T)
    assert _family_balance(fj, fid) == 150_000
    # 代缴 for the aunt from the family account, cancelled; then from the creator's own account.
    prem = fj.PayResidentPremium(ppb.PayResidentPremiumRequest(
        request_id=rid("prem"), payer_id_number=creator, payee_id_number=aunt, relation=cpb.RELATION_SIBLING,
        year="2027", source=ppb.PREMIUM_SOURCE_FAMILY_ACCOUNT, family_id=fid), timeout=T).premium
    assert prem.contributors == f"{creator}:40000"
    env.refused(lambda: fj.CancelResidentPremium(ppb.CancelResidentPremiumRequest(  # another payer named
        request_id=rid("cancel"), payer_id_number=son, payee_id_number=aunt, year="2027"), timeout=T),
        FP, "NOT_THE_PAYER")
    fj.CancelResidentPremium(ppb.CancelResidentPremiumRequest(request_id=rid("cancel"), payer_id_number=creator,
                                                              payee_id_number=aunt, year="2027"), timeout=T)
    fj.PayResidentPremium(ppb.PayResidentPremiumRequest(
        request_id=rid("prem"), payer_id_number=creator, payee_id_number=aunt, relation=cpb.RELATION_SIBLING,
        year="2027", source=ppb.PREMIUM_SOURCE_ACCOUNT), timeout=T)
    assert env.bal("35", creator) == 220_000 - 40_000
    # The son leaves with his share; the creator takes hers back (回拨); the account is dissolved.
    left = fj.LeaveFamilyAccount(fpb.LeaveFamilyAccountRequest(request_id=rid("leave"), family_id=fid,
                                                               member_id_number=son), timeout=T)
    assert left.returned_fen == 50_000 and env.bal("35", son) == 300_000
    fj.WithdrawContribution(fpb.WithdrawContributionRequest(request_id=rid("wd"), family_id=fid,
                                                            contributor_id_number=creator), timeout=T)
    gone = fj.DissolveFamilyAccount(fpb.DissolveFamilyAccountRequest(request_id=rid("dis"), family_id=fid,
                                                                     creator_id_number=creator), timeout=T)
    assert gone.account.state == "DISSOLVED" and env.bal("35", creator) == 320_000 - 40_000
    after = env.conserved()
    assert after.premiums_net_fen - before.premiums_net_fen == 40_000
    assert after.family_accounts == before.family_accounts + 1


@pytest.mark.parametrize(("point", "flow"), [("family.after_debit", "transfer"), ("family.after_payout", "dissolve"),
                                             ("premium.after_debit", "premium"), ("family.after_debit", "create")])
def test_registry_killed_inside_a_family_flow_is_finished_by_recovery(env: Env, point: str, flow: str):
    """kill -9 of registry-35 between the two slots of a 划拨, a dissolution's returns, a 代缴 or a
    creation with an initial 划拨 (the creator debited, the account not yet written): once it is back,
    its recovery loop finishes the flow without a resend, and a resend answers the same."""
    fj, fid, creator, son = _family_35(env)
    daughter = env.person("35", bal=300_000, birth="19920101")  # has not 划拨ed this month
    fj.InviteMember(fpb.InviteMemberRequest(request_id=rid("inv"), family_id=fid, creator_id_number=creator,
                                            member_id_number=daughter, relation=cpb.RELATION_CHILD), timeout=T)
    fj.RespondToInvitation(fpb.RespondToInvitationRequest(request_id=rid("acc"), family_id=fid,
                                                          member_id_number=daughter, accept=True, verification=FACE),
                           timeout=T)
    aunt = env.person("35", itype=RESIDENT, birth="19600101")

    def call() -> Any:
        if flow == "transfer":
            return env.reg("35").TransferIntoFamilyAccount(fpb.TransferIntoFamilyAccountRequest(
                request_id=f"kill-{point}", family_id=fid, contributor_id_number=daughter, amount_fen=20_000),
                timeout=T)
        if flow == "create":  # the daughter's own account, holding her initial 划拨
            return env.reg("35").CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
                request_id=f"kill-create-{point}", creator_id_number=daughter, commitment=FACE,
                initial_transfer_fen=20_000), timeout=T)
        if flow == "dissolve":
            return env.reg("35").DissolveFamilyAccount(fpb.DissolveFamilyAccountRequest(
                request_id=f"kill-{point}", family_id=fid, creator_id_number=creator), timeout=T)
        return env.reg("35").PayResidentPremium(ppb.PayResidentPremiumRequest(
            request_id=f"kill-{point}", payer_id_number=creator, payee_id_number=aunt,
            relation=cpb.RELATION_SIBLING, year="2027", source=ppb.PREMIUM_SOURCE_ACCOUNT), timeout=T)

    # (creator, son, daughter, family) once the flow is finished
    want = {"transfer": (220_000, 250_000, 280_000, 170_000), "dissolve": (320_000, 300_000, 300_000, 0),
            "premium": (180_000, 250_000, 300_000, 150_000), "create": (220_000, 250_000, 280_000, 150_000)}[flow]

    def now() -> tuple[int, int, int, int]:
        return (env.bal("35", creator), env.bal("35", son), env.bal("35", daughter), _family_balance(fj, fid))

    env.restart("registry-35", point)
    env.crashes(call, "registry-35")
    env.restart("registry-35")
    deadline = time.monotonic() + RECOVERY_S
    got = now()
    while got != want and time.monotonic() < deadline:
        time.sleep(0.2)
        got = now()
    assert got == want, (flow, got, want)
    first = call()
    assert call() == first and now() == want
    if flow == "create":
        assert (first.account.creator_id_number, first.account.balance_fen) == (daughter, 20_000)
    env.conserved()


# --- every script ran here; the cluster survives kill -9 ---------------------------------------------


def _sha(source: str) -> str:
    return hashlib.sha1(source.encode()).hexdigest()


def test_onward_transfer_relationship_end_death_and_proxies(env: Env):
    """The wallet and life-cycle flows on the cluster: an onward transfer (wallet → wallet) returned at its deadline and
    one accepted, a relationship ended by the holder, a death paid out to the heir, a 亲情账户 across
    provinces added and removed."""
    son, mother = env.family()
    sister = env.person("11", itype=RESIDENT, birth="19580101")
    env.wallet.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=sister, province="11",
                                                use_place_admdvs="110000", real_name=FACE), timeout=T)
    env.accept(mother, env.send(son, mother, 30_000).transfer_id)

    def onward(amount: int) -> wpb.Transfer:
        return env.wallet.CreateTransfer(wpb.CreateTransferRequest(
            request_id=rid("onward"), sender_id_number=mother, sender_province="11", recipient_id_number=sister,
            relation=cpb.RELATION_SIBLING, amount_fen=amount, verification=FACE,
            source=wpb.TRANSFER_SOURCE_WALLET), timeout=T).transfer

    late = onward(5_000)
    env.timeline.jump_to(late.expires_at_unix_ms + 60_000)
    # Registry 13 continues the jumped timeline too: the death below ends the lots its time says began by
    # then, as the wallet's clock timed them. Each process's clock lags the timeline by how long it took
    # to start, so left on the old timeline, registry 13's lag from a slow start can put the death before
    # the son's lot began. Restarted first, so the wallet's new channels reach its new process.
    env.restart("registry-13")
    env.restart("wallet")
    assert env.wait_state(late.transfer_id, (W.TRANSFER_STATE_RETURNED,)).amount_fen == 5_000
    t = onward(12_000)
    assert env.accept(sister, t.transfer_id).wallet.balance_fen == 12_000
    # The sister ends her relationship with the mother: the lot goes to the son, who funded it.
    end = env.wallet.EndWalletRelationship(wpb.EndWalletRelationshipRequest(
        request_id=rid("end"), sender_id_number=mother, holder_id_number=sister, requested_by_id_number=sister),
        timeout=T)
    assert end.returned_fen == 12_000 and env.bal("13", son) == 82_000
    # The son dies: his lots in the mother's wallet come home, then all is paid out to the heir.
    heir = new_id("130102", "19850101")
    death = env.reg("13").RecordDeath(rpb.RecordDeathRequest(
        request_id=rid("death"), id_number=son, heir_id_number=heir, date_of_death="20261121"), timeout=T)
    assert (death.wallet_returned_fen, death.paid_out_fen) == (18_000, 100_000)
    # A 亲情账户 from a 甘肃 holder to the 北京 sister, removed by her.
    holder = env.person("62")
    env.reg("62").BindProxy(rpb.BindProxyRequest(request_id=rid("proxy"), holder_id_number=holder,
                                                 relative_id_number=sister, relation=cpb.RELATION_SIBLING,
                                                 relative_verification=FACE), timeout=T)
    env.reg("11").RemoveProxy(rpb.RemoveProxyRequest(request_id=rid("rmproxy"), holder_id_number=holder,
                                                     relative_id_number=sister, requested_by_id_number=sister),
                              timeout=T)
    env.conserved()


def test_a_proxy_whose_registry_died_before_reading_a_dead_side_again_is_undone(env: Env):
    """kill -9 of registry-62 once a 亲情账户 addition wrote the proxy, before it read the sides again; the
    relative's death is recorded meanwhile. Once 62 is back its recovery loop reads the sides again,
    undoes the addition (proxy_undo.lua, on the national {proxy} slot) and frees the id: a resend is
    refused as an addition after the death is, and no proxy of the dead relative is left."""
    holder = env.person("62")
    sister = env.person("11", itype=RESIDENT, birth="19780101")
    add = rpb.BindProxyRequest(request_id=rid("proxy"), holder_id_number=holder, relative_id_number=sister,
                               relation=cpb.RELATION_SIBLING, relative_verification=FACE)
    env.restart("registry-62", "proxy.after_write")
    env.crashes(lambda: env.reg("62").BindProxy(add, timeout=T), "registry-62")
    env.reg("11").RecordDeath(rpb.RecordDeathRequest(request_id=rid("death"), id_number=sister,
                                                     heir_id_number=holder, date_of_death="20261121"), timeout=T)
    env.restart("registry-62")
    claim = f"{Keys('62').ns}:{{rid:{add.request_id}}}"
    deadline = time.monotonic() + RECOVERY_S
    while (env.r.exists(claim) or placed(env, "62", b"Q|")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not env.r.exists(claim) and not placed(env, "62", b"Q|")
    assert env.r.hget("nat:{proxy}:added", add.request_id) is None
    env.refused(lambda: env.reg("62").BindProxy(add, timeout=T), grpc.StatusCode.FAILED_PRECONDITION,
                "MEMBER_NOT_INSURED")
    listed = env.reg("62").ListProxyBindings(rpb.ListProxyBindingsRequest(id_number=holder), timeout=T)
    assert list(listed.as_holder) == []


def test_a_replayed_move_after_a_late_activation_routes_to_the_new_province(env: Env):
    """The national person directory on the cluster (its entry and the provinces still holding the person
    share one slot): 13 records the move to 11, 11 enrols them, a late ACTIVE reaches 13 and then 13's
    termination is replayed. The entry goes back to 11, which holds them ACTIVE, and a 1101 without
    insuplc_admdvs is answered there."""
    pid = env.person("13")

    def status(st: int, moved_to: str = "") -> None:
        env.reg("13").UpdatePersonStatus(rpb.UpdatePersonStatusRequest(
            request_id=rid("status"), id_number=pid, status=st, moved_to_province=moved_to), timeout=T)

    status(cpb.PERSON_STATUS_TERMINATED, "11")
    env.reg("11").EnrollPerson(rpb.EnrollPersonRequest(
        request_id=rid("enroll"), id_number=pid, name="张三", insurance_type=EMPLOYEE, pooling_region=PLACE["11"]),
        timeout=T)
    status(cpb.PERSON_STATUS_ACTIVE)
    assert env.r.hget(f"dir:{{psn:{pid}}}:held", "11") == b"ACTIVE"
    status(cpb.PERSON_STATUS_TERMINATED, "11")
    assert env.r.hmget(f"dir:{{psn:{pid}}}", ["province", "status"]) == [b"11", b"ACTIVE"]
    insu = env.router.QueryPerson(pb.QueryPersonRequest(
        msgid="H13010100001202611221300000001", institution=HEBEI, mdtrt_cert_type="02", mdtrt_cert_no=pid),
        timeout=T).insuinfo[0]
    assert (insu.insuplc_admdvs, insu.psn_insu_stas) == (PLACE["11"], cpb.PERSON_STATUS_ACTIVE)


def test_a_death_in_a_province_that_does_not_hold_the_entry_takes_it_on_the_cluster(env: Env):
    """The directory script on the cluster: enrolled in 13, then in 11 (the entry is 11's), 13 records the
    death. The entry says DECEASED (13 recorded it), 11 is noted beside it, and 11's later change leaves
    it so: a death is final."""
    pid = env.person("13")
    env.reg("11").EnrollPerson(rpb.EnrollPersonRequest(
        request_id=rid("enroll"), id_number=pid, name="张三", insurance_type=EMPLOYEE, pooling_region=PLACE["11"]),
        timeout=T)
    env.reg("13").RecordDeath(rpb.RecordDeathRequest(request_id=rid("death"), id_number=pid, date_of_death="20261121",
                                                     heir_id_number=new_id("130102", "19850101")), timeout=T)
    assert env.r.hmget(f"dir:{{psn:{pid}}}", ["province", "status"]) == [b"13", b"DECEASED"]
    assert env.r.hget(f"dir:{{psn:{pid}}}:held", "11") == b"ACTIVE"
    env.reg("11").UpdatePersonStatus(rpb.UpdatePersonStatusRequest(
        request_id=rid("status"), id_number=pid, status=cpb.PERSON_STATUS_SUSPENDED), timeout=T)
    assert env.r.hmget(f"dir:{{psn:{pid}}}", ["province", "status"]) == [b"13", b"DECEASED"]


def test_dated_status_events_keep_their_order_on_the_cluster(env: Env):
    """A dated ACTIVE of an ACTIVE person keeps its date alone (life_event.lua with no history event, on
    the person's slot); the suspension it overtook is refused EVENT_OUT_OF_ORDER and writes nothing."""
    pid = env.person("13")
    # A time in every service's past: other tests of this module move the shared timeline forward and
    # restart only some services, so a time read from the timeline can lie ahead of registry 13's clock.
    t = 1_600_000_000_000

    def status(st: int, at: int) -> rpb.UpdatePersonStatusResponse:
        return env.reg("13").UpdatePersonStatus(rpb.UpdatePersonStatusRequest(
            request_id=rid("status"), id_number=pid, status=st, occurred_at_unix_ms=at), timeout=T)

    assert status(cpb.PERSON_STATUS_ACTIVE, t + 2).person.status == cpb.PERSON_STATUS_ACTIVE
    assert env.r.hget(f"reg:13:{{p:{pid}}}:person", "occurred_at") == str(t + 2).encode()
    with pytest.raises(grpc.RpcError) as late:
        status(cpb.PERSON_STATUS_SUSPENDED, t + 1)
    assert (late.value.code(), reason(late.value)) == (grpc.StatusCode.FAILED_PRECONDITION, "EVENT_OUT_OF_ORDER")
    assert env.r.hget(f"reg:13:{{p:{pid}}}:person", "status") == b"ACTIVE"
    assert env.r.llen(f"reg:13:{{p:{pid}}}:history") == 0


def test_the_wallet_listings_page_on_a_cluster(env: Env):
    """A page token's next page reads one listing key on its slot (the transfers of one millisecond and
    those older, in one pipeline): three transfers and their entries, listed one a page."""
    son, mother = env.family()
    tids = []
    for amount in (100, 200, 300):
        tids.append(env.send(son, mother, amount).transfer_id)
        env.accept(mother, tids[-1])

    def paged(call: Callable[..., Any], request: Any, field: str) -> list[Any]:
        out, token = [], ""
        while True:
            request.page_size, request.page_token = 1, token
            got = call(request, timeout=T)
            out += list(getattr(got, field))
            token = got.next_page_token
            if not token:
                return out

    ins = paged(env.wallet.ListIncomingTransfers, wpb.ListIncomingTransfersRequest(recipient_id_number=mother),
                "transfers")
    outs = paged(env.wallet.ListOutgoingTransfers, wpb.ListOutgoingTransfersRequest(sender_id_number=son),
                 "transfers")
    assert [t.transfer_id for t in ins] == [t.transfer_id for t in outs] == tids[::-1]
    entries = paged(env.wallet.ListWalletEntries, wpb.ListWalletEntriesRequest(owner_id_number=mother), "entries")
    assert [(e.kind, e.amount_fen) for e in entries] == [("LOT_IN", 300), ("LOT_IN", 200), ("LOT_IN", 100)]


def test_maintenance_indexes_transfers_of_every_master(env: Env):
    """The listings of transfers written before they existed are rebuilt by a maintenance pass that
    scans every master: here four families' transfers, on more than one master, with their listings
    and the marker removed, as a store of 0.1.0 has them."""
    sent: dict[str, tuple[str, str]] = {}  # transfer id → (sender, recipient)
    for _ in range(4):
        son, mother = env.family()
        sent[env.send(son, mother, 1_000).transfer_id] = (son, mother)
    records = [f"wal:{{w:{mother}}}:xfer:{tid}" for tid, (_, mother) in sent.items()]
    masters = {env.r.get_node_from_key(k).port for k in records}
    assert len(masters) > 1, "the transfers landed on one master: the test would prove nothing"
    listings = [f"wal:{{w:{mother}}}:xins" for _, mother in sent.values()] + \
        [f"wal:{{s:{son}}}:sent" for son, _ in sent.values()]
    # The listings first, then the marker: the wallet's own loop may run a pass at any moment, and
    # any pass that starts after this indexes the lot.
    for key in [*listings, "wal:{maint}:transfers_indexed"]:
        env.r.delete(key)

    def listed() -> dict[str, tuple[str, str]]:
        out: dict[str, tuple[str, str]] = {}
        for son, mother in sent.values():
            ins = env.wallet.ListIncomingTransfers(wpb.ListIncomingTransfersRequest(recipient_id_number=mother),
                                                   timeout=T).transfers
            outs = env.wallet.ListOutgoingTransfers(wpb.ListOutgoingTransfersRequest(sender_id_number=son),
                                                    timeout=T).transfers
            assert [t.transfer_id for t in ins] == [t.transfer_id for t in outs]
            out.update({t.transfer_id: (t.sender_id_number, t.recipient_id_number) for t in ins})
        return out

    deadline = time.monotonic() + RECOVERY_S
    while not env.wallet.RunMaintenance(wpb.RunMaintenanceRequest(), timeout=T).ran:  # the loop's pass may hold it
        assert time.monotonic() < deadline, "no maintenance pass could run"
        time.sleep(0.2)
    assert env.r.exists("wal:{maint}:transfers_indexed")
    assert listed() == sent


def test_every_lua_script_ran_on_the_cluster(env: Env):
    """Each script was loaded on a master only by running it there (EVALSHA's NOSCRIPT fallback, or EVAL
    from a pipeline): so every script of the product ran on the cluster above, and — the cluster
    refusing any script whose keys span slots — touches one slot."""
    earlier = {"test_bind_refusals_write_nothing", "test_a_bind_killed_before_its_write_has_its_id_freed_by_recovery",
               "test_waterfall_with_a_helper_reversal_and_idempotent_replay",
               "test_transfer_spend_reversal_and_lots_going_home",
               "test_wallet_killed_before_recording_gives_the_reservation_back",
               "test_concurrent_settlements_through_the_router_conserve_money",
               "test_2601_through_the_router_on_the_cluster",
               "test_undo_of_a_reversal_and_a_voided_request_on_the_cluster",
               "test_onward_transfer_relationship_end_death_and_proxies",
               "test_a_helper_suspended_while_a_crashed_settlement_waits_another_pays",
               "test_a_replayed_move_after_a_late_activation_routes_to_the_new_province",
               "test_a_proxy_whose_registry_died_before_reading_a_dead_side_again_is_undone"}
    if not earlier <= env.ran:
        pytest.skip("needs the traffic of the whole module: run tests/test_cluster.py whole")
    scripts = {f"{pkg}/{f.name}": lua_source(pkg, f.name.removesuffix(".lua"))
               for pkg in ("medaid.common", "medaid.registry", "medaid.wallet", "medaid.router")
               for f in resources.files(pkg).joinpath("lua").iterdir()
               if f.name.endswith(".lua") and not f.name.startswith("_")}
    assert {f"medaid.registry/{n}.lua" for n in REGISTRY_SCRIPTS} <= scripts.keys()
    assert {f"medaid.wallet/{n}.lua" for n in WALLET_SCRIPTS} <= scripts.keys()
    scripts["directory"] = DIRECTORY_SCRIPT
    loaded: dict[str, bool] = dict.fromkeys(scripts, False)
    for port in env.cluster.ports:
        node = redis.Redis(host="127.0.0.1", port=port)
        try:
            for name, present in zip(scripts, node.script_exists(*(_sha(s) for s in scripts.values())),
                                     strict=True):
                loaded[name] = loaded[name] or bool(present)
        finally:
            node.close()
    # settle_read.lua and settle_apply.lua touch keys of several slots (patient and helpers): one Redis
    # only. A registry on a cluster must never have sent them (it takes the staged path instead).
    single_redis_only = {"medaid.registry/settle_read.lua", "medaid.registry/settle_apply.lua"}
    assert {name for name in single_redis_only if loaded[name]} == set()
    assert [name for name, ok in loaded.items() if not ok and name not in single_redis_only] == []


def test_kill_9_of_every_master_loses_nothing_and_services_carry_on(env: Env):
    state = env.registry_state()
    wallets = {k: env.contents(k) for k in scan_keys(env.r, "wal:{w:*")}
    rep = env.conserved()
    env.cluster.kill()
    env.cluster.start()
    assert env.registry_state() == state
    assert {k: env.contents(k) for k in scan_keys(env.r, "wal:{w:*")} == wallets
    assert money.check(env.r).as_dict() == rep.as_dict()
    # The running services reconnect (stale connections retried, slot map refreshed) and go on.
    member, helper = env.person("13", bal=1_000), env.person("13", bal=9_000)
    env.bind("13", helper, member, cpb.RELATION_PARENT)
    res = env.settle(member, 3_000)
    assert (res.acct_pay_fen, res.mulaid_pay_fen, res.helper_id_number) == (1_000, 2_000, helper)
    env.conserved()


def test_cluster_round_trips_and_failures_are_measured(env: Env):
    """The services' Redis metrics on a cluster: each command and each whole pipeline is one round trip
    (a refusal by Redis too), a node that does not answer is an error, not a round trip."""
    from prometheus_client import REGISTRY

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    async def calls() -> None:
        r = client(env.cluster.url, max_connections=4)
        try:
            await r.set("test:{metrics}:s", "x")
            async with r.pipeline(transaction=False) as pipe:
                pipe.get("test:{metrics}:s")
                pipe.get("test:{metrics}:t")
                await pipe.execute()
            with pytest.raises(redis.exceptions.ResponseError):
                await r.hget("test:{metrics}:s", "f")  # WRONGTYPE: Redis answered
            await r.delete("test:{metrics}:s")
        finally:
            await r.aclose()

    before = sample("medaid_redis_roundtrip_seconds_count")
    asyncio.run(calls())
    assert sample("medaid_redis_roundtrip_seconds_count") - before == 4
    errors = sample("medaid_redis_errors_total", error="ConnectionError")

    async def nobody() -> None:
        r = client(f"redis+cluster://127.0.0.1:{dead_port()}", max_connections=2, timeout_s=1.0)
        try:
            await r.get("test:{metrics}:s")
        finally:
            await r.aclose()

    with pytest.raises((redis.exceptions.RedisError, redis.exceptions.RedisClusterException)):
        asyncio.run(nobody())
    assert sample("medaid_redis_roundtrip_seconds_count") - before == 4
    assert sum(sample("medaid_redis_errors_total", error=e) for e in
               ("ConnectionError", "RedisClusterException", "TimeoutError")) > errors
