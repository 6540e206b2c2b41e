"""`Topology`: Redis + one registry per province + the wallet, router, gateway (and console), each its
own OS process on a free loopback port, for `make run`, demos, the bench and end-to-end tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from medaid.common import rpc, tls
from medaid.common.redis_server import RedisCluster, RedisServer, free_port
from medaid.topology.processes import (
    PortTaken,
    ServiceProcess,
    instance_names,
    protocol_of,
    service_of,
    start_service,
)

PROVINCES = tls.REGISTRY_PROVINCES  # `make certs` issues each one's registry-<province> certificate
GATEWAY_PATH = "/fsi/api/rsfComIfsService/callService"  # medaid.gateway.web.CALL_PATH
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
            topo.console_login = write_console_operators(Path(topo.console_dir) / "operators.toml", provinces)
        try:
            topo._start_all()
        except Exception:
            topo.stop()
            raise
        return topo

    def _start_all(self, attempts: int = 3) -> None:
        """Start every process on its chosen port. A port is chosen free but bound only when its process
        starts: another process (another test worker) may take it in between. Then that one is moved to
        a fresh port and the processes started before it, which may name its old address, start again."""
        for attempt in range(attempts):
            started: list[str] = []
            try:
                for name in list(self.ports):
                    started.append(name)
                    self.start_one(name)
                return
            except PortTaken:
                if attempt == attempts - 1:
                    raise
                for done in reversed(started[:-1]):
                    self.services.pop(done).stop()
                self.ports[started[-1]] = free_port()

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


def write_console_operators(path: Path, provinces: Sequence[str], operator_id: str = "counter01") -> tuple[str, str]:
    """A development operator list for the console: one operator with a fresh random password, serving
    the people insured in `provinces` (the topology's)."""
    import secrets

    from medaid.console.operators import write_file

    password = secrets.token_urlsafe(12)
    write_file(path, {operator_id: ("窗口一号", "console", password)}, {operator_id: list(provinces)})
    return operator_id, password
