"""Resharding a Redis Cluster under the services: a slot moved from one master to another (CLUSTER
SETSLOT IMPORTING / MIGRATING, MIGRATE of its keys, SETSLOT NODE), as `redis-cli --cluster reshard`
does when a master is added because one machine is outgrown.

While a slot migrates, its master answers a command on a key it no longer holds (moved already, or
never there) with an ASK redirection to the importing master, which serves it only after ASKING on
the same connection; a multi-key command whose keys are split between the two is answered TRYAGAIN
until the last of them has moved. A call meeting either is followed or retried: it is done, or
answered UNAVAILABLE / STORE_UNAVAILABLE for the caller to resend, never INTERNAL or UNKNOWN.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import grpc
import pytest
import redis
from medaid.common.lock import FencedLocks
from medaid.common.redis_client import client
from medaid.common.redis_server import RedisCluster, RedisServer
from medaid.common.scripts import lua_source
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.family_money import returns_entry
from medaid.registry.keys import Keys
from medaid.registry.v1 import family_pb2 as fpb
from medaid.topology import DEMO_CLOCK, Topology
from medaid.wallet.keys import WalletKeys
from medaid.wallet.v1 import wallet_pb2 as wpb
from support import FACE, Timeline, reason, rid
from test_cluster import Env, _family_35

T = 10.0
W = WalletKeys()


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    topo = Topology.start(provinces=("13", "11", "35"), router=False, gateway=False, cluster=True, cluster_replicas=0,
                          clock=DEMO_CLOCK)
    e = Env(topo, Timeline())
    try:
        yield e
    finally:
        e.close()
        topo.stop()


class Migration:
    """One slot on its way from the master holding it to another: begun (IMPORTING / MIGRATING), its keys
    moved by `move_keys`, ended by `finish` (every master told the new owner)."""

    def __init__(self, cluster: RedisCluster, key: str) -> None:
        self.cluster = cluster
        self.slot = redis.cluster.key_slot(key.encode())
        masters = cluster.masters_now()
        self.src = next(m for m in masters if self._owns(m))
        self.dst = next(m for m in masters if m is not self.src)
        self._ids = {m.port: self._run(m, "CLUSTER", "MYID") for m in (self.src, self.dst)}
        self._run(self.dst, "CLUSTER", "SETSLOT", self.slot, "IMPORTING", self._ids[self.src.port])
        self._run(self.src, "CLUSTER", "SETSLOT", self.slot, "MIGRATING", self._ids[self.dst.port])

    @staticmethod
    def _run(node: RedisServer, *args: object) -> object:
        c = node.connection(socket_timeout=5)
        try:
            reply = c.execute_command(*args)
            return reply.decode() if isinstance(reply, bytes) else reply
        finally:
            c.close()

    def _owns(self, node: RedisServer) -> bool:
        mine = self._run(node, "CLUSTER", "MYID")
        return any(int(r[0]) <= self.slot <= int(r[1]) and r[2][2].decode() == mine
                   for r in self._run(node, "CLUSTER", "SLOTS"))  # type: ignore[attr-defined]

    def keys_on(self, node: RedisServer) -> list[bytes]:
        return list(self._run(node, "CLUSTER", "GETKEYSINSLOT", self.slot, 1000))  # type: ignore[call-overload]

    def move_keys(self) -> int:
        keys = self.keys_on(self.src)
        if keys:
            self._run(self.src, "MIGRATE", "127.0.0.1", self.dst.port, "", 0, 5000, "KEYS", *keys)
        return len(keys)

    def finish(self) -> None:
        self.move_keys()
        for m in self.cluster.masters_now():
            self._run(m, "CLUSTER", "SETSLOT", self.slot, "NODE", self._ids[self.dst.port])


def test_a_transaction_on_a_slot_being_migrated_follows_the_ask_redirection(env: Env):
    """A MULTI/EXEC on keys that moved already (or were never there) is redirected with ASK: it runs on
    the importing master (ASKING first), and the client's slot map is not taken for moved."""
    async def go(m: Migration) -> list[object]:
        r = client(env.cluster.url)
        try:
            async with r.pipeline(transaction=True) as p:  # a key the migrating master never had
                p.hset("test:{mig}:new", mapping={"a": "1"})
                p.expire("test:{mig}:new", 600)
                new = await p.execute()
            async with r.pipeline(transaction=True) as p:  # keys moved already
                p.hincrby("test:{mig}:old", "n", 1)
                p.hgetall("test:{mig}:old")
                old = await p.execute()
            return [new, old, await r.hget("test:{mig}:old", "n")]
        finally:
            await r.aclose()

    env.r.hset("test:{mig}:old", "n", "1")
    m = Migration(env.cluster, "test:{mig}")
    try:
        assert m.move_keys() == 1
        assert asyncio.run(go(m)) == [[1, True], [2, {b"n": b"2"}], b"2"]
        assert sorted(m.keys_on(m.dst)) == [b"test:{mig}:new", b"test:{mig}:old"] and m.keys_on(m.src) == []
    finally:
        m.finish()
    assert env.r.hgetall("test:{mig}:old") == {b"n": b"2"}


def test_a_wallet_change_while_its_slot_is_split_is_answered_retryable_and_done_once_resent(env: Env):
    """ChangeUsePlace's scripts write a new key beside the wallet's: while the wallet's keys sit on the
    importing master and the slot still migrates, neither master may run them (TRYAGAIN). The call is
    answered UNAVAILABLE / STORE_UNAVAILABLE having written nothing; resent once the slot has moved, it
    is done, once."""
    son, _ = env.family()
    req = wpb.ChangeUsePlaceRequest(request_id=rid("up"), owner_id_number=son, use_place_admdvs="130200")
    m = Migration(env.cluster, W.wallet(son))
    try:
        assert m.move_keys() > 0
        before = {k: env.contents(k) for k in m.keys_on(m.dst)}
        with pytest.raises(grpc.RpcError) as ei:
            env.wallet.ChangeUsePlace(req, timeout=T)
        assert (ei.value.code(), reason(ei.value)) == (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE")
        assert {k: env.contents(k) for k in m.keys_on(m.dst)} == before and m.keys_on(m.src) == []
    finally:
        m.finish()
    assert env.wallet.ChangeUsePlace(req, timeout=T).wallet.use_place_admdvs == "130200"
    w = env.wallet.GetWallet(wpb.GetWalletRequest(owner_id_number=son), timeout=T).wallet
    assert w.use_place_admdvs == "130200"
    env.conserved()


def _family_keys(env: Env, fid: str) -> dict[str, object]:
    k = Keys("35")
    return {key: env.contents(key.encode()) for key in (k.family(fid), k.family_members(fid), k.family_shares(fid),
                                                        k.family_lots(fid), k.family_history(fid),
                                                        k.family_returns(fid), k.family_seq(), k.family_index())}


def test_family_end_meeting_a_moved_membership_list_stops_before_its_first_write(env: Env):
    """family_end.lua also ends the leaving member's entry in their list of family accounts (`of`). Run
    by a holder of the family's lock (taken before the `{fam}` slot began to migrate) after that list
    alone has moved to the importing master, it is refused (TRYAGAIN: its declared keys are split)
    before it writes: not stopped halfway with the share out of the account and the member still in
    it. Once the slot has moved, the same call ends the membership, once."""
    fj, fid, creator, son = _family_35(env)
    k = Keys("35")
    kid = env.person("35", birth="20150101")
    fj.InviteMember(fpb.InviteMemberRequest(request_id=rid("inv"), family_id=fid, creator_id_number=creator,
                                            member_id_number=kid, relation=cpb.RELATION_GRANDCHILD), timeout=T)
    fj.RemoveMember(fpb.RemoveMemberRequest(request_id=rid("rm"), family_id=fid, creator_id_number=creator,
                                            member_id_number=kid), timeout=T)  # the returns hash and fence stand
    lock, fence = FencedLocks.keys(k.family_lock_tag(fid))
    token = env.r.incr(fence)  # this caller holds the family's lock
    op = rid("leave")
    keys = [k.family(fid), k.family_members(fid), k.family_shares(fid), k.family_lots(fid), k.family_history(fid),
            k.family_returns(fid), fence, k.family_created_by(creator), k.families_of(son)]
    # what the caller judged the leaving on, read under the lock (family_end.lua answers AGAIN if it changed)
    args = ["LEAVE", fid, son, son, op, 1, "", token, son, "ACTIVE", env.r.hget(k.family_members(fid), son), ""]
    end = lua_source("medaid.registry", "family_end")
    m = Migration(env.cluster, k.family_tag())
    try:
        m._run(m.src, "MIGRATE", "127.0.0.1", m.dst.port, "", 0, 5000, "KEYS", k.families_of(son))
        before = _family_keys(env, fid)
        with pytest.raises(redis.exceptions.RedisError):  # TRYAGAIN until the client gives up
            env.r.eval(end, len(keys), *keys, *args)
        assert _family_keys(env, fid) == before
    finally:
        m.finish()
    assert env.r.eval(end, len(keys), *keys, *args) == [b"OK", f"PENDING|{son}:50000".encode()]
    assert env.r.eval(end, len(keys), *keys, *args)[0] == b"DUP"
    assert fid.encode() not in env.r.hgetall(k.families_of(son))
    assert json.loads(env.r.hget(k.family_members(fid), son))["state"] == "ENDED"
    # its share goes home as any leaving's does when its caller stops here: by the recovery loop
    env.r.zadd(k.open_settlements(), {returns_entry(fid, op): 0})
    deadline = time.monotonic() + 30
    while env.bal("35", son) != 300_000 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert env.bal("35", son) == 300_000
    env.conserved()


def test_a_family_creation_while_its_slot_migrates_writes_nothing_until_resent(env: Env):
    """family_create.lua writes the new account's keys, which the importing master would hold: while the
    `{fam}` slot migrates the creation is answered UNAVAILABLE having written nothing (not even a drawn
    id); resent once the slot has moved, it creates the account, once."""
    k = Keys("35")
    creator = env.person("35", bal=10_000)
    req = fpb.CreateFamilyAccountRequest(request_id=rid("fam"), creator_id_number=creator, commitment=FACE)
    fj = env.reg("35")
    m = Migration(env.cluster, k.family_tag())
    try:
        before = {key: env.contents(key) for key in m.keys_on(m.src) if b":lk:" not in key}
        with pytest.raises(grpc.RpcError) as ei:
            fj.CreateFamilyAccount(req, timeout=T)
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE, ei.value.details()
        assert {key: env.contents(key) for key in m.keys_on(m.src) if b":lk:" not in key} == before
        assert m.keys_on(m.dst) == []
    finally:
        m.finish()
    fid = fj.CreateFamilyAccount(req, timeout=T).account.family_id
    assert fj.CreateFamilyAccount(req, timeout=T).account.family_id == fid
    assert env.r.get(k.family_created_by(creator)) == fid.encode()
    env.conserved()
