"""Per-institution index of the settlements and reversals that came through the router.

What 5203 (by mdtrt_id) and 3201 / 3202 need to find: which settlements an institution made in a
period, and which visit (mdtrt_id) each belongs to. The router holds the index, the registries
hold the money (docs/reconciliation.md says why):

* it is written **before** the registry is called, once the msgid's claim is taken, so every
  2207 / 2208 / 2601 that can have reached a registry is in it, whatever happened to its answer
  (a crash, a lost reply, a settlement finished by the registry's recovery loop);
* it holds what only the national message carries (medfee_sumamt, insutype, med_type, mdtrt_id,
  the policy ranges fulamt_ownpay_amt / overlmt_selfpay / preselfpay_amt / inscp_scp_amt that 5203
  answers as the 2207 did), never what was paid or states: those are read from the registries'
  records when asked, so the index can never disagree with the money. An entry whose request was
  refused is simply not found there.

Keys, all of one institution on one slot (`{inst:<code>}`):

    rtr:{inst:<code>}:setl             zset  settlement id  -> time (ms)
    rtr:{inst:<code>}:rev              zset  `<reversal id>|<settlement id>` -> time (ms)
    rtr:{inst:<code>}:revof            hash  reversal id  -> settlement id (5203 by a refund's setl_id)
    rtr:{inst:<code>}:info             hash  settlement id  -> JSON of the 2207's fields
    rtr:{inst:<code>}:mdtrt:<mdtrt_id> zset  settlement id  -> time (ms)

A time is the router's clock when the claim was taken. A settlement's entry is dated again by the
registry's own time (settled at) once the router sees the answer only when that answer came much
later than the claim (`MARGIN_MS / 2`) or the entry was left by an earlier attempt; a reversal's
always is. A reconciliation reads entries from `MARGIN_MS` before the period to `MARGIN_MS` after
it (a claim time and a settlement time differ by the call's duration and by any skew between the
router's and the registry's clocks) and keeps those whose record's own time falls in the period.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any

from medaid.common.values import text

# How json.dumps(…, ensure_ascii=False) writes a string (quoted, escaped).
_json_string = encode_basestring

MARGIN_MS = 3_600_000  # how far an entry's date may be from its settlement's own time


@dataclass(frozen=True)
class Entry:
    """What the router knows of a 2207 that only the national message carries."""

    msgid: str
    province: str
    psn_no: str
    mdtrt_id: str
    insutype: str
    med_type: str
    medfee_fen: int
    # The policy ranges of the bill (全自费, 超限价自付, 先行自付, 符合范围), as the 2207 sent them; an
    # entry written before the router kept them reads 0.
    fulamt_ownpay_fen: int = 0
    overlmt_selfpay_fen: int = 0
    preselfpay_fen: int = 0
    inscp_scp_fen: int = 0

    def json(self) -> str:
        """The entry as stored (`rtr:{inst:…}:info`): what `json.dumps(…, ensure_ascii=False,
        separators=(",", ":"))` gives for its fields in this order, written out here (every 2207 writes
        one): strings by json's own encoder, integers in decimal."""
        q = _json_string
        return (f'{{"msgid":{q(self.msgid)},"province":{q(self.province)},"psn_no":{q(self.psn_no)},'
                f'"mdtrt_id":{q(self.mdtrt_id)},"insutype":{q(self.insutype)},"med_type":{q(self.med_type)},'
                f'"medfee_fen":{self.medfee_fen:d},"fulamt_ownpay_fen":{self.fulamt_ownpay_fen:d},'
                f'"overlmt_selfpay_fen":{self.overlmt_selfpay_fen:d},"preselfpay_fen":{self.preselfpay_fen:d},'
                f'"inscp_scp_fen":{self.inscp_scp_fen:d}}}')


class SettlementIndex:
    def __init__(self, client: Any) -> None:
        self._r = client

    @staticmethod
    def _tag(inst: str) -> str:
        return f"rtr:{{inst:{inst}}}"

    def _settlements(self, inst: str) -> str:
        return f"{self._tag(inst)}:setl"

    def _reversals(self, inst: str) -> str:
        return f"{self._tag(inst)}:rev"

    def _reversal_of(self, inst: str) -> str:
        return f"{self._tag(inst)}:revof"

    def _info(self, inst: str) -> str:
        return f"{self._tag(inst)}:info"

    def _visit(self, inst: str, mdtrt_id: str) -> str:
        return f"{self._tag(inst)}:mdtrt:{mdtrt_id}"

    def note_call(self, sid: str, entry: Entry, now_ms: int) -> tuple[list[str], list[Any]]:
        """The extra keys and arguments with which msgid_claim.lua notes a claimed 2207 itself, on one
        Redis (the index's keys are on another slot than the claim's: not on a cluster)."""
        inst = sid[:12]
        keys = [self._settlements(inst), self._info(inst)]
        if entry.mdtrt_id:
            keys.append(self._visit(inst, entry.mdtrt_id))
        return keys, [sid, now_ms, entry.json()]

    async def note_settlements(self, items: list[tuple[str, Entry]], now_ms: int) -> list[bool]:
        """2207s (settlement id, entry) whose msgid was just claimed, about to be sent: their entries,
        unless an earlier attempt of the same msgid left them. Per item, whether this call wrote its
        entry (False: an earlier attempt's is there; `settled` must replace it). On one Redis the claim
        script writes the same (`note_call`); this serves a Redis Cluster."""
        if not items:
            return []
        async with self._r.pipeline(transaction=False) as p:
            for sid, entry in items:
                inst = sid[:12]
                p.zadd(self._settlements(inst), {sid: now_ms}, nx=True)
                p.hsetnx(self._info(inst), sid, entry.json())
                if entry.mdtrt_id:
                    p.zadd(self._visit(inst, entry.mdtrt_id), {sid: now_ms}, nx=True)
            replies = iter(await p.execute())
        fresh = []
        for _, entry in items:
            wrote = bool(next(replies)) & bool(next(replies))
            if entry.mdtrt_id:
                wrote &= bool(next(replies))
            fresh.append(wrote)
        return fresh

    @staticmethod
    def dated_well(noted_ms: int, settled_ms: int) -> bool:
        """Whether an entry this attempt noted at `noted_ms` may keep that date for a settlement made at
        `settled_ms` (a reconciliation finds it either way: see the module doc)."""
        return abs(settled_ms - noted_ms) < MARGIN_MS // 2

    async def settled(self, inst: str, sid: str, entry: Entry, at_ms: int) -> None:
        """The registry settled it: the message that settled is the entry (an entry left by an
        attempt a registry refused is replaced), dated by the registry's settlement time."""
        await self.settled_many([(sid, entry, at_ms)])

    async def settled_many(self, items: list[tuple[str, Entry, int]]) -> None:
        """`settled` for the (settlement id, entry, settled-at) of a whole batch, in one round trip."""
        if not items:
            return
        async with self._r.pipeline(transaction=False) as p:
            for sid, entry, at_ms in items:
                inst = sid[:12]
                p.hset(self._info(inst), sid, entry.json())
                p.zadd(self._settlements(inst), {sid: at_ms})
                if entry.mdtrt_id:
                    p.zadd(self._visit(inst, entry.mdtrt_id), {sid: at_ms})
            await p.execute()

    async def note_reversal(self, inst: str, reversal_id: str, sid: str, at_ms: int) -> None:
        """A reversal about to be sent (at_ms: now), or answered (at_ms: its reversed-at time)."""
        async with self._r.pipeline(transaction=False) as p:
            p.zadd(self._reversals(inst), {f"{reversal_id}|{sid}": at_ms})
            p.hset(self._reversal_of(inst), reversal_id, sid)
            await p.execute()

    async def reversed_by(self, inst: str, reversal_id: str) -> str | None:
        """The settlement id that `reversal_id` (a 2208's, or a 2601's of a 2207) reverses, if noted."""
        sid = await self._r.hget(self._reversal_of(inst), reversal_id)
        return text(sid) if sid is not None else None

    async def reversed_by_many(self, inst: str, reversal_ids: list[str]) -> list[str | None]:
        """`reversed_by` of each of `reversal_ids`, in one round trip."""
        if not reversal_ids:
            return []
        return [text(sid) if sid is not None else None
                for sid in await self._r.hmget(self._reversal_of(inst), reversal_ids)]

    async def forget(self, freed: list[tuple[str, str]]) -> None:
        """Claims (id, fingerprint) that a registry refused by a rule and that no attempt holds any more:
        a refusal leaves nothing behind, so their entries go too. Ids are scoped, so an id's first 12
        characters are its institution (medaid.common.msgid)."""
        settlements = [(sid[:12], sid) for sid, fp in freed if fp.startswith("2207:")]
        # 2208:<psn>:<setl_id>, and a 2601 of a 2207 (2601:<psn>:2207:<setl_id>) that reverses it
        reversals = [(rid[:12], f"{rid}|{fp.rsplit(':', 1)[1]}") for rid, fp in freed
                     if fp.startswith("2208:") or (fp.startswith("2601:") and fp.split(":")[2] == "2207")]
        if not settlements and not reversals:
            return
        found = await self.entries_of(settlements)
        async with self._r.pipeline(transaction=False) as p:
            for (inst, sid), entry in zip(settlements, found, strict=True):
                p.zrem(self._settlements(inst), sid)
                p.hdel(self._info(inst), sid)
                if entry is not None and entry.mdtrt_id:
                    p.zrem(self._visit(inst, entry.mdtrt_id), sid)
            for inst, member in reversals:
                p.zrem(self._reversals(inst), member)
                p.hdel(self._reversal_of(inst), member.split("|", 1)[0])
            await p.execute()

    async def entries_of(self, items: list[tuple[str, str]]) -> list[Entry | None]:
        """Entries of (institution, settlement id) pairs, in one round trip."""
        if not items:
            return []
        async with self._r.pipeline(transaction=False) as p:
            for inst, sid in items:
                p.hget(self._info(inst), sid)
            raw = await p.execute()
        return [Entry(**json.loads(text(x))) if x is not None else None for x in raw]

    async def entries(self, inst: str, sids: list[str]) -> list[Entry | None]:
        if not sids:
            return []
        raw = await self._r.hmget(self._info(inst), sids)
        return [Entry(**json.loads(text(x))) if x is not None else None for x in raw]

    async def settlements_between(self, inst: str, begin_ms: int, end_ms: int) -> list[str]:
        """Settlement ids dated in [begin - MARGIN, end + MARGIN): a superset of those settled in [begin, end)."""
        raw = await self._r.zrangebyscore(self._settlements(inst), begin_ms - MARGIN_MS, f"({end_ms + MARGIN_MS}")
        return [text(x) for x in raw]

    async def reversals_between(self, inst: str, begin_ms: int, end_ms: int) -> list[tuple[str, str]]:
        """(reversal id, settlement id) dated in [begin - MARGIN, end + MARGIN)."""
        raw = await self._r.zrangebyscore(self._reversals(inst), begin_ms - MARGIN_MS, f"({end_ms + MARGIN_MS}")
        return [(a, b) for a, b in (text(x).split("|", 1) for x in raw)]

    async def visit(self, inst: str, mdtrt_id: str) -> list[str]:
        """The settlement ids of a visit, oldest first."""
        return [text(x) for x in await self._r.zrange(self._visit(inst, mdtrt_id), 0, -1)]
