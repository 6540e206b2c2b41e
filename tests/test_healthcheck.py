"""`python -m medaid.healthcheck grpc|http host:port [timeout_s]`, the containers' health check
(deploy/docker-compose.yml, Docker HEALTHCHECK): exit status 0 while the service serves, 1 with the
reason on stderr while it does not, 2 with its usage line for arguments it cannot use, never a
traceback (docker inspect shows the check's output to whoever looks at an unhealthy container)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from medaid.common.redis_server import RedisServer
from medaid.topology import start_service

USAGE = "usage: python -m medaid.healthcheck grpc|http host:port [timeout_s]"


def check(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "medaid.healthcheck", *argv], capture_output=True, text=True,
                          timeout=30)


def test_a_registry_is_healthy_while_its_store_answers_and_unhealthy_after():
    store = RedisServer(appendfsync="always").start()
    registry = start_service("registry-13", "medaid.registry", [
        "--port", "0", "--metrics-port", "off", "--redis-url", store.plain_url, "--store-check-ms", "100",
        "--redis-timeout-ms", "300"])
    try:
        done = check("grpc", registry.address)
        assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
        store.kill()
        deadline = time.monotonic() + 10
        while (done := check("grpc", registry.address, "1.5")).returncode == 0:
            assert time.monotonic() < deadline, "still healthy with its store gone"
            time.sleep(0.2)
        assert done.returncode == 1 and done.stderr == f"unhealthy: {registry.address}: NOT_SERVING\n", done.stderr
    finally:
        assert registry.stop() == 0
        store.cleanup()


@pytest.mark.parametrize("argv", [
    [], ["grpc"], ["tcp", "127.0.0.1:7000"], ["grpc", "127.0.0.1:7000", "soon"],
    ["grpc", "127.0.0.1:7000", "0"], ["grpc", "127.0.0.1:7000", "-1"], ["grpc", "127.0.0.1:7000", "nan"],
    ["http", "127.0.0.1:8080", "2", "extra"],
], ids=["nothing", "no_address", "unknown_kind", "timeout_not_a_number", "timeout_zero", "timeout_negative",
        "timeout_nan", "too_many"])
def test_arguments_it_cannot_use_exit_2_with_the_usage_line(argv):
    done = check(*argv)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == "", done.stderr
    assert done.stderr.splitlines()[-1] == USAGE, done.stderr
