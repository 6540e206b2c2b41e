"""Crash tests of the national 医保钱包 transfer saga with real processes and real kill -9 (SPEC §5, §7).

One `Topology` (redis-server + registry-13 河北 + registry-11 北京 + the wallet, each its own OS process)
is shared by the whole module; every case uses fresh people. A case arms `MEDAID_FAULT=<point>` in one
process, which SIGKILLs itself at that point between two saga steps; the test checks the client saw the
call die, restarts the process cleanly, lets the wallet's recovery loop (200 ms passes) re-drive, retries
the client request with the same request id, and then checks exactly-once effects and conservation to
the fen.

Time: every process is started on one shared virtual timeline (`Timeline`), beginning at the demo clock
(2026-11-22 10:00 Asia/Shanghai, outside the 22:00–06:00 window) and running at real speed; a restart
continues it instead of rewinding it, so the recovery grace period means the same thing across restarts.
Expiry cases jump the timeline to 06:30 the day after the transfer was created.

Run with -s to see the crash matrix printed at the end of the module.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import redis
from medaid.common.redis_server import RedisServer
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.lifecycle import FAULT_POINTS as DEATH_FAULT_POINTS
from medaid.registry.service import FAULT_POINTS as REGISTRY_FAULT_POINTS
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.registry.v1 import registry_pb2_grpc as rpb_grpc
from medaid.topology import DEMO_CLOCK, Topology
from medaid.wallet.service import FAULT_POINTS as WALLET_FAULT_POINTS
from medaid.wallet.v1 import wallet_pb2 as wpb
from medaid.wallet.v1 import wallet_pb2_grpc as wpb_grpc
from support import FACE, Timeline, new_id, reason, rid

pytestmark = pytest.mark.slow

PROVINCES = ("13", "11")
GRACE_MS = 1_000  # --recovery-grace-ms of the wallet under test
FUNDS = 100_000  # credited to every sender
AMOUNT = 60_000  # the transfer under test
FOLLOW_UP = 100  # a second, small transfer proving the sender's one-pending slot was released
CALL_S = 10.0  # client deadline on every call
# How long recovery may take. Usually well under 2 s (grace 1 s + a 200 ms pass), but a wallet killed
# while its maintenance pass holds the sweeper lease (`ttl_ms=30_000`) — always so for a crash inside
# the sweeper, by chance (~1 %) for a crash in a request path — leaves that lease behind, and the next
# wallet process can only sweep once it has expired.
RECOVERY_S = 45.0

TRANSFER_PATH = ["transfer.after_reserve", "transfer.after_create", "transfer.after_debit",
                 "transfer.after_pending", "accept.after_claim", "accept.after_credit"]
ACCEPT_POINTS = ("accept.after_claim", "accept.after_credit")
RETURN_PATH = ["expire.after_returning", "expire.after_refund"]
RELEASE_PATH = ["release.after_transfers", "release.after_lots"]
# A wallet spend refund whose share goes home, stalled past the grace: tests/test_replicas.py.
REFUND_PATH = ["refund.after_index"]
REGISTRY_TRANSFER_POINTS = ["transfer.after_debit", "transfer.after_refund"]

W = wpb.TransferState
TERMINAL = (W.TRANSFER_STATE_COMPLETED, W.TRANSFER_STATE_RETURNED, W.TRANSFER_STATE_FAILED)
SETTLED = (W.TRANSFER_STATE_PENDING_ACCEPT, *TERMINAL)


def state_name(state: int) -> str:
    return W.Name(state).removeprefix("TRANSFER_STATE_")


# --- the harness ------------------------------------------------------------------------------


@dataclass
class Family:
    sender: str  # 河北 employee with FUNDS in the personal account
    recipient: str  # 北京 resident parent with a wallet


@dataclass
class Row:
    case: str
    after_recovery: str  # the transfer's state once the restarted process had recovered, before any retry
    final: str
    debits: int  # TRANSFER_OUT ledger entries for the transfer id
    refunds: int  # TRANSFER_RETURN / LOT_RETURN ledger entries for it
    lots: int  # lots for the transfer in the recipient's wallet
    conserved: bool
    seconds: float


class Harness:
    def __init__(self, topo: Topology, timeline: Timeline) -> None:
        self.topo = topo
        self.timeline = timeline
        self.credits_in = 0  # every fen the test credited into a personal account
        self._channels: dict[tuple[str, int], grpc.Channel] = {}
        self.rows: list[Row] = []

    # processes

    def restart(self, name: str, fault: str = "", *, grace_ms: int = GRACE_MS) -> None:
        """Restart `name` on the same port and Redis, on the shared timeline, with `fault` armed (or none)."""
        self.topo.clock = self.timeline.spec()
        self.topo.recovery_grace_ms = grace_ms
        self.topo.restart(name, env={"MEDAID_FAULT": fault})

    def wait_killed(self, name: str, timeout: float = 15.0) -> None:
        proc = self.topo.services[name].proc
        try:
            proc.wait(timeout=timeout)
        except Exception:  # noqa: BLE001 - report below with the logs
            pass
        logs = "\n".join(self.topo.services[name].log_lines[-15:])
        assert proc.returncode == -9, f"{name} should have SIGKILLed itself, returncode={proc.returncode}\n{logs}"

    # clients: one channel per process incarnation, so a restart never waits on a reconnect backoff

    def _channel(self, name: str) -> grpc.Channel:
        key = (name, self.topo.services[name].proc.pid)
        if key not in self._channels:
            self._channels[key] = grpc.insecure_channel(self.topo.address(name))
        return self._channels[key]

    @property
    def wallet(self) -> wpb_grpc.WalletServiceStub:
        return wpb_grpc.WalletServiceStub(self._channel("wallet"))

    def reg(self, province: str) -> rpb_grpc.RegistryServiceStub:
        return rpb_grpc.RegistryServiceStub(self._channel(f"registry-{province}"))

    def ensure_up(self) -> None:
        """Restart, without a fault, whatever an earlier (failed) case left dead, so one failure
        does not cascade into the next cases."""
        for name, svc in list(self.topo.services.items()):
            if svc.proc.poll() is not None:
                self.restart(name)

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()

    def redis(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.topo.redis.port, socket_timeout=5)

    # people and calls

    def family(self) -> Family:
        hebei, beijing = self.reg("13"), self.reg("11")
        sender = new_id("130102", "19800101")
        hebei.EnrollPerson(rpb.EnrollPersonRequest(
            request_id=rid("enroll"), id_number=sender, name="张伟", insurance_type=cpb.INSURANCE_TYPE_EMPLOYEE,
            pooling_region="130100"), timeout=CALL_S)
        hebei.CreditAccount(rpb.CreditAccountRequest(
            request_id=rid("credit"), id_number=sender, amount_fen=FUNDS, kind=rpb.CREDIT_KIND_MONTHLY_CONTRIBUTION,
            period="202611"), timeout=CALL_S)
        self.credits_in += FUNDS
        recipient = new_id("110105", "19550101")
        beijing.EnrollPerson(rpb.EnrollPersonRequest(
            request_id=rid("enroll"), id_number=recipient, name="张母", insurance_type=cpb.INSURANCE_TYPE_RESIDENT,
            pooling_region="110000"), timeout=CALL_S)
        self.wallet.OpenWallet(wpb.OpenWalletRequest(
            request_id=rid("open"), owner_id_number=recipient, province="11", use_place_admdvs="110000",
            real_name=FACE), timeout=CALL_S)
        self.wallet.OpenWallet(wpb.OpenWalletRequest(  # the sender holds a wallet too (SPEC §5)
            request_id=rid("open"), owner_id_number=sender, province="13", use_place_admdvs="130100",
            real_name=FACE), timeout=CALL_S)
        return Family(sender, recipient)

    def create(self, fam: Family, tid: str, amount: int = AMOUNT) -> wpb.Transfer:
        return self.wallet.CreateTransfer(wpb.CreateTransferRequest(
            request_id=tid, sender_id_number=fam.sender, sender_province="13", recipient_id_number=fam.recipient,
            relation=cpb.RELATION_PARENT, amount_fen=amount, verification=FACE), timeout=CALL_S).transfer

    def accept(self, fam: Family, tid: str, request_id: str) -> wpb.AcceptTransferResponse:
        return self.wallet.AcceptTransfer(wpb.AcceptTransferRequest(
            request_id=request_id, transfer_id=tid, recipient_id_number=fam.recipient), timeout=CALL_S)

    def transfer(self, tid: str) -> wpb.Transfer:
        return self.wallet.GetTransfer(wpb.GetTransferRequest(transfer_id=tid), timeout=CALL_S).transfer

    def wait_state(self, tid: str, states: tuple[int, ...], timeout: float = RECOVERY_S) -> wpb.Transfer:
        """Poll GetTransfer until the transfer is in one of `states`."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                t = self.transfer(tid)
                last = state_name(t.state)
                if t.state in states:
                    return t
            except grpc.RpcError as exc:
                last = f"{exc.code().name} {reason(exc)}"
            time.sleep(0.1)
        wanted = [state_name(s) for s in states]
        raise AssertionError(f"transfer {tid} did not reach {wanted} within {timeout}s; last seen: {last}\n"
                             + "\n".join(self.topo.services["wallet"].log_lines[-15:]))

    def crashes(self, call: Callable[[], Any], name: str) -> grpc.RpcError:
        """`call` must fail because `name` died mid-request (kill -9), not because a rule said no."""
        with pytest.raises(grpc.RpcError) as ei:
            call()
        self.wait_killed(name)
        return ei.value

    def balance(self, pid: str) -> int:
        return int(self.reg("13").GetPerson(rpb.GetPersonRequest(id_number=pid), timeout=CALL_S).person.balance_fen)

    def ledger_refs(self, pid: str, ref: str) -> list[tuple[str, int]]:
        """The sender's ledger entries for `ref`, oldest first."""
        acct = self.reg("13").GetAccount(rpb.GetAccountRequest(id_number=pid, ledger_limit=500), timeout=CALL_S)
        return [(e.kind, e.amount_fen) for e in sorted(acct.entries, key=lambda e: e.seq) if e.ref == ref]

    def lots_for(self, fam: Family, tid: str) -> tuple[int, int, int]:
        """(lots in GetWallet, LOT_IN entries, wallet balance) for transfer `tid` in the recipient's wallet."""
        w = self.wallet.GetWallet(wpb.GetWalletRequest(owner_id_number=fam.recipient), timeout=CALL_S)
        entries = self.wallet.ListWalletEntries(wpb.ListWalletEntriesRequest(
            owner_id_number=fam.recipient, limit=500), timeout=CALL_S).entries
        lots = sum(1 for lot in w.lots if lot.transfer_id == tid)
        lot_in = sum(1 for e in entries if e.kind == "LOT_IN" and e.ref == tid)
        return lots, lot_in, int(w.wallet.balance_fen)

    def sender_can_send_again(self, fam: Family, timeout: float = RECOVERY_S) -> str:
        """The one-unaccepted-transfer slot is released (by the request path or, within `timeout`, by the
        recovery loop): a new transfer is admitted, and accepted. A refusal writes nothing, so the same
        request id is simply sent again until then."""
        tid = rid("xfer-again")
        deadline = time.monotonic() + timeout
        while True:
            try:
                t = self.create(fam, tid, FOLLOW_UP)
                break
            except grpc.RpcError as exc:
                if reason(exc) != "PENDING_TRANSFER_EXISTS" or time.monotonic() > deadline:
                    raise AssertionError(f"the sender cannot send again: {reason(exc) or exc.code().name}") \
                        from None
                time.sleep(0.1)
        assert t.state == W.TRANSFER_STATE_PENDING_ACCEPT, state_name(t.state)
        acc = self.accept(fam, tid, rid("acc-again"))
        assert acc.transfer.state == W.TRANSFER_STATE_COMPLETED
        return tid

    # the books

    def conservation(self) -> tuple[bool, str]:
        """SPEC §7: credits in − settled spend == Σ balances + in-flight, to the fen, read from Redis.

        In-flight is what left a personal account and is not (yet) in a wallet or back: transfers
        PENDING_ACCEPT or RETURNING, and lot returns still RETURNING. A transfer still CREATED or
        FAILING is not a resting state: it makes the check fail (its money may be in the air)."""
        r = self.redis()
        try:
            reg = sum(int(r.hget(k, "bal") or 0) for k in r.scan_iter(match="reg:*:acct"))
            negative = [k for k in r.scan_iter(match="reg:*:acct") if int(r.hget(k, "bal") or 0) < 0]
            ledger_credits = spent = 0
            for key in r.scan_iter(match="reg:*:ledger"):
                for raw in r.lrange(key, 0, -1):
                    e = json.loads(raw)
                    if e["kind"].startswith("CREDIT_"):
                        ledger_credits += int(e["amount"])
                    elif e["kind"] == "INHERITANCE_PAYOUT":  # paid out to an heir: an outflow, like spending
                        spent -= int(e["amount"])
            wallets = lots_total = 0
            for key in r.scan_iter(match="wal:{w:*}:wallet"):
                bal = int(r.hget(key, "bal") or 0)
                wallets += bal
                negative += [key] if bal < 0 else []
                tag = key.decode().removesuffix(":wallet")
                rem = sum(int(json.loads(v)["rem"]) for v in r.hvals(f"{tag}:lots"))
                if rem != bal:
                    return False, f"{tag}: lots hold {rem} but the wallet balance is {bal}"
                lots_total += rem
                for v in r.hvals(f"{tag}:spends"):
                    s = json.loads(v)
                    spent += 0 if s.get("refunded") == 1 else int(s["amount"])
            in_flight, unsettled = 0, []
            for key in r.scan_iter(match="wal:{w:*}:xfer:*"):
                rec = {k.decode(): v.decode() for k, v in r.hgetall(key).items()}
                if rec["state"] in ("PENDING_ACCEPT", "RETURNING"):
                    in_flight += int(rec["amount"])
                elif rec["state"] in ("CREATED", "FAILING"):
                    unsettled.append(f"{rec['tid']}={rec['state']}")
            for key in r.scan_iter(match="wal:{w:*}:rets"):
                for v in r.hvals(key):
                    ret = json.loads(v)
                    in_flight += int(ret["amount"]) if ret["state"] == "RETURNING" else 0
        finally:
            r.close()
        detail = (f"credited {self.credits_in} (ledger {ledger_credits}) vs registry {reg} + wallets {wallets} "
                  f"+ spent {spent} + in-flight {in_flight} = {reg + wallets + spent + in_flight}")
        if unsettled or negative:
            return False, f"{detail}; unsettled {unsettled}; negative {negative}"
        ok = self.credits_in == ledger_credits == reg + wallets + spent + in_flight
        return ok, detail

    def record(self, case: str, tid: str, fam: Family, after_recovery: str, started: float) -> Row:
        t = self.transfer(tid)
        refs = self.ledger_refs(fam.sender, tid)
        lots, _, _ = self.lots_for(fam, tid)
        ok, detail = self.conservation()
        row = Row(case, after_recovery, state_name(t.state),
                  sum(1 for k, _ in refs if k == "TRANSFER_OUT"),
                  sum(1 for k, _ in refs if k in ("TRANSFER_RETURN", "LOT_RETURN")), lots, ok,
                  time.monotonic() - started)
        self.rows.append(row)
        assert ok, detail
        return row


def print_matrix(rows: list[Row]) -> None:
    head = ("crash point", "after recovery", "final", "debits", "refunds", "lots", "conserved", "s")
    table = [head] + [(r.case, r.after_recovery, r.final, str(r.debits), str(r.refunds), str(r.lots),
                       "yes" if r.conserved else "NO", f"{r.seconds:.1f}") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    print("\n\nwallet transfer saga — crash matrix (kill -9 of a real process, then recovery)")
    for i, row in enumerate(table):
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))


@pytest.fixture(scope="module")
def h() -> Iterator[Harness]:
    timeline = Timeline()
    topo = Topology.start(PROVINCES, clock=DEMO_CLOCK, recovery_grace_ms=GRACE_MS)
    harness = Harness(topo, timeline)
    try:
        yield harness
    finally:
        harness.close()
        topo.stop()
        if harness.rows:
            print_matrix(harness.rows)


@pytest.fixture(autouse=True)
def _services_up(request: pytest.FixtureRequest) -> None:
    if "h" in request.fixturenames:
        request.getfixturevalue("h").ensure_up()


# --- coverage -------------------------------------------------------------------------------


def test_every_transfer_fault_point_has_a_crash_case():
    """A fault point added to the wallet (or a registry transfer step) without a case here fails this."""
    assert sorted(TRANSFER_PATH + RETURN_PATH + RELEASE_PATH + REFUND_PATH) == sorted(WALLET_FAULT_POINTS)
    assert sorted(p for p in REGISTRY_FAULT_POINTS if p.startswith("transfer.")) == REGISTRY_TRANSFER_POINTS


# --- 1. the wallet killed on the transfer path ------------------------------------------------


@pytest.mark.parametrize("point", TRANSFER_PATH)
def test_wallet_killed_on_transfer_path_recovers_exactly_once(h: Harness, point: str):
    started = time.monotonic()
    fam = h.family()
    tid, acc_rid = rid("xfer"), rid("acc")
    if point in ACCEPT_POINTS:
        assert h.create(fam, tid).state == W.TRANSFER_STATE_PENDING_ACCEPT
        h.restart("wallet", point)
        err = h.crashes(lambda: h.accept(fam, tid, acc_rid), "wallet")
    else:
        h.restart("wallet", point)
        err = h.crashes(lambda: h.create(fam, tid), "wallet")
    assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
    h.restart("wallet")

    # Recovery alone, before the client retries anything.
    if point == "transfer.after_reserve":
        # Killed before the transfer was recorded: nothing was debited. Past the grace the recovery
        # loop records it FAILED (a stalled creator could still wake up) and frees the limits;
        # the client's retry with the same request id gets that answer and moves nothing.
        t = h.wait_state(tid, (W.TRANSFER_STATE_FAILED,))
        assert t.failure_reason == "TRANSFER_ABANDONED"
        assert h.balance(fam.sender) == FUNDS
        with pytest.raises(grpc.RpcError) as ei:
            h.create(fam, tid)
        assert reason(ei.value) == "TRANSFER_ABANDONED"
        assert h.ledger_refs(fam.sender, tid) == []
        h.sender_can_send_again(fam)
        assert h.balance(fam.sender) == FUNDS - FOLLOW_UP
        h.record(f"wallet {point}", tid, fam, "FAILED", started)
        return
    else:
        t = h.wait_state(tid, SETTLED)
        after_recovery = state_name(t.state)
        expected = W.TRANSFER_STATE_COMPLETED if point == "accept.after_credit" else W.TRANSFER_STATE_PENDING_ACCEPT
        assert t.state == expected, after_recovery
        assert h.balance(fam.sender) == FUNDS - AMOUNT

    # The client, having seen UNAVAILABLE, retries with the same request id: same transfer, no second effect.
    if point == "accept.after_credit":
        # Before the retry: the recovery loop alone finished the accept's bookkeeping (the sender's
        # one-pending slot), so the sender can send again.
        h.sender_can_send_again(fam)
        wallet_after = AMOUNT + FOLLOW_UP
        acc = h.accept(fam, tid, acc_rid)
    elif point == "accept.after_claim":
        # Killed before the accept wrote anything: its claim stays PENDING and the retry does the accept.
        wallet_after = AMOUNT
        acc = h.accept(fam, tid, acc_rid)
    else:
        wallet_after = AMOUNT
        t = h.create(fam, tid)
        assert (t.transfer_id, t.amount_fen, t.state) == (tid, AMOUNT, W.TRANSFER_STATE_PENDING_ACCEPT)
        assert h.create(fam, tid) == t  # a replay returns the first answer
        acc = h.accept(fam, tid, acc_rid)
    assert acc.transfer.state == W.TRANSFER_STATE_COMPLETED and acc.wallet.balance_fen == wallet_after
    assert h.accept(fam, tid, acc_rid) == acc

    assert h.ledger_refs(fam.sender, tid) == [("TRANSFER_OUT", -AMOUNT)]
    assert h.lots_for(fam, tid) == (1, 1, wallet_after)
    if point != "accept.after_credit":
        h.sender_can_send_again(fam)
    assert h.balance(fam.sender) == FUNDS - AMOUNT - FOLLOW_UP
    h.record(f"wallet {point}", tid, fam, after_recovery, started)


def test_wallet_killed_after_reserve_and_client_gives_up_does_not_block_the_sender(h: Harness):
    """The client never retries the request that died after reserving the sender's limits: once the
    recovery grace has passed, the sender must be able to send (one unaccepted transfer at a time is
    about transfers that exist, and this one was never recorded nor debited)."""
    started = time.monotonic()
    fam = h.family()
    abandoned = rid("xfer")
    h.restart("wallet", "transfer.after_reserve")
    h.crashes(lambda: h.create(fam, abandoned), "wallet")
    h.restart("wallet")
    tid = h.sender_can_send_again(fam)
    assert h.ledger_refs(fam.sender, abandoned) == []
    assert h.balance(fam.sender) == FUNDS - FOLLOW_UP
    h.record("wallet transfer.after_reserve (no retry, next)", tid, fam, "none", started)


# --- 1b. the wallet killed on the return path (an unaccepted transfer expires) -----------------


def _expire_soon(h: Harness, fam: Family, tid: str) -> wpb.Transfer:
    t = h.create(fam, tid)
    assert t.state == W.TRANSFER_STATE_PENDING_ACCEPT
    h.timeline.jump_to(t.expires_at_unix_ms + 30 * 60_000)  # 06:30 the next day
    return t


def _assert_returned(h: Harness, fam: Family, tid: str, acc_rid: str) -> None:
    with pytest.raises(grpc.RpcError) as ei:
        h.accept(fam, tid, acc_rid)
    assert reason(ei.value) == "TRANSFER_EXPIRED"
    assert h.ledger_refs(fam.sender, tid) == [("TRANSFER_OUT", -AMOUNT), ("TRANSFER_RETURN", AMOUNT)]
    assert h.balance(fam.sender) == FUNDS
    assert h.lots_for(fam, tid) == (0, 0, 0)


@pytest.mark.parametrize("point", RETURN_PATH)
def test_wallet_killed_on_return_path_via_accept(h: Harness, point: str):
    """The recipient tries to accept after 06:00: the request path expires the transfer and is killed
    mid-return. The faulted process is given a recovery grace so long that its sweeper never touches the
    transfer, so the crash is in the request path."""
    started = time.monotonic()
    fam = h.family()
    tid, acc_rid = rid("xfer"), rid("acc")
    _expire_soon(h, fam, tid)
    h.restart("wallet", point, grace_ms=10**12)
    err = h.crashes(lambda: h.accept(fam, tid, acc_rid), "wallet")
    assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
    h.restart("wallet")
    t = h.wait_state(tid, TERMINAL)
    assert t.state == W.TRANSFER_STATE_RETURNED, state_name(t.state)
    _assert_returned(h, fam, tid, acc_rid)  # the accept retried with the same request id
    h.sender_can_send_again(fam)
    h.record(f"wallet {point} (accept)", tid, fam, state_name(t.state), started)


@pytest.mark.parametrize("point", ["expire.after_refund"])
def test_wallet_sweeper_killed_on_return_path(h: Harness, point: str):
    """Nobody accepts: the expiry sweeper itself is killed mid-return, holding its lease. The next
    wallet process finishes the return once that lease has expired."""
    started = time.monotonic()
    fam = h.family()
    tid = rid("xfer")
    _expire_soon(h, fam, tid)
    h.restart("wallet", point)
    h.wait_killed("wallet")
    h.restart("wallet")
    t = h.wait_state(tid, TERMINAL, timeout=RECOVERY_S)
    assert t.state == W.TRANSFER_STATE_RETURNED, state_name(t.state)
    _assert_returned(h, fam, tid, rid("acc"))
    h.sender_can_send_again(fam)
    h.record(f"wallet {point} (sweeper)", tid, fam, state_name(t.state), started)


# --- 1c. the wallet killed while sending a sender's lots home -----------------------------------


def test_wallet_killed_releasing_sender_lots(h: Harness):
    started = time.monotonic()
    fam = h.family()
    tid = rid("xfer")
    h.create(fam, tid)
    h.accept(fam, tid, rid("acc"))
    rel = rid("rel")
    h.restart("wallet", "release.after_lots")
    req = wpb.ReleaseSenderLotsRequest(request_id=rel, sender_id_number=fam.sender, reason="MOVED")
    err = h.crashes(lambda: h.wallet.ReleaseSenderLots(req, timeout=CALL_S), "wallet")
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    h.restart("wallet")
    deadline = time.monotonic() + RECOVERY_S
    while time.monotonic() < deadline and h.balance(fam.sender) != FUNDS:
        time.sleep(0.1)
    assert h.balance(fam.sender) == FUNDS  # the recovery loop credited the lot back
    resp = h.wallet.ReleaseSenderLots(req, timeout=CALL_S)  # the client retries the same request id
    assert (resp.returned_fen, resp.wallets_touched) == (AMOUNT, 1)
    assert h.balance(fam.sender) == FUNDS
    returns = h.ledger_refs(fam.sender, _lot_return_id(h, fam))
    assert returns == [("LOT_RETURN", AMOUNT)]
    assert h.lots_for(fam, tid) == (0, 1, 0)
    ok, detail = h.conservation()
    debits = sum(1 for k, _ in h.ledger_refs(fam.sender, tid) if k == "TRANSFER_OUT")
    h.rows.append(Row("wallet release.after_lots", "lot returned", "COMPLETED+released", debits, len(returns), 0,
                      ok, time.monotonic() - started))
    assert ok, detail


def _lot_return_id(h: Harness, fam: Family) -> str:
    acct = h.reg("13").GetAccount(rpb.GetAccountRequest(id_number=fam.sender, ledger_limit=500), timeout=CALL_S)
    refs = [e.ref for e in acct.entries if e.kind == "LOT_RETURN"]
    assert len(refs) == 1, refs
    return refs[0]


# --- 2. the source registry killed after its Lua ran, before replying --------------------------


def test_registry_killed_after_debit(h: Harness):
    started = time.monotonic()
    fam = h.family()
    tid, acc_rid = rid("xfer"), rid("acc")
    h.restart("registry-13", "transfer.after_debit")
    err = h.crashes(lambda: h.create(fam, tid), "registry-13")
    assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
    h.restart("registry-13")
    # No client retry: the wallet's recovery loop re-drives the debit, which the registry answers as a replay.
    t = h.wait_state(tid, SETTLED)
    after_recovery = state_name(t.state)
    assert t.state == W.TRANSFER_STATE_PENDING_ACCEPT, after_recovery
    assert h.ledger_refs(fam.sender, tid) == [("TRANSFER_OUT", -AMOUNT)]
    assert h.balance(fam.sender) == FUNDS - AMOUNT
    acc = h.accept(fam, tid, acc_rid)
    assert acc.transfer.state == W.TRANSFER_STATE_COMPLETED and acc.wallet.balance_fen == AMOUNT
    again = h.create(fam, tid)  # the client's late retry of the request that failed: no second debit
    assert (again.transfer_id, again.amount_fen) == (tid, AMOUNT)
    assert h.ledger_refs(fam.sender, tid) == [("TRANSFER_OUT", -AMOUNT)]
    assert h.lots_for(fam, tid) == (1, 1, AMOUNT)
    h.sender_can_send_again(fam)
    h.record("registry-13 transfer.after_debit", tid, fam, after_recovery, started)


def test_registry_killed_after_refund(h: Harness):
    started = time.monotonic()
    fam = h.family()
    tid = rid("xfer")
    h.restart("registry-13", "transfer.after_refund")
    _expire_soon(h, fam, tid)
    h.restart("wallet")  # now past the deadline: its sweeper expires the transfer and asks for the refund
    h.wait_killed("registry-13")
    h.wait_state(tid, (W.TRANSFER_STATE_RETURNING,))
    time.sleep(1.0)  # several recovery passes with the registry down: the transfer waits, nothing moves
    assert h.transfer(tid).state == W.TRANSFER_STATE_RETURNING
    h.restart("registry-13")
    t = h.wait_state(tid, TERMINAL)
    assert t.state == W.TRANSFER_STATE_RETURNED, state_name(t.state)
    _assert_returned(h, fam, tid, rid("acc"))
    h.sender_can_send_again(fam)
    h.record("registry-13 transfer.after_refund", tid, fam, "RETURNING", started)


# --- 3. redis-server killed right after acknowledged writes ------------------------------------


def _durable_snapshot(r: redis.Redis) -> dict[bytes, Any]:
    """Every key and its contents (not DUMP bytes: a reload may re-encode a hash), except the sweeper's
    lease and fence, which move on every pass."""
    out: dict[bytes, Any] = {}
    for k in sorted(r.keys("*")):
        if b"{maint}" in k:
            continue
        kind = r.type(k)
        if kind == b"hash":
            out[k] = r.hgetall(k)
        elif kind == b"list":
            out[k] = r.lrange(k, 0, -1)
        elif kind == b"set":
            out[k] = r.smembers(k)
        elif kind == b"zset":
            out[k] = r.zrange(k, 0, -1, withscores=True)
        elif kind == b"string":
            out[k] = r.get(k)
        else:
            raise AssertionError(f"unexpected type {kind!r} of {k!r}")
    return out


def test_redis_kill9_keeps_acknowledged_transfers(h: Harness):
    started = time.monotonic()
    done, waiting = h.family(), h.family()
    tid_done, tid_waiting = rid("xfer"), rid("xfer")
    h.create(done, tid_done)
    acc = h.accept(done, tid_done, rid("acc"))
    assert acc.transfer.state == W.TRANSFER_STATE_COMPLETED
    t_wait = h.create(waiting, tid_waiting)
    assert t_wait.state == W.TRANSFER_STATE_PENDING_ACCEPT
    r = h.redis()
    try:
        before = _durable_snapshot(r)
    finally:
        r.close()
    before_wallet = h.wallet.GetWallet(wpb.GetWalletRequest(owner_id_number=done.recipient), timeout=CALL_S)

    old = h.topo.redis
    old.kill()  # kill -9 right after the acknowledgements
    assert old.proc is not None and old.proc.returncode == -9
    old.stop()  # closes its stderr pipe; the process is already gone
    fresh = RedisServer(port=old.port, data_dir=old.data_dir, appendfsync="always").start()
    fresh._own_dir = True  # the topology's teardown removes the data directory as before
    h.topo.redis = fresh

    r = h.redis()
    try:
        after = _durable_snapshot(r)
    finally:
        r.close()
    assert after == before  # every acknowledged write came back from the AOF, value for value
    # The services reconnect to the restarted Redis and read the same books. A call that lands on a
    # pooled connection to the dead server fails once (UNKNOWN: ConnectionError); the client retries it
    # with the same request id, as for any call whose outcome it does not know.
    transient: list[str] = []

    def retried(call: Callable[[], Any]) -> Any:
        deadline = time.monotonic() + RECOVERY_S
        while True:
            try:
                return call()
            except grpc.RpcError as exc:
                if exc.code() not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE) \
                        or time.monotonic() > deadline:
                    raise
                transient.append(f"{exc.code().name}: {exc.details()}")
                time.sleep(0.05)

    clean_rounds = 0
    while clean_rounds < 10:  # until every service has dropped its stale connections
        before_errors = len(transient)
        w = retried(lambda: h.wallet.GetWallet(wpb.GetWalletRequest(owner_id_number=done.recipient),
                                               timeout=CALL_S))
        retried(lambda: h.balance(done.sender))
        retried(lambda: h.reg("11").GetPerson(rpb.GetPersonRequest(id_number=done.recipient), timeout=CALL_S))
        clean_rounds = clean_rounds + 1 if len(transient) == before_errors else 0
    assert w == before_wallet
    assert h.transfer(tid_done).state == W.TRANSFER_STATE_COMPLETED
    assert h.transfer(tid_waiting).state == W.TRANSFER_STATE_PENDING_ACCEPT
    assert h.balance(done.sender) == FUNDS - AMOUNT and h.balance(waiting.sender) == FUNDS - AMOUNT
    assert h.lots_for(done, tid_done) == (1, 1, AMOUNT)
    # … and carry on: the waiting transfer is accepted after the crash, exactly once.
    acc_rid = rid("acc")
    acc = retried(lambda: h.accept(waiting, tid_waiting, acc_rid))
    assert acc.transfer.state == W.TRANSFER_STATE_COMPLETED and acc.wallet.balance_fen == AMOUNT
    assert h.ledger_refs(waiting.sender, tid_waiting) == [("TRANSFER_OUT", -AMOUNT)]
    assert h.lots_for(waiting, tid_waiting) == (1, 1, AMOUNT)
    print(f"\nredis kill -9: {len(transient)} call(s) failed once on a stale connection and were retried: "
          f"{sorted(set(transient))}")
    h.record("redis-server kill -9", tid_done, done, f"intact ({len(transient)} retried)", started)


# --- 3. onward transfers, relationship ends, death payouts ------------------------------

ONWARD_POINTS = ["transfer.after_debit", "transfer.after_pending", "accept.after_credit"]


def _resident_with_wallet(h: Harness) -> str:
    pid = new_id("110105", "19580101")
    h.reg("11").EnrollPerson(rpb.EnrollPersonRequest(
        request_id=rid("enroll"), id_number=pid, name="张姨", insurance_type=cpb.INSURANCE_TYPE_RESIDENT,
        pooling_region="110000"), timeout=CALL_S)
    h.wallet.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=pid, province="11",
                                              use_place_admdvs="110000", real_name=FACE), timeout=CALL_S)
    return pid


def _funded(h: Harness) -> tuple[Family, str]:
    """The son's 60,000 accepted into his mother's wallet: (family, that transfer's id)."""
    fam = h.family()
    tid = rid("xfer")
    h.create(fam, tid)
    h.accept(fam, tid, rid("acc"))
    return fam, tid


def _onward(h: Harness, fam: Family, sister: str, tid: str, amount: int = 20_000) -> wpb.Transfer:
    """The mother passes quota on to her sister (in-province, wallet → wallet)."""
    return h.wallet.CreateTransfer(wpb.CreateTransferRequest(
        request_id=tid, sender_id_number=fam.recipient, sender_province="11", recipient_id_number=sister,
        relation=cpb.RELATION_SIBLING, amount_fen=amount, verification=FACE, source=wpb.TRANSFER_SOURCE_WALLET),
        timeout=CALL_S).transfer


def _wallet_refs(h: Harness, owner: str, ref: str) -> list[tuple[str, int]]:
    entries = h.wallet.ListWalletEntries(wpb.ListWalletEntriesRequest(owner_id_number=owner, limit=500),
                                         timeout=CALL_S).entries
    return [(e.kind, e.amount_fen) for e in sorted(entries, key=lambda e: e.seq) if e.ref == ref]


def _wbal(h: Harness, owner: str) -> int:
    return int(h.wallet.GetWallet(wpb.GetWalletRequest(owner_id_number=owner), timeout=CALL_S).wallet.balance_fen)


@pytest.mark.parametrize("point", ONWARD_POINTS)
def test_wallet_killed_on_onward_transfer_path(h: Harness, point: str):
    started = time.monotonic()
    fam, funding = _funded(h)
    sister = _resident_with_wallet(h)
    otid, acc_rid = rid("onward"), rid("acc")
    if point == "accept.after_credit":
        assert _onward(h, fam, sister, otid).state == W.TRANSFER_STATE_PENDING_ACCEPT
        h.restart("wallet", point)
        err = h.crashes(lambda: h.wallet.AcceptTransfer(wpb.AcceptTransferRequest(
            request_id=acc_rid, transfer_id=otid, recipient_id_number=sister), timeout=CALL_S), "wallet")
    else:
        h.restart("wallet", point)
        err = h.crashes(lambda: _onward(h, fam, sister, otid), "wallet")
    assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
    h.restart("wallet")
    t = h.wait_state(otid, SETTLED)
    after_recovery = state_name(t.state)
    expected = W.TRANSFER_STATE_COMPLETED if point == "accept.after_credit" else W.TRANSFER_STATE_PENDING_ACCEPT
    assert t.state == expected, after_recovery
    if point != "accept.after_credit":
        assert _onward(h, fam, sister, otid) == h.transfer(otid)  # the client's retry: the same transfer
    acc = h.wallet.AcceptTransfer(wpb.AcceptTransferRequest(request_id=acc_rid, transfer_id=otid,
                                                            recipient_id_number=sister), timeout=CALL_S)
    assert acc.transfer.state == W.TRANSFER_STATE_COMPLETED and acc.wallet.balance_fen == 20_000
    assert _wallet_refs(h, fam.recipient, otid) == [("XFER_OUT", -20_000)]  # debited once
    assert _wallet_refs(h, sister, otid) == [("LOT_IN", 20_000)]
    assert _wbal(h, fam.recipient) == AMOUNT - 20_000
    lots = h.wallet.GetWallet(wpb.GetWalletRequest(owner_id_number=sister), timeout=CALL_S).lots
    assert [(x.sender_id_number, x.sender_province, x.via_id_number) for x in lots] == [
        (fam.sender, "13", fam.recipient)]
    h.record(f"wallet {point} (onward)", funding, fam, after_recovery, started)


def test_wallet_killed_returning_an_onward_transfer(h: Harness):
    started = time.monotonic()
    fam, funding = _funded(h)
    sister = _resident_with_wallet(h)
    otid, acc_rid = rid("onward"), rid("acc")
    t = _onward(h, fam, sister, otid)
    h.timeline.jump_to(t.expires_at_unix_ms + 30 * 60_000)
    h.restart("wallet", "expire.after_refund", grace_ms=10**12)
    h.crashes(lambda: h.wallet.AcceptTransfer(wpb.AcceptTransferRequest(
        request_id=acc_rid, transfer_id=otid, recipient_id_number=sister), timeout=CALL_S), "wallet")
    h.restart("wallet")
    t = h.wait_state(otid, TERMINAL)
    assert t.state == W.TRANSFER_STATE_RETURNED, state_name(t.state)
    assert _wallet_refs(h, fam.recipient, otid) == [("XFER_OUT", -20_000), ("XFER_BACK", 20_000)]
    assert _wbal(h, fam.recipient) == AMOUNT and _wbal(h, sister) == 0
    h.record("wallet expire.after_refund (onward)", funding, fam, state_name(t.state), started)


def test_wallet_killed_ending_a_relationship(h: Harness):
    """The holder ends the relationship; the wallet dies after taking the lots out, before the credit home."""
    started = time.monotonic()
    fam, funding = _funded(h)
    req = wpb.EndWalletRelationshipRequest(request_id=rid("end"), sender_id_number=fam.sender,
                                           holder_id_number=fam.recipient, requested_by_id_number=fam.recipient)
    h.restart("wallet", "release.after_lots")
    err = h.crashes(lambda: h.wallet.EndWalletRelationship(req, timeout=CALL_S), "wallet")
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    h.restart("wallet")
    deadline = time.monotonic() + RECOVERY_S
    while time.monotonic() < deadline and h.balance(fam.sender) != FUNDS:
        time.sleep(0.1)
    assert h.balance(fam.sender) == FUNDS  # the recovery loop credited the lot home
    resp = h.wallet.EndWalletRelationship(req, timeout=CALL_S)  # the client's retry
    assert resp.returned_fen == AMOUNT and h.balance(fam.sender) == FUNDS
    assert [k for k, _ in h.ledger_refs(fam.sender, _lot_return_id(h, fam))] == ["LOT_RETURN"]
    h.record("wallet release.after_lots (end relationship)", funding, fam, "lots home", started)


def test_wallet_killed_ending_a_relationship_after_its_transfers(h: Harness):
    """The relationship is one transfer waiting for acceptance; the wallet dies once it has sent it
    back, before the lots step. The ending's index entry is there: the maintenance pass ends it, and
    the client's retry answers instead of finding nothing to end."""
    started = time.monotonic()
    fam = h.family()
    tid = rid("xfer")
    h.create(fam, tid)
    req = wpb.EndWalletRelationshipRequest(request_id=rid("end"), sender_id_number=fam.sender,
                                           holder_id_number=fam.recipient, requested_by_id_number=fam.sender)
    h.restart("wallet", "release.after_transfers")
    err = h.crashes(lambda: h.wallet.EndWalletRelationship(req, timeout=CALL_S), "wallet")
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    h.restart("wallet")
    assert h.wait_state(tid, TERMINAL).state == W.TRANSFER_STATE_RETURNED
    assert h.balance(fam.sender) == FUNDS
    resp = h.wallet.EndWalletRelationship(req, timeout=CALL_S)  # the client's retry
    # The transfer this ending sent back went home: the retry's answer counts it.
    assert (resp.returned_fen, resp.transfers_returned) == (AMOUNT, 1) and h.balance(fam.sender) == FUNDS
    assert h.ledger_refs(fam.sender, tid) == [("TRANSFER_OUT", -AMOUNT), ("TRANSFER_RETURN", AMOUNT)]
    h.record("wallet release.after_transfers (end relationship)", tid, fam, "RETURNED", started)


def test_every_death_fault_point_has_a_crash_case():
    assert sorted(DEATH_FAULT_POINTS) == sorted(DEATH_POINTS)


DEATH_POINTS = ["death.after_status", "death.after_wallet", "death.after_payout"]


@pytest.mark.parametrize("point", DEATH_POINTS)
def test_registry_killed_recording_a_death(h: Harness, point: str):
    """The sender dies with 40,000 in the account and 60,000 in his mother's wallet; the registry is killed
    mid-flow. The resend with the same request id finishes: the lots come home first, then the whole
    100,000 is paid out to the heir, once."""
    started = time.monotonic()
    fam, funding = _funded(h)
    heir = new_id("130102", "19850101")
    req = rpb.RecordDeathRequest(request_id=rid("death"), id_number=fam.sender, heir_id_number=heir,
                                 date_of_death="20261121")
    h.restart("registry-13", point)
    h.crashes(lambda: h.reg("13").RecordDeath(req, timeout=CALL_S), "registry-13")
    h.restart("registry-13")
    resp = h.reg("13").RecordDeath(req, timeout=CALL_S)
    assert (resp.paid_out_fen, resp.person.balance_fen) == (FUNDS, 0)
    assert resp.person.status == cpb.PERSON_STATUS_DECEASED and resp.person.heir_id_number == heir
    assert h.reg("13").RecordDeath(req, timeout=CALL_S) == resp
    assert h.ledger_refs(fam.sender, req.request_id) == [("INHERITANCE_PAYOUT", -FUNDS)]
    assert _wbal(h, fam.recipient) == 0
    h.record(f"registry {point}", funding, fam, "DECEASED", started)
