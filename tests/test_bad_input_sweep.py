"""SPEC §7 over every RPC the services declare: a request that is empty, or whose every field is
malformed at once, is answered with a fitting code and a google.rpc.ErrorInfo (domain "medaid"),
never UNKNOWN / INTERNAL, with a message that shows no id number in clear, and writes nothing.

The RPCs come from the service descriptors, so one added later is swept too."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor, ServiceDescriptor
from medaid.common.errors import error_info
from medaid.registry.v1 import registry_pb2
from medaid.router.v1 import router_pb2
from medaid.wallet.v1 import wallet_pb2
from support import snapshot, unmasked_id_numbers

SERVICES: dict[str, ServiceDescriptor] = {
    "registry": registry_pb2.DESCRIPTOR.services_by_name["RegistryService"],
    "wallet": wallet_pb2.DESCRIPTOR.services_by_name["WalletService"],
    "router": router_pb2.DESCRIPTOR.services_by_name["RouterService"],
}
# Requests without fields: an empty one is the request (a health report, a maintenance pass).
NO_INPUT = {"GetDownstreamHealth", "RunMaintenance"}
# An empty SettleBatch is answered with no outcomes (docs/grpc-api.md: only GetPersons and
# DebitForTransferBatch refuse an empty batch).
EMPTY_ANSWERED = {"SettleBatch"}
REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.ALREADY_EXISTS}
INTS = (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_INT32)


def _fill(msg: Any, spoil: Callable[[FieldDescriptor], Any]) -> None:
    """Every field of `msg` (nested messages and one item of each repeated field too) set by `spoil`."""
    for f in msg.DESCRIPTOR.fields:
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            _fill(getattr(msg, f.name).add() if f.is_repeated else getattr(msg, f.name), spoil)
            continue
        value = spoil(f)
        if value is None:
            continue
        if f.is_repeated:
            getattr(msg, f.name).append(value)
        else:
            setattr(msg, f.name, value)


def _strings(value: str) -> Callable[[FieldDescriptor], Any]:
    return lambda f: value if f.type == FieldDescriptor.TYPE_STRING else None


def _ints(value64: int, value32: int) -> Callable[[FieldDescriptor], Any]:
    return lambda f: {FieldDescriptor.TYPE_INT64: value64, FieldDescriptor.TYPE_INT32: value32}.get(f.type)


SPOILS: dict[str, Callable[[FieldDescriptor], Any] | None] = {
    "empty": None,
    "strings_nul": _strings("13010219800101001\x00"),
    "strings_300": _strings("9" * 300),
    "strings_blank": _strings(" \t "),
    "strings_emoji": _strings("😀"),
    "ints_negative": _ints(-(2**63), -(2**31)),
    "ints_max": _ints(2**63 - 1, 2**31 - 1),
    "enums_unknown": lambda f: 999 if f.type == FieldDescriptor.TYPE_ENUM else None,
}


def _cases() -> Iterator[Any]:
    for service, sd in SERVICES.items():
        for m in sd.methods:
            if m.name not in NO_INPUT:
                yield pytest.param(service, m.name, id=f"{service}.{m.name}")


@pytest.fixture
def channels(national: Any, start_router: Callable[..., Any]) -> dict[str, grpc.Channel]:
    return {"registry": national.registries["62"].channel, "wallet": national.wallet.channel,
            "router": start_router().channel}


def _call(channel: grpc.Channel, sd: ServiceDescriptor, m: MethodDescriptor, req: Any) -> Any:
    response = message_factory.GetMessageClass(m.output_type)
    return channel.unary_unary(f"/{sd.full_name}/{m.name}", request_serializer=lambda r: r.SerializeToString(),
                               response_deserializer=response.FromString)(req, timeout=10)


def _item_problems(resp: Any) -> list[str]:
    """A batch answers each item on its own: every malformed item must be an ItemError with a reason."""
    if "outcomes" not in resp.DESCRIPTOR.fields_by_name or not resp.outcomes:
        return ["accepted"]
    problems = []
    for o in resp.outcomes:
        if o.WhichOneof("outcome") != "error":
            problems.append("an item accepted")
        elif grpc.StatusCode.INTERNAL.value[0] == o.error.code or grpc.StatusCode.UNKNOWN.value[0] == o.error.code \
                or not o.error.reason or unmasked_id_numbers(o.error.message):
            problems.append(f"item {o.error}")
    return problems


@pytest.mark.parametrize(("service", "rpc"), list(_cases()))
def test_every_rpc_refuses_malformed_requests_with_a_reason(channels, rdb, service, rpc):
    sd = SERVICES[service]
    m = sd.methods_by_name[rpc]
    request = message_factory.GetMessageClass(m.input_type)
    failures = []
    for label, spoil in SPOILS.items():
        req = request()
        if spoil is not None:
            _fill(req, spoil)
        before = snapshot(rdb)
        try:
            resp = _call(channels[service], sd, m, req)
        except grpc.RpcError as exc:
            info = error_info(exc)
            problems = []
            if exc.code() not in REFUSALS:
                problems.append(f"code {exc.code().name}")
            if info is None or info.domain != "medaid" or not info.reason:
                problems.append("no ErrorInfo reason")
            if not (exc.details() or "").strip() or unmasked_id_numbers(exc.details() or ""):
                problems.append("no message, or an id number in clear")
            if snapshot(rdb) != before:
                problems.append("wrote to Redis")
            if problems:
                failures.append(f"{label}: {', '.join(problems)} ({exc.code().name} {exc.details()!r})")
        else:
            if not (label == "empty" and rpc in EMPTY_ANSWERED):
                failures += [f"{label}: {p}" for p in _item_problems(resp)]
            if snapshot(rdb) != before:
                failures.append(f"{label}: a batch of refused items wrote to Redis")
    assert not failures, "\n".join(failures)
