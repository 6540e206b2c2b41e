"""Run the national wallet: `python -m medaid.wallet --registries 13=host:port,11=host:port`."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from medaid.common import authz, clock, config, faults, logs, metrics, observe, tls, tracing
from medaid.common.redis_client import connect as redis_connect
from medaid.common.server import StoreCheck, install_uvloop, serve_forever, start_server
from medaid.registry.client import Registries, parse_addresses
from medaid.registry.policy import PolicyError, regions_by_province
from medaid.wallet import rules
from medaid.wallet.service import Wallet
from medaid.wallet.servicer import register

log = logging.getLogger("medaid.wallet")

OPTIONS = (
    *config.COMMON_OPTIONS,
    config.Option("registries", "", "province registries: 13=host:port,11=host:port,… (replicas: 13=a:p|b:p)",
                  config.REGISTRIES),
    config.Option("policy_file", "", "wallet policy TOML (default deploy/policies/wallet.toml)", config.PATH),
    config.Option("clock", "system", "'system' or 'start:<ISO instant>' (tests, demos)", config.CLOCK),
    config.Option("maintenance_interval_ms", 1000, "how often the sweeper/recovery pass runs", config.integer(1)),
    config.Option("recovery_grace_ms", 5000, "age before an in-flight transfer is re-driven by recovery"),
    *tls.OPTIONS,
)


async def maintenance_loop(wallet: Wallet, interval_s: float) -> None:
    failures = logs.PassFailures(log, "maintenance")  # a store that cannot serve: one line per streak
    while True:
        await asyncio.sleep(interval_s)
        tracing.start()  # each pass its own trace: its calls to the registries and its log lines share it
        try:
            result = await wallet.maintain()
            metrics.maintenance({"expired": result.expired, "recovered": result.recovered,
                                 "deferred": result.deferred})
            if metrics.enabled():
                metrics.in_flight(*await wallet.in_flight())
            if result.expired or result.recovered:
                log.info("maintenance", extra={"fields": {"expired": result.expired, "recovered": result.recovered,
                                                          "deferred": result.deferred}})
        except Exception as exc:  # noqa: BLE001 - the loop must survive a downstream outage
            metrics.maintenance({"pass_failed": 1})  # as the registry's recovery loop counts its own
            failures.failed(exc)
        else:
            failures.succeeded()


async def main() -> None:
    cfg = config.parse("wallet", OPTIONS)
    addresses = parse_addresses(cfg["registries"])
    try:  # the wallet's policy, and the use-places a wallet may name (each province's policy file)
        policy = rules.load_policy(cfg["policy_file"] or rules.default_policy_file())
        regions = regions_by_province(sorted(addresses))
    except PolicyError as exc:  # refused at start like a bad flag
        raise config.fail("wallet", str(exc)) from None
    logs.setup("wallet", cfg["log_level"])
    observed = observe.setup("wallet", cfg)
    tls_config, interceptors = authz.setup("wallet", cfg)  # before any channel is opened
    client = await redis_connect(cfg, 256)
    registries = Registries(addresses)
    wallet = Wallet(client, registries, policy=policy, clock=clock.from_spec(cfg["clock"]),
                    recovery_grace_ms=cfg["recovery_grace_ms"], regions=regions)
    wallet.fault_hook = faults.from_env()
    running = await start_server(lambda s: register(s, wallet), host=cfg["host"], port=cfg["port"],
                                 interceptors=interceptors, tls=tls_config,
                                 store=client, store_check=StoreCheck.from_config(cfg))
    loop_task = asyncio.create_task(maintenance_loop(wallet, cfg["maintenance_interval_ms"] / 1000))

    async def close() -> None:
        loop_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop_task
        await registries.close()
        await client.aclose()

    await serve_forever(running, grace_s=cfg["grace_s"], on_stop=close,
                        announce={"service": "wallet", **observed})


if __name__ == "__main__":
    install_uvloop()
    asyncio.run(main())
