"""The product's processes one by one: their names (a service, its replicas), starting one
(`python -m <module>` that announces its port), watching its health and stopping it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2

from medaid.common import rpc, tls

# Services that speak HTTP (health: GET /healthz) rather than gRPC (grpc.health.v1).
HTTP_SERVICES = frozenset({"gateway", "console"})
GATEWAY_PATH = "/fsi/api/rsfComIfsService/callService"  # medaid.gateway.web.CALL_PATH


def protocol_of(name: str) -> str:
    return "http" if service_of(name) in HTTP_SERVICES else "grpc"


def service_of(instance: str) -> str:
    """'registry-13#2' -> 'registry-13': the service a replica belongs to (a lone instance is named as its service)."""
    return instance.partition("#")[0]


def instance_names(services: Sequence[str], replicas: Mapping[str, int] | None = None) -> list[str]:
    """Process names: a service with one replica keeps its name, N > 1 replicas are '<service>#1' … '#N'."""
    counts = dict(replicas or {})
    unknown = sorted(set(counts) - set(services))
    if unknown:
        raise ValueError(f"replicas for services that are not started: {unknown}")
    out: list[str] = []
    for svc in services:
        n = int(counts.get(svc, 1))
        if n < 1:
            raise ValueError(f"{svc}: replicas must be at least 1, got {n}")
        out += [svc] if n == 1 else [f"{svc}#{i}" for i in range(1, n + 1)]
    return out


class PortTaken(RuntimeError):
    """The process exited because its port was taken: chosen free, then bound by someone else (another
    test process, say) before this one bound it."""


# What a service that could not bind its port writes before it exits: gRPC's words, then the OS's
# (EADDRINUSE) for the HTTP ones.
_PORT_TAKEN_WORDS = ("Failed to bind to address", "Address already in use")


def http_healthy(address: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}/healthz", timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class ServiceProcess:
    name: str
    proc: subprocess.Popen[str]
    port: int
    log_lines: list[str] = field(default_factory=list)
    protocol: str = "grpc"
    tls: tls.TlsConfig | None = None  # health checks over mTLS (as operator) when the topology runs TLS
    metrics_port: int = 0  # its Prometheus /metrics endpoint (0: metrics off)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def healthy(self, timeout: float = 2.0) -> bool:
        if self.protocol == "http":
            return http_healthy(self.address, timeout)
        with rpc.sync_channel(self.address, tls=self.tls) as ch:
            check = rpc.health_check(ch)
            try:
                resp = check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
            except grpc.RpcError:
                return False
            return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def kill(self) -> None:
        """kill -9, for crash tests."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _drain(stream: Iterable[str], sink: list[str], echo: bool) -> None:
    for line in stream:
        sink.append(line.rstrip("\n"))
        if len(sink) > 2000:
            del sink[:1000]
        if echo:
            sys.stderr.write(line)


def start_service(
    name: str,
    module: str,
    args: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    echo_logs: bool = False,
    timeout: float = 30.0,
) -> ServiceProcess:
    """Run `python -m module args…`; wait for its one-line JSON announcement of the bound port."""
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    logs: list[str] = []
    assert proc.stderr is not None and proc.stdout is not None
    errors = threading.Thread(target=_drain, args=(proc.stderr, logs, echo_logs), daemon=True)
    errors.start()
    deadline = time.monotonic() + timeout
    port = metrics_port = 0
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                errors.join(5)  # the rest of its stderr, which says why
                why = "\n".join(logs[-20:])
                taken = any(w in why for w in _PORT_TAKEN_WORDS)
                raise (PortTaken if taken else RuntimeError)(f"{name} exited with {proc.returncode}: {why}")
            continue
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if msg.get("event") == "listening":
            port, metrics_port = int(msg["port"]), int(msg.get("metrics_port") or 0)
            break
    if not port:
        proc.kill()
        raise RuntimeError(f"{name} did not announce its port in {timeout}s")
    threading.Thread(target=_drain, args=(proc.stdout, logs, False), daemon=True).start()
    return ServiceProcess(name, proc, port, logs, metrics_port=metrics_port)
