"""A SettleBatch on a Redis Cluster whose master dies: each item gets its own outcome.

Items whose keys all live on healthy masters settle (or, while the client refreshes its view of the
cluster, answer a retryable UNAVAILABLE); items that need the dead master are answered with a
retryable UNAVAILABLE / STORE_UNAVAILABLE; once the master is back (from its AOF), resending the
batch settles each item exactly once (one debit each), and the settled ones replay their first
answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import pytest
import redis
import redis.cluster
from medaid.common.redis_client import client
from medaid.common.redis_server import RedisCluster
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry import policy as policy_mod
from medaid.registry.keys import Keys
from medaid.registry.service import Registry
from medaid.registry.v1 import registry_pb2 as pb
from support import new_id, test_clock

K = Keys("13")


@pytest.fixture
def cluster() -> Iterator[RedisCluster]:
    # A long node timeout: the survivors keep serving their slots while one master is down.
    # Five masters: one of them holds none of the keys every settlement shares ({open}, {bind},
    # {proxy}) and is not the client's default node (redis-py sends its topology questions there).
    c = RedisCluster(5, node_timeout_ms=60_000).start()
    try:
        yield c
    finally:
        c.cleanup()


def master_of(c: RedisCluster, key: str) -> int:
    rc = redis.cluster.RedisCluster(host="127.0.0.1", port=c.ports[0])
    try:
        return int(rc.get_node_from_key(key).port)
    finally:
        rc.close()


async def balance_of(reg: Registry, pid: str) -> int:
    """A person's balance, read again while the client finds its way back to a restarted master."""
    for _ in range(50):
        try:
            return int((await reg.get_person(pb.GetPersonRequest(id_number=pid))).person.balance_fen)
        except Exception:  # noqa: BLE001 - a stale connection right after the restart: read again
            await asyncio.sleep(0.2)
    raise AssertionError(f"{pid} unreadable after the restart")


def settle_keys(pid: str, sid: str) -> list[str]:
    """Every key a staged settlement of `pid` touches (one Redis slot each)."""
    return [K.person(pid), f"{K.ns}:{{rid:{sid}}}", K.settlement_index(sid), K.open_settlements(),
            K.helpers_of(pid), K.proxies_of_holder(pid)]


def test_a_dead_master_fails_only_the_items_that_need_it(cluster: RedisCluster) -> None:
    async def scenario() -> None:
        r = client(cluster.url)
        reg = Registry(r, policy_mod.load(policy_mod.find_policy_file("13")), clock=test_clock())
        assert reg.atomic is False  # a cluster takes the staged path
        await r.initialize()
        shared = {master_of(cluster, K.open_settlements()), master_of(cluster, K.helpers_of(new_id())),
                  master_of(cluster, K.proxies_of_holder(new_id())), int(r.get_default_node().port)}
        dead = next(p for p in cluster.ports if p not in shared)
        healthy: list[pb.SettleRequest] = []
        doomed: list[pb.SettleRequest] = []
        n = 0
        while len(healthy) < 3 or len(doomed) < 3:
            n += 1
            pid, sid = new_id(), f"batch-{n:04d}"
            homes = {master_of(cluster, key) for key in settle_keys(pid, sid)}
            group = doomed if dead in homes else healthy
            if len(group) >= 3:
                continue
            await reg.enroll(pb.EnrollPersonRequest(request_id=f"enroll-{n}", id_number=pid, name="赵六",
                                                    insurance_type=cpb.INSURANCE_TYPE_EMPLOYEE,
                                                    pooling_region="130100"))
            await reg.credit(pb.CreditAccountRequest(request_id=f"credit-{n}", id_number=pid, amount_fen=10_000,
                                                     kind=pb.CREDIT_KIND_MONTHLY_CONTRIBUTION))
            group.append(pb.SettleRequest(request_id=sid, patient_id_number=pid, amount_fen=2_500, use_account=True,
                                          category=cpb.CATEGORY_OUTPATIENT, institution_code="H13010100001"))
        node = next(x for x in cluster.nodes if x.port == dead)
        node.kill()
        batch = [x for pair in zip(healthy, doomed, strict=True) for x in pair]
        out = (await reg.settle_batch(pb.SettleBatchRequest(requests=batch))).outcomes
        # Each item its own outcome: settled, or a retryable STORE_UNAVAILABLE (the outcome is not known:
        # the same request id, resent or finished by the recovery loop, completes it exactly once). Items
        # that need the dead master always fail; items on healthy masters settle, unless the client's
        # topology refresh after the failure (redis-py) made them fail too, still retryably.
        for req, o in zip(batch, out, strict=True):
            if o.WhichOneof("outcome") == "response":
                assert req in healthy, (req.request_id, o)
                assert (o.response.result.acct_pay_fen, o.response.result.balance_after_fen) == (2_500, 7_500)
            else:
                assert (o.error.code, o.error.reason) == (grpc.StatusCode.UNAVAILABLE.value[0], "STORE_UNAVAILABLE")
        assert all(o.WhichOneof("outcome") == "error" for req, o in zip(batch, out, strict=True) if req in doomed)
        node.start()
        cluster.wait_ok()
        # Before any resend: a settled item was debited once; a retryable one once or not yet.
        for req, o in zip(batch, out, strict=True):
            expected = {7_500} if o.WhichOneof("outcome") == "response" else {7_500, 10_000}
            assert await balance_of(reg, req.patient_id_number) in expected, req.request_id
        # Clients resend what was retryable; right after the restart a resend may still meet a stale
        # connection or a node loading its AOF: again a retryable answer, never anything else.
        for _ in range(50):
            again = (await reg.settle_batch(pb.SettleBatchRequest(requests=batch))).outcomes
            for o in again:
                if o.WhichOneof("outcome") == "error":
                    assert (o.error.code, o.error.reason) == (grpc.StatusCode.UNAVAILABLE.value[0],
                                                              "STORE_UNAVAILABLE"), o
            if all(o.WhichOneof("outcome") == "response" for o in again):
                break
            await asyncio.sleep(0.2)
        assert all(o.WhichOneof("outcome") == "response" for o in again), again
        for first, second in zip(out, again, strict=True):
            if first.WhichOneof("outcome") == "response":
                assert second.response == first.response  # a replay: the first answer
        for req in batch:
            got = await reg.get_person(pb.GetPersonRequest(id_number=req.patient_id_number))
            assert got.person.balance_fen == 7_500  # one debit each
        await r.aclose()

    asyncio.run(scenario())
