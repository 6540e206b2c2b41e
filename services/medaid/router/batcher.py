"""Batch the router → registry hop: 2207 requests bound for one province that arrive while its
batch is on its way, or in the same turn of the event loop, travel as one SettleBatch call (see
common/batcher.py). Each item keeps its own idempotency key (msgid), result and refusal."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from medaid.common.batcher import Batcher, unpack_outcome
from medaid.common.errors import DomainError
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.router.index import Entry


class Pending(NamedTuple):
    """A 2207 waiting in a batch: the registry's request, what the index keeps of it, and the
    fingerprint its msgid is claimed with (each 2207's own, even when identical ones share a batch)."""

    request: rpb.SettleRequest
    entry: Entry
    fingerprint: str


# Sends one batch's items (built into one SettleBatchRequest there, once) and answers per item.
SendBatch = Callable[[list[Pending]], Awaitable[rpb.SettleBatchResponse]]


class SettleBatcher(Batcher[Pending, rpb.SettleResponse]):
    def __init__(self, send: SendBatch, **options: Any) -> None:
        async def send_items(items: list[Pending]) -> list[rpb.SettleResponse | DomainError]:
            resp = await send(items)
            return [unpack_outcome(o) for o in resp.outcomes]

        super().__init__(send_items, **{"name": "settle", **options})

    async def settle(self, pending: Pending) -> rpb.SettleResponse:
        return await self.submit(pending)
