"""The router's per-institution reconciliation index (router/index.py) on a real Redis: an entry is
written once per claimed 2207, replaced only when an earlier attempt left it or its date is far from
the settlement's, and a period's reconciliation finds a settlement whatever the skew between the
router's clock and the registry's (within the margin)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis
from medaid.common.redis_server import RedisServer
from medaid.router.index import MARGIN_MS, Entry, SettlementIndex

INST = "H13010100001"
HOUR = 3_600_000
DAY = 24 * HOUR


def entry(msgid: str, mdtrt_id: str = "V1", medfee: int = 100) -> Entry:
    return Entry(msgid=msgid, province="13", psn_no="130102198001010010", mdtrt_id=mdtrt_id, insutype="310",
                 med_type="11", medfee_fen=medfee)


def sid(n: int) -> str:
    return f"{INST}{n:030d}"


@pytest.fixture
def index(redis_server: RedisServer, rdb: redis.Redis) -> Iterator[tuple[SettlementIndex, aioredis.Redis]]:
    client = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
    yield SettlementIndex(client), client


def run(index: tuple[SettlementIndex, aioredis.Redis], coro_of: object) -> object:
    async def go() -> object:
        try:
            return await coro_of(index[0])  # type: ignore[operator]
        finally:
            await index[1].aclose()

    return asyncio.run(go())


def test_a_fresh_entry_is_written_once_and_kept(index: tuple[SettlementIndex, aioredis.Redis],
                                                rdb: redis.Redis) -> None:
    async def scenario(ix: SettlementIndex) -> list[bool]:
        first = await ix.note_settlements([(sid(1), entry("m1")), (sid(2), entry("m2", mdtrt_id=""))], 1_000)
        again = await ix.note_settlements([(sid(1), entry("m1", medfee=999))], 2_000)  # a resend
        return first + again

    assert run(index, scenario) == [True, True, False]
    # The resend left the first attempt's entry and date; nothing else was written.
    assert rdb.zscore(f"rtr:{{inst:{INST}}}:setl", sid(1)) == 1_000
    assert b'"medfee_fen":100' in rdb.hget(f"rtr:{{inst:{INST}}}:info", sid(1))
    assert rdb.zrange(f"rtr:{{inst:{INST}}}:mdtrt:V1", 0, -1) == [sid(1).encode()]


def test_dated_well_within_half_the_margin() -> None:
    assert SettlementIndex.dated_well(1_000, 1_000 + MARGIN_MS // 2 - 1)
    assert SettlementIndex.dated_well(1_000 + MARGIN_MS // 2 - 1, 1_000)
    assert not SettlementIndex.dated_well(1_000, 1_000 + MARGIN_MS // 2)


def test_settled_replaces_an_earlier_attempts_entry(index: tuple[SettlementIndex, aioredis.Redis],
                                                    rdb: redis.Redis) -> None:
    async def scenario(ix: SettlementIndex) -> list[str]:
        await ix.note_settlements([(sid(3), entry("m3", mdtrt_id="OLD"))], 1_000)
        await ix.settled_many([(sid(3), entry("m3", mdtrt_id="NEW"), 5 * HOUR)])
        found = await ix.entries(INST, [sid(3)])
        assert found[0] is not None
        return [found[0].mdtrt_id, *await ix.visit(INST, "NEW")]

    assert run(index, scenario) == ["NEW", sid(3)]
    assert rdb.zscore(f"rtr:{{inst:{INST}}}:setl", sid(3)) == 5 * HOUR


@pytest.mark.parametrize("skew_ms", [-20 * 60_000, -5_000, 0, 5_000, 20 * 60_000])
def test_a_period_finds_a_settlement_dated_by_either_clock(index: tuple[SettlementIndex, aioredis.Redis],
                                                           skew_ms: int) -> None:
    """Settled by the registry 1 ms before midnight, claimed by a router whose clock is `skew_ms` off:
    the day's reconciliation reads it (the caller keeps it by the record's own time)."""
    settled_at = 2 * DAY - 1

    async def scenario(ix: SettlementIndex) -> tuple[list[str], list[str]]:
        await ix.note_settlements([(sid(4), entry("m4"))], settled_at + skew_ms)
        return await ix.settlements_between(INST, DAY, 2 * DAY), await ix.settlements_between(INST, 2 * DAY, 3 * DAY)

    today, tomorrow = run(index, scenario)  # type: ignore[misc]
    assert today == [sid(4)]
    assert tomorrow == [sid(4)]  # a superset: the record's own time leaves it out of that day


def test_the_claim_script_notes_only_a_claimed_2207(index: tuple[SettlementIndex, aioredis.Redis],
                                                    rdb: redis.Redis) -> None:
    """On one Redis msgid_claim.lua writes the index entry itself: for a new claim and for an identical
    attempt joining it (not fresh then), never for a msgid another transaction or person holds."""
    from medaid.router.claims import MsgidClaims

    async def scenario(ix: SettlementIndex) -> list[tuple[bool, bool]]:
        claims = MsgidClaims(index[1])
        first = await claims.claim_and_note([(sid(5), "2207:A")], [ix.note_call(sid(5), entry("m5"), 1_000)])
        joined = await claims.claim_and_note([(sid(5), "2207:A")], [ix.note_call(sid(5), entry("m5"), 2_000)])
        other = await claims.claim_and_note([(sid(5), "2207:B"), (sid(6), "2207:B")],
                                            [ix.note_call(sid(5), entry("x", mdtrt_id="V9"), 3_000), None])
        return [(refused is None, wrote) for refused, wrote in first + joined + other]

    assert run(index, scenario) == [(True, True), (True, False), (False, False), (True, False)]
    assert rdb.zrange(f"rtr:{{inst:{INST}}}:setl", 0, -1, withscores=True) == [(sid(5).encode(), 1_000)]
    assert rdb.hkeys(f"rtr:{{inst:{INST}}}:info") == [sid(5).encode()]
    assert not rdb.exists(f"rtr:{{inst:{INST}}}:mdtrt:V9")
    assert rdb.zrange(f"rtr:{{inst:{INST}}}:mdtrt:V1", 0, -1) == [sid(5).encode()]


def test_entry_json_is_what_json_dumps_writes():
    """An entry is stored as json.dumps(ensure_ascii=False, compact) of its fields in their order wrote
    it, byte for byte, whatever its text holds (quotes, backslashes, Chinese, controls, a 2601's
    figures at their limits), and reads back as itself."""
    import dataclasses
    import json

    texts = ["", "V1", 'a"b', "a\\b", "门诊/0001", "tab\there", "\x00\x1f\x7f", "\u2028\u202e", "😀", "x" * 64]
    for i, value in enumerate(texts):
        e = Entry(msgid=f"M{i:029d}", province="13", psn_no="13010219800101001X", mdtrt_id=value,
                  insutype=value[:6], med_type=texts[-1 - i][:6], medfee_fen=10**12 + i,
                  fulamt_ownpay_fen=i, overlmt_selfpay_fen=0, preselfpay_fen=2**53, inscp_scp_fen=-1)
        expected = json.dumps(dataclasses.asdict(e), ensure_ascii=False, separators=(",", ":"))
        assert e.json() == expected
        assert Entry(**json.loads(e.json())) == e
