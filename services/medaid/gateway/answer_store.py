"""The gateway's answer store: a message's msgid is its idempotency key (`gw:{msg:<msgid>}`).

A message seen before with the same content gets the first answer byte for byte; the same msgid
with other content is refused (IDEMPOTENCY_KEY_REUSED); a message undone by a 2601 is refused
(ORIGINAL_CANCELLED). Answers are stored with SET NX, so concurrent duplicates agree on the first.
`key` is always the msgid scoped by institution (medaid.common.msgid)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import redis.asyncio as aioredis
from pydantic import BaseModel

from medaid.gateway import schemas as s
from medaid.gateway.answers import GatewayError

# The answer store's fingerprint of a message undone by a 2601: a resend of it is refused.
CANCELLED = "cancelled"



def fingerprint(env: s.Envelope, inp: BaseModel) -> str:
    content = {"infno": env.infno, "fixmedins_code": env.fixmedins_code,
               "mdtrtarea_admvs": env.mdtrtarea_admvs, "insuplc_admdvs": env.insuplc_admdvs,
               "input": inp.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def answer_key(key: str) -> str:
    """The answer store of a message; `key` is its msgid scoped by institution (medaid.common.msgid)."""
    return f"gw:{{msg:{key}}}"


def _decode_stored(msgid: str, raw: bytes | str, fp: str) -> bytes:
    stored = json.loads(raw)
    if stored["fp"] == CANCELLED:
        raise GatewayError("ORIGINAL_CANCELLED", f"msgid {msgid[-30:]} 已被2601冲正({stored['by']})")
    if stored["fp"] != fp:
        raise GatewayError("IDEMPOTENCY_KEY_REUSED", f"msgid {msgid}")
    return str(stored["answer"]).encode("utf-8")


async def first_answer(redis: aioredis.Redis | aioredis.RedisCluster, msgid: str, fp: str) -> bytes | None:
    raw = await redis.get(answer_key(msgid))
    return None if raw is None else _decode_stored(msgid, raw, fp)


async def store(redis: aioredis.Redis | aioredis.RedisCluster, msgid: str, fp: str, answer: bytes, ttl_s: int,
                infno: str) -> bytes:
    value = json.dumps({"fp": fp, "infno": infno, "answer": answer.decode("utf-8")}, ensure_ascii=False)
    if await redis.set(answer_key(msgid), value, nx=True, ex=ttl_s or None):
        return answer
    # A concurrent duplicate answered first: everyone gets that answer.
    raw = await redis.get(answer_key(msgid))
    return answer if raw is None else _decode_stored(msgid, raw, fp)


async def stored_record(redis: aioredis.Redis | aioredis.RedisCluster, msgid: str) -> dict[str, Any]:
    """What is stored of a message ({} when nothing is): its `infno`, `fp` (CANCELLED once undone)."""
    raw = await redis.get(answer_key(msgid))
    if raw is None:
        return {}
    record: dict[str, Any] = json.loads(raw)
    return record


async def cancel(redis: aioredis.Redis | aioredis.RedisCluster, msgid: str, by: str, ttl_s: int) -> None:
    """Mark a message undone by the 2601 `by`: its stored answer is never replayed again."""
    value = json.dumps({"fp": CANCELLED, "by": by, "answer": ""})
    await redis.set(answer_key(msgid), value, ex=ttl_s or None)
