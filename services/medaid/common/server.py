"""One bootstrap for every medaid gRPC service: grpc.aio server bound to a (possibly free) port,
standard health and reflection services, graceful shutdown on SIGTERM/SIGINT.

Health follows the service's Redis: a store watchdog (`StoreWatch`) pings it every
--store-check-ms and turns every health status NOT_SERVING while it does not answer (readiness:
a load balancer or Kubernetes stops sending calls that could only fail with STORE_UNAVAILABLE),
SERVING again once it does. The one exception is `LIVENESS`, which stays SERVING until shutdown:
a liveness probe asks it, so that a Redis outage does not restart every process."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from medaid.common import config, metrics, redis_client, rpc
from medaid.common.logs import scrub
from medaid.common.observe import ObserveInterceptor
from medaid.common.tls import TlsConfig

log = logging.getLogger("medaid.server")

MAX_RECEIVE_BYTES = 4 * 1024 * 1024  # gRPC's own default, stated; a service may take more (start_server)
SERVER_OPTIONS = [
    ("grpc.so_reuseport", 0),
    ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
    # Clients' keepalive pings (common/rpc.py: how a hung replica is found) are accepted, with or without calls.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", rpc.MIN_PING_INTERVAL_MS),
    # Clients balance round-robin over what a DNS name resolves to (a Kubernetes headless Service, a
    # scaled compose service) and resolve again when a connection ends: ending each connection after
    # a few minutes (GOAWAY; calls in flight get the grace) lets them find replicas added since.
    ("grpc.max_connection_age_ms", 300_000),
    ("grpc.max_connection_age_grace_ms", 30_000),
]


class _GenericHandlersOnly:
    """The server as `add_*Servicer_to_server` sees it: each service is served by its generic handler
    only. The generated code also registers every method with gRPC ("registered methods"), and the aio
    server then keeps one pending request task per registered method and waits on all of them
    (`asyncio.wait`) for every call it accepts: a cost per call that grows with the number of methods
    (41 on a registry), where a generic handler's look-up is one dictionary access."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_registered_method_handlers(self, service_name: str, method_handlers: Mapping[str, Any]) -> None:
        """Not registered: the generic handler added with them serves the same methods."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


GC_THRESHOLD_DEFAULT = 50_000


def tune_gc() -> None:
    """A request server allocates many short-lived objects (protobuf messages, futures) and few
    cycles: Python's default (a young-generation collection every 700 allocations) costs ~8 % of
    a settlement's CPU here. Everything imported so far is frozen out of the collector's scans and
    the young generation is collected every MEDAID_GC_THRESHOLD allocations (default 50,000;
    0 keeps Python's default). Cycles are still collected, just in larger, rarer sweeps."""
    threshold = int(os.environ.get("MEDAID_GC_THRESHOLD", GC_THRESHOLD_DEFAULT))
    if threshold > 0:
        gc.freeze()
        gc.set_threshold(threshold, 50, 100)


def install_uvloop() -> None:
    """uvloop where available; plain asyncio otherwise. Also tunes the GC (`tune_gc`)."""
    tune_gc()
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover - platform without uvloop
        pass


# The health service name that only says "the process is up" (a liveness probe's `service`); every
# other name, and "" (the whole server), also says "and its Redis answers".
LIVENESS = "liveness"


@dataclass(frozen=True)
class StoreCheck:
    """How the store watchdog pings: every `interval_s` (0: no watchdog), each ping within `timeout_s`."""

    interval_s: float = 0.5
    timeout_s: float = 0.5

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> StoreCheck:
        return cls(cfg["store_check_ms"] / 1000, cfg["store_check_timeout_ms"] / 1000)


async def set_health(health_servicer: Any, names: Iterable[str], serving: bool) -> None:
    """The one place the health statuses of `names` change (all but LIVENESS), and with them the
    process's `medaid_health_serving` gauge."""
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in names:
        await health_servicer.set(name, status)
    metrics.health_serving(serving)


class StoreWatch:
    """Pings the service's Redis and sets the health statuses of `names` to follow it."""

    def __init__(self, health_servicer: Any, names: list[str], store: Any, check: StoreCheck) -> None:
        self._health = health_servicer
        self._names = names
        self._store = store
        self._check = check
        self.serving: bool | None = None

    async def probe(self) -> bool:
        """One ping; sets the health statuses when the answer differs from the last one."""
        why = ""
        try:
            await redis_client.ping(self._store, self._check.timeout_s)
            up = True
        except Exception as exc:  # noqa: BLE001 - whatever the ping raises, Redis is not serving
            up, why = False, scrub(f"{type(exc).__name__}: {exc}")
        if up != self.serving:
            if up:
                log.info("store answers: health SERVING")
            else:
                log.error("store not answering: health NOT_SERVING", extra={"fields": {"error": why}})
            await set_health(self._health, self._names, up)
            self.serving = up
        return up

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._check.interval_s)
            await self.probe()


@dataclass
class Running:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    names: list[str] = field(default_factory=list)  # the health names that follow the store
    watch: asyncio.Task[None] | None = field(default=None)

    async def stop(self, grace_s: float) -> None:
        """Health NOT_SERVING everywhere, then a graceful stop (calls in flight get `grace_s`)."""
        if self.watch is not None:
            while not self.watch.done():  # cancelled again should a cancellation be lost inside it
                self.watch.cancel()
                await asyncio.wait({self.watch}, timeout=1.0)
        await set_health(self.health, self.names, False)
        await self.health.enter_graceful_shutdown()  # LIVENESS too, and no status changes after it
        await self.server.stop(grace_s)


async def start_server(
    register: Callable[[grpc.aio.Server], Iterable[str]],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    interceptors: Iterable[grpc.aio.ServerInterceptor] = (),
    tls: TlsConfig | None = None,
    store: Any = None,
    store_check: StoreCheck = StoreCheck(),
    max_receive_bytes: int = MAX_RECEIVE_BYTES,
) -> Running:
    """Create, register services (register returns their full names), bind and start.

    With `tls` the port speaks TLS only and requires a client certificate from the CA (mTLS);
    authorization is the caller's interceptors' business (medaid.common.authz). With `store` (the
    service's Redis client) health follows the store (see the module docstring); stop the server
    with `Running.stop`, which also ends the watchdog. `max_receive_bytes`: the largest request
    message it takes (RESOURCE_EXHAUSTED beyond)."""
    # Tracing and metrics outermost, so that they see the authorization interceptor's refusals too.
    options = [(k, max_receive_bytes if k == "grpc.max_receive_message_length" else v) for k, v in SERVER_OPTIONS]
    server = grpc.aio.server(interceptors=[ObserveInterceptor(), *interceptors], options=options)
    served = cast(grpc.aio.Server, _GenericHandlersOnly(server))
    names = list(register(served))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, served)
    reflection.enable_server_reflection(
        [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        served,
    )
    try:
        if tls is not None:
            bound = server.add_secure_port(f"{host}:{port}", tls.server_credentials())
        else:
            bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:  # gRPC's "Failed to bind to address …"
        raise config.cannot_listen(("host", "port"), host, port, exc) from None
    if bound == 0:
        raise config.cannot_listen(("host", "port"), host, port, RuntimeError("Failed to bind to address"))
    await server.start()
    await health_servicer.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
    running = Running(server, bound, health_servicer, [*names, ""])
    if store is not None and store_check.interval_s > 0:
        watch = StoreWatch(health_servicer, running.names, store, store_check)
        await watch.probe()  # the first status already says whether Redis answers
        running.watch = asyncio.create_task(watch.run())
    else:
        await set_health(health_servicer, running.names, True)
    return running


async def serve_forever(
    running: Running,
    *,
    grace_s: float,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    announce: dict[str, object] | None = None,
) -> None:
    """Print the bound port as one JSON line (for supervisors), then wait for SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(json.dumps({"event": "listening", "port": running.port, **(announce or {})}), flush=True)
    await stop.wait()
    log.info("shutting down", extra={"fields": {"grace_s": grace_s}})
    await running.stop(grace_s)
    if on_stop is not None:
        await on_stop()
    sys.stdout.flush()
