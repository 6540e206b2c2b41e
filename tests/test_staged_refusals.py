"""A Settle never done before, refused by a rule on the staged path, writes nothing anywhere.

The staged path (a Redis Cluster, a wallet share, a busy patient: `registry.atomic = False` here) takes
the patient's fenced lock, and every taking of it counts the patient's fence on (`…:fence`). A bill for a
patient who is not enrolled, whose insurance is SUSPENDED, or who moved to another 统筹区 than the one
the hospital names is refused by the patient rules (`Planner.payable`), judged on what the claim's round
trip read, before the lock: the refusal leaves every key as it was, the fence counter included, and a
resend once the cause is fixed settles.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from conftest import RunningRegistry
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import registry_pb2 as pb
from support import balance, credit, enroll, new_id, reason, rid, settle_request, snapshot


def _staged(start_registry: Callable[..., RunningRegistry]) -> Any:
    rr = start_registry("13")
    rr.registry.atomic = False
    return rr.stub


def _refused(call: Any, req: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as exc:
        call(req)
    return exc.value.code(), reason(exc.value)


def _status(stub: Any, pid: str, status: int) -> None:
    stub.UpdatePersonStatus(pb.UpdatePersonStatusRequest(request_id=rid("status"), id_number=pid, status=status))


def _move(stub: Any, pid: str, region: str) -> None:
    stub.MovePoolingRegion(pb.MovePoolingRegionRequest(request_id=rid("move"), id_number=pid,
                                                       pooling_region=region))


def _batch(stub: Any) -> Callable[[pb.SettleRequest], Any]:
    """SettleBatch of one item, raising its item error as Settle would."""
    def call(req: pb.SettleRequest) -> Any:
        out = stub.SettleBatch(pb.SettleBatchRequest(requests=[req])).outcomes[0]
        if out.HasField("error"):
            raise _ItemError(out.error.reason)
        return out.response
    return call


class _ItemError(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def test_a_staged_settle_for_a_suspended_patient_writes_nothing_not_even_the_fence(start_registry, rdb):
    stub = _staged(start_registry)
    pid = enroll(stub)
    credit(stub, pid, 5_000)
    _status(stub, pid, cpb.PERSON_STATUS_SUSPENDED)
    req = settle_request(pid, 1_000)
    before = snapshot(rdb)
    assert _refused(stub.Settle, req) == (grpc.StatusCode.FAILED_PRECONDITION, "MEMBER_NOT_INSURED")
    assert snapshot(rdb) == before
    with pytest.raises(_ItemError) as item:
        _batch(stub)(req)
    assert item.value.why == "MEMBER_NOT_INSURED"
    assert snapshot(rdb) == before
    # The cause fixed, the same request settles.
    _status(stub, pid, cpb.PERSON_STATUS_ACTIVE)
    assert stub.Settle(req).result.acct_pay_fen == 1_000
    assert balance(stub, pid) == 4_000


def test_a_staged_settle_for_an_unknown_patient_writes_nothing_not_even_the_fence(start_registry, rdb):
    stub = _staged(start_registry)
    enroll(stub)  # something in the store to compare
    req = settle_request(new_id(), 1_000)
    before = snapshot(rdb)
    assert _refused(stub.Settle, req) == (grpc.StatusCode.NOT_FOUND, "PERSON_NOT_FOUND")
    assert snapshot(rdb) == before


def test_a_staged_settle_for_a_patient_insured_elsewhere_writes_nothing_not_even_the_fence(start_registry, rdb):
    stub = _staged(start_registry)
    pid = enroll(stub)
    credit(stub, pid, 5_000)
    _move(stub, pid, "130200")
    req = settle_request(pid, 1_000)
    req.insured_region = "130100"  # where the patient was insured before the move
    before = snapshot(rdb)
    assert _refused(stub.Settle, req) == (grpc.StatusCode.FAILED_PRECONDITION, "INSURED_PLACE_MISMATCH")
    assert snapshot(rdb) == before
    fixed = pb.SettleRequest()
    fixed.CopyFrom(req)
    fixed.insured_region = "130200"
    assert stub.Settle(fixed).result.acct_pay_fen == 1_000


def test_a_patient_suspended_between_the_read_and_the_lock_is_refused_under_the_lock(start_registry, rdb):
    """The rare race: the patient read ACTIVE with the claim, SUSPENDED (as UpdatePersonStatus writes it)
    before the lock is taken. The same rule, run again under the lock, refuses the bill: no money moves,
    no claim, record or entry stays; only the patient's fence counter moved, as every taking of the lock
    moves it."""
    rr = start_registry("13")
    rr.registry.atomic = False
    stub = rr.stub
    pid = enroll(stub)
    credit(stub, pid, 5_000)
    person = rr.registry.k.person(pid)

    def suspend(point: str) -> None:
        if point == "settle.after_claim":
            rdb.hset(person, "status", "SUSPENDED")

    before = snapshot(rdb)
    rr.registry.fault_hook = suspend
    try:
        assert _refused(stub.Settle, settle_request(pid, 1_000)) == \
            (grpc.StatusCode.FAILED_PRECONDITION, "MEMBER_NOT_INSURED")
    finally:
        rr.registry.fault_hook = None
    after = snapshot(rdb)
    fence = rr.registry.k.fence(pid).encode()
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert changed == {person.encode(), fence}
    assert int(rdb.get(fence)) == int(before[fence][1]) + 1
    assert rdb.hget(person, "status") == b"SUSPENDED"
    assert balance(stub, pid) == 5_000
