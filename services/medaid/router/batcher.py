"""Batch the router → registry hop (TigerBeetle-style): 2207 requests bound for one province that
arrive within a sub-millisecond window (or until the batch is full) travel as one SettleBatch call.
Each item keeps its own idempotency key (msgid), result and refusal; a batch that fails as a whole
(registry down) fails each of its items with the same status, and retrying any of them is safe."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from medaid.common.errors import DomainError, status_code
from medaid.registry.v1 import registry_pb2 as rpb

SendBatch = Callable[[rpb.SettleBatchRequest], Awaitable[rpb.SettleBatchResponse]]


class SettleBatcher:
    def __init__(self, send: SendBatch, *, max_batch: int = 256, max_inflight: int = 1,
                 max_delay_s: float = 0.0003) -> None:
        self._send = send
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self._max_delay_s = max_delay_s
        self._pending: list[tuple[rpb.SettleRequest, asyncio.Future[rpb.SettleResponse]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    async def settle(self, request: rpb.SettleRequest) -> rpb.SettleResponse:
        """Queue one settlement. The batch size follows the load by itself: while `max_inflight`
        batches are on their way, arrivals wait and leave together when one returns; otherwise a
        sub-millisecond timer gathers what arrives in the same instant."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[rpb.SettleResponse] = loop.create_future()
        self._pending.append((request, fut))
        if len(self._pending) >= self._max_batch:
            self._flush()
        elif self._timer is None and len(self._inflight) < self._max_inflight:
            self._timer = loop.call_later(self._max_delay_s, self._flush)
        return await fut

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch:]
        if batch:
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._inflight.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if self._pending and self._timer is None and len(self._inflight) < self._max_inflight:
            self._flush()

    async def _run(self, batch: list[tuple[rpb.SettleRequest, asyncio.Future[rpb.SettleResponse]]]) -> None:
        try:
            resp = await self._send(rpb.SettleBatchRequest(requests=[r for r, _ in batch]))
        except BaseException as exc:  # noqa: BLE001 - every waiter learns what happened to its batch
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (_, fut), outcome in zip(batch, resp.outcomes, strict=True):
            if fut.done():
                continue
            if outcome.HasField("response"):
                fut.set_result(outcome.response)
            else:
                e = outcome.error
                fut.set_exception(DomainError(status_code(e.code), e.reason, e.message, dict(e.metadata)))
