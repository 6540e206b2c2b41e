"""A life event (SPEC §5b) in a pooled province (§3b, 62 甘肃) whose process dies, or whose Redis is
killed, after a family account's ending took the shares out of the account and before they were
credited to the contributors' personal accounts. The ending has already taken the account out of the
person's memberships, so what follows must find those shares another way: a resend with the same
request id, or the recovery loop alone, credits them before it answers, and a death pays them out
to the heir with the rest of the balance (SPEC §7: no half-done effect outlives recovery). Real
registries and wallet over gRPC (the `national` fixture), real Redis."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from medaid.bench import money
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.service import InjectedFault
from medaid.registry.v1 import registry_pb2 as rpb
from support import new_id, rid
from test_family import accept, account, create, invite
from test_wallet import Env

FUNDS, SHARE = 100_000, 20_000


@pytest.fixture
def env(national: Any, rdb: Any) -> Env:
    return Env(national, rdb)


@pytest.fixture
def short_locks(env: Env) -> Any:
    """Locks a killed process leaves behind run out in 0.5 s (not the default 10 s)."""
    ctx = env.n.registries["62"].registry.ctx
    original, ctx.lock_ttl_ms = ctx.lock_ttl_ms, 500
    yield
    ctx.lock_ttl_ms = original


def _family(env: Env) -> tuple[str, str, str]:
    """A 甘肃 creator with FUNDS, SHARE of it in their family account, and an adult son who joined."""
    gs = env.reg("62")
    creator = env.person("62", bal=FUNDS, wallet=False)
    son = env.person("62", birth="19900101", wallet=False)
    fid = create(gs, creator, initial_transfer_fen=SHARE).family_id
    invite(gs, fid, creator, son)
    accept(gs, fid, son)
    return creator, son, fid


def _cut_after_the_ending(env: Env, redis_server: Any, call: Any, *, kill_redis: bool) -> None:
    """`call` dies once family_end.lua has taken the shares out, before they are credited (the
    registry's process, and with `kill_redis` redis-server too, kill -9, then started again)."""
    reg = env.n.registries["62"].registry
    fired: list[str] = []

    def hook(point: str) -> None:
        if point == "family.after_end" and not fired:
            fired.append(point)
            if kill_redis:
                redis_server.kill()
            raise InjectedFault(point)

    reg.fault_hook = hook
    try:
        with pytest.raises(grpc.RpcError):
            call()
    finally:
        reg.fault_hook = None
    assert fired
    if kill_redis:
        redis_server.start()


def _settled(env: Env) -> None:
    report = money.check(env.rdb)
    assert report.conserved and report.in_flight_fen == 0, report.as_dict()
    assert not env.rdb.zrange(env.n.registries["62"].registry.k.open_settlements(), 0, -1)


@pytest.mark.parametrize("kill_redis", [False, True])
def test_a_death_resent_after_its_family_ending_was_cut_pays_the_share_to_the_heir(env, redis_server,
                                                                                   short_locks, kill_redis):
    creator, son, fid = _family(env)
    req = rpb.RecordDeathRequest(request_id=rid("death"), id_number=creator,
                                 heir_id_number=new_id("620102", "19850101"), date_of_death="20261121")
    _cut_after_the_ending(env, redis_server, lambda: env.reg("62").RecordDeath(req), kill_redis=kill_redis)
    resp = env.reg("62").RecordDeath(req)
    # The creator's 20,000 share came home before the payout: the heir got all 100,000.
    assert (resp.paid_out_fen, resp.person.paid_out_fen, resp.person.balance_fen) == (FUNDS, FUNDS, 0)
    acct = account(env.reg("62"), fid)
    assert (acct.state, acct.end_reason, acct.balance_fen) == ("DISSOLVED", "CREATOR_DECEASED", 0)
    assert env.reg("62").RecordDeath(req) == resp
    _settled(env)


def test_a_death_cut_after_its_family_ending_is_finished_by_the_loop_alone(env, redis_server, short_locks,
                                                                           loop_thread):
    creator, _, fid = _family(env)
    req = rpb.RecordDeathRequest(request_id=rid("death"), id_number=creator,
                                 heir_id_number=new_id("620102", "19850101"), date_of_death="20261121")
    _cut_after_the_ending(env, redis_server, lambda: env.reg("62").RecordDeath(req), kill_redis=True)
    env.clock.advance(120_000)
    loop_thread.run(env.n.registries["62"].registry.recover())
    _settled(env)
    # The loop answered the death as the request would have: the whole balance, share included.
    resp = env.reg("62").RecordDeath(req)
    assert (resp.paid_out_fen, resp.person.paid_out_fen) == (FUNDS, FUNDS)


def test_a_termination_resent_after_its_family_ending_was_cut_has_the_share_back(env, redis_server, short_locks):
    creator, _, fid = _family(env)
    req = rpb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=creator, status=cpb.PERSON_STATUS_TERMINATED)
    _cut_after_the_ending(env, redis_server, lambda: env.reg("62").UpdatePersonStatus(req), kill_redis=False)
    env.reg("62").UpdatePersonStatus(req)
    assert env.bal("62", creator) == FUNDS
    assert account(env.reg("62"), fid).state == "DISSOLVED"
    _settled(env)


def test_a_members_death_resent_after_their_removal_was_cut_leaves_nothing_open(env, redis_server,
                                                                                 short_locks):
    """A member's death removes them from the account (甘肃: a member holds no share): cut after the
    removal, the resend finishes it and leaves no entry behind; the account keeps the creator's share."""
    creator, son, fid = _family(env)
    req = rpb.RecordDeathRequest(request_id=rid("death"), id_number=son,
                                 heir_id_number=new_id("620102", "19850101"), date_of_death="20261121")
    _cut_after_the_ending(env, redis_server, lambda: env.reg("62").RecordDeath(req), kill_redis=False)
    env.reg("62").RecordDeath(req)
    acct = account(env.reg("62"), fid)
    assert (acct.state, acct.balance_fen) == ("ACTIVE", SHARE)
    _settled(env)
