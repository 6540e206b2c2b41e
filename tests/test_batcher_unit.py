"""common/batcher.py on its own: pure asyncio, no Redis, no gRPC.

A `Recorder` is the downstream: it records every batch it is sent and can hold a batch on its way
(an asyncio.Event) so the tests decide what arrives while a batch is in flight."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import grpc
import pytest
from medaid.common.batcher import Batcher, unpack_outcome
from medaid.common.errors import DomainError
from medaid.common.v1 import common_pb2 as cpb
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.router.batcher import Pending, SettleBatcher
from medaid.router.index import Entry


def run(coro_fn: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(coro_fn(), 10))


class Recorder:
    """send(items) → [f"r:{item}"], or what `answer` makes of the items; optionally held on `gate`."""

    def __init__(self, answer: Callable[[list[Any]], list[Any]] | None = None) -> None:
        self.batches: list[list[Any]] = []
        self.answer = answer or (lambda items: [f"r:{x}" for x in items])
        self.gate: asyncio.Event | None = None
        self.started = 0
        self.in_flight = 0
        self.max_in_flight = 0

    async def send(self, items: list[Any]) -> list[Any]:
        self.batches.append(list(items))
        self.started += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            else:
                await asyncio.sleep(0)
            return self.answer(items)
        finally:
            self.in_flight -= 1


async def settle(tasks: list[asyncio.Task[Any]]) -> list[Any]:
    """Each task's result or the exception it raised, in order."""
    return list(await asyncio.gather(*tasks, return_exceptions=True))


async def until(cond: Callable[[], bool]) -> None:
    for _ in range(1000):
        if cond():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never held")


# --- coalescing ------------------------------------------------------------------------------------


def test_arrivals_while_a_batch_is_in_flight_leave_together():
    async def go() -> None:
        rec = Recorder()
        rec.gate = asyncio.Event()
        b: Batcher[int, str] = Batcher(rec.send)
        first = asyncio.create_task(b.submit(-1))
        await until(lambda: rec.started == 1)  # batch 1 ([-1]) is on its way and held
        rest = [asyncio.create_task(b.submit(i)) for i in range(50)]
        await asyncio.sleep(0.01)  # far longer than max_delay_s: nothing may leave while one is in flight
        assert rec.started == 1
        rec.gate.set()
        got = await settle([first, *rest])
        assert got == ["r:-1", *[f"r:{i}" for i in range(50)]]  # each caller gets its own answer
        assert len(rec.batches) == 2
        assert rec.batches == [[-1], list(range(50))]  # in submit order
        assert rec.max_in_flight == 1

    run(go)


def test_same_instant_submits_share_one_send():
    async def go() -> None:
        rec = Recorder()
        b: Batcher[int, str] = Batcher(rec.send)
        got = await asyncio.gather(*(b.submit(i) for i in range(50)))
        assert got == [f"r:{i}" for i in range(50)]
        # Submitted in one turn of the event loop: one send, flushed on the next turn, no timer.
        assert len(rec.batches) == 1, [len(x) for x in rec.batches]
        assert sorted(x for batch in rec.batches for x in batch) == list(range(50))

    run(go)


def test_a_lone_item_leaves_after_the_delay_and_later_waves_keep_flowing():
    async def go() -> None:
        rec = Recorder()
        b: Batcher[str, str] = Batcher(rec.send, max_delay_s=0.001)
        for wave in range(5):
            assert await b.submit(f"w{wave}") == f"r:w{wave}"
        assert rec.batches == [[f"w{i}"] for i in range(5)]
        many = await asyncio.gather(*(b.submit(f"x{i}") for i in range(20)))
        assert many == [f"r:x{i}" for i in range(20)]

    run(go)


def test_max_batch_splits_and_no_send_exceeds_it():
    async def go() -> None:
        rec = Recorder()
        rec.gate = asyncio.Event()
        b: Batcher[int, str] = Batcher(rec.send, max_batch=10)
        tasks = [asyncio.create_task(b.submit(i)) for i in range(25)]
        await until(lambda: rec.started >= 2)
        rec.gate.set()
        got = await settle(tasks)
        assert got == [f"r:{i}" for i in range(25)]
        assert all(1 <= len(batch) <= 10 for batch in rec.batches), rec.batches
        assert [x for batch in rec.batches for x in batch] == list(range(25))  # each item once, in order
        assert [len(batch) for batch in rec.batches] == [10, 10, 5]

    run(go)


def test_max_inflight_two_runs_two_batches_at_once():
    async def go() -> None:
        rec = Recorder()
        rec.gate = asyncio.Event()
        b: Batcher[int, str] = Batcher(rec.send, max_inflight=2, max_delay_s=0.0005)
        t1 = asyncio.create_task(b.submit(1))
        await until(lambda: rec.started == 1)
        t2 = asyncio.create_task(b.submit(2))
        await until(lambda: rec.started == 2)  # a second batch may leave while the first is held
        t3 = [asyncio.create_task(b.submit(i)) for i in range(3, 9)]
        await asyncio.sleep(0.01)
        assert rec.started == 2  # but not a third
        rec.gate.set()
        assert await settle([t1, t2, *t3]) == [f"r:{i}" for i in range(1, 9)]
        assert rec.batches == [[1], [2], list(range(3, 9))]
        assert rec.max_in_flight == 2

    run(go)


# --- per-item and per-batch failures -----------------------------------------------------------


def test_a_domain_error_fails_only_its_own_item():
    refusal = DomainError(grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_BALANCE", "no money", {"i": "3"})

    def answer(items: list[int]) -> list[Any]:
        return [DomainError(grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_BALANCE", "no money", {"i": str(x)})
                if x % 3 == 0 else x * 10 for x in items]

    async def go() -> None:
        rec = Recorder(answer)
        b: Batcher[int, int] = Batcher(rec.send)
        got = await asyncio.gather(*(b.submit(i) for i in range(1, 13)), return_exceptions=True)
        assert len(rec.batches) <= 2
        for i, g in zip(range(1, 13), got, strict=True):
            if i % 3 == 0:
                assert isinstance(g, DomainError), (i, g)
                assert (g.code, g.reason, g.metadata) == (grpc.StatusCode.FAILED_PRECONDITION,
                                                          "INSUFFICIENT_BALANCE", {"i": str(i)})
            else:
                assert g == i * 10
        with pytest.raises(DomainError) as ei:
            await b.submit(3)
        assert ei.value == refusal

    run(go)


def test_a_send_that_raises_fails_every_item_of_its_batch_and_the_next_batch_works():
    class Down(Exception):
        pass

    async def go() -> None:
        calls: list[list[int]] = []
        gate = asyncio.Event()

        async def send(items: list[int]) -> list[str]:
            calls.append(list(items))
            down = len(calls) == 1  # the downstream is back before the second batch leaves
            await gate.wait()
            if down:
                raise Down("registry down")
            return [f"ok:{x}" for x in items]

        b: Batcher[int, str] = Batcher(send)
        first = [asyncio.create_task(b.submit(i)) for i in range(5)]
        await until(lambda: len(calls) == 1)
        second = [asyncio.create_task(b.submit(i)) for i in range(5, 9)]  # wait behind the failing batch
        await asyncio.sleep(0.005)
        gate.set()
        got_first, got_second = await settle(first), await settle(second)
        assert len(calls) == 2 and calls == [list(range(5)), list(range(5, 9))]
        assert all(isinstance(g, Down) and str(g) == "registry down" for g in got_first), got_first
        assert got_second == [f"ok:{i}" for i in range(5, 9)]
        assert await b.submit(42) == "ok:42"

    run(go)


@pytest.mark.parametrize("answer", [lambda items: [f"r:{x}" for x in items][:-1],
                                    lambda items: [*[f"r:{x}" for x in items], "extra"],
                                    lambda items: []], ids=["short", "long", "empty"])
def test_a_wrong_length_answer_fails_every_waiter(answer):
    async def go() -> None:
        wrong = [True]

        def reply(items: list[int]) -> list[Any]:
            return answer(items) if wrong[0] else [f"r:{x}" for x in items]

        rec = Recorder(reply)
        b: Batcher[int, str] = Batcher(rec.send)
        got = await asyncio.gather(*(b.submit(i) for i in range(6)), return_exceptions=True)
        assert len(rec.batches) == 1
        # Not one waiter may get a result matched to the wrong item.
        assert all(isinstance(g, RuntimeError) for g in got), got
        assert "6" in str(got[0])
        wrong[0] = False
        assert await asyncio.gather(*(b.submit(i) for i in range(3))) == ["r:0", "r:1", "r:2"]

    run(go)


def test_a_cancelled_waiter_does_not_disturb_the_others():
    async def go() -> None:
        rec = Recorder()
        rec.gate = asyncio.Event()
        b: Batcher[int, str] = Batcher(rec.send)
        first = asyncio.create_task(b.submit(0))
        await until(lambda: rec.started == 1)
        tasks = [asyncio.create_task(b.submit(i)) for i in range(1, 6)]
        await asyncio.sleep(0)
        tasks[2].cancel()  # item 3 gives up while waiting
        rec.gate.set()
        got = await settle([first, *tasks])
        assert got[0] == "r:0"
        assert got[1:3] == ["r:1", "r:2"] and got[4:] == ["r:4", "r:5"]
        assert isinstance(got[3], asyncio.CancelledError)
        assert await b.submit(9) == "r:9"

    run(go)


# --- unpack_outcome and the router's SettleBatcher on top -------------------------------------------


def test_unpack_outcome_gives_the_result_or_the_domain_error():
    person = rpb.Person(id_number="130102198001010011", name="张三", balance_fen=123)
    assert unpack_outcome(rpb.PersonOutcome(person=person), "person") == person
    err = unpack_outcome(rpb.PersonOutcome(error=rpb.ItemError(
        code=grpc.StatusCode.NOT_FOUND.value[0], reason="PERSON_NOT_FOUND", message="not enrolled",
        metadata={"field": "id_numbers"})), "person")
    assert isinstance(err, DomainError)
    assert (err.code, err.reason, err.message, err.metadata) == (
        grpc.StatusCode.NOT_FOUND, "PERSON_NOT_FOUND", "not enrolled", {"field": "id_numbers"})
    ok = rpb.DebitForTransferResponse(balance_after_fen=700, replayed=True)
    assert unpack_outcome(rpb.DebitForTransferOutcome(response=ok)) == ok
    refused = unpack_outcome(rpb.DebitForTransferOutcome(error=rpb.ItemError(
        code=grpc.StatusCode.ALREADY_EXISTS.value[0], reason="IDEMPOTENCY_KEY_REUSED")))
    assert (refused.code, refused.reason) == (grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")


def test_settle_batcher_coalesces_and_answers_each_outcome():
    async def go() -> None:
        sent: list[list[rpb.SettleRequest]] = []
        gate = asyncio.Event()

        async def send(items: list[Pending]) -> list[rpb.SettleResponse | DomainError]:
            requests = [x.request for x in items]
            sent.append(requests)
            await gate.wait()
            out = []
            for r in requests:
                if r.amount_fen % 2:
                    out.append(rpb.SettleOutcome(error=rpb.ItemError(
                        code=grpc.StatusCode.FAILED_PRECONDITION.value[0], reason="MEMBER_NOT_INSURED")))
                else:
                    out.append(rpb.SettleOutcome(response=rpb.SettleResponse(result=rpb.SettlementResult(
                        settlement_id=r.request_id, amount_fen=r.amount_fen))))
            return [unpack_outcome(o) for o in out]

        b = SettleBatcher(send)
        reqs = [rpb.SettleRequest(request_id=f"s-{i}", amount_fen=100 + i, category=cpb.CATEGORY_OUTPATIENT)
                for i in range(9)]
        def pending(r: rpb.SettleRequest) -> Pending:
            return Pending(r, Entry(r.request_id, "13", "", "", "", "11", r.amount_fen), f"2207:|{r.request_id}")

        first = asyncio.create_task(b.settle(pending(reqs[0])))
        await until(lambda: len(sent) == 1)
        rest = [asyncio.create_task(b.settle(pending(r))) for r in reqs[1:]]
        await asyncio.sleep(0.005)
        gate.set()
        got = await settle([first, *rest])
        assert sent == [reqs[:1], reqs[1:]]
        for r, g in zip(reqs, got, strict=True):
            if r.amount_fen % 2:
                assert isinstance(g, DomainError) and g.reason == "MEMBER_NOT_INSURED"
            else:
                assert (g.result.settlement_id, g.result.amount_fen) == (r.request_id, r.amount_fen)

    run(go)
