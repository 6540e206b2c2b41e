"""gRPC transport for the registry: translate calls to `Registry` and DomainError to rich status.
No business logic here."""

from __future__ import annotations

from typing import Any

import grpc

from medaid.common.transport import call_or_abort
from medaid.registry.service import Registry
from medaid.registry.v1 import registry_pb2 as pb
from medaid.registry.v1 import registry_pb2_grpc as pb_grpc


def _method(name: str) -> Any:
    async def handler(self: RegistryServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await call_or_abort(context, lambda: getattr(self.registry, name)(request))

    handler.__name__ = name
    return handler


class RegistryServicer(pb_grpc.RegistryServiceServicer):
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    EnrollPerson = _method("enroll")
    UpdatePersonStatus = _method("update_status")
    GetPerson = _method("get_person")
    GetPersons = _method("get_persons")
    CreditAccount = _method("credit")
    GetAccount = _method("get_account")
    BindMutualAid = _method("bind")
    UnbindMutualAid = _method("unbind")
    ListBindings = _method("list_bindings")
    BindProxy = _method("bind_proxy")
    ListProxyBindings = _method("list_proxies")
    Diagnose = _method("diagnose")
    PreSettle = _method("presettle")
    Settle = _method("settle")
    SettleBatch = _method("settle_batch")
    ReverseSettlement = _method("reverse")
    GetSettlement = _method("get_settlement")
    ListConsumptionRecords = _method("list_consumption")
    DebitForTransfer = _method("debit_for_transfer")
    DebitForTransferBatch = _method("debit_for_transfer_batch")
    RefundTransfer = _method("refund_transfer")
    CreditLotReturn = _method("credit_lot_return")
    NoteWallet = _method("note_wallet")


def register(server: grpc.aio.Server, registry: Registry) -> list[str]:
    pb_grpc.add_RegistryServiceServicer_to_server(RegistryServicer(registry), server)
    return [pb.DESCRIPTOR.services_by_name["RegistryService"].full_name]
