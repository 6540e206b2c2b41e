"""gRPC transport for the router: translate calls; pass downstream statuses through unchanged."""

from __future__ import annotations

import logging
from typing import Any

import grpc

from medaid.common.errors import DomainError
from medaid.router.service import Passthrough, Router
from medaid.router.v1 import router_pb2 as pb
from medaid.router.v1 import router_pb2_grpc as pb_grpc

log = logging.getLogger("medaid.router.rpc")


def _method(name: str) -> Any:
    async def handler(self: RouterServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await getattr(self.router, name)(request)
        except DomainError as exc:
            log.info("refused", extra={"fields": {"reason": exc.reason, "code": exc.code.name}})
            await context.abort_with_status(exc.to_status())
        except Passthrough as exc:
            await context.abort_with_status(exc.status)
        raise AssertionError("unreachable")

    handler.__name__ = name
    return handler


class RouterServicer(pb_grpc.RouterServiceServicer):
    def __init__(self, router: Router) -> None:
        self.router = router

    QueryPerson = _method("query_person")
    PreSettle = _method("presettle")
    Settle = _method("settle")
    ReverseSettlement = _method("reverse")
    GetDownstreamHealth = _method("downstream_health")


def register(server: grpc.aio.Server, router: Router) -> list[str]:
    pb_grpc.add_RouterServiceServicer_to_server(RouterServicer(router), server)
    return [pb.DESCRIPTOR.services_by_name["RouterService"].full_name]
