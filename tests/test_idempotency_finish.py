"""Idempotency.run with `prefetch` and `Finish`, against a real Redis (one round trip each way)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from medaid.common import errors
from medaid.common.fastredis import LeanRedis
from medaid.common.idempotency import Finish, Idempotency
from medaid.common.redis_server import RedisServer
from medaid.registry.v1 import registry_pb2 as pb


def _request(rid: str, amount: int = 500) -> pb.CreditAccountRequest:
    return pb.CreditAccountRequest(request_id=rid, id_number="130102198001010010", amount_fen=amount)


def test_finish_writes_and_answer_go_together_and_replay_runs_nothing(redis_server: RedisServer) -> None:
    ns = f"t{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        r = LeanRedis(redis_server.url)
        idem = Idempotency(r, ns)
        runs: list[Any] = []

        async def writes(pipe: Any) -> None:
            pipe.incrby(f"{ns}:counter", 7)
            pipe.rpush(f"{ns}:log", "done")

        async def work(seen: bytes | None) -> Finish:
            runs.append(seen)
            return Finish(pb.CreditAccountResponse(balance_fen=42), writes)

        def prefetch(pipe: Any) -> None:
            pipe.get(f"{ns}:counter")

        try:
            first = await idem.run(_request("f1"), "credit", "p", pb.CreditAccountResponse, work, 1, prefetch)
            assert first.balance_fen == 42
            assert runs == [None]  # the prefetched read came in as work's argument
            assert await r.get(f"{ns}:counter") == b"7" and await r.lrange(f"{ns}:log", 0, -1) == [b"done"]
            claim = await r.hgetall(idem.key("f1"))
            assert claim[b"state"] == b"DONE"
            assert pb.CreditAccountResponse.FromString(claim[b"resp"]).balance_fen == 42
            # A replay answers from the record: work and its writes do not run again.
            again = await idem.run(_request("f1"), "credit", "p", pb.CreditAccountResponse, work, 2, prefetch)
            assert again == first and runs == [None]
            assert await r.get(f"{ns}:counter") == b"7"
            # The same id with other fields is refused, and nothing runs.
            with pytest.raises(errors.DomainError) as info:
                await idem.run(_request("f1", 600), "credit", "p", pb.CreditAccountResponse, work, 3, prefetch)
            assert info.value.reason == "IDEMPOTENCY_KEY_REUSED" and runs == [None]
            # A second request sees the first one's writes through its prefetch.
            await idem.run(_request("f2"), "credit", "p", pb.CreditAccountResponse, work, 4, prefetch)
            assert runs == [None, b"7"] and await r.get(f"{ns}:counter") == b"14"
        finally:
            await r.aclose()

    asyncio.run(scenario())


def test_a_refusal_before_finish_writes_nothing_and_drops_the_claim(redis_server: RedisServer) -> None:
    ns = f"t{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        r = LeanRedis(redis_server.url)
        idem = Idempotency(r, ns)

        async def writes(pipe: Any) -> None:
            pipe.set(f"{ns}:never", 1)

        async def work() -> Finish:
            if True:  # a rule says no before any write
                raise errors.refused("NOPE", "refused")
            return Finish(pb.CreditAccountResponse(), writes)  # pragma: no cover

        try:
            with pytest.raises(errors.DomainError):
                await idem.run(_request("x1"), "credit", "p", pb.CreditAccountResponse, work, 1)
            assert await r.exists(f"{ns}:never", idem.key("x1")) == 0
        finally:
            await r.aclose()

    asyncio.run(scenario())


def test_a_duplicate_that_finishes_first_keeps_its_answer_for_every_caller(redis_server: RedisServer) -> None:
    """SPEC §7: a replay returns the first answer. A duplicate that finds the original's claim PENDING
    drives the request itself (every step is once per id); whichever of the two records an answer first,
    that answer is the request's: the other caller, and every later replay, get it byte for byte."""
    ns = f"t{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        r = LeanRedis(redis_server.url)
        idem = Idempotency(r, ns)
        gate = asyncio.Event()
        runs = 0

        async def work() -> pb.CreditAccountResponse:
            # The answer reads the state as it is when the request finishes (a balance that has moved).
            nonlocal runs
            runs += 1
            mine = runs
            if mine == 1:
                await gate.wait()  # the original stalls; its duplicate arrives meanwhile
            return pb.CreditAccountResponse(balance_fen=100 * mine)

        async def writes(pipe: Any) -> None:
            pipe.incrby(f"{ns}:counter", 1)

        async def work_finish() -> Finish:
            return Finish(await work(), writes)

        async def original_working() -> None:
            # The duplicate comes once the original holds the claim and is inside its work: sent before
            # that, it would claim the id itself and wait for good on the gate only its return opens.
            while runs == 0:
                await asyncio.sleep(0.005)

        try:
            for rid, fn in (("d1", work), ("d2", work_finish)):
                runs = 0
                gate.clear()
                original = asyncio.create_task(idem.run(_request(rid), "credit", "p", pb.CreditAccountResponse,
                                                        fn, 1))
                await asyncio.wait_for(original_working(), 30)
                duplicate = await idem.run(_request(rid), "credit", "p", pb.CreditAccountResponse, fn, 2)
                gate.set()
                assert (await original).SerializeToString() == duplicate.SerializeToString()
                replay = await idem.run(_request(rid), "credit", "p", pb.CreditAccountResponse, fn, 3)
                assert replay.SerializeToString() == duplicate.SerializeToString()
                assert duplicate.balance_fen == 200 and runs == 2
        finally:
            await r.aclose()

    asyncio.run(scenario())


def test_a_refusal_recorded_late_keeps_the_first_answer(redis_server: RedisServer) -> None:
    """SPEC §7: a replay returns the first answer. A refusal recorded after effects (`finish_error`, a
    wallet transfer that FAILED) goes through the same compare as an answer: a claim answered first keeps
    its answer, and one refused first keeps its refusal against a later answer."""
    ns = f"t{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        r = LeanRedis(redis_server.url)
        idem = Idempotency(r, ns, ttl_s=3600)
        first = pb.CreditAccountResponse(balance_fen=42)
        late = errors.refused("TRANSFER_FAILED", "the transfer failed")

        async def answered() -> pb.CreditAccountResponse:
            return first

        async def replay() -> pb.CreditAccountResponse:
            raise AssertionError("a replay runs nothing")

        try:
            assert await idem.run(_request("e1"), "credit", "p", pb.CreditAccountResponse, answered, 1) == first
            await idem.finish_error("e1", late)
            assert await idem.run(_request("e1"), "credit", "p", pb.CreditAccountResponse, replay, 2) == first

            assert (await idem.begin("e2", "fp", "credit", "p", 3)).state == "NEW"
            await idem.finish_error("e2", late)
            assert await r.ttl(idem.key("e2")) > 0  # kept as long as any answer
            with pytest.raises(errors.DomainError) as info:
                await idem.record("e2", first)
            assert info.value.reason == "TRANSFER_FAILED"
            claim = await r.hgetall(idem.key("e2"))
            assert claim.get(b"resp") in (None, b""), claim
        finally:
            await r.aclose()

    asyncio.run(scenario())


def test_an_answer_for_a_claim_freed_meanwhile_leaves_no_claim_without_its_fingerprint(
        redis_server: RedisServer) -> None:
    """SPEC §7: a replay with different fields is rejected. An answer recorded for a claim that was
    freed meanwhile (or voided by a 冲正) must not leave a claim holding an answer but no fingerprint or
    operation: the same id with other fields would be taken afresh over it, and a late refusal's `err`
    left there would be replayed to that other request."""
    ns = f"t{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        r = LeanRedis(redis_server.url)
        idem = Idempotency(r, ns, ttl_s=3600)
        mine = pb.CreditAccountResponse(balance_fen=42)
        late = errors.refused("TRANSFER_FAILED", "the transfer failed")

        async def answered() -> pb.CreditAccountResponse:
            return pb.CreditAccountResponse(balance_fen=7)

        try:
            assert (await idem.begin("g1", "fp", "credit", "p", 1)).state == "NEW"
            await r.delete(idem.key("g1"))  # freed meanwhile (a refusal of another attempt, the loop)
            assert await idem.record("g1", mine) == mine  # the caller's own answer
            await idem.finish_error("g1", late)
            assert await r.exists(idem.key("g1")) == 0
            # The same id with other fields is judged afresh, and answers its own answer, not a leftover.
            assert await idem.run(_request("g1", 900), "credit", "p", pb.CreditAccountResponse, answered, 2) \
                == pb.CreditAccountResponse(balance_fen=7)
            replay = await idem.run(_request("g1", 900), "credit", "p", pb.CreditAccountResponse, answered, 3)
            assert replay == pb.CreditAccountResponse(balance_fen=7)
            assert await r.ttl(idem.key("g1")) > 0

            void = {b"fp": b"void", b"op": b"void", b"subject": b"2601-x", b"state": b"VOID", b"at": b"1"}
            await r.hset(idem.key("g2"), mapping=void)  # a 冲正 voided the id
            await idem.record("g2", mine)
            assert await r.hgetall(idem.key("g2")) == void
        finally:
            await r.aclose()

    asyncio.run(scenario())
