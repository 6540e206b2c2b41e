"""A person's consumption records (共济消费记录), listed a page at a time.

Where they are: a person's records are a hash on their slot (`Keys.consumption`), and their names a
list in the order they were written (`Keys.consumption_index`, only ever appended to). In a pooled
province (SPEC §3b) a contributor's money pays other members' bills through the family account: each
such bill is on the member's record, which names the contributor charged and the amount (and follows a
reversal or its undo); those records are the contributor's too (role HELPER), from every family account
they have given to, left or dissolved ones included.

The order: newest first by `at_unix_ms`; records of the same millisecond by settlement id, the larger
first (a 2207 msgid ends with its time and sequence); records of one settlement (a member's, one per
helper charged) by their place in the index, the last written first; then by a digest of what names
them. Nothing written later changes a record's place. A page token is that order key of the last
record a page listed, so the next page begins strictly after it whatever was written in between: a
record written later and older than that is on a later page, a newer one on none, and no record is
skipped or listed twice. The token also carries a digest of the question (province, person, period):
one given for another is refused, not answered wrongly; and a check digest, so that one cut short or
edited is refused too. It holds no id number, so it may be logged.

Each page reads every index entry of the person (the index is in the order records were written,
which a settlement finished late by the recovery loop does not keep by time), a chunk at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

from medaid.common import errors, page_tokens
from medaid.common.page_tokens import digest, is_count, is_hex
from medaid.common.values import text
from medaid.registry import validate
from medaid.registry.context import Context
from medaid.registry.records import consumption_pb
from medaid.registry.v1 import registry_pb2 as pb

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
_CHUNK = 1000  # index entries read at a time

Window = tuple[int, int]  # (since, until) in ms; until 0: no bound
OrderKey = tuple[int, str, int, str]  # (at, settlement id, place in its index, digest): larger first


def order_key(rec: pb.ConsumptionRecord, place: int) -> OrderKey:
    return (rec.at_unix_ms, rec.settlement_id, place,
            digest(rec.helper_id_number, rec.member_id_number, rec.role, size=16))


def question(province: str, pid: str, window: Window) -> str:
    """What a token is for: the province's registry, the person and the period."""
    return page_tokens.question(province, pid, str(window[0]), str(window[1]))


@dataclass(frozen=True)
class PageToken:
    after: OrderKey  # the order key of the last record listed
    asked: str  # `question` of the listing

    def encode(self) -> str:
        at, sid, place, tie = self.after
        return page_tokens.seal(self.asked, [str(at), str(place), tie, sid])

    @classmethod
    def decode(cls, token: str, asked: str) -> PageToken:
        """The token of the listing `asked`, else INVALID_PAGE_TOKEN."""
        at, place, tie, sid = page_tokens.unseal(token, asked, 4, "registry")
        if not is_count(at) or not is_count(place) or not is_hex(tie, 16) or not sid:
            raise page_tokens.not_ours("registry")
        return cls((int(at), sid, int(place), tie), asked)


def page_size(req: pb.ListConsumptionRecordsRequest) -> int:
    """page_size, or `limit` (its older name), or the default; INVALID_LIMIT out of 1..MAX_PAGE_SIZE."""
    return page_tokens.page_size(req.page_size, req.limit, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


class ConsumptionRecords:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.k = ctx.k

    async def list_page(self, req: pb.ListConsumptionRecordsRequest) -> pb.ListConsumptionRecordsResponse:
        pid = validate.id_number(req.id_number, "id_number")
        size = page_size(req)
        window = (req.since_unix_ms, req.until_unix_ms)
        if min(window) < 0 or (window[1] and window[0] >= window[1]):
            raise errors.invalid("INVALID_TIME_RANGE", "since_unix_ms must be before until_unix_ms, both ≥ 0",
                                 field="until_unix_ms")
        asked = question(self.ctx.policy.province, pid, window)
        after = PageToken.decode(req.page_token, asked).after if req.page_token else None
        keyed = await self._records_of(pid, window)
        if self.ctx.policy.pooled:
            keyed += await self._paid_from_family(pid, window)
        keyed = sorted((x for x in keyed if after is None or x[0] < after), key=lambda x: x[0], reverse=True)
        page = keyed[:size]
        return pb.ListConsumptionRecordsResponse(
            records=[rec for _, rec in page],
            next_page_token=PageToken(page[-1][0], asked).encode() if len(keyed) > size else "")

    async def _records_of(self, pid: str, window: Window) -> list[tuple[OrderKey, pb.ConsumptionRecord]]:
        """Every record of the person's own in the window, with its order key."""
        since, until = window
        found: list[tuple[OrderKey, pb.ConsumptionRecord]] = []
        seen: set[str] = set()
        start = 0
        while names := await self.ctx.r.lrange(self.k.consumption_index(pid), start, start + _CHUNK - 1):
            raws = await self.ctx.r.hmget(self.k.consumption(pid), names)
            for place, (name, raw) in enumerate(zip(names, raws, strict=True), start):
                if raw is None or text(name) in seen:  # a name indexed twice keeps its first place
                    continue
                seen.add(text(name))
                rec = consumption_pb(raw)
                if since <= rec.at_unix_ms and (not until or rec.at_unix_ms < until):
                    found.append((order_key(rec, place), rec))
            start += len(names)
        return found

    async def _paid_from_family(self, pid: str, window: Window) -> list[tuple[OrderKey, pb.ConsumptionRecord]]:
        """The bills the contributor's share of a family account paid: the members' records naming them
        (see the module doc), as theirs (role HELPER)."""
        fids = sorted(text(f) for f in await self.ctx.r.smembers(self.k.families_given_to(pid)))
        members: set[str] = set()
        for fid in fids:
            members.update(text(m) for m in await self.ctx.r.hkeys(self.k.family_members(fid)))
        members.discard(pid)  # a bill of their own is on their own list already
        found: list[tuple[OrderKey, pb.ConsumptionRecord]] = []
        for member in sorted(members):
            for key, rec in await self._records_of(member, window):
                if rec.role == "MEMBER" and rec.helper_id_number == pid:
                    rec.role = "HELPER"
                    found.append((order_key(rec, key[2]), rec))
        return found
