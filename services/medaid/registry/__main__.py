"""Run one province registry: `python -m medaid.registry --province 13`."""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis

from medaid.common import config, logs
from medaid.common.server import install_uvloop, serve_forever, start_server
from medaid.registry import policy as policy_mod
from medaid.registry.service import Registry
from medaid.registry.servicer import register

OPTIONS = (
    *config.COMMON_OPTIONS,
    config.Option("province", "13", "2-digit province code this instance serves"),
    config.Option("policy_file", "", "policy TOML (default: deploy/policies/<province>-*.toml)"),
)


async def main() -> None:
    cfg = config.parse("registry", OPTIONS)
    logs.setup(f"registry-{cfg['province']}", cfg["log_level"])
    path = cfg["policy_file"] or policy_mod.find_policy_file(cfg["province"])
    policy = policy_mod.load(path)
    client = aioredis.Redis.from_url(cfg["redis_url"], max_connections=256)
    registry = Registry(client, policy)
    running = await start_server(lambda s: register(s, registry), host=cfg["host"], port=int(cfg["port"]))
    logging.getLogger("medaid.registry").info(
        "registry up", extra={"fields": {"province": policy.province, "port": running.port}}
    )

    async def close() -> None:
        await client.aclose()

    await serve_forever(running, grace_s=float(cfg["grace_s"]), on_stop=close,
                        announce={"service": "registry", "province": policy.province})


if __name__ == "__main__":
    install_uvloop()
    asyncio.run(main())
