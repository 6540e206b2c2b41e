"""An invitation or a creation in a pooled province (SPEC §3b, 62 甘肃) that meets an account ended
meanwhile: the creator's status change was written after the write's checks and before its second
read of the people (`end_if_ended`), which dissolves the account and returns the shares. That
ending is cut by a crash (the registry's process, and with it redis-server, killed) after
family_end.lua took the shares out and before they were credited. A resend with the same request
id, or the recovery loop alone, must credit every fen to its contributor, record an answer that
states the account as it ends, and leave no recovery entry open (SPEC §7). A death that follows an
ending cut so pays the share out to the heir with the rest of the balance. Real registries and
wallet over gRPC (the `national` fixture), real Redis."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from medaid.bench import money
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.keys import Keys
from medaid.registry.service import InjectedFault
from medaid.registry.v1 import family_pb2 as fpb
from medaid.registry.v1 import registry_pb2 as rpb
from support import FACE, RESIDENT, new_id, rid
from test_family import account, create
from test_wallet import Env

FUNDS, SHARE = 100_000, 20_000
K = Keys("62")


@pytest.fixture
def env(national: Any, rdb: Any) -> Env:
    return Env(national, rdb)


@pytest.fixture
def short_locks(env: Env) -> Any:
    ctx = env.n.registries["62"].registry.ctx
    original, ctx.lock_ttl_ms = ctx.lock_ttl_ms, 500
    yield
    ctx.lock_ttl_ms = original


def _cut(env: Env, redis_server: Any, call: Any, meanwhile_at: str, creator: str, status: str,
         kill_redis: bool) -> None:
    """`call` (an invitation or a creation) meets its creator's `status` written at `meanwhile_at`
    (after its write), and dies once its second read's ending took the shares out."""
    reg = env.n.registries["62"].registry
    fired: list[str] = []

    def hook(point: str) -> None:
        if point == meanwhile_at and not fired:
            fired.append(point)
            env.rdb.hset(K.person(creator), mapping={"status": status})
        elif point == "family.after_end" and fired == [meanwhile_at]:
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
    assert fired == [meanwhile_at, "family.after_end"]
    if kill_redis:
        redis_server.start()


def _settled(env: Env) -> None:
    report = money.check(env.rdb)
    assert report.conserved and report.in_flight_fen == 0, report.as_dict()
    assert not env.rdb.zrange(K.open_settlements(), 0, -1)


def _invite_req(fid: str, creator: str, child: str) -> fpb.InviteMemberRequest:
    return fpb.InviteMemberRequest(request_id=rid("inv"), family_id=fid, creator_id_number=creator,
                                   member_id_number=child, relation=cpb.RELATION_CHILD)


@pytest.mark.parametrize("kill_redis", [False, True])
def test_an_invitation_resent_after_its_dissolution_was_cut_has_the_share_home(env, redis_server, short_locks,
                                                                                kill_redis):
    gs = env.reg("62")
    creator = env.person("62", bal=FUNDS, wallet=False)
    child = env.person("62", itype=RESIDENT, birth="20150101", wallet=False)
    fid = create(gs, creator, initial_transfer_fen=SHARE).family_id
    req = _invite_req(fid, creator, child)
    _cut(env, redis_server, lambda: gs.InviteMember(req), "family.after_invite", creator, "TERMINATED", kill_redis)
    resp = gs.InviteMember(req)
    assert (resp.account.state, resp.account.balance_fen) == ("DISSOLVED", 0)
    assert env.bal("62", creator) == FUNDS
    assert gs.InviteMember(req) == resp
    _settled(env)


def test_an_invitation_cut_after_its_dissolution_is_finished_by_the_loop_alone(env, redis_server, short_locks,
                                                                               loop_thread):
    gs = env.reg("62")
    creator = env.person("62", bal=FUNDS, wallet=False)
    child = env.person("62", itype=RESIDENT, birth="20150101", wallet=False)
    fid = create(gs, creator, initial_transfer_fen=SHARE).family_id
    req = _invite_req(fid, creator, child)
    _cut(env, redis_server, lambda: gs.InviteMember(req), "family.after_invite", creator, "TERMINATED", True)
    env.clock.advance(120_000)
    loop_thread.run(env.n.registries["62"].registry.recover())
    _settled(env)
    assert env.bal("62", creator) == FUNDS
    resp = gs.InviteMember(req)
    assert (resp.account.state, resp.account.balance_fen) == ("DISSOLVED", 0)


@pytest.mark.parametrize("kill_redis", [False, True])
def test_a_creation_resent_after_its_dissolution_was_cut_has_the_money_home(env, redis_server, short_locks,
                                                                             kill_redis):
    gs = env.reg("62")
    creator = env.person("62", bal=FUNDS, wallet=False)
    req = fpb.CreateFamilyAccountRequest(request_id=rid("fam"), creator_id_number=creator, commitment=FACE,
                                         initial_transfer_fen=SHARE)
    _cut(env, redis_server, lambda: gs.CreateFamilyAccount(req), "family.after_create", creator, "TERMINATED",
         kill_redis)
    resp = gs.CreateFamilyAccount(req)
    assert (resp.account.state, resp.account.balance_fen) == ("DISSOLVED", 0)
    assert env.bal("62", creator) == FUNDS
    assert gs.CreateFamilyAccount(req) == resp
    _settled(env)


def test_a_creation_cut_after_its_dissolution_is_finished_by_the_loop_alone(env, redis_server, short_locks,
                                                                            loop_thread):
    gs = env.reg("62")
    creator = env.person("62", bal=FUNDS, wallet=False)
    req = fpb.CreateFamilyAccountRequest(request_id=rid("fam"), creator_id_number=creator, commitment=FACE,
                                         initial_transfer_fen=SHARE)
    _cut(env, redis_server, lambda: gs.CreateFamilyAccount(req), "family.after_create", creator, "TERMINATED",
         True)
    env.clock.advance(120_000)
    loop_thread.run(env.n.registries["62"].registry.recover())
    _settled(env)
    assert env.bal("62", creator) == FUNDS
    resp = gs.CreateFamilyAccount(req)
    assert (resp.account.state, resp.account.balance_fen) == ("DISSOLVED", 0)


def test_a_death_after_a_dissolution_was_cut_pays_the_share_to_the_heir(env, redis_server, short_locks):
    """The creator's 解散 is cut after the shares left the account; the creator then dies. The death
    finds the account dissolved, but the share on its way home is theirs: the heir is paid all of it."""
    gs = env.reg("62")
    creator = env.person("62", bal=FUNDS, wallet=False)
    fid = create(gs, creator, initial_transfer_fen=SHARE).family_id
    reg = env.n.registries["62"].registry

    def hook(point: str) -> None:
        if point == "family.after_end":
            raise InjectedFault(point)

    dissolve = fpb.DissolveFamilyAccountRequest(request_id=rid("dis"), family_id=fid, creator_id_number=creator)
    reg.fault_hook = hook
    try:
        with pytest.raises(grpc.RpcError):
            gs.DissolveFamilyAccount(dissolve)
    finally:
        reg.fault_hook = None
    env.clock.advance(2_000)
    death = rpb.RecordDeathRequest(request_id=rid("death"), id_number=creator,
                                   heir_id_number=new_id("620102", "19850101"), date_of_death="20261121")
    resp = gs.RecordDeath(death)
    assert (resp.paid_out_fen, resp.person.paid_out_fen, resp.person.balance_fen) == (FUNDS, FUNDS, 0)
    assert account(gs, fid).state == "DISSOLVED"
    # The 解散 resent is answered with the share it returned, credited once; nothing stays open.
    again = gs.DissolveFamilyAccount(dissolve)
    assert [(c.id_number, c.share_fen) for c in again.returned] == [(creator, SHARE)]
    assert gs.RecordDeath(death).paid_out_fen == FUNDS
    _settled(env)
