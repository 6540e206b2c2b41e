"""Batch the router → registry hop: 2207 requests bound for one province that arrive while its
batch is on its way, or in the same turn of the event loop, travel as one SettleBatch call (see
common/batcher.py). Each item keeps its own idempotency key (msgid), result and refusal."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from medaid.common.batcher import Batcher
from medaid.common.errors import DomainError
from medaid.registry.v1 import registry_pb2 as rpb
from medaid.router.index import Entry


class Pending(NamedTuple):
    """A 2207 waiting in a batch: the registry's request, what the index keeps of it, and the
    fingerprint its msgid is claimed with (each 2207's own, even when identical ones share a batch)."""

    request: rpb.SettleRequest
    entry: Entry
    fingerprint: str


# A 2207's answer in a batch: the registry's, or the DomainError that refused it alone.
SettleOutcome = rpb.SettleResponse | DomainError
# Sends one batch's items (built into one SettleBatchRequest there, once) and answers per item, in order.
SendBatch = Callable[[list[Pending]], Awaitable[list[SettleOutcome]]]


class SettleBatcher(Batcher[Pending, rpb.SettleResponse]):
    def __init__(self, send: SendBatch, **options: Any) -> None:
        super().__init__(send, **{"name": "settle", **options})

    async def settle(self, pending: Pending) -> rpb.SettleResponse:
        return await self.submit(pending)
