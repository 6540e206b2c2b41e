"""The registry's shared state (its Redis, policy, keys, scripts, clock and seams), the patient's fenced
lock, the fault points tests crash at, and the helpers of batches. `Context` (context.py) builds on it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis.asyncio as aioredis

from medaid.common import errors, rpc
from medaid.common.clock import Clock
from medaid.common.errors import DomainError
from medaid.common.idempotency import Idempotency
from medaid.common.idnumber import mask
from medaid.common.lock import FencedLocks, Lease, LockBusy
from medaid.common.scripts import ScriptSet
from medaid.directory import Directory
from medaid.registry.keys import Keys
from medaid.registry.policy import Policy
from medaid.registry.v1 import registry_pb2 as pb
from medaid.registry.wallet_port import WalletPort

T = TypeVar("T")

SCRIPTS = [
    "enroll", "credit", "bind", "unbind", "proxy_bind",
    "settle_read", "settle_apply", "settle_open", "settle_charge", "settle_extend", "settle_finish",
    "reverse_begin", "reverse_charge", "reverse_finish",
    "xfer_debit", "xfer_refund", "lot_return", "note_wallet",
    "inherit", "proxy_remove", "proxy_undo",
    "family_create", "family_invite", "family_respond", "family_end", "family_returned", "family_payout",
    "family_debit", "family_credit", "family_xfer_finish", "family_charge", "family_refund",
    "premium_open", "premium_debit", "premium_finish", "premium_cancel", "life_event", "life_event_at", "open_entry",
]
LOCK_TTL_MS = 10_000  # the default of --lock-ttl-ms
LOCK_WAIT_MS = 10_000
MAX_BATCH = 512

# Points between two steps where tests simulate a crash of the registry (InjectedFault).
FAULT_POINTS = (
    "settle.after_claim",
    "settle.after_own_debit",
    "settle.after_wallet_debit",
    "settle.after_helper_debit",
    "settle.after_finish",
    "reverse.after_begin",
    "reverse.after_helper_refund",
    "reverse.after_finish",
    "transfer.after_debit",
    "transfer.after_refund",
    "family.after_debit",
    "family.after_credit",
    "family.after_end",
    "family.after_payout",
    "premium.after_open",
    "premium.after_debit",
    "premium.after_cancel_refund",
    "status.after_entry",
    "status.after_write",
    "event.before_time",
)


class InjectedFault(Exception):
    """Raised by the fault hook (tests only) to simulate a crash between two steps."""


@dataclass
class ContextCore:
    """The state every part of the registry shares, and the patient's lock."""

    r: aioredis.Redis | aioredis.RedisCluster
    policy: Policy
    clock: Clock
    wallet: WalletPort
    directory: Directory
    # One Redis: a settlement with no wallet share applies in one atomic script (settle_apply.lua).
    # On a cluster the helpers' keys live on other nodes, so every settlement takes the staged path.
    atomic: bool
    k: Keys = field(init=False)
    idem: Idempotency = field(init=False)
    locks: FencedLocks = field(init=False)
    lua: ScriptSet = field(init=False)
    fault_hook: Callable[[str], None] | None = None
    # How long a person's or a family's lock outlives a holder that stopped renewing it (--lock-ttl-ms).
    lock_ttl_ms: int = LOCK_TTL_MS

    def __post_init__(self) -> None:
        self.k = Keys(self.policy.province)
        self.idem = Idempotency(self.r, self.k.ns)
        self.locks = FencedLocks(self.r)
        self.lua = ScriptSet(self.r, "medaid.registry", SCRIPTS)

    def fault(self, point: str) -> None:
        if self.fault_hook is not None:
            self.fault_hook(point)

    def not_enrolled(self, pid: str) -> DomainError:
        return errors.not_found("PERSON_NOT_FOUND", f"{mask(pid)} is not enrolled in {self.policy.name}")

    async def acquire(self, pid: str, wait_ms: int = LOCK_WAIT_MS) -> Lease:
        """The patient's fenced lock (the staged settlement path, reversals, recovery)."""
        try:
            return await self.locks.acquire(self.k.person_tag(pid), self.lock_ttl_ms, wait_ms)
        except LockBusy:
            raise patient_busy() from None

    async def acquire_holding(self, held: Lease, pid: str, wait_ms: int = LOCK_WAIT_MS) -> Lease:
        """The person's lock (`acquire`) for a holder of another person's (`held`), renewed while it waits:
        a wait longer than the locks' time to live would let `held` expire and another request take it,
        and the holder, once it had both, would be told LOCK_LOST by its first fenced write. Both are
        renewed once they are held together; where `held` was lost all the same (a stalled holder), the
        new lock is let go and the holder is told PATIENT_BUSY, nothing written."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + rpc.time_left(wait_ms / 1000)
        tag, step_ms = self.k.person_tag(pid), max(1, self.lock_ttl_ms // 3)
        while True:
            left_ms = max(0, int((deadline - loop.time()) * 1000))
            try:
                lease = await self.locks.acquire(tag, self.lock_ttl_ms, min(step_ms, left_ms))
            except LockBusy:
                if loop.time() >= deadline or not await self.locks.extend(held, self.lock_ttl_ms):
                    raise patient_busy() from None
                continue
            if await self.locks.extend(held, self.lock_ttl_ms):
                return lease
            await self.locks.release(lease)
            raise patient_busy()


def patient_busy() -> DomainError:
    return errors.unavailable("PATIENT_BUSY", "another operation on this patient is in progress; "
                              "retry with the same request id")


def lock_lost() -> DomainError:
    return errors.unavailable("LOCK_LOST", "a newer holder took this patient's lock; retry with the same request id")


def error_item(exc: DomainError) -> pb.ItemError:
    return pb.ItemError(code=exc.code.value[0], reason=exc.reason, message=exc.message, metadata=exc.metadata)


def check_batch(n: int, what: str) -> None:
    if n == 0:
        raise errors.invalid("EMPTY_BATCH", f"a batch needs at least one item ({what})")
    if n > MAX_BATCH:
        raise errors.invalid("BATCH_TOO_LARGE", f"at most {MAX_BATCH} {what} per batch")


def filled(outcomes: list[T | None]) -> list[T]:
    """A batch's outcomes once every item has one."""
    out = [o for o in outcomes if o is not None]
    assert len(out) == len(outcomes), "a batch item was left without an outcome"
    return out


def enum_value(enum_type: Any, prefix: str, short: str) -> int:
    return int(enum_type.Value(prefix + short))
