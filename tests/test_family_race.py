"""Joining a pooled family account (SPEC §3b) while a life-cycle event (SPEC §5b) ends one of its
people, on real registries 62 甘肃 and 35 福建.

A status change, a move to another province or a death writes the person first (under the person's
lock), then ends the family memberships it finds: the accounts the person created are dissolved,
their shares returned, and every other membership of theirs ends. An invitation or a creation checks
the people, then writes the membership or the account in the `{fam}` slot: when the event's search
ran between that check and that write, the write must not leave a live membership (or an ACTIVE
account) for a person the event has already ended.

The event is written from the fault hook, taking the person's lock as the life-cycle flows do (a
gRPC call would wait on this very event loop); its search comes before the write, and finds nothing.
"""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
import redis
from conftest import policy_for
from medaid.common.scripts import lua_source
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.keys import Keys
from medaid.registry.v1 import family_pb2 as fpb
from support import FACE, RESIDENT, credit, enroll, reason, rid

PROVINCES = {"62": {"region": "620100", "division": "620102"},
             "35": {"region": "350200", "division": "350203"}}
# (status written, moved_to_province, the end reason the life-cycle flows give)
EVENTS = [("TERMINATED", "", "TERMINATED"), ("TERMINATED", "11", "MOVED"), ("DECEASED", "", "DECEASED")]


def event_meanwhile(rdb: redis.Redis, k: Keys, point: str, target: str, status: str, moved_to: str,
                    happened: list[str]) -> Any:
    def hook(at: str) -> None:
        lock_key = f"{k.person_tag(target)}:lock"
        if at == point and not happened and rdb.set(lock_key, "a-life-event:1", nx=True, px=60_000):
            rdb.hset(k.person(target), mapping={"status": status, "moved_to": moved_to})
            rdb.delete(lock_key)
            happened.append(target)
    return hook


def live_memberships(rdb: redis.Redis, k: Keys, pid: str) -> dict[bytes, bytes]:
    return rdb.hgetall(k.families_of(pid))


@pytest.mark.parametrize("province", sorted(PROVINCES))
@pytest.mark.parametrize("status,moved_to,why", EVENTS)
@pytest.mark.parametrize("age", ["child", "adult"])
def test_an_invitation_that_meets_the_end_of_the_invitee_leaves_no_membership(
        start_registry, rdb: redis.Redis, province: str, status: str, moved_to: str, why: str, age: str):
    """SPEC §3b, §5b: a terminated, moved or deceased person belongs to no family account. A child
    under 16 joins at once (MEMBER); an adult is INVITED, which also holds a place under the cap."""
    where, k = PROVINCES[province], Keys(province)
    running = start_registry(province)
    stub, reg = running.stub, running.registry
    creator = enroll(stub, **where)
    member = enroll(stub, itype=RESIDENT, birth="20150101" if age == "child" else "19990101", **where)
    fid = stub.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
        request_id=rid("fam"), creator_id_number=creator, commitment=FACE)).account.family_id
    happened: list[str] = []
    reg.fault_hook = event_meanwhile(rdb, k, "family.before_invite", member, status, moved_to, happened)
    try:
        stub.InviteMember(fpb.InviteMemberRequest(request_id=rid("inv"), family_id=fid, creator_id_number=creator,
                                                  member_id_number=member, relation=cpb.RELATION_CHILD))
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc
    finally:
        reg.fault_hook = None
    assert happened == [member]
    acct = stub.GetFamilyAccount(fpb.GetFamilyAccountRequest(family_id=fid)).account
    assert acct.state == "ACTIVE"
    rows = [(m.state, m.end_reason) for m in acct.members if m.id_number == member]
    assert rows in ([], [(fpb.MEMBERSHIP_STATE_ENDED, why)])
    assert live_memberships(rdb, k, member) == {}


@pytest.mark.parametrize("province", sorted(PROVINCES))
@pytest.mark.parametrize("status,moved_to,why", EVENTS)
@pytest.mark.parametrize("initial", [0, 30_000])
def test_an_account_whose_creator_ends_while_it_is_created_is_dissolved(
        start_registry, rdb: redis.Redis, province: str, status: str, moved_to: str, why: str, initial: int):
    """SPEC §3b: the account is dissolved automatically when the creator is TERMINATED, dies or moves
    province. A creation whose checks read the creator ACTIVE, written after the event looked for
    accounts to dissolve, leaves no ACTIVE account of that creator, and no fen moved."""
    where, k = PROVINCES[province], Keys(province)
    running = start_registry(province)
    stub, reg = running.stub, running.registry
    creator = enroll(stub, **where)
    credit(stub, creator, 300_000)
    happened: list[str] = []
    reg.fault_hook = event_meanwhile(rdb, k, "family.before_create", creator, status, moved_to, happened)
    try:
        stub.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
            request_id=rid("fam"), creator_id_number=creator, commitment=FACE, initial_transfer_fen=initial))
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc
    finally:
        reg.fault_hook = None
    assert happened == [creator]
    assert rdb.get(k.family_created_by(creator)) is None
    assert live_memberships(rdb, k, creator) == {}
    for fid in rdb.smembers(k.family_index()):
        acct = stub.GetFamilyAccount(fpb.GetFamilyAccountRequest(family_id=fid.decode())).account
        assert (acct.state, acct.end_reason, acct.balance_fen) == ("DISSOLVED", f"CREATOR_{why}", 0)
    assert int(rdb.hget(k.account(creator), "bal") or 0) == 300_000  # not one fen left the account


@pytest.mark.parametrize("mover,why", [("member", "MOVED_REGION"), ("creator", "CREATOR_MOVED_REGION")])
def test_an_invitation_that_meets_a_move_to_another_region_ends_the_place(
        start_registry, rdb: redis.Redis, mover: str, why: str):
    """SPEC §3b, §5b, where 共济 stays within one 统筹区 (cross_region_allowed = false): a move that
    parts creator and invitee ends the place the invitation wrote after the move looked for places
    to end; the account stays ACTIVE (the creator's move removes the member, it dissolves nothing)."""
    k = Keys("62")
    running = start_registry("62", policy=dataclasses.replace(policy_for("62"), cross_region_allowed=False))
    stub, reg = running.stub, running.registry
    creator = enroll(stub, **PROVINCES["62"])
    member = enroll(stub, itype=RESIDENT, birth="20150101", **PROVINCES["62"])
    fid = stub.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
        request_id=rid("fam"), creator_id_number=creator, commitment=FACE)).account.family_id
    target = member if mover == "member" else creator
    moved: list[str] = []

    def moved_meanwhile(at: str) -> None:
        lock_key = f"{k.person_tag(target)}:lock"
        if at == "family.before_invite" and not moved and rdb.set(lock_key, "a-move:1", nx=True, px=60_000):
            rdb.hset(k.person(target), mapping={"region": "620200", "region_rid": "a-move"})
            rdb.delete(lock_key)
            moved.append(target)

    reg.fault_hook = moved_meanwhile
    try:
        stub.InviteMember(fpb.InviteMemberRequest(request_id=rid("inv"), family_id=fid, creator_id_number=creator,
                                                  member_id_number=member, relation=cpb.RELATION_CHILD))
    finally:
        reg.fault_hook = None
    assert moved == [target]
    acct = stub.GetFamilyAccount(fpb.GetFamilyAccountRequest(family_id=fid)).account
    assert acct.state == "ACTIVE"
    assert [(m.state, m.end_reason) for m in acct.members if m.id_number == member] == \
        [(fpb.MEMBERSHIP_STATE_ENDED, why)]
    assert live_memberships(rdb, k, member) == {}


# --- creating an account and accepting an invitation: one rule, atomic with each write --------------


def _invited(stub: Any, where: dict[str, str]) -> tuple[str, str]:
    """A family account with an adult (an employee, who may create one) invited into it: (fid, adult)."""
    creator, adult = enroll(stub, **where), enroll(stub, birth="19990101", **where)
    fid = stub.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
        request_id=rid("fam"), creator_id_number=creator, commitment=FACE)).account.family_id
    stub.InviteMember(fpb.InviteMemberRequest(request_id=rid("inv"), family_id=fid, creator_id_number=creator,
                                              member_id_number=adult, relation=cpb.RELATION_SIBLING))
    return fid, adult


def _member_places(rdb: redis.Redis, k: Keys, pid: str) -> list[bytes]:
    return sorted(f for f, state in live_memberships(rdb, k, pid).items() if state == b"MEMBER")


@pytest.mark.parametrize("province", sorted(PROVINCES))
def test_an_acceptance_landing_while_the_same_person_creates_an_account_leaves_one_place(
        start_registry, rdb: redis.Redis, province: str):
    """SPEC §3b exclusivity (甘肃): the creator's first place is taken under the rule of every place
    (family_create.lua, as family_respond.lua: join_refusal). The person accepts an invitation after
    the creation was judged and before it is written: the creation is refused ALREADY_IN_ANOTHER_RELATION
    and writes nothing (no account, no drawn id). 福建 is not exclusive: both stand."""
    where, k = PROVINCES[province], Keys(province)
    running = start_registry(province)
    stub, reg = running.stub, running.registry
    fid, adult = _invited(stub, where)
    accepted: list[Any] = []

    def accept_meanwhile(at: str) -> None:
        if at == "family.before_create" and not accepted:
            accepted.append(rdb.eval(lua_source("medaid.registry", "family_respond"), 4,
                                     k.family(fid), k.family_members(fid), k.families_of(adult),
                                     k.family_history(fid),
                                     fid, adult, "1", running.clock.now_ms(), reg.policy.max_members,
                                     "1" if reg.policy.exclusive else "0", "acc-meanwhile"))

    reg.fault_hook = accept_meanwhile
    seq = rdb.get(k.family_seq())
    try:
        if reg.policy.exclusive:
            with pytest.raises(grpc.RpcError) as ei:
                stub.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
                    request_id=rid("fam"), creator_id_number=adult, commitment=FACE))
            assert (ei.value.code(), reason(ei.value)) == (grpc.StatusCode.FAILED_PRECONDITION,
                                                           "ALREADY_IN_ANOTHER_RELATION"), ei.value.details()
        else:
            own = stub.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
                request_id=rid("fam"), creator_id_number=adult, commitment=FACE)).account.family_id
    finally:
        reg.fault_hook = None
    assert accepted == [[b"OK", b"MEMBER"]]
    if reg.policy.exclusive:
        assert rdb.get(k.family_created_by(adult)) is None and rdb.get(k.family_seq()) == seq
        assert _member_places(rdb, k, adult) == [fid.encode()]
    else:
        assert _member_places(rdb, k, adult) == sorted([fid.encode(), own.encode()])


def test_concurrent_creation_and_acceptance_of_one_person_put_them_in_one_account(start_registry, rdb: redis.Redis):
    """SPEC §3b, 甘肃 exclusive: each of several invited adults creates an account and accepts the
    invitation at the same moment (two real calls in flight). Exactly one of the two succeeds; the other
    is refused ALREADY_IN_ANOTHER_RELATION; the person holds one MEMBER place, and an account whose
    creation was refused does not exist."""
    where, k = PROVINCES["62"], Keys("62")
    stub = start_registry("62").stub
    people = [_invited(stub, where) for _ in range(8)]

    def create(pid: str) -> str:
        return stub.CreateFamilyAccount(fpb.CreateFamilyAccountRequest(
            request_id=rid("fam"), creator_id_number=pid, commitment=FACE)).account.family_id

    def accept(fid: str, pid: str) -> str:
        req = fpb.RespondToInvitationRequest(request_id=rid("acc"), family_id=fid, member_id_number=pid,
                                             accept=True, verification=FACE)
        return stub.RespondToInvitation(req).account.family_id

    def outcome(fut: Any) -> str:
        try:
            return fut.result(timeout=30)
        except grpc.RpcError as exc:
            assert (exc.code(), reason(exc)) == (grpc.StatusCode.FAILED_PRECONDITION, "ALREADY_IN_ANOTHER_RELATION"), \
                exc.details()
            return ""

    with ThreadPoolExecutor(max_workers=2 * len(people)) as pool:
        go = threading.Barrier(2 * len(people))

        def at_once(call: Any, *args: str) -> str:
            go.wait(timeout=30)
            return call(*args)  # type: ignore[no-any-return]

        runs = [(pool.submit(at_once, create, pid), pool.submit(at_once, accept, fid, pid)) for fid, pid in people]
        results = [(outcome(c), outcome(a)) for c, a in runs]
    for (fid, pid), (created, joined) in zip(people, results, strict=True):
        assert bool(created) != bool(joined), (pid, created, joined)
        assert joined in ("", fid)
        won = created or joined
        assert _member_places(rdb, k, pid) == [won.encode()]
        assert rdb.get(k.family_created_by(pid)) == (created.encode() if created else None)
