"""The recovery loop frees a request id's claim only as it found it (SPEC §7, §6).

A bind takes no lock: it claims its id with its recovery entry, checks its people, takes both again
(`Context.hold`) and writes. The loop, finding nothing written under an entry older than the grace,
frees the id's claim with the entry. Two replicas on one Redis, driven step by step by fault hooks:

* a bind stalled past the grace takes its claim again between the loop's look at the claim and its
  delete, and writes: its claim must stay, so that no other request can take the id and write too;
* an entry an earlier attempt left behind (the resend that followed was refused) leads the loop to the
  id, which another request has taken since (a resend with corrected fields): that request's claim is
  not the entry's to free.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
import redis
import redis.asyncio as aioredis
from conftest import LoopThread, RunningRegistry, policy_for
from medaid.common.redis_server import RedisServer
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.context import InjectedFault
from medaid.registry.keys import Keys
from medaid.registry.service import Registry
from medaid.registry.v1 import family_pb2 as fpb
from medaid.registry.v1 import registry_pb2 as pb
from support import FACE, RESIDENT, credit, enroll, reason, rid

K = Keys("13")
WAIT_S = 20


class Replica:
    """A second registry of 河北 on the same Redis and clock, on a loop of its own: its recovery pass
    may wait in a fault hook while the first registry's request goes on."""

    def __init__(self, port: int, clock: Any, province: str = "13") -> None:
        self.lt = LoopThread()
        self.client = aioredis.Redis(host="127.0.0.1", port=port)
        self.registry = Registry(self.client, policy_for(province), clock=clock)

    def recover(self) -> Any:
        return self.lt.run(self.registry.recover())

    def close(self) -> None:
        self.lt.run(self.client.aclose())
        self.lt.stop()


@pytest.fixture
def replica(start_registry: Callable[..., RunningRegistry], redis_server: RedisServer
            ) -> Iterator[tuple[RunningRegistry, Replica]]:
    first = start_registry("13")
    second = Replica(redis_server.port, first.clock)
    try:
        yield first, second
    finally:
        first.registry.fault_hook = None
        second.close()


@pytest.fixture
def fj_replica(start_registry: Callable[..., RunningRegistry], redis_server: RedisServer
               ) -> Iterator[tuple[RunningRegistry, Replica]]:
    """The same two replicas, of 福建 (the pooled model: family accounts)."""
    first = start_registry("35")
    second = Replica(redis_server.port, first.clock, "35")
    try:
        yield first, second
    finally:
        first.registry.fault_hook = None
        second.close()


def _bind(request_id: str, helper: str, member: str) -> pb.BindMutualAidRequest:
    return pb.BindMutualAidRequest(request_id=request_id, helper_id_number=helper, member_id_number=member,
                                   relation=cpb.RELATION_CHILD, member_verification=FACE)


def _claim(rdb: redis.Redis, request_id: str) -> dict[bytes, bytes]:
    return rdb.hgetall(f"{K.ns}:{{rid:{request_id}}}")  # type: ignore[return-value]


def _rids(rdb: redis.Redis, helper: str, members: list[str], request_id: str) -> list[str]:
    """The members whose binding to `helper` request `request_id` wrote."""
    return [m for m in members if rdb.hget(K.binding(helper, m), "rid") == request_id.encode()]


def _reused(call: Callable[[], object]) -> None:
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert (err.value.code(), reason(err.value)) == (grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")


def test_a_bind_that_takes_its_claim_again_while_the_loop_frees_it_keeps_it(replica, rdb):
    """The bind claims its id and stalls past the grace before its write. The loop looks: the claim is
    in progress, the entry as it read it. Before the loop deletes the claim, the bind takes its entry and
    claim again and writes its binding. The claim must stay the bind's: answered with its binding, and
    the id refused to any other request (one effect per id)."""
    first, second = replica
    stub = first.stub
    helper = enroll(stub)
    credit(stub, helper, 10_000)
    child, other = enroll(stub, itype=RESIDENT, birth="20150101"), enroll(stub, itype=RESIDENT, birth="20160101")
    req_id = rid("bind")
    stalled, resume, written, passed = (threading.Event() for _ in range(4))

    def writer(point: str) -> None:
        if point == "bind.before_write" and not stalled.is_set():
            stalled.set()
            assert resume.wait(WAIT_S)
        elif point == "bind.after_write":
            written.set()
            assert passed.wait(WAIT_S)  # the loop's pass ends before the bind records its answer

    checked: list[str] = []

    def loop(point: str) -> None:
        if point == "recovery.claim_checked":
            checked.append(point)
            resume.set()  # the bind takes its claim again and writes, between the loop's look and its delete
            assert written.wait(WAIT_S)

    first.registry.fault_hook = writer
    second.registry.fault_hook = loop
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        sent = pool.submit(lambda: stub.BindMutualAid(_bind(req_id, helper, child), timeout=3 * WAIT_S))
        try:
            assert stalled.wait(WAIT_S), sent
            first.clock.advance(20_000)  # past the grace of 15 s
            second.recover()
        finally:
            resume.set()
            passed.set()
        got = sent.result(timeout=WAIT_S).binding
    assert checked, "the loop never found the bind's claim in progress: the test proves nothing"
    assert (got.member_id_number, got.active) == (child, True), got
    claim = _claim(rdb, req_id)
    assert claim.get(b"state") == b"DONE" and claim.get(b"fp"), claim
    _reused(lambda: stub.BindMutualAid(_bind(req_id, helper, other), timeout=WAIT_S))
    assert _rids(rdb, helper, [child, other], req_id) == [child]
    assert stub.BindMutualAid(_bind(req_id, helper, child), timeout=WAIT_S).binding == got
    assert rdb.zcard(K.open_settlements()) == 0


def test_an_entry_left_by_an_earlier_attempt_does_not_free_another_requests_claim(replica, rdb):
    """A bind's first attempt claims its id with its entry and dies before its write; its resend (the same
    fields) finds the entry standing and is refused (the member ended meanwhile): the claim goes, the
    first attempt's entry stays for the loop. The client sends the same id with a corrected member; that
    bind writes its binding and stalls before its answer. The loop then takes the old entry: it names
    the same operation and helper, but the claim is the corrected request's, which it must not free."""
    first, second = replica
    stub = first.stub
    helper = enroll(stub)
    credit(stub, helper, 10_000)
    wrong, right, third = (enroll(stub, itype=RESIDENT, birth=b) for b in ("20150101", "20160101", "20170101"))
    req_id = rid("bind")

    def died(point: str) -> None:
        if point == "bind.before_write":
            raise InjectedFault(point)

    first.registry.fault_hook = died
    with pytest.raises(grpc.RpcError):
        stub.BindMutualAid(_bind(req_id, helper, wrong), timeout=WAIT_S)
    first.registry.fault_hook = None
    left = [e for e in rdb.zrange(K.open_settlements(), 0, -1) if e.startswith(b"B|")]
    assert len(left) == 1 and wrong.encode() in left[0], left
    stub.UpdatePersonStatus(pb.UpdatePersonStatusRequest(
        request_id=rid("status"), id_number=wrong, status=cpb.PERSON_STATUS_TERMINATED), timeout=WAIT_S)
    with pytest.raises(grpc.RpcError) as err:  # the resend: refused, its claim dropped, the entry left
        stub.BindMutualAid(_bind(req_id, helper, wrong), timeout=WAIT_S)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value
    assert _claim(rdb, req_id) == {} and rdb.zscore(K.open_settlements(), left[0]) is not None

    first.clock.advance(20_000)  # the old entry is past the grace; the corrected request's is not
    stalled, passed = threading.Event(), threading.Event()

    def writer(point: str) -> None:
        if point == "bind.after_write":
            stalled.set()
            assert passed.wait(WAIT_S)

    first.registry.fault_hook = writer
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        sent = pool.submit(lambda: stub.BindMutualAid(_bind(req_id, helper, right), timeout=3 * WAIT_S))
        try:
            assert stalled.wait(WAIT_S), sent
            mine = _claim(rdb, req_id)
            assert mine.get(b"state") == b"PENDING", mine
            second.recover()
            assert _claim(rdb, req_id) == mine  # the corrected request's claim, as it was
        finally:
            passed.set()
        got = sent.result(timeout=WAIT_S).binding
    assert (got.member_id_number, got.active) == (right, True), got
    _reused(lambda: stub.BindMutualAid(_bind(req_id, helper, third), timeout=WAIT_S))
    assert _rids(rdb, helper, [wrong, right, third], req_id) == [right]
    assert rdb.zcard(K.open_settlements()) == 0


def test_a_bind_stalled_between_taking_its_claim_again_and_its_write_writes_nothing_once_freed(replica, rdb):
    """The bind takes its entry and claim again (`Context.hold`) and stalls past the grace before its
    write lands. The loop finds nothing written under the entry as it read it, frees the claim and
    withdraws the entry. The stalled write must then write nothing: else a binding stands with no claim
    and no entry, and the id, judged afresh, binds another member too (two effects for one id)."""
    first, second = replica
    stub = first.stub
    helper = enroll(stub)
    credit(stub, helper, 10_000)
    child, other = enroll(stub, itype=RESIDENT, birth="20150101"), enroll(stub, itype=RESIDENT, birth="20160101")
    req_id = rid("bind")
    stalled, resume = threading.Event(), threading.Event()

    def writer(point: str) -> None:
        if point == "place.before_write" and not stalled.is_set():
            stalled.set()
            assert resume.wait(WAIT_S)

    first.registry.fault_hook = writer
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        sent = pool.submit(lambda: stub.BindMutualAid(_bind(req_id, helper, child), timeout=3 * WAIT_S))
        try:
            assert stalled.wait(WAIT_S), sent
            first.clock.advance(20_000)  # past the grace of 15 s
            second.recover()
            assert _claim(rdb, req_id) == {}, "the loop did not free the claim: the test proves nothing"
        finally:
            resume.set()
        with pytest.raises(grpc.RpcError) as err:  # told to resend: nothing of it stands
            sent.result(timeout=WAIT_S)
    first.registry.fault_hook = None
    assert (err.value.code(), reason(err.value)) == (grpc.StatusCode.UNAVAILABLE, "LOCK_LOST"), err.value
    assert _rids(rdb, helper, [child], req_id) == [] and _claim(rdb, req_id) == {}
    assert rdb.zcard(K.open_settlements()) == 0
    # The id, free, judged afresh: the corrected request is the only binding it wrote.
    got = stub.BindMutualAid(_bind(req_id, helper, other), timeout=WAIT_S).binding
    assert (got.member_id_number, got.active) == (other, True), got
    assert _rids(rdb, helper, [child, other], req_id) == [other]
    claim = _claim(rdb, req_id)
    assert claim.get(b"state") == b"DONE" and claim.get(b"fp"), claim
    assert rdb.zcard(K.open_settlements()) == 0


def test_an_invitation_stalled_before_its_write_writes_nothing_once_its_claim_is_freed(fj_replica, rdb):
    """The family-account twin of the stalled bind: an invitation takes its entry and claim again and
    stalls past the grace before its write; the loop frees its id. The stalled write must write nothing,
    so that the id, judged afresh for another member, invites one member only."""
    from test_family import FJ, create

    first, second = fj_replica
    stub, fk = first.stub, Keys("35")
    creator = enroll(stub, **FJ)
    son, daughter = enroll(stub, birth="19900101", **FJ), enroll(stub, birth="19920101", **FJ)
    fid = create(stub, creator).family_id
    req_id = rid("inv")
    stalled, resume = threading.Event(), threading.Event()

    def invite(member: str) -> fpb.InviteMemberResponse:
        return stub.InviteMember(fpb.InviteMemberRequest(  # type: ignore[no-any-return]
            request_id=req_id, family_id=fid, creator_id_number=creator, member_id_number=member,
            relation=cpb.RELATION_CHILD), timeout=3 * WAIT_S)

    def writer(point: str) -> None:
        if point == "place.before_write" and not stalled.is_set():
            stalled.set()
            assert resume.wait(WAIT_S)

    first.registry.fault_hook = writer
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        sent = pool.submit(lambda: invite(son))
        try:
            assert stalled.wait(WAIT_S), sent
            first.clock.advance(20_000)
            second.recover()
            assert rdb.hgetall(f"{fk.ns}:{{rid:{req_id}}}") == {}, "the loop did not free the claim"
        finally:
            resume.set()
        with pytest.raises(grpc.RpcError) as err:  # told to resend: nothing of it stands
            sent.result(timeout=WAIT_S)
    first.registry.fault_hook = None
    assert (err.value.code(), reason(err.value)) == (grpc.StatusCode.UNAVAILABLE, "LOCK_LOST"), err.value
    assert not rdb.hexists(fk.family_members(fid), son) and rdb.zcard(fk.open_settlements()) == 0
    invite(daughter)  # the id, free, judged afresh
    assert sorted(m.decode() for m in rdb.hkeys(fk.family_members(fid))) == sorted([creator, daughter])


def test_a_holder_that_lost_its_lock_leaves_the_claim_a_resend_answered(fj_replica, rdb):
    """A 划拨 claims its id (a new claim), takes the contributor's lock and stalls past its lock's life
    before its debit. A resend of it (the same id and fields, on another replica) takes the lock, finds
    the claim in progress, debits, credits and records its answer. The first attempt's debit is then
    fenced off (LOCK_LOST): it must leave the claim as it stands, the resend's answered one, not delete
    it (else the id is free again and a corrected request with it moves money a second time)."""
    from test_family import FJ, create

    first, second = fj_replica
    stub, fk = first.stub, Keys("35")
    creator = enroll(stub, **FJ)
    credit(stub, creator, 300_000)  # 福建: a 划拨 takes only what stands above ¥2,000
    fid = create(stub, creator).family_id
    req_id = rid("xfer")
    req = fpb.TransferIntoFamilyAccountRequest(request_id=req_id, family_id=fid, contributor_id_number=creator,
                                               amount_fen=10_000)
    stalled, resume = threading.Event(), threading.Event()

    def writer(point: str) -> None:
        if point == "family.before_debit" and not stalled.is_set():
            stalled.set()
            assert resume.wait(WAIT_S)

    first.registry.fault_hook = writer
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        sent = pool.submit(lambda: stub.TransferIntoFamilyAccount(req, timeout=3 * WAIT_S))
        try:
            assert stalled.wait(WAIT_S), sent.exception()
            rdb.delete(f"{fk.person_tag(creator)}:lock")  # its lock's life ran out
            resent = second.lt.run(second.registry.transfer_into_family(req))
        finally:
            resume.set()
        with pytest.raises(grpc.RpcError) as err:
            sent.result(timeout=WAIT_S)
    first.registry.fault_hook = None
    assert (err.value.code(), reason(err.value)) == (grpc.StatusCode.UNAVAILABLE, "LOCK_LOST"), err.value
    claim = _claim_of(rdb, fk, req_id)
    assert claim.get(b"state") == b"DONE" and claim.get(b"fp"), claim
    assert stub.TransferIntoFamilyAccount(req, timeout=WAIT_S) == resent  # the first answer, replayed
    other = fpb.TransferIntoFamilyAccountRequest(request_id=req_id, family_id=fid, contributor_id_number=creator,
                                                 amount_fen=20_000)
    with pytest.raises(grpc.RpcError) as err:
        stub.TransferIntoFamilyAccount(other, timeout=WAIT_S)
    assert reason(err.value) == "IDEMPOTENCY_KEY_REUSED", err.value
    assert rdb.zcard(fk.open_settlements()) == 0


def _claim_of(rdb: redis.Redis, keys: Keys, request_id: str) -> dict[bytes, bytes]:
    return rdb.hgetall(f"{keys.ns}:{{rid:{request_id}}}")  # type: ignore[return-value]
