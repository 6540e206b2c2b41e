"""The national 医保钱包 (SPEC §5, §5b): one `Wallet`, made of one layer per concern, each module
building on the one before it:

* `core` — the store, scripts, idempotency, locks, clock and fault points every layer shares;
* `wallets` — opening a wallet, its 使用地, balances and entries;
* `lots` — quota lots going home when a relationship ends;
* `transfer_reads` — a transfer's record, GetTransfer and the transfer listings;
* `transfer_saga` — the exactly-once transfer saga's steps (debit, expiry, refund) and its drive;
* `transfers` — a transfer created and accepted;
* `spending` — a settlement's or a premium's share paid from a wallet, and its refund;
* `endings` — a sender's lots released, a person's or one relationship's ended;
* `maintenance` — monthly clearing between provinces, the expiry sweeper and the recovery loop.
"""

from __future__ import annotations

from medaid.wallet.core import (
    DEFINITIVE_DEBIT_REFUSALS,
    FAULT_POINTS,
    MAINTENANCE_LEASE_MS,
    MAX_BALANCES,
    PERSON_END_REASONS,
    SCRIPTS,
    STATE_ENUM,
    TERMINAL,
)
from medaid.wallet.endings import Ended
from medaid.wallet.maintenance import Maintenance

__all__ = ["DEFINITIVE_DEBIT_REFUSALS", "FAULT_POINTS", "MAINTENANCE_LEASE_MS", "MAX_BALANCES", "PERSON_END_REASONS",
           "SCRIPTS", "STATE_ENUM", "TERMINAL", "Ended", "Wallet"]


class Wallet(Maintenance):
    """The wallet service's application layer: every RPC of `WalletService` (servicer.py) lands here."""
