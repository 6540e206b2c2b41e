"""One bootstrap for the HTTP processes (the national gateway, the front-desk console), as
common/server.py is for the gRPC services: bind (port 0 picks a free one), print the bound port as
one JSON `listening` line for supervisors, serve until SIGTERM/SIGINT, then let requests in flight
finish (up to the grace)."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
from collections.abc import Awaitable, Callable

from aiohttp import web

from medaid.common import config


async def serve_http(app: web.Application, *, host: str, port: int, grace_s: float,
                     announce: dict[str, object], on_stop: Callable[[], Awaitable[None]] | None = None) -> None:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=grace_s)
    await runner.setup()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:  # socket.gaierror too: a host that does not resolve
        sock.close()
        raise config.cannot_listen(("host", "port"), host, port, exc) from None
    sock.setblocking(False)
    await web.SockSite(runner, sock).start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(json.dumps({"event": "listening", "port": sock.getsockname()[1], "protocol": "http", **announce}),
          flush=True)
    await stop.wait()
    await runner.cleanup()
    if on_stop is not None:
        await on_stop()
    sys.stdout.flush()
