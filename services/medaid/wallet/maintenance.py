"""Monthly clearing between provinces, and maintenance: the expiry sweeper and the recovery loop."""

from __future__ import annotations

import asyncio
import json
import logging

from medaid.common import tracing
from medaid.common.errors import DomainError
from medaid.common.lock import Lease
from medaid.common.logs import event
from medaid.common.redis_client import barrier
from medaid.common.values import text as _s
from medaid.registry import validate
from medaid.wallet import rules
from medaid.wallet.core import MAINTENANCE_LEASE_MS, TERMINAL
from medaid.wallet.endings import Endings
from medaid.wallet.v1 import wallet_pb2 as pb

log = logging.getLogger("medaid.wallet")


class Maintenance(Endings):
    """Clearing reports and the fenced maintenance pass (expiry sweeper, recovery loop)."""

    async def clearing_report(self, req: pb.GetClearingReportRequest) -> pb.GetClearingReportResponse:
        validate.calendar_month(req.month, "month", "INVALID_MONTH")
        amounts: dict[str, int] = {}
        counts: dict[str, int] = {}
        for raw in await self.r.smembers(self.k.wallets_index()):
            for field, value in (await self.r.hgetall(self.k.clearing(_s(raw), req.month))).items():
                name, n = _s(field), int(value)
                if name.endswith("#n"):
                    counts[name[:-2]] = counts.get(name[:-2], 0) + n
                else:
                    amounts[name] = amounts.get(name, 0) + n
        lines = []
        for line in sorted(amounts):
            if amounts[line] == 0 and counts.get(line, 0) == 0:
                continue
            src, dst = line.split(">")
            lines.append(pb.ClearingLine(sending_province=src, spending_province=dst, amount_fen=amounts[line],
                                         spend_count=counts.get(line, 0), same_province=src == dst))
        return pb.GetClearingReportResponse(month=req.month, lines=lines, total_fen=sum(x.amount_fen for x in lines))

    async def in_flight(self) -> tuple[int, int, int]:
        """(transfers, fen, fen past its accept deadline) not yet COMPLETED, RETURNED or FAILED, read
        whole from the in-flight index (one entry per such transfer): for the metrics, once per
        maintenance pass. A transfer past its deadline is sent back by the next pass: money that stays
        overdue is stuck."""
        now = self.clock.now_ms()
        total = overdue = 0
        metas = [json.loads(_s(m)) for m in await self.r.hvals(self.k.inflight_meta())]
        for meta in metas:
            amount = int(meta.get("amount", 0))
            total += amount
            if "created_at" in meta and rules.accept_deadline(self.policy, int(meta["created_at"])) <= now:
                overdue += amount
        return len(metas), total, overdue

    async def maintain(self) -> pb.RunMaintenanceResponse:
        """One pass, singleton across replicas (fenced lock): expire and re-drive transfers."""
        # A short lease, extended as the pass goes: a replica killed mid-pass stalls the others only briefly.
        lease = await self.locks.try_acquire(self.k.maintenance_tag(), ttl_ms=MAINTENANCE_LEASE_MS)
        if lease is None:
            return pb.RunMaintenanceResponse(ran=False)
        counts = {"expired": 0, "recovered": 0, "deferred": 0}
        # The pass runs as a task while this one keeps the lease alive (a downstream call may outlast
        # the lease); if the lease cannot be confirmed, the pass is cancelled at once, so two replicas
        # never run a pass at the same time. Cancelling between two saga steps is like a crash there,
        # which recovery is built for.
        work = asyncio.ensure_future(self._maintenance_pass(lease, counts))
        try:
            while True:
                done, _ = await asyncio.wait({work}, timeout=MAINTENANCE_LEASE_MS / 3 / 1000)
                if done:
                    work.result()
                    break
                if not await self.locks.extend(lease, MAINTENANCE_LEASE_MS):
                    log.warning("maintenance lease lost; pass cancelled", extra={"fields": counts})
                    break
        finally:
            if not work.done():
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
            await self.locks.release(lease)
        return pb.RunMaintenanceResponse(expired=counts["expired"], recovered=counts["recovered"],
                                         deferred=counts["deferred"], ran=True)

    async def _maintenance_pass(self, lease: Lease, counts: dict[str, int]) -> None:
        if not await self.r.exists(self.k.transfers_indexed()):
            await self.index_transfers(lease)
        cutoff = self.clock.now_ms() - self.recovery_grace_ms
        for raw in await self.r.zrangebyscore(self.k.inflight(), "-inf", cutoff):
            if not await self.locks.extend(lease, MAINTENANCE_LEASE_MS):
                return  # another replica took over
            tid = _s(raw)
            meta_raw = await self.r.hget(self.k.inflight_meta(), tid)
            if meta_raw is None:
                await self.r.zrem(self.k.inflight(), tid)
                continue
            meta = json.loads(_s(meta_raw))
            try:
                # The transfer's lines and its calls to the registries under its id (tracing.acting_for).
                with tracing.acting_for(tid):
                    before = await self._transfer_record(meta["recipient"], tid)
                    if not before:
                        await self._abandon_uncreated(tid, meta)
                        counts["recovered"] += 1
                        continue
                    after = await self._drive(tid, meta["recipient"], before)
            except DomainError as exc:
                log.warning("recovery deferred", extra={"fields": {"transfer": tid, "reason": exc.reason}})
                counts["deferred"] += 1
                continue
            if before["state"] == "PENDING_ACCEPT" and after["state"] != "PENDING_ACCEPT":
                counts["expired"] += 1
            elif before["state"] != after["state"] or before["state"] in TERMINAL:
                counts["recovered"] += 1
        for raw in await self.r.zrangebyscore(self.k.returns_inflight(), "-inf", cutoff):
            relid = _s(raw)
            meta_raw = await self.r.hget(self.k.returns_meta(), relid)
            if meta_raw is None:
                await self.r.zrem(self.k.returns_inflight(), relid)
                continue
            try:
                await self.finish_return(relid, json.loads(_s(meta_raw)))
                counts["recovered"] += 1
            except DomainError as exc:
                log.warning("return deferred", extra={"fields": {"return": relid, "reason": exc.reason}})
                counts["deferred"] += 1
        # Use-place notes a registry did not take (or a request stopped before sending).
        _, deferred = await self.deliver_notes(cutoff, lambda: self.locks.extend(lease, MAINTENANCE_LEASE_MS))
        counts["deferred"] += deferred

    async def index_transfers(self, lease: Lease, chunk: int = 500) -> int:
        """Put every transfer record in its recipient's and its sender's listing
        (ListIncomingTransfers, ListOutgoingTransfers), by creation time, then mark the store indexed.

        A store written before the listings existed has transfers in neither; new ones are indexed
        as they are created. Idempotent (the same member, the same score), so a pass cut short is
        simply done again by the next. Returns how many records it saw."""
        seen = 0
        keys: list[bytes] = []

        async def index(batch: list[bytes]) -> bool:
            async with self.r.pipeline(transaction=False) as p:
                for key in batch:
                    p.hmget(key, ["tid", "sender", "recipient", "created_at"])
                rows = await p.execute()
            async with self.r.pipeline(transaction=False) as p:
                for tid, sender, recipient, created in rows:
                    if tid is None or sender is None or recipient is None or created is None:
                        continue  # not a transfer record
                    p.zadd(self.k.incoming(_s(recipient)), {_s(tid): int(created)})
                    p.zadd(self.k.sent(_s(sender)), {_s(tid): int(created)})
                await p.execute()
            return await self.locks.extend(lease, MAINTENANCE_LEASE_MS)

        async for key in self.r.scan_iter(match=self.k.transfer_pattern(), count=chunk):
            keys.append(key)
            if len(keys) >= chunk:
                seen += len(keys)
                if not await index(keys):
                    return seen  # another replica took over: it starts again
                keys = []
        if keys:
            seen += len(keys)
            if not await index(keys):
                return seen
        await self.r.set(self.k.transfers_indexed(), str(self.clock.now_ms()))
        event(log, "transfers indexed", records=seen)
        return seen

    async def _abandon_uncreated(self, tid: str, meta: dict[str, str]) -> None:
        """The creator reserved the limits but recorded nothing within the grace: it died, or it is
        stalled (a paused process, a long GC) and may still wake up. Nothing was debited (the debit
        only follows the record), so the transfer is recorded FAILED, atomically unless the record
        exists by now; a creator that wakes up finds FAILED and stops. Then the reservation goes
        back. Dropping the index entry without a record (as before) let a woken creator record and
        debit a transfer that no sweeper tracked: never returned at 06:00, outside the limits."""
        recipient = meta["recipient"]
        fields = [x for kv in meta.items() for x in kv]
        async with self.r.pipeline(transaction=False) as p:
            p.set(self.k.transfer_recipient(tid), recipient)
            await barrier(p)  # the index before the record, as when a transfer is created
            await self.lua["xfer_abandon"](keys=[self.k.transfer(recipient, tid), self.k.incoming(recipient)],
                                           args=[self.clock.now_ms(), *fields], client=p)
            *_, found = await p.execute()
        if _s(found) == "ABANDONED":
            event(log, "transfer abandoned", transfer=tid, sender=meta["sender"], recipient=recipient)
        await self._drive(tid, recipient)
