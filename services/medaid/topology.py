"""Start and stop the product's processes (redis-server, one registry per province …) for
`make run`, demos and end-to-end tests. Each service is its own OS process on a free port."""

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from medaid.common.redis_server import RedisServer, free_port

PROVINCES = ("13", "11", "62")
# Services that speak HTTP (health: GET /healthz) rather than gRPC (grpc.health.v1).
HTTP_SERVICES = frozenset({"gateway"})
GATEWAY_PATH = "/fsi/api/rsfComIfsService/callService"  # medaid.gateway.web.CALL_PATH


def protocol_of(name: str) -> str:
    return "http" if name in HTTP_SERVICES else "grpc"


def _http_healthy(address: str, timeout: float) -> bool:
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

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def healthy(self, timeout: float = 2.0) -> bool:
        if self.protocol == "http":
            return _http_healthy(self.address, timeout)
        with grpc.insecure_channel(self.address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
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


def _drain(stream: object, sink: list[str], echo: bool) -> None:
    for line in stream:  # type: ignore[attr-defined]
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
    threading.Thread(target=_drain, args=(proc.stderr, logs, echo_logs), daemon=True).start()
    deadline = time.monotonic() + timeout
    port = 0
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}: " + "\n".join(logs[-20:]))
            continue
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if msg.get("event") == "listening":
            port = int(msg["port"])
            break
    if not port:
        proc.kill()
        raise RuntimeError(f"{name} did not announce its port in {timeout}s")
    threading.Thread(target=_drain, args=(proc.stdout, logs, False), daemon=True).start()
    return ServiceProcess(name, proc, port, logs)


DEMO_CLOCK = "start:2026-11-22T10:00:00+08:00"


@dataclass
class Topology:
    """Redis + one registry per province + the national wallet, each its own process.

    Ports are chosen up front (free loopback ports) so that registries and the wallet can name
    each other; a service can be killed and restarted on the same port and Redis."""

    redis: RedisServer
    ports: dict[str, int]
    clock: str
    wallet_env: dict[str, str] = field(default_factory=dict)
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    echo_logs: bool = False

    @classmethod
    def start(cls, provinces: Sequence[str] = PROVINCES, *, wallet: bool = True, router: bool = True,
              gateway: bool = True,
              clock: str = "system", echo_logs: bool = False, recovery_grace_ms: int = 2000,
              wallet_policy: str = "", log_level: str = "INFO") -> Topology:
        redis = RedisServer(appendfsync="always").start()
        names = [f"registry-{p}" for p in provinces] + (["wallet"] if wallet else []) + (["router"] if router else [])
        names += ["gateway"] if router and gateway else []
        topo = cls(redis, {n: free_port() for n in names}, clock, echo_logs=echo_logs)
        topo.recovery_grace_ms = recovery_grace_ms
        topo.wallet_policy = wallet_policy
        topo.log_level = log_level
        try:
            for name in names:
                topo.start_one(name)
        except Exception:
            topo.stop()
            raise
        return topo

    recovery_grace_ms: int = 2000
    wallet_policy: str = ""
    log_level: str = "INFO"

    def args_for(self, name: str) -> tuple[str, list[str]]:
        common = ["--port", str(self.ports[name]), "--redis-url", self.redis.url, "--clock", self.clock,
                  "--log-level", self.log_level]
        regs = ",".join(f"{n.split('-')[1]}=127.0.0.1:{p}" for n, p in self.ports.items()
                        if n.startswith("registry-"))
        if name == "gateway":
            return "medaid.gateway", [*common, "--router", f"127.0.0.1:{self.ports['router']}"]
        if name == "router":
            args = [*common, "--registries", regs]
            if "wallet" in self.ports:
                args += ["--wallet", f"127.0.0.1:{self.ports['wallet']}"]
            return "medaid.router", args
        if name == "wallet":
            extra = ["--policy-file", self.wallet_policy] if self.wallet_policy else []
            return "medaid.wallet", [*common, "--registries", regs, "--maintenance-interval-ms", "200",
                                     "--recovery-grace-ms", str(self.recovery_grace_ms), *extra]
        args = [*common, "--province", name.split("-")[1]]
        if "wallet" in self.ports:
            args += ["--wallet", f"127.0.0.1:{self.ports['wallet']}"]
        return "medaid.registry", args

    def start_one(self, name: str, env: dict[str, str] | None = None) -> ServiceProcess:
        module, args = self.args_for(name)
        svc = start_service(name, module, args, env=env, echo_logs=self.echo_logs)
        svc.protocol = protocol_of(name)
        self.services[name] = svc
        return svc

    def restart(self, name: str, env: dict[str, str] | None = None) -> ServiceProcess:
        old = self.services.get(name)
        if old is not None:
            old.stop()
        return self.start_one(name, env)

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    def stop(self) -> dict[str, int]:
        codes = {name: svc.stop() for name, svc in reversed(list(self.services.items()))}
        self.redis.cleanup()
        return codes


# --- `make up` / `make down`: a topology that outlives the command that started it -----------

STATE_FILE = Path("build/run/topology.json")


def _wait_healthy(address: str, timeout: float = 30.0, protocol: str = "grpc") -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if protocol == "http":
            if _http_healthy(address, 0.5):
                return True
            time.sleep(0.1)
            continue
        with grpc.insecure_channel(address) as ch:
            try:
                resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass
        time.sleep(0.1)
    return False


def up(clock: str = "system") -> dict[str, object]:
    run_dir = STATE_FILE.parent
    run_dir.mkdir(parents=True, exist_ok=True)
    if STATE_FILE.exists():
        raise SystemExit(f"{STATE_FILE} exists: run `make down` first")
    redis = RedisServer(appendfsync="always", data_dir=str(run_dir / "redis"), detached=True)
    Path(redis.data_dir).mkdir(parents=True, exist_ok=True)
    redis.start()
    names = [f"registry-{p}" for p in PROVINCES] + ["wallet", "router", "gateway"]
    topo = Topology(redis, {n: free_port() for n in names}, clock)
    pids: dict[str, int] = {"redis": redis.proc.pid if redis.proc else 0}
    for name in names:
        module, args = topo.args_for(name)
        log = open(run_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it open
        proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=log, stderr=log,
                                start_new_session=True)
        pids[name] = proc.pid
        if not _wait_healthy(topo.address(name), protocol=protocol_of(name)):
            raise SystemExit(f"{name} did not become healthy; see {run_dir / (name + '.log')}")
    state = {"redis_url": redis.url, "redis_port": redis.port,
             "addresses": {n: topo.address(n) for n in names}, "pids": pids, "clock": clock}
    STATE_FILE.write_text(json.dumps(state, indent=2))
    return state


def down() -> list[str]:
    if not STATE_FILE.exists():
        return []
    state = json.loads(STATE_FILE.read_text())
    stopped = []
    order = [n for n in state["pids"] if n != "redis"][::-1] + ["redis"]
    for name in order:
        pid = int(state["pids"].get(name, 0))
        if not pid:
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
        stopped.append(name)
    STATE_FILE.unlink()
    return stopped


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m medaid.topology")
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--clock", default=os.environ.get("MEDAID_CLOCK", "system"))
    args = parser.parse_args(argv)
    if args.command == "up":
        state = up(args.clock)
        for name, address in state["addresses"].items():  # type: ignore[union-attr]
            print(f"{name:<12} {address}" + (f"  (POST http://{address}{GATEWAY_PATH})" if name == "gateway" else ""))
        print(f"redis        {state['redis_url']}\nstate in {STATE_FILE}; logs in {STATE_FILE.parent}/; "
              "`make down` stops everything")
    elif args.command == "down":
        print("stopped: " + (", ".join(down()) or "nothing was running"))
    else:
        if not STATE_FILE.exists():
            print("not running")
            return 1
        state = json.loads(STATE_FILE.read_text())
        for name, address in state["addresses"].items():
            print(f"{name:<12} {address:<22} {'SERVING' if _wait_healthy(address, 1.0, protocol_of(name)) else 'DOWN'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
