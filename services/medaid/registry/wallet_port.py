"""Waterfall step 2 (own 医保钱包): the seam to the national wallet service.

Until the wallet service is connected, `NoWallet` answers "no wallet" for everyone, so step 2
pays nothing and the settlement reports WALLET_NOT_OPENED. It is not a fake balance: it is
the truthful answer of a registry that has no wallet service to ask.
"""

from __future__ import annotations

from typing import Protocol


class WalletPort(Protocol):
    async def balance(self, id_number: str, province: str, region: str) -> int | None:
        """Spendable wallet balance at this use-place in fen, or None when no wallet is open."""

    async def debit(self, ref: str, id_number: str, amount_fen: int) -> int:
        """Spend `amount_fen` once per `ref`; return the wallet balance after."""

    async def refund(self, ref: str, id_number: str, amount_fen: int) -> int:
        """Undo the spend of `ref` once; return the wallet balance after."""


class NoWallet:
    async def balance(self, id_number: str, province: str, region: str) -> int | None:
        return None

    async def debit(self, ref: str, id_number: str, amount_fen: int) -> int:
        raise RuntimeError("no wallet service is connected")

    async def refund(self, ref: str, id_number: str, amount_fen: int) -> int:
        raise RuntimeError("no wallet service is connected")
