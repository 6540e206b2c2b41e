-- End one binding. KEYS[1] helper's members, KEYS[2] member's helpers, KEYS[3] record
-- ARGV[1] helper id, ARGV[2] member id, ARGV[3] now, ARGV[4] end reason, ARGV[5] request id ('' for
-- an automatic end). Returns 1 (ended now), 2 (ended earlier by this request id: a resend) or 0.
if redis.call('HGET', KEYS[3], 'active') ~= '1' then
  if ARGV[5] ~= '' and redis.call('HGET', KEYS[3], 'end_rid') == ARGV[5] then return 2 end
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], 'active', '0', 'ended_at', ARGV[3], 'end_reason', ARGV[4], 'end_rid', ARGV[5])
return 1
