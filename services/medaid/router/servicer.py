"""gRPC transport for the router: each RPC calls one `Router` method; a registry's refusal passes
through unchanged (`Passthrough`, handled with every other failure by `call_or_abort`). Each call's
downstream calls end before its caller's deadline (`rpc.budget`, set by `call_or_abort`), so that the
caller hears which downstream did not answer rather than its own DEADLINE_EXCEEDED."""

from __future__ import annotations

import grpc

from medaid.common.transport import call_or_abort
from medaid.router.service import Router
from medaid.router.v1 import router_pb2 as pb
from medaid.router.v1 import router_pb2_grpc as pb_grpc

Ctx = grpc.aio.ServicerContext


class RouterServicer(pb_grpc.RouterServiceServicer):
    def __init__(self, router: Router) -> None:
        self.router = router

    async def QueryPerson(self, request: pb.QueryPersonRequest, context: Ctx) -> pb.QueryPersonResponse:
        return await call_or_abort(context, lambda: self.router.query_person(request))

    async def PreSettle(self, request: pb.PreSettleRequest, context: Ctx) -> pb.PreSettleResponse:
        return await call_or_abort(context, lambda: self.router.presettle(request))

    async def Settle(self, request: pb.SettleRequest, context: Ctx) -> pb.SettleResponse:
        return await call_or_abort(context, lambda: self.router.settle(request))

    async def ReverseSettlement(self, request: pb.ReverseSettlementRequest, context: Ctx
                                ) -> pb.ReverseSettlementResponse:
        return await call_or_abort(context, lambda: self.router.reverse(request))

    async def Undo(self, request: pb.UndoRequest, context: Ctx) -> pb.UndoResponse:
        return await call_or_abort(context, lambda: self.router.undo(request))

    async def QuerySettlement(self, request: pb.QuerySettlementRequest, context: Ctx) -> pb.QuerySettlementResponse:
        return await call_or_abort(context, lambda: self.router.query_settlement(request))

    async def ReconcileTotals(self, request: pb.ReconcileTotalsRequest, context: Ctx) -> pb.ReconcileTotalsResponse:
        return await call_or_abort(context, lambda: self.router.reconcile_totals(request))

    async def ReconcileDetails(self, request: pb.ReconcileDetailsRequest, context: Ctx) -> pb.ReconcileDetailsResponse:
        return await call_or_abort(context, lambda: self.router.reconcile_details(request))

    async def GetDownstreamHealth(self, request: pb.GetDownstreamHealthRequest, context: Ctx
                                  ) -> pb.GetDownstreamHealthResponse:
        return await call_or_abort(context, lambda: self.router.downstream_health(request))


def register(server: grpc.aio.Server, router: Router) -> list[str]:
    pb_grpc.add_RouterServiceServicer_to_server(RouterServicer(router), server)
    return [pb.DESCRIPTOR.services_by_name["RouterService"].full_name]
