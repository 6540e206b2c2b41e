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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from medaid.common import config, rpc, tls
from medaid.common.clock import from_spec as clock_from_spec
from medaid.common.redis_server import RedisCluster, RedisServer, free_port

PROVINCES = tls.REGISTRY_PROVINCES  # `make certs` issues each one's registry-<province> certificate
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
    tls: tls.TlsConfig | None = None  # health checks over mTLS (as operator) when the topology runs TLS
    metrics_port: int = 0  # its Prometheus /metrics endpoint (0: metrics off)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def healthy(self, timeout: float = 2.0) -> bool:
        if self.protocol == "http":
            return _http_healthy(self.address, timeout)
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
    threading.Thread(target=_drain, args=(proc.stderr, logs, echo_logs), daemon=True).start()
    deadline = time.monotonic() + timeout
    port = metrics_port = 0
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
            port, metrics_port = int(msg["port"]), int(msg.get("metrics_port") or 0)
            break
    if not port:
        proc.kill()
        raise RuntimeError(f"{name} did not announce its port in {timeout}s")
    threading.Thread(target=_drain, args=(proc.stdout, logs, False), daemon=True).start()
    return ServiceProcess(name, proc, port, logs, metrics_port=metrics_port)


DEMO_CLOCK = "start:2026-11-22T10:00:00+08:00"
# Institutions that Topology.start(tls=True) issues a certificate (CN = fixmedins_code) and a token to.
TLS_INSTITUTIONS = ("H13010100001", "H11010500001", "H62010000001", "H35010000001")
SECURITY_ENV = ("MEDAID_TLS_DIR", "MEDAID_TLS_CERT", "MEDAID_TLS_KEY", "MEDAID_TLS_CA", "MEDAID_TLS_SERVER_NAME",
                "MEDAID_INSTITUTION_TOKENS", "MEDAID_RATE_LIMIT_RPS", "MEDAID_RATE_LIMIT_BURST",
                "MEDAID_CREDENTIALS", "MEDAID_SIGN_KEY", "MEDAID_SIGN_KEY_FILE", "MEDAID_REQUIRE_SIGN_IN")


@dataclass
class Topology:
    """Redis + one registry per province + the national wallet, each its own process.

    Ports are chosen up front (free loopback ports) so that registries and the wallet can name
    each other; a service can be killed and restarted on the same port and Redis."""

    redis: RedisServer | RedisCluster  # the services get its url: single Redis or a Redis Cluster
    ports: dict[str, int]
    clock: str
    wallet_env: dict[str, str] = field(default_factory=dict)
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    echo_logs: bool = False

    @classmethod
    def start(cls, provinces: Sequence[str] = PROVINCES, *, wallet: bool = True, router: bool = True,
              gateway: bool = True, replicas: Mapping[str, int] | None = None,
              clock: str = "system", echo_logs: bool = False, recovery_grace_ms: int = 2000,
              wallet_policy: str = "", log_level: str = "INFO", cluster: bool = False,
              cluster_masters: int = 3, cluster_replicas: int = 1, tls: bool = False,
              institutions: Sequence[str] = TLS_INSTITUTIONS, rate_limit_rps: float = 0, rate_limit_burst: int = 0,
              redis_password: str = "", cluster_node_timeout_ms: int = 3000, console: bool = False,
              metrics: bool = True) -> Topology:
        """`cluster=True` runs every service on a fresh local Redis Cluster (`cluster_masters` masters,
        each with `cluster_replicas` replicas that take over when it fails).

        `redis_password`: Redis requires it (AUTH) and every service reads it from a file
        (--redis-password-file), as in production.

        `tls=True` makes a development CA and certificates in a temporary folder (`tls_dir`: the
        service and client identities, and one per fixmedins_code in `institutions`), gives each of
        those institutions a bearer token (`institution_tokens`), and runs every service with mTLS and
        authorization on. `rate_limit_rps` > 0 limits each institution at the router. `console=True` also
        starts the front-desk web console with one operator (`console_login`: operator id, password). Each
        process serves /metrics on a free port (`ServiceProcess.metrics_port`); `metrics=False` turns
        metrics off."""
        redis: RedisServer | RedisCluster = (
            RedisCluster(cluster_masters, replicas=cluster_replicas, password=redis_password,
                         node_timeout_ms=cluster_node_timeout_ms) if cluster
            else RedisServer(appendfsync="always", password=redis_password)).start()
        names = [f"registry-{p}" for p in provinces] + (["wallet"] if wallet else []) + (["router"] if router else [])
        names += ["gateway"] if router and gateway else []
        names += ["console"] if console else []
        # replicas={'registry-13': 2, 'wallet': 2}: N processes (own free ports) behind one address list
        topo = cls(redis, {n: free_port() for n in instance_names(names, replicas)}, clock, echo_logs=echo_logs)
        topo.recovery_grace_ms = recovery_grace_ms
        topo.wallet_policy = wallet_policy
        topo.log_level = log_level
        topo.rate_limit = (rate_limit_rps, rate_limit_burst)
        topo.metrics = metrics
        if tls:
            try:
                topo._make_certs(institutions)
            except Exception:
                topo.stop()
                raise
        if console:
            import tempfile

            topo.console_dir = tempfile.mkdtemp(prefix="medaid-console-")
            topo.console_login = write_console_operators(Path(topo.console_dir) / "operators.toml")
        try:
            for name in list(topo.ports):
                topo.start_one(name)
        except Exception:
            topo.stop()
            raise
        return topo

    recovery_grace_ms: int = 2000
    wallet_policy: str = ""
    log_level: str = "INFO"
    tls_dir: str = ""  # certificates (Topology.start(tls=True)); empty: plaintext
    institution_tokens: dict[str, str] = field(default_factory=dict)  # fixmedins_code -> bearer token
    rate_limit: tuple[float, int] = (0, 0)  # router: per-institution rps, burst
    console_dir: str = ""  # the console's operator file (Topology.start(console=True))
    console_login: tuple[str, str] = ("", "")  # its operator: (operator id, password)
    metrics: bool = True  # False: every process runs with --metrics-port off
    metrics_ports: dict[str, int] = field(default_factory=dict)  # fixed /metrics ports (`make up`); else free ones

    def _make_certs(self, institutions: Sequence[str]) -> None:
        import secrets
        import tempfile

        from medaid.router.security import write_tokens

        self.tls_dir = tempfile.mkdtemp(prefix="medaid-tls-")
        registries = [tls.registry_identity(service_of(n).split("-", 1)[1]) for n in self.ports
                      if service_of(n).startswith("registry-")]
        tls.generate(self.tls_dir, list(dict.fromkeys([*tls.DEFAULT_IDENTITIES, *registries, *institutions])))
        # Hex, not base64url: a token starting with '-' would read as an option on a command line.
        self.institution_tokens = {code: secrets.token_hex(24) for code in institutions}
        write_tokens(Path(self.tls_dir) / "institution-tokens.toml", self.institution_tokens)

    def tls(self, identity: str = "operator") -> tls.TlsConfig | None:
        """The TLS configuration of a client acting as `identity` (None when the topology is plaintext)."""
        return tls.load(identity, tls_dir=self.tls_dir) if self.tls_dir else None

    def channel(self, name: str, identity: str = "operator") -> grpc.Channel:
        """A blocking channel to a service, over mTLS as `identity` when the topology runs TLS."""
        return rpc.sync_channel(self.address(name), tls=self.tls(identity))

    def security_args(self, name: str) -> list[str]:
        """--tls-dir for every process; institution tokens for the router and the gateway (which with TLS
        requires a credential of every institution), rate limits for the router."""
        args = ["--tls-dir", self.tls_dir] if self.tls_dir else []
        if service_of(name) in ("router", "gateway") and self.tls_dir:
            args += ["--institution-tokens", str(Path(self.tls_dir) / "institution-tokens.toml")]
        if service_of(name) == "router":
            if self.rate_limit[0] > 0:
                args += ["--rate-limit-rps", str(self.rate_limit[0]), "--rate-limit-burst", str(self.rate_limit[1])]
        return args

    def args_for(self, name: str) -> tuple[str, list[str]]:
        if service_of(name) == "console":
            return "medaid.console", self._console_args(name)
        common = ["--port", str(self.ports[name]), "--redis-url", self.redis.plain_url, "--clock", self.clock,
                  "--log-level", self.log_level,
                  "--metrics-port", str(self.metrics_ports.get(name, 0)) if self.metrics else "off"]
        if self.redis.password:
            common += ["--redis-password-file", self.redis.password_file]
        name = service_of(name)  # the replicas of a service share its arguments (but for --port)
        regs = ",".join(f"{n.split('-')[1]}={self.address(n)}" for n in self.service_names()
                        if n.startswith("registry-"))
        if name == "gateway":
            return "medaid.gateway", [*common, "--router", self.address("router")]
        if name == "router":
            args = [*common, "--registries", regs]
            if "wallet" in self.service_names():
                args += ["--wallet", self.address("wallet")]
            return "medaid.router", args
        if name == "wallet":
            extra = ["--policy-file", self.wallet_policy] if self.wallet_policy else []
            return "medaid.wallet", [*common, "--registries", regs, "--maintenance-interval-ms", "200",
                                     "--recovery-grace-ms", str(self.recovery_grace_ms), *extra]
        args = [*common, "--province", name.split("-")[1]]
        if "wallet" in self.service_names():
            args += ["--wallet", self.address("wallet")]
        return "medaid.registry", args

    def _console_args(self, name: str) -> list[str]:
        regs = ",".join(f"{n.split('-')[1]}={self.address(n)}" for n in self.service_names()
                        if n.startswith("registry-"))
        args = ["--port", str(self.ports[name]), "--clock", self.clock, "--log-level", self.log_level,
                "--registries", regs, "--operators", str(Path(self.console_dir) / "operators.toml"),
                "--metrics-port", str(self.metrics_ports.get(name, 0)) if self.metrics else "off"]
        if "wallet" in self.service_names():
            args += ["--wallet", self.address("wallet")]
        # The person directory the registries write and the router reads: the desk serves the record
        # hospitals' bills go to.
        args += ["--directory-url", self.redis.plain_url]
        if self.redis.password:
            args += ["--redis-password-file", self.redis.password_file]
        return args

    def start_one(self, name: str, env: dict[str, str] | None = None) -> ServiceProcess:
        module, args = self.args_for(name)
        args = [*args, *self.security_args(name)]
        # Security is the topology's choice (tls=…, rate limits), not the calling shell's MEDAID_TLS_* etc.
        env = {**{k: "" for k in SECURITY_ENV}, **(env or {})}
        svc = start_service(name, module, args, env=env, echo_logs=self.echo_logs)
        svc.protocol = protocol_of(name)
        svc.tls = self.tls("operator")
        self.services[name] = svc
        return svc

    def restart(self, name: str, env: dict[str, str] | None = None) -> ServiceProcess:
        old = self.services.get(name)
        if old is not None:
            old.stop()
        return self.start_one(name, env)

    def instances(self, service: str) -> list[str]:
        """The processes of a service: ['registry-13#1', 'registry-13#2'], or ['registry-13'] alone."""
        return [n for n in self.ports if service_of(n) == service]

    def service_names(self) -> list[str]:
        return list(dict.fromkeys(service_of(n) for n in self.ports))

    def address(self, name: str) -> str:
        """One process's host:port; for a replicated service, its address list 'a:1|b:2' (see common/rpc.py)."""
        if name in self.ports:
            return f"127.0.0.1:{self.ports[name]}"
        found = self.instances(name)
        if not found:
            raise KeyError(name)
        return "|".join(f"127.0.0.1:{self.ports[n]}" for n in found)

    def stop(self) -> dict[str, int]:
        codes = {name: svc.stop() for name, svc in reversed(list(self.services.items()))}
        self.redis.cleanup()
        import shutil

        for folder in (self.tls_dir, self.console_dir):
            if folder:
                shutil.rmtree(folder, ignore_errors=True)
        return codes


def write_console_operators(path: Path, operator_id: str = "counter01") -> tuple[str, str]:
    """A development operator list for the console: one operator with a fresh random password."""
    import secrets

    from medaid.console.operators import write_file

    password = secrets.token_urlsafe(12)
    write_file(path, {operator_id: ("窗口一号", "console", password)})
    return operator_id, password


# --- `make up` / `make down`: a topology that outlives the command that started it -----------

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
            if _http_healthy(address, 0.5):
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
    login = write_console_operators(run_dir / "operators.toml")
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
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
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


if __name__ == "__main__":
    sys.exit(main())
