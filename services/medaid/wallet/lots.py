"""Quota lots going home: a lot whose relationship ended goes back to the sender's account (SPEC §5b)."""

from __future__ import annotations

import json
from typing import Any

import grpc

from medaid.common.values import text as _s
from medaid.registry.client import downstream
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.wallet import rules
from medaid.wallet.wallets import Wallets


class Lots(Wallets):
    """Quota lots whose relationship ended, on their way back to the funding account."""

    async def _relationship_live(self, sender: str, holder: str) -> bool:
        for raw in (await self.r.hgetall(self.k.inflight_meta())).values():
            meta = json.loads(_s(raw))
            if meta["sender"] == sender and meta["recipient"] == holder:
                return True
        for lot in await self._lots(holder, with_quota_only=False):
            via = lot.get("via", "")
            if not lot.get("ended") and (via == sender or (not via and lot["sender"] == sender)):
                return True
        return False

    async def _sent_by(self, who: str, tid: str, meta: dict[str, str], province: str = "",
                       event_at: int = 0) -> bool:
        """Whether a transfer in flight is one `who` sent (from `province`, when given) in a
        relationship begun by `event_at` (when given; `rules.began_by`): created by then, or, passed on
        from their wallet, carrying quota they held by then (a part's `held`, lots_release.lua's
        `vbegan`): quota held at the event would have gone home at the event."""
        if meta["sender"] != who or province not in ("", meta["sender_province"]):
            return False
        if rules.began_by(int(meta["created_at"]), event_at):
            return True
        return any(rules.began_by(int(p.get("held") or 0), event_at) for p in await self._onward_parts(tid, meta))

    async def _passes_on_quota_of(self, who: str, tid: str, meta: dict[str, str], province: str = "",
                                  event_at: int = 0) -> bool:
        """Whether an onward transfer in flight carries quota `who` funded (from `province`, when
        given; by `event_at`, when given: `rules.began_by` of the part's `funded`, 0 when the part
        does not say), or that `who` passed on before (a part's `chain`: in `province`, when given, and
        by `event_at` as they got it, lots_release.lua's `passed_earlier`): when `who`'s relationships
        end it goes back too (into the passing wallet's lot, which the release then sends home)."""
        return any(origin == who and rules.origin_ended(oprov, began, province, event_at)
                   for origin, oprov, began in rules.onward_origins(await self._onward_parts(tid, meta)))

    async def _onward_parts(self, tid: str, meta: dict[str, str]) -> list[dict[str, Any]]:
        """The parts of an onward transfer in flight, once debited (none before, nor for a transfer
        from a personal account): as recorded on the transfer, or, debited but not recorded there
        yet, as the debit took them (wallet_xfer_out.lua, in the same script as the quota), so an
        ending that looks meanwhile finds the quota it carries and sends it back before it releases
        the lots it came from (its count then has it, as the lots' return)."""
        if meta.get("source") != "WALLET":
            return []
        parts = await self.r.hget(self.k.transfer(meta["recipient"], tid), "parts")
        debit = await self.r.hget(self.k.onward_debits(meta["sender"]), tid) if parts is None else None
        taken: list[dict[str, Any]] = json.loads(_s(parts)) if parts is not None \
            else json.loads(_s(debit)).get("parts") or [] if debit is not None else []
        return taken

    async def _drive_return(self, relid: str, holder: str) -> int:
        raw = await self.r.hget(self.k.returns(holder), relid)
        if raw is None:
            await self._forget_return(relid)
            return 0
        rec = json.loads(_s(raw))
        if rec["state"] == "RETURNING":
            # One credit per funding employee (leg); each keyed by its own return id, so re-driving
            # the record after a crash credits every leg once.
            legs = rec.get("legs") or [{"sender": rec["sender"], "sprov": rec["sprov"], "amount": rec["amount"],
                                        "tid": rec["tid"]}]
            for n, leg in enumerate(legs):
                try:
                    await self.registries.stub(leg["sprov"]).CreditLotReturn(rpb.CreditLotReturnRequest(
                        return_id=relid if n == 0 else f"{relid}.{n}", sender_id_number=leg["sender"],
                        amount_fen=int(leg["amount"]), transfer_id=leg["tid"]),
                        timeout=self.registries.timeout())
                except grpc.aio.AioRpcError as exc:
                    raise downstream(exc, leg["sprov"]) from None
            await self.lua["ret_done"](keys=[self.k.returns(holder)], args=[relid])
        await self._forget_return(relid)
        return int(rec["amount"])

    async def _forget_return(self, relid: str) -> None:
        async with self.r.pipeline(transaction=True) as p:
            p.zrem(self.k.returns_inflight(), relid)
            p.hdel(self.k.returns_meta(), relid)
            await p.execute()
