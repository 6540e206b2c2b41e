"""Optional OTLP export of spans (the `otel` extra: opentelemetry-sdk and its OTLP/HTTP exporter).

Off unless `--otlp-endpoint` is set. Then every sampled call (the edge samples a share of new traces,
`--trace-sample-ratio`; later hops follow the caller's flag) becomes a server span exported in
batches from a background thread. The spans take the ids medaid.common.tracing already gave the
call, so the trace id in the logs is the one in the tracing backend, and an unsampled call costs
nothing here."""

from __future__ import annotations

import logging
import random
from typing import Any

from medaid.common import config, tracing

log = logging.getLogger("medaid.otel")

_tracer: Any = None


def setup(endpoint: str, service: str) -> None:
    """Start exporting to `endpoint` (an OTLP/HTTP traces URL) as `service`; nothing when empty."""
    if not endpoint:
        return
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise config.Unusable("--otlp-endpoint (MEDAID_OTLP_ENDPOINT) needs the `otel` extra: "
                              "pip install 'medaid-gongji[otel]'") from None
    provider = TracerProvider(resource=Resource.create({"service.name": service}), id_generator=ids())
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    use(provider)
    log.info("exporting sampled traces", extra={"fields": {"otlp_endpoint": endpoint}})


def use(provider: Any | None) -> None:
    """Export through `provider` (an SDK TracerProvider made with `id_generator=ids()`); None: stop."""
    global _tracer
    _tracer = provider.get_tracer("medaid") if provider is not None else None


def ids() -> Any:
    """The id generator a TracerProvider must use so that spans carry the calls' ids."""
    from opentelemetry.sdk.trace.id_generator import IdGenerator

    class CallIds(IdGenerator):
        """The current call's ids (random ones outside a call)."""

        def generate_span_id(self) -> int:
            call = tracing.current()
            return int(call.span_id, 16) if call is not None else random.getrandbits(64) or 1

        def generate_trace_id(self) -> int:
            call = tracing.current()
            return int(call.trace_id, 16) if call is not None else random.getrandbits(128) or 1

    return CallIds()


def start_span(name: str, call: tracing.Call) -> Any:
    """A server span for `call` (None when not exporting)."""
    if _tracer is None:
        return None
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

    context = None
    if call.parent_span_id:
        parent = SpanContext(int(call.trace_id, 16), int(call.parent_span_id, 16), is_remote=True,
                             trace_flags=TraceFlags(TraceFlags.SAMPLED))
        context = trace.set_span_in_context(NonRecordingSpan(parent))
    span = _tracer.start_span(name, context=context, kind=SpanKind.SERVER)
    if call.request_id:
        span.set_attribute("medaid.request_id", call.request_id)
    return span


def end_span(span: Any, code: str, reason: str) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("rpc.grpc.status_code", code)
    if reason:
        span.set_attribute("medaid.reason", reason)
    if code not in ("OK", "0"):
        span.set_status(Status(StatusCode.ERROR, reason or code))
    span.end()
