"""The Redis URL forms docs/configuration.md accepts for --redis-url (MEDAID_REDIS_URL): each one a
real service starts on and serves from (a `unix://` socket as much as `redis://`), and a URL that is
no such form stops the service at start with exit status 2 and a line naming the option, never a
traceback, never a URL that reads as another database than the one written."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import grpc
import pytest
from medaid.common.redis_server import RedisServer, free_port
from medaid.registry.v1 import registry_pb2 as pb
from medaid.registry.v1 import registry_pb2_grpc as pb_grpc
from medaid.topology import start_service
from support import enroll


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MEDAID_") or k == "MEDAID_REDIS_SERVER"}


def test_a_registry_on_a_unix_socket_redis_serves_and_writes_there():
    """`unix:///run/redis/redis.sock`, a Redis beside the service on the same host: the registry signs in
    with its password file, its health says SERVING, and what it is asked to write is in that Redis."""
    sock_dir = tempfile.mkdtemp(prefix="medaid-sock-")
    sock = os.path.join(sock_dir, "redis.sock")
    with RedisServer(appendfsync="always", password="unix-socket-pass",
                     extra=["--unixsocket", sock, "--unixsocketperm", "700"]) as server:
        registry = start_service("registry-unix", "medaid.registry", [
            "--port", "0", "--metrics-port", "off", "--redis-url", f"unix://{sock}",
            "--redis-password-file", server.password_file, "--store-check-ms", "100"], env=clean_env())
        try:
            deadline = time.monotonic() + 10
            while not registry.healthy() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert registry.healthy(), "\n".join(registry.logs[-5:])
            with grpc.insecure_channel(registry.address) as channel:
                stub = pb_grpc.RegistryServiceStub(channel)
                pid = enroll(stub)
                person = stub.GetPerson(pb.GetPersonRequest(id_number=pid), timeout=5)
            assert person.person.id_number == pid
            with server.connection() as r:
                assert any(pid.encode() in key for key in r.scan_iter(count=1000)), "written elsewhere"
        finally:
            assert registry.stop() == 0


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "medaid.registry", "--metrics-port", "off", *argv],
                          capture_output=True, text=True, timeout=20, env=clean_env())


@pytest.mark.parametrize("url", [
    "redis://127.0.0.1:notaport/0",
    "redis://127.0.0.1:99999/0",
    "redis://[::1/0",
    "redis://127.0.0.1:{port}/abc",
    "redis://127.0.0.1:{port}/0/1",
    "redis://127.0.0.1:{port}/0?socket_timeout=soon",
    "redis+cluster://127.0.0.1:notaport",
    "redis+cluster://127.0.0.1:99999",
    "redis+cluster://",
    "unix://",
], ids=["port_not_a_number", "port_out_of_range", "broken_ipv6", "db_not_a_number", "db_path_twice",
        "bad_query_option", "cluster_port_not_a_number", "cluster_port_out_of_range", "cluster_no_seed",
        "unix_no_path"])
def test_a_malformed_redis_url_exits_2_naming_the_option(url):
    """A URL that does not say where Redis is (a port that is no port, no socket path) or says it in a
    way the client would read otherwise (a database that is no number: database 0 instead) is refused
    as any bad value is, before anything starts."""
    url = url.format(port=free_port())
    done = run("--redis-url", url)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == "", done.stderr
    assert done.stderr.startswith("medaid-registry: invalid configuration: --redis-url (MEDAID_REDIS_URL) = "), \
        done.stderr


@pytest.mark.parametrize("url", [
    "redis://:hunter2-secret@127.0.0.1:abc/0",
    "redis://medaid:hunter2-secret@127.0.0.1:6379/abc",
    "http://:hunter2-secret@127.0.0.1:6379/0",
    "rediss+cluster://medaid:hunter2-secret@10.0.0.1:6379,10.0.0.2",
], ids=["bad_port", "bad_db_with_user", "bad_scheme", "bad_cluster_seed"])
def test_a_refused_redis_url_names_the_option_but_not_its_password(url):
    """A URL can carry the password (the Secret `medaid-redis` `url` of an external Redis): the line that
    refuses it goes to the pod's log, so it shows the URL with the password written `***`."""
    done = run("--redis-url", url)
    assert done.returncode == 2, done.stderr
    assert "hunter2" not in done.stderr, done.stderr
    masked = url.replace("hunter2-secret", "***")
    assert f"--redis-url (MEDAID_REDIS_URL) = {masked!r} is not valid" in done.stderr, done.stderr
