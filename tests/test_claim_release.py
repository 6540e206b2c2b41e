"""An attempt told to retry frees its request id's claim only as it took it (SPEC §7).

A request under `Idempotency.run` (no recovery entry) whose attempt created the claim and is then told to
retry (UNAVAILABLE) drops the claim, so that a resend is judged afresh. The attempt may have stalled
meanwhile while a resend of the same request, on another replica, found the claim in progress, drove the
request and recorded its answer: that claim is the resend's now. Two replicas on one Redis, driven step by
step by a fault hook.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from medaid.common.lock import FencedLocks
from medaid.registry.keys import Keys
from medaid.registry.v1 import family_pb2 as fpb
from medaid.registry.v1 import registry_pb2 as pb
from support import RESIDENT, bind, credit, enroll, reason, rid
from test_recovery_free_claim import WAIT_S, fj_replica, replica  # noqa: F401  (the fixtures)

K = Keys("13")


def test_an_unbind_told_to_retry_keeps_the_answer_a_resend_recorded(replica, rdb):  # noqa: F811
    """An unbind claims its id (a new claim), reads the binding active and stalls before the member's
    lock. A resend of it (the same id and fields, on another replica) finds the claim in progress, ends
    the binding and records its answer. Another operation then holds the member's lock: the first attempt
    is told PATIENT_BUSY. It must leave the claim, the resend's answered one: a replay answers it, and the
    id sent with another member is refused, not judged afresh (else it ends a second binding)."""
    first, second = replica
    s = first.stub
    helper = enroll(s)
    m1, m2 = enroll(s, itype=RESIDENT, birth="20150101"), enroll(s, itype=RESIDENT, birth="20150101")
    bind(s, helper, m1)
    bind(s, helper, m2)
    req = pb.UnbindMutualAidRequest(request_id=rid("unbind"), helper_id_number=helper, member_id_number=m1)
    stalled, resume = threading.Event(), threading.Event()

    def writer(point: str) -> None:
        if point == "unbind.before_lock" and not stalled.is_set():
            stalled.set()
            assert resume.wait(WAIT_S)

    first.registry.fault_hook = writer
    locks = FencedLocks(second.client)
    lease = None
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        sent = pool.submit(lambda: s.UnbindMutualAid(req, timeout=3 * WAIT_S))
        try:
            assert stalled.wait(WAIT_S), sent.exception()
            resent = second.lt.run(second.registry.unbind(req))
            assert not resent.binding.active and resent.binding.end_reason == "UNBOUND"
            lease = second.lt.run(locks.acquire(K.person_tag(m1), 60_000, 1_000))  # another operation's
        finally:
            resume.set()
        with pytest.raises(grpc.RpcError) as err:
            sent.result(timeout=3 * WAIT_S)
    first.registry.fault_hook = None
    if lease is not None:
        second.lt.run(locks.release(lease))
    assert (err.value.code(), reason(err.value)) == (grpc.StatusCode.UNAVAILABLE, "PATIENT_BUSY"), err.value
    claim = rdb.hgetall(f"{K.ns}:{{rid:{req.request_id}}}")
    assert claim.get(b"state") == b"DONE" and claim.get(b"fp"), claim
    assert s.UnbindMutualAid(req) == resent  # the first answer, replayed
    other = pb.UnbindMutualAidRequest(request_id=req.request_id, helper_id_number=helper, member_id_number=m2)
    with pytest.raises(grpc.RpcError) as err:
        s.UnbindMutualAid(other)
    assert reason(err.value) == "IDEMPOTENCY_KEY_REUSED", err.value
    listed = s.ListBindings(pb.ListBindingsRequest(id_number=helper))
    assert [(b.member_id_number, b.active) for b in listed.as_helper if b.active] == [(m2, True)]


@pytest.mark.parametrize("resend_answered", [True, False], ids=["answered", "answering"])
def test_a_transfer_told_busy_keeps_the_claim_a_resend_took(fj_replica, rdb, resend_answered):  # noqa: F811
    """A 划拨 claims its id (a new claim, with its recovery entry) and stalls before the contributor's
    lock. A resend of it (the same id and fields, on another replica) finds the claim in progress, takes
    it again under the lock, debits and credits, and records its answer (`answered`), or is about to
    (`answering`). Another operation then holds the lock: the first attempt is told PATIENT_BUSY before
    any write of its own. It must leave the claim as the resend took it: a replay answers the resend's
    answer, and the id sent with another amount is refused, not judged afresh (else it moves money a
    second time); no answer is ever recorded without the request's fingerprint."""
    from test_family import FJ, create

    first, second = fj_replica
    stub, fk = first.stub, Keys("35")
    creator = enroll(stub, **FJ)
    credit(stub, creator, 300_000)  # 福建: a 划拨 takes only what stands above ¥2,000
    fid = create(stub, creator).family_id
    req = fpb.TransferIntoFamilyAccountRequest(request_id=rid("xfer"), family_id=fid, contributor_id_number=creator,
                                               amount_fen=10_000)
    stalled, resume, answering, answer = (threading.Event() for _ in range(4))

    def writer(point: str) -> None:
        if point == "family.after_transfer_entry" and not stalled.is_set():
            stalled.set()
            assert resume.wait(WAIT_S)

    def resend(point: str) -> None:
        if point == "flow.before_answer" and not resend_answered:
            answering.set()
            assert answer.wait(WAIT_S)

    first.registry.fault_hook = writer
    second.registry.fault_hook = resend
    lease = None

    def locks(call: Callable[[FencedLocks], Awaitable[Any]]) -> Any:
        """Another operation's use of the lock, on a loop of its own (the resend's may wait in its hook)."""
        async def go() -> Any:
            client = aioredis.Redis(host="127.0.0.1", port=rdb.connection_pool.connection_kwargs["port"])
            try:
                return await call(FencedLocks(client))
            finally:
                await client.aclose()
        return asyncio.run(go())

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        sent = pool.submit(lambda: stub.TransferIntoFamilyAccount(req, timeout=3 * WAIT_S))
        try:
            assert stalled.wait(WAIT_S), sent.exception()
            resending = pool.submit(lambda: second.lt.run(second.registry.transfer_into_family(req)))
            if not resend_answered:
                assert answering.wait(WAIT_S), resending.exception()
            else:
                resending.result(timeout=WAIT_S)
            lease = locks(lambda held: held.acquire(fk.person_tag(creator), 60_000, 1_000))  # another operation's
        finally:
            resume.set()
        with pytest.raises(grpc.RpcError) as err:
            sent.result(timeout=3 * WAIT_S)
        answer.set()
        resent = resending.result(timeout=WAIT_S)
    first.registry.fault_hook = second.registry.fault_hook = None
    if lease is not None:
        locks(lambda held: held.release(lease))
    assert (err.value.code(), reason(err.value)) == (grpc.StatusCode.UNAVAILABLE, "PATIENT_BUSY"), err.value
    claim = rdb.hgetall(f"{fk.ns}:{{rid:{req.request_id}}}")
    assert claim.get(b"state") == b"DONE" and claim.get(b"fp"), claim
    assert stub.TransferIntoFamilyAccount(req, timeout=WAIT_S) == resent  # the first answer, replayed
    other = fpb.TransferIntoFamilyAccountRequest(request_id=req.request_id, family_id=fid,
                                                 contributor_id_number=creator, amount_fen=20_000)
    with pytest.raises(grpc.RpcError) as err:
        stub.TransferIntoFamilyAccount(other, timeout=WAIT_S)
    assert reason(err.value) == "IDEMPOTENCY_KEY_REUSED", err.value
    assert stub.GetFamilyAccount(fpb.GetFamilyAccountRequest(family_id=fid)).account.balance_fen == 10_000
    assert rdb.zcard(fk.open_settlements()) == 0
