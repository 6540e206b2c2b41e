"""Run the settlement router: `python -m medaid.router --registries 13=host:port,… --wallet host:port`."""

from __future__ import annotations

import asyncio

from medaid.common import authz, clock, config, logs, observe, tls
from medaid.common.redis_client import connect as redis_connect
from medaid.common.server import StoreCheck, install_uvloop, serve_forever, start_server
from medaid.directory import Directory
from medaid.registry.client import Registries, parse_addresses
from medaid.router import reconcile, security
from medaid.router.service import Router
from medaid.router.servicer import register

OPTIONS = (
    *config.COMMON_OPTIONS,
    config.Option("registries", "", "province registries: 13=host:port,11=host:port,… (replicas: 13=a:p|b:p)",
                  config.REGISTRIES),
    config.Option("wallet", "", "national wallet address or replica list a:p|b:p (for 1101 wallet balances)",
                  config.ADDRESS),
    config.Option("clock", "system", "'system' or 'start:<ISO instant>'", config.CLOCK),
    config.Option("batch", True, "batch 2207s per province into SettleBatch calls (true) or call Settle (false)"),
    *tls.OPTIONS,
    *security.OPTIONS,
)


async def main() -> None:
    cfg = config.parse("router", OPTIONS)
    logs.setup("router", cfg["log_level"])
    observed = observe.setup("router", cfg)
    tls_config, interceptors = authz.setup("router", cfg)  # before any channel is opened
    gate = security.from_config(cfg, tls_on=tls_config is not None)
    if gate is not None:  # institutions: authentication, fixmedins_code match, rate limit
        interceptors = [authz.AuthzInterceptor(authz.POLICIES["router"] if tls_config is not None else None,
                                               request_check=gate, request_check_methods=security.INSTITUTION_METHODS)]
    client = await redis_connect(cfg, 64)
    router = Router(Directory(client), Registries(parse_addresses(cfg["registries"])),
                    wallet_address=cfg["wallet"], clock=clock.from_spec(cfg["clock"]), batch=cfg["batch"])
    running = await start_server(lambda s: register(s, router), host=cfg["host"], port=cfg["port"],
                                 interceptors=interceptors, tls=tls_config,
                                 store=client, store_check=StoreCheck.from_config(cfg),
                                 max_receive_bytes=reconcile.REQUEST_BYTES)

    async def close() -> None:
        await router.close()
        await client.aclose()

    await serve_forever(running, grace_s=cfg["grace_s"], on_stop=close,
                        announce={"service": "router", **observed})


if __name__ == "__main__":
    install_uvloop()
    asyncio.run(main())
