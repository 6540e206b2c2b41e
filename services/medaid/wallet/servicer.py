"""gRPC transport for the wallet: translate calls to `Wallet`; no business logic here."""

from __future__ import annotations

from typing import Any

import grpc

from medaid.common.transport import call_or_abort as _call
from medaid.wallet.service import Wallet
from medaid.wallet.v1 import wallet_pb2 as pb
from medaid.wallet.v1 import wallet_pb2_grpc as pb_grpc


def _method(name: str) -> Any:
    async def handler(self: WalletServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await _call(context, lambda: getattr(self.wallet, name)(request))

    handler.__name__ = name
    return handler


class WalletServicer(pb_grpc.WalletServiceServicer):
    def __init__(self, wallet: Wallet) -> None:
        self.wallet = wallet

    OpenWallet = _method("open_wallet")
    GetWallet = _method("get_wallet")
    GetWalletBalances = _method("balances")
    ListWalletEntries = _method("list_entries")
    CreateTransfer = _method("create_transfer")
    AcceptTransfer = _method("accept")
    GetTransfer = _method("get_transfer")
    ListIncomingTransfers = _method("list_incoming")
    ListOutgoingTransfers = _method("list_outgoing")
    SpendWallet = _method("spend")
    RefundWalletSpend = _method("refund_spend")
    PayPremium = _method("pay_premium")
    ReleaseSenderLots = _method("release_sender_lots")
    EndWalletRelationship = _method("end_relationship")
    EndPersonWalletRelationships = _method("end_person_relationships")
    ChangeUsePlace = _method("change_use_place")
    GetClearingReport = _method("clearing_report")

    async def RunMaintenance(self, request: pb.RunMaintenanceRequest,  # noqa: N802 - gRPC method name
                             context: grpc.aio.ServicerContext) -> pb.RunMaintenanceResponse:
        return await _call(context, self.wallet.maintain)


def register(server: grpc.aio.Server, wallet: Wallet) -> list[str]:
    pb_grpc.add_WalletServiceServicer_to_server(WalletServicer(wallet), server)
    return [pb.DESCRIPTOR.services_by_name["WalletService"].full_name]
