"""Run the national JSON gateway: `python -m medaid.gateway --router host:port`.

Prints one JSON line `{"event": "listening", "port": N, …}` once bound (port 0 picks a free one),
serves until SIGTERM/SIGINT, then lets in-flight requests finish (up to --grace-s).
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys

from aiohttp import web

from medaid.common import clock, config, logs, rpc, tls
from medaid.common.redis_server import connect as redis_connect
from medaid.common.server import install_uvloop
from medaid.gateway.service import Gateway, Settings
from medaid.gateway.signing import ALGORITHMS, Verifier
from medaid.gateway.web import CALL_PATH, make_app

OPTIONS = (
    *config.COMMON_OPTIONS,
    config.Option("router", "", "settlement router address (host:port)"),
    config.Option("clock", "system", "'system' or 'start:<ISO instant>'"),
    config.Option("admdvs", "100000", "this platform's admdvs, the first 6 characters of inf_refmsgid"),
    config.Option("require_sign_in", "false", "true: every call but 9001 must carry a sign_no from 9001"),
    config.Option("sign_ttl_s", "86400", "seconds a 9001 sign_no stays valid"),
    config.Option("msgid_ttl_s", "604800", "seconds an answer is kept for msgid replays (0: forever)"),
    config.Option("sign_key", "", "shared secret for request signatures; empty: signatures not checked"),
    config.Option("sign_alg", "hmac-sha256", "signature algorithm: " + " | ".join(ALGORITHMS)),
    config.Option("sign_skew_s", "300", "allowed clock difference for X-Medaid-Timestamp"),
    config.Option("deadline_s", "10", "deadline of each call to the router"),
    *tls.OPTIONS,  # the gateway's identity towards the router (mTLS); its HTTP side is unchanged
)


def _flag(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


async def main() -> None:
    cfg = config.parse("gateway", OPTIONS)
    logs.setup("gateway", cfg["log_level"])
    if not cfg["router"]:
        raise SystemExit("medaid-gateway: --router (MEDAID_ROUTER) is required")
    verifier = Verifier(cfg["sign_key"], cfg["sign_alg"], int(cfg["sign_skew_s"])) if cfg["sign_key"] else None
    settings = Settings(admdvs=cfg["admdvs"], require_sign_in=_flag(cfg["require_sign_in"]),
                        sign_ttl_s=int(cfg["sign_ttl_s"]), msgid_ttl_s=int(cfg["msgid_ttl_s"]),
                        deadline_s=float(cfg["deadline_s"]), verifier=verifier,
                        store_timeout_s=int(cfg["store_check_timeout_ms"]) / 1000)
    if len(settings.admdvs) != 6 or not settings.admdvs.isdigit():
        raise SystemExit("medaid-gateway: --admdvs must be 6 digits")
    client = await redis_connect(cfg, 64)  # single Redis or a redis+cluster:// URL
    rpc.set_tls(tls.from_config("gateway", cfg))  # before the router channel is opened
    gateway = Gateway(cfg["router"], client, clock=clock.from_spec(cfg["clock"]), settings=settings)
    runner = web.AppRunner(make_app(gateway), access_log=None, shutdown_timeout=float(cfg["grace_s"]))
    await runner.setup()
    family = socket.AF_INET6 if ":" in cfg["host"] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((cfg["host"], int(cfg["port"])))
    sock.setblocking(False)
    await web.SockSite(runner, sock).start()
    port = sock.getsockname()[1]

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(json.dumps({"event": "listening", "port": port, "service": "gateway", "protocol": "http",
                      "path": CALL_PATH, "signatures": verifier is not None,
                      "require_sign_in": settings.require_sign_in}), flush=True)
    await stop.wait()
    await runner.cleanup()
    await gateway.close()
    await client.aclose()
    sys.stdout.flush()


if __name__ == "__main__":
    install_uvloop()
    asyncio.run(main())
