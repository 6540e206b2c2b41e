"""Run the national JSON gateway: `python -m medaid.gateway --router host:port`.

Prints one JSON line `{"event": "listening", "port": N, …}` once bound (port 0 picks a free one),
serves until SIGTERM/SIGINT, then lets in-flight requests finish (up to --grace-s).

Two profiles (docs/security.md "Institutions at the gateway"): with TLS towards the router (the
mTLS profile) every call but 9001 must carry an institution credential (`--credentials auto`
resolves to `required`); without TLS (development) the gateway is open unless told otherwise, and
its first log line is a WARNING that says so and names the options that close it.
"""

from __future__ import annotations

import asyncio
import logging

from medaid.common import clock, config, logs, observe, rpc, tls
from medaid.common.http import serve_http
from medaid.common.redis_client import connect as redis_connect
from medaid.common.server import install_uvloop
from medaid.gateway.service import Gateway, Settings
from medaid.gateway.signing import ALGORITHMS, Verifier
from medaid.gateway.web import CALL_PATH, make_app
from medaid.router.security import load_tokens

log = logging.getLogger("medaid.gateway")

OPTIONS = (
    *config.COMMON_OPTIONS,
    config.Option("router", "", "settlement router address (host:port)", config.ADDRESS, required=True),
    config.Option("clock", "system", "'system' or 'start:<ISO instant>'", config.CLOCK),
    config.Option("admdvs", "100000", "this platform's admdvs, the first 6 characters of inf_refmsgid",
                  config.ADMDVS, required=True),
    config.Option("credentials", "auto", "institution credential on every call but 9001 (a request signature, a "
                  "bearer token of --institution-tokens, or a sign_no of a credentialed 9001): required; open: "
                  "none; auto: required when the gateway runs with TLS, open otherwise",
                  config.choice("auto", "required", "open", case="lower")),
    config.Option("institution_tokens", "", "TOML file of institution bearer tokens (the router's format); "
                  "empty: tokens are not a credential at the gateway", config.PATH),
    config.Option("require_sign_in", False, "true: every call but 9001 must carry a sign_no from 9001"),
    config.Option("sign_ttl_s", 86400, "seconds a 9001 sign_no stays valid", config.integer(1)),
    config.Option("msgid_ttl_s", 604800, "seconds an answer is kept for msgid replays (0: forever)"),
    config.Option("file_ttl_s", 172800, "seconds a 9101 upload or a 3202 result file is kept (its dld_endtime)",
                  config.integer(60)),
    config.Option("sign_key", "", "shared secret for request signatures; empty: signatures not checked",
                  secret=True),
    config.Option("sign_alg", "hmac-sha256", "signature algorithm", config.choice(*ALGORITHMS, case="lower")),
    config.Option("sign_skew_s", 300, "allowed clock difference for X-Medaid-Timestamp"),
    config.Option("deadline_s", 10.0, "deadline of each call to the router", config.number(0.001)),
    *tls.OPTIONS,  # the gateway's identity towards the router (mTLS); its HTTP side is unchanged
)


def requires_credential(cfg: config.Config, tls_on: bool) -> bool:
    """Whether every call but 9001 needs an institution credential; ends the process when it would
    but nothing could give one, and says so first thing in the log when it would not."""
    required = cfg["credentials"] == "required" or (cfg["credentials"] == "auto" and tls_on)
    if required and not (cfg["sign_key"] or cfg["institution_tokens"]):
        raise config.fail("gateway", "institution credentials are required (--credentials "
                          f"{cfg['credentials']}{', with TLS' if tls_on else ''}) but neither --sign-key nor "
                          "--institution-tokens is set: no institution could authenticate")
    if not required and not cfg["sign_key"]:
        log.warning("the gateway is open: any caller may act for any fixmedins_code. To require an institution "
                    "credential set MEDAID_CREDENTIALS=required (the default with MEDAID_TLS_DIR) with "
                    "MEDAID_INSTITUTION_TOKENS or MEDAID_SIGN_KEY(_FILE); MEDAID_REQUIRE_SIGN_IN=true adds sign-in")
    return required


async def main() -> None:
    cfg = config.parse("gateway", OPTIONS)
    logs.setup("gateway", cfg["log_level"])
    tls_config = tls.from_config("gateway", cfg)
    verifier = Verifier(cfg["sign_key"], cfg["sign_alg"], cfg["sign_skew_s"]) if cfg["sign_key"] else None
    settings = Settings(admdvs=cfg["admdvs"], require_sign_in=cfg["require_sign_in"],
                        sign_ttl_s=cfg["sign_ttl_s"], msgid_ttl_s=cfg["msgid_ttl_s"], file_ttl_s=cfg["file_ttl_s"],
                        deadline_s=cfg["deadline_s"], verifier=verifier,
                        store_timeout_s=cfg["store_check_timeout_ms"] / 1000,
                        require_credential=requires_credential(cfg, tls_config is not None),
                        tokens=load_tokens(cfg["institution_tokens"]) if cfg["institution_tokens"] else {})
    observed = observe.setup("gateway", cfg)  # after the credentials' WARNING: that is the first line
    client = await redis_connect(cfg, 64)  # single Redis or a redis+cluster:// URL
    rpc.set_tls(tls_config)  # before the router channel is opened
    gateway = Gateway(cfg["router"], client, clock=clock.from_spec(cfg["clock"]), settings=settings)

    async def close() -> None:
        await gateway.close()
        await client.aclose()

    await serve_http(make_app(gateway), host=cfg["host"], port=cfg["port"], grace_s=cfg["grace_s"],
                     announce={"service": "gateway", "path": CALL_PATH, "signatures": verifier is not None,
                               "require_sign_in": settings.require_sign_in,
                               "credentials": "required" if settings.require_credential else "open", **observed},
                     on_stop=close)

if __name__ == "__main__":
    install_uvloop()
    asyncio.run(main())
