"""Retry safety of the national 医保钱包 (SPEC §5, §7): every write may be re-sent with its request id
after a lost reply or a crash, and the request-id claims only answer replays — nothing is found
through them.

A crash between a write and the record of its answer leaves the claim PENDING; `crashed_after_effects`
puts a finished request's claim back into exactly that state (the answer dropped), so the re-send
below is the one a client makes after such a crash. A crash before any write is a fault hook that
raises at a named point (FAULT_POINTS in medaid.wallet.service).

Same fixtures and people as tests/test_wallet.py: "today" is 2026-11-22 10:00 Asia/Shanghai.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from conftest import LoopThread
from medaid.common.redis_client import scan_keys
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.client import Registries
from medaid.wallet.keys import WalletKeys
from medaid.wallet.service import Wallet
from medaid.wallet.v1 import wallet_pb2 as wpb
from support import RESIDENT, reason, rid
from test_wallet import EXISTS, FP, Env, at, family, refused

K = WalletKeys()


@pytest.fixture
def env(national: Any, rdb: Any) -> Env:
    return Env(national, rdb)


def claim_key(request_id: str) -> str:
    return f"{K.ns}:{{rid:{request_id}}}"


def crashed_after_effects(env: Env, request_id: str) -> None:
    """The claim as a crash after the request's writes, before its answer was recorded, leaves it."""
    key = claim_key(request_id)
    assert env.rdb.hget(key, "state") == b"DONE"
    env.rdb.hdel(key, "resp", "err")
    env.rdb.hset(key, "state", "PENDING")


def drop_every_claim(env: Env) -> int:
    """Delete every request-id claim, the wallet's and the registries' (as a TTL on claims would)."""
    keys = list(scan_keys(env.rdb, "*{rid:*}"))
    assert keys
    return int(env.rdb.delete(*keys))


class Crash(Exception):
    """Raised by the fault hook: the process 'dies' at that point (the client sees the call fail)."""


class CrashOnce:
    def __init__(self, point: str) -> None:
        self.point = point
        self.fired = False

    def __call__(self, point: str) -> None:
        if point == self.point and not self.fired:
            self.fired = True
            raise Crash(point)


# ================================================================================================
# Claims are not the domain index
# ================================================================================================


def test_transfers_found_accepted_and_returned_without_any_claim(env):
    son, mother = family(env)
    daughter = env.person("62", bal=100_000)
    to_accept = env.send(son, "13", mother, 30_000)
    to_expire = env.send(daughter, "62", mother, 20_000)
    spent = env.fund(env.person("13", bal=50_000), "13", mother, 10_000)
    spend_req = env.spend_req(mother, 4_000)
    env.w.SpendWallet(spend_req)
    assert drop_every_claim(env) > 0

    # GetTransfer finds every transfer by its id alone.
    for t in (to_accept, to_expire, spent):
        assert env.transfer(t.transfer_id).amount_fen == t.amount_fen
    # AcceptTransfer finds it too.
    acc = env.accept(to_accept.transfer_id, mother)
    assert acc.transfer.state == wpb.TRANSFER_STATE_COMPLETED
    assert env.transfer(to_accept.transfer_id).state == wpb.TRANSFER_STATE_COMPLETED
    # A spend is refunded through its own record.
    r = env.w.RefundWalletSpend(wpb.RefundWalletSpendRequest(
        request_id=rid("ref"), spend_id=spend_req.request_id, owner_id_number=mother))
    assert (r.refunded_fen, r.balance_after_fen) == (4_000, 40_000)
    # The 06:00 return of the unaccepted one.
    drop_every_claim(env)
    env.clock.set(at(23, 6, 1))
    assert env.maintain().expired == 1
    assert env.transfer(to_expire.transfer_id).state == wpb.TRANSFER_STATE_RETURNED
    assert env.bal("62", daughter) == 100_000
    assert env.bal("13", son) == 70_000
    assert env.wbal(mother) == 40_000


def test_transfer_id_of_another_recipients_transfer_refused_without_its_claim(env):
    """With the claim gone, a transfer id already naming a transfer to someone else cannot name a
    second one (the registry debits by transfer id): refused, nothing written."""
    son, mother = family(env)
    t = env.send(son, "13", mother, 30_000)
    daughter = env.person("62", bal=100_000)
    father = env.person("11", itype=RESIDENT, birth="19550101")
    env.open(father, "11")
    drop_every_claim(env)
    before = env.snap()
    refused(EXISTS, "IDEMPOTENCY_KEY_REUSED", env.w.CreateTransfer,
            env.xfer_req(daughter, "62", father, 10_000, request_id=t.transfer_id))
    assert env.snap() == before
    assert env.transfer(t.transfer_id).recipient_id_number == mother
    assert env.bal("62", daughter) == 100_000


# ================================================================================================
# A re-send after its first attempt wrote recognises its own effect
# ================================================================================================


def test_open_wallet_resent_after_its_wallet_was_opened(env):
    """The wallet was opened but the answer never recorded; meanwhile the owner's insurance was
    suspended. The re-send finds the wallet its request id opened and answers it (no
    OWNER_NOT_INSURED, no WALLET_EXISTS)."""
    owner = env.person("11", itype=RESIDENT)
    req = env.open_req(owner, "11")
    first = env.w.OpenWallet(req)
    crashed_after_effects(env, req.request_id)
    env.set_status("11", owner, cpb.PERSON_STATUS_SUSPENDED)
    assert env.w.OpenWallet(req) == first
    assert env.w.OpenWallet(req) == first  # and from now on a plain replay
    # Another request id for the same owner is still refused.
    env.set_status("11", owner, cpb.PERSON_STATUS_ACTIVE)
    refused(EXISTS, "WALLET_EXISTS", env.w.OpenWallet, env.open_req(owner, "11"))


def test_use_place_change_resent_after_a_later_change_undoes_nothing(env):
    """使用地变更 to 130200 was made, its answer lost; the owner then changed the use-place again, to
    130300. The re-send of the first request finds its change made and does not make it again: the
    use-place stays where the owner last put it, in the wallet and in the registry's note."""
    owner = env.person("13", itype=RESIDENT, birth="19550101", wallet=True)
    first = wpb.ChangeUsePlaceRequest(request_id=rid("up"), owner_id_number=owner, use_place_admdvs="130200")
    env.w.ChangeUsePlace(first)
    crashed_after_effects(env, first.request_id)
    env.w.ChangeUsePlace(wpb.ChangeUsePlaceRequest(request_id=rid("up"), owner_id_number=owner,
                                                   use_place_admdvs="130300"))
    assert env.w.ChangeUsePlace(first).wallet.use_place_admdvs == "130300"
    assert env.wallet(owner).wallet.use_place_admdvs == "130300"
    assert env.rdb.hget(f"reg:13:{{p:{owner}}}:person", "wallet_place") == b"130300"


def test_spend_resent_after_the_use_place_changed(env):
    """The spend was made, its answer lost; the owner then moved the use-place (使用地变更, SPEC §5; the
    wallet has no RPC for it yet, so the test sets it in Redis). The re-send answers the spend that
    was made, instead of OUTSIDE_USE_PLACE for a spend that happened."""
    son, mother = family(env)
    env.fund(son, "13", mother, 20_000)
    req = env.spend_req(mother, 5_000)
    first = env.w.SpendWallet(req)
    crashed_after_effects(env, req.request_id)
    env.rdb.hset(K.wallet(mother), "use_place", "110101")
    assert env.w.SpendWallet(req) == first
    assert env.wbal(mother) == 15_000
    kinds = [e.kind for e in env.w.ListWalletEntries(wpb.ListWalletEntriesRequest(owner_id_number=mother)).entries]
    assert kinds == ["SPEND", "LOT_IN"]


def test_refund_resent_after_its_refund_was_made(env):
    """The refund script ran, its answer was lost: the re-send of the same refund request id gets the
    refund it made (the first balance after it), not SPEND_ALREADY_REFUNDED; money moves once."""
    son, mother = family(env)
    env.fund(son, "13", mother, 20_000)
    spend_req = env.spend_req(mother, 5_000)
    env.w.SpendWallet(spend_req)
    ref_req = wpb.RefundWalletSpendRequest(request_id=rid("ref"), spend_id=spend_req.request_id,
                                           owner_id_number=mother)
    first = env.w.RefundWalletSpend(ref_req)
    assert (first.refunded_fen, first.balance_after_fen) == (5_000, 20_000)
    env.spend(mother, 1_000)  # the balance moves on before the re-send
    crashed_after_effects(env, ref_req.request_id)
    assert env.w.RefundWalletSpend(ref_req) == first
    assert env.wbal(mother) == 19_000
    entries = env.w.ListWalletEntries(wpb.ListWalletEntriesRequest(owner_id_number=mother)).entries
    assert [e.kind for e in entries].count("SPEND_REFUND") == 1
    # Another request id still finds it refunded.
    refused(FP, "SPEND_ALREADY_REFUNDED", env.w.RefundWalletSpend, wpb.RefundWalletSpendRequest(
        request_id=rid("ref"), spend_id=spend_req.request_id, owner_id_number=mother))


def test_accept_resent_after_its_credit(env):
    son, mother = family(env)
    t = env.send(son, "13", mother, 30_000)
    acc_rid = rid("acc")
    first = env.accept(t.transfer_id, mother, acc_rid)
    crashed_after_effects(env, acc_rid)
    assert env.accept(t.transfer_id, mother, acc_rid) == first
    assert env.wbal(mother) == 30_000 and len(env.wallet(mother).lots) == 1


# ================================================================================================
# A re-send refused after a crash does not leave its claim behind
# ================================================================================================


def test_accept_crashed_then_refused_expired_is_judged_afresh_with_new_fields(env):
    son, mother = family(env)
    t = env.send(son, "13", mother, 30_000)
    acc_rid = rid("acc")
    hook = CrashOnce("accept.after_claim")
    env.n.wallet.wallet.fault_hook = hook
    try:
        with pytest.raises(grpc.RpcError) as ei:
            env.accept(t.transfer_id, mother, acc_rid)
    finally:
        env.n.wallet.wallet.fault_hook = None
    assert hook.fired and ei.value.code() == grpc.StatusCode.UNKNOWN
    assert env.rdb.hget(claim_key(acc_rid), "state") == b"PENDING"
    # The re-send comes after the deadline: refused, and the claim goes with the refusal.
    env.clock.set(at(23, 6, 30))
    refused(FP, "TRANSFER_EXPIRED", env.w.AcceptTransfer, wpb.AcceptTransferRequest(
        request_id=acc_rid, transfer_id=t.transfer_id, recipient_id_number=mother))
    assert not env.rdb.exists(claim_key(acc_rid))
    assert env.transfer(t.transfer_id).state == wpb.TRANSFER_STATE_RETURNED
    assert env.bal("13", son) == 100_000
    # The same request id, corrected to name the new transfer, is judged afresh.
    again = env.send(son, "13", mother, 10_000)
    acc = env.accept(again.transfer_id, mother, acc_rid)
    assert acc.transfer.state == wpb.TRANSFER_STATE_COMPLETED
    assert acc.wallet.balance_fen == 10_000
    assert env.accept(again.transfer_id, mother, acc_rid) == acc


# ================================================================================================
# A refused accept writes nothing
# ================================================================================================


def test_accept_of_a_returned_transfer_writes_nothing(env):
    son, mother = family(env)
    t = env.send(son, "13", mother, 30_000)
    env.clock.set(at(23, 6, 1))
    assert env.maintain().expired == 1
    before = env.snap()
    for _ in range(2):
        refused(FP, "TRANSFER_EXPIRED", env.w.AcceptTransfer, wpb.AcceptTransferRequest(
            request_id=rid("acc"), transfer_id=t.transfer_id, recipient_id_number=mother))
    assert env.snap() == before
    assert not env.rdb.exists(K.holders(son))


def test_accept_past_the_deadline_registers_no_holder(env):
    """Before the sweeper came: the refusal drives the due return, and adds nothing of its own."""
    son, mother = family(env)
    t = env.send(son, "13", mother, 30_000)
    env.clock.set(at(23, 6))
    with pytest.raises(grpc.RpcError) as ei:
        env.accept(t.transfer_id, mother)
    assert reason(ei.value) == "TRANSFER_EXPIRED"
    assert not env.rdb.exists(K.holders(son))
    assert env.transfer(t.transfer_id).state == wpb.TRANSFER_STATE_RETURNED
    assert env.bal("13", son) == 100_000


def test_accept_refused_by_the_script_after_a_concurrent_return_writes_nothing(env):
    """The accept read the transfer PENDING_ACCEPT, then the sweeper moved it on
    (RETURNING) before the accept's script ran. The script refuses TRANSFER_EXPIRED, and Redis is as
    the sweeper left it: no `holders` entry for the sender, no lot, no claim."""
    son, mother = family(env)
    t = env.send(son, "13", mother, 30_000)
    key = K.transfer(mother, t.transfer_id)
    seen: dict[str, Any] = {}

    def sweeper_wins(point: str) -> None:
        if point == "accept.after_claim" and not seen:
            env.rdb.hset(key, "state", "RETURNING")  # the sweeper's compare-and-set, in between
            seen["before"] = env.snap()

    env.n.wallet.wallet.fault_hook = sweeper_wins
    acc_rid = rid("acc")
    try:
        refused(FP, "TRANSFER_EXPIRED", env.w.AcceptTransfer, wpb.AcceptTransferRequest(
            request_id=acc_rid, transfer_id=t.transfer_id, recipient_id_number=mother))
    finally:
        env.n.wallet.wallet.fault_hook = None
    after = env.snap()
    before = seen["before"]
    before.pop(claim_key(acc_rid).encode(), None)  # the claim was taken before the hook; the refusal drops it
    assert after == before
    assert not env.rdb.exists(K.holders(son))
    # The sweeper finishes the return: the money is home, nothing was credited.
    assert env.maintain().recovered == 1
    assert env.transfer(t.transfer_id).state == wpb.TRANSFER_STATE_RETURNED
    assert env.bal("13", son) == 100_000 and env.wbal(mother) == 0


# ================================================================================================
# A creator stalled past the recovery grace
# ================================================================================================


def test_creator_stalled_past_the_grace_never_debits_an_untracked_transfer(env, redis_server):
    """Two wallet replicas. Replica A reserves the sender's limits for a transfer and stalls (its whole
    event loop blocked, as SIGSTOP does) before recording it; past the grace, replica B's recovery pass
    finds the id without a record. A then wakes up. Before the fix B dropped the id from the in-flight
    index and A recorded and debited the transfer: PENDING_ACCEPT, never returned at 06:00, and outside
    the sender's one-unaccepted limit. Now B records it FAILED first, so A stops: nothing is debited,
    and every transfer the sender makes afterwards keeps the limits and returns at 06:00."""
    son, mother = family(env)
    other = LoopThread()

    async def boot() -> Wallet:
        client = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
        regs = {p: f"127.0.0.1:{r.port}" for p, r in env.n.registries.items()}
        return Wallet(client, Registries(regs), clock=env.clock, recovery_grace_ms=1_000)

    replica_b = other.run(boot())
    passes: list[wpb.RunMaintenanceResponse] = []

    def stall_while_b_recovers(point: str) -> None:
        if point == "transfer.after_reserve" and not passes:
            env.clock.advance(2_000)  # A is stalled past B's grace
            passes.append(other.run(replica_b.maintain()))

    env.n.wallet.wallet.fault_hook = stall_while_b_recovers
    req = env.xfer_req(son, "13", mother, 30_000)
    try:
        refused(FP, "TRANSFER_ABANDONED", env.w.CreateTransfer, req)
    finally:
        env.n.wallet.wallet.fault_hook = None

        async def close() -> None:
            await replica_b.registries.close()
            await replica_b.r.aclose()

        other.run(close())
        other.stop()
    assert passes and passes[0].ran and passes[0].recovered == 1
    t = env.transfer(req.request_id)
    assert (t.state, t.failure_reason, t.amount_fen) == (wpb.TRANSFER_STATE_FAILED, "TRANSFER_ABANDONED", 30_000)
    assert env.bal("13", son) == 100_000  # never debited
    assert not env.rdb.zcard(K.inflight()) and not env.rdb.exists(K.pending(son))
    # A resend of the request id gets the same answer; nothing moves.
    refused(FP, "TRANSFER_ABANDONED", env.w.CreateTransfer, req)
    assert env.bal("13", son) == 100_000
    # The sender's limits hold: one unaccepted transfer at a time, and it goes back at 06:00.
    nxt = env.send(son, "13", mother, 20_000)
    assert nxt.state == wpb.TRANSFER_STATE_PENDING_ACCEPT
    refused(FP, "PENDING_TRANSFER_EXISTS", env.w.CreateTransfer, env.xfer_req(son, "13", mother, 1_000))
    env.clock.set(at(23, 6, 1))
    assert env.maintain().expired == 1
    assert env.transfer(nxt.transfer_id).state == wpb.TRANSFER_STATE_RETURNED
    assert env.bal("13", son) == 100_000 and env.wbal(mother) == 0
    assert not env.rdb.zcard(K.inflight())
