"""Run the 医保大厅 front-desk console: `python -m medaid.console --operators FILE --registries … --wallet …`.

Prints one JSON line `{"event": "listening", "port": N, …}` once bound (port 0 picks a free one),
serves until SIGTERM/SIGINT, then lets in-flight requests finish (up to --grace-s).
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from medaid.common import clock, config, logs, observe, rpc, tls
from medaid.common.http import serve_http
from medaid.common.redis_client import connect as redis_connect
from medaid.common.server import install_uvloop
from medaid.console import operators as ops
from medaid.console.backend import Backend
from medaid.console.sessions import ProcessSessions, RedisSessions, SessionStore
from medaid.console.web import Console, make_app
from medaid.directory import Directory
from medaid.registry.client import parse_addresses

log = logging.getLogger("medaid.console")

OPTIONS = (
    config.Option("host", "127.0.0.1", "address to listen on", required=True),
    config.Option("port", 0, "port to listen on; 0 picks a free one and prints it", config.PORT),
    config.Option("log_level", "INFO", "log level", config.LOG_LEVEL),
    config.Option("grace_s", 5.0, "seconds in-flight requests get on SIGTERM"),
    config.Option("registries", "", "province registries: 13=host:port,11=host:port,…", config.REGISTRIES,
                  required=True),
    config.Option("wallet", "", "national wallet address (host:port)", config.ADDRESS),
    config.Option("operators", "", "operator list (TOML with scrypt password hashes; docs/console.md)", config.PATH,
                  required=True),
    config.Option("session_secret", "", "key that signs session cookies and page references; every replica "
                  "needs the same one (empty: a random key, sessions end when the process stops)", secret=True),
    config.Option("session_redis_url", "", "Redis holding which sign-in sessions are live, shared by every replica, "
                  "so that signing out ends a session on all of them (signed in to with redis_username and "
                  "redis_password_file; empty: held in this process: one replica only, and everyone signs in again "
                  "after a restart)", config.REDIS_URL),
    config.Option("directory_url", "", "the national person directory (the services' Redis, which the registries "
                  "write and the router reads): a person is served from the registry it names, as their bills are "
                  "routed (signed in to with redis_username and redis_password_file; empty: every registry is asked "
                  "and a record picked by status, for a console in front of one province)", config.REDIS_URL),
    *(o for o in config.COMMON_OPTIONS if o.name in ("redis_username", "redis_password_file", "redis_timeout_ms")),
    config.Option("secure_cookies", False, "true: cookies only over HTTPS (behind a TLS-terminating proxy)"),
    config.Option("trusted_proxies", "", "reverse proxies (an Ingress) in front of the console: a request from one "
                  "of them is counted for sign-in lockout by the client X-Forwarded-For names, not by the proxy",
                  config.NETWORKS),
    config.Option("clock", "system", "'system' or 'start:<ISO instant>' (ages for binding verification)",
                  config.CLOCK),
    config.Option("deadline_s", 5.0, "deadline of each call to a service", config.number(0.001)),
    *(o for o in config.COMMON_OPTIONS if o.name.startswith(("metrics_", "trace_", "otlp_"))),
    *tls.OPTIONS,  # the console's identity (`console`) towards the services
)


async def main() -> None:
    cfg = config.parse("console", OPTIONS)
    logs.setup("console", cfg["log_level"])
    observed = observe.setup("console", cfg)
    try:
        operators = ops.load(cfg["operators"])
    except (OSError, ValueError) as exc:
        raise config.Unusable(f"--operators (MEDAID_OPERATORS) {cfg['operators']}: {exc}") from None
    rpc.set_tls(tls.from_config("console", cfg))  # before any channel is opened
    directory_store = None
    if cfg["directory_url"]:
        directory_store = await redis_connect(
            {"redis_url": cfg["directory_url"],
             **{k: str(cfg[k]) for k in ("redis_username", "redis_password_file", "redis_timeout_ms")}}, 32)
    backend = Backend(parse_addresses(cfg["registries"]), cfg["wallet"], deadline_s=cfg["deadline_s"],
                      directory=Directory(directory_store) if directory_store is not None else None)
    secret = cfg["session_secret"].encode() or secrets.token_bytes(32)
    sessions: SessionStore = ProcessSessions()
    if cfg["session_redis_url"]:
        store = {"redis_url": cfg["session_redis_url"],
                 **{k: str(cfg[k]) for k in ("redis_username", "redis_password_file", "redis_timeout_ms")}}
        sessions = RedisSessions(await redis_connect(store, 32))
    console = Console(backend, operators, secret, clock.from_spec(cfg["clock"]),
                      secure_cookies=cfg["secure_cookies"], trusted_proxies=ops.networks(cfg["trusted_proxies"]),
                      sessions=sessions)

    # An operator the file gives no provinces serves the console's own province, or, in front of
    # several provinces, nobody (operators.provinces_served): said at startup, not found at the counter.
    for op_id, served in sorted(console.unscoped().items()):
        log.warning("operator without provinces", extra={"fields": {
            "operator": op_id, "serves": sorted(served),
            "fix": "add provinces = [\"<2-digit province>\", …] to the operator in the --operators file"}})

    async def close() -> None:
        await backend.close()
        if directory_store is not None:
            await directory_store.aclose()
        if isinstance(sessions, RedisSessions):
            await sessions.close()

    await serve_http(make_app(console), host=cfg["host"], port=cfg["port"], grace_s=cfg["grace_s"],
                     announce={"service": "console", "operators": len(operators), **observed},
                     on_stop=close)

if __name__ == "__main__":
    install_uvloop()
    asyncio.run(main())
