"""National person directory: which province insures a person (for routing 异地就医 bills).

Registries write it when they enroll a person and when the person's status changes or they
move; the router reads it when a request does not carry `insuplc_admdvs`. One entry per person
(`dir:{psn:<id>}`) and, beside it in the same slot, the other provinces that still hold them
(`dir:{psn:<id>}:held`) and the status version each province last told (`dir:{psn:<id>}:sv`), so it
shards on Redis Cluster.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from medaid.common.values import text

# KEYS[1] the entry, KEYS[2] the other provinces that hold the person (province → ACTIVE | SUSPENDED),
# KEYS[3] the status version each province last told (province → sv);
# ARGV[1] province, ARGV[2] status, ARGV[3] moved_to, ARGV[4] the registry's status version of the person
# (`sv`, registry/lua/_prelude.lua person_set) as it read the status. Returns 1 applied, 2 given back,
# 0 not the entry's, 3 stale.
# A province's tell carrying a version not newer than the last it told is stale and changes nothing: two
# status changes of one person finished at once (two requests, a request and the recovery loop) tell
# the directory in either order, and the one that read the older status must not overwrite the newer.
# ACTIVE (an enrolment, a re-activation) takes the entry; the province it takes it from, when it still
# holds the person, is noted. Another status applies only from the entry's province: once another
# province has enrolled the person, the old province's late "moved out" cannot point routing back; it
# updates that province's note instead. A termination from the entry's province gives the entry back to
# a province that still holds the person (the one moved to first, then ACTIVE before SUSPENDED, then the
# lowest code), so a late ACTIVE followed by a replayed termination cannot leave them routed where they
# are not insured. A death is final and not bound to a province: DECEASED, from whichever province
# records it first, takes the entry, and nothing takes it back (an enrolment elsewhere that had not seen
# the death, a holder's later change, a second province's death): the directory never calls a dead person
# ACTIVE. A province that still holds them is noted beside it.
_SET = """
local entry, others, versions = KEYS[1], KEYS[2], KEYS[3]
local province, status, moved_to, sv = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local told = tonumber(redis.call('HGET', versions, province) or '-1')
if sv <= told then return 3 end
redis.call('HSET', versions, province, sv)
local holding = {ACTIVE = true, SUSPENDED = true}
local current, was = unpack(redis.call('HMGET', entry, 'province', 'status'))
if was == 'DECEASED' then
  if current ~= province then
    if holding[status] then redis.call('HSET', others, province, status)
    else redis.call('HDEL', others, province) end
  end
  return 0
end
if current and current ~= province then
  if status ~= 'ACTIVE' and status ~= 'DECEASED' then
    if redis.call('HEXISTS', others, province) == 1 then
      if holding[status] then redis.call('HSET', others, province, status)
      else redis.call('HDEL', others, province) end
    end
    return 0
  end
  if holding[was] then redis.call('HSET', others, current, was) end
end
redis.call('HDEL', others, province)
if status == 'TERMINATED' then
  local held, by, order = redis.call('HGETALL', others), {}, {}
  for i = 1, #held, 2 do by[held[i]] = held[i + 1]; order[#order + 1] = held[i] end
  table.sort(order)
  local back = by[moved_to] and moved_to
  if not back then
    for _, p in ipairs(order) do if by[p] == 'ACTIVE' then back = p break end end
    back = back or order[1]
  end
  if back then
    redis.call('HDEL', others, back)
    redis.call('HSET', entry, 'province', back, 'status', by[back], 'moved_to', '')
    return 2
  end
end
redis.call('HSET', entry, 'province', province, 'status', status, 'moved_to', moved_to)
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

    @staticmethod
    def others_key(id_number: str) -> str:
        """The other provinces that hold the person ACTIVE or SUSPENDED (the entry's slot)."""
        return f"dir:{{psn:{id_number}}}:held"

    @staticmethod
    def versions_key(id_number: str) -> str:
        """The status version each province last told of the person (the entry's slot)."""
        return f"dir:{{psn:{id_number}}}:sv"

    async def status_changed(self, id_number: str, province: str, status: str, moved_to: str, version: int) -> None:
        """Province `province` holds the person `status` (`moved_to`: the province recorded as moved to), as
        of its status version `version`; a tell older than one it applied already changes nothing."""
        await self._set(keys=[self.key(id_number), self.others_key(id_number), self.versions_key(id_number)],
                        args=[province, status, moved_to, version])

    async def lookup(self, id_number: str) -> tuple[str, str, str] | None:
        """(province, status, moved_to) or None when no registry ever enrolled the person."""
        province, status, moved_to = await self._client.hmget(self.key(id_number), ["province", "status", "moved_to"])
        if province is None:
            return None
        return text(province), text(status or b""), text(moved_to or b"")

    async def insured_province(self, id_number: str) -> str:
        """The province that insures the person as the directory says, '' when none does: the entry's
        province while it holds them ACTIVE or SUSPENDED, the province a termination recorded a move to,
        and none for one terminated without a move or dead (a bind, an invitation or a 代缴 then answers
        that they are not insured, not that another province insures them: SPEC §3 CROSS_PROVINCE)."""
        found = await self.lookup(id_number)
        if found is None:
            return ""
        province, status, moved_to = found
        if status in ("ACTIVE", "SUSPENDED"):
            return province
        return moved_to if status == "TERMINATED" else ""
