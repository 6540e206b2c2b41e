"""gRPC transport for the wallet: each RPC calls one `Wallet` method and turns a DomainError into a
rich status. No business logic here."""

from __future__ import annotations

import grpc

from medaid.common.authz import acting_province
from medaid.common.transport import call_or_abort
from medaid.wallet.service import Wallet
from medaid.wallet.v1 import wallet_pb2 as pb
from medaid.wallet.v1 import wallet_pb2_grpc as pb_grpc

Ctx = grpc.aio.ServicerContext


class WalletServicer(pb_grpc.WalletServiceServicer):
    def __init__(self, wallet: Wallet) -> None:
        self.wallet = wallet

    async def OpenWallet(self, request: pb.OpenWalletRequest, context: Ctx) -> pb.OpenWalletResponse:
        return await call_or_abort(context, lambda: self.wallet.open_wallet(request))

    async def GetWallet(self, request: pb.GetWalletRequest, context: Ctx) -> pb.GetWalletResponse:
        return await call_or_abort(context, lambda: self.wallet.get_wallet(request))

    async def GetWalletBalances(self, request: pb.GetWalletBalancesRequest, context: Ctx
                                ) -> pb.GetWalletBalancesResponse:
        return await call_or_abort(context, lambda: self.wallet.balances(request))

    async def ListWalletEntries(self, request: pb.ListWalletEntriesRequest, context: Ctx
                                ) -> pb.ListWalletEntriesResponse:
        return await call_or_abort(context, lambda: self.wallet.list_entries(request))

    async def CreateTransfer(self, request: pb.CreateTransferRequest, context: Ctx) -> pb.CreateTransferResponse:
        return await call_or_abort(context, lambda: self.wallet.create_transfer(request))

    async def AcceptTransfer(self, request: pb.AcceptTransferRequest, context: Ctx) -> pb.AcceptTransferResponse:
        return await call_or_abort(context, lambda: self.wallet.accept(request))

    async def GetTransfer(self, request: pb.GetTransferRequest, context: Ctx) -> pb.GetTransferResponse:
        return await call_or_abort(context, lambda: self.wallet.get_transfer(request))

    async def ListIncomingTransfers(self, request: pb.ListIncomingTransfersRequest, context: Ctx
                                    ) -> pb.ListIncomingTransfersResponse:
        return await call_or_abort(context, lambda: self.wallet.list_incoming(request))

    async def ListOutgoingTransfers(self, request: pb.ListOutgoingTransfersRequest, context: Ctx
                                    ) -> pb.ListOutgoingTransfersResponse:
        return await call_or_abort(context, lambda: self.wallet.list_outgoing(request))

    async def SpendWallet(self, request: pb.SpendWalletRequest, context: Ctx) -> pb.SpendWalletResponse:
        return await call_or_abort(context, lambda: self.wallet.spend(request, acting_province(context)))

    async def RefundWalletSpend(self, request: pb.RefundWalletSpendRequest, context: Ctx
                                ) -> pb.RefundWalletSpendResponse:
        return await call_or_abort(context, lambda: self.wallet.refund_spend(request, acting_province(context)))

    async def PayPremium(self, request: pb.PayPremiumRequest, context: Ctx) -> pb.PayPremiumResponse:
        return await call_or_abort(context, lambda: self.wallet.pay_premium(request))

    async def ReleaseSenderLots(self, request: pb.ReleaseSenderLotsRequest, context: Ctx
                                ) -> pb.ReleaseSenderLotsResponse:
        return await call_or_abort(context, lambda: self.wallet.release_sender_lots(request, acting_province(context)))

    async def EndWalletRelationship(self, request: pb.EndWalletRelationshipRequest, context: Ctx
                                    ) -> pb.EndWalletRelationshipResponse:
        return await call_or_abort(context, lambda: self.wallet.end_relationship(request))

    async def EndPersonWalletRelationships(self, request: pb.EndPersonWalletRelationshipsRequest, context: Ctx
                                           ) -> pb.EndPersonWalletRelationshipsResponse:
        return await call_or_abort(context, lambda: self.wallet.end_person_relationships(
            request, acting_province(context)))

    async def NoteOwnerStatus(self, request: pb.NoteOwnerStatusRequest, context: Ctx) -> pb.NoteOwnerStatusResponse:
        return await call_or_abort(context, lambda: self.wallet.note_owner_status(request, acting_province(context)))

    async def ChangeUsePlace(self, request: pb.ChangeUsePlaceRequest, context: Ctx) -> pb.ChangeUsePlaceResponse:
        return await call_or_abort(context, lambda: self.wallet.change_use_place(request))

    async def GetClearingReport(self, request: pb.GetClearingReportRequest, context: Ctx
                                ) -> pb.GetClearingReportResponse:
        return await call_or_abort(context, lambda: self.wallet.clearing_report(request))

    async def RunMaintenance(self, request: pb.RunMaintenanceRequest, context: Ctx) -> pb.RunMaintenanceResponse:
        return await call_or_abort(context, self.wallet.maintain)


def register(server: grpc.aio.Server, wallet: Wallet) -> list[str]:
    pb_grpc.add_WalletServiceServicer_to_server(WalletServicer(wallet), server)
    return [pb.DESCRIPTOR.services_by_name["WalletService"].full_name]
