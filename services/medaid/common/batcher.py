"""Coalesce calls bound for one downstream into batch calls (TigerBeetle-style).

Items that arrive while a batch is on its way, or in the same turn of the event loop, leave
together in one call; the batch size follows the load by itself. Each item keeps its own result or
refusal; a batch that fails as a whole (downstream down) fails each of its items with the same exception,
and since every batched operation is idempotent by its own id, retrying any of them is safe."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from grpc import StatusCode

from medaid.common import metrics, rpc
from medaid.common.errors import DomainError, status_code

Item = TypeVar("Item")
Result = TypeVar("Result")

# Sends one batch; answers each item in order, with its result or the DomainError that refused it.
SendBatch = Callable[[list[Item]], Awaitable[Sequence[Result | DomainError]]]


def unpack_outcome(outcome: Any, field: str = "response") -> Any:
    """A batch RPC's per-item outcome (`oneof {<field>; ItemError error}`) as the result or the
    DomainError the single call would have raised. An outcome that holds neither, or an error without
    a code, is no answer the single call could give: DOWNSTREAM_ERROR (UNKNOWN: the downstream may
    have done it, and answers the same id again as it did), never a DomainError with code OK, which
    no caller can be answered with."""
    if outcome.HasField(field):
        return getattr(outcome, field)
    e = outcome.error
    if not outcome.HasField("error") or e.code == 0:
        return DomainError(StatusCode.UNKNOWN, "DOWNSTREAM_ERROR", "the batch answered this item with neither a "
                           "result nor an error: it may have been done; retry with the same id")
    return DomainError(status_code(e.code), e.reason, e.message, dict(e.metadata))


class Batcher(Generic[Item, Result]):
    def __init__(self, send: SendBatch[Item, Result], *, max_batch: int = 256, max_inflight: int = 1,
                 max_delay_s: float = 0.0, name: str = "batch") -> None:
        self._send = send
        self._name = name  # the `batcher` label of medaid_batch_items
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self._max_delay_s = max_delay_s
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    async def submit(self, item: Item) -> Result:
        """Queue one item and wait for its answer. While `max_inflight` batches are on their way,
        arrivals wait and leave together when one returns; otherwise what arrives in the same turn
        of the event loop (or within `max_delay_s`, when one is given) leaves together. A batch that
        reaches `max_batch` leaves at once, even past `max_inflight` (a full batch gains nothing by
        waiting). Waiting for company on a timer when nothing is in flight costs every lone item the
        delay and the process a wake-up; under load the batches are made by `max_inflight`."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Result] = loop.create_future()
        self._pending.append((item, fut))
        if len(self._pending) >= self._max_batch:
            self._flush()
        elif self._timer is None and len(self._inflight) < self._max_inflight:
            self._timer = (loop.call_later(self._max_delay_s, self._flush) if self._max_delay_s > 0
                           else loop.call_soon(self._flush))
        return await fut

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch:]
        # An item whose caller stopped waiting (cancelled, timed out) before its batch left is not sent.
        batch = [(item, fut) for item, fut in batch if not fut.done()]
        if batch:
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._inflight.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if self._pending and self._timer is None and len(self._inflight) < self._max_inflight:
            self._flush()

    async def _run(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        metrics.batch(self._name, len(batch))
        try:
            # A batch is every waiter's: the deadline of the call that happened to start its task (whose
            # context the task copied) bounds none of its steps; each waiter waits only as long as it may.
            with rpc.budget(None):
                results = await self._send([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} was answered with {len(results)} outcomes")
        except BaseException as exc:  # noqa: BLE001 - every waiter learns what happened to its batch
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (_, fut), result in zip(batch, results, strict=True):
            if fut.done():
                continue
            if isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_result(result)
