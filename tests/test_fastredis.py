"""LeanRedis (medaid.common.fastredis) against a real redis-server, and against redis-py itself.

Every test runs its own event loop (`asyncio.run`). Most share the session's redis-server, each on
its own database number so they never see each other's keys; the tests that kill, restart or
reconfigure Redis start their own redis-server (free port, own data dir, AOF `appendfsync always`).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
import uvloop
from medaid.common import redis_client
from medaid.common.fastredis import LeanRedis
from medaid.common.redis_server import RedisServer
from medaid.common.scripts import Script, ScriptSet
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError, WatchError


def run(coro: Awaitable[Any], timeout: float = 20) -> Any:
    """One test scenario in a fresh event loop; a hang fails the test instead of stalling the file."""

    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def db_url(server: RedisServer, db: int) -> str:
    return f"redis://127.0.0.1:{server.port}/{db}"


def flushdb(server: RedisServer, db: int) -> redis.Redis:
    """A synchronous client on a freshly emptied database `db` (for asserting on stored contents)."""
    r = redis.Redis(host="127.0.0.1", port=server.port, db=db)
    r.flushdb()
    return r


def pooled(url: str) -> redis.asyncio.Redis:
    """The reference: redis-py's own pooled asyncio client."""
    return redis.asyncio.Redis.from_pool(redis.asyncio.ConnectionPool.from_url(url))  # aclose() closes the pool


def canon(v: Any) -> Any:
    """A value with its exact types spelled out, so bytes vs str vs int vs float, list vs tuple, dict and
    set all have to match, and exceptions compare by class and message."""
    if isinstance(v, BaseException):
        return ("exc", type(v).__name__, str(v))
    if type(v) in (list, tuple):
        return (type(v).__name__, [canon(x) for x in v])
    if type(v) is dict:
        return ("dict", sorted((canon(k), canon(x)) for k, x in v.items()))
    if type(v) is set:
        return ("set", sorted(canon(x) for x in v))
    return (type(v).__name__, v)


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own (killed, restarted or reconfigured by the test)."""
    server = RedisServer(appendfsync="always").start()
    try:
        yield server
    finally:
        server.cleanup()


# --- 1. the same results as redis-py ----------------------------------------------------------

BUSY_NESTED = "return {1, 'two', {3, 'four', {}}, false, true, -7}"
INCR_SCRIPT = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


async def command_scenario(r: redis.asyncio.Redis) -> list[tuple[str, Any]]:
    """A fixed sequence of the commands the services use; every result (or raised error) recorded."""
    out: list[tuple[str, Any]] = []

    async def rec(label: str, aw: Awaitable[Any], post: Callable[[Any], Any] | None = None) -> None:
        try:
            value = await aw
        except redis.exceptions.RedisError as exc:
            value = ("raised", type(exc).__name__, str(exc))
        else:
            if post is not None:
                value = post(value)
        out.append((label, value))

    def ttl_ok(v: Any) -> Any:
        return (type(v).__name__, 0 < v <= 100_000)

    await rec("script flush", r.script_flush())
    # strings
    await rec("set", r.set("s", "v1"))
    await rec("get", r.get("s"))
    await rec("get missing", r.get("missing"))
    await rec("set nx existing", r.set("s", "v2", nx=True))
    await rec("set nx new", r.set("n", "1", nx=True))
    await rec("set px", r.set("px", "x", px=100_000))
    await rec("pttl px", r.pttl("px"), ttl_ok)
    await rec("set get", r.set("s", "v3", get=True))
    await rec("set xx missing", r.set("nothere", "v", xx=True))
    await rec("mget", r.mget(["s", "missing", "n"]))
    await rec("incr", r.incr("c"))
    await rec("incr again", r.incr("c"))
    await rec("incrby", r.incrby("c", 5))
    await rec("incr on text", r.incr("s"))
    await rec("type", r.type("s"))
    # hashes
    await rec("hset mapping", r.hset("h", mapping={"a": 1, "b": "x", "c": b"\x00\xff"}))
    await rec("hset again", r.hset("h", "a", 2))
    await rec("hget", r.hget("h", "a"))
    await rec("hget missing field", r.hget("h", "zz"))
    await rec("hgetall", r.hgetall("h"))
    await rec("hgetall missing", r.hgetall("nope"))
    await rec("hmget", r.hmget("h", ["a", "zz", "c"]))
    await rec("hexists", r.hexists("h", "b"))
    await rec("hexists missing", r.hexists("h", "zz"))
    await rec("hincrby", r.hincrby("h", "a", 3))
    await rec("hincrby new", r.hincrby("h", "new", -4))
    await rec("hdel", r.hdel("h", "b", "zz"))
    await rec("hget wrongtype", r.hget("s", "a"))
    # sets
    await rec("sadd", r.sadd("st", "a", "b", "c"))
    await rec("sadd dup", r.sadd("st", "a"))
    await rec("smembers", r.smembers("st"))
    await rec("smembers missing", r.smembers("nost"))
    await rec("sismember", r.sismember("st", "b"))
    await rec("sismember no", r.sismember("st", "zz"))
    # sorted sets
    await rec("zadd", r.zadd("z", {"a": 1, "b": 2.5, "c": -1, "d": 1e20}))
    await rec("zadd xx ch", r.zadd("z", {"a": 5, "nope": 1}, xx=True, ch=True))
    await rec("zrange", r.zrange("z", 0, -1))
    await rec("zrange withscores", r.zrange("z", 0, -1, withscores=True))
    await rec("zrange desc withscores", r.zrange("z", 0, 1, desc=True, withscores=True))
    await rec("zrangebyscore", r.zrangebyscore("z", "-inf", 2.5))
    await rec("zrangebyscore withscores", r.zrangebyscore("z", 0, "+inf", withscores=True))
    await rec("zrangebyscore limit", r.zrangebyscore("z", "-inf", "+inf", start=1, num=2, withscores=True))
    await rec("zscore", r.zscore("z", "b"))
    await rec("zscore missing", r.zscore("z", "zz"))
    await rec("zrem", r.zrem("z", "a", "nope"))
    # lists
    await rec("rpush", r.rpush("l", "a", "b", "c"))
    await rec("lrange", r.lrange("l", 0, -1))
    await rec("lrange part", r.lrange("l", 1, 1))
    await rec("lrange missing", r.lrange("nol", 0, -1))
    await rec("llen", r.llen("l"))
    await rec("llen missing", r.llen("nol"))
    # keys
    await rec("exists", r.exists("s", "h", "nope"))
    await rec("delete", r.delete("n", "nope"))
    await rec("expire", r.expire("h", 1000))
    await rec("expire missing", r.expire("nope", 10))
    await rec("pttl", r.pttl("h"), ttl_ok)
    await rec("pttl missing", r.pttl("nope"))
    await rec("pttl persistent", r.pttl("l"))
    # scripts
    await rec("eval nested", r.eval(BUSY_NESTED, 0))
    await rec("eval int", r.eval(INCR_SCRIPT, 1, "ev", 41))
    await rec("eval status", r.eval("return redis.status_reply('FINE')", 0))
    await rec("eval error_reply", r.eval("return redis.error_reply('MYERR custom failure')", 0))
    await rec("eval nested error", r.eval("return {1, redis.error_reply('NESTED inner failure')}", 0))
    await rec("eval runtime error", r.eval("return redis.call('HGET', KEYS[1], 'f')", 1, "s"))
    await rec("eval compile error", r.eval("return {", 0))
    await rec("eval keys argv", r.eval("return {KEYS[1], ARGV[1], ARGV[2]}", 1, "k1", "a1", 2))
    await rec("script load", r.script_load(INCR_SCRIPT))
    sha = out[-1][1]
    await rec("evalsha", r.evalsha(sha, 1, "ev", 1))
    await rec("evalsha unknown", r.evalsha("0" * 40, 0))
    await rec("script exists", r.script_exists(sha, "0" * 40))
    # scan (sorted: SCAN's order is no part of the contract)
    for i in range(30):
        await r.set(f"scan:{i}", i)
    await rec("scan", r.scan(0, match="scan:*", count=10_000), lambda v: (v[0], sorted(v[1])))
    await rec("scan_iter", _collect(r.scan_iter(match="scan:1*", count=7)), sorted)
    await rec("ping", r.ping())
    # pipelines, both kinds, one reply of each shape and an error in place
    for transaction in (False, True):
        p = r.pipeline(transaction=transaction)
        p.set("p:s", "1")
        p.set("p:s", "2", nx=True)
        p.incr("p:c")
        p.hset("p:h", mapping={"f": "v"})
        p.hgetall("p:h")
        p.zadd("p:z", {"m": 2})
        p.zrange("p:z", 0, -1, withscores=True)
        p.sadd("p:st", "x")
        p.smembers("p:st")
        p.sismember("p:st", "x")
        p.expire("p:h", 100)
        p.hmget("p:h", ["f", "g"])
        p.eval(BUSY_NESTED, 0)
        p.lrange("nol", 0, -1)
        p.exists("p:s", "nope")
        await rec(f"pipeline transaction={transaction}", p.execute())
        await rec(f"flush pipeline keys {transaction}", r.delete("p:s", "p:c", "p:h", "p:z", "p:st"))
    p = r.pipeline(transaction=False)
    p.set("pe", "x")
    p.hget("pe", "f")
    p.get("pe")
    await rec("pipeline error in place", p.execute(raise_on_error=False))
    p = r.pipeline(transaction=False)
    p.set("pe", "x")
    p.hget("pe", "f")
    p.get("pe")
    await rec("pipeline raise", p.execute())
    return out


async def _collect(it: Any) -> list[Any]:
    return [x async for x in it]


def test_results_and_types_match_redis_py(redis_server: RedisServer) -> None:
    flushdb(redis_server, 1)
    flushdb(redis_server, 2)

    async def both() -> tuple[list[Any], list[Any]]:
        lean = LeanRedis(db_url(redis_server, 1))
        ref = pooled(db_url(redis_server, 2))
        try:
            return await command_scenario(lean), await command_scenario(ref)
        finally:
            await lean.aclose()
            await ref.aclose()

    lean_out, ref_out = run(both())
    assert [label for label, _ in lean_out] == [label for label, _ in ref_out]
    for (label, got), (_, want) in zip(lean_out, ref_out, strict=True):
        assert canon(got) == canon(want), label
    # A few concrete values, so that a shared mistake of both clients cannot pass unnoticed.
    results = dict(lean_out)
    assert results["get"] == b"v1" and results["set nx existing"] is None and results["set nx new"] is True
    assert results["incrby"] == 7 and results["incr on text"][1] == "ResponseError"
    assert results["hgetall"] == {b"a": b"2", b"b": b"x", b"c": b"\x00\xff"}
    assert results["hmget"] == [b"2", None, b"\x00\xff"]
    assert results["hget wrongtype"][2].startswith("WRONGTYPE")
    assert results["smembers"] == {b"a", b"b", b"c"} and results["sismember"] == 1
    assert results["zrange withscores"] == [(b"c", -1.0), (b"b", 2.5), (b"a", 5.0), (b"d", 1e20)]
    assert results["zscore"] == 2.5 and results["zrem"] == 1
    assert results["lrange"] == [b"a", b"b", b"c"] and results["llen"] == 3
    assert results["expire"] is True and results["expire missing"] is False and results["pttl missing"] == -2
    assert results["eval nested"] == [1, b"two", [3, b"four", []], None, 1, -7]
    assert results["eval int"] == 41 and results["evalsha"] == 42
    assert results["eval error_reply"] == ("raised", "ResponseError", "MYERR custom failure")
    nested = results["eval nested error"]
    assert nested[0] == 1 and isinstance(nested[1], ResponseError) and "NESTED inner failure" in str(nested[1])
    assert results["evalsha unknown"][1] == "NoScriptError"
    assert results["script exists"] == [True, False]
    assert results["scan"] == (0, sorted(f"scan:{i}".encode() for i in range(30)))
    tx = results["pipeline transaction=True"]
    assert tx[:5] == [True, None, 1, 1, {b"f": b"v"}] and tx[6] == [(b"m", 2.0)] and tx[8] == {b"x"}
    in_place = results["pipeline error in place"]
    assert in_place[0] is True and isinstance(in_place[1], ResponseError) and in_place[2] == b"x"
    assert results["pipeline raise"][1] == "ResponseError" and "Command # 2 (HGET pe f)" in results["pipeline raise"][2]


# --- 2. scripts after SCRIPT FLUSH --------------------------------------------------------------

COUNTER = "local v = redis.call('INCRBY', KEYS[1], ARGV[1]) return {v, 'tag-' .. ARGV[1]}"


def test_scripts_reload_after_script_flush(redis_server: RedisServer) -> None:
    sync = flushdb(redis_server, 3)

    async def scenario() -> None:
        r = LeanRedis(db_url(redis_server, 3))
        try:
            registered = r.register_script(COUNTER)
            assert isinstance(registered, AsyncScript)
            project = Script(r, COUNTER.replace("tag-", "proj-"))
            assert await registered(keys=["k"], args=[1]) == [1, b"tag-1"]
            assert await project(keys=["k"], args=[1]) == [2, b"proj-1"]
            for round_ in range(2):
                await r.script_flush()
                assert await r.script_exists(registered.sha, project.sha) == [False, False]
                # Alone: NOSCRIPT, then SCRIPT LOAD and EVALSHA again.
                assert await registered(keys=["k"], args=[10]) == [12 + 40 * round_, b"tag-10"]
                assert await project(keys=["k"], args=[10]) == [22 + 40 * round_, b"proj-10"]
                await r.script_flush()
                # Inside pipelines of both kinds, the scripts missing from Redis again.
                for transaction in (False, True):
                    p = r.pipeline(transaction=transaction)
                    p.get("k")
                    await registered(keys=["k"], args=[5], client=p)
                    await project(keys=["k"], args=[5], client=p)
                    p.get("k")
                    base = 22 + 40 * round_ + (10 if transaction else 0)
                    assert await p.execute() == [
                        str(base).encode(), [base + 5, b"tag-5"], [base + 10, b"proj-5"], str(base + 10).encode()]
                    await r.script_flush()
            # Many concurrent callers of a flushed script: every one gets its own reply.
            results = await asyncio.gather(*(registered(keys=[f"own:{i}"], args=[i]) for i in range(200)))
            assert results == [[i, f"tag-{i}".encode()] for i in range(200)]
            # A script error is raised as ResponseError, not confused with NOSCRIPT.
            broken = r.register_script("return redis.call('HGET', KEYS[1], 'f')")
            with pytest.raises(ResponseError, match="WRONGTYPE") as info:
                await broken(keys=["k"])
            assert not isinstance(info.value, NoScriptError)
        finally:
            await r.aclose()

    run(scenario())
    assert sync.get("k") == b"82"


def _calls(sync: redis.Redis, command: str) -> int:
    return int(sync.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def test_script_only_pipelines_go_as_evalsha_and_survive_a_flush(redis_server: RedisServer) -> None:
    """A pipeline of scripts this connection has run goes as EVALSHA (no source re-sent); after a
    SCRIPT FLUSH, and with a flush in the middle of a stack, the results and their order are those
    of the queued order (the project's Script queues EVAL with its source on a pipeline)."""
    sync = flushdb(redis_server, 5)
    log_script = "redis.call('RPUSH', KEYS[1], ARGV[1]) return redis.call('LLEN', KEYS[1])"

    async def scenario() -> None:
        r = LeanRedis(db_url(redis_server, 5))
        try:
            appender = Script(r, log_script)
            counter = Script(r, COUNTER)

            async def batch(tag: str, n: int) -> list[Any]:
                async with r.pipeline(transaction=False) as p:
                    for i in range(n):
                        await appender(keys=["log"], args=[f"{tag}{i}"], client=p)
                        await counter(keys=["n"], args=[1], client=p)
                    return await p.execute()  # type: ignore[no-any-return]

            first = await batch("a", 3)  # unknown to the connection: EVAL with source
            evalsha_before = _calls(sync, "evalsha")
            second = await batch("b", 3)  # known: EVALSHA
            assert _calls(sync, "evalsha") - evalsha_before == 6
            assert first == [1, [1, b"tag-1"], 2, [2, b"tag-1"], 3, [3, b"tag-1"]]
            assert second == [4, [4, b"tag-1"], 5, [5, b"tag-1"], 6, [6, b"tag-1"]]
            # A flush between pipelines: every EVALSHA answers NOSCRIPT, all are sent again in order.
            await r.script_flush()
            third = await batch("c", 2)
            assert third == [7, [7, b"tag-1"], 8, [8, b"tag-1"]]
            # Plain commands first, then scripts this connection knows: the scripts go as EVALSHA …
            evalsha_before = _calls(sync, "evalsha")
            async with r.pipeline(transaction=False) as p:
                p.get("n")
                await appender(keys=["log"], args=["d0"], client=p)
                assert await p.execute() == [b"8", 9]
            assert _calls(sync, "evalsha") == evalsha_before + 1
            # … and after a flush they are sent again, in order.
            await r.script_flush()
            async with r.pipeline(transaction=False) as p:
                p.get("n")
                await appender(keys=["log"], args=["e0"], client=p)
                await counter(keys=["n"], args=[1], client=p)
                assert await p.execute() == [b"8", 10, [9, b"tag-1"]]
            # A plain command after a script: the stack goes with the source (a flush cannot reorder it).
            evalsha_before = _calls(sync, "evalsha")
            async with r.pipeline(transaction=False) as p:
                await appender(keys=["log"], args=["f0"], client=p)
                p.get("n")
                assert await p.execute() == [11, b"9"]
            assert _calls(sync, "evalsha") == evalsha_before
        finally:
            await r.aclose()

    run(scenario())
    assert sync.lrange("log", 0, -1) == [b"a0", b"a1", b"a2", b"b0", b"b1", b"b2", b"c0", b"c1", b"d0", b"e0",
                                         b"f0"]
    assert sync.get("n") == b"9"


def test_run_scripts_goes_as_evalsha_in_order_and_survives_a_flush(redis_server: RedisServer) -> None:
    """`LeanRedis.run_scripts` (what `ScriptSet.run_many` uses on one Redis): one script many times in
    one round trip, EVAL the first time, EVALSHA once the connection has run it, sent again with its
    source after a SCRIPT FLUSH, replies in order; an error reply is raised; redis-py's pooled client
    (a pipeline) gives the same replies."""
    sync = flushdb(redis_server, 10)
    log_script = "redis.call('RPUSH', KEYS[1], ARGV[1]) return redis.call('LLEN', KEYS[1])"

    async def scenario() -> None:
        r = LeanRedis(db_url(redis_server, 10))
        ref = pooled(db_url(redis_server, 10))
        try:
            calls = [(["log"], [f"a{i}"]) for i in range(3)]
            assert await r.run_scripts(log_script, calls) == [1, 2, 3]
            before = _calls(sync, "evalsha")
            assert await r.run_scripts(log_script, [(["log"], ["b0"]), (["log"], ["b1"])]) == [4, 5]
            assert _calls(sync, "evalsha") - before == 2
            await r.script_flush()
            assert await r.run_scripts(log_script, [(["log"], ["c0"]), (["log"], ["c1"])]) == [6, 7]
            assert await r.run_scripts(log_script, []) == []
            for bad in (None, True, [1]):  # refused before anything is sent, as redis-py refuses them
                with pytest.raises(redis.exceptions.DataError, match=type(bad).__name__):
                    await r.run_scripts(log_script, [(["log"], [bad])])
            with pytest.raises(ResponseError):
                await r.run_scripts("return redis.call('INCR', KEYS[1])", [(["log"], [])])
            # The ScriptSet front: the lean client's way and a pipeline of redis-py's give the same replies.
            lean, pipe = (ScriptSet.__new__(ScriptSet), ScriptSet.__new__(ScriptSet))
            lean._scripts = {"log": Script(r, log_script)}
            pipe._scripts = {"log": Script(ref, log_script)}
            assert await lean.run_many("log", [(["log"], ["d0"])]) == [8]
            assert await pipe.run_many("log", [(["log"], ["d1"]), (["log"], ["d2"])]) == [9, 10]
        finally:
            await r.aclose()
            await ref.aclose()

    run(scenario())
    assert sync.lrange("log", 0, -1) == [b"a0", b"a1", b"a2", b"b0", b"b1", b"c0", b"c1", b"d0", b"d1", b"d2"]


def test_eval_many_runs_several_scripts_in_one_round_trip_with_errors_in_place(redis_server: RedisServer) -> None:
    """`LeanRedis.eval_many` (what `ScriptSet.run_each` uses on one Redis): several scripts in one round
    trip and in order, EVALSHA only once the connection has run every one of them, sent again with
    their source after a SCRIPT FLUSH; an error reply is returned in its place, not raised; redis-py's
    pooled client (a pipeline) gives the same replies."""
    sync = flushdb(redis_server, 11)
    push = "redis.call('RPUSH', KEYS[1], ARGV[1]) return redis.call('LLEN', KEYS[1])"
    count = "return redis.call('LLEN', KEYS[1]) * 10"
    bad = "return redis.call('INCR', KEYS[1])"  # on a list: an error reply

    async def scenario() -> None:
        r = LeanRedis(db_url(redis_server, 11))
        ref = pooled(db_url(redis_server, 11))
        try:
            assert await r.eval_many([(push, ["log"], ["a0"]), (count, ["log"], []), (push, ["log"], ["a1"])]) \
                == [1, 10, 2]
            before = _calls(sync, "evalsha")
            assert await r.eval_many([(count, ["log"], []), (push, ["log"], ["b0"])]) == [20, 3]
            assert _calls(sync, "evalsha") - before == 2
            await r.script_flush()
            assert await r.eval_many([(push, ["log"], ["c0"]), (count, ["log"], [])]) == [4, 40]
            assert await r.eval_many([]) == []
            got = await r.eval_many([(push, ["log"], ["d0"]), (bad, ["log"], []), (push, ["log"], ["d1"])])
            assert got[0] == 5 and isinstance(got[1], ResponseError) and got[2] == 6
            lean, pipe = (ScriptSet.__new__(ScriptSet), ScriptSet.__new__(ScriptSet))
            lean._scripts = {"push": Script(r, push), "bad": Script(r, bad)}
            pipe._scripts = {"push": Script(ref, push), "bad": Script(ref, bad)}
            for front, tag in ((lean, "e"), (pipe, "f")):
                got = await front.run_each([("push", ["log"], [tag]), ("bad", ["log"], [])])
                assert isinstance(got[1], ResponseError)
                assert got[0] == len(sync.lrange("log", 0, -1))
        finally:
            await r.aclose()
            await ref.aclose()

    run(scenario())
    assert sync.lrange("log", 0, -1) == [b"a0", b"a1", b"b0", b"c0", b"d0", b"d1", b"e", b"f"]


# --- 3. replies go to their own callers, also under cancellation --------------------------------


def test_concurrent_callers_each_get_their_own_replies(redis_server: RedisServer) -> None:
    flushdb(redis_server, 4)
    n = 2000

    async def scenario() -> None:
        r = LeanRedis(db_url(redis_server, 4))
        try:
            await r.mset({f"v:{i}": f"val-{i}" for i in range(n)})
            conn_id = await r.client_id()

            async def worker(i: int) -> None:
                assert await r.incrby(f"c:{i}", i + 1) == i + 1
                assert await r.get(f"v:{i}") == f"val-{i}".encode()
                if i % 7 == 0:
                    p = r.pipeline(transaction=i % 14 == 0)
                    p.incr(f"c:{i}")
                    p.get(f"v:{i}")
                    p.hset(f"h:{i}", mapping={"i": i})
                    p.hgetall(f"h:{i}")
                    p.zadd(f"z:{i}", {"m": i})
                    p.zrange(f"z:{i}", 0, -1, withscores=True)
                    assert await p.execute() == [
                        i + 2, f"val-{i}".encode(), 1, {b"i": str(i).encode()}, 1, [(b"m", float(i))]]
                assert await r.hget(f"h:{i}", "i") == (str(i).encode() if i % 7 == 0 else None)

            await asyncio.gather(*(worker(i) for i in range(n)))
            assert await r.client_id() == conn_id  # all on one connection, none of it by reconnecting
        finally:
            await r.aclose()

    run(scenario())


def test_cancelled_waiters_do_not_desynchronise_the_others(redis_server: RedisServer) -> None:
    flushdb(redis_server, 5)
    rng = random.Random(20261122)
    n = 2000
    big = b"B" * (1 << 20)  # a reply that arrives in many reads: cancelled while half received

    async def scenario() -> None:
        r = LeanRedis(db_url(redis_server, 5))
        try:
            await r.mset({f"v:{i}": f"val-{i}" for i in range(n)})
            await r.set("big", big)
            conn_id = await r.client_id()
            cancelled: set[int] = set()

            async def worker(i: int) -> tuple[int, Any]:
                a = await r.incr(f"c:{i}")
                b = await r.get(f"v:{i}")
                if i % 5 == 0:
                    p = r.pipeline(transaction=i % 10 == 0)
                    p.get(f"v:{i}")
                    p.incr(f"c:{i}")
                    p.get("big" if i % 50 == 0 else f"v:{i}")
                    return i, (a, b, await p.execute())
                if i % 97 == 0:
                    return i, (a, b, await r.get("big"))
                return i, (a, b)

            async def bounded(i: int) -> tuple[int, Any]:
                try:
                    return await asyncio.wait_for(worker(i), timeout=rng.choice([0, 0.0001, 0.0005, 0.002]))
                except TimeoutError:
                    cancelled.add(i)
                    return i, None

            tasks = []
            for i in range(n):
                if i % 3 == 0:
                    tasks.append(asyncio.ensure_future(bounded(i)))
                else:
                    tasks.append(asyncio.ensure_future(worker(i)))
            # Cancel another random subset at random moments while their commands are in flight.
            to_cancel = rng.sample([i for i in range(n) if i % 3], n // 4)
            for step, i in enumerate(to_cancel):
                if step % 50 == 0:
                    await asyncio.sleep(rng.choice([0, 0, 0.0005, 0.001]))
                tasks[i].cancel()
            done = await asyncio.gather(*tasks, return_exceptions=True)
            completed = 0
            for i, res in enumerate(done):
                if isinstance(res, asyncio.CancelledError) or (i in cancelled and res == (i, None)):
                    continue
                assert not isinstance(res, BaseException), (i, res)
                completed += 1
                assert res[0] == i
                a, b, *rest = res[1]
                assert a == 1 and b == f"val-{i}".encode(), (i, res)
                if i % 5 == 0:
                    third = big if i % 50 == 0 else f"val-{i}".encode()
                    assert rest == [[f"val-{i}".encode(), 2, third]], i
                elif i % 97 == 0:
                    assert rest == [big]
            assert completed > n // 4  # the check above covered a good share of the callers
            # Afterwards: nothing left waiting, the same connection, and every reply still in step.
            await asyncio.sleep(0.05)
            assert await r.client_id() == conn_id
            checks = await asyncio.gather(*(r.get(f"v:{i}") for i in range(n)))
            assert checks == [f"val-{i}".encode() for i in range(n)]
            p = r.pipeline(transaction=False)
            for i in range(0, n, 10):
                p.get(f"v:{i}")
                p.echo(f"e{i}")
            assert await p.execute() == [x for i in range(0, n, 10) for x in (f"val-{i}".encode(), f"e{i}".encode())]
            assert r._wire is not None and not r._wire.waiters
        finally:
            await r.aclose()

    run(scenario())


# --- 4. pipelines --------------------------------------------------------------------------------


def test_pipelines(redis_server: RedisServer) -> None:
    sync = flushdb(redis_server, 6)

    async def scenario() -> None:
        r = LeanRedis(db_url(redis_server, 6))
        ref = pooled(db_url(redis_server, 6))
        try:
            conn_id = await r.client_id()
            await r.set("str", "x")
            # Non-transactional, an error in the middle: in place, or the first one raised.
            p = r.pipeline(transaction=False)
            p.set("a", "1").hget("str", "f").get("a").hget("str", "g")
            out = await p.execute(raise_on_error=False)
            assert out[0] is True and out[2] == b"1"
            assert isinstance(out[1], ResponseError) and str(out[1]).startswith("WRONGTYPE")
            assert isinstance(out[3], ResponseError)
            p.set("b", "2").hget("str", "f").incr("n")
            with pytest.raises(ResponseError, match=r"Command # 2 \(HGET str f\) of pipeline caused error.*WRONGTYPE"):
                await p.execute()
            assert sync.get("b") == b"2" and sync.get("n") == b"1"  # the others ran all the same
            assert await r.get("a") == b"1" and await r.client_id() == conn_id  # still usable, same connection

            # Transactional: replies shaped as redis-py shapes them.
            p = r.pipeline()
            p.set("t", "1").incrby("t", 4).hset("th", mapping={"f": 1}).hgetall("th").zadd("tz", {"m": 1.5})
            p.zrange("tz", 0, -1, withscores=True).sadd("ts", "x").smembers("ts").get("nope").exists("t", "th")
            assert await p.execute() == [True, 5, 1, {b"f": b"1"}, 1, [(b"m", 1.5)], 1, {b"x"}, None, 2]

            # A queue-time error (unknown command): raised, and nothing of the transaction written.
            for client in (r, ref):
                p = client.pipeline()
                p.set("q1", "x").execute_command("NOSUCHCMD", "a").set("q2", "y")
                with pytest.raises(ResponseError, match="(?i)unknown command") as info:
                    await p.execute()
                assert "Command # 2" in str(info.value)
                assert sync.exists("q1", "q2") == 0
            # An exec-time error (WRONGTYPE): raised; Redis still ran the rest (no rollback), as with redis-py.
            for client, prefix in ((r, "lean"), (ref, "ref")):
                p = client.pipeline()
                p.set(f"{prefix}:e1", "x").hget(f"{prefix}:e1", "f").set(f"{prefix}:e2", "y")
                with pytest.raises(ResponseError, match=r"Command # 2 .*WRONGTYPE"):
                    await p.execute()
                assert sync.mget(f"{prefix}:e1", f"{prefix}:e2") == [b"x", b"y"]
            # ... and with raise_on_error=False the error comes back in place, as redis-py returns it.
            results = []
            for client, prefix in ((r, "lean"), (ref, "ref")):
                p = client.pipeline()
                p.set(f"{prefix}:f1", "x").hget(f"{prefix}:f1", "f").incr(f"{prefix}:f2")
                results.append(await p.execute(raise_on_error=False))
            assert canon(results[0]) == canon(results[1])
            assert results[0][0] is True and isinstance(results[0][1], ResponseError) and results[0][2] == 1

            # Empty pipelines; `async with`; a pipeline used again after execute.
            assert await r.pipeline().execute() == []
            assert await r.pipeline(transaction=False).execute() == []
            async with r.pipeline(transaction=False) as p:
                p.set("w", "1")
                p.get("w")
                assert await p.execute() == [True, b"1"]
                assert len(p) == 0
                p.incr("w")
                assert await p.execute() == [2]
            async with r.pipeline() as p:
                p.incr("w")
                p.get("w")
                assert await p.execute() == [3, b"3"]
            async with r.pipeline() as p:  # left without execute: nothing sent
                p.set("never", "1")
            assert sync.exists("never") == 0
            assert await r.client_id() == conn_id
        finally:
            await r.aclose()
            await ref.aclose()

    run(scenario())


# --- 5. connection loss -------------------------------------------------------------------------

BUSY_MS = "local s = redis.call('TIME') local t0 = s[1] * 1000000 + s[2] " \
          "repeat local t = redis.call('TIME') until (t[1] * 1000000 + t[2]) - t0 > tonumber(ARGV[1]) * 1000 " \
          "return 1"


def test_kill_9_fails_in_flight_commands_and_the_client_recovers_after_restart(own_redis: RedisServer) -> None:
    server = own_redis

    async def scenario() -> None:
        r = LeanRedis(server.url)
        try:
            # Acknowledged before the kill: must survive it (AOF, appendfsync always).
            for i in range(50):
                assert await r.set(f"ack:{i}", i) is True
            p = r.pipeline()
            for i in range(20):
                p.hset("ack:h", str(i), i)
            p.incrby("ack:n", 20)
            await p.execute()

            # In flight at the kill: a script keeping Redis busy for 3 s, and commands queued behind it.
            busy = asyncio.ensure_future(r.eval(BUSY_MS, 0, 3000))
            behind = [asyncio.ensure_future(r.incr("lost:n")) for _ in range(100)]
            pipe = r.pipeline()
            pipe.set("lost:p", "1")
            pipe.get("ack:1")
            behind.append(asyncio.ensure_future(pipe.execute()))
            await asyncio.sleep(0.2)
            assert not busy.done() and not any(t.done() for t in behind)
            t0 = time.monotonic()
            server.kill()
            results = await asyncio.gather(busy, *behind, return_exceptions=True)
            assert time.monotonic() - t0 < 2.0
            assert all(isinstance(x, RedisConnectionError) for x in results), results[:3]

            # While Redis is down: ConnectionError once the retries are spent, and soon.
            for attempt in (r.get("ack:1"), r.pipeline().set("x", 1).get("x").execute()):
                t0 = time.monotonic()
                with pytest.raises(RedisConnectionError):
                    await attempt
                assert time.monotonic() - t0 < 1.0

            # Restarted on the same port and data dir: the same client object works again.
            if server.proc is not None and server.proc.stderr is not None:
                server.proc.stderr.close()
            await asyncio.to_thread(server.start)
            assert await r.mget([f"ack:{i}" for i in range(50)]) == [str(i).encode() for i in range(50)]
            assert await r.hgetall("ack:h") == {str(i).encode(): str(i).encode() for i in range(20)}
            assert await r.get("ack:n") == b"20"
            assert await r.exists("lost:p", "lost:n") == 0  # the busy script held them back: never ran
            results = await asyncio.gather(*(r.incr("after") for _ in range(100)))
            assert sorted(results) == list(range(1, 101))
        finally:
            await r.aclose()

    run(scenario(), timeout=30)


def test_lost_connection_is_retried_on_a_fresh_one(redis_server: RedisServer) -> None:
    sync = flushdb(redis_server, 7)

    async def scenario() -> None:
        r = LeanRedis(db_url(redis_server, 7))
        try:
            first = await r.client_id()
            # The connection dies before the commands were written: each is retried once, on a new one.
            tasks = [asyncio.ensure_future(r.incr("n")) for _ in range(100)]
            pipe = r.pipeline()
            pipe.incr("m").get("n")
            tasks.append(asyncio.ensure_future(pipe.execute()))
            await asyncio.sleep(0)  # every task has queued its command; the write is still pending
            assert r._wire is not None and len(r._wire.waiters) == 101
            r._wire.transport.abort()
            results = await asyncio.gather(*tasks)
            assert sorted(results[:100]) == list(range(1, 101))
            assert results[100][0] == 1
            assert sync.get("n") == b"100" and sync.get("m") == b"1"  # each ran exactly once
            second = await r.client_id()
            assert second != first

            # Killed by the server while idle (CLIENT KILL): the next commands go out on a new connection.
            assert sync.client_kill_filter(_id=second) in (1, True)
            assert await asyncio.gather(*(r.get("n") for _ in range(20))) == [b"100"] * 20
            assert await r.client_id() not in (first, second)
        finally:
            await r.aclose()

    run(scenario())


def test_error_replies_of_connection_error_classes_are_raised_not_returned(own_redis: RedisServer) -> None:
    """LOADING (while Redis replays its AOF after a restart) is a BusyLoadingError, a ConnectionError
    subclass: it must be raised (as redis-py raises it), never handed to the caller as the value."""
    server = own_redis
    sync = redis.Redis(port=server.port)
    p = sync.pipeline(transaction=False)
    for i in range(2000):
        p.set(f"k{i}", "v" * 64)
    p.execute()
    sync.bgrewriteaof()  # an RDB preamble, so that key-load-delay slows the reload below
    deadline = time.monotonic() + 10
    while True:
        info = sync.info("persistence")
        if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
            break
        assert time.monotonic() < deadline
        time.sleep(0.02)
    sync.close()
    server.kill()
    slow = RedisServer(port=server.port, data_dir=server.data_dir, extra=["--key-load-delay", "500"])

    async def scenario() -> list[str]:
        r = LeanRedis(server.url)
        starting = asyncio.ensure_future(asyncio.to_thread(slow.start, 30))
        seen: list[str] = []
        try:
            while True:
                try:
                    value = await r.get("k1")
                except redis.exceptions.BusyLoadingError:
                    seen.append("loading")
                except RedisConnectionError:
                    seen.append("down")
                else:
                    assert value == b"v" * 64, f"GET returned {value!r} after {seen[-3:]}"
                    seen.append("value")
                    break
                await asyncio.sleep(0.005)
            await starting
            return seen
        finally:
            await r.aclose()
            await starting

    try:
        seen = run(scenario(), timeout=30)
    finally:
        slow.cleanup()
    assert "loading" in seen  # the test did see Redis loading


# --- 6. URLs ------------------------------------------------------------------------------------


def test_db_number_in_the_url(redis_server: RedisServer) -> None:
    db0 = redis.Redis(port=redis_server.port, db=0)
    db3 = flushdb(redis_server, 3)
    db9 = flushdb(redis_server, 9)
    key = f"dbtest:{uuid.uuid4().hex}"

    async def scenario() -> None:
        r = LeanRedis(db_url(redis_server, 3))
        q = LeanRedis(f"redis://127.0.0.1:{redis_server.port}?db=9")  # redis-py's other spelling
        try:
            await r.set(key, "three")
            await q.set(key, "nine")
            assert r._wire is not None
            r._wire.transport.abort()  # a new connection selects the same database again
            await asyncio.sleep(0)
            assert await r.incr(f"{key}:n") == 1
            assert await r.get(key) == b"three"
        finally:
            await r.aclose()
            await q.aclose()

    run(scenario())
    assert db0.get(key) is None and db0.get(f"{key}:n") is None
    assert db3.get(key) == b"three" and db3.get(f"{key}:n") == b"1"
    assert db9.get(key) == b"nine"


def test_password_and_acl_user_in_the_url(own_redis: RedisServer) -> None:
    # RedisServer.start() pings without a password, so the password is set once it runs.
    setup = redis.Redis(port=own_redis.port)
    setup.config_set("requirepass", "p@ss:w/rd")
    setup.close()
    admin = redis.Redis(port=own_redis.port, password="p@ss:w/rd")
    admin.execute_command("ACL", "SETUSER", "alice", "on", ">alice-pw", "~*", "+@all")
    port = own_redis.port

    async def scenario() -> None:
        r = LeanRedis(f"redis://:p%40ss%3Aw%2Frd@127.0.0.1:{port}/0")
        alice = LeanRedis(f"redis://alice:alice-pw@127.0.0.1:{port}/2")
        nopw = LeanRedis(f"redis://127.0.0.1:{port}/0")
        wrong = LeanRedis(f"redis://:wrong@127.0.0.1:{port}/0")
        try:
            assert await r.set("k", "v") is True and await r.get("k") == b"v"
            assert await alice.set("k", "alice") is True
            assert (await alice.acl_whoami()) == "alice"
            r._wire.transport.abort()  # re-authenticates on the new connection
            await asyncio.sleep(0)
            assert await r.get("k") == b"v"
            # Without the password or with a wrong one: raised (as redis-py raises), never a value.
            for client in (nopw, wrong):
                for call in (lambda c: c.get("k"), lambda c: c.set("k", "x"),
                             lambda c: c.pipeline(transaction=False).set("k", "x").get("k").execute()):
                    with pytest.raises(redis.exceptions.AuthenticationError):
                        value = await call(client)
                        pytest.fail(f"returned {value!r}")
            ref = pooled(f"redis://:wrong@127.0.0.1:{port}/0")
            with pytest.raises(redis.exceptions.AuthenticationError):
                await ref.get("k")
            await ref.aclose()
        finally:
            for c in (r, alice, nopw, wrong):
                await c.aclose()

    before = len(admin.client_list())
    run(scenario())
    time.sleep(0.1)
    assert len(admin.client_list()) <= before  # failed logins left no connection behind
    assert admin.get("k") == b"v"
    assert redis.Redis(port=port, db=2, username="alice", password="alice-pw").get("k") == b"alice"


def test_only_plain_redis_urls() -> None:
    for url in ("rediss://127.0.0.1:6390/0", "unix:///tmp/redis.sock"):
        with pytest.raises(ValueError, match="redis://"):
            LeanRedis(url)


# --- 7. refused commands ------------------------------------------------------------------------


def test_unsupported_commands_raise_not_implemented(redis_server: RedisServer) -> None:
    sync = flushdb(redis_server, 8)
    sync.rpush("q", "item")

    async def scenario() -> None:
        r = LeanRedis(db_url(redis_server, 8))
        try:
            conn_id = await r.client_id()
            refused = [
                lambda: r.execute_command("WATCH", "q"),
                lambda: r.blpop(["q"], timeout=1),
                lambda: r.brpop(["q"], timeout=1),
                lambda: r.brpoplpush("q", "q2", timeout=1),
                lambda: r.bzpopmin(["z"], timeout=1),
                lambda: r.execute_command("SUBSCRIBE", "ch"),
                lambda: r.execute_command("PSUBSCRIBE", "ch*"),
            ]
            for call in refused:
                t0 = time.monotonic()
                with pytest.raises(NotImplementedError):
                    await asyncio.wait_for(call(), 5)
                assert time.monotonic() - t0 < 0.5
            # Queued in a pipeline: refused when executed, nothing of the pipeline sent.
            for queue in (lambda p: p.blpop(["q"], timeout=1), lambda p: p.execute_command("SUBSCRIBE", "ch"),
                          lambda p: p.brpoplpush("q", "q2", timeout=1), lambda p: p.execute_command("WATCH", "q")):
                for transaction in (False, True):
                    p = r.pipeline(transaction=transaction)
                    p.set("queued", "1")
                    with pytest.raises(NotImplementedError):  # when queued, or at the latest when executed
                        queue(p)
                        await asyncio.wait_for(p.execute(), 5)
                    await p.reset()
            assert sync.exists("queued") == 0
            # WATCH on a pipeline (also through client.transaction): refused, not run on another connection
            # where it could not guard the MULTI/EXEC that LeanPipeline sends on the shared one.
            p = r.pipeline()
            with pytest.raises(NotImplementedError):
                await p.watch("q")
            await p.reset()

            async def tx(pipe: Any) -> None:
                pipe.multi()
                pipe.set("q", "overwritten")

            with pytest.raises(NotImplementedError):
                await r.transaction(tx, "q")
            assert sync.lrange("q", 0, -1) == [b"item"]  # nothing popped, nothing overwritten
            assert await r.client_id() == conn_id and await r.llen("q") == 1
        finally:
            await r.aclose()

    run(scenario())


def test_watch_is_never_silently_ineffective(redis_server: RedisServer) -> None:
    """Whatever LeanPipeline does with WATCH, a watched key changed by someone else must not be
    overwritten by the transaction."""
    sync = flushdb(redis_server, 10)

    async def scenario() -> None:
        r = LeanRedis(db_url(redis_server, 10))
        try:
            p = r.pipeline()
            try:
                await p.watch("w")
            except NotImplementedError:
                return
            sync.set("w", "other")
            p.multi()
            p.set("w", "mine")
            with pytest.raises(WatchError):
                await p.execute()
        finally:
            await r.aclose()

    run(scenario())
    assert sync.get("w") in (None, b"other")


# --- 8. the services' client factory ------------------------------------------------------------


def test_client_factory_picks_lean_unless_told_otherwise(redis_server: RedisServer,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    url = db_url(redis_server, 11)
    flushdb(redis_server, 11)

    async def roundtrip(c: Any) -> Any:
        try:
            await c.set("f", "1")
            return await c.incr("f")
        finally:
            await c.aclose(close_connection_pool=True)

    monkeypatch.delenv("MEDAID_REDIS_CLIENT", raising=False)
    c = redis_client.client(url)
    assert isinstance(c, LeanRedis)
    assert run(roundtrip(c)) == 2
    monkeypatch.setenv("MEDAID_REDIS_CLIENT", "lean")
    assert isinstance(redis_client.client(url), LeanRedis)
    monkeypatch.setenv("MEDAID_REDIS_CLIENT", "redis-py")
    c = redis_client.client(url)
    assert type(c) is redis_client.PooledRedis and not isinstance(c, LeanRedis)  # redis-py's pooled Redis
    assert run(roundtrip(c)) == 2
    monkeypatch.delenv("MEDAID_REDIS_CLIENT")
    tls = redis_client.client("rediss://127.0.0.1:6390/0")  # TLS: never the lean client
    assert type(tls) is redis_client.PooledRedis
    run(tls.aclose())


# --- 9. aclose, and more than one event loop -----------------------------------------------------


def test_aclose_closes_the_connection_and_a_later_command_reconnects(redis_server: RedisServer) -> None:
    sync = flushdb(redis_server, 12)

    def client_ids() -> set[int]:
        return {int(c["id"]) for c in sync.client_list()}

    async def wait_gone(conn_id: int) -> None:
        for _ in range(100):
            if conn_id not in client_ids():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"connection {conn_id} still open after aclose()")

    async def scenario() -> None:
        r = LeanRedis(db_url(redis_server, 12))
        await r.set("k", "v")
        first = await r.client_id()
        assert first in client_ids()
        await r.aclose()
        await wait_gone(first)
        # A later command opens a new connection.
        assert await r.get("k") == b"v"
        second = await r.client_id()
        assert second != first
        # Closed with commands in flight: each one either completes correctly or fails with ConnectionError
        # (none hangs, none gets another's reply); the client stays usable.
        tasks = [asyncio.ensure_future(r.incr(f"n:{i}")) for i in range(200)]
        await asyncio.sleep(0)
        await r.aclose()
        for i, res in enumerate(await asyncio.gather(*tasks, return_exceptions=True)):
            assert res in (1, 2) or isinstance(res, RedisConnectionError), (i, res)
        await wait_gone(second)
        assert await r.get("k") == b"v"
        await r.aclose()
        # As a context manager.
        async with LeanRedis(db_url(redis_server, 12)) as c:
            assert await c.get("k") == b"v"
            third = await c.client_id()
        await wait_gone(third)

    run(scenario())


def test_one_client_used_from_successive_event_loops(redis_server: RedisServer) -> None:
    """A client made once and used in two `asyncio.run`s (tools, tests): the second loop must not wait
    forever on a connection that belonged to the first, closed loop."""
    flushdb(redis_server, 13)
    r = LeanRedis(db_url(redis_server, 13))

    async def burst() -> list[int]:
        return await asyncio.gather(*(r.incr("n") for _ in range(50)))

    assert sorted(run(burst(), timeout=5)) == list(range(1, 51))
    assert sorted(run(burst(), timeout=5)) == list(range(51, 101))
    run(r.aclose(), timeout=5)


def test_one_client_used_from_successive_uvloop_loops(redis_server: RedisServer) -> None:
    """The same under uvloop, as the services run: its transports hand out a pseudo-socket without
    `shutdown()`, and the first loop's connection must still be ended, not raise in the second loop."""
    flushdb(redis_server, 13)
    r = LeanRedis(db_url(redis_server, 13))

    async def burst() -> list[int]:
        return await asyncio.wait_for(asyncio.gather(*(r.incr("n") for _ in range(50))), 5)

    async def clients_settle_at_one() -> int:  # the server notices a shut connection a moment later
        for _ in range(100):
            n = len(await asyncio.wait_for(r.client_list(), 5))
            if n == 1:
                break
            await asyncio.sleep(0.05)
        return n

    assert sorted(uvloop.run(burst())) == list(range(1, 51))
    assert sorted(uvloop.run(burst())) == list(range(51, 101))
    assert uvloop.run(clients_settle_at_one()) == 1  # the first loop's connection was ended, not left open
    uvloop.run(asyncio.wait_for(r.aclose(), 5))
