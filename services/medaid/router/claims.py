"""The router's msgid claims (`rtr:{mid:<msgid>}`): a msgid bound to the transaction and person it
was first routed for, so that a resend joins its first attempt and a reused msgid with other fields
is refused; an attempt a rule refused leaves, and the last one out removes the claim. An attempt left
unanswered counts as over once the claim's last attempt began `STALE_DEADLINES` router deadlines ago."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from redis.exceptions import RedisError

from medaid.common import errors, rpc
from medaid.common.scripts import ScriptSet
from medaid.common.transport import Passthrough
from medaid.common.values import text

log = logging.getLogger("medaid.router")

T = TypeVar("T")

# The codes of a refusal by a rule: the attempt leaves its msgid's claim (it wrote nothing else).
REFUSED_BY_RULE = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                              grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE,
                              grpc.StatusCode.PERMISSION_DENIED})

# How many router deadlines after the last attempt under a claim began every attempt under it is over:
# a 2601 makes up to three registry calls in a row, each within one deadline.
STALE_DEADLINES = 4


def stale_after_s(deadline_s: float) -> float:
    """After how long since a claim's last attempt began its unanswered attempts count as over."""
    return STALE_DEADLINES * deadline_s


class MsgidClaims:
    """msgid -> the transaction and person it was first routed for (`rtr:{mid:<msgid>}`).

    A claim counts the attempts under it that a rule has not refused (lua/msgid_claim.lua): the
    first creates it, an identical resend or concurrent duplicate joins it. An attempt refused by
    a rule leaves (`release`) and the last one out removes the claim. An attempt that settled marks
    the claim done (`done`): its msgid stays bound to its transaction and person for good. One whose
    outcome is unknown (not answered in time, a crash between claim and answer) never leaves, but
    is over once `stale_after_s` passed since the claim's last attempt began: an identical resend
    after that counts as the claim's only open attempt, and the registry answers it from whatever
    the earlier ones did there (their settlement; or a refusal by a rule, which frees the msgid)."""

    def __init__(self, client: Any, on_freed: Callable[[list[tuple[str, str]]], Awaitable[None]] | None = None,
                 *, deadline_s: float = rpc.DEFAULT_DEADLINE_S) -> None:
        self._client = client
        self._scripts = ScriptSet(client, "medaid.router", ["msgid_claim", "msgid_release", "msgid_void",
                                                            "msgid_done"])
        self._stale_ms = int(stale_after_s(deadline_s) * 1000)
        # Told which (msgid, fingerprint) claims the last refused attempt removed (the index forgets them).
        self._on_freed = on_freed

    @staticmethod
    def key(msgid: str) -> str:
        return f"rtr:{{mid:{msgid}}}"

    @staticmethod
    def parse(fingerprint: str) -> tuple[str, str]:
        """A claim's transaction and person: '2207:<psn>|<digest>' or '2208:<psn>:<setl_id>' -> (kind, psn)."""
        kind, _, rest = fingerprint.partition(":")
        return kind, rest.split(":", 1)[0].split("|", 1)[0]

    @staticmethod
    def _reused(msgid: str) -> errors.DomainError:
        return errors.exists("IDEMPOTENCY_KEY_REUSED", f"msgid {msgid} was already used for a different "
                             "transaction or person", request_id=msgid)

    @staticmethod
    def _cancelled(msgid: str) -> errors.DomainError:
        return errors.refused("ORIGINAL_CANCELLED", f"msgid {msgid} was cancelled by a 2601 冲正; send the "
                              "transaction again with a new msgid", request_id=msgid)

    def _refusal(self, msgid: str, reply: Any) -> errors.DomainError | None:
        if int(reply) == -2:
            return self._cancelled(msgid)
        return self._reused(msgid) if int(reply) < 0 else None

    async def claim_many(self, claims: list[tuple[str, str]]) -> list[errors.DomainError | None]:
        """`claim` for many (msgid, fingerprint) in one pipelined round trip; each item's refusal or None."""
        return [refused for refused, _ in await self.claim_and_note(claims, [None] * len(claims))]

    async def claim_and_note(self, claims: list[tuple[str, str]], notes: list[tuple[list[str], list[Any]] | None]
                             ) -> list[tuple[errors.DomainError | None, bool]]:
        """`claim_many`, each claim with its index note (SettlementIndex.note_call; one Redis only) or
        None. Per item: the refusal or None, and whether the note wrote the entry."""
        calls = []
        for (msgid, fp), note in zip(claims, notes, strict=True):
            keys, args = note or ([], [])
            calls.append(([self.key(msgid), *keys], [fp, self._stale_ms, *args]))
        replies = await self._scripts.run_many("msgid_claim", calls)
        out: list[tuple[errors.DomainError | None, bool]] = []
        for (msgid, _), r in zip(claims, replies, strict=True):
            claimed, wrote = (r[0], bool(r[1])) if isinstance(r, list) else (r, False)
            out.append((self._refusal(msgid, claimed), wrote))
        return out

    async def claim(self, msgid: str, fingerprint: str) -> None:
        refused = self._refusal(msgid, await self._scripts["msgid_claim"](keys=[self.key(msgid)],
                                                                          args=[fingerprint, self._stale_ms]))
        if refused is not None:
            raise refused

    async def voided_by(self, msgid: str) -> str:
        """The 2601 that cancelled `msgid` ('' when none did)."""
        if text(await self._client.type(self.key(msgid))) != "hash":
            return ""
        fp = text(await self._client.hget(self.key(msgid), "fp") or b"")
        return fp.removeprefix("void:") if fp.startswith("void:") else ""

    async def answered(self, msgid: str, fingerprint: str) -> bool:
        """Whether an attempt with this fingerprint under `msgid`'s claim was answered with its effect
        (msgid_done.lua marked the claim `done`): a resend of it is not a new request."""
        if text(await self._client.type(self.key(msgid))) != "hash":
            return False
        fp, done = await self._client.hmget(self.key(msgid), ["fp", "done"])
        return bool(done) and text(fp or b"") == fingerprint

    async def void(self, msgid: str, by: str, *, always: bool) -> str:
        """Cancel a msgid for a 2601 (msgid_void.lua); the claim's fingerprint before ('' if none). A
        msgid voided already stays voided by its first 2601."""
        return text(await self._scripts["msgid_void"](keys=[self.key(msgid)],
                                                      args=["always" if always else "if_absent", by]))

    async def finish_many(self, refused: Sequence[tuple[str, str]], done: Sequence[tuple[str, str]] = ()) -> None:
        """The attempts (msgid, fingerprint), each of which claimed its msgid: `refused` by a rule
        leave their claims, `done` (answered with their effect) mark theirs for good; one round trip.
        Best effort: when Redis fails here the claims stay as they are (a refused one bound, a done
        one still bound until an identical resend refused by a rule after `stale_after_s`, which a
        registry that acted on it never answers) and the answers are still given; it never turns a
        batch neighbour's settlement into an error."""
        if not refused and not done:
            return
        try:
            replies = await self._scripts.run_each(
                [("msgid_release", [self.key(m)], [fp]) for m, fp in refused]
                + [("msgid_done", [self.key(m)], [fp]) for m, fp in done])
            failed = [(c, r) for c, r in zip([*refused, *done], replies, strict=True) if isinstance(r, RedisError)]
            if failed:
                log.warning("msgid claims of answered messages left as they were", extra={"fields": {
                    "msgids": [m for (m, _), _ in failed], "error": repr(failed[0][1])}})
            if self._on_freed is not None and refused:
                await self._on_freed([c for c, r in zip(refused, replies[:len(refused)], strict=True)
                                      if not isinstance(r, RedisError) and int(r) == 1])
        except (RedisError, OSError) as exc:
            log.warning("msgid claims of answered messages left as they were",
                        extra={"fields": {"msgids": [m for m, _ in [*refused, *done]], "error": repr(exc)}})

    async def release_many(self, claims: Sequence[tuple[str, str]]) -> None:
        """The attempts (msgid, fingerprint), each of which claimed its msgid, were refused by a rule."""
        await self.finish_many(claims)

    async def release(self, msgid: str, fingerprint: str) -> None:
        await self.release_many([(msgid, fingerprint)])

    async def call(self, msgid: str, fingerprint: str, work: Callable[[], Awaitable[T]]) -> T:
        """Claim the msgid, run `work()` (a registry call), and leave the claim if a rule refused it,
        or mark it done if the work was done."""
        await self.claim(msgid, fingerprint)
        try:
            out = await work()
        except Passthrough as exc:
            if exc.status.code in REFUSED_BY_RULE:
                await self.release(msgid, fingerprint)
            raise
        except errors.DomainError as exc:  # the router's own rule (2601: ORIGINAL_MISMATCH …)
            if exc.code in REFUSED_BY_RULE and exc.reason != "DOWNSTREAM_ERROR":
                await self.release(msgid, fingerprint)
            raise
        await self.finish_many([], [(msgid, fingerprint)])
        return out
