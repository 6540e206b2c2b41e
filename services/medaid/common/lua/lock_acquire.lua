-- Acquire a fenced lock.
-- KEYS[1] lock key, KEYS[2] fence counter (same hash tag)
-- ARGV[1] owner id, ARGV[2] ttl ms
-- Returns {1, token} on success, {0, pttl} when held by someone else.
-- The same owner finding the lock held by itself gets its token back (TTL renewed, no new token):
-- the client re-sends this script when a lost connection ate the first reply, and that second run
-- must not report the caller's own lock as busy.
local held = redis.call('GET', KEYS[1])
if held then
  local mine = ARGV[1] .. ':'
  if string.sub(held, 1, #mine) == mine and string.match(string.sub(held, #mine + 1), '^%d+$') then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, tonumber(string.sub(held, #mine + 1))}
  end
  return {0, redis.call('PTTL', KEYS[1])}
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. token, 'PX', ARGV[2])
return {1, token}
