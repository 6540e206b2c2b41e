"""Which institution sends a message: its credential (a signature, a bearer token or a sign_no) and
the sign-ins that hand out sign_nos (9001 签到, 9002 签退), kept in the gateway's Redis as
`gw:{sign:<sign_no>}`."""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING

from pydantic import BaseModel

from medaid.common import errors
from medaid.common.logs import event
from medaid.common.values import text
from medaid.gateway import schemas as s
from medaid.gateway.answers import GatewayError, fmt_ms
from medaid.gateway.context import AUTHORIZATION

if TYPE_CHECKING:
    from medaid.gateway.service import Gateway

log = logging.getLogger("medaid.gateway")

# 9002: mark a sign-in of this institution signed out, once; the time it was (nil: no such sign-in).
_SIGN_OUT = """
if redis.call('HGET', KEYS[1], 'fixmedins_code') ~= ARGV[1] then return false end
redis.call('HSETNX', KEYS[1], 'out', ARGV[2])
return redis.call('HGET', KEYS[1], 'out')
"""


def sign_key(sign_no: str) -> str:
    return f"gw:{{sign:{sign_no}}}"


async def check_credential(gw: Gateway, env: s.Envelope, signing_out: str = "") -> None:
    """Which institution sends this? The router trusts the gateway's certificate to act for any
    fixmedins_code, so without a credential anyone who reaches the gateway could settle as any
    hospital. Accepted, in this order: a request signature (checked before the message was read),
    a bearer token from `--institution-tokens` naming this fixmedins_code (the router checks it
    again), or, on every call but 9001, a sign_no from this institution's 9001, which itself
    needed a signature or a token."""
    if gw.settings.verifier is not None:
        return
    header = AUTHORIZATION.get()
    if header is not None:
        try:
            code = gw.tokens.by_token(header)
        except errors.DomainError as exc:
            raise GatewayError(exc.reason) from None
        if code != env.fixmedins_code:
            raise GatewayError("INSTITUTION_MISMATCH", f"令牌属于 {code}")
        return
    if env.infno != "9001" and env.sign_no:
        await check_sign_no(gw, env, signing_out)
        return
    raise GatewayError("CREDENTIAL_REQUIRED", "9001" if env.infno == "9001" else "")


async def check_sign_no(gw: Gateway, env: s.Envelope, signing_out: str = "") -> None:
    """The envelope's sign_no is this institution's and not signed out (9002), unless this is the
    9002 that signs it out (its resend must be answered)."""
    if not env.sign_no:
        raise GatewayError("SIGN_NO_INVALID", "sign_no 为空")
    owner, out = await gw.redis.hmget(sign_key(env.sign_no), ["fixmedins_code", "out"])
    if owner is None or text(owner) != env.fixmedins_code:
        raise GatewayError("SIGN_NO_INVALID", f"sign_no {env.sign_no[:8]}…")
    if out is not None and env.sign_no != signing_out:
        raise GatewayError("SIGN_NO_INVALID", f"sign_no {env.sign_no[:8]}… 已签退")


# --- 9001 签到 / 9002 签退 -------------------------------------------------------------------------


async def sign_in(gw: Gateway, env: s.Envelope, inp: s.Input9001) -> tuple[BaseModel, list[str]]:
    now = gw.clock.now_ms()
    sign_no = secrets.token_hex(15)  # 30 characters: the interface's sign_no is 字符型(30)
    key = sign_key(sign_no)
    async with gw.redis.pipeline(transaction=True) as p:
        p.hset(key, mapping={"fixmedins_code": env.fixmedins_code, "opter": env.opter,
                             "opter_no": inp.signIn.opter_no, "at": now})
        p.expire(key, gw.settings.sign_ttl_s)
        await p.execute()
    event(log, "signed in", fixmedins=env.fixmedins_code, opter=inp.signIn.opter_no or env.opter)
    return s.Output9001(signinoutb=s.SignInOut(sign_time=fmt_ms(now, "%Y-%m-%d %H:%M:%S"), sign_no=sign_no)), []


async def sign_out(gw: Gateway, env: s.Envelope, inp: s.Input9002) -> tuple[BaseModel, list[str]]:
    """9002: the sign_no no longer stands for the institution. Signing out a sign_no already signed
    out answers the first sign-out's time (a HIS that resends under a new msgid is not refused)."""
    no = inp.signOut.sign_no
    out = await gw.redis.eval(_SIGN_OUT, 1, sign_key(no), env.fixmedins_code, gw.clock.now_ms())
    if out is None:
        raise GatewayError("SIGN_NO_INVALID", f"sign_no {no[:8]}…")
    event(log, "signed out", fixmedins=env.fixmedins_code, opter=inp.signOut.opter_no or env.opter)
    return s.Output9002(signoutoutb=s.SignOutOut(sign_time=fmt_ms(int(out), "%Y-%m-%d %H:%M:%S"))), []
