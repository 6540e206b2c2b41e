"""A request id is never left claimed in progress on a Redis Cluster with nothing leading back to it.

On a cluster the recovery index (`reg:<prov>:{open}:setl`) and a request id's claim (`{rid:<id>}`)
live on different slots, most often on different masters. A 2207 claims its id and writes its entry
for the recovery loop before it writes anything else; if the claim stood while the entry did not (the
entry's master died at that moment), nothing would ever free the claim: the id would answer "still
being processed" to every 2601 of it, and a resend with corrected fields IDEMPOTENCY_KEY_REUSED, for
good, though nothing was paid. So the entry is written first, and the claim only once it stands.

A cluster without replicas, so that a killed master stays down until it is restarted from its AOF.
"""

from __future__ import annotations

import concurrent.futures
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
import pytest
from medaid.common.redis_client import sync_client
from medaid.common.redis_server import RedisCluster
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.keys import Keys
from medaid.registry.v1 import registry_pb2 as pb
from medaid.registry.v1 import registry_pb2_grpc as pb_grpc
from medaid.topology import DEMO_CLOCK, Topology
from support import FACE, balance, credit, enroll, reason, rid, settle_request

pytestmark = pytest.mark.slow

K = Keys("13")
T = 10.0
_R = TypeVar("_R")


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    t = Topology.start(provinces=("13",), wallet=False, router=False, gateway=False, clock=DEMO_CLOCK,
                       cluster=True, cluster_replicas=0, recovery_grace_ms=500)
    try:
        yield t
    finally:
        t.stop()


def test_a_2207_whose_recovery_entry_was_not_written_leaves_its_id_free(topo: Topology):
    cluster = topo.redis
    assert isinstance(cluster, RedisCluster)
    r = sync_client(cluster.url)
    port_of = lambda key: int(r.get_node_from_key(key).port)  # noqa: E731
    open_port = port_of(K.open_settlements())
    victim = next(n for n in cluster.nodes if n.port == open_port)
    with grpc.insecure_channel(topo.address("registry-13")) as ch:
        stub = pb_grpc.RegistryServiceStub(ch)
        patient = next(p for p in iter(lambda: enroll(stub, name="张伟"), None) if port_of(K.person(p)) != open_port)
        credit(stub, patient, 10_000)
        sid = next(s for s in iter(lambda: rid("2207"), None) if port_of(f"{K.ns}:{{rid:{s}}}") != open_port)
        victim.kill()  # the master of the recovery index dies (no replica: its slots stay down)
        try:
            with pytest.raises(grpc.RpcError) as err:
                stub.Settle(settle_request(patient, 4_000, request_id=sid), timeout=T)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
        finally:
            victim.start()
            cluster.wait_ok(30)
        # Recovery passes (grace 0.5 s) over whatever the index holds, until it holds nothing.
        assert _until(lambda: r.zcard(K.open_settlements()) == 0), r.zrange(K.open_settlements(), 0, -1)
        # Nothing was paid, and nothing holds the id: a 2601 of it voids it ...
        assert _resent(lambda: balance(stub, patient)) == 10_000
        cancel = pb.CancelRequestRequest(request_id=rid("2601"), original_request_id=sid)
        got = _resent(lambda: stub.CancelRequest(cancel, timeout=T))
        assert got.outcome == "VOIDED", f"the id is left in progress with no recovery entry: {got}"
        # ... and a fresh id for the same bill settles once.
        bill = settle_request(patient, 4_000)
        done = _resent(lambda: stub.Settle(bill, timeout=T)).result
        assert done.acct_pay_fen == 4_000
        assert balance(stub, patient) == 6_000
    r.close()


def _process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _claim_state(r: Any, request_id: str) -> str:
    return (r.hget(f"{K.ns}:{{rid:{request_id}}}", "state") or b"").decode()


def _resent(call: Callable[[], _R], timeout: float = 20) -> _R:
    """`call`, sent again while it answers UNAVAILABLE (the answer that says "resend with the same request
    id": the registry's client may still be reconnecting to the master just restarted)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _until(check: Callable[[], bool], timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_a_bind_whose_answer_was_not_recorded_is_answered_by_recovery(topo: Topology):
    """The bind wrote its binding and read its people again; the master of its request id's claim dies
    as it records its answer. Its recovery entry must outlive the claim in progress: the loop answers
    the id with the binding (a replay gets it, the same id with another member is refused), instead of
    the entry being withdrawn while the answer was lost, which left the id in progress for good."""
    cluster = topo.redis
    assert isinstance(cluster, RedisCluster)
    r = sync_client(cluster.url)
    port_of = lambda key: int(r.get_node_from_key(key).port)  # noqa: E731
    keep = {port_of(K.open_settlements()), port_of(K.binding("a", "b"))}
    victim = next(n for n in cluster.nodes if n.port not in keep)
    proc = topo.restart("registry-13", {"MEDAID_FAULT": "stop:bind.after_write"}).proc
    with grpc.insecure_channel(topo.address("registry-13"), options=[("grpc.enable_retries", 0)]) as ch:
        stub = pb_grpc.RegistryServiceStub(ch)
        people = iter(lambda: enroll(stub, name="张伟"), None)
        helper = next(p for p in people if port_of(K.person(p)) != victim.port)
        child = next(p for p in iter(lambda: enroll(stub, itype=cpb.INSURANCE_TYPE_RESIDENT, birth="20150101"), None)
                     if port_of(K.person(p)) != victim.port)
        request_id = next(s for s in iter(lambda: rid("bind"), None) if port_of(f"{K.ns}:{{rid:{s}}}") == victim.port)
        req = pb.BindMutualAidRequest(request_id=request_id, helper_id_number=helper, member_id_number=child,
                                      relation=cpb.RELATION_CHILD, member_verification=FACE)
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            sent = pool.submit(stub.BindMutualAid, req, timeout=3 * T)
            try:
                assert _until(lambda: _process_state(proc.pid) == "T", 10), sent
                victim.kill()  # the claim's master dies before the answer is recorded
            finally:
                proc.send_signal(signal.SIGCONT)
            with pytest.raises(grpc.RpcError) as err:
                sent.result(timeout=3 * T)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
        victim.start()
        cluster.wait_ok(30)
        # The recovery loop (grace 0.5 s) answers the id with the binding, and leaves no entry.
        assert _until(lambda: _claim_state(r, request_id) == "DONE"), \
            f"the id is left in progress with no recovery entry: {r.zrange(K.open_settlements(), 0, -1)}"
        assert _until(lambda: r.zcard(K.open_settlements()) == 0), r.zrange(K.open_settlements(), 0, -1)
        got = _resent(lambda: stub.BindMutualAid(req, timeout=T)).binding
        assert (got.helper_id_number, got.member_id_number, got.active) == (helper, child, True), got
        other = enroll(stub, itype=cpb.INSURANCE_TYPE_RESIDENT, birth="20160101")
        with pytest.raises(grpc.RpcError) as err:
            stub.BindMutualAid(pb.BindMutualAidRequest(
                request_id=request_id, helper_id_number=helper, member_id_number=other,
                relation=cpb.RELATION_CHILD, member_verification=FACE), timeout=T)
        assert (err.value.code(), reason(err.value)) == (grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
    r.close()


def test_a_bind_whose_recovery_entry_was_not_written_leaves_its_id_free(topo: Topology):
    """The master of the recovery index dies before a bind writes its entry: the bind writes nothing,
    and its request id must not stay claimed with nothing leading back to it. Once the master is back,
    the same id with corrected fields is judged afresh and binds."""
    cluster = topo.redis
    assert isinstance(cluster, RedisCluster)
    r = sync_client(cluster.url)
    port_of = lambda key: int(r.get_node_from_key(key).port)  # noqa: E731
    open_port = port_of(K.open_settlements())
    victim = next(n for n in cluster.nodes if n.port == open_port)
    with grpc.insecure_channel(topo.address("registry-13"), options=[("grpc.enable_retries", 0)]) as ch:
        stub = pb_grpc.RegistryServiceStub(ch)
        helper = next(p for p in iter(lambda: enroll(stub, name="张伟"), None) if port_of(K.person(p)) != open_port)
        kids = (p for p in iter(lambda: enroll(stub, itype=cpb.INSURANCE_TYPE_RESIDENT, birth="20150101"), None)
                if port_of(K.person(p)) != open_port)
        wrong, right = next(kids), next(kids)
        request_id = next(s for s in iter(lambda: rid("bind"), None) if port_of(f"{K.ns}:{{rid:{s}}}") != open_port)

        def bind_to(member: str) -> pb.BindMutualAidResponse:
            return stub.BindMutualAid(pb.BindMutualAidRequest(
                request_id=request_id, helper_id_number=helper, member_id_number=member,
                relation=cpb.RELATION_CHILD, member_verification=FACE), timeout=T)

        victim.kill()
        try:
            with pytest.raises(grpc.RpcError) as err:
                bind_to(wrong)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
        finally:
            victim.start()
            cluster.wait_ok(30)
        # Recovery passes (grace 0.5 s) over whatever the index holds, until it holds nothing.
        assert _until(lambda: r.zcard(K.open_settlements()) == 0), r.zrange(K.open_settlements(), 0, -1)
        assert not _resent(lambda: stub.ListBindings(pb.ListBindingsRequest(id_number=wrong, include_ended=True),
                                                     timeout=T)).as_member
        got = _resent(lambda: bind_to(right)).binding
        assert (got.member_id_number, got.active) == (right, True), got
        assert r.zcard(K.open_settlements()) == 0
    r.close()
