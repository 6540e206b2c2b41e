"""No half-done settlement outlives recovery (SPEC §7): a crash matrix for the settlement engine.

Every fault point of a staged settlement (own account + two helpers in turn; own account + wallet +
helper), of the atomic path and of a reversal of each, with two kinds of crash:

* registry: the registry dies between two steps (the fault hook raises InjectedFault);
* redis: redis-server is killed -9 between two steps (AOF, appendfsync always) and the registry dies
  with it; redis-server is restarted on the same port and data directory.

Then, without the client resending, a recovery pass (once the grace period has passed) must leave
every settlement complete (SETTLED, answered by GetSettlement and by a resend, which moves no
money) or undone (no record, no claim; a resend settles afresh), the open-settlements index empty,
and money conserved to the fen. A resend instead of the recovery pass converges the same way. A
holder paused past its lock and the grace, whose settlement the recovery pass finished meanwhile,
moves no more money when it resumes.

The 北京 registry (11: helpers in turn, 按备案顺序) runs on a loop thread of its own, so that a fault hook
can pause it (block its loop) while a second replica of it, on the shared loop with 河北 (13) and the
national wallet, runs the recovery pass as another replica would in production. Every service uses
the services' own Redis client (LeanRedis) on a redis-server of this module's own, which it kills.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import redis
from conftest import LoopThread, policy_for
from medaid.common.redis_client import client as redis_client
from medaid.common.redis_server import RedisServer
from medaid.common.server import Running, start_server
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.client import Registries
from medaid.registry.context import Context
from medaid.registry.records import ChargeDone, SettlementRecord, consumption_field, consumption_json
from medaid.registry.recovery import DEFAULT_GRACE_MS, RecoveryCounts
from medaid.registry.service import FAULT_POINTS, InjectedFault, Registry
from medaid.registry.servicer import register
from medaid.registry.v1 import registry_pb2 as pb
from medaid.registry.v1 import registry_pb2_grpc as pb_grpc
from medaid.registry.wallet_port import GrpcWallet
from medaid.wallet.service import Wallet
from medaid.wallet.servicer import register as register_wallet
from medaid.wallet.v1 import wallet_pb2 as wpb
from medaid.wallet.v1 import wallet_pb2_grpc as wpb_grpc
from support import FACE, bind, credit, enroll, reason, rid, snapshot, test_clock, total_balances

SETTLE_POINTS = [p for p in FAULT_POINTS if p.startswith("settle.")]
REVERSE_POINTS = [p for p in FAULT_POINTS if p.startswith("reverse.")]
KINDS = ("registry", "redis")
START_MS = test_clock().now_ms()
PLACE = {"13": "130100", "11": "110000"}
DIVISION = {"13": "130102", "11": "110105"}
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE

# What a settlement crashed at each point converges to once a recovery pass has run:
# undone (claimed, nothing written: the pass drops the claim), settled (OPEN: the pass finishes it),
# answered (already SETTLED and answered: nothing is left to recover).
SETTLE_OUTCOME = {
    "settle.after_claim": "undone",
    "settle.after_own_debit": "settled",
    "settle.after_wallet_debit": "settled",
    "settle.after_helper_debit": "settled",
    "settle.after_finish": "answered",
}
# A reversal crashed at each point: reversed by the recovery pass, or already reversed (the pass
# records its answer).
REVERSE_OUTCOME = {
    "reverse.after_begin": "reversed",
    "reverse.after_helper_refund": "reversed",
    "reverse.after_finish": "already reversed",
}
# Points at which the patient's lock is held and the open entry is still there: after a kill of
# redis-server the lock survives (its TTL is real time), so the first pass defers the entry.
HELD_WITH_ENTRY = {"settle.after_own_debit", "settle.after_wallet_debit", "settle.after_helper_debit",
                   "reverse.after_begin", "reverse.after_helper_refund"}


def test_every_settlement_and_reversal_fault_point_is_in_the_matrix():
    """A fault point added to the engine without a row here makes this fail."""
    engine_points = [p for p in FAULT_POINTS if p.startswith(("settle.", "reverse."))]
    assert sorted(SETTLE_OUTCOME) + sorted(REVERSE_OUTCOME) == sorted(SETTLE_POINTS) + sorted(REVERSE_POINTS)
    assert sorted(engine_points) == sorted(SETTLE_POINTS + REVERSE_POINTS)
    assert HELD_WITH_ENTRY <= set(engine_points)


# --- the world: 北京 (paused or crashed), its recovery replica, 河北 and the wallet ----------------


class World:
    def __init__(self, server: RedisServer, loop: LoopThread, bj_loop: LoopThread) -> None:
        self.server = server
        self.loop = loop
        self.bj_loop = bj_loop
        self.clock = test_clock()
        self.rdb = redis.Redis(host="127.0.0.1", port=server.port)
        self.closers: list[tuple[LoopThread, Callable[[], Any]]] = []
        self.credits = 0  # every fen credited to a personal account
        self.spent_elsewhere = 0  # wallet quota spent outside any settlement (SpendWallet)

    def boot(self) -> None:
        url = self.server.url

        async def registry(province: str) -> tuple[Registry, Running]:
            client = redis_client(url)
            reg = Registry(client, policy_for(province), clock=self.clock)
            running = await start_server(lambda s: register(s, reg), port=0)

            async def close() -> None:
                await running.server.stop(0)
                if isinstance(reg.wallet, GrpcWallet):
                    await reg.wallet.close()
                await client.aclose()

            self.closers.append((self.loop if province == "13" else self.bj_loop, close))
            return reg, running

        self.bj, bj_running = self.bj_loop.run(registry("11"))
        self.hb, hb_running = self.loop.run(registry("13"))

        async def shared() -> tuple[Registry, Running]:
            client = redis_client(url)
            registries = Registries({"13": f"127.0.0.1:{hb_running.port}", "11": f"127.0.0.1:{bj_running.port}"})
            wallet = Wallet(client, registries, clock=self.clock, recovery_grace_ms=0)
            running = await start_server(lambda s: register_wallet(s, wallet), port=0)
            self.hb.wallet = GrpcWallet(f"127.0.0.1:{running.port}")
            # A second replica of the 北京 registry: it runs the recovery passes.
            replica_client = redis_client(url)
            replica = Registry(replica_client, policy_for("11"), clock=self.clock,
                               wallet=GrpcWallet(f"127.0.0.1:{running.port}"))

            async def close() -> None:
                await running.server.stop(0)
                await registries.close()
                await replica.wallet.close()  # type: ignore[attr-defined]
                await client.aclose()
                await replica_client.aclose()

            self.closers.append((self.loop, close))
            return replica, running

        self.replica, wallet_running = self.loop.run(shared())

        async def bj_wallet() -> None:
            self.bj.wallet = GrpcWallet(f"127.0.0.1:{wallet_running.port}")

        self.bj_loop.run(bj_wallet())
        self.channels = [grpc.insecure_channel(f"127.0.0.1:{r.port}")
                         for r in (bj_running, hb_running, wallet_running)]
        self.bj_stub = pb_grpc.RegistryServiceStub(self.channels[0])
        self.hb_stub = pb_grpc.RegistryServiceStub(self.channels[1])
        self.w = wpb_grpc.WalletServiceStub(self.channels[2])

    def close(self) -> None:
        for ch in self.channels:
            ch.close()
        for loop, close in reversed(self.closers):
            loop.run(close())
        self.rdb.close()

    def reset(self) -> None:
        if self.server.proc is None or self.server.proc.poll() is not None:
            self.restart_redis()  # a test failed with it down
        self.rdb.flushall()
        self.clock.set(START_MS)
        self.bj.fault_hook = None
        self.bj.atomic = True
        self.credits = self.spent_elsewhere = 0

    # redis-server
    def kill_redis(self) -> None:
        self.server.kill()

    def restart_redis(self) -> None:
        if self.server.proc is not None and self.server.proc.stderr is not None:
            self.server.proc.stderr.close()
        self.server.start()

    def expire_locks(self) -> list[bytes]:
        """The TTL (10 s of real time) of the locks a dead holder left runs out; returns them."""
        held = [k for k in self.rdb.scan_iter(match="reg:11:{p:*}:lock")]
        for key in held:
            self.rdb.delete(key)
        return held

    # the recovery pass
    def recover_once(self) -> RecoveryCounts:
        return self.loop.run(self.replica.recover())  # type: ignore[no-any-return]

    def open_entries(self) -> list[bytes]:
        return self.rdb.zrange(self.bj.k.open_settlements(), 0, -1)  # type: ignore[no-any-return]

    # people and money
    def person(self, prov: str, bal: int = 0, birth: str = "19800101") -> str:
        stub = self.bj_stub if prov == "11" else self.hb_stub
        pid = enroll(stub, region=PLACE[prov], division=DIVISION[prov], birth=birth)
        if bal:
            credit(stub, pid, bal)
            self.credits += bal
        return pid

    def bal(self, pid: str) -> int:
        return int(self.rdb.hget(self.bj.k.account(pid), "bal") or self.rdb.hget(self.hb.k.account(pid), "bal") or 0)

    def wbal(self, owner: str) -> int:
        return int(self.w.GetWallet(wpb.GetWalletRequest(owner_id_number=owner)).wallet.balance_fen)

    def fund(self, sender: str, recipient: str, amount: int) -> None:
        """A 河北 employee's transfer into a 北京 near-kin's wallet, accepted."""
        try:  # the sender holds a wallet too (SPEC §5)
            self.w.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=sender, province="13",
                                                    use_place_admdvs=PLACE["13"], real_name=FACE))
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.ALREADY_EXISTS, exc
        t = self.w.CreateTransfer(wpb.CreateTransferRequest(
            request_id=rid("xfer"), sender_id_number=sender, sender_province="13", recipient_id_number=recipient,
            relation=cpb.RELATION_PARENT, amount_fen=amount, verification=FACE)).transfer
        acc = self.w.AcceptTransfer(wpb.AcceptTransferRequest(request_id=rid("acc"), transfer_id=t.transfer_id,
                                                              recipient_id_number=recipient))
        assert acc.transfer.state == wpb.TRANSFER_STATE_COMPLETED

    def record(self, pid: str, sid: str) -> SettlementRecord | None:
        return SettlementRecord.parse(self.rdb.hgetall(self.bj.k.settlement(pid, sid)))

    def entries(self, pid: str, ref: str) -> list[tuple[str, int]]:
        ledger = [json.loads(e) for e in self.rdb.lrange(self.bj.k.ledger(pid), 0, -1)]
        return [(e["kind"], e["amount"]) for e in ledger if e["ref"] == ref]


@pytest.fixture(scope="module")
def world(loop_thread: LoopThread) -> Iterator[World]:
    server = RedisServer(appendfsync="always").start()
    bj_loop = LoopThread()
    w = World(server, loop_thread, bj_loop)
    try:
        w.boot()
        yield w
    finally:
        if server.proc is None or server.proc.poll() is not None:
            w.restart_redis()  # so that the services close on a store they can reach
        w.close()
        bj_loop.stop()
        server.cleanup()


@pytest.fixture
def w(world: World) -> Iterator[World]:
    world.reset()
    try:
        yield world
    finally:
        world.bj.fault_hook = None


# --- families and what their settlement must come to -------------------------------------------


@dataclass
class Family:
    patient: str
    req: pb.SettleRequest
    split: tuple[int, int, int, int]  # acct, wallet, mulaid, cash
    charges: list[tuple[str, int]]  # (helper, amount), in the order they pay
    before: dict[str, int]  # each 北京 account of the family before the settlement
    wallet_before: int = 0

    @property
    def sid(self) -> str:
        return self.req.request_id

    def after(self) -> dict[str, int]:
        out = dict(self.before)
        out[self.patient] -= self.split[0]
        for hid, amount in self.charges:
            out[hid] -= amount
        return out


def settle_request(patient: str, amount: int) -> pb.SettleRequest:
    return pb.SettleRequest(request_id=rid("2207"), patient_id_number=patient, amount_fen=amount, use_account=True,
                            category=cpb.CATEGORY_OUTPATIENT, institution_code="H11010500001",
                            institution_admdvs="110000")


def helpers_family(w: World) -> Family:
    """Own account 3,000; 北京 uses its helpers in turn: the first filed pays its 4,000, the second the rest."""
    patient = w.person("11", 3_000, birth="19950101")
    first, second = w.person("11", 4_000, birth="19650101"), w.person("11", 50_000, birth="19940101")
    bind(w.bj_stub, first, patient, cpb.RELATION_PARENT)
    bind(w.bj_stub, second, patient, cpb.RELATION_SPOUSE)
    return Family(patient, settle_request(patient, 10_000), (3_000, 0, 7_000, 0), [(first, 4_000), (second, 3_000)],
                  {patient: 3_000, first: 4_000, second: 50_000})


def wallet_family(w: World) -> Family:
    """Own account 10,000, then the wallet's 30,000 (a 河北 son's transfer), then her husband 10,000."""
    son = w.person("13", 100_000)
    mother, husband = w.person("11", 10_000, birth="19650101"), w.person("11", 100_000, birth="19640101")
    bind(w.bj_stub, husband, mother, cpb.RELATION_SPOUSE)
    w.w.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=mother, province="11",
                                         use_place_admdvs=PLACE["11"], real_name=FACE))
    w.fund(son, mother, 30_000)
    return Family(mother, settle_request(mother, 50_000), (10_000, 30_000, 10_000, 0), [(husband, 10_000)],
                  {mother: 10_000, husband: 100_000}, wallet_before=30_000)


FAMILIES: dict[str, Callable[[World], Family]] = {"helpers": helpers_family, "wallet": wallet_family}


def split(res: pb.SettlementResult) -> tuple[int, int, int, int]:
    return res.acct_pay_fen, res.wallet_pay_fen, res.mulaid_pay_fen, res.cash_pay_fen


def check_money(w: World) -> None:
    """SPEC §7: nothing half-done, nothing negative, and credits == accounts + wallets + what was spent."""
    r = w.rdb
    spent, wallet_share = 0, {}
    for key in r.scan_iter(match="reg:*:setl:*"):
        rec = SettlementRecord.parse(r.hgetall(key))
        assert rec is not None and rec.state in ("SETTLED", "REVERSED"), (key, rec)
        rec.check()
        if rec.state == "SETTLED":
            spent += rec.acct_pay + rec.wallet_pay + rec.mulaid_pay
        wallet_share[rec.sid] = rec.wallet_pay if rec.state == "SETTLED" else 0
    accounts = total_balances(r)
    wallets = 0
    for key in r.scan_iter(match="wal:*:wallet"):
        assert int(r.hget(key, "bal")) >= 0, key
        wallets += int(r.hget(key, "bal"))
    for key in r.scan_iter(match="reg:*:acct"):
        assert int(r.hget(key, "bal")) >= 0, key
    # Each wallet spend made for a settlement is exactly that settlement's wallet share: none orphaned.
    for key in r.scan_iter(match="wal:*:spends"):
        for ref, raw in r.hgetall(key).items():
            spend = json.loads(raw)
            kept = 0 if spend["refunded"] else spend["amount"]
            if ref.decode() in wallet_share:
                assert kept == wallet_share[ref.decode()], (ref, spend, wallet_share[ref.decode()])
    assert accounts + wallets + spent + w.spent_elsewhere == w.credits
    assert w.open_entries() == []


def assert_settled(w: World, fam: Family) -> pb.SettlementResult:
    """Complete: SETTLED as planned, each account moved once, GetSettlement and a resend answer the
    same, and the resend moves nothing."""
    rec = w.record(fam.patient, fam.sid)
    assert rec is not None and rec.state == "SETTLED"
    got = w.bj_stub.GetSettlement(pb.GetSettlementRequest(settlement_id=fam.sid)).result
    assert (split(got), got.state) == (fam.split, "SETTLED")
    after = fam.after()
    assert [(c.helper_id_number, c.amount_fen, c.balance_after_fen) for c in got.helper_charges] == \
        [(hid, amount, after[hid]) for hid, amount in fam.charges]
    assert got.balance_after_fen == after[fam.patient]
    assert {pid: w.bal(pid) for pid in after} == after
    assert w.entries(fam.patient, fam.sid) == [("SETTLE_OWN", -fam.split[0])]
    for hid, amount in fam.charges:
        assert w.entries(hid, fam.sid) == [("SETTLE_HELPER", -amount)]
    if fam.wallet_before:
        assert w.wbal(fam.patient) == fam.wallet_before - fam.split[1] == got.wallet_balance_after_fen
    before = snapshot(w.rdb)
    assert w.bj_stub.Settle(fam.req).result == got
    assert snapshot(w.rdb) == before
    check_money(w)
    return got


def assert_undone(w: World, fam: Family) -> None:
    """Undone: no record, no claim, no money moved; a resend is judged afresh and settles."""
    assert w.record(fam.patient, fam.sid) is None
    assert w.rdb.exists(w.bj.idem.key(fam.sid)) == 0
    assert {pid: w.bal(pid) for pid in fam.before} == fam.before
    if fam.wallet_before:
        assert w.wbal(fam.patient) == fam.wallet_before
    check_money(w)
    assert split(w.bj_stub.Settle(fam.req).result) == fam.split
    assert_settled(w, fam)


def assert_reversed(w: World, fam: Family, rreq: pb.ReverseSettlementRequest) -> None:
    """Every fen back where it came from, once; a resend of the 2208 answers the same and moves nothing."""
    rec = w.record(fam.patient, fam.sid)
    assert rec is not None and (rec.state, rec.reversal_id) == ("REVERSED", rreq.request_id)
    assert w.bj_stub.GetSettlement(pb.GetSettlementRequest(settlement_id=fam.sid)).result.state == "REVERSED"
    assert {pid: w.bal(pid) for pid in fam.before} == fam.before
    assert w.entries(fam.patient, fam.sid) == [("SETTLE_OWN", -fam.split[0]), ("REVERSE_OWN", fam.split[0])]
    for hid, amount in fam.charges:
        assert w.entries(hid, fam.sid) == [("SETTLE_HELPER", -amount), ("REVERSE_HELPER", amount)]
    if fam.wallet_before:
        assert w.wbal(fam.patient) == fam.wallet_before
    check_money(w)
    answer = w.bj_stub.ReverseSettlement(rreq)  # the first resend may record the answer, nothing else
    assert (answer.settlement_id, answer.reversal_id) == (fam.sid, rreq.request_id)
    assert (answer.acct_refund_fen, answer.wallet_refund_fen, answer.mulaid_refund_fen) == fam.split[:3]
    assert answer.balance_after_fen == fam.before[fam.patient]
    assert [(c.helper_id_number, c.amount_fen, c.balance_after_fen) for c in answer.helper_refunds] == \
        [(hid, amount, fam.before[hid]) for hid, amount in fam.charges]
    check_money(w)
    before = snapshot(w.rdb)
    assert w.bj_stub.ReverseSettlement(rreq) == answer
    assert snapshot(w.rdb) == before
    with pytest.raises(grpc.RpcError) as ei:  # another reversal id cannot return the money again
        w.bj_stub.ReverseSettlement(pb.ReverseSettlementRequest(request_id=rid("2208"), settlement_id=fam.sid))
    assert (ei.value.code(), reason(ei.value)) == (grpc.StatusCode.FAILED_PRECONDITION, "ALREADY_REVERSED")
    check_money(w)


# --- crashing and recovering ----------------------------------------------------------------------


class Crash:
    """A fault hook: at `point` the registry dies; with `kill`, redis-server is killed -9 first."""

    def __init__(self, point: str, kill: Callable[[], None] | None = None) -> None:
        self.point = point
        self.kill = kill
        self.seen: list[str] = []
        self.fired = False

    def __call__(self, point: str) -> None:
        self.seen.append(point)
        if point == self.point and not self.fired:
            self.fired = True
            if self.kill is not None:
                self.kill()
            raise InjectedFault(point)


def crash(w: World, kind: str, point: str, call: Callable[[], Any]) -> Crash:
    hook = Crash(point, w.kill_redis if kind == "redis" else None)
    w.bj.fault_hook = hook
    try:
        with pytest.raises(grpc.RpcError) as ei:
            call()
    finally:
        w.bj.fault_hook = None
    assert hook.fired, hook.seen
    # The registry died (UNKNOWN), or Redis did under it (UNAVAILABLE): never an answer.
    assert ei.value.code() in (grpc.StatusCode.UNKNOWN, UNAVAILABLE), ei.value
    if kind == "redis":
        w.restart_redis()
    return hook


def recover(w: World) -> list[RecoveryCounts]:
    """The recovery loop, without any resend: nothing is touched within the grace; once it has passed
    one pass converges (a lock left by a holder that died with Redis first has to run out)."""
    early = w.recover_once()
    assert (early.settled, early.reversed, early.dropped, early.deferred) == (0, 0, 0, 0)
    w.clock.advance(DEFAULT_GRACE_MS + 1)
    passes = [w.recover_once()]
    if passes[0].deferred:
        assert w.open_entries() and w.expire_locks()
        passes.append(w.recover_once())
    assert passes[-1].deferred == 0 and w.open_entries() == []
    return passes


def counts(c: RecoveryCounts) -> tuple[int, int, int, int]:
    return c.settled, c.reversed, c.dropped, c.deferred


# --- 1 and 2: crash at every step, then recovery (or a resend) -----------------------------------


@pytest.mark.parametrize("then", ["recover", "resend"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("point", SETTLE_POINTS)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_settlement_crashed_at_any_step_converges(w, family, point, kind, then):
    """Without a resend the recovery pass leaves it undone or SETTLED (SETTLE_OUTCOME); a resend
    instead settles it; either way each account moved once and money is conserved."""
    fam = FAMILIES[family](w)
    if family == "helpers":
        w.bj.atomic = False  # the staged path (a wallet share takes it anyway)
    crash(w, kind, point, lambda: w.bj_stub.Settle(fam.req))
    outcome = SETTLE_OUTCOME[point]

    # Before anything converges: nothing negative, and GetSettlement tells what it can.
    for key in w.rdb.scan_iter(match="reg:*:acct"):
        assert int(w.rdb.hget(key, "bal")) >= 0
    if outcome == "answered":
        assert split(w.bj_stub.GetSettlement(pb.GetSettlementRequest(settlement_id=fam.sid)).result) == fam.split
    else:
        with pytest.raises(grpc.RpcError) as ei:
            w.bj_stub.GetSettlement(pb.GetSettlementRequest(settlement_id=fam.sid))
        assert (ei.value.code(), reason(ei.value)) == {
            "undone": (grpc.StatusCode.NOT_FOUND, "SETTLEMENT_NOT_FOUND"),
            "settled": (UNAVAILABLE, "SETTLEMENT_IN_PROGRESS"),
        }[outcome]
        assert w.open_entries() == [f"S|{fam.patient}|{fam.sid}".encode()]

    if then == "resend":
        if kind == "redis":
            w.expire_locks()
        assert split(w.bj_stub.Settle(fam.req).result) == fam.split
        assert_settled(w, fam)
        assert counts(recover(w)[-1]) == (0, 0, 0, 0)
        return

    passes = recover(w)
    deferred = kind == "redis" and point in HELD_WITH_ENTRY
    assert [counts(c) for c in passes] == {
        "undone": [(0, 0, 1, 0)],
        "settled": [(0, 0, 0, 1), (1, 0, 0, 0)] if deferred else [(1, 0, 0, 0)],
        "answered": [(0, 0, 0, 0)],
    }[outcome]
    if outcome == "undone":
        assert_undone(w, fam)
    else:
        assert_settled(w, fam)


@pytest.mark.parametrize("kind", KINDS)
def test_atomic_settlement_crashed_after_its_script_is_complete(w, kind):
    """One script applies the whole settlement: a crash after it leaves it SETTLED and answered."""
    fam = helpers_family(w)
    hook = crash(w, kind, "settle.after_finish", lambda: w.bj_stub.Settle(fam.req))
    assert hook.seen == ["settle.before_apply", "settle.after_finish"]  # no staged step ran
    assert counts(recover(w)[-1]) == (0, 0, 0, 0)
    assert_settled(w, fam)


@pytest.mark.parametrize("then", ["recover", "resend"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("point", REVERSE_POINTS)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_reversal_crashed_at_any_step_converges(w, family, point, kind, then):
    """Without a resend the recovery pass leaves it REVERSED (REVERSE_OUTCOME); a resend of the 2208
    instead reverses it; every fen goes back once, and the 2208's answer is the same either way."""
    fam = FAMILIES[family](w)
    if family == "helpers":
        w.bj.atomic = False
    assert split(w.bj_stub.Settle(fam.req).result) == fam.split
    rreq = pb.ReverseSettlementRequest(request_id=rid("2208"), settlement_id=fam.sid)
    crash(w, kind, point, lambda: w.bj_stub.ReverseSettlement(rreq))
    if then == "resend":
        if kind == "redis":
            w.expire_locks()
        answer = w.bj_stub.ReverseSettlement(rreq)
        assert (answer.reversal_id, answer.acct_refund_fen) == (rreq.request_id, fam.split[0])
        assert counts(recover(w)[-1]) == (0, 0, 0, 0)
    else:
        passes = recover(w)
        deferred = kind == "redis" and point in HELD_WITH_ENTRY
        assert [counts(c) for c in passes] == {
            "reversed": [(0, 0, 0, 1), (0, 1, 0, 0)] if deferred else [(0, 1, 0, 0)],
            "already reversed": [(0, 0, 0, 0)],
        }[REVERSE_OUTCOME[point]]
        rec = w.record(fam.patient, fam.sid)
        assert rec is not None and rec.state == "REVERSED"  # before any resend
        if kind == "redis":
            w.expire_locks()  # nothing was left to defer; a resend would wait out the dead holder's lock
    assert_reversed(w, fam, rreq)


# --- GetSettlement and 2208 of an OPEN settlement -------------------------------------------------


def test_open_settlement_answers_in_progress_until_recovered(w):
    fam = helpers_family(w)
    w.bj.atomic = False
    crash(w, "registry", "settle.after_own_debit", lambda: w.bj_stub.Settle(fam.req))
    with pytest.raises(grpc.RpcError) as ei:
        w.bj_stub.GetSettlement(pb.GetSettlementRequest(settlement_id=fam.sid))
    assert (ei.value.code(), reason(ei.value)) == (UNAVAILABLE, "SETTLEMENT_IN_PROGRESS")
    rreq = pb.ReverseSettlementRequest(request_id=rid("2208"), settlement_id=fam.sid)
    money = {pid: w.bal(pid) for pid in fam.before}
    with pytest.raises(grpc.RpcError) as ei:
        w.bj_stub.ReverseSettlement(rreq)
    assert (ei.value.code(), reason(ei.value)) == (UNAVAILABLE, "SETTLEMENT_IN_PROGRESS")
    assert {pid: w.bal(pid) for pid in fam.before} == money
    assert w.open_entries() == [f"S|{fam.patient}|{fam.sid}".encode()]  # the refused 2208 left none
    assert w.rdb.exists(w.bj.idem.key(rreq.request_id)) == 0

    assert [counts(c) for c in recover(w)] == [(1, 0, 0, 0)]
    assert_settled(w, fam)
    w.bj_stub.ReverseSettlement(rreq)  # the same 2208 now reverses it
    assert_reversed(w, fam, rreq)


def test_resend_refused_busy_leaves_the_crashed_attempts_entry(w, monkeypatch):
    """A resend of a crashed settlement that cannot get the patient's lock (another operation holds
    it) gives up with PATIENT_BUSY; the OPEN record's entry stays, so the recovery pass finishes it."""
    fam = helpers_family(w)
    w.bj.atomic = False
    crash(w, "registry", "settle.after_own_debit", lambda: w.bj_stub.Settle(fam.req))
    monkeypatch.setattr(Context.acquire, "__defaults__", (200,))  # wait 0.2 s for the lock, not 10 s
    other = w.bj_loop.run(w.bj.locks.acquire(w.bj.k.person_tag(fam.patient), 60_000, 1_000))
    with pytest.raises(grpc.RpcError) as ei:
        w.bj_stub.Settle(fam.req)
    assert (ei.value.code(), reason(ei.value)) == (UNAVAILABLE, "PATIENT_BUSY")
    assert w.open_entries() == [f"S|{fam.patient}|{fam.sid}".encode()]
    assert w.bj_loop.run(w.bj.locks.release(other)) is True
    assert [counts(c) for c in recover(w)] == [(1, 0, 0, 0)]
    assert_settled(w, fam)


# --- 4. a live holder is not recovered ------------------------------------------------------------


def test_recovery_defers_a_settlement_whose_holder_is_alive(w):
    """A slow live request (past the grace) still holds the patient's lock: the pass defers its entry
    and writes nothing of it; the request then finishes normally."""
    fam = wallet_family(w)
    seen: dict[str, Any] = {}

    def slow(point: str) -> None:
        if point == "settle.after_wallet_debit" and not seen:
            w.clock.advance(DEFAULT_GRACE_MS + 1)
            before = snapshot(w.rdb)
            seen["counts"] = w.recover_once()
            after = snapshot(w.rdb)
            seen["changed"] = sorted(k for k in set(before) | set(after)
                                     if before.get(k) != after.get(k) and b"{recovery}" not in k)

    w.bj.fault_hook = slow
    result = w.bj_stub.Settle(fam.req).result
    assert counts(seen["counts"]) == (0, 0, 0, 1)
    assert seen["changed"] == []
    assert split(result) == fam.split
    assert assert_settled(w, fam) == result


# --- 3. a holder paused past its lock and the grace ------------------------------------------------


class Pause:
    """A fault hook: at `point` the holder stalls (its loop blocked) while `meanwhile` runs."""

    def __init__(self, point: str, meanwhile: Callable[[], None]) -> None:
        self.point = point
        self.meanwhile = meanwhile
        self.fired = False

    def __call__(self, point: str) -> None:
        if point == self.point and not self.fired:
            self.fired = True
            self.meanwhile()


def stall(w: World, during: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """What happens while the holder is stalled: its lock's TTL runs out, the grace passes, `during`
    happens, and a recovery pass runs. Returns the pass's counts and the balances it left."""
    seen: dict[str, Any] = {}

    def meanwhile() -> None:
        w.expire_locks()
        w.clock.advance(DEFAULT_GRACE_MS + 1)
        during()
        seen["counts"] = counts(w.recover_once())
        seen["accounts"] = total_balances(w.rdb)
        seen["wallets"] = sum(int(w.rdb.hget(k, "bal")) for k in w.rdb.scan_iter(match="wal:*:wallet"))

    seen["meanwhile"] = meanwhile
    return seen


def resume(w: World, fam: Family, point: str, seen: dict[str, Any]) -> pb.SettlementResult | None:
    """Run the settlement with a pause at `point`; the resumed holder answers the recovered result,
    or LOCK_LOST; either way it moved no money after the pass."""
    hook = Pause(point, seen["meanwhile"])
    w.bj.fault_hook = hook
    try:
        try:
            result: pb.SettlementResult | None = w.bj_stub.Settle(fam.req).result
        except grpc.RpcError as exc:
            assert (exc.code(), reason(exc)) == (UNAVAILABLE, "LOCK_LOST"), exc
            result = None
    finally:
        w.bj.fault_hook = None
    assert hook.fired
    assert total_balances(w.rdb) == seen["accounts"]
    assert sum(int(w.rdb.hget(k, "bal")) for k in w.rdb.scan_iter(match="wal:*:wallet")) == seen["wallets"]
    return result


@pytest.mark.parametrize("point", ["settle.after_own_debit", "settle.after_wallet_debit",
                                   "settle.after_helper_debit"])
def test_paused_holder_resumes_after_recovery_finished_and_moves_nothing(w, point):
    """Stalled with its lock while the grace passed: the pass finishes the settlement. Resumed before
    the wallet debit, the holder finds its lease gone (LOCK_LOST); resumed after it, its wallet debit
    and helper charge replay and the record is already final: it answers the recovered result."""
    fam = wallet_family(w)
    seen = stall(w)
    result = resume(w, fam, point, seen)
    assert seen["counts"] == (1, 0, 0, 0)
    got = assert_settled(w, fam)
    assert result == (None if point == "settle.after_own_debit" else got)


def test_paused_holder_cannot_take_a_helper_charge_recovery_voided(w):
    """While the holder is stalled before the helper charges, the first helper spends their balance:
    recovery finishes without their share (VOID on their slot; 北京 uses its helpers in turn, so the
    second, who still holds enough, pays it). The helper is credited again before the holder resumes;
    the resumed holder's charge answers VOID and takes nothing."""
    fam = helpers_family(w)
    w.bj.atomic = False
    first, second = fam.charges[0][0], fam.charges[1][0]

    def drain_first_helper() -> None:
        own = settle_request(first, 4_000)
        assert w.loop.run(w.replica.settle(own)).result.acct_pay_fen == 4_000

    seen = stall(w, drain_first_helper)
    w.bj.fault_hook = Pause("settle.after_wallet_debit", seen["meanwhile"])
    try:
        result = w.bj_stub.Settle(fam.req).result
    finally:
        w.bj.fault_hook = None
    assert seen["counts"] == (1, 0, 0, 0)
    assert split(result) == (3_000, 0, 7_000, 0) and result.helper_reason == ""
    assert [(c.helper_id_number, c.amount_fen) for c in result.helper_charges] == [(second, 7_000)]
    assert w.rdb.hget(w.bj.k.applied(first), fam.sid) == b"VOID"
    assert w.entries(first, fam.sid) == []
    # Credited again: a late charge could now be taken; none is.
    credit(w.bj_stub, first, 4_000)
    w.credits += 4_000
    assert w.bj_stub.Settle(fam.req).result == result
    assert w.bal(first) == 4_000 and w.entries(first, fam.sid) == []
    check_money(w)


def test_paused_holder_cannot_spend_a_wallet_share_recovery_gave_to_cash(w):
    """While the holder is stalled before the wallet debit, the wallet is spent elsewhere: recovery
    finishes without the wallet's share (北京's helper in turn, who holds enough, pays it: no cash).
    That spend is refunded before the holder resumes, so
    the wallet could pay again; the resumed holder must not spend it for a settlement that no
    longer has a wallet share."""
    fam = wallet_family(w)
    elsewhere = rid("spend")

    def spend_wallet_elsewhere() -> None:
        w.w.SpendWallet(wpb.SpendWalletRequest(request_id=elsewhere, owner_id_number=fam.patient, amount_fen=30_000,
                                               category=cpb.CATEGORY_PHARMACY, spending_admdvs=PLACE["11"]))
        w.spent_elsewhere += 30_000

    seen = stall(w, spend_wallet_elsewhere)
    pause = Pause("settle.after_own_debit", seen["meanwhile"])

    def hook(point: str) -> None:
        pause(point)
        if point == "settle.after_own_debit":  # after the pass, just before the holder resumes
            w.w.RefundWalletSpend(wpb.RefundWalletSpendRequest(request_id=rid("ref"), spend_id=elsewhere,
                                                               owner_id_number=fam.patient))
            w.spent_elsewhere -= 30_000

    w.bj.fault_hook = hook
    try:
        with pytest.raises(grpc.RpcError) as ei:
            w.bj_stub.Settle(fam.req)
    finally:
        w.bj.fault_hook = None
    assert (ei.value.code(), reason(ei.value)) == (UNAVAILABLE, "LOCK_LOST")
    assert seen["counts"] == (1, 0, 0, 0)
    rec = w.record(fam.patient, fam.sid)
    assert rec is not None and (rec.state, rec.wallet_pay, rec.mulaid_pay, rec.cash_pay) == ("SETTLED", 0, 40_000, 0)
    assert rec.wallet_reason == "WALLET_INSUFFICIENT"
    assert w.wbal(fam.patient) == 30_000
    check_money(w)
    # The client's retry of the same request id gets the recovered answer.
    assert split(w.bj_stub.Settle(fam.req).result) == (10_000, 0, 40_000, 0)
    assert w.wbal(fam.patient) == 30_000
    # Recovery barred the settlement's spend before it gave the share to cash: a holder stalled
    # after renewing its lease, whose debit only now reaches the wallet, spends nothing.
    with pytest.raises(grpc.RpcError) as late:
        w.w.SpendWallet(wpb.SpendWalletRequest(request_id=rec.wallet_spend, owner_id_number=fam.patient,
                                               amount_fen=30_000,
                                               category=cpb.CATEGORY_OUTPATIENT, spending_admdvs=PLACE["11"]))
    assert (late.value.code(), reason(late.value)) == (grpc.StatusCode.FAILED_PRECONDITION, "SPEND_CANCELLED")
    assert w.wbal(fam.patient) == 30_000
    check_money(w)


def test_holder_paused_before_its_lock_is_dropped_then_finishes_or_is_recovered(w):
    """Stalled after its claim, before taking the lock: the pass drops the claim (nothing was opened).
    The holder then resumes, opens the settlement and crashes after the own debit: that OPEN record
    must be in the recovery index again, so the next pass finishes it."""
    fam = helpers_family(w)
    w.bj.atomic = False
    seen = stall(w)
    pause = Pause("settle.after_claim", seen["meanwhile"])
    crash_after = Crash("settle.after_own_debit")

    def hook(point: str) -> None:
        pause(point)
        crash_after(point)

    w.bj.fault_hook = hook
    try:
        with pytest.raises(grpc.RpcError):
            w.bj_stub.Settle(fam.req)
    finally:
        w.bj.fault_hook = None
    assert seen["counts"] == (0, 0, 1, 0) and crash_after.fired
    rec = w.record(fam.patient, fam.sid)
    assert rec is not None and rec.state == "OPEN"
    assert [counts(c) for c in recover(w)] == [(1, 0, 0, 0)]
    assert_settled(w, fam)


def test_paused_reversal_holder_moves_nothing_after_recovery_reversed(w):
    fam = wallet_family(w)
    w.bj_stub.Settle(fam.req)
    rreq = pb.ReverseSettlementRequest(request_id=rid("2208"), settlement_id=fam.sid)
    seen = stall(w)
    w.bj.fault_hook = Pause("reverse.after_begin", seen["meanwhile"])
    try:
        answer = w.bj_stub.ReverseSettlement(rreq)  # each step replays; the record is already REVERSED
    finally:
        w.bj.fault_hook = None
    assert (answer.reversal_id, answer.wallet_refund_fen) == (rreq.request_id, fam.split[1])
    assert seen["counts"] == (0, 1, 0, 0)
    assert total_balances(w.rdb) == seen["accounts"]
    assert_reversed(w, fam, rreq)


# --- fencing: the scripts refuse a stale token ------------------------------------------------------


def test_stale_token_cannot_open_finish_or_reverse(w):
    """A crashed holder's token, once a newer holder has taken the patient's lock, writes nothing:
    settle_finish, settle_open and reverse_finish answer STALE. The newer token is accepted (an open
    with it; the recovery pass finishing and reversing with the same scripts), so STALE was the fence."""
    fam = helpers_family(w)
    w.bj.atomic = False
    reg, k, pid = w.bj, w.bj.k, fam.patient
    crash(w, "registry", "settle.after_helper_debit", lambda: w.bj_stub.Settle(fam.req))
    rec = w.record(pid, fam.sid)
    assert rec is not None and rec.state == "OPEN"
    stale = int(w.rdb.get(k.fence(pid)))  # the crashed attempt's token
    lease = w.bj_loop.run(reg.locks.acquire(k.person_tag(pid), 5_000, 1_000))
    assert lease.token == stale + 1

    final = rec.settled(wallet_pay=0, wallet_after=0, wallet_reason=rec.wallet_reason, charges=tuple(
        ChargeDone(c.helper_id, c.amount, fam.after()[c.helper_id]) for c in rec.charges),
        helper_reason=rec.helper_reason)
    member = [x for c in final.charges for x in (consumption_field(fam.sid, c.helper_id),
                                                  consumption_json(final, c, "MEMBER", "SETTLED"))]
    other = rid("2207")
    opened = SettlementRecord(other, pid, 100, 0, 0, (), 100, "", "", 1, "H11010500001", "110000", "110000", 1)
    open_keys = [k.settlement(pid, other), k.account(pid), k.ledger(pid), k.fence(pid)]
    open_args = [other, 0, 1, *opened.args(without=("own_bal_after",))]
    before = snapshot(w.rdb)
    status, *_ = w.bj_loop.run(reg.lua["settle_finish"](
        keys=[k.settlement(pid, fam.sid), k.fence(pid), k.consumption(pid), k.consumption_index(pid)],
        args=[stale, len(final.charges), *member, *final.args()]))
    assert status == b"STALE"
    status, _ = w.bj_loop.run(reg.lua["settle_open"](keys=open_keys, args=[stale, *open_args]))
    assert status == b"STALE"
    assert snapshot(w.rdb) == before
    status, _ = w.bj_loop.run(reg.lua["settle_open"](keys=open_keys, args=[lease.token, *open_args]))
    assert status == b"OK"
    w.rdb.delete(k.settlement(pid, other))  # a control only: nothing was paid (acct_pay 0)
    assert w.bj_loop.run(reg.locks.release(lease)) is True
    assert [counts(c) for c in recover(w)] == [(1, 0, 0, 0)]
    assert_settled(w, fam)

    rreq = pb.ReverseSettlementRequest(request_id=rid("2208"), settlement_id=fam.sid)
    crash(w, "registry", "reverse.after_helper_refund", lambda: w.bj_stub.ReverseSettlement(rreq))
    stale = int(w.rdb.get(k.fence(pid)))
    lease = w.bj_loop.run(reg.locks.acquire(k.person_tag(pid), 5_000, 1_000))
    before = snapshot(w.rdb)
    status, _ = w.bj_loop.run(reg.lua["reverse_finish"](
        keys=[k.settlement(pid, fam.sid), k.account(pid), k.ledger(pid), k.fence(pid), k.consumption(pid)],
        args=[stale, fam.sid, fam.split[0], 1, 0]))
    assert status == b"STALE"
    assert snapshot(w.rdb) == before
    assert w.bj_loop.run(reg.locks.release(lease)) is True
    assert [counts(c) for c in recover(w)] == [(0, 1, 0, 0)]
    assert_reversed(w, fam, rreq)
