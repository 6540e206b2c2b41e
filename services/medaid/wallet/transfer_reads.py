"""The transfer records as the wallet answers them: GetTransfer, ListIncomingTransfers and
ListOutgoingTransfers, and the record read and shown (`Transfer`) that every transfer layer uses."""

from __future__ import annotations

import json
from typing import cast

from medaid.common import errors, page_tokens
from medaid.common.idempotency import validate_request_id
from medaid.common.v1 import common_pb2 as cpb
from medaid.common.values import decode_hash as _decode
from medaid.common.values import text as _s
from medaid.registry import validate
from medaid.wallet.core import STATE_ENUM
from medaid.wallet.lots import Lots
from medaid.wallet.v1 import wallet_pb2 as pb

TRANSFERS_PAGE = 20  # ListIncomingTransfers, ListOutgoingTransfers: a page when not asked, and at most
MAX_LISTED = 100


class TransferReads(Lots):
    """A transfer's record, read and answered."""

    def _transfer_pb(self, rec: dict[str, str]) -> pb.Transfer:
        return pb.Transfer(
            transfer_id=rec["tid"], sender_id_number=rec["sender"], sender_province=rec["sender_province"],
            recipient_id_number=rec["recipient"], recipient_province=rec["recipient_province"],
            relation=cpb.Relation.Value("RELATION_" + rec["relation"]), amount_fen=int(rec["amount"]),
            state=STATE_ENUM[rec["state"]], created_at_unix_ms=int(rec["created_at"]),
            expires_at_unix_ms=int(rec.get("expires_at", "0")), finished_at_unix_ms=int(rec.get("finished_at", "0")),
            failure_reason=rec.get("failure_reason", ""),
            source=pb.TRANSFER_SOURCE_WALLET if rec.get("source") == "WALLET" else pb.TRANSFER_SOURCE_PERSONAL_ACCOUNT,
            parts=[pb.TransferPart(origin_id_number=p["sender"], origin_province=p["sprov"],
                                   amount_fen=int(p["amount"])) for p in json.loads(rec.get("parts") or "[]")],
        )

    async def _transfer_record(self, recipient: str, tid: str) -> dict[str, str]:
        return _decode(await self.r.hgetall(self.k.transfer(recipient, tid)))

    async def list_incoming(self, req: pb.ListIncomingTransfersRequest) -> pb.ListIncomingTransfersResponse:
        """The transfers to a recipient, newest first, a page at a time: the front desk accepts the
        pending ones for a person who cannot use the App."""
        recipient = validate.id_number(req.recipient_id_number, "recipient_id_number")
        tids, token = await self._page(self.k.incoming(recipient), "ListIncomingTransfers", recipient, req)
        return pb.ListIncomingTransfersResponse(transfers=await self._records([(tid, recipient) for tid in tids]),
                                                next_page_token=token)

    async def list_outgoing(self, req: pb.ListOutgoingTransfersRequest) -> pb.ListOutgoingTransfersResponse:
        """The transfers a sender started, newest first, a page at a time, in whatever state they
        reached. One whose record is not written yet (its creation is under way) is left out until it
        is: a page may then list fewer than its size, and the next begins after it all the same."""
        sender = validate.id_number(req.sender_id_number, "sender_id_number")
        tids, token = await self._page(self.k.sent(sender), "ListOutgoingTransfers", sender, req)
        async with self.r.pipeline(transaction=False) as p:
            for tid in tids:
                p.get(self.k.transfer_recipient(tid))
            recipients = await p.execute() if tids else []
        return pb.ListOutgoingTransfersResponse(transfers=await self._records(
            [(tid, _s(to)) for tid, to in zip(tids, recipients, strict=True) if to]), next_page_token=token)

    async def _page(self, key: str, listing: str, person: str,
                    req: pb.ListIncomingTransfersRequest | pb.ListOutgoingTransfersRequest) -> tuple[list[str], str]:
        """A page of a person's listing (a zset of transfer ids scored by creation time, only ever added
        to) and the next page's token. The order is newest first, transfers of one millisecond by id,
        the larger first (the zset's own order, reversed); a token is the (time, id) of the last one a
        page listed, and the next page lists those strictly after it in that order."""
        size = page_tokens.page_size(req.page_size, req.limit, TRANSFERS_PAGE, MAX_LISTED)
        asked = page_tokens.question(listing, person)
        rows: list[tuple[int, str]]
        if req.page_token:
            at, last = page_tokens.unseal(req.page_token, asked, 2, "wallet")[:2]
            if not page_tokens.is_count(at) or not last:
                raise page_tokens.not_ours("wallet")
            async with self.r.pipeline(transaction=False) as p:
                p.zrange(key, int(at), int(at), byscore=True)
                p.zrange(key, f"({at}", "-inf", desc=True, byscore=True, offset=0, num=size + 1, withscores=True)
                same_ms, older = await p.execute()
            rows = sorted(((int(at), tid) for tid in map(_s, same_ms) if tid < last), reverse=True)
            rows += [(int(score), _s(tid)) for tid, score in older]
        else:
            newest = cast(list[tuple[bytes, float]], await self.r.zrange(key, 0, size, desc=True, withscores=True))
            rows = [(int(score), _s(tid)) for tid, score in newest]
        page = rows[:size]
        token = page_tokens.seal(asked, [str(page[-1][0]), page[-1][1]]) if len(rows) > size else ""
        return [tid for _, tid in page], token

    async def _records(self, found: list[tuple[str, str]]) -> list[pb.Transfer]:
        """The transfer records of (transfer id, recipient) pairs, in that order, in one round trip."""
        if not found:
            return []
        async with self.r.pipeline(transaction=False) as p:
            for tid, recipient in found:
                p.hgetall(self.k.transfer(recipient, tid))
            raws = await p.execute()
        return [self._transfer_pb(rec) for raw in raws if (rec := _decode(raw))]

    async def get_transfer(self, req: pb.GetTransferRequest) -> pb.GetTransferResponse:
        validate_request_id(req.transfer_id)
        recipient = await self.r.get(self.k.transfer_recipient(req.transfer_id))
        rec = await self._transfer_record(_s(recipient), req.transfer_id) if recipient is not None else {}
        if not rec:
            raise errors.not_found("TRANSFER_NOT_FOUND", f"no transfer {req.transfer_id}")
        return pb.GetTransferResponse(transfer=self._transfer_pb(rec))
