"""`make up` / `make down` / `make status` (`python -m medaid.topology up|down|status`): a topology
that outlives the command that started it, its processes and addresses in a state file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from medaid.common import config, rpc, tls
from medaid.common.clock import from_spec as clock_from_spec
from medaid.common.redis_server import RedisServer, free_port
from medaid.topology.launch import GATEWAY_PATH, PROVINCES, Topology, write_console_operators
from medaid.topology.processes import http_healthy, protocol_of, service_of

STATE_FILE = Path("build/run/topology.json")
# Prometheus file_sd_configs: the /metrics endpoints of what `make up` started (docs/operations.md).
TARGETS_FILE = STATE_FILE.parent / "prometheus-targets.json"


def prometheus_targets(metrics: Mapping[str, str]) -> list[dict[str, Any]]:
    """file_sd entries, one per process: {"targets": ["host:port"], "labels": {"service": …}}."""
    return [{"targets": [address], "labels": {"job": "medaid", "service": service_of(name), "instance_name": name}}
            for name, address in metrics.items()]


def _wait_healthy(address: str, timeout: float = 30.0, protocol: str = "grpc",
                  proc: subprocess.Popen[bytes] | None = None) -> bool:
    """Whether the service at `address` answers SERVING within `timeout`; False at once when `proc`
    (the service's process) has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        if protocol == "http":
            if http_healthy(address, 0.5):
                return True
            time.sleep(0.1)
            continue
        with rpc.sync_channel(address, tls=tls.from_env("operator")) as ch:  # MEDAID_TLS_DIR: mTLS
            try:
                resp = rpc.health_check(ch)(health_pb2.HealthCheckRequest(), timeout=0.5)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass
        time.sleep(0.1)
    return False


def up(clock: str = "system", log_level: str = "INFO") -> dict[str, Any]:
    run_dir = STATE_FILE.parent
    run_dir.mkdir(parents=True, exist_ok=True)
    if STATE_FILE.exists():
        raise SystemExit(f"{STATE_FILE} exists: run `make down` first")
    import secrets

    # AUTH as in production: the services read the password from build/run/redis/password.
    redis = RedisServer(appendfsync="always", data_dir=str(run_dir / "redis"), detached=True,
                        password=secrets.token_hex(16))
    Path(redis.data_dir).mkdir(parents=True, exist_ok=True)
    try:
        redis.start()
    except BaseException:
        if redis.proc is not None:
            _stop([("redis", redis.proc.pid)])
        raise
    names = [f"registry-{p}" for p in PROVINCES] + ["wallet", "router", "gateway", "console"]
    topo = Topology(redis, {n: free_port() for n in names}, clock, console_dir=str(run_dir),
                    metrics_ports={n: free_port() for n in names})
    topo.log_level = log_level
    login = write_console_operators(run_dir / "operators.toml", PROVINCES)
    login_file = run_dir / "console-login.txt"
    login_file.write_text(f"operator: {login[0]}\npassword: {login[1]}\n")
    login_file.chmod(0o600)
    pids: dict[str, int] = {"redis": redis.proc.pid if redis.proc else 0}
    try:
        for name in names:
            module, args = topo.args_for(name)
            log = open(run_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it open
            proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=log, stderr=log,
                                    start_new_session=True)
            pids[name] = proc.pid
            if not _wait_healthy(topo.address(name), protocol=protocol_of(name), proc=proc):
                why = "exited" if proc.poll() is not None else "did not become healthy"
                raise SystemExit(f"{name} {why}; see {run_dir / (name + '.log')}")
    except BaseException:
        # Nothing is left running that no state file names (`make down` could not stop it).
        _stop(list(pids.items())[::-1])
        raise
    metrics = {n: f"127.0.0.1:{topo.metrics_ports[n]}" for n in names}
    state = {"redis_url": redis.url, "redis_plain_url": redis.plain_url, "redis_password_file": redis.password_file,
             "redis_port": redis.port, "addresses": {n: topo.address(n) for n in names}, "metrics": metrics,
             "pids": pids, "clock": clock}
    STATE_FILE.write_text(json.dumps(state, indent=2))
    TARGETS_FILE.write_text(json.dumps(prometheus_targets(metrics), indent=2))
    return state


def down() -> list[str]:
    if not STATE_FILE.exists():
        return []
    state = json.loads(STATE_FILE.read_text())
    order = [n for n in state["pids"] if n != "redis"][::-1] + ["redis"]
    stopped = _stop([(name, int(state["pids"].get(name, 0))) for name in order])
    STATE_FILE.unlink()
    TARGETS_FILE.unlink(missing_ok=True)
    return stopped


def _stop(processes: list[tuple[str, int]]) -> list[str]:
    """SIGTERM each (name, pid) in turn, SIGKILL after 10 s; the names of those that were running."""
    stopped = []
    for name, pid in processes:
        if not pid:
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        for _ in range(100):
            try:
                os.waitpid(pid, os.WNOHANG)  # reaps it when it is this process's child (`up` failing)
            except ChildProcessError:
                pass
            if _gone(pid):
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        stopped.append(name)
    return stopped


def _gone(pid: int) -> bool:
    """Whether the process has exited: no such process, or one that exited and waits to be reaped by
    a parent that is not this process (a zombie: `up` started it detached, and a container's init may
    reap only every second or two)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def clock_spec(value: str) -> str:
    """An argparse type: a clock spec that medaid.common.clock accepts (else a usage error, exit 2)."""
    import argparse

    try:
        clock_from_spec(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: want {config.CLOCK.accepted}") from None
    return value


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m medaid.topology")
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--clock", type=clock_spec, default=os.environ.get("MEDAID_CLOCK") or "system",
                        help="the services' clock (env MEDAID_CLOCK)")
    levels = config.LOG_LEVELS  # what the services' --log-level accepts
    parser.add_argument("--log-level", type=str.upper, choices=levels,
                        default=os.environ.get("MEDAID_LOG_LEVEL") or "INFO",
                        help="every process's log level (env MEDAID_LOG_LEVEL)")
    args = parser.parse_args(argv)
    if args.log_level not in levels:  # argparse checks a given value, not the default from the environment
        parser.error(f"MEDAID_LOG_LEVEL={args.log_level!r}: want one of {', '.join(levels)}")
    if args.command == "up":
        state = up(args.clock, args.log_level)
        for name, address in state["addresses"].items():
            note = {"gateway": f"  (POST http://{address}{GATEWAY_PATH})",
                    "console": f"  (http://{address}/ ; sign-in in {STATE_FILE.parent}/console-login.txt)"}
            print(f"{name:<12} {address}" + note.get(name, ""))
        print(f"redis        {state['redis_plain_url']} (password in {state['redis_password_file']})")
        print(f"state in {STATE_FILE}; logs in {STATE_FILE.parent}/; "
              "`make down` stops everything")
        print(f"metrics      Prometheus file_sd targets in {TARGETS_FILE} (docs/operations.md)")
    elif args.command == "down":
        print("stopped: " + (", ".join(down()) or "nothing was running"))
    else:
        if not STATE_FILE.exists():
            print(f"nothing running ({STATE_FILE} absent): `make up` starts the topology")
            return 0
        state = json.loads(STATE_FILE.read_text())
        down_ = []
        for name, address in state["addresses"].items():
            serving = _wait_healthy(address, 1.0, protocol_of(name))
            print(f"{name:<12} {address:<22} {'SERVING' if serving else 'DOWN'}")
            if not serving:
                down_.append(name)
        if down_:  # scripts and container checks read the exit code (docs/operations.md)
            print(f"down: {', '.join(down_)}; see {STATE_FILE.parent}/<name>.log", file=sys.stderr)
            return 1
    return 0
