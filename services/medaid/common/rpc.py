"""Client side of service-to-service calls: long-lived channels, deadlines on every call, and a
retry policy limited to UNAVAILABLE (safe because every mutating call is idempotent) and throttled
during an outage, and client-side round-robin over a service's replicas.

An address names one service: `host:port`; a list of its replicas `10.0.0.5:7001|10.0.0.6:7001`
(`,` works as well where the option names a single service, e.g. `--wallet`), which becomes the
gRPC target `ipv4:10.0.0.5:7001,10.0.0.6:7001`; a DNS name that resolves to every replica
(`registry-13:7000`, a Kubernetes headless Service, a scaled compose service); or any gRPC target
URI (`dns:///…`, `ipv4:…`, `unix:…`) unchanged. Channels balance calls round-robin over whatever
the target resolves to (a single IP:port, one process, keeps pick_first), and a retry of an
UNAVAILABLE call may land on another replica."""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import re
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import cast, overload

import grpc
from grpc_health.v1 import health_pb2

from medaid.common.tls import TlsConfig
from medaid.common.tracing import TracedChannel

DEFAULT_DEADLINE_S = 3.0
# How long before its caller's deadline a service stops waiting for the services it calls, so that
# its own answer (UNAVAILABLE with the reason: which downstream did not answer) still reaches the
# caller in time instead of the caller's bare DEADLINE_EXCEEDED.
DEADLINE_MARGIN_S = 0.2
# The shortest timeout a downstream call is given once the budget is spent: it fails at once.
_MIN_TIMEOUT_S = 0.001

# The monotonic time by which the call being served must have its downstream answers (None: no limit).
_budget_end: ContextVar[float | None] = ContextVar("medaid_budget_end", default=None)


@contextlib.contextmanager
def budget(caller_remaining_s: float | None) -> Iterator[None]:
    """Within it, the call being served (whose caller allows it `caller_remaining_s` more seconds:
    `ServicerContext.time_remaining()`, None when the caller set no deadline) gives every downstream
    call a timeout of `time_left(...)`, which ends DEADLINE_MARGIN_S before the caller's deadline."""
    end = None if caller_remaining_s is None else time.monotonic() + caller_remaining_s - DEADLINE_MARGIN_S
    token = _budget_end.set(end)
    try:
        yield
    finally:
        _budget_end.reset(token)


def time_left(deadline_s: float) -> float:
    """The timeout of a downstream call whose own deadline is `deadline_s`, cut so that it ends before
    the caller of the call being served gives up (`budget`); each call of several in a row gets its own
    `deadline_s`, all within the caller's deadline."""
    end = _budget_end.get()
    if end is None:
        return deadline_s
    return max(min(deadline_s, end - time.monotonic()), _MIN_TIMEOUT_S)


# How long before its caller's deadline a service stops waiting for its own Redis: later than for the
# services it calls (DEADLINE_MARGIN_S), so that the steps recording what a downstream that did not
# answer left behind still run, and early enough that STORE_UNAVAILABLE reaches the caller in time.
STORE_MARGIN_S = DEADLINE_MARGIN_S / 2


def store_time_left(timeout_s: float | None) -> float | None:
    """The timeout of one Redis command (or pipeline) whose own limit is `timeout_s` (None: none), when
    the call being served (`budget`) leaves it less: what is left until STORE_MARGIN_S before that
    call's caller gives up. None when the command's own limit stands (no budget, or more left than
    it): the store clients then add nothing to the command's way (common/store_deadline.py)."""
    end = _budget_end.get()
    if end is None:
        return None
    left = end + (DEADLINE_MARGIN_S - STORE_MARGIN_S) - time.monotonic()
    if timeout_s is not None and left >= timeout_s:
        return None
    return max(left, _MIN_TIMEOUT_S)


REPLICA_SEPARATOR = "|"
_TARGET_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:", "xds:")


def _is_target_uri(address: str) -> bool:
    return address.startswith(_TARGET_SCHEMES)


def replicas(address: str) -> list[str]:
    """The replica addresses an address list names ('a:1|b:2' -> ['a:1', 'b:2']); a target URI is one entry."""
    address = address.strip()
    if _is_target_uri(address):
        return [address]
    return [part.strip() for part in re.split(r"[|,]", address) if part.strip()]


def _ip_family(host_port: str) -> int:
    host, sep, port = host_port.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"bad replica address {host_port!r}: want host:port")
    if not 0 < int(port) < 65536:  # gRPC would wrap it (70000 → 4464) and call whatever listens there
        raise ValueError(f"bad replica address {host_port!r}: port {port} is not 1-65535")
    try:
        ip = ipaddress.ip_address(host[1:-1] if host.startswith("[") and host.endswith("]") else host)
    except ValueError:
        return 0
    return ip.version


def target(address: str) -> str:
    """The gRPC target for an address or an address list (see the module docstring)."""
    parts = replicas(address)
    if not parts:
        raise ValueError("empty service address")
    if len(parts) == 1:
        if not _is_target_uri(parts[0]):
            _ip_family(parts[0])  # checks host:port
        return parts[0]
    families = {_ip_family(p) for p in parts}
    if families == {4}:
        return "ipv4:" + ",".join(parts)
    if families == {6}:
        return "ipv6:" + ",".join(parts)
    raise ValueError(f"replica list {address!r} must be all IPv4 or all IPv6 addresses; for a DNS name that "
                     "resolves to every replica give that one name (host:port or dns:///host:port)")


def balanced(address: str) -> bool:
    """Whether the address may name several processes (a replica list, a DNS name, a target URI): then
    calls go round-robin. A single IP:port is one process and keeps gRPC's default (pick_first). Either
    way, calls made while the process is down put the channel in reconnect backoff, so one restarted
    on that port is reached once the backoff (at most about a second: `channel`) has run; a caller
    that must not fail meanwhile waits for it (wait_for_ready, as the router does for registries)."""
    parts = replicas(address)
    return len(parts) != 1 or _is_target_uri(parts[0]) or _ip_family(parts[0]) == 0


# gRPC retry throttling (gRFC A6), per server a channel names: each failed attempt costs a token, each
# success earns back tokenRatio, and retries stop while no more than half of maxTokens are left. A burst
# of failures (a replica dying with calls in flight) is still retried; during an outage each call is
# tried once after the first few, so the load on a failing service does not grow fourfold.
RETRY_THROTTLING = {"maxTokens": 20, "tokenRatio": 0.1}


def service_config(service_names: list[str], *, round_robin: bool = True) -> str:
    return json.dumps({
        **({"loadBalancingConfig": [{"round_robin": {}}]} if round_robin else {}),
        "retryThrottling": RETRY_THROTTLING,
        "methodConfig": [{
            "name": [{"service": name} for name in service_names],
            "retryPolicy": {
                "maxAttempts": 4,
                "initialBackoff": "0.05s",
                "maxBackoff": "0.5s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }]
    })


# A peer that stops answering while its connection stays open (a hung or SIGSTOPped process, a
# stalled host: the kernel keeps the TCP connection, so nothing looks wrong) is found by HTTP/2 PING:
# after KEEPALIVE_TIME_MS without a byte from it, the channel pings it, and a ping not acknowledged
# within KEEPALIVE_TIMEOUT_MS closes that connection. Its calls in flight fail UNAVAILABLE and are
# retried by the retry policy on another replica (within their deadline, same request id), and the
# replica is left out of round-robin until it completes a new connection's HTTP/2 handshake, i.e.
# answers again. The ping is answered by gRPC's own threads, not by the service's event loop, so a
# busy replica is not taken for a hung one. gRPC times a keepalive ping out by `grpc.http2.ping_timeout_ms`
# (60 s by default), hence both. Pings go out only while calls are in flight, at most every
# KEEPALIVE_TIME_MS per connection and none while answers arrive; servers accept them (server.py:
# SERVER_OPTIONS). Idle connections are not pinged: a replica frozen while idle is found by the first
# call that picks it, within the same 2 s. (Pinging idle connections as well would also fail the
# reconnection attempts to a frozen replica, so that, every replica frozen, calls that do not wait
# for a connection would fail at once instead of at their deadline.)
KEEPALIVE_TIME_MS = 1_000
KEEPALIVE_TIMEOUT_MS = 1_000
KEEPALIVE_OPTIONS: list[tuple[str, object]] = [
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.http2.max_pings_without_data", 0),  # a silent peer is pinged however long it stays silent
]
# The shortest interval between a client's pings that servers accept (gRPC answers pings more frequent
# than its `min_ping_interval_without_data_ms` three times with GOAWAY "too_many_pings").
MIN_PING_INTERVAL_MS = KEEPALIVE_TIME_MS // 2


# This process's TLS identity for the channels it opens (None: plaintext); set once at start-up by
# the service's main (see medaid.common.tls), so every channel below uses mTLS when configured.
_tls: TlsConfig | None = None


def set_tls(config: TlsConfig | None) -> None:
    global _tls
    _tls = config


def get_tls() -> TlsConfig | None:
    return _tls


def _tls_options(tls: TlsConfig, address: str, service_names: list[str] | None = None) -> list[tuple[str, str]]:
    """The name checked in server certificates. One address: its host (gRPC's default). A replica list
    (`a:1|b:2`) has no single host, so: --tls-server-name if set, else the service's identity (every
    certificate of `make certs` carries its identity as a SAN: medaid.registry.v1.… → `registry`), else
    the first replica's host."""
    if tls.server_name:
        return tls.channel_options()
    parts = replicas(address)
    if len(parts) < 2:
        return []
    roles = [n.split(".")[1] for n in service_names or [] if n.startswith("medaid.") and n.count(".") >= 2]
    host = parts[0].rpartition(":")[0].strip("[]")
    return [("grpc.ssl_target_name_override", roles[0] if roles else host)]


def channel(address: str, service_names: list[str], *, tls: TlsConfig | None = None,
            max_receive_bytes: int = 0) -> grpc.aio.Channel:
    """`tls` None: this process's configuration (set_tls), which is plaintext unless configured.
    `max_receive_bytes`: the largest answer it takes, when more than gRPC's 4 MiB default."""
    tls = tls or _tls
    options: list[tuple[str, object]] = [
        ("grpc.service_config", service_config(service_names, round_robin=balanced(address))),
        ("grpc.enable_retries", 1),
        *KEEPALIVE_OPTIONS,
        # A peer that comes back is connected again within about a second (gRPC's default backoff
        # starts at 1 s and grows to 120 s): calls that wait for it (wait_for_ready, within their
        # deadline) reach it at once, and others fail fast for no longer than that.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 1_000),
    ]
    if max_receive_bytes:
        options.append(("grpc.max_receive_message_length", max_receive_bytes))
    if tls is not None:
        ch = grpc.aio.secure_channel(target(address), tls.channel_credentials(),
                                     options=[*options, *_tls_options(tls, address, service_names)])
    else:
        ch = grpc.aio.insecure_channel(target(address), options=options)
    # Every call on it carries the current trace context (medaid.common.tracing); it is used as a channel.
    return cast(grpc.aio.Channel, TracedChannel(ch))


def plain_channel(address: str, *, tls: TlsConfig | None = None,
                  options: list[tuple[str, object]] | None = None) -> grpc.aio.Channel:
    """A channel without retry configuration (health checks, benchmarks), TLS as for `channel`."""
    tls = tls or _tls
    opts = list(options or [])
    if tls is not None:
        return grpc.aio.secure_channel(target(address), tls.channel_credentials(),
                                       options=[*opts, *_tls_options(tls, address)])
    return grpc.aio.insecure_channel(target(address), options=opts)


def sync_channel(address: str, *, tls: TlsConfig | None = None) -> grpc.Channel:
    """A blocking channel (CLI, topology health checks), TLS as for `channel`."""
    tls = tls or _tls
    if tls is not None:
        return grpc.secure_channel(target(address), tls.channel_credentials(), options=_tls_options(tls, address))
    return grpc.insecure_channel(target(address))


@overload
def health_check(channel: grpc.aio.Channel) -> grpc.aio.UnaryUnaryMultiCallable[
        health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]: ...
@overload
def health_check(channel: grpc.Channel) -> grpc.UnaryUnaryMultiCallable[
        health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]: ...
def health_check(channel: grpc.Channel | grpc.aio.Channel) -> object:
    """The standard health service's Check on `channel`: `HealthStub(channel).Check`, typed (the
    grpcio-health-checking stubs do not declare the stub's methods)."""
    return channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )


def derived_id(prefix: str, *parts: str) -> str:
    """A deterministic request id for a step derived from other ids (fits the 64-char limit)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:40]
    return f"{prefix}-{digest}"
