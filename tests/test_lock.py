"""Property tests of the fenced Redis lock (medaid.common.lock) against a real redis-server.

Each example runs in its own event loop (`asyncio.run`) with fresh clients and a fresh lock tag,
so examples never see each other's keys and no function-scoped fixture is needed.
"""

from __future__ import annotations

import asyncio
import uuid

import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st
from medaid.common.lock import FencedLocks, FencedWriter, Lease

PROPS = settings(max_examples=25, deadline=None)


def _tag() -> str:
    return f"test:lock:{{t:{uuid.uuid4().hex}}}"


def _client(port: int) -> aioredis.Redis:
    return aioredis.Redis(host="127.0.0.1", port=port)


@PROPS
@given(
    n_tasks=st.integers(min_value=2, max_value=12),
    rounds=st.integers(min_value=1, max_value=3),
    n_clients=st.integers(min_value=1, max_value=3),
    hold_us=st.lists(st.integers(min_value=0, max_value=2000), min_size=1, max_size=8),
)
def test_mutual_exclusion_and_increasing_fence_tokens(redis_server, n_tasks, rounds, n_clients, hold_us):
    """Many contenders, one holder at a time; tokens strictly increase in acquisition order."""

    async def scenario() -> tuple[int, list[int], list[bool], int, int]:
        clients = [_client(redis_server.port) for _ in range(n_clients)]
        locks = [FencedLocks(c, owner_prefix=f"c{i}") for i, c in enumerate(clients)]
        tag = _tag()
        inside = 0
        max_inside = 0
        order: list[int] = []
        released: list[bool] = []

        async def worker(i: int) -> None:
            nonlocal inside, max_inside
            lk = locks[i % n_clients]
            for r in range(rounds):
                lease = await lk.acquire(tag, ttl_ms=10_000, wait_ms=20_000)
                inside += 1
                max_inside = max(max_inside, inside)
                order.append(lease.token)
                # The holder sees its own token as the newest one.
                assert await lk.current_token(tag) == lease.token
                await asyncio.sleep(hold_us[(i + r) % len(hold_us)] / 1_000_000)
                inside -= 1
                released.append(await lk.release(lease))

        try:
            await asyncio.gather(*(worker(i) for i in range(n_tasks)))
            final = await locks[0].current_token(tag)
            lock_left = await clients[0].exists(FencedLocks.keys(tag)[0])
        finally:
            for c in clients:
                await c.aclose()
        return max_inside, order, released, final, lock_left

    max_inside, order, released, final, lock_left = asyncio.run(scenario())
    total = n_tasks * rounds
    assert max_inside == 1
    assert len(order) == total
    assert order == sorted(order) and len(set(order)) == total, order
    assert order == list(range(1, total + 1))  # a fresh tag: tokens 1..n, no gaps, no repeats
    assert released == [True] * total
    assert final == total
    assert lock_left == 0


@PROPS
@given(ttl_ms=st.integers(min_value=20, max_value=80), extra_ms=st.integers(min_value=15, max_value=40))
def test_expiry_frees_the_lock_for_another_owner(redis_server, ttl_ms, extra_ms):
    async def scenario() -> None:
        c1, c2 = _client(redis_server.port), _client(redis_server.port)
        try:
            a_locks, b_locks = FencedLocks(c1, owner_prefix="a"), FencedLocks(c2, owner_prefix="b")
            tag = _tag()
            started = asyncio.get_running_loop().time()
            a = await a_locks.try_acquire(tag, ttl_ms)
            assert a is not None
            # Held: another owner cannot take it (unless a loaded machine stalled this task past the
            # short TTL between the two calls: then the lock had rightly expired).
            early = await b_locks.try_acquire(tag, 10_000)
            if early is not None:
                assert (asyncio.get_running_loop().time() - started) * 1000 >= ttl_ms
                return
            await asyncio.sleep((ttl_ms + extra_ms) / 1000)
            b = await b_locks.try_acquire(tag, 10_000)
            assert b is not None, "the lock did not expire"
            assert b.token == a.token + 1
            assert b.owner != a.owner
            # The expired owner can neither release nor extend the new holder's lock.
            assert await a_locks.release(a) is False
            assert await a_locks.extend(a, 60_000) is False
            assert await c1.get(b.key) == b.value.encode()
            assert 0 < await c1.pttl(b.key) <= 10_000
            assert await b_locks.release(b) is True
            assert await c1.exists(b.key) == 0
        finally:
            await c1.aclose()
            await c2.aclose()

    asyncio.run(scenario())


@PROPS
@given(
    intruder_owner=st.text(alphabet="abcdef0123456789-", min_size=0, max_size=20),
    token_delta=st.integers(min_value=-3, max_value=3),
    same_owner=st.booleans(),
)
def test_release_and_extend_by_non_owner_do_nothing(redis_server, intruder_owner, token_delta, same_owner):
    async def scenario() -> None:
        client = _client(redis_server.port)
        try:
            locks = FencedLocks(client, owner_prefix="holder")
            tag = _tag()
            lease = await locks.try_acquire(tag, 10_000)
            assert lease is not None
            owner = lease.owner if same_owner else intruder_owner
            token = lease.token + token_delta
            if owner == lease.owner and token == lease.token:
                token += 1  # must differ from the holder's value
            other = Lease(lease.key, lease.fence_key, owner, token)
            assert other.value != lease.value
            assert await locks.release(other) is False
            assert await locks.extend(other, 600_000) is False
            assert await client.get(lease.key) == lease.value.encode()
            assert 0 < await client.pttl(lease.key) <= 10_000  # not extended
            assert await locks.current_token(tag) == lease.token
            # The real owner still can.
            assert await locks.extend(lease, 20_000) is True
            assert 10_000 < await client.pttl(lease.key) <= 20_000
            assert await locks.release(lease) is True
            assert await client.exists(lease.key) == 0
        finally:
            await client.aclose()

    asyncio.run(scenario())


_FIELD = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
_VALUE = st.one_of(st.integers(min_value=-(10**12), max_value=10**12), st.text(min_size=0, max_size=12))


@PROPS
@given(
    first=st.dictionaries(_FIELD, _VALUE, min_size=1, max_size=5),
    stale=st.dictionaries(_FIELD, _VALUE, min_size=1, max_size=5),
    fresh=st.dictionaries(_FIELD, _VALUE, min_size=1, max_size=5),
    by_expiry=st.booleans(),
)
def test_stale_token_write_is_rejected(redis_server, first, stale, fresh, by_expiry):
    """A paused holder whose lock was overtaken cannot write; the new holder can."""

    def enc(m: dict) -> dict[bytes, bytes]:
        return {k.encode(): str(v).encode() for k, v in m.items()}

    async def scenario() -> None:
        c1, c2 = _client(redis_server.port), _client(redis_server.port)
        try:
            a_locks, b_locks = FencedLocks(c1, owner_prefix="a"), FencedLocks(c2, owner_prefix="b")
            a_writer, b_writer = FencedWriter(c1), FencedWriter(c2)
            tag = _tag()
            data = f"{tag}:data"
            a = await a_locks.try_acquire(tag, 30 if by_expiry else 10_000)
            assert a is not None
            assert await a_writer.hset(a, data, first) is True
            assert await c1.hgetall(data) == enc(first)
            if by_expiry:
                await asyncio.sleep(0.06)  # A "pauses" past its TTL
            else:
                assert await a_locks.release(a) is True
            b = await b_locks.acquire(tag, ttl_ms=10_000, wait_ms=2_000)
            assert b.token > a.token
            # A wakes up and writes with its old token: rejected, nothing changes.
            assert await a_writer.hset(a, data, stale) is False
            assert await c1.hgetall(data) == enc(first)
            # The current holder's write goes through.
            assert await b_writer.hset(b, data, fresh) is True
            assert await c1.hgetall(data) == {**enc(first), **enc(fresh)}
            # Even after B releases, A's token stays stale (the fence only moves forward).
            assert await b_locks.release(b) is True
            assert await a_writer.hset(a, data, stale) is False
            assert await c1.hgetall(data) == {**enc(first), **enc(fresh)}
        finally:
            await c1.aclose()
            await c2.aclose()

    asyncio.run(scenario())


def test_acquire_gives_up_with_lock_busy(redis_server):
    from medaid.common.lock import LockBusy

    async def scenario() -> None:
        client = _client(redis_server.port)
        try:
            locks = FencedLocks(client)
            tag = _tag()
            held = await locks.acquire(tag, ttl_ms=10_000)
            try:
                await locks.acquire(tag, ttl_ms=10_000, wait_ms=50)
            except LockBusy:
                pass
            else:
                raise AssertionError("acquired a lock somebody else holds")
            assert await locks.current_token(tag) == held.token  # failed tries burn no token
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_acquire_resent_by_the_same_owner_finds_its_own_lock(redis_server):
    """The Redis client re-sends `lock_acquire` whose reply a lost connection ate: the second run
    finds the lock held by the same owner and hands back the same token (no new token, the TTL
    renewed), never "busy". Another owner, even one whose id is a prefix of the holder's, stays out."""
    from medaid.common.scripts import ScriptSet

    async def scenario() -> None:
        client = _client(redis_server.port)
        try:
            acquire = ScriptSet(client, "medaid.common", ["lock_acquire"])["lock_acquire"]
            tag = _tag()
            lock_key, fence_key = FencedLocks.keys(tag)
            owner = "p1-0123456789ab"
            assert [int(x) for x in await acquire(keys=[lock_key, fence_key], args=[owner, 1_000])] == [1, 1]
            # The resend, with the same owner (and a longer TTL to see it renewed).
            assert [int(x) for x in await acquire(keys=[lock_key, fence_key], args=[owner, 60_000])] == [1, 1]
            assert await client.get(lock_key) == f"{owner}:1".encode()
            assert 1_000 < await client.pttl(lock_key) <= 60_000
            assert await client.get(fence_key) == b"1"  # no token burnt by the resend
            for other in ("p1-0123456789ac", "p1", "p1-0123456789ab:1", ""):
                ok, _ = await acquire(keys=[lock_key, fence_key], args=[other, 1_000])
                assert int(ok) == 0, other
            # An owner id that is a prefix of the holder's, up to a colon, is not the holder.
            tag2 = _tag()
            lock2, fence2 = FencedLocks.keys(tag2)
            assert [int(x) for x in await acquire(keys=[lock2, fence2], args=["a:7", 1_000])] == [1, 1]
            ok, _ = await acquire(keys=[lock2, fence2], args=["a", 1_000])
            assert int(ok) == 0
            # The lease it returned is the holder's: release works.
            assert await FencedLocks(client).release(Lease(lock_key, fence_key, owner, 1)) is True
        finally:
            await client.aclose()

    asyncio.run(scenario())
