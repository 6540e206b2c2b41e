"""The test and `make up` Redis process itself: a port taken between choosing it and binding it."""

from __future__ import annotations

import socket

import pytest
from medaid.common.redis_server import NotOurs, RedisServer


def _listening() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def test_a_chosen_port_taken_before_the_server_binds_it_is_replaced():
    taken = _listening()
    server = RedisServer(appendfsync="no")
    try:
        server.port = taken.getsockname()[1]  # what another process did after the port was chosen
        server.start()
        assert server.port != taken.getsockname()[1]
        with server.connection() as c:
            assert c.ping()
        # A restart keeps the port the server has run on.
        server.kill()
        server.start()
        with server.connection() as c:
            assert c.ping()
    finally:
        server.cleanup()
        taken.close()


def test_a_port_given_by_the_caller_is_never_replaced():
    taken = _listening()
    server = RedisServer(appendfsync="no", port=taken.getsockname()[1])
    try:
        with pytest.raises(NotOurs):
            server.start()
        assert server.port == taken.getsockname()[1]
    finally:
        server.cleanup()
        taken.close()
