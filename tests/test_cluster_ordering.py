"""Index before effect on a Redis Cluster whose master is down.

A cluster applies a non-transactional pipeline master by master, in no order between them, and a
master that is down fails only its share. Where a flow writes an index that must be there before its
effect (the recovery loop's entry, the wallets index the clearing report reads, the wallet's in-flight
index of transfers) and the index's master is the one down, the effect must not be applied alone:

* a settlement must not open (and take the patient's own share) before its settlement index is
  written: until the recovery loop finished it, 5203 and 2208 would call it unknown;
* a 2208 reversal must not leave its settlement REVERSING with no entry for the registry's recovery
  loop (it would stay REVERSING for good unless the hospital resent it);
* a wallet must not be opened outside the wallets index (the monthly clearing would leave out what
  is spent from it, also after the opening is resent);
* a transfer must not reserve its sender's limits outside the in-flight index (the sender could send
  nothing until 06:00 the next day: the recovery loop, which gives a reservation back, finds none).

Each case: the master holding that index killed -9 (no replica: it stays down), the call answered
UNAVAILABLE having written nothing, the master started again from its AOF, the call resent. The
wallet's recovery loop waits 30 s (`recovery_grace_ms`), longer than a case runs, so what is found in
the wallet is what the call itself left; the registries' loops keep their 15 s default, and a resend
finishes under its own id whatever they did meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from medaid.common.redis_server import RedisServer
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.keys import Keys
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.topology import DEMO_CLOCK, Topology
from medaid.wallet.keys import WalletKeys
from medaid.wallet.v1 import wallet_pb2 as wpb
from support import FACE, RESIDENT, Timeline, reason, rid
from test_cluster import Env

T = 10.0
K, W = Keys("13"), WalletKeys()


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    topo = Topology.start(provinces=("13", "11"), router=False, gateway=False, cluster=True, cluster_replicas=0,
                          clock=DEMO_CLOCK, recovery_grace_ms=30_000)
    e = Env(topo, Timeline())
    try:
        yield e
    finally:
        e.close()
        topo.stop()


def master_of(env: Env, key: str) -> RedisServer:
    port = env.r.get_node_from_key(key).port
    return next(n for n in env.cluster.nodes if n.port == port)


def away_from(dead: RedisServer, env: Env, make: Callable[[], Any], *keys: Callable[[Any], str]) -> Any:
    """A fresh `make()` none of whose `keys` lives on the master `dead`."""
    for _ in range(200):
        x = make()
        if all(master_of(env, key(x)).port != dead.port for key in keys):
            return x
    raise AssertionError("no candidate away from the master")


def unavailable(call: Callable[[], Any]) -> None:
    with pytest.raises(grpc.RpcError) as ei:
        call()
    assert (ei.value.code(), reason(ei.value)) == (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE"), \
        ei.value.details()


def back(env: Env, node: RedisServer) -> None:
    node.start()
    env.cluster.wait_ok(30)


def resent(call: Callable[[], Any]) -> Any:
    """`call` until the services' cluster clients have found the restarted master again."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return call()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_a_settlement_never_opens_before_its_index(env: Env):
    shared = {master_of(env, key).port for key in (K.open_settlements(), K.helpers_of("x"), K.proxies_of_holder("x"),
                                                   K.recovery_tag() + ":x")}
    dead = next(n for n in env.cluster.nodes if n.port not in shared)
    member = away_from(dead, env, lambda: env.person("13", bal=1_000), K.person)
    sid = away_from(dead, env, lambda: rid("2207"), lambda r: f"{K.ns}:{{rid:{r}}}")
    while master_of(env, K.settlement_index(sid)).port != dead.port:
        sid = away_from(dead, env, lambda: rid("2207"), lambda r: f"{K.ns}:{{rid:{r}}}")
    dead.kill()
    try:
        unavailable(lambda: env.settle(member, 300, request_id=sid))
        assert not env.r.exists(K.settlement(member, sid)) and env.bal("13", member) == 1_000
    finally:
        back(env, dead)
    assert resent(lambda: env.settle(member, 300, request_id=sid)).acct_pay_fen == 300
    got = env.reg("13").GetSettlement(rpb.GetSettlementRequest(settlement_id=sid), timeout=T).result
    assert (got.state, got.acct_pay_fen, env.bal("13", member)) == ("SETTLED", 300, 700)


def test_a_reversal_never_begins_without_its_recovery_entry(env: Env):
    dead = master_of(env, K.open_settlements())
    member = away_from(dead, env, lambda: env.person("13", bal=1_000), K.person)
    helper = away_from(dead, env, lambda: env.person("13", bal=10_000), K.person)
    env.bind("13", helper, member, cpb.RELATION_SPOUSE)
    sid = away_from(dead, env, lambda: rid("2207"), K.settlement_index)
    env.settle(member, 4_000, request_id=sid)
    rev_id = away_from(dead, env, lambda: rid("2208"), lambda r: f"{K.ns}:{{rid:{r}}}")
    rev = rpb.ReverseSettlementRequest(request_id=rev_id, settlement_id=sid)
    dead.kill()
    try:
        unavailable(lambda: env.reg("13").ReverseSettlement(rev, timeout=T))
        assert env.r.hget(K.settlement(member, sid), "state") == b"SETTLED"
    finally:
        back(env, dead)
    got = resent(lambda: env.reg("13").ReverseSettlement(rev, timeout=T))
    assert (got.acct_refund_fen, got.mulaid_refund_fen) == (1_000, 3_000)
    assert [env.bal("13", p) for p in (member, helper)] == [1_000, 10_000]
    assert env.r.zrange(K.open_settlements(), 0, -1) == []


def test_a_wallet_is_never_opened_outside_the_wallets_index(env: Env):
    dead = master_of(env, W.wallets_index())
    son = away_from(dead, env, lambda: env.person("13", bal=100_000), W.wallet, lambda p: f"wal:{{s:{p}}}:x")
    mother = away_from(dead, env, lambda: env.person("11", itype=RESIDENT, birth="19550101"), W.wallet)
    env.wallet.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=son, province="13",
                                                use_place_admdvs="130100", real_name=FACE), timeout=T)
    opening = wpb.OpenWalletRequest(request_id=away_from(dead, env, lambda: rid("open"), lambda r: f"wal:{{rid:{r}}}"),
                                    owner_id_number=mother, province="11", use_place_admdvs="110000", real_name=FACE)
    dead.kill()
    try:
        unavailable(lambda: env.wallet.OpenWallet(opening, timeout=T))
        assert not env.r.exists(W.wallet(mother))
    finally:
        back(env, dead)
    resent(lambda: env.wallet.OpenWallet(opening, timeout=T))
    assert env.r.sismember(W.wallets_index(), mother)
    # What she spends is in the month's clearing (which reads the wallets index).
    env.accept(mother, env.send(son, mother, 2_000).transfer_id)
    env.wallet.SpendWallet(wpb.SpendWalletRequest(request_id=rid("spend"), owner_id_number=mother, amount_fen=500,
                                                  category=cpb.CATEGORY_OUTPATIENT, spending_admdvs="110000"),
                           timeout=T)
    report = env.wallet.GetClearingReport(wpb.GetClearingReportRequest(month="202611"), timeout=T)
    assert ("13", "11", 500) in [(x.sending_province, x.spending_province, x.amount_fen) for x in report.lines]


def test_a_transfer_never_reserves_its_senders_limits_outside_the_in_flight_index(env: Env):
    dead = master_of(env, W.inflight())
    son, mother = away_from(dead, env, env.family, lambda f: W.wallet(f[1]), lambda f: f"wal:{{s:{f[0]}}}:x")
    first = away_from(dead, env, lambda: rid("xfer"), lambda r: f"wal:{{rid:{r}}}", W.transfer_recipient)
    dead.kill()
    try:
        unavailable(lambda: env.send(son, mother, 1_000, tid=first))
        assert env.r.hgetall(W.reserved(son)) == {} and env.r.get(W.pending(son)) is None
    finally:
        back(env, dead)
    # Nothing holds the sender's one unaccepted transfer: another one goes through, then the first.
    # Resent under one id: an attempt answered UNAVAILABLE once it had reserved (a service still
    # finding the restarted master) is driven on by its resend, where a fresh id would be refused
    # PENDING_TRANSFER_EXISTS by that very attempt's reservation.
    other = rid("xfer")
    env.accept(mother, resent(lambda: env.send(son, mother, 2_000, tid=other)).transfer_id)
    assert env.accept(mother, env.send(son, mother, 1_000, tid=first).transfer_id).wallet.balance_fen == 3_000
    assert env.bal("13", son) == 97_000
    env.conserved()
