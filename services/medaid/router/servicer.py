"""gRPC transport for the router: translate calls; pass downstream statuses through unchanged
(`Passthrough`, handled with every other failure by `call_or_abort`)."""

from __future__ import annotations

from typing import Any

import grpc

from medaid.common.transport import call_or_abort
from medaid.router.service import Router
from medaid.router.v1 import router_pb2 as pb
from medaid.router.v1 import router_pb2_grpc as pb_grpc


def _method(name: str) -> Any:
    async def handler(self: RouterServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await call_or_abort(context, lambda: getattr(self.router, name)(request))

    handler.__name__ = name
    return handler


class RouterServicer(pb_grpc.RouterServiceServicer):
    def __init__(self, router: Router) -> None:
        self.router = router

    QueryPerson = _method("query_person")
    PreSettle = _method("presettle")
    Settle = _method("settle")
    ReverseSettlement = _method("reverse")
    Undo = _method("undo")
    QuerySettlement = _method("query_settlement")
    ReconcileTotals = _method("reconcile_totals")
    ReconcileDetails = _method("reconcile_details")
    GetDownstreamHealth = _method("downstream_health")


def register(server: grpc.aio.Server, router: Router) -> list[str]:
    pb_grpc.add_RouterServiceServicer_to_server(RouterServicer(router), server)
    return [pb.DESCRIPTOR.services_by_name["RouterService"].full_name]
