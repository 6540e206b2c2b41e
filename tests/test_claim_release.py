"""An attempt told to retry frees its request id's claim only as it took it (SPEC §7).

A request under `Idempotency.run` (no recovery entry) whose attempt created the claim and is then told to
retry (UNAVAILABLE) drops the claim, so that a resend is judged afresh. The attempt may have stalled
meanwhile while a resend of the same request, on another replica, found the claim in progress, drove the
request and recorded its answer: that claim is the resend's now. Two replicas on one Redis, driven step by
step by a fault hook.
"""

from __future__ import annotations

import concurrent.futures
import threading

import grpc
import pytest
from medaid.common.lock import FencedLocks
from medaid.registry.keys import Keys
from medaid.registry.v1 import registry_pb2 as pb
from support import RESIDENT, bind, enroll, reason, rid
from test_recovery_free_claim import WAIT_S, replica  # noqa: F401  (the fixture)

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
