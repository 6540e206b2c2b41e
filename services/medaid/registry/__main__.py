"""Run one province registry: `python -m medaid.registry --province 13`."""

from __future__ import annotations

import asyncio
import logging

from medaid.common import authz, clock, config, faults, logs, observe, tls
from medaid.common.redis_client import connect as redis_connect
from medaid.common.server import StoreCheck, install_uvloop, serve_forever, start_server
from medaid.registry import policy as policy_mod
from medaid.registry.context import LOCK_TTL_MS
from medaid.registry.service import Registry
from medaid.registry.servicer import register
from medaid.registry.wallet_port import GrpcWallet, NoWallet

OPTIONS = (
    *config.COMMON_OPTIONS,
    config.Option("province", "13", "2-digit province code this instance serves", config.PROVINCE, required=True),
    config.Option("policy_file", "", "policy TOML (default: deploy/policies/<province>-*.toml)", config.PATH),
    config.Option("wallet", "", "national wallet address host:port or replica list a:p|b:p "
                  "(empty: no wallet, step 2 pays nothing)", config.ADDRESS),
    config.Option("clock", "system", "'system' or 'start:<ISO instant>' (tests, demos)", config.CLOCK),
    config.Option("recovery_interval_ms", 1000, "how often the recovery loop looks for half-done settlements",
                  config.integer(1)),
    config.Option("recovery_grace_ms", 15000, "how old a settlement or reversal in progress must be before "
                  "the recovery loop finishes it (longer than any live request takes)"),
    config.Option("lock_ttl_ms", LOCK_TTL_MS, "how long a person's or a family account's lock outlives a process "
                  "that died holding it: requests for that person wait, and the recovery loop cannot finish "
                  "their half-done flows, until it expires (longer than any step of a live request takes)",
                  config.integer(1)),
    *tls.OPTIONS,
)


async def main() -> None:
    cfg = config.parse("registry", OPTIONS)
    try:  # the province policy is configuration too: a bad one stops the registry before anything starts
        policy = policy_mod.load_for(cfg["province"], cfg["policy_file"] or None)
    except policy_mod.PolicyError as exc:
        raise config.fail("registry", str(exc)) from None
    logs.setup(f"registry-{cfg['province']}", cfg["log_level"])
    observed = observe.setup(f"registry-{cfg['province']}", cfg)
    # Its certificate names its province (registry-13): the wallet lets it act for that province only.
    tls_config, interceptors = authz.setup("registry", cfg, identity=f"registry-{cfg['province']}")
    client = await redis_connect(cfg, 256)
    wallet = GrpcWallet(cfg["wallet"]) if cfg["wallet"] else NoWallet()
    registry = Registry(client, policy, clock=clock.from_spec(cfg["clock"]), wallet=wallet,
                        recovery_grace_ms=cfg["recovery_grace_ms"], lock_ttl_ms=cfg["lock_ttl_ms"])
    registry.fault_hook = faults.from_env()
    recovery = asyncio.create_task(registry.recovery.loop(cfg["recovery_interval_ms"] / 1000))
    running = await start_server(lambda s: register(s, registry), host=cfg["host"], port=cfg["port"],
                                 interceptors=interceptors, tls=tls_config,
                                 store=client, store_check=StoreCheck.from_config(cfg))
    logging.getLogger("medaid.registry").info(
        "registry up", extra={"fields": {"province": policy.province, "port": running.port}}
    )

    async def close() -> None:
        recovery.cancel()
        if isinstance(wallet, GrpcWallet):
            await wallet.close()
        await client.aclose()

    await serve_forever(running, grace_s=cfg["grace_s"], on_stop=close,
                        announce={"service": "registry", "province": policy.province, **observed})


if __name__ == "__main__":
    install_uvloop()
    asyncio.run(main())
