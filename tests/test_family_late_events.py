"""A life event (SPEC §5b) whose follow-up is finished late in a pooled province (§3b, 62 甘肃): a
termination or a move whose wallet step did not get through is finished by a resend of the same request
id or by the recovery loop after the person was ACTIVE again (or moved back) and took a new place in a
family account. The late finish ends only the places the event stood for: a family account created
since, or a membership or invitation begun since, stays (as bindings do, test_lifecycle.py). Real
registries and wallet over gRPC (the `national` fixture)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from medaid.bench import money
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import family_pb2 as fpb
from medaid.registry.v1 import registry_pb2 as rpb
from support import RESIDENT, rid
from test_family import accept, account, create, huabo, invite, shares, state_of
from test_lifecycle import _dead_wallet
from test_wallet import Env

ACTIVE = cpb.PERSON_STATUS_ACTIVE
MEMBER, ENDED = fpb.MEMBERSHIP_STATE_MEMBER, fpb.MEMBERSHIP_STATE_ENDED


@pytest.fixture
def env(national: Any, rdb: Any) -> Env:
    return Env(national, rdb)


@pytest.fixture
def no_cross_region(env: Env) -> Any:
    ctx = env.n.registries["62"].registry.ctx
    original = ctx.policy
    ctx.policy = dataclasses.replace(original, cross_region_allowed=False)
    yield
    ctx.policy = original


def _with_the_wallet_down(env: Env, loop_thread: Any, call: Callable[[], Any]) -> None:
    """`call` (a life event) is written, but its wallet step does not get through (UNAVAILABLE): what
    follows is finished late, by a resend of the same request id or by the recovery loop."""
    reg = env.n.registries["62"].registry
    live, reg.wallet = reg.wallet, loop_thread.run(_dead_wallet())
    try:
        with pytest.raises(grpc.RpcError) as ei:
            call()
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        reg.wallet = live


def _terminate_with_the_wallet_down(env: Env, loop_thread: Any, pid: str) -> rpb.UpdatePersonStatusRequest:
    req = rpb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=pid, status=cpb.PERSON_STATUS_TERMINATED)
    _with_the_wallet_down(env, loop_thread, lambda: env.reg("62").UpdatePersonStatus(req))
    return req


def _recover(env: Env, loop_thread: Any) -> Any:
    return loop_thread.run(env.n.registries["62"].registry.recover())


def _conserved(env: Env) -> None:
    report = money.check(env.rdb)
    assert report.conserved, report.as_dict()


def test_a_termination_resent_late_leaves_a_family_account_created_since(env, loop_thread):
    """SPEC §3b, §5b: a creator's termination whose wallet step failed is resent after they were ACTIVE
    again, dissolved their old account and created a new one with a member and a share: the resend
    leaves the new account as it is (it was never the termination's), and replays its answer."""
    gs = env.reg("62")
    creator = env.person("62", bal=100_000)
    child = env.person("62", itype=RESIDENT, birth="20150101")
    old = create(gs, creator).family_id
    req = _terminate_with_the_wallet_down(env, loop_thread, creator)
    env.clock.advance(60_000)
    env.set_status("62", creator, ACTIVE)
    gs.DissolveFamilyAccount(fpb.DissolveFamilyAccountRequest(request_id=rid("dis"), family_id=old,
                                                              creator_id_number=creator))
    env.clock.advance(60_000)
    new = create(gs, creator).family_id
    invite(gs, new, creator, child)
    huabo(gs, new, creator, 30_000)
    resp = gs.UpdatePersonStatus(req)
    acct = account(gs, new)
    assert acct.state == "ACTIVE" and shares(acct) == {creator: 30_000}
    assert state_of(acct, child) == MEMBER and state_of(acct, creator) == MEMBER
    assert account(gs, old).state == "DISSOLVED"
    assert gs.UpdatePersonStatus(req) == resp
    _conserved(env)


def test_a_termination_resent_late_ends_the_account_it_stood_for(env, loop_thread):
    """The rule keeps what the event stood for: the creator's account of the event's time is dissolved
    by the late resend (its shares home), though the creator was ACTIVE again meanwhile."""
    gs = env.reg("62")
    creator = env.person("62", bal=100_000)
    fid = create(gs, creator).family_id
    huabo(gs, fid, creator, 20_000)
    req = _terminate_with_the_wallet_down(env, loop_thread, creator)
    env.clock.advance(60_000)
    env.set_status("62", creator, ACTIVE)
    gs.UpdatePersonStatus(req)
    acct = account(gs, fid)
    assert acct.state == "DISSOLVED" and acct.end_reason == "CREATOR_TERMINATED" and acct.balance_fen == 0
    assert env.bal("62", creator) == 100_000
    _conserved(env)


def test_a_termination_the_loop_finishes_late_leaves_a_membership_begun_since(env, loop_thread):
    """SPEC §3b, §5b, §7: a member's termination is finished by the recovery loop after they were ACTIVE
    again, left their account and were invited again to it (and accepted): the new membership and their
    new share stay."""
    gs = env.reg("62")
    creator = env.person("62", bal=100_000, wallet=False)
    spouse = env.person("62", bal=50_000, birth="19820101")
    fid = create(gs, creator).family_id
    invite(gs, fid, creator, spouse, cpb.RELATION_SPOUSE)
    accept(gs, fid, spouse)
    req = _terminate_with_the_wallet_down(env, loop_thread, spouse)
    env.clock.advance(60_000)
    env.set_status("62", spouse, ACTIVE)
    gs.LeaveFamilyAccount(fpb.LeaveFamilyAccountRequest(request_id=rid("leave"), family_id=fid,
                                                        member_id_number=spouse))
    env.clock.advance(60_000)
    invite(gs, fid, creator, spouse, cpb.RELATION_SPOUSE)
    accept(gs, fid, spouse)
    assert _recover(env, loop_thread).lifecycle == 1
    assert state_of(account(gs, fid), spouse) == MEMBER
    assert gs.UpdatePersonStatus(req).person.status == ACTIVE
    assert state_of(account(gs, fid), spouse) == MEMBER
    _conserved(env)


def test_a_termination_resent_late_leaves_a_place_in_another_account_taken_since(env, loop_thread):
    """SPEC §3b, §5b: a person with no family account at their termination joins one once ACTIVE again;
    the late resend of the termination leaves them in it."""
    gs = env.reg("62")
    creator = env.person("62", bal=100_000, wallet=False)
    spouse = env.person("62", bal=50_000, birth="19820101")
    req = _terminate_with_the_wallet_down(env, loop_thread, spouse)
    env.clock.advance(60_000)
    env.set_status("62", spouse, ACTIVE)
    fid = create(gs, creator).family_id
    invite(gs, fid, creator, spouse, cpb.RELATION_SPOUSE)
    gs.UpdatePersonStatus(req)
    assert [(m.id_number, m.state) for m in account(gs, fid).members if m.id_number == spouse] == [
        (spouse, fpb.MEMBERSHIP_STATE_INVITED)]
    _conserved(env)


def test_a_move_the_loop_finishes_late_leaves_members_invited_back_in_the_old_region(
        env, loop_thread, no_cross_region):
    """SPEC §3b, §5b, §7: where 共济 stays within a 统筹区, a creator's move whose wallet step failed ended
    the member left behind; the creator moved back and invited another member there: the recovery loop
    finishing the first move leaves the new member, and a resend answers as the loop did."""
    gs = env.reg("62")
    creator = env.person("62", bal=100_000)
    first, second = (env.person("62", itype=RESIDENT, birth=b) for b in ("20150101", "20160101"))
    fid = create(gs, creator).family_id
    invite(gs, fid, creator, first)
    req = rpb.MovePoolingRegionRequest(request_id=rid("move"), id_number=creator, pooling_region="620200")
    _with_the_wallet_down(env, loop_thread, lambda: gs.MovePoolingRegion(req))
    env.clock.advance(60_000)
    gs.MovePoolingRegion(rpb.MovePoolingRegionRequest(request_id=rid("move"), id_number=creator,
                                                      pooling_region="620100"))
    invite(gs, fid, creator, second)
    assert _recover(env, loop_thread).lifecycle == 1
    acct = account(gs, fid)
    assert (state_of(acct, first), state_of(acct, second)) == (ENDED, MEMBER)
    gs.MovePoolingRegion(req)
    assert state_of(account(gs, fid), second) == MEMBER
    _conserved(env)
