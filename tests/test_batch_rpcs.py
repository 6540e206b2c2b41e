"""The registry's batch RPCs GetPersons and DebitForTransferBatch, and the wallet's batched client.

Real redis-server and real gRPC servers on loopback (conftest): each item of a batch must behave
exactly like the single call (GetPerson / DebitForTransfer), in order, with its own refusal; a
refused batch writes nothing (Redis snapshots); money is conserved to the fen. The wallet's
`Registries` client sends person checks and debits through per-province Batchers: counted here at
the registry (a pass-through wrapper on the `Registry` object, the real call still runs)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from conftest import policy_for
from medaid.common import authz, tls
from medaid.common.errors import DomainError, status_code
from medaid.common.idnumber import make
from medaid.common.rpc import sync_channel
from medaid.common.server import start_server
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.client import Registries
from medaid.registry.context import MAX_BATCH
from medaid.registry.rules import MAX_AMOUNT_FEN
from medaid.registry.service import Registry
from medaid.registry.servicer import register
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.registry.v1 import registry_pb2_grpc as rpb_grpc
from medaid.wallet.v1 import wallet_pb2 as wpb
from support import (
    FACE,
    FLEXIBLE,
    RESIDENT,
    balance,
    credit,
    enroll,
    new_id,
    reason,
    rid,
    snapshot,
    test_clock,
    total_balances,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT
FP = grpc.StatusCode.FAILED_PRECONDITION


# --- helpers -------------------------------------------------------------------------------------


def set_status(stub: Any, pid: str, status: int, moved_to: str = "") -> None:
    stub.UpdatePersonStatus(rpb.UpdatePersonStatusRequest(request_id=rid("st"), id_number=pid, status=status,
                                                          moved_to_province=moved_to))


def bad_checksum(pid: str) -> str:
    return pid[:-1] + ("0" if pid[-1] != "0" else "1")


def item_error(e: rpb.ItemError) -> tuple[grpc.StatusCode, str]:
    return status_code(e.code), e.reason


def single_error(call: Any, req: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as ei:
        call(req)
    return ei.value.code(), reason(ei.value)


def debit(tid: str, sender: str, amount: int, to: str = "11") -> rpb.DebitForTransferRequest:
    return rpb.DebitForTransferRequest(transfer_id=tid, sender_id_number=sender, amount_fen=amount,
                                       recipient_province=to)


def outcome(o: rpb.DebitForTransferOutcome) -> tuple:
    if o.HasField("error"):
        return ("error", *item_error(o.error))
    return ("ok", o.response.balance_after_fen, o.response.replayed)


def ledger(rdb: Any, reg: Registry, pid: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in rdb.lrange(reg.k.ledger(pid), 0, -1)]


def transfers_out(rdb: Any, reg: Registry, pid: str) -> list[tuple[str, int, int]]:
    return [(e["ref"], e["amount"], e["bal"]) for e in ledger(rdb, reg, pid) if e["kind"] == "TRANSFER_OUT"]


class Calls:
    """Counts the batch calls a registry serves (and the sizes); the real method still runs."""

    NAMES = ("get_person", "get_persons", "debit_for_transfer", "debit_for_transfer_batch")

    def __init__(self, reg: Registry) -> None:
        self.reg = reg
        self.sizes: dict[str, list[int]] = {n: [] for n in self.NAMES}
        self.lock = threading.Lock()
        for name in self.NAMES:
            real = getattr(reg, name)

            async def counted(req: Any, real: Any = real, name: str = name) -> Any:
                n = len(req.id_numbers) if name == "get_persons" else \
                    len(req.requests) if name == "debit_for_transfer_batch" else 1
                with self.lock:
                    self.sizes[name].append(n)
                return await real(req)

            setattr(reg, name, counted)

    def restore(self) -> None:
        for name in self.NAMES:
            delattr(self.reg, name)


@pytest.fixture
def counted(national: Any) -> Iterator[dict[str, Calls]]:
    calls = {p: Calls(r.registry) for p, r in national.registries.items()}
    try:
        yield calls
    finally:
        for c in calls.values():
            c.restore()


# ================================================================================================
# GetPersons
# ================================================================================================


def test_get_persons_answers_each_id_in_order_like_get_person(hebei, rdb):
    s = hebei.stub
    emp = enroll(s)
    credit(s, emp, 12_345)
    kid = enroll(s, itype=RESIDENT, birth="20150101")
    flex = enroll(s, itype=FLEXIBLE, tier=2)
    credit(s, flex, 700)
    suspended = enroll(s)
    credit(s, suspended, 5_000)
    set_status(s, suspended, cpb.PERSON_STATUS_SUSPENDED)
    moved = enroll(s)
    set_status(s, moved, cpb.PERSON_STATUS_TERMINATED, moved_to="11")
    stranger = new_id()                  # valid, never enrolled
    elsewhere = new_id("110105")         # valid, a 北京 id, not enrolled here
    ids = [emp, stranger, kid, "not-an-id", flex, bad_checksum(emp), suspended, "", moved, elsewhere, emp]
    before = snapshot(rdb)
    out = s.GetPersons(rpb.GetPersonsRequest(id_numbers=ids)).outcomes
    assert snapshot(rdb) == before  # a read
    assert len(out) == len(ids)
    for pid, o in zip(ids, out, strict=True):
        if o.HasField("person"):
            assert o.person == s.GetPerson(rpb.GetPersonRequest(id_number=pid)).person, pid
            assert o.person.id_number == pid
        else:
            assert o.HasField("error") and o.error.message
            assert item_error(o.error) == single_error(s.GetPerson, rpb.GetPersonRequest(id_number=pid)), pid
    kinds = [("person" if o.HasField("person") else o.error.reason) for o in out]
    assert kinds == ["person", "PERSON_NOT_FOUND", "person", "INVALID_ID_NUMBER", "person", "INVALID_ID_NUMBER",
                     "person", "INVALID_ID_NUMBER", "person", "PERSON_NOT_FOUND", "person"]
    assert item_error(out[1].error) == (grpc.StatusCode.NOT_FOUND, "PERSON_NOT_FOUND")
    assert item_error(out[3].error) == (INVALID, "INVALID_ID_NUMBER")
    assert (out[0].person.balance_fen, out[0].person.has_personal_account) == (12_345, True)
    assert (out[2].person.balance_fen, out[2].person.has_personal_account) == (0, False)
    assert out[4].person.balance_fen == 700
    assert out[6].person.status == cpb.PERSON_STATUS_SUSPENDED
    assert (out[8].person.status, out[8].person.moved_to_province) == (cpb.PERSON_STATUS_TERMINATED, "11")
    assert out[10] == out[0]
    # Only invalid ids: every item answers, nothing is read.
    only_bad = s.GetPersons(rpb.GetPersonsRequest(id_numbers=["x", bad_checksum(kid)])).outcomes
    assert [item_error(o.error) for o in only_bad] == [(INVALID, "INVALID_ID_NUMBER")] * 2


def test_get_persons_batch_limits(hebei, rdb):
    s = hebei.stub
    emp = enroll(s)
    credit(s, emp, 100)
    before = snapshot(rdb)
    for ids, why in (([], "EMPTY_BATCH"), ([emp] * (MAX_BATCH + 1), "BATCH_TOO_LARGE")):
        with pytest.raises(grpc.RpcError) as ei:
            s.GetPersons(rpb.GetPersonsRequest(id_numbers=ids))
        assert (ei.value.code(), reason(ei.value)) == (INVALID, why), ei.value.details()
    assert snapshot(rdb) == before
    # Exactly MAX_BATCH is answered, in order.
    many = [make("130102", "19770707", f"{i:03d}") for i in range(MAX_BATCH - 1)]
    out = s.GetPersons(rpb.GetPersonsRequest(id_numbers=[*many[:300], emp, *many[300:]])).outcomes
    assert len(out) == MAX_BATCH
    assert [o.person.id_number for o in out if o.HasField("person")] == [emp]
    assert out[300].person.balance_fen == 100
    assert {o.error.reason for o in out if o.HasField("error")} == {"PERSON_NOT_FOUND"}


# ================================================================================================
# DebitForTransferBatch
# ================================================================================================


def test_debit_batch_answers_each_item_like_debit_for_transfer(hebei, rdb):
    s, reg = hebei.stub, hebei.registry
    rich = enroll(s)
    credit(s, rich, 10_000)
    poor = enroll(s)
    credit(s, poor, 1_000)
    other = enroll(s)
    credit(s, other, 3_000)
    suspended = enroll(s)
    credit(s, suspended, 9_000)
    set_status(s, suspended, cpb.PERSON_STATUS_SUSPENDED)
    kid = enroll(s, itype=RESIDENT, birth="20150101")     # no personal account
    flex1 = enroll(s, itype=FLEXIBLE, tier=1)              # no personal account either
    stranger = new_id()                                    # valid, never enrolled
    people = [rich, poor, other, suspended, kid, flex1]
    bal0 = {p: balance(s, p) for p in people}
    total0 = total_balances(rdb)
    items = [
        debit("t-rich-1", rich, 6_000),          # 0 ok: 10 000 → 4 000
        debit("t-poor-1", poor, 5_000),          # 1 INSUFFICIENT_BALANCE
        debit("t-rich-2", rich, 5_000),          # 2 INSUFFICIENT_BALANCE (item 0 came first)
        debit("t-susp-1", suspended, 100),       # 3 SENDER_NOT_ACTIVE
        debit("t-kid-1", kid, 100),              # 4 SENDER_NOT_EMPLOYEE
        debit("t-flex-1", flex1, 100),           # 5 SENDER_NOT_EMPLOYEE
        debit("t-str-1", stranger, 100),         # 6 PERSON_NOT_FOUND
        debit("t-rich-3", rich, 0),              # 7 INVALID_AMOUNT
        debit("t-rich-4", rich, -5),             # 8 INVALID_AMOUNT
        debit("bad id!", rich, 100),             # 9 INVALID_REQUEST_ID
        debit("t-bad-1", bad_checksum(rich), 100),  # 10 INVALID_ID_NUMBER
        debit("t-rich-5", rich, 4_000),          # 11 ok: 4 000 → 0
        debit("t-other-1", other, 3_000),        # 12 ok: the whole balance
        debit("t-poor-2", poor, 1_000),          # 13 ok: the whole balance
    ]
    resp = s.DebitForTransferBatch(rpb.DebitForTransferBatchRequest(requests=items))
    got = [outcome(o) for o in resp.outcomes]
    assert got == [
        ("ok", 4_000, False),
        ("error", FP, "INSUFFICIENT_BALANCE"),
        ("error", FP, "INSUFFICIENT_BALANCE"),
        ("error", FP, "SENDER_NOT_ACTIVE"),
        ("error", FP, "SENDER_NOT_EMPLOYEE"),
        ("error", FP, "SENDER_NOT_EMPLOYEE"),
        ("error", grpc.StatusCode.NOT_FOUND, "PERSON_NOT_FOUND"),
        ("error", INVALID, "INVALID_AMOUNT"),
        ("error", INVALID, "INVALID_AMOUNT"),
        ("error", INVALID, "INVALID_REQUEST_ID"),
        ("error", INVALID, "INVALID_ID_NUMBER"),
        ("ok", 0, False),
        ("ok", 0, False),
        ("ok", 0, False),
    ]
    # Conservation to the fen: exactly the successful debits left the accounts.
    paid = {rich: 6_000 + 4_000, other: 3_000, poor: 1_000}
    for p in people:
        assert balance(s, p) == bal0[p] - paid.get(p, 0), p
    assert total0 - total_balances(rdb) == sum(paid.values()) == 14_000
    # The ledger: one TRANSFER_OUT per successful debit, with its transfer id; none for the refused.
    assert transfers_out(rdb, reg, rich) == [("t-rich-1", -6_000, 4_000), ("t-rich-5", -4_000, 0)]
    assert transfers_out(rdb, reg, other) == [("t-other-1", -3_000, 0)]
    assert transfers_out(rdb, reg, poor) == [("t-poor-2", -1_000, 0)]
    for p in (suspended, kid, flex1):
        assert transfers_out(rdb, reg, p) == []
    assert not rdb.exists(reg.k.person(stranger)) and not rdb.exists(reg.k.ledger(stranger))
    # Each item is its DebitForTransfer: refusals wrote nothing and refuse alike one by one; the
    # successes replay.
    for item, g in zip(items, got, strict=True):
        if g[0] == "error":
            assert single_error(s.DebitForTransfer, item) == g[1:], item
        else:
            one = s.DebitForTransfer(item)
            assert one.replayed and one.balance_after_fen == balance(s, item.sender_id_number)
    # A refused debit may go through later under the same transfer id once the cause is gone.
    set_status(s, suspended, cpb.PERSON_STATUS_ACTIVE)
    credit(s, poor, 5_000)
    again = s.DebitForTransferBatch(rpb.DebitForTransferBatchRequest(requests=[items[3], items[1]])).outcomes
    assert [outcome(o) for o in again] == [("ok", 8_900, False), ("ok", 0, False)]


def test_debit_batch_same_transfer_twice_in_one_batch_debits_once(hebei, rdb):
    s, reg = hebei.stub, hebei.registry
    son = enroll(s)
    credit(s, son, 10_000)
    item = debit("t-twice", son, 2_500)
    clash = debit("t-twice", son, 2_600)  # the same transfer id with another amount
    total0 = total_balances(rdb)
    out = s.DebitForTransferBatch(rpb.DebitForTransferBatchRequest(requests=[item, item, clash])).outcomes
    assert [outcome(o) for o in out] == [("ok", 7_500, False), ("ok", 7_500, True),
                                         ("error", grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")]
    assert balance(s, son) == 7_500
    assert total0 - total_balances(rdb) == 2_500
    assert transfers_out(rdb, reg, son) == [("t-twice", -2_500, 7_500)]
    one = s.DebitForTransfer(item)
    assert (one.balance_after_fen, one.replayed) == (7_500, True)
    assert single_error(s.DebitForTransfer, clash) == (grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")


def test_replaying_a_whole_batch_changes_nothing_and_answers_replayed(hebei, rdb):
    s = hebei.stub
    a, b, c = enroll(s), enroll(s), enroll(s)
    for p, amt in ((a, 5_000), (b, 2_000), (c, 300)):
        credit(s, p, amt)
    kid = enroll(s, itype=RESIDENT, birth="20150101")
    items = [debit(rid("t"), a, 1_234), debit(rid("t"), b, 2_000), debit(rid("t"), c, 301),
             debit(rid("t"), kid, 10), debit(rid("t"), a, 66)]
    first = [outcome(o) for o in s.DebitForTransferBatch(rpb.DebitForTransferBatchRequest(requests=items)).outcomes]
    assert first == [("ok", 3_766, False), ("ok", 0, False), ("error", FP, "INSUFFICIENT_BALANCE"),
                     ("error", FP, "SENDER_NOT_EMPLOYEE"), ("ok", 3_700, False)]
    before = snapshot(rdb)
    for _ in range(2):
        again = [outcome(o) for o in
                 s.DebitForTransferBatch(rpb.DebitForTransferBatchRequest(requests=items)).outcomes]
        # A replay answers with the balance now (a's second debit followed its first).
        assert again == [("ok", 3_700, True), ("ok", 0, True), ("error", FP, "INSUFFICIENT_BALANCE"),
                         ("error", FP, "SENDER_NOT_EMPLOYEE"), ("ok", 3_700, True)]
        assert snapshot(rdb) == before


def test_a_refunded_transfer_id_is_never_debited_by_a_batch(hebei, rdb):
    s, reg = hebei.stub, hebei.registry
    son = enroll(s)
    credit(s, son, 10_000)
    # Cancelled before any debit (the wallet gave up on it): the late debit must not take money.
    cancelled = debit("t-cancel", son, 1_000)
    r = s.RefundTransfer(rpb.RefundTransferRequest(transfer_id="t-cancel", sender_id_number=son, amount_fen=1_000))
    assert (r.refunded_fen, r.balance_after_fen) == (0, 10_000)
    # Debited, then given back: a retry of the debit must not take it again.
    returned = debit("t-return", son, 2_000)
    assert s.DebitForTransfer(returned).balance_after_fen == 8_000
    r = s.RefundTransfer(rpb.RefundTransferRequest(transfer_id="t-return", sender_id_number=son, amount_fen=2_000))
    assert (r.refunded_fen, r.balance_after_fen) == (2_000, 10_000)
    ok = debit("t-fine", son, 500)
    before_total = total_balances(rdb)
    out = s.DebitForTransferBatch(rpb.DebitForTransferBatchRequest(requests=[cancelled, returned, ok])).outcomes
    assert [outcome(o) for o in out] == [("error", FP, "TRANSFER_CANCELLED"), ("error", FP, "TRANSFER_CANCELLED"),
                                         ("ok", 9_500, False)]
    assert before_total - total_balances(rdb) == 500
    assert [e[0] for e in transfers_out(rdb, reg, son)] == ["t-return", "t-fine"]
    assert single_error(s.DebitForTransfer, cancelled) == (FP, "TRANSFER_CANCELLED")


def test_debit_batch_limits_write_nothing(hebei, rdb):
    s = hebei.stub
    son = enroll(s)
    credit(s, son, 1_000_000)
    before = snapshot(rdb)
    too_many = [debit(f"t-big-{i}", son, 1) for i in range(MAX_BATCH + 1)]  # each alone would succeed
    for items, why in (([], "EMPTY_BATCH"), (too_many, "BATCH_TOO_LARGE")):
        with pytest.raises(grpc.RpcError) as ei:
            s.DebitForTransferBatch(rpb.DebitForTransferBatchRequest(requests=items))
        assert (ei.value.code(), reason(ei.value)) == (INVALID, why), ei.value.details()
    assert snapshot(rdb) == before
    # A batch of nothing but invalid items answers each of them, and writes nothing either.
    bad = [debit("t-huge", son, MAX_AMOUNT_FEN + 1), debit("", son, 1), debit("t-x", "", 1), debit("t-y", son, 0)]
    out = s.DebitForTransferBatch(rpb.DebitForTransferBatchRequest(requests=bad)).outcomes
    assert [outcome(o) for o in out] == [("error", INVALID, why) for why in (
        "AMOUNT_TOO_LARGE", "INVALID_REQUEST_ID", "INVALID_ID_NUMBER", "INVALID_AMOUNT")]
    assert snapshot(rdb) == before
    out = s.DebitForTransferBatch(rpb.DebitForTransferBatchRequest(requests=too_many[:MAX_BATCH])).outcomes
    assert len(out) == MAX_BATCH and all(o.HasField("response") for o in out)
    assert balance(s, son) == 1_000_000 - MAX_BATCH
    assert out[-1].response.balance_after_fen == 1_000_000 - MAX_BATCH


# ================================================================================================
# The wallet's Registries client: batched person checks and debits
# ================================================================================================


def test_registries_client_batches_and_answers_each_caller(national, loop_thread, counted, rdb):
    hebei = national.reg("13")
    senders = [enroll(hebei) for _ in range(12)]
    for p in senders:
        credit(hebei, p, 1_000)
    kid = enroll(hebei, itype=RESIDENT, birth="20150101")
    stranger = new_id()
    total0 = total_balances(rdb)
    registries = Registries({p: f"127.0.0.1:{r.port}" for p, r in national.registries.items()})

    async def go() -> tuple[list[Any], list[Any]]:
        persons = await asyncio.gather(*(registries.person("13", p) for p in [*senders, kid, stranger]),
                                       return_exceptions=True)
        reqs = [debit(f"c-{i}", p, 400 if i % 4 else 1_500) for i, p in enumerate(senders)]
        reqs += [debit("c-kid", kid, 10), debit("c-str", stranger, 10), reqs[1]]
        debits = await asyncio.gather(*(registries.debit_for_transfer("13", r) for r in reqs),
                                      return_exceptions=True)
        await registries.close()
        return persons, debits

    persons, debits = loop_thread.run(go())
    assert [p.id_number for p in persons[:13]] == [*senders, kid]
    assert [p.balance_fen for p in persons[:12]] == [1_000] * 12
    assert persons[13] is None  # not enrolled: None, not an error
    for i, d in enumerate(debits[:12]):
        if i % 4:
            assert (d.balance_after_fen, d.replayed) == (600, False), (i, d)
        else:
            assert isinstance(d, DomainError) and (d.code, d.reason) == (FP, "INSUFFICIENT_BALANCE"), (i, d)
    assert isinstance(debits[12], DomainError) and debits[12].reason == "SENDER_NOT_EMPLOYEE"
    assert isinstance(debits[13], DomainError) and (debits[13].code, debits[13].reason) == \
        (grpc.StatusCode.NOT_FOUND, "PERSON_NOT_FOUND")
    assert (debits[14].balance_after_fen, debits[14].replayed) == (600, True)  # c-1 again: one effect
    assert total0 - total_balances(rdb) == 9 * 400
    # The 14 look-ups and 15 debits travelled as batch calls, not one call each.
    c = counted["13"]
    assert sum(c.sizes["get_persons"]) == 14 and len(c.sizes["get_persons"]) <= 2, c.sizes
    assert sum(c.sizes["debit_for_transfer_batch"]) == 15 and len(c.sizes["debit_for_transfer_batch"]) <= 2, c.sizes
    assert c.sizes["get_person"] == [] and c.sizes["debit_for_transfer"] == []


def test_registries_client_with_the_registry_down_fails_every_waiter(loop_thread):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    registries = Registries({"13": f"127.0.0.1:{port}"}, deadline_s=1.0)
    ids = [new_id() for _ in range(6)]

    async def go() -> tuple[list[Any], list[Any]]:
        persons = await asyncio.gather(*(registries.person("13", p) for p in ids), return_exceptions=True)
        debits = await asyncio.gather(*(registries.debit_for_transfer("13", debit(rid("d"), p, 100)) for p in ids),
                                      return_exceptions=True)
        await registries.close()
        return persons, debits

    persons, debits = loop_thread.run(go())
    for p in persons:
        assert isinstance(p, DomainError), p
        assert (p.code, p.reason) == (grpc.StatusCode.UNAVAILABLE, "REGISTRY_UNAVAILABLE")
    for d in debits:  # the wallet maps these itself (downstream()): the raw gRPC error reaches it
        assert isinstance(d, grpc.aio.AioRpcError), d
        assert d.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_concurrent_transfers_batch_registry_calls_and_conserve_money(national, rdb, counted):
    w = national.wallet.stub
    hebei, gansu, beijing = national.reg("13"), national.reg("62"), national.reg("11")
    senders = [(enroll(hebei), "13") for _ in range(24)] + \
        [(enroll(gansu, region="620100", division="620102"), "62") for _ in range(8)]
    for pid, prov in senders:
        credit(national.reg(prov), pid, 50_000)
    mothers = [enroll(beijing, itype=RESIDENT, region="110000", division="110105", birth="19500101")
               for _ in range(4)]
    for m in mothers:
        w.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=m, province="11",
                                           use_place_admdvs="110000", real_name=FACE))
    for pid, prov in senders:  # senders hold a wallet too (SPEC §5)
        w.OpenWallet(wpb.OpenWalletRequest(request_id=rid("open"), owner_id_number=pid, province=prov,
                                           use_place_admdvs=prov + "0100", real_name=FACE))
    credited = total_balances(rdb)
    for c in counted.values():  # count the transfers only
        for v in c.sizes.values():
            v.clear()
    reqs = [wpb.CreateTransferRequest(request_id=f"cx-{i}", sender_id_number=pid, sender_province=prov,
                                      recipient_id_number=mothers[i % 4], relation=cpb.RELATION_PARENT,
                                      amount_fen=1_000 + i, verification=FACE)
            for i, (pid, prov) in enumerate(senders)]
    start = threading.Barrier(len(reqs))

    def create(req: wpb.CreateTransferRequest) -> wpb.Transfer:
        start.wait()
        return w.CreateTransfer(req, timeout=20).transfer

    with ThreadPoolExecutor(max_workers=len(reqs)) as pool:
        transfers = list(pool.map(create, reqs))
    calls = {p: {name: list(v) for name, v in c.sizes.items()} for p, c in counted.items()}  # before our reads
    for req, t in zip(reqs, transfers, strict=True):
        assert (t.transfer_id, t.amount_fen, t.state) == (req.request_id, req.amount_fen,
                                                         wpb.TRANSFER_STATE_PENDING_ACCEPT)
    for (pid, prov), req in zip(senders, reqs, strict=True):
        assert balance(national.reg(prov), pid) == 50_000 - req.amount_fen
    sent = sum(r.amount_fen for r in reqs)
    assert credited - total_balances(rdb) == sent
    # Each sender was checked and debited once, in batch calls; the recipients' checks went to 北京.
    for prov, n in (("13", 24), ("62", 8)):
        c = calls[prov]
        assert sum(c["get_persons"]) == n, (prov, c)
        assert sum(c["debit_for_transfer_batch"]) == n, (prov, c)
        assert c["get_person"] == [] and c["debit_for_transfer"] == []
    assert sum(calls["11"]["get_persons"]) == len(reqs) and calls["11"]["debit_for_transfer_batch"] == []
    c13 = calls["13"]
    assert len(c13["get_persons"]) < 24 and len(c13["debit_for_transfer_batch"]) < 24, c13
    assert max(c13["get_persons"]) > 1 and max(c13["debit_for_transfer_batch"]) > 1, c13
    # Accepted, the money is in the wallets: nothing created or lost.
    with ThreadPoolExecutor(max_workers=16) as pool:
        accepted = list(pool.map(lambda t: w.AcceptTransfer(wpb.AcceptTransferRequest(
            request_id=rid("acc"), transfer_id=t.transfer_id, recipient_id_number=t.recipient_id_number),
            timeout=20).transfer, transfers))
    assert {t.state for t in accepted} == {wpb.TRANSFER_STATE_COMPLETED}
    wallets = sum(int(w.GetWallet(wpb.GetWalletRequest(owner_id_number=m)).wallet.balance_fen) for m in mothers)
    assert wallets == sent
    assert total_balances(rdb) + wallets == credited


# ================================================================================================
# Authorization: DebitForTransferBatch is the wallet's, GetPersons the readers'
# ================================================================================================


@pytest.fixture
def tls_registry(tmp_path, redis_server, loop_thread, rdb) -> Iterator[tuple[Registry, int, str]]:
    """A 河北 registry over mTLS with the production authorization interceptor, in this process."""
    identities = ["registry", "wallet", "router", "operator", "bench", "gateway"]
    tls_dir = str(tls.generate(tmp_path / "certs", identities))

    async def boot() -> tuple[Any, Any, Registry]:
        client = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
        reg = Registry(client, policy_for("13"), clock=test_clock())
        running = await start_server(lambda srv: register(srv, reg), port=0,
                                     interceptors=[authz.AuthzInterceptor(authz.POLICIES["registry"])],
                                     tls=tls.load("registry", tls_dir=tls_dir))
        return running, client, reg

    running, client, reg = loop_thread.run(boot())
    try:
        yield reg, running.port, tls_dir
    finally:
        async def stop() -> None:
            await running.server.stop(0)
            await client.aclose()

        loop_thread.run(stop())


def test_only_the_wallet_may_debit_in_batches(tls_registry, rdb):
    reg, port, tls_dir = tls_registry

    def stub(identity: str) -> tuple[grpc.Channel, Any]:
        ch = sync_channel(f"127.0.0.1:{port}", tls=tls.load(identity, tls_dir=tls_dir))
        return ch, rpb_grpc.RegistryServiceStub(ch)

    ch, op = stub("operator")
    with ch:
        son = enroll(op)
        credit(op, son, 10_000)
    batch = rpb.DebitForTransferBatchRequest(requests=[debit(rid("t"), son, 1_000)])
    before = snapshot(rdb)
    for identity in ("router", "operator", "bench", "gateway", "registry"):
        ch, s = stub(identity)
        with ch:
            with pytest.raises(grpc.RpcError) as ei:
                s.DebitForTransferBatch(batch, timeout=5)
            assert (ei.value.code(), reason(ei.value)) == (grpc.StatusCode.PERMISSION_DENIED, "CALLER_NOT_ALLOWED"), \
                identity
    assert snapshot(rdb) == before
    # GetPersons: the router, the wallet and operators read; the gateway and other registries may not.
    for identity, allowed in (("router", True), ("wallet", True), ("operator", True), ("bench", True),
                              ("gateway", False), ("registry", False)):
        ch, s = stub(identity)
        with ch:
            if allowed:
                out = s.GetPersons(rpb.GetPersonsRequest(id_numbers=[son]), timeout=5).outcomes
                assert out[0].person.balance_fen == 10_000, identity
            else:
                with pytest.raises(grpc.RpcError) as ei:
                    s.GetPersons(rpb.GetPersonsRequest(id_numbers=[son]), timeout=5)
                assert (ei.value.code(), reason(ei.value)) == (grpc.StatusCode.PERMISSION_DENIED,
                                                               "CALLER_NOT_ALLOWED"), identity
    assert snapshot(rdb) == before
    # The wallet's certificate debits (the refusals above were the identity's).
    ch, s = stub("wallet")
    with ch:
        out = s.DebitForTransferBatch(batch, timeout=5).outcomes
    assert (out[0].response.balance_after_fen, out[0].response.replayed) == (9_000, False)
    assert snapshot(rdb) != before
    assert authz.POLICIES["registry"][f"/{authz.REGISTRY}/DebitForTransferBatch"] == {"wallet"}
