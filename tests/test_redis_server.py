"""The test and `make up` Redis process itself: a port taken between choosing it and binding it."""

from __future__ import annotations

import socket

import pytest
from medaid.common.redis_server import NotOurs, RedisServer, _ephemeral_start, free_port


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


def test_free_ports_lie_below_the_range_outgoing_connections_take_theirs_from():
    """A port chosen in the ephemeral range can become some client connection's local port before its
    server binds it (a router once failed to start that way): chosen ports stay below that range."""
    start = _ephemeral_start()
    if start <= 24_000:
        pytest.skip(f"this machine's ephemeral range starts at {start}: free_port falls back to port 0")
    ports = {free_port() for _ in range(50)}
    assert all(23_000 <= p < start for p in ports)


def test_a_server_still_loading_its_data_is_waited_for():
    """`make up` keeps its data between `make down` and `make up`: a server reads its AOF back before
    it answers, and is given the time that takes. Here the load outlasts the start timeout."""
    server = RedisServer(appendfsync="no")
    try:
        server.start()
        with server.connection() as c:
            for chunk in range(1000):
                c.mset({f"k:{chunk}:{i}": "v" * 20 for i in range(1000)})
        server.kill()
        server.start(timeout=0.05)
        with server.connection() as c:
            assert c.dbsize() == 1_000_000
    finally:
        server.cleanup()


def test_free_ports_handed_out_one_after_the_other_are_distinct():
    """A topology chooses every server's port before any binds: two of them must never get the same
    one (the second would fail to bind while a health probe of its address reached the first)."""
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
