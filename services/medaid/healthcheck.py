"""Container health check (docker-compose `healthcheck`, Docker HEALTHCHECK):

    python -m medaid.healthcheck grpc 127.0.0.1:7000    # grpc.health.v1 Check("") answers SERVING
    python -m medaid.healthcheck http 127.0.0.1:8080    # the gateway: GET /healthz answers 200

Exit status 0 when healthy, 1 otherwise (with the reason on stderr), 2 with the usage line for
arguments it cannot use (a timeout that is no number of seconds above 0). Kubernetes needs none of this:
its probes speak gRPC health (`grpc: port`) and HTTP themselves.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2

from medaid.common.rpc import health_check


def grpc_serving(address: str, timeout: float) -> tuple[bool, str]:
    with grpc.insecure_channel(address) as ch:
        try:
            resp = health_check(ch)(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError as exc:
            return False, f"{exc.code().name}: {exc.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    return resp.status == health_pb2.HealthCheckResponse.SERVING, status


def http_ok(address: str, timeout: float) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(f"http://{address}/healthz", timeout=timeout) as resp:
            return resp.status == 200, f"HTTP {resp.status}"
    except (urllib.error.URLError, OSError) as exc:
        return False, str(exc)


def _timeout(text: str) -> float | None:
    """Seconds the check waits: a number above 0 (None: not one)."""
    try:
        seconds = float(text)
    except ValueError:
        return None
    return seconds if 0 < seconds < float("inf") else None


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    timeout = _timeout(args[2]) if len(args) == 3 else 2.0
    if len(args) not in (2, 3) or args[0] not in ("grpc", "http") or timeout is None:
        if timeout is None:
            print(f"timeout_s {args[2]!r} is not a number of seconds above 0", file=sys.stderr)
        print("usage: python -m medaid.healthcheck grpc|http host:port [timeout_s]", file=sys.stderr)
        return 2
    ok, why = (grpc_serving if args[0] == "grpc" else http_ok)(args[1], timeout)
    if not ok:
        print(f"unhealthy: {args[1]}: {why}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
