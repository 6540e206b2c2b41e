"""What every part of the wallet shares: its store, scripts, idempotency, locks, clock and fault points."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import redis.asyncio as aioredis
from google.protobuf.message import Message

from medaid.common.clock import Clock
from medaid.common.idempotency import Idempotency, ResponseT
from medaid.common.lock import FencedLocks
from medaid.common.scripts import ScriptSet
from medaid.registry.client import Registries
from medaid.registry.policy import regions_by_province
from medaid.wallet import rules
from medaid.wallet.keys import WalletKeys
from medaid.wallet.v1 import wallet_pb2 as pb

SCRIPTS = ["open", "open_reserve", "reserve", "unreserve", "release_pending", "xfer_create", "xfer_abandon", "xfer_cas",
           "xfer_accept", "spend", "spend_bar", "spend_refund", "lots_release", "ret_done", "wallet_xfer_out",
           "wallet_xfer_back", "status_set"]
FAULT_POINTS = (
    "transfer.after_reserve",
    "transfer.after_create",
    "transfer.after_debit",
    "transfer.after_pending",
    "accept.after_claim",
    "accept.after_credit",
    "expire.after_returning",
    "expire.after_refund",
    "release.after_transfers",
    "release.after_lots",
    "refund.after_index",
)
TERMINAL = ("COMPLETED", "RETURNED", "FAILED")
PERSON_END_REASONS = ("TERMINATED", "MOVED", "MOVED_REGION", "DECEASED")
MAINTENANCE_LEASE_MS = 3_000
MAX_BALANCES = 512
STATE_ENUM = {
    "CREATED": pb.TRANSFER_STATE_CREATED,
    "PENDING_ACCEPT": pb.TRANSFER_STATE_PENDING_ACCEPT,
    "COMPLETED": pb.TRANSFER_STATE_COMPLETED,
    "RETURNING": pb.TRANSFER_STATE_RETURNING,
    "RETURNED": pb.TRANSFER_STATE_RETURNED,
    "FAILING": pb.TRANSFER_STATE_FAILED,
    "FAILED": pb.TRANSFER_STATE_FAILED,
}
DEFINITIVE_DEBIT_REFUSALS = ("INSUFFICIENT_BALANCE", "SENDER_NOT_ACTIVE", "SENDER_NOT_EMPLOYEE",
                             "TRANSFER_CANCELLED", "PERSON_NOT_FOUND")


class WalletCore:
    """The wallet's shared state; each layer below adds one concern (service.py lists them)."""

    def __init__(
        self,
        client: aioredis.Redis | aioredis.RedisCluster,
        registries: Registries,
        *,
        policy: rules.WalletPolicy | None = None,
        clock: Clock | None = None,
        recovery_grace_ms: int = 5_000,
        regions: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        self.r = client
        self.registries = registries
        self.policy = policy or rules.WalletPolicy()
        # The 统筹区 of each province a registry is configured for: the use-places a wallet may name.
        self.regions = regions if regions is not None else regions_by_province(registries.provinces())
        self.clock = clock or Clock()
        self.k = WalletKeys()
        self.idem = Idempotency(client, self.k.ns)
        self.locks = FencedLocks(client)
        self.lua = ScriptSet(client, "medaid.wallet", SCRIPTS)
        self.recovery_grace_ms = recovery_grace_ms
        # Tests (in-process) or MEDAID_FAULT (out-of-process, kill -9) crash between saga steps.
        self.fault_hook: Callable[[str], None] | None = None

    def _fault(self, point: str) -> None:
        if self.fault_hook is not None:
            self.fault_hook(point)

    async def _once(self, request: Message, op: str, subject: str, response_type: type[ResponseT],
                    work: Callable[[], Awaitable[ResponseT]]) -> ResponseT:
        return await self.idem.run(request, op, subject, response_type, work, self.clock.now_ms())
