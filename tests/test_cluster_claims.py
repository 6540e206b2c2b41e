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

import time
from collections.abc import Iterator

import grpc
import pytest
from medaid.common.redis_client import sync_client
from medaid.common.redis_server import RedisCluster
from medaid.registry.keys import Keys
from medaid.registry.v1 import registry_pb2 as pb
from medaid.registry.v1 import registry_pb2_grpc as pb_grpc
from medaid.topology import DEMO_CLOCK, Topology
from support import balance, credit, enroll, rid, settle_request

pytestmark = pytest.mark.slow

K = Keys("13")
T = 10.0


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
        time.sleep(2.0)  # recovery passes (grace 0.5 s) over whatever the index holds
        # Nothing was paid, and nothing holds the id: a 2601 of it voids it ...
        assert balance(stub, patient) == 10_000
        got = stub.CancelRequest(pb.CancelRequestRequest(request_id=rid("2601"), original_request_id=sid), timeout=T)
        assert got.outcome == "VOIDED", f"the id is left in progress with no recovery entry: {got}"
        # ... and a fresh id for the same bill settles once.
        done = stub.Settle(settle_request(patient, 4_000), timeout=T).result
        assert done.acct_pay_fen == 4_000
        assert balance(stub, patient) == 6_000
    r.close()
