"""Request-id idempotency (TigerBeetle-style): the client-chosen id is the key.

A claim hash per request id (`<ns>:{rid:<id>}`) holds a fingerprint of the request's fields,
the operation, its subject and, once done, the serialized answer. A replay with the same
fields returns the first answer; the same id with different fields is refused with
IDEMPOTENCY_KEY_REUSED. A claim found PENDING (a crash or a concurrent duplicate) is re-driven
by the caller: every step behind a claim is itself idempotent, keyed by the request id. The first
answer recorded (idem_finish.lua) is the request's: a driver that finishes later answers with it.

A refusal (a domain rule said no) deletes the claim, so a refused request writes nothing and
a resend is judged afresh: only the claim as that attempt took it (a resend that finds the claim in
progress takes it as a new attempt), never one a resend drives, or answered, since.

A flow under a recovery entry (the registry's) names the entry in its claim, and each time it takes the
claim again before a write (`hold`) the claim gets a new attempt number: a recovery loop frees a claim
only as it read it (`free`), never one taken again since, nor another request's.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import redis.asyncio as aioredis
from google.protobuf.message import Message

from medaid.common import errors
from medaid.common.redis_client import barrier
from medaid.common.scripts import ScriptSet
from medaid.common.values import text

ResponseT = TypeVar("ResponseT", bound=Message)

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,64}\Z")


def validate_request_id(request_id: str) -> None:
    if not REQUEST_ID_RE.match(request_id or ""):
        raise errors.invalid(
            "INVALID_REQUEST_ID", "request_id must be 1-64 characters of A-Z a-z 0-9 . _ : -"
        )


def fingerprint(request: Message, *, drop: tuple[str, ...] = ("request_id",)) -> str:
    """A hash of the request's fields (without its id). An id number sent once with a lower-case `x`
    and once with `X` is the same person, so the same request (SPEC §6)."""
    copy = type(request)()
    copy.CopyFrom(request)
    for name in drop:
        copy.ClearField(name)
    for field, value in copy.ListFields():
        if isinstance(value, str) and len(value) == 18 and value[-1] == "x":
            setattr(copy, field.name, value[:-1] + "X")
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


# What a 冲正 (2601) of a request this service never saw leaves in its claim (request_void.lua): the
# fingerprint and operation no request has.
VOID = "void"


def reused(request_id: str, *, voided: bool = False) -> errors.DomainError:
    """A request id claimed by another request: IDEMPOTENCY_KEY_REUSED; by a 冲正 that voided it
    before it arrived: ORIGINAL_CANCELLED. Either way nothing of this request was written, and the
    claim is not its to drop."""
    if voided:
        return errors.refused("ORIGINAL_CANCELLED", f"request_id {request_id} was cancelled by a 冲正 before it "
                              "arrived; send the transaction again with a new id",
                              request_id=request_id).after_effects()
    return errors.exists("IDEMPOTENCY_KEY_REUSED", f"request_id {request_id} was already used for a different "
                         "request", request_id=request_id)


@dataclass(frozen=True)
class Finish(Generic[ResponseT]):
    """What `work` may return instead of the bare response: the response plus the writes that
    complete the request. `Idempotency.run` queues `writes`, then records the answer, then queues
    `then`, on one pipeline (one round trip on one Redis, applied in that order). On a cluster `then`
    is sent only once the answer stands (`barrier`): what leads a recovery loop back to a request in
    progress (its entry) is taken away in `then`, so that a claim never stays in progress without it."""

    response: ResponseT
    writes: Callable[[Any], Awaitable[None]] | None = None
    then: Callable[[Any], Awaitable[None]] | None = None


@dataclass(frozen=True)
class Claim:
    state: str  # NEW | DONE | PENDING
    response: bytes | None = None
    subject: str = ""
    # A refusal that came after money moved (e.g. a transfer that FAILED): replayed as an error.
    error: errors.DomainError | None = None
    # PENDING: the attempt number the claim was found and taken under ('' : none; NEW: none).
    attempt: str = ""

    def answer(self, response_type: type[ResponseT]) -> ResponseT:
        """A DONE claim's first answer, as `response_type`, or its recorded refusal raised."""
        if self.error is not None:
            raise self.error
        assert self.response is not None
        return response_type.FromString(self.response)


@dataclass(frozen=True)
class ClaimRead:
    """A claim as read (`Idempotency.queue_read`): its state, operation and subject, and the token under
    which alone `Idempotency.free` deletes it (fingerprint, recovery entry, attempt number; '' : none)."""

    FIELDS = ("state", "op", "subject", "fp", "entry", "n")

    state: str
    op: str
    subject: str
    fp: str
    entry: str
    attempt: str

    @classmethod
    def of(cls, reply: list[Any]) -> ClaimRead:
        return cls(*(text(x or b"") for x in reply))


class Idempotency:
    def __init__(self, client: aioredis.Redis | aioredis.RedisCluster, namespace: str, ttl_s: int = 0) -> None:
        self._client = client
        self._ns = namespace
        self._ttl_s = ttl_s
        self._scripts = ScriptSet(client, "medaid.common", ["idem_begin", "idem_finish", "idem_free"])

    def key(self, request_id: str) -> str:
        return f"{self._ns}:{{rid:{request_id}}}"

    @staticmethod
    def parse_claim(request_id: str, res: list[Any]) -> Claim:
        """A claim script's reply ({'NEW'} | {'REUSED', op} | {'DONE', resp, err} | {'PENDING', subject})
        as a Claim; REUSED raises IDEMPOTENCY_KEY_REUSED."""
        kind = res[0].decode() if isinstance(res[0], bytes) else res[0]
        if kind == "NEW":
            return Claim("NEW")
        if kind == "REUSED":
            raise reused(request_id, voided=len(res) > 1 and text(res[1]) == VOID)
        if kind == "DONE":
            err = res[2].decode() if isinstance(res[2], bytes) else res[2]
            if err:
                return Claim("DONE", error=errors.DomainError.from_dict(json.loads(err)))
            return Claim("DONE", response=res[1])
        subj = res[1].decode() if isinstance(res[1], bytes) else str(res[1])
        return Claim("PENDING", subject=subj, attempt=text(res[2]) if len(res) > 2 else "")

    async def begin(self, request_id: str, fp: str, op: str, subject: str, now_ms: int) -> Claim:
        res = await self._scripts["idem_begin"](keys=[self.key(request_id)], args=[fp, op, subject, now_ms])
        return self.parse_claim(request_id, res)

    async def queue_begin(self, pipe: Any, request_id: str, fp: str, op: str, subject: str, now_ms: int,
                          entry: str = "", hold: bool = False) -> None:
        """`begin` queued on a pipeline; parse its reply with `parse_claim`. `entry`: the recovery entry the
        claim is taken with; `hold`: taken again by its holder before a write (a new attempt number, under
        which alone a loop that read the claim before may free it: `free`)."""
        await self._scripts["idem_begin"](keys=[self.key(request_id)],
                                          args=[fp, op, subject, now_ms, entry, "hold" if hold else ""], client=pipe)

    async def begin_many(
        self, entries: list[tuple[str, str, str, str]], now_ms: int
    ) -> list[Claim | errors.DomainError]:
        """`begin` for many (request_id, fingerprint, op, subject) in one round trip."""
        async with self._client.pipeline(transaction=False) as pipe:
            for request_id, fp, op, subject in entries:
                await self._scripts["idem_begin"](keys=[self.key(request_id)], args=[fp, op, subject, now_ms],
                                                  client=pipe)
            replies = await pipe.execute()
        out: list[Claim | errors.DomainError] = []
        for (request_id, *_), res in zip(entries, replies, strict=True):
            try:
                out.append(self.parse_claim(request_id, res))
            except errors.DomainError as exc:
                out.append(exc)
        return out

    async def finish(self, request_id: str, response: bytes) -> None:
        await self.finish_many([(request_id, response)], [])

    async def finish_many(self, done: list[tuple[str, bytes]], abandoned: list[str]) -> None:
        """Record answers (where none is recorded yet) and drop refused claims, in one round trip."""
        async with self._client.pipeline(transaction=False) as pipe:
            for request_id, response in done:
                await self._queue_finish(pipe, request_id, response)
            for request_id in abandoned:
                pipe.delete(self.key(request_id))
            await pipe.execute()

    async def _queue_finish(self, pipe: Any, request_id: str, response: bytes) -> None:
        """Queue idem_finish.lua: the answer is recorded unless one already is (the first stays)."""
        await self._scripts["idem_finish"](keys=[self.key(request_id)], args=[response, self._ttl_s], client=pipe)

    async def queue_finish(self, pipe: Any, request_id: str, response: Message) -> None:
        """`record` queued on a pipeline; its reply there, given to `recorded`, is the request's answer."""
        await self._queue_finish(pipe, request_id, response.SerializeToString())

    @staticmethod
    def recorded(reply: list[Any], mine: ResponseT) -> ResponseT:
        """The answer a claim holds after `queue_finish`: `mine`, or the first one recorded."""
        return Idempotency._recorded(reply, mine, type(mine))

    async def record(self, request_id: str, response: ResponseT) -> ResponseT:
        """`response` recorded as the request's answer unless one already is; the answer the claim holds
        (`response`, or the first one recorded) is returned."""
        async with self._client.pipeline(transaction=False) as pipe:
            await self._queue_finish(pipe, request_id, response.SerializeToString())
            (recorded,) = await pipe.execute()
        return self._recorded(recorded, response, type(response))

    @staticmethod
    def _recorded(reply: list[Any], mine: ResponseT, response_type: type[ResponseT]) -> ResponseT:
        """The answer idem_finish.lua left in the claim: `mine`, or the one a duplicate recorded first."""
        resp, err = reply
        if err:
            raise errors.DomainError.from_dict(json.loads(err))
        resp = resp.encode() if isinstance(resp, str) else resp
        return mine if resp == mine.SerializeToString() else response_type.FromString(resp)

    async def run(
        self,
        request: Message,
        op: str,
        subject: str,
        response_type: type[ResponseT],
        work: Callable[..., Awaitable[ResponseT | Finish[ResponseT]]],
        now_ms: int,
        prefetch: Callable[[Any], None] | None = None,
    ) -> ResponseT:
        """Run `work` once per request id: replay the first answer, refuse a reused id.

        `work` returns the response, or a `Finish` whose writes go with the answer's record (`then`:
        after it).
        `prefetch(pipe)`, when given, queues reads on the pipeline that carries the claim (one round
        trip for both); their replies are passed to `work` as arguments, in order. They are read
        after the claim is taken, exactly as if `work` had read them first.

        A DomainError from `work` settles the claim: one raised after effects (`keeps_claim`) leaves
        it PENDING, so a retry or a recovery loop finishes the request; a final refusal removes it,
        however the claim was reached (a first attempt or a resend after a crash), so the same id with
        corrected fields is judged afresh; a retryable one (UNAVAILABLE) removes it only when this
        call created it (a concurrent duplicate told to retry must not drop the original's claim).
        Either way only the claim as this call took it goes (`release`): an attempt that stalled while a
        resend took the claim over leaves it to the resend, answered or still in progress."""
        # Every request message has a request_id field; the Message base class does not declare it.
        request_id = request.request_id  # type: ignore[attr-defined]
        validate_request_id(request_id)
        fetched: list[Any] = []
        fp = fingerprint(request)
        if prefetch is None:
            claim = await self.begin(request_id, fp, op, subject, now_ms)
        else:
            async with self._client.pipeline(transaction=False) as pipe:
                await self._scripts["idem_begin"](keys=[self.key(request_id)],
                                                  args=[fp, op, subject, now_ms], client=pipe)
                prefetch(pipe)
                res, *fetched = await pipe.execute()
            claim = self.parse_claim(request_id, res)
        if claim.state == "DONE":
            return claim.answer(response_type)
        try:
            response = await work(*fetched)
        except errors.DomainError as exc:
            if self.drops_claim(exc, claim.state):
                await self.release(request_id, fp, claim.attempt)
            raise
        # A duplicate that found this claim PENDING may have driven the request too and recorded its
        # answer first: that one is the request's answer, given here as well.
        finished = response.response if isinstance(response, Finish) else response
        writes, then = (response.writes, response.then) if isinstance(response, Finish) else (None, None)
        async with self._client.pipeline(transaction=False) as pipe:
            if writes is not None:
                await writes(pipe)
            await self._queue_finish(pipe, request_id, finished.SerializeToString())
            at = len(pipe) - 1  # the answer's reply
            first = await barrier(pipe) if then is not None else []
            if then is not None:
                await then(pipe)
            recorded = [*first, *await pipe.execute()][at]
        return self._recorded(recorded, finished, response_type)

    @staticmethod
    def drops_claim(exc: errors.DomainError, claim_state: str) -> bool:
        """Whether a request refused with `exc` leaves no claim behind (see `run`)."""
        if exc.keeps_claim:
            return False
        return claim_state == "NEW" or not exc.retryable

    async def finish_error(self, request_id: str, error: errors.DomainError) -> None:
        """Record a final refusal for a request whose steps already wrote (replayed as the same error),
        unless an answer is recorded already: the first stays (idem_finish.lua, as for an answer)."""
        await self._scripts["idem_finish"](keys=[self.key(request_id)],
                                           args=["", self._ttl_s, json.dumps(error.to_dict())])

    async def abandon(self, request_id: str) -> None:
        await self._client.delete(self.key(request_id))

    async def release(self, request_id: str, fp: str, attempt: str, entry: str = "") -> bool:
        """The claim of `request_id` that an attempt took (`fp`; `entry`, the recovery entry it was last taken
        with, '' : none; `attempt`, the claim's attempt number as it found or last took it) deleted, only
        while still in progress as it took it (idem_free.lua): a resend that took it over since (a new
        attempt number) or answered it keeps it. True if freed."""
        return bool(await self._scripts["idem_free"](keys=[self.key(request_id)], args=[fp, entry, attempt]))

    async def queue_release(self, pipe: Any, request_id: str, fp: str, attempt: str, entry: str = "") -> None:
        """`release` queued on a pipeline (its reply there: 1 if freed)."""
        await self._scripts["idem_free"](keys=[self.key(request_id)], args=[fp, entry, attempt], client=pipe)

    def queue_read(self, pipe: Any, request_id: str) -> None:
        """A claim as `free` compares it, queued on a pipeline; its reply is given to `ClaimRead.of`."""
        pipe.hmget(self.key(request_id), list(ClaimRead.FIELDS))

    async def free(self, request_id: str, read: ClaimRead) -> bool:
        """The claim of `request_id` deleted only while it is still in progress as `read` found it: the same
        fingerprint, recovery entry and attempt number (idem_free.lua, on the claim's own key). A holder
        that took it again since, or another request that took the id, keeps it. True if freed."""
        return bool(await self._scripts["idem_free"](keys=[self.key(request_id)],
                                                      args=[read.fp, read.entry, read.attempt]))

    async def subject(self, request_id: str) -> tuple[str, str]:
        """(operation, subject) a request id was claimed for; ('', '') when never seen."""
        op, subject = await self._client.hmget(self.key(request_id), ["op", "subject"])
        return text(op or b""), text(subject or b"")
