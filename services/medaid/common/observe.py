"""The server interceptor every gRPC service installs first (common/server.py): each unary call runs
with its trace context (continued from the caller's `traceparent`, or started here) and is counted
and timed by method, status code and ErrorInfo reason (medaid.common.metrics).

The reason comes from where the refusal is made (`call_or_abort`, the authorization interceptor),
which note it on the current `tracing.Call`; the status code from the servicer context once the
handler has aborted. Streaming methods (health Watch, reflection) pass through untouched."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

import grpc

from medaid.common import metrics, otel, tracing

# Request fields that name a request, in the order looked for: the id in every log line of the call.
_ID_FIELDS = ("request_id", "msgid", "transfer_id", "settlement_id")

Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _id_field(request: Any) -> str:
    fields = request.DESCRIPTOR.fields_by_name
    return next((f for f in _ID_FIELDS if f in fields and fields[f].type == fields[f].TYPE_STRING), "")


def _status_name(context: grpc.aio.ServicerContext, exc: BaseException) -> str:
    """The status a call that raised ends with: the code it aborted with, else what gRPC makes of the
    exception (a cancelled call, or UNKNOWN for an unhandled error)."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    return "CANCELLED" if isinstance(exc, asyncio.CancelledError) else "UNKNOWN"


class ObserveInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        # method -> (the handler it was made for, the wrapped handler): one wrap per method as long as
        # the handlers behind are the same objects (they are unless another interceptor re-wraps per call).
        self._cache: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        behavior = cast(Behavior, handler.unary_unary)
        name = method.rsplit(".", 1)[-1]  # "/medaid.registry.v1.RegistryService/Settle" -> "RegistryService/Settle"
        id_field: list[str] = []  # found from the first request (the handler does not say its type)

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if not id_field:
                id_field.append(_id_field(request))
            header, origin = tracing.incoming(context.invocation_metadata())
            call = tracing.start(header, getattr(request, id_field[0]) if id_field[0] else "", origin)
            span = otel.start_span(name, call) if call.sampled else None
            t0 = time.perf_counter()
            code = "OK"
            try:
                return await behavior(request, context)
            except BaseException as exc:
                code = _status_name(context, exc)
                raise
            finally:
                metrics.rpc(name, code, call.reason, time.perf_counter() - t0)
                if span is not None:
                    otel.end_span(span, code, call.reason)

        return grpc.unary_unary_rpc_method_handler(unary_unary, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        cached = self._cache.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        self._cache[method] = (handler, wrapped)
        return wrapped


def setup(service: str, cfg: Mapping[str, str]) -> dict[str, object]:
    """At a service's start (after logging): the metrics endpoint, trace sampling and OTLP export.
    Returns what its `listening` line adds ({"metrics_port": N}, 0 when metrics are off)."""
    announce = metrics.setup(cfg, service)
    otel.setup(cfg.get("otlp_endpoint", ""), service)
    return announce
