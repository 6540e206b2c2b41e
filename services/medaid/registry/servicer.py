"""gRPC transport for the registry: each RPC calls one `Registry` method and turns a DomainError into
a rich status. No business logic here."""

from __future__ import annotations

import grpc

from medaid.common.transport import call_or_abort
from medaid.registry.service import Registry
from medaid.registry.v1 import family_pb2 as fpb
from medaid.registry.v1 import premium_pb2 as ppb
from medaid.registry.v1 import registry_pb2 as pb
from medaid.registry.v1 import registry_pb2_grpc as pb_grpc

Ctx = grpc.aio.ServicerContext


class RegistryServicer(pb_grpc.RegistryServiceServicer):
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def EnrollPerson(self, request: pb.EnrollPersonRequest, context: Ctx) -> pb.EnrollPersonResponse:
        return await call_or_abort(context, lambda: self.registry.enroll(request))

    async def UpdatePersonStatus(self, request: pb.UpdatePersonStatusRequest, context: Ctx
                                 ) -> pb.UpdatePersonStatusResponse:
        return await call_or_abort(context, lambda: self.registry.update_status(request))

    async def GetPerson(self, request: pb.GetPersonRequest, context: Ctx) -> pb.GetPersonResponse:
        return await call_or_abort(context, lambda: self.registry.get_person(request))

    async def MovePoolingRegion(self, request: pb.MovePoolingRegionRequest, context: Ctx
                                ) -> pb.MovePoolingRegionResponse:
        return await call_or_abort(context, lambda: self.registry.move_region(request))

    async def RecordDeath(self, request: pb.RecordDeathRequest, context: Ctx) -> pb.RecordDeathResponse:
        return await call_or_abort(context, lambda: self.registry.record_death(request))

    async def RemoveProxy(self, request: pb.RemoveProxyRequest, context: Ctx) -> pb.RemoveProxyResponse:
        return await call_or_abort(context, lambda: self.registry.remove_proxy(request))

    async def GetPersons(self, request: pb.GetPersonsRequest, context: Ctx) -> pb.GetPersonsResponse:
        return await call_or_abort(context, lambda: self.registry.get_persons(request))

    async def CreditAccount(self, request: pb.CreditAccountRequest, context: Ctx) -> pb.CreditAccountResponse:
        return await call_or_abort(context, lambda: self.registry.credit(request))

    async def GetAccount(self, request: pb.GetAccountRequest, context: Ctx) -> pb.GetAccountResponse:
        return await call_or_abort(context, lambda: self.registry.get_account(request))

    async def BindMutualAid(self, request: pb.BindMutualAidRequest, context: Ctx) -> pb.BindMutualAidResponse:
        return await call_or_abort(context, lambda: self.registry.bind(request))

    async def UnbindMutualAid(self, request: pb.UnbindMutualAidRequest, context: Ctx) -> pb.UnbindMutualAidResponse:
        return await call_or_abort(context, lambda: self.registry.unbind(request))

    async def ListBindings(self, request: pb.ListBindingsRequest, context: Ctx) -> pb.ListBindingsResponse:
        return await call_or_abort(context, lambda: self.registry.list_bindings(request))

    async def BindProxy(self, request: pb.BindProxyRequest, context: Ctx) -> pb.BindProxyResponse:
        return await call_or_abort(context, lambda: self.registry.bind_proxy(request))

    async def ListProxyBindings(self, request: pb.ListProxyBindingsRequest, context: Ctx
                                ) -> pb.ListProxyBindingsResponse:
        return await call_or_abort(context, lambda: self.registry.list_proxies(request))

    async def Diagnose(self, request: pb.DiagnoseRequest, context: Ctx) -> pb.DiagnoseResponse:
        return await call_or_abort(context, lambda: self.registry.diagnose(request))

    async def PreSettle(self, request: pb.PreSettleRequest, context: Ctx) -> pb.PreSettleResponse:
        return await call_or_abort(context, lambda: self.registry.presettle(request))

    async def Settle(self, request: pb.SettleRequest, context: Ctx) -> pb.SettleResponse:
        return await call_or_abort(context, lambda: self.registry.settle(request))

    async def SettleBatch(self, request: pb.SettleBatchRequest, context: Ctx) -> pb.SettleBatchResponse:
        return await call_or_abort(context, lambda: self.registry.settle_batch(request))

    async def ReverseSettlement(self, request: pb.ReverseSettlementRequest, context: Ctx
                                ) -> pb.ReverseSettlementResponse:
        return await call_or_abort(context, lambda: self.registry.reverse(request))

    async def GetSettlement(self, request: pb.GetSettlementRequest, context: Ctx) -> pb.GetSettlementResponse:
        return await call_or_abort(context, lambda: self.registry.get_settlement(request))

    async def GetSettlements(self, request: pb.GetSettlementsRequest, context: Ctx) -> pb.GetSettlementsResponse:
        return await call_or_abort(context, lambda: self.registry.get_settlements(request))

    async def CancelRequest(self, request: pb.CancelRequestRequest, context: Ctx) -> pb.CancelRequestResponse:
        return await call_or_abort(context, lambda: self.registry.cancel_request(request))

    async def UndoReversal(self, request: pb.UndoReversalRequest, context: Ctx) -> pb.UndoReversalResponse:
        return await call_or_abort(context, lambda: self.registry.undo_reversal(request))

    async def ListConsumptionRecords(self, request: pb.ListConsumptionRecordsRequest, context: Ctx
                                     ) -> pb.ListConsumptionRecordsResponse:
        return await call_or_abort(context, lambda: self.registry.list_consumption(request))

    async def DebitForTransfer(self, request: pb.DebitForTransferRequest, context: Ctx
                               ) -> pb.DebitForTransferResponse:
        return await call_or_abort(context, lambda: self.registry.debit_for_transfer(request))

    async def DebitForTransferBatch(self, request: pb.DebitForTransferBatchRequest, context: Ctx
                                    ) -> pb.DebitForTransferBatchResponse:
        return await call_or_abort(context, lambda: self.registry.debit_for_transfer_batch(request))

    async def RefundTransfer(self, request: pb.RefundTransferRequest, context: Ctx) -> pb.RefundTransferResponse:
        return await call_or_abort(context, lambda: self.registry.refund_transfer(request))

    async def CreditLotReturn(self, request: pb.CreditLotReturnRequest, context: Ctx) -> pb.CreditLotReturnResponse:
        return await call_or_abort(context, lambda: self.registry.credit_lot_return(request))

    async def NoteWallet(self, request: pb.NoteWalletRequest, context: Ctx) -> pb.NoteWalletResponse:
        return await call_or_abort(context, lambda: self.registry.note_wallet(request))

    # --- the pooled family account (SPEC §3b) -----------------------------------------------

    async def CreateFamilyAccount(self, request: fpb.CreateFamilyAccountRequest, context: Ctx
                                  ) -> fpb.CreateFamilyAccountResponse:
        return await call_or_abort(context, lambda: self.registry.create_family(request))

    async def InviteMember(self, request: fpb.InviteMemberRequest, context: Ctx) -> fpb.InviteMemberResponse:
        return await call_or_abort(context, lambda: self.registry.invite_member(request))

    async def RespondToInvitation(self, request: fpb.RespondToInvitationRequest, context: Ctx
                                  ) -> fpb.RespondToInvitationResponse:
        return await call_or_abort(context, lambda: self.registry.respond_to_invitation(request))

    async def RemoveMember(self, request: fpb.RemoveMemberRequest, context: Ctx) -> fpb.RemoveMemberResponse:
        return await call_or_abort(context, lambda: self.registry.remove_member(request))

    async def LeaveFamilyAccount(self, request: fpb.LeaveFamilyAccountRequest, context: Ctx
                                 ) -> fpb.LeaveFamilyAccountResponse:
        return await call_or_abort(context, lambda: self.registry.leave_family(request))

    async def DissolveFamilyAccount(self, request: fpb.DissolveFamilyAccountRequest, context: Ctx
                                    ) -> fpb.DissolveFamilyAccountResponse:
        return await call_or_abort(context, lambda: self.registry.dissolve_family(request))

    async def TransferIntoFamilyAccount(self, request: fpb.TransferIntoFamilyAccountRequest, context: Ctx
                                        ) -> fpb.TransferIntoFamilyAccountResponse:
        return await call_or_abort(context, lambda: self.registry.transfer_into_family(request))

    async def WithdrawContribution(self, request: fpb.WithdrawContributionRequest, context: Ctx
                                   ) -> fpb.WithdrawContributionResponse:
        return await call_or_abort(context, lambda: self.registry.withdraw_contribution(request))

    async def GetFamilyAccount(self, request: fpb.GetFamilyAccountRequest, context: Ctx
                               ) -> fpb.GetFamilyAccountResponse:
        return await call_or_abort(context, lambda: self.registry.get_family(request))

    # --- 代缴 (SPEC §4b) ----------------------------------------------------------------------

    async def PayResidentPremium(self, request: ppb.PayResidentPremiumRequest, context: Ctx
                                 ) -> ppb.PayResidentPremiumResponse:
        return await call_or_abort(context, lambda: self.registry.pay_premium(request))

    async def CancelResidentPremium(self, request: ppb.CancelResidentPremiumRequest, context: Ctx
                                    ) -> ppb.CancelResidentPremiumResponse:
        return await call_or_abort(context, lambda: self.registry.cancel_premium(request))

    async def ListResidentPremiums(self, request: ppb.ListResidentPremiumsRequest, context: Ctx
                                   ) -> ppb.ListResidentPremiumsResponse:
        return await call_or_abort(context, lambda: self.registry.list_premiums(request))


def register(server: grpc.aio.Server, registry: Registry) -> list[str]:
    pb_grpc.add_RegistryServiceServicer_to_server(RegistryServicer(registry), server)
    return [pb.DESCRIPTOR.services_by_name["RegistryService"].full_name]
