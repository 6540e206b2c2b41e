-- Reserve a sender's transfer limits for one transfer (idempotent by transfer id).
-- KEYS[1] pending (string), KEYS[2] day counter, KEYS[3] reserved hash (tid -> day),
-- KEYS[4] the sender's transfers (zset by creation time), KEYS[5] the pending transfer's acceptance deadline
-- ARGV[1] tid, ARGV[2] day, ARGV[3] max per day, ARGV[4] one pending (0/1), ARGV[5] created at (ms),
-- ARGV[6] this transfer's acceptance deadline (ms)
-- The pending transfer stops holding the slot at its deadline, whenever its return is swept: from
-- then on it can no longer be accepted. A slot taken before the deadline was kept holds it until swept.
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then return {'OK', ''} end
local pending = redis.call('GET', KEYS[1])
if ARGV[4] == '1' and pending and pending ~= ARGV[1] then
  local deadline = tonumber(redis.call('GET', KEYS[5]) or '0')
  if deadline == 0 or tonumber(ARGV[5]) < deadline then return {'ERR', 'PENDING_TRANSFER_EXISTS'} end
end
if tonumber(redis.call('GET', KEYS[2]) or '0') >= tonumber(ARGV[3]) then return {'ERR', 'DAILY_LIMIT_REACHED'} end
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], 259200)
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[5], ARGV[6])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1])
return {'OK', ''}
