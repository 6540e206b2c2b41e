"""The Redis URL forms docs/configuration.md accepts for --redis-url (MEDAID_REDIS_URL): each one a
real service starts on and serves from (a `unix://` socket as much as `redis://`), and a URL that is
no such form stops the service at start with exit status 2 and a line naming the option, never a
traceback, never a URL that reads as another database than the one written."""

from __future__ import annotations

import os
import tempfile
import time

import grpc
from medaid.common.redis_server import RedisServer
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

