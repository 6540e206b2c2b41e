"""An unbind that meets a settlement of the same member (SPEC §3, §4): once the helper has been told
the binding ended, no settlement takes money from them for that member.

* Atomic path: the plan is made from what settle_read.lua read; if the helper is unbound before
  settle_apply.lua runs, the script finds the binding gone, writes nothing, and the bill is planned
  again without that helper.
* Staged path: a settlement plans and opens its record under the member's fenced lock; an unbind
  (or a helper's move to another 统筹区 where 共济 stays within one) takes the same lock, so it comes
  after a settlement that opened first (whose share stands) or before one that has not yet read the
  bindings.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
import redis
from conftest import policy_for
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.keys import Keys
from medaid.registry.v1 import registry_pb2 as pb
from support import RESIDENT, balance, bind, credit, enroll, rid, settle, total_balances

K = Keys("13")


def unbind(stub: Any, helper: str, member: str) -> pb.UnbindMutualAidResponse:
    return stub.UnbindMutualAid(pb.UnbindMutualAidRequest(
        request_id=rid("unbind"), helper_id_number=helper, member_id_number=member))


def active_helpers(stub: Any, member: str) -> list[str]:
    bindings = stub.ListBindings(pb.ListBindingsRequest(id_number=member)).as_member
    return [b.helper_id_number for b in bindings if b.active]


def test_a_helper_unbound_between_read_and_apply_is_not_charged(start_registry, rdb: redis.Redis):
    running = start_registry("13")  # 河北: the helper with the largest balance pays all or nothing
    stub, reg = running.stub, running.registry
    rich, other = enroll(stub), enroll(stub)
    child = enroll(stub, itype=RESIDENT, birth="20150101")
    credit(stub, rich, 50_000)
    credit(stub, other, 30_000)
    bind(stub, rich, child)
    bind(stub, other, child)
    before = total_balances(rdb)

    def unbound_meanwhile(point: str) -> None:
        # What unbind.lua does, written directly (a gRPC call would wait on this very event loop).
        if point == "settle.before_apply" and rdb.zscore(K.helpers_of(child), rich) is not None:
            rdb.zrem(K.members_of(rich), child)
            rdb.zrem(K.helpers_of(child), rich)
            rdb.hset(K.binding(rich, child), mapping={"active": "0", "end_reason": "UNBOUND"})

    reg.fault_hook = unbound_meanwhile
    sid = rid("settle")
    try:
        res = settle(stub, child, 12_000, request_id=sid)
    finally:
        reg.fault_hook = None
    assert [(c.helper_id_number, c.amount_fen) for c in res.helper_charges] == [(other, 12_000)]
    assert (balance(stub, rich), balance(stub, other)) == (50_000, 18_000)
    assert total_balances(rdb) == before - 12_000
    assert rdb.hget(K.applied(rich), sid) is None  # nothing was written on the unbound helper's side


def _unbind(stub: Any, helper: str, member: str) -> None:
    unbind(stub, helper, member)


def _helper_moves_region(stub: Any, helper: str, member: str) -> None:
    # Where 共济 stays within one 统筹区, the helper's move to another ends the binding (SPEC §5b).
    stub.MovePoolingRegion(pb.MovePoolingRegionRequest(request_id=rid("move"), id_number=helper,
                                                       pooling_region="130200"))


@pytest.mark.parametrize("end", [_unbind, _helper_moves_region])
def test_a_binding_ends_only_after_a_settlement_holding_the_members_lock(start_registry, rdb: redis.Redis,
                                                                         end: Callable[[Any, str, str], None]):
    stub = start_registry("13", policy=dataclasses.replace(policy_for("13"), cross_region_allowed=False)).stub
    helper = enroll(stub)
    child = enroll(stub, itype=RESIDENT, birth="20150101")
    bind(stub, helper, child)
    lock_key = f"{K.person_tag(child)}:lock"
    rdb.set(lock_key, "a-settlement-in-flight:1", px=60_000)  # what a staged settlement holds
    done: list[float] = []
    started = time.monotonic()
    worker = threading.Thread(target=lambda: (end(stub, helper, child), done.append(time.monotonic())))
    worker.start()
    time.sleep(0.5)
    assert not done and active_helpers(stub, child) == [helper]  # still waiting, nothing ended
    rdb.delete(lock_key)  # the settlement finishes
    worker.join(timeout=10)
    assert done and done[0] - started >= 0.5
    assert active_helpers(stub, child) == []
    assert not rdb.exists(lock_key)  # the ending let its own lock go


@pytest.mark.parametrize("side", ["member", "helper"])
def test_a_bind_that_meets_a_termination_leaves_no_binding_with_a_terminated_side(start_registry, rdb: redis.Redis,
                                                                                   side: str):
    """SPEC §3: bindings end when a side is TERMINATED. A status change writes the status under the
    person's lock, then ends the bindings it finds. A bind whose checks read the side ACTIVE may write
    its binding after that termination looked for bindings to end: the bind then ends it itself, with
    the reason the termination gives. Never an active binding with a TERMINATED side."""
    running = start_registry("13")
    stub, reg = running.stub, running.registry
    helper = enroll(stub)
    child = enroll(stub, itype=RESIDENT, birth="20150101")
    target = child if side == "member" else helper
    lock_key = f"{K.person_tag(target)}:lock"
    terminated: list[str] = []

    def terminated_meanwhile(point: str) -> None:
        # A termination between the bind's checks and its write, taking the lock as
        # UpdatePersonStatus does (a gRPC call would wait on this very event loop); the binding is
        # not written yet, so there is none for it to end.
        if point == "bind.before_write" and rdb.set(lock_key, "a-termination:1", nx=True, px=60_000):
            rdb.hset(K.person(target), "status", "TERMINATED")
            rdb.delete(lock_key)
            terminated.append(target)

    reg.fault_hook = terminated_meanwhile
    try:
        bind(stub, helper, child)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc
    finally:
        reg.fault_hook = None
    if not terminated:  # the termination had to wait for the bind: it comes now, and ends the binding
        stub.UpdatePersonStatus(pb.UpdatePersonStatusRequest(request_id=rid("status"), id_number=target,
                                                             status=cpb.PERSON_STATUS_TERMINATED))
    assert rdb.hget(K.person(target), "status") == b"TERMINATED"
    assert active_helpers(stub, child) == []
    assert rdb.zcard(K.members_of(helper)) == 0
    ended = stub.ListBindings(pb.ListBindingsRequest(id_number=child, include_ended=True)).as_member
    assert [(b.helper_id_number, b.active, b.end_reason) for b in ended] == \
        [(helper, False, f"{side.upper()}_TERMINATED")]
