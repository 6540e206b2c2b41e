-- End one binding. KEYS[1] helper's members, KEYS[2] member's helpers, KEYS[3] record,
-- KEYS[4] what request ARGV[5] ended (Keys.unbound_by; untouched for an automatic end)
-- ARGV[1] helper id, ARGV[2] member id, ARGV[3] now, ARGV[4] end reason, ARGV[5] request id ('' for
-- an automatic end), ARGV[6] the time of the life-cycle event that ends it (unix ms; absent or 0: any
-- binding): only a binding bound by then is the event's, so an event finished late (a resend, the
-- recovery loop) leaves one made since, once the person was ACTIVE again (a binding that kept no time
-- counts as bound before). Returns 1 (ended now), 2 (ended earlier by this request id: a resend) or 0.
-- A request that ended a binding keeps a copy of it as it ended it: its resend answers that one and
-- ends nothing, even when the pair was bound again since (the record is then the new binding's).
if ARGV[5] ~= '' then
  if redis.call('EXISTS', KEYS[4]) == 1 then return 2 end
  if redis.call('HGET', KEYS[3], 'active') ~= '1' and redis.call('HGET', KEYS[3], 'end_rid') == ARGV[5] then
    return 2  -- ended before its copy was kept: the record is still the one it ended
  end
end
if redis.call('HGET', KEYS[3], 'active') ~= '1' then return 0 end
local by = tonumber(ARGV[6] or '0') or 0
if by > 0 and (tonumber(redis.call('HGET', KEYS[3], 'bound_at') or '0') or 0) > by then return 0 end
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], 'active', '0', 'ended_at', ARGV[3], 'end_reason', ARGV[4], 'end_rid', ARGV[5])
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[4], unpack(redis.call('HGETALL', KEYS[3])))
end
return 1
