"""A binding (SPEC §3) or a family place (§3b) written beside a life event (§5b) by a registry that
dies before it reads the people again: the recovery loop ends the place (SPEC §7: no half-done state
outlives recovery).

A bind, an invitation or a creation checks the people, then writes its place; a status change, a move
or a death writes the person, then ends the places it finds. When the event's search ran between the
check and the write, the writer reads the people again after its write and ends the place itself. Here
the writer's process is stopped (SIGSTOP) between its check and its write, the event is made on the
other replica (its search finds nothing), and the writer is let go, writes its place and is killed
(SIGKILL) before its second read. The other replica's recovery loop alone (no resend) must end the
place, return the shares to the fen, and leave nothing in the recovery index; a resend then changes
nothing. The request id is left answered as the writer would have answered (SPEC §7: a replay returns
the first answer, the same id with other fields is refused), never in progress for good.
"""

from __future__ import annotations

import concurrent.futures
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import fujian_replicas
import grpc
import pytest
from fujian_replicas import QUIET, RECOVER, T, process_state, started
from medaid.bench import money
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.keys import Keys
from medaid.registry.v1 import family_pb2 as fpb
from medaid.registry.v1 import registry_pb2 as pb
from medaid.registry.v1 import registry_pb2_grpc as pb_grpc
from support import FACE, RESIDENT, new_id, reason, rid

pytestmark = pytest.mark.slow

WHERE = {"13": ("130102", "130100"), "35": ("350203", "350200")}


class Env(fujian_replicas.Env):
    def enroll_in(self, province: str, funds: int = 0, itype: int = cpb.INSURANCE_TYPE_EMPLOYEE,
                  birth: str = "19800101") -> str:
        division, region = WHERE[province]
        pid = new_id(division, birth)
        s = self.stub(f"registry-{province}#2")
        s.EnrollPerson(pb.EnrollPersonRequest(request_id=rid("enroll"), id_number=pid, name="张三",
                                              insurance_type=itype, pooling_region=region), timeout=T)
        if funds:
            s.CreditAccount(pb.CreditAccountRequest(request_id=rid("credit"), id_number=pid, amount_fen=funds,
                                                    kind=pb.CREDIT_KIND_MONTHLY_CONTRIBUTION, period="202611"),
                            timeout=T)
            self.credited += funds
        return pid

    def settled_everywhere(self) -> None:
        """Money conserved to the fen, nothing in flight, nothing left in any recovery index."""
        with self.redis() as r:
            report = money.check(r, expected_credits_fen=self.credited)
            assert report.conserved and report.in_flight_fen == 0, report.as_dict()
            for province in WHERE:
                key = Keys(province).open_settlements()
                assert r.zcard(key) == 0, r.zrange(key, 0, -1)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    yield from started(Env, {f"registry-{p}#{n}": QUIET for p in WHERE for n in (1, 2)}, tuple(WHERE))


def _stopped(proc: Any, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while process_state(proc.pid) != "T":
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _written_then_killed(env: Env, province: str, before: str, after: str,
                         call: Callable[[pb_grpc.RegistryServiceStub], object], meanwhile: Callable[[], None]) -> None:
    """`call` sent once to replica #1, stopped at `before` (its checks done), `meanwhile` run on replica
    #2, then #1 let go: it writes, and dies at `after`."""
    instance = f"registry-{province}#1"
    env.restart(instance, {**QUIET, "MEDAID_FAULT": f"stop:{before},{after}"})
    proc = env.topo.services[instance].proc
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        sent = pool.submit(call, env.stub(instance, retries=False))
        try:
            assert _stopped(proc), sent
            meanwhile()
        finally:
            proc.send_signal(signal.SIGCONT)
        with pytest.raises(grpc.RpcError) as err:
            sent.result(timeout=3 * T)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL, f"{instance} should have died at {after}"
    env.restart(instance, QUIET)


def _claim(env: Env, province: str, request_id: str) -> str:
    """The state of a request id's claim ('' : none)."""
    with env.redis() as r:
        return (r.hget(f"{Keys(province).ns}:{{rid:{request_id}}}", "state") or b"").decode()


def _reused(call: Callable[[], object]) -> None:
    """The same id with other fields: refused."""
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert (err.value.code(), reason(err.value)) == (grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")


def _until(check: Callable[[], bool], timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _terminate(env: Env, province: str, pid: str) -> Callable[[], None]:
    def go() -> None:
        env.stub(f"registry-{province}#2").UpdatePersonStatus(pb.UpdatePersonStatusRequest(
            request_id=rid("status"), id_number=pid, status=cpb.PERSON_STATUS_TERMINATED), timeout=T)
    return go


@pytest.mark.parametrize("side", ["helper", "member"])
def test_a_binding_whose_writer_died_beside_a_termination_is_ended_by_recovery(env: Env, side: str):
    """河北 (BIND_AND_DEDUCT): the bind wrote its binding after the termination's search, and died."""
    helper = env.enroll_in("13", 10_000)
    child = env.enroll_in("13", itype=RESIDENT, birth="20150101")
    target = helper if side == "helper" else child
    req = pb.BindMutualAidRequest(request_id=rid("bind"), helper_id_number=helper, member_id_number=child,
                                  relation=cpb.RELATION_CHILD, member_verification=FACE)
    _written_then_killed(env, "13", "bind.before_write", "bind.after_write",
                         lambda s: s.BindMutualAid(req, timeout=T), _terminate(env, "13", target))
    s = env.stub("registry-13#2")

    def ended() -> list[tuple[str, bool, str]]:
        got = s.ListBindings(pb.ListBindingsRequest(id_number=child, include_ended=True), timeout=T).as_member
        return [(b.helper_id_number, b.active, b.end_reason) for b in got]

    env.restart("registry-13#2", RECOVER)
    try:
        assert _until(lambda: ended() == [(helper, False, f"{side.upper()}_TERMINATED")]), ended()
        assert not s.ListBindings(pb.ListBindingsRequest(id_number=child), timeout=T).as_member
        assert _until(lambda: env.redis().zcard(Keys("13").open_settlements()) == 0)
        # The id is answered as the bind would have answered (the binding, ended): a resend replays it
        # and binds nothing again; the same id with another member is refused.
        assert _claim(env, "13", req.request_id) == "DONE"
        again = s.BindMutualAid(req, timeout=T).binding
        assert (again.active, again.end_reason) == (False, f"{side.upper()}_TERMINATED"), again
        other = env.enroll_in("13", itype=RESIDENT, birth="20160101")
        _reused(lambda: s.BindMutualAid(pb.BindMutualAidRequest(
            request_id=req.request_id, helper_id_number=helper, member_id_number=other,
            relation=cpb.RELATION_CHILD, member_verification=FACE), timeout=T))
        assert ended() == [(helper, False, f"{side.upper()}_TERMINATED")]
        assert not s.ListBindings(pb.ListBindingsRequest(id_number=other, include_ended=True), timeout=T).as_member
        env.settled_everywhere()
    finally:
        env.restart("registry-13#2", QUIET)


def test_a_family_place_whose_writer_died_beside_the_invitees_end_is_ended_by_recovery(env: Env):
    """福建 (POOLED_ACCOUNT): a child under 16 joins at once; the invitation wrote the MEMBER place after
    the child's termination looked for places to end, and died. The account and its shares stay."""
    creator = env.enroll_in("35", 400_000)
    child = env.enroll_in("35", itype=RESIDENT, birth="20150101")
    s = env.stub("registry-35#2")
    fid = s.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
        request_id=rid("fam"), creator_id_number=creator, commitment=FACE, initial_transfer_fen=150_000),
        timeout=T).account.family_id
    req = fpb.InviteMemberRequest(request_id=rid("inv"), family_id=fid, creator_id_number=creator,
                                  member_id_number=child, relation=cpb.RELATION_CHILD)
    _written_then_killed(env, "35", "family.before_invite", "family.after_invite",
                         lambda st: st.InviteMember(req, timeout=T), _terminate(env, "35", child))

    def place() -> list[tuple[int, str]]:
        acct = env.account(fid)
        return [(m.state, m.end_reason) for m in acct.members if m.id_number == child]

    env.restart("registry-35#2", RECOVER)
    try:
        assert _until(lambda: place() == [(fpb.MEMBERSHIP_STATE_ENDED, "TERMINATED")]), place()
        with env.redis() as r:
            assert r.hgetall(Keys("35").families_of(child)) == {}
        acct = env.account(fid)
        assert (acct.state, acct.balance_fen) == ("ACTIVE", 150_000), acct
        assert env.balance(creator) == 250_000
        assert _until(lambda: env.redis().zcard(fujian_replicas.OPEN) == 0)
        # Answered as the invitation would have answered: the place ENDED; a replay invites no one again.
        assert _claim(env, "35", req.request_id) == "DONE"
        got = [m for m in s.InviteMember(req, timeout=T).account.members if m.id_number == child]
        assert [(m.state, m.end_reason) for m in got] == [(fpb.MEMBERSHIP_STATE_ENDED, "TERMINATED")]
        _reused(lambda: s.InviteMember(fpb.InviteMemberRequest(
            request_id=req.request_id, family_id=fid, creator_id_number=creator, member_id_number=child,
            relation=cpb.RELATION_CHILD, temporary=True), timeout=T))
        assert place() == [(fpb.MEMBERSHIP_STATE_ENDED, "TERMINATED")]
        env.settled_everywhere()
    finally:
        env.restart("registry-35#2", QUIET)


def test_a_family_account_whose_creator_ended_while_a_dead_writer_created_it_is_dissolved(env: Env):
    """The creation wrote the account after the creator's termination looked for accounts to dissolve,
    and died before reading the creator again: recovery dissolves it, and no fen moved. (A creation with
    an initial 划拨 judges the creator again under their lock, which the termination takes: it is
    refused HELPER_NOT_ACTIVE with nothing written, test_family_race.py.)"""
    creator = env.enroll_in("35", 400_000)
    req = fpb.CreateFamilyAccountRequest(request_id=rid("fam"), creator_id_number=creator, commitment=FACE)
    _written_then_killed(env, "35", "family.before_create", "family.after_create",
                         lambda st: st.CreateFamilyAccount(req, timeout=T), _terminate(env, "35", creator))
    k = Keys("35")

    def mine() -> list[str]:
        with env.redis() as r:
            fids = sorted(f.decode() for f in r.smembers(k.family_index())
                          if r.hget(k.family(f.decode()), "creator") == creator.encode())
        return [env.account(fid).state for fid in fids]

    env.restart("registry-35#2", RECOVER)
    try:
        assert _until(lambda: mine() == ["DISSOLVED"]), mine()
        assert env.balance(creator) == 400_000
        assert _until(lambda: env.redis().zcard(fujian_replicas.OPEN) == 0)
        # Answered as the creation would have answered: the account DISSOLVED, no 划拨; a replay creates
        # nothing, and the same id with another amount is refused.
        assert _claim(env, "35", req.request_id) == "DONE"
        s = env.stub("registry-35#2")
        assert s.CreateFamilyAccount(req, timeout=T).account.state == "DISSOLVED"
        _reused(lambda: s.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
            request_id=req.request_id, creator_id_number=creator, commitment=FACE, initial_transfer_fen=30_000),
            timeout=T))
        assert mine() == ["DISSOLVED"] and env.balance(creator) == 400_000
        env.settled_everywhere()
    finally:
        env.restart("registry-35#2", QUIET)


def _nothing_meanwhile() -> None:
    pass


def test_a_bind_whose_writer_died_alone_is_answered_by_recovery(env: Env):
    """No event: the binding stands. The loop leaves the id answered with it (never in progress for
    good): a resend replays the binding, the same id with another member is refused."""
    helper = env.enroll_in("13", 10_000)
    child = env.enroll_in("13", itype=RESIDENT, birth="20150101")
    req = pb.BindMutualAidRequest(request_id=rid("bind"), helper_id_number=helper, member_id_number=child,
                                  relation=cpb.RELATION_CHILD, member_verification=FACE)
    _written_then_killed(env, "13", "bind.before_write", "bind.after_write",
                         lambda st: st.BindMutualAid(req, timeout=T), _nothing_meanwhile)
    assert _claim(env, "13", req.request_id) == "PENDING"
    s = env.stub("registry-13#2")
    env.restart("registry-13#2", RECOVER)
    try:
        assert _until(lambda: env.redis().zcard(Keys("13").open_settlements()) == 0)
        assert _claim(env, "13", req.request_id) == "DONE"
        got = s.BindMutualAid(req, timeout=T).binding
        assert (got.helper_id_number, got.member_id_number, got.active) == (helper, child, True), got
        other = env.enroll_in("13", itype=RESIDENT, birth="20160101")
        _reused(lambda: s.BindMutualAid(pb.BindMutualAidRequest(
            request_id=req.request_id, helper_id_number=helper, member_id_number=other,
            relation=cpb.RELATION_CHILD, member_verification=FACE), timeout=T))
        assert not s.ListBindings(pb.ListBindingsRequest(id_number=other, include_ended=True), timeout=T).as_member
        env.settled_everywhere()
    finally:
        env.restart("registry-13#2", QUIET)


def test_a_creation_whose_writer_died_alone_is_answered_by_recovery(env: Env):
    """No event: the account stands, written holding its initial 划拨 (debited from the creator first),
    the writer dead before it finished the 划拨 and read the creator again. The loop finishes the 划拨
    and answers the id with the account as it stands: a resend replays it, a resend with another amount
    is refused; the creator was debited once."""
    creator = env.enroll_in("35", 400_000)
    req = fpb.CreateFamilyAccountRequest(request_id=rid("fam"), creator_id_number=creator, commitment=FACE,
                                         initial_transfer_fen=30_000)
    _written_then_killed(env, "35", "family.before_create", "family.after_create",
                         lambda st: st.CreateFamilyAccount(req, timeout=T), _nothing_meanwhile)
    assert _claim(env, "35", req.request_id) == "PENDING"
    s = env.stub("registry-35#2")
    env.restart("registry-35#2", RECOVER)
    try:
        assert _until(lambda: env.redis().zcard(fujian_replicas.OPEN) == 0)
        assert _claim(env, "35", req.request_id) == "DONE"
        acct = s.CreateFamilyAccount(req, timeout=T).account
        assert (acct.state, acct.balance_fen) == ("ACTIVE", 30_000), acct
        _reused(lambda: s.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
            request_id=req.request_id, creator_id_number=creator, commitment=FACE, initial_transfer_fen=20_000),
            timeout=T))
        assert env.balance(creator) == 370_000 and env.account(acct.family_id).balance_fen == 30_000
        env.settled_everywhere()
    finally:
        env.restart("registry-35#2", QUIET)


def test_a_bind_resent_after_a_side_ended_before_recovery_is_answered_with_its_binding(env: Env):
    """The bind wrote its binding after the helper's termination looked for bindings, and died; the
    client resends the same request before the recovery loop ran. The resend finds its own binding: it
    ends it as the loop would and answers it (ended), instead of being refused at the people check
    (HELPER_NOT_ACTIVE) and freeing an id whose binding stands."""
    helper = env.enroll_in("13", 10_000)
    child = env.enroll_in("13", itype=RESIDENT, birth="20150101")
    req = pb.BindMutualAidRequest(request_id=rid("bind"), helper_id_number=helper, member_id_number=child,
                                  relation=cpb.RELATION_CHILD, member_verification=FACE)
    _written_then_killed(env, "13", "bind.before_write", "bind.after_write",
                         lambda st: st.BindMutualAid(req, timeout=T), _terminate(env, "13", helper))
    s = env.stub("registry-13#2")  # QUIET: no recovery pass
    got = s.BindMutualAid(req, timeout=T).binding
    assert (got.helper_id_number, got.active, got.end_reason) == (helper, False, "HELPER_TERMINATED"), got
    assert _claim(env, "13", req.request_id) == "DONE"
    assert env.redis().zcard(Keys("13").open_settlements()) == 0
    assert s.BindMutualAid(req, timeout=T).binding == got
    other = env.enroll_in("13", itype=RESIDENT, birth="20160101")
    _reused(lambda: s.BindMutualAid(pb.BindMutualAidRequest(
        request_id=req.request_id, helper_id_number=helper, member_id_number=other,
        relation=cpb.RELATION_CHILD, member_verification=FACE), timeout=T))
    assert not s.ListBindings(pb.ListBindingsRequest(id_number=child), timeout=T).as_member
    env.settled_everywhere()


def test_an_invitation_resent_after_the_invitee_ended_before_recovery_is_answered_with_its_place(env: Env):
    """The invitation wrote the MEMBER place after the child's termination looked for places, and died;
    the resend, before any recovery pass, ends the place as the loop would and answers it (ENDED)."""
    creator = env.enroll_in("35", 400_000)
    child = env.enroll_in("35", itype=RESIDENT, birth="20150101")
    s = env.stub("registry-35#2")
    fid = s.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
        request_id=rid("fam"), creator_id_number=creator, commitment=FACE, initial_transfer_fen=150_000),
        timeout=T).account.family_id
    req = fpb.InviteMemberRequest(request_id=rid("inv"), family_id=fid, creator_id_number=creator,
                                  member_id_number=child, relation=cpb.RELATION_CHILD)
    _written_then_killed(env, "35", "family.before_invite", "family.after_invite",
                         lambda st: st.InviteMember(req, timeout=T), _terminate(env, "35", child))
    got = [m for m in s.InviteMember(req, timeout=T).account.members if m.id_number == child]
    assert [(m.state, m.end_reason) for m in got] == [(fpb.MEMBERSHIP_STATE_ENDED, "TERMINATED")]
    assert _claim(env, "35", req.request_id) == "DONE"
    assert env.redis().zcard(fujian_replicas.OPEN) == 0
    _reused(lambda: s.InviteMember(fpb.InviteMemberRequest(
        request_id=req.request_id, family_id=fid, creator_id_number=creator, member_id_number=child,
        relation=cpb.RELATION_CHILD, temporary=True), timeout=T))
    with env.redis() as r:
        assert r.hgetall(Keys("35").families_of(child)) == {}
    acct = env.account(fid)
    assert (acct.state, acct.balance_fen) == ("ACTIVE", 150_000), acct
    assert env.balance(creator) == 250_000
    env.settled_everywhere()


def test_a_creation_resent_after_its_creator_ended_before_recovery_is_answered_dissolved(env: Env):
    """The creation wrote the account after the creator's termination looked for accounts, and died
    before reading the creator again; the resend, before any recovery pass, dissolves it as the loop
    would and answers it (DISSOLVED, no fen moved), instead of being refused and freeing the id."""
    creator = env.enroll_in("35", 400_000)
    req = fpb.CreateFamilyAccountRequest(request_id=rid("fam"), creator_id_number=creator, commitment=FACE)
    _written_then_killed(env, "35", "family.before_create", "family.after_create",
                         lambda st: st.CreateFamilyAccount(req, timeout=T), _terminate(env, "35", creator))
    s = env.stub("registry-35#2")
    acct = s.CreateFamilyAccount(req, timeout=T).account
    assert (acct.state, acct.balance_fen) == ("DISSOLVED", 0), acct
    assert _claim(env, "35", req.request_id) == "DONE"
    assert env.redis().zcard(fujian_replicas.OPEN) == 0
    _reused(lambda: s.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
        request_id=req.request_id, creator_id_number=creator, commitment=FACE, initial_transfer_fen=30_000),
        timeout=T))
    assert env.balance(creator) == 400_000
    env.settled_everywhere()


def test_a_bind_whose_writer_died_before_its_write_leaves_its_id_free(env: Env):
    """The bind claimed its id, checked its people and died before it wrote anything. The recovery loop
    frees the id (never in progress for good, with nothing leading back to it): the same id with
    corrected fields is judged afresh and binds; the member first sent has no binding."""
    helper = env.enroll_in("13", 10_000)
    wrong = env.enroll_in("13", itype=RESIDENT, birth="20150101")
    right = env.enroll_in("13", itype=RESIDENT, birth="20160101")

    def bind_to(member: str) -> pb.BindMutualAidRequest:
        return pb.BindMutualAidRequest(request_id=req_id, helper_id_number=helper, member_id_number=member,
                                       relation=cpb.RELATION_CHILD, member_verification=FACE)

    req_id = rid("bind")
    env.crash("registry-13#1", "bind.before_write", lambda st: st.BindMutualAid(bind_to(wrong), timeout=T))
    env.restart("registry-13#1", QUIET)
    s = env.stub("registry-13#2")
    env.restart("registry-13#2", RECOVER)
    try:
        assert _until(lambda: _claim(env, "13", req_id) == ""), _claim(env, "13", req_id)
        assert env.redis().zcard(Keys("13").open_settlements()) == 0
        got = s.BindMutualAid(bind_to(right), timeout=T).binding
        assert (got.member_id_number, got.active) == (right, True), got
        assert not s.ListBindings(pb.ListBindingsRequest(id_number=wrong, include_ended=True), timeout=T).as_member
        env.settled_everywhere()
    finally:
        env.restart("registry-13#2", QUIET)
