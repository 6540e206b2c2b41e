"""W3C trace context across the four hops (gateway → router → registry → wallet), and the ids that
every log line carries.

Each request a process handles runs with one `Call` in a context variable: the trace id, this hop's
span id, the sampled flag, and the request id (msgid, request_id, transfer_id) when the request has
one. The edge starts the trace when the caller sent no `traceparent` (the gateway for an HTTP call;
any gRPC service called directly, e.g. the router by a hospital system); every later hop continues
it. Outgoing gRPC calls carry `traceparent: 00-<trace id>-<this hop's span id>-<flags>` in their
metadata (`TracedChannel`: every channel of `medaid.common.rpc` is one), and the JSON log formatter
(`medaid.common.logs`) adds `trace_id` and `request_id` to every line written while the call runs.

A batch call (the router's SettleBatch, the wallet's person and debit look-ups) travels in the
context of the item that opened the batch; each settlement item also carries its own `traceparent`
inside the request (`SettleRequest.traceparent`), so the registry logs and calls the wallet under
the trace of the 2207 it belongs to.

Each outgoing call also carries `medaid-origin-id`: the request id of the request it is made for, at the
edge of the chain (a 2207's msgid, a transfer's id): the caller's own origin when it has one, else its
request id. A line written while a call runs carries it as `origin_id` when the call's own request id
is another (the wallet's spend for a 2207 is `setl-<digest>`; its `origin_id` is the msgid), so one
grep of a msgid finds every line of every service for it. A batch item, and a background pass acting
for an entry (`acting_for`), is its own origin: the request it names.

The sampled flag is decided at the edge (`sample_ratio`) and only matters to the optional OTLP export
(`medaid.common.otel`); ids travel and are logged whatever it says."""

from __future__ import annotations

import contextlib
import random
import re
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any

import grpc

HEADER = "traceparent"
ORIGIN_HEADER = "medaid-origin-id"
_ORIGIN_MAX = 128  # a longer id is not passed on (gRPC metadata is no place for a client's essay)
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16

# The share of new traces started with the sampled flag (set once at start-up from --trace-sample-ratio).
_sample_ratio = 0.0


def set_sample_ratio(ratio: float) -> None:
    global _sample_ratio
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"trace sample ratio must be within 0..1, got {ratio}")
    _sample_ratio = ratio


@dataclass(slots=True)
class Call:
    """What one request handled by this process is known by; mutable so that a handler can name
    its request id once it has read it (and a batch item switch to its own trace)."""

    trace_id: str
    span_id: str  # this hop's span: the parent of every call it makes
    sampled: bool
    request_id: str = ""
    parent_span_id: str = ""  # the caller's span ("" when this hop started the trace)
    reason: str = ""  # the ErrorInfo reason of the refusal this call ended with (metrics)
    started: float = 0.0  # time.perf_counter() when the call arrived
    origin_id: str = ""  # the request further up that this one is made for ("" when it is its own)

    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"


_current: ContextVar[Call | None] = ContextVar("medaid_call", default=None)


def current() -> Call | None:
    return _current.get()


def _span_id() -> str:
    return f"{random.getrandbits(64) or 1:016x}"


def note_reason(reason: str) -> None:
    """The ErrorInfo reason the current call is refused with (counted by medaid.common.observe)."""
    call = _current.get()
    if call is not None:
        call.reason = reason


def parse(header: str | None) -> tuple[str, str, bool] | None:
    """(trace id, parent span id, sampled) of a traceparent header; None when absent or malformed
    (W3C: a receiver that cannot parse it starts a new trace)."""
    if not header:
        return None
    m = _TRACEPARENT.match(header.strip().lower())
    if m is None or m.group(1) == _ZERO_TRACE or m.group(2) == _ZERO_SPAN:
        return None
    return m.group(1), m.group(2), bool(int(m.group(3), 16) & 1)


def start(header: str | None = None, request_id: str = "", origin: str | None = None) -> Call:
    """The Call of a request arriving with `header` (its caller's traceparent): that trace continued
    with a new span, or a new trace (sampled at `sample_ratio`) when there is none; `origin` the
    request id its caller made it for (`ORIGIN_HEADER`). Made current."""
    found = parse(header)
    origin_id = origin if origin and origin != request_id else ""
    if found is None:
        call = Call(f"{random.getrandbits(128) or 1:032x}", _span_id(), random.random() < _sample_ratio,
                    request_id, started=time.perf_counter(), origin_id=origin_id)
    else:
        call = Call(found[0], _span_id(), found[2], request_id, parent_span_id=found[1], started=time.perf_counter(),
                    origin_id=origin_id)
    _current.set(call)
    return call


@contextlib.contextmanager
def item(traceparent: str, request_id: str = "") -> Iterator[None]:
    """Inside a batch call: one item's own trace (carried in the item) for its logs and onward calls;
    an item that carries none stays in the batch's trace, under its own request id. Either way the
    item is its own origin, not the item that opened the batch."""
    found = parse(traceparent)
    if found is None:
        with acting_for(request_id) if request_id else contextlib.nullcontext():
            yield
        return
    token = _current.set(Call(found[0], _span_id(), found[2], request_id, parent_span_id=found[1],
                              started=time.perf_counter()))
    try:
        yield
    finally:
        _current.reset(token)


@contextlib.contextmanager
def acting_for(request_id: str) -> Iterator[None]:
    """Inside a batch call whose items carry no trace of their own (DebitForTransferBatch), or a
    background pass finishing one entry: the lines written for it, and the calls it makes, are that
    request's (its id, its own origin), in the batch's or the pass's trace."""
    call = _current.get()
    if call is None:
        yield
        return
    token = _current.set(replace(call, request_id=request_id, origin_id=""))
    try:
        yield
    finally:
        _current.reset(token)


def traceparent() -> str:
    """The current call's traceparent ("" outside a call): for a batch item to carry."""
    call = _current.get()
    return call.traceparent() if call is not None else ""


def from_metadata(metadata: Any) -> str | None:
    """The traceparent in gRPC invocation metadata (a sequence of key, value pairs), if any."""
    return incoming(metadata)[0]


def incoming(metadata: Any) -> tuple[str | None, str | None]:
    """(traceparent, origin request id) in gRPC invocation metadata, each None when absent."""
    header = origin = None
    for key, value in metadata or ():
        if key == HEADER:
            header = value if isinstance(value, str) else value.decode()
        elif key == ORIGIN_HEADER:
            origin = value if isinstance(value, str) else value.decode()
    return header, origin


def _sendable(value: str) -> bool:
    """Whether an id may travel as an ASCII metadata value (printable, not over _ORIGIN_MAX)."""
    return 0 < len(value) <= _ORIGIN_MAX and value.isascii() and value.isprintable()


def outgoing(metadata: Any = None) -> Any:
    """`metadata` of an outgoing call with this call's traceparent and origin added (unchanged outside
    a call; a traceparent the caller already put in is kept)."""
    call = _current.get()
    if call is None:
        return metadata
    origin = call.origin_id or call.request_id
    own: tuple[tuple[str, str], ...] = ((HEADER, call.traceparent()),)
    if origin and _sendable(origin):
        own = (*own, (ORIGIN_HEADER, origin))
    if not metadata:
        return own
    items = tuple(metadata)
    if any(k == HEADER for k, _ in items):
        return (*items, *own[1:]) if not any(k == ORIGIN_HEADER for k, _ in items) else items
    return (*items, *own)


class _TracedCallable:
    """A unary-unary multicallable whose calls carry the current traceparent."""

    __slots__ = ("_inner",)

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __call__(self, request: Any, *, metadata: Any = None, **kwargs: Any) -> Any:
        return self._inner(request, metadata=outgoing(metadata), **kwargs)


class TracedChannel:
    """A grpc.aio channel whose unary calls carry the current traceparent.

    A plain attribute wrapper rather than a grpc.aio client interceptor: an intercepted aio call
    costs an extra task and its bookkeeping on every call, this costs one function call. Every
    other attribute (close, channel_ready, …) is the channel's own."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel

    def unary_unary(self, *args: Any, **kwargs: Any) -> Any:
        return _TracedCallable(self._channel.unary_unary(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._channel.close()
