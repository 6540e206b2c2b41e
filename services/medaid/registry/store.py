"""Reads of the registry's Redis state as domain values (people, helpers, records). No rules here."""

from __future__ import annotations

from typing import Any

from medaid.common.idnumber import parse
from medaid.common.v1 import common_pb2 as cpb
from medaid.common.values import decode_hash, text
from medaid.registry import rules
from medaid.registry.context import Context, enum_value
from medaid.registry.records import SettlementRecord
from medaid.registry.v1 import registry_pb2 as pb

PERSON_FIELDS = ["status", "itype", "tier", "region", "wallet_place", "moved_to"]


class Store:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.r = ctx.r
        self.k = ctx.k

    # --- people --------------------------------------------------------------------------

    def person_view(self, pid: str, fields: list[Any], bal: Any) -> rules.PersonView | None:
        """A PersonView from HMGET PERSON_FIELDS and the account balance (None: not enrolled)."""
        status, itype, tier, region, wallet_place, moved_to = (text(x) if x is not None else "" for x in fields)
        if not status:
            return None
        return rules.PersonView(
            id_number=pid, insurance_type=itype, flexible_tier=int(tier or 0), status=status, region=region,
            province=self.ctx.policy.province, moved_to=moved_to, balance=int(bal or 0),
            wallet_place=wallet_place,
        )

    def queue_person(self, pipe: Any, pid: str) -> None:
        pipe.hmget(self.k.person(pid), PERSON_FIELDS)
        pipe.hget(self.k.account(pid), "bal")

    async def person(self, pid: str) -> rules.PersonView | None:
        async with self.r.pipeline(transaction=False) as p:
            self.queue_person(p, pid)
            fields, bal = await p.execute()
        return self.person_view(pid, fields, bal)

    def queue_person_pb(self, pipe: Any, pid: str) -> None:
        """What `person_from` reads: the person hash, then the account's balance and payout."""
        pipe.hgetall(self.k.person(pid))
        pipe.hmget(self.k.account(pid), ["bal", "paid_out"])

    async def person_pb(self, pid: str) -> pb.Person:
        async with self.r.pipeline(transaction=False) as p:
            self.queue_person_pb(p, pid)
            raw, acct = await p.execute()
        return self.person_from(pid, raw, acct)

    def person_from(self, pid: str, raw: dict[bytes, bytes], acct: list[bytes | None]) -> pb.Person:
        """`raw` and `acct` as `queue_person_pb` read them."""
        if not raw:
            raise self.ctx.not_enrolled(pid)
        h = decode_hash(raw)
        bal, paid_out = acct
        facts = parse(pid)
        view = rules.PersonView(pid, h["itype"], int(h.get("tier", "0")), h["status"], h["region"],
                                self.ctx.policy.province)
        return pb.Person(
            id_number=pid,
            name=h.get("name", ""),
            insurance_type=enum_value(cpb.InsuranceType, "INSURANCE_TYPE_", h["itype"]),  # type: ignore[arg-type]
            flexible_tier=int(h.get("tier", "0")),
            status=enum_value(cpb.PersonStatus, "PERSON_STATUS_", h["status"]),  # type: ignore[arg-type]
            pooling_region=h["region"],
            province=self.ctx.policy.province,
            moved_to_province=h.get("moved_to", ""),
            has_personal_account=view.has_account,
            balance_fen=int(bal or 0),
            birth_date=facts.birth_date.strftime("%Y%m%d"),
            sex=facts.sex,
            heir_id_number=h.get("heir", ""),  # set by RecordDeath (lifecycle.py)
            heir_name=h.get("heir_name", ""),
            # Everything paid to the heir: at death, and whatever reached the account after (inherit.lua).
            paid_out_fen=int(paid_out or 0),
        )

    async def region(self, pid: str) -> str:
        """The 统筹区 a person is insured in ('' if not enrolled): what the entry of a place (a bind, an
        invitation, a creation) names before its request is claimed (`Context.write_announced`)."""
        return text(await self.r.hget(self.k.person(pid), "region") or b"")

    async def exists(self, pid: str) -> bool:
        return bool(await self.r.exists(self.k.person(pid)))

    # --- what the waterfall reads --------------------------------------------------------

    def queue_helper_rows(self, pipe: Any, pid: str) -> None:
        """The member's bound helpers in filing order, and whether any 亲情账户 links them."""
        pipe.zrange(self.k.helpers_of(pid), 0, -1, withscores=True)
        pipe.hlen(self.k.proxies_of_relative(pid))
        pipe.hlen(self.k.proxies_of_holder(pid))

    def queue_helpers(self, pipe: Any, rows: list[Any]) -> None:
        for raw_id, _ in rows:
            hid = text(raw_id)
            pipe.hmget(self.k.person(hid), ["status", "itype", "tier", "region"])
            pipe.hget(self.k.account(hid), "bal")

    @staticmethod
    def helper_rows(rows: list[Any]) -> list[rules.HelperCandidate]:
        """settle_read.lua's helper rows: id, filing seq, status, itype, tier, region, balance."""
        return [rules.HelperCandidate(text(hid), int(bal or 0), int(text(seq)),
                                      rules.helper_eligible(text(status or b""), text(itype or b""), int(tier or 0)),
                                      text(region or b""))
                for hid, seq, status, itype, tier, region, bal in rows]

    @staticmethod
    def helpers_from(rows: list[Any], replies: list[Any]) -> list[rules.HelperCandidate]:
        out = []
        for i, (raw_id, seq) in enumerate(rows):
            (status, itype, tier, region), bal = replies[2 * i], replies[2 * i + 1]
            eligible = rules.helper_eligible(text(status or b""), text(itype or b""), int(tier or 0))
            out.append(rules.HelperCandidate(text(raw_id), int(bal or 0), int(seq), eligible, text(region or b"")))
        return out

    async def helper_candidates(self, pid: str) -> tuple[list[rules.HelperCandidate], bool]:
        """(bound helpers with status and balance, whether a 亲情账户 links the person to anyone)."""
        async with self.r.pipeline(transaction=False) as p:
            self.queue_helper_rows(p, pid)
            rows, as_relative, as_holder = await p.execute()
        if not rows:
            return [], bool(as_relative or as_holder)
        async with self.r.pipeline(transaction=False) as p:
            self.queue_helpers(p, rows)
            replies = await p.execute()
        return self.helpers_from(rows, replies), bool(as_relative or as_holder)

    # --- settlement records --------------------------------------------------------------

    async def record(self, pid: str, sid: str) -> SettlementRecord | None:
        return SettlementRecord.parse(await self.r.hgetall(self.k.settlement(pid, sid)))

    async def patient_of(self, sid: str) -> str:
        """The patient whose slot holds settlement `sid` ('' when there is none)."""
        raw = await self.r.get(self.k.settlement_index(sid))
        return text(raw) if raw is not None else ""

    async def record_by_id(self, sid: str) -> SettlementRecord | None:
        pid = await self.patient_of(sid)
        return await self.record(pid, sid) if pid else None

    async def records_by_ids(self, sids: list[str]) -> list[SettlementRecord | None]:
        """Many `record_by_id` in two round trips (the index, then the records found)."""
        async with self.r.pipeline(transaction=False) as p:
            for sid in sids:
                p.get(self.k.settlement_index(sid))
            pids = [text(x) if x is not None else "" for x in await p.execute()]
        found = [(sid, pid) for sid, pid in zip(sids, pids, strict=True) if pid]
        if not found:
            return [None] * len(sids)
        async with self.r.pipeline(transaction=False) as p:
            for sid, pid in found:
                p.hgetall(self.k.settlement(pid, sid))
            by_id = {sid: SettlementRecord.parse(raw) for (sid, _), raw in zip(found, await p.execute(), strict=True)}
        return [by_id.get(sid) for sid in sids]
