"""Institutions at the router: who is calling, may they act for the request's fixmedins_code, and
are they within their rate.

Authentication, in this order (the first that applies decides):

1. metadata `authorization: Bearer <token>`: the token must be one of `--institution-tokens`
   (TOML `[tokens] <fixmedins_code> = "sha256:<hex of the token>"` or, for development only, the
   token itself); it authenticates that institution. Otherwise UNAUTHENTICATED /
   INSTITUTION_TOKEN_INVALID. (When the peer's certificate is itself an institution's, the two
   must agree.)
2. a client certificate whose CN is a fixmedins_code (12 capital letters or digits): that institution;
3. a client certificate of an institution proxy (`gateway`, `bench`; see medaid.common.authz):
   the institution the request names (the gateway authenticates institutions itself);
4. anything else: UNAUTHENTICATED / INSTITUTION_UNAUTHENTICATED.

The authenticated institution must be the request's `institution.fixmedins_code`, else
PERMISSION_DENIED / INSTITUTION_MISMATCH. Then the institution's token bucket
(`--rate-limit-rps`, `--rate-limit-burst`) must hold a token, else RESOURCE_EXHAUSTED /
RATE_LIMITED (metadata `retry_after_ms`). All of it runs before the handler: a refusal writes nothing.

Authentication is on when the router runs with TLS or has a token file; rate limits whenever
`--rate-limit-rps` > 0 (keyed by the request's fixmedins_code when nothing is authenticated).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc

from medaid.common import config, errors
from medaid.common.authz import INSTITUTION_PROXIES, ROUTER, Caller, denied, unauthenticated
from medaid.common.ratelimit import TokenBuckets

log = logging.getLogger("medaid.router.security")

INSTITUTION_METHODS = frozenset(f"/{ROUTER}/{m}" for m in (
    "QueryPerson", "PreSettle", "Settle", "ReverseSettlement", "Undo", "QuerySettlement", "ReconcileTotals",
    "ReconcileDetails"))
_CODE = re.compile(r"^[A-Z0-9]{12}$")
_SHA256 = re.compile(r"^sha256:([0-9a-f]{64})$")
MIN_TOKEN_LEN = 16

OPTIONS = (
    config.Option("institution_tokens", "", "TOML file of institution tokens ([tokens] CODE = \"sha256:<hex>\"); "
                  "empty: none (institutions then authenticate by certificate when TLS is on)", config.PATH),
    config.Option("rate_limit_rps", 0.0, "requests a second each institution may make (0: no limit)"),
    config.Option("rate_limit_burst", 0.0, "requests an institution may save up (0: the rate, at least 1)"),
)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


_TOKENS = "--institution-tokens (MEDAID_INSTITUTION_TOKENS)"


def load_tokens(path: str | Path) -> dict[str, str]:
    """sha256 hex of each token → its fixmedins_code."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise config.Unusable(f"{_TOKENS} {path}: {exc}") from None
    table = data.get("tokens")
    if not isinstance(table, dict):
        raise config.Unusable(f"{_TOKENS} {path}: want a [tokens] table of fixmedins_code = token")
    out: dict[str, str] = {}
    for code, value in table.items():
        if not _CODE.match(code) or not isinstance(value, str):
            raise config.Unusable(f"{_TOKENS} {path}: {code!r} is not a 12-character fixmedins_code = string")
        m = _SHA256.match(value)
        if m:
            h = m.group(1)
        elif len(value) >= MIN_TOKEN_LEN:
            h = digest(value)
        else:
            raise config.Unusable(f"{_TOKENS} {path}: the token of {code} is shorter than {MIN_TOKEN_LEN}")
        if h in out:
            raise config.Unusable(f"{_TOKENS} {path}: {code} and {out[h]} share a token")
        out[h] = code
    return out


def write_tokens(path: str | Path, tokens: Mapping[str, str]) -> None:
    """fixmedins_code → token, stored as sha256 digests."""
    lines = ["# fixmedins_code = \"sha256:<hex sha256 of the bearer token>\"", "[tokens]"]
    lines += [f'{code} = "sha256:{digest(tok)}"' for code, tok in sorted(tokens.items())]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


class InstitutionGate:
    def __init__(self, tokens: Mapping[str, str], *, authenticate: bool, limiter: TokenBuckets | None) -> None:
        self.tokens = dict(tokens)
        self.authenticate = authenticate
        self.limiter = limiter

    def by_token(self, header: str) -> str:
        """The institution an `authorization` value authenticates (raises UNAUTHENTICATED)."""
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise unauthenticated("INSTITUTION_TOKEN_INVALID", "authorization must be 'Bearer <token>'")
        h = digest(token)
        for known, code in self.tokens.items():  # constant time per entry
            if hmac.compare_digest(known, h):
                return code
        raise unauthenticated("INSTITUTION_TOKEN_INVALID", "the institution token is not valid")

    def institution(self, request: Any, context: grpc.aio.ServicerContext, caller: Caller | None) -> str:
        """The authenticated institution (raises UNAUTHENTICATED / PERMISSION_DENIED)."""
        claimed: str = request.institution.fixmedins_code
        if not self.authenticate:
            return claimed
        header = next((v for k, v in (context.invocation_metadata() or ()) if k == "authorization"), None)
        if header is not None:
            if isinstance(header, bytes):
                header = header.decode(errors="replace")
            inst = self.by_token(header)
            if caller is not None and caller.role == "institution" and caller.identity != inst:
                raise denied("INSTITUTION_MISMATCH", "the token and the client certificate name different "
                             "institutions", fixmedins_code=claimed)
        elif caller is not None and caller.role == "institution":
            inst = caller.identity
        elif caller is not None and caller.role in INSTITUTION_PROXIES:
            inst = claimed
        else:
            raise unauthenticated("INSTITUTION_UNAUTHENTICATED", "an institution must authenticate: "
                                  "'authorization: Bearer <token>' or its client certificate")
        if inst != claimed:
            raise denied("INSTITUTION_MISMATCH", f"authenticated as institution {inst}; the request names "
                         "another fixmedins_code", fixmedins_code=claimed)
        return inst

    async def __call__(self, method: str, request: Any, context: grpc.aio.ServicerContext,
                       caller: Caller | None) -> None:
        inst = self.institution(request, context, caller)
        if self.limiter is not None:
            wait_s = self.limiter.take(inst)
            if wait_s > 0:
                raise errors.DomainError(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED",
                                         f"institution {inst} is over its rate limit; retry the same msgid later",
                                         {"fixmedins_code": inst, "retry_after_ms": str(max(1, round(wait_s * 1000)))})


def from_config(cfg: Mapping[str, Any], *, tls_on: bool) -> InstitutionGate | None:
    """None when there is nothing to check (plaintext, no tokens, no rate limit): the default."""
    tokens = load_tokens(cfg["institution_tokens"]) if cfg["institution_tokens"] else {}
    rps: float = cfg["rate_limit_rps"]
    burst: float = cfg["rate_limit_burst"] or max(1.0, rps)
    limiter = TokenBuckets(rps, burst) if rps > 0 else None
    authenticate = tls_on or bool(cfg["institution_tokens"])
    if not authenticate and limiter is None:
        return None
    return InstitutionGate(tokens, authenticate=authenticate, limiter=limiter)
