"""National person directory: which province insures a person (for routing 异地就医 bills).

Registries write it when they enroll a person and when the person's status changes or they
move; the router reads it when a request does not carry `insuplc_admdvs`. One key per person
(`dir:{psn:<id>}`), so it shards on Redis Cluster.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from medaid.common.values import text

# KEYS[1] entry; ARGV[1] province, ARGV[2] status, ARGV[3] mode ('enroll' | 'status'), ARGV[4] moved_to
# A status change only applies while the entry still names this province: once another province
# has enrolled the person, the old province's late "moved out" cannot point routing back.
_SET = """
local current = redis.call('HGET', KEYS[1], 'province')
if ARGV[3] == 'status' and current and current ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'province', ARGV[1], 'status', ARGV[2], 'moved_to', ARGV[4])
return 1
"""


class Directory:
    def __init__(self, client: aioredis.Redis | aioredis.RedisCluster) -> None:
        self._client = client
        self.client = client  # shared with the router's msgid claims
        self._set = client.register_script(_SET)

    @staticmethod
    def key(id_number: str) -> str:
        return f"dir:{{psn:{id_number}}}"

    async def status_changed(self, id_number: str, province: str, status: str, moved_to: str) -> None:
        # ACTIVE (an enrolment, a re-activation) claims the person for the province.
        mode = "enroll" if status == "ACTIVE" else "status"
        await self._set(keys=[self.key(id_number)], args=[province, status, mode, moved_to])

    async def lookup(self, id_number: str) -> tuple[str, str, str] | None:
        """(province, status, moved_to) or None when no registry ever enrolled the person."""
        province, status, moved_to = await self._client.hmget(self.key(id_number), ["province", "status", "moved_to"])
        if province is None:
            return None
        return text(province), text(status or b""), text(moved_to or b"")
