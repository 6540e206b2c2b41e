"""Prometheus metrics of one process, served on a port of its own (`--metrics-port`).

Every metric is named `medaid_…`; docs/operations.md lists them with their labels. The hot path
(thousands of settlements a second on two cores) pays a dictionary look-up and a lock per
observation: label children are created once and kept (`_children`), never looked up through
`labels()` again.

`--metrics-port off` (or a negative number) serves nothing and turns every recording below into a
no-op, so the bench can measure what the metrics cost (`python -m medaid.bench --metrics compare`).
Trace ids and log fields do not depend on it."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, Literal, get_args

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

from medaid.common import config, tracing

log = logging.getLogger("medaid.metrics")

# Seconds: from a cached replay (~0.2 ms) to a call that waits out a downstream deadline (10 s).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
REDIS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# The values a closed label takes, as types: mypy holds every recording to them, and
# docs/operations.md lists exactly these (tests/test_observability_deploy.py reads both).
Outcome = Literal["settled", "replayed", "refused", "unavailable", "failed"]
SettlePath = Literal["atomic", "staged"]
ReasonKind = Literal["helper", "wallet"]
Source = Literal["account", "wallet", "helper", "cash"]
TransferState = Literal["CREATED", "PENDING_ACCEPT", "COMPLETED", "RETURNING", "RETURNED", "FAILING", "FAILED"]
RegistryRecovery = Literal["settled", "reversed", "restored", "dropped", "deferred", "family", "lifecycle",
                           "wallet_refused", "pass_failed"]
WalletMaintenance = Literal["expired", "recovered", "deferred", "pass_failed"]
# The actions that are no work done: an entry left for a later pass (`deferred`; `wallet_refused`, the
# ones of those the wallet refused this registry's certificate for, counted again each pass) and a pass
# that raised. The dashboard's overview counts every other action as recovery finished.
UNFINISHED_ACTIONS = frozenset({"deferred", "wallet_refused", "pass_failed"})

RPC_REQUESTS = Counter("medaid_rpc_requests_total", "gRPC calls handled, by method, status code and ErrorInfo "
                       "reason ('' when the call succeeded or the refusal carried none)",
                       ["method", "code", "reason"])
RPC_DURATION = Histogram("medaid_rpc_duration_seconds", "gRPC call handling time on the server",
                         ["method", "code", "reason"], buckets=LATENCY_BUCKETS)
GATEWAY_MESSAGES = Counter("medaid_gateway_messages_total", "national messages answered by the gateway, by "
                           "infno, infcode and reason (the medaid_ext reason of an infcode -1)",
                           ["infno", "infcode", "reason"])
GATEWAY_DURATION = Histogram("medaid_gateway_duration_seconds", "gateway answer time per message",
                             ["infno", "infcode"], buckets=LATENCY_BUCKETS)
SETTLEMENTS = Counter("medaid_settlements_total", "settlement items a registry answered: outcome settled | "
                      "replayed | refused | unavailable | failed; path atomic | staged (settled only); reason "
                      "the refusal's", ["outcome", "path", "reason"])
SETTLEMENT_REASONS = Counter("medaid_settlement_reasons_total", "settled items by why the helper or the wallet "
                             "paid what it paid (helper_reason / wallet_reason of the record)",
                             ["kind", "reason"])
SETTLED_FEN = Counter("medaid_settled_fen_total", "money settled, in fen, by who paid it: account | wallet | "
                      "helper | cash", ["source"])
REVERSED_FEN = Counter("medaid_reversed_fen_total", "money of settlements reversed, in fen, by the source it went "
                       "back to: account | wallet | helper | cash (net settled = settled - reversed)", ["source"])
TRANSFERS = Counter("medaid_wallet_transfers_total", "wallet transfers entering a state", ["state"])
# metric name -> label -> the values it takes (besides "" where a recording leaves it empty)
CLOSED_LABELS: dict[str, dict[str, frozenset[str]]] = {
    "medaid_settlements_total": {"outcome": frozenset(get_args(Outcome)), "path": frozenset(get_args(SettlePath))},
    "medaid_settlement_reasons_total": {"kind": frozenset(get_args(ReasonKind))},
    "medaid_settled_fen_total": {"source": frozenset(get_args(Source))},
    "medaid_reversed_fen_total": {"source": frozenset(get_args(Source))},
    "medaid_wallet_transfers_total": {"state": frozenset(get_args(TransferState))},
    "medaid_recovery_actions_total": {"action": frozenset(get_args(RegistryRecovery) + get_args(WalletMaintenance))},
}

# A gauge without labels reads 0 wherever it is registered: these belong to the wallet alone, registered
# by its `setup` (see OWN), so that `max(…)` over them has no series while every wallet is down.
TRANSFERS_IN_FLIGHT = Gauge("medaid_wallet_transfers_in_flight", "transfers not yet COMPLETED, RETURNED or "
                            "FAILED (read from the wallet's in-flight index at each maintenance pass)",
                            registry=None)
MONEY_IN_FLIGHT = Gauge("medaid_wallet_money_in_flight_fen", "money of the transfers in flight, in fen",
                        registry=None)
# Money that should have left the index by now: a transfer past its accept deadline is sent back by the
# next pass, so this stays above 0 only while transfers are stuck (docs/operations.md, the alerts).
OVERDUE_IN_FLIGHT = Gauge("medaid_wallet_overdue_in_flight_fen", "money of the transfers in flight past their "
                          "accept deadline (the next maintenance pass sends them back), in fen", registry=None)
# 1 while the process's gRPC health is SERVING, 0 while NOT_SERVING (its Redis does not answer, or it is
# stopping): set with the health statuses (common/server.py `set_health`), so an alert asks for an
# outage that lasts, not for Redis errors one reconnect raises. The gRPC services' alone (OWN).
HEALTH_SERVING = Gauge("medaid_health_serving", "1 while the service's gRPC health is SERVING, 0 while "
                       "NOT_SERVING (its Redis does not answer, or it is stopping)", registry=None)
# What a registry's recovery index holds, read at each recovery pass (every replica of a province reads the
# same index): half-done flows, and when the oldest was written, whatever keeps it there (a lock held, a
# downstream refusing, a pass that never runs). A time, not an age: a pass that hangs stops setting it, and
# an age would freeze with it; `time() - …` keeps growing. The registries' alone (OWN).
RECOVERY_ENTRIES = Gauge("medaid_recovery_entries", "entries in the registry's recovery index: flows in "
                         "progress or left half done (read at each recovery pass)", registry=None)
RECOVERY_OLDEST = Gauge("medaid_recovery_oldest_entry_timestamp_seconds", "when the oldest entry of the "
                        "registry's recovery index was written, unix seconds (0 when it is empty)", registry=None)
RECOVERY = Counter("medaid_recovery_actions_total", "what recovery and maintenance passes did, by action",
                   ["action"])
REDIS_ROUNDTRIP = Histogram("medaid_redis_roundtrip_seconds", "Redis round trips of the service's client "
                            "(a command or a whole pipeline)", buckets=REDIS_BUCKETS)
REDIS_ERRORS = Counter("medaid_redis_errors_total", "Redis round trips that failed, by exception type", ["error"])
BATCH_SIZE = Histogram("medaid_batch_items", "items per batch call sent downstream, by batcher", ["batcher"],
                       buckets=BATCH_BUCKETS)

# The metrics some services alone export (by the name they give `setup`, up to a "-": registry-13 is a
# registry); every other metric is registered on import and exports no series until recorded, except the
# Redis round-trip histogram.
OWN: dict[str, tuple[Any, ...]] = {"wallet": (TRANSFERS_IN_FLIGHT, MONEY_IN_FLIGHT, OVERDUE_IN_FLIGHT, HEALTH_SERVING),
                                   "registry": (HEALTH_SERVING, RECOVERY_ENTRIES, RECOVERY_OLDEST),
                                   "router": (HEALTH_SERVING,)}

_enabled = True
_children: dict[tuple[Any, ...], Any] = {}


def enabled() -> bool:
    return _enabled


def disable() -> None:
    """Every recording becomes a no-op (the bench's `--metrics off`)."""
    global _enabled
    _enabled = False


def _child(metric: Any, *labels: str) -> Any:
    key = (metric, *labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


# --- recording (each a no-op when disabled) ------------------------------------------------------

def rpc(method: str, code: str, reason: str, seconds: float) -> None:
    if _enabled:
        _child(RPC_REQUESTS, method, code, reason).inc()
        _child(RPC_DURATION, method, code, reason).observe(seconds)


def gateway_message(infno: str, infcode: int, reason: str, seconds: float) -> None:
    if _enabled:
        code = str(infcode)
        _child(GATEWAY_MESSAGES, infno, code, reason).inc()
        _child(GATEWAY_DURATION, infno, code).observe(seconds)


def settled(path: SettlePath, acct: int, wallet: int, helpers: int, cash: int, helper_reason: str,
            wallet_reason: str) -> None:
    if not _enabled:
        return
    _child(SETTLEMENTS, "settled", path, "").inc()
    _money(SETTLED_FEN, acct, wallet, helpers, cash)
    if helper_reason:
        _child(SETTLEMENT_REASONS, "helper", helper_reason).inc()
    if wallet_reason:
        _child(SETTLEMENT_REASONS, "wallet", wallet_reason).inc()


def reversed_money(acct: int, wallet: int, helpers: int, cash: int) -> None:
    """A settlement's money, by source, once its reversal is done (the first time only)."""
    if _enabled:
        _money(REVERSED_FEN, acct, wallet, helpers, cash)


def restored_money(acct: int, wallet: int, helpers: int, cash: int) -> None:
    """An undone reversal (2601): its settlement's money counts as settled again."""
    if _enabled:
        _money(SETTLED_FEN, acct, wallet, helpers, cash)


def _money(metric: Counter, acct: int, wallet: int, helpers: int, cash: int) -> None:
    by_source: tuple[tuple[Source, int], ...] = (("account", acct), ("wallet", wallet), ("helper", helpers),
                                                 ("cash", cash))
    for source, fen in by_source:
        if fen:
            _child(metric, source).inc(fen)


def settlement_outcome(outcome: Outcome, reason: str = "") -> None:
    if _enabled:
        _child(SETTLEMENTS, outcome, "", reason).inc()


def transfer(state: TransferState) -> None:
    if _enabled:
        _child(TRANSFERS, state).inc()


def in_flight(count: int, fen: int, overdue_fen: int) -> None:
    if _enabled:
        TRANSFERS_IN_FLIGHT.set(count)
        MONEY_IN_FLIGHT.set(fen)
        OVERDUE_IN_FLIGHT.set(overdue_fen)


def health_serving(serving: bool) -> None:
    if _enabled:
        HEALTH_SERVING.set(1 if serving else 0)


def recovery_index(entries: int, oldest_ms: float) -> None:
    """What a registry's recovery index holds as a pass reads it: its entries, when the oldest one was
    written (unix ms; 0 when there is none)."""
    if _enabled:
        RECOVERY_ENTRIES.set(entries)
        RECOVERY_OLDEST.set(oldest_ms / 1000)


def recovery(counts: Mapping[RegistryRecovery, int]) -> None:
    """What a registry's recovery pass did (or `pass_failed`)."""
    _actions(counts.items())


def maintenance(counts: Mapping[WalletMaintenance, int]) -> None:
    """What a wallet's maintenance pass did (or `pass_failed`): the same metric as `recovery`."""
    _actions(counts.items())


def _actions(counts: Iterable[tuple[str, int]]) -> None:
    if _enabled:
        for action, n in counts:
            if n:
                _child(RECOVERY, action).inc(n)


def redis_roundtrip(seconds: float) -> None:
    if _enabled:
        REDIS_ROUNDTRIP.observe(seconds)


def redis_error(exc: BaseException) -> None:
    if _enabled:
        _child(REDIS_ERRORS, type(exc).__name__).inc()


def batch(batcher: str, items: int) -> None:
    if _enabled:
        _child(BATCH_SIZE, batcher).observe(items)


# --- start-up --------------------------------------------------------------------------------------

def port_of(value: str) -> int | None:
    """The metrics port an option value asks for: None for off (`off`, `none`, a negative number)."""
    value = value.strip().lower()
    if value in ("off", "none", "false", "no", ""):
        return None
    try:
        port = int(value)
    except ValueError:
        raise ValueError(f"want a port number, 0 (a free one) or 'off'; got {value!r}") from None
    if port > 65535:
        raise ValueError(f"{port} is not a port")
    return None if port < 0 else port


def setup(cfg: Mapping[str, str], service: str = "") -> dict[str, object]:
    """At a service's start: the metrics HTTP server on --metrics-host (default --host) with the
    service's own metrics (OWN) besides the common ones, and the edge's trace sampling ratio. Returns
    what the `listening` line announces: {"metrics_port": N} (0 when off)."""
    tracing.set_sample_ratio(float(cfg.get("trace_sample_ratio") or 0))
    port = port_of(cfg.get("metrics_port", "0"))
    if port is None:
        disable()
        return {"metrics_port": 0}
    for collector in OWN.get(service.partition("-")[0], ()):
        REGISTRY.register(collector)
    host = cfg.get("metrics_host") or cfg.get("host") or "127.0.0.1"
    try:
        server, _ = start_http_server(port, addr=host, registry=REGISTRY)
    except OSError as exc:  # socket.gaierror too: a host that does not resolve
        raise config.cannot_listen(("metrics_host" if cfg.get("metrics_host") else "host", "metrics_port"),
                                   host, port, exc) from None
    bound = int(server.server_port)
    log.info("metrics served", extra={"fields": {"metrics_port": bound, "path": "/metrics"}})
    return {"metrics_port": bound}
