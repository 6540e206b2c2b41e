-- Acquire a fenced lock.
-- KEYS[1] lock key, KEYS[2] fence counter (same hash tag)
-- ARGV[1] owner id, ARGV[2] ttl ms
-- Returns {1, token} on success, {0, pttl} when held by someone else.
local held = redis.call('PTTL', KEYS[1])
if held ~= -2 then
  return {0, held}
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. token, 'PX', ARGV[2])
return {1, token}
