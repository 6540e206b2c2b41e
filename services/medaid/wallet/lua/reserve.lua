-- Reserve a sender's transfer limits for one transfer (idempotent by transfer id).
-- KEYS[1] pending (string), KEYS[2] day counter, KEYS[3] reserved hash (tid -> day),
-- KEYS[4] the sender's transfers (zset by creation time)
-- ARGV[1] tid, ARGV[2] day, ARGV[3] max per day, ARGV[4] one pending (0/1), ARGV[5] created at (ms)
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then return {'OK', ''} end
local pending = redis.call('GET', KEYS[1])
if ARGV[4] == '1' and pending and pending ~= ARGV[1] then return {'ERR', 'PENDING_TRANSFER_EXISTS'} end
if tonumber(redis.call('GET', KEYS[2]) or '0') >= tonumber(ARGV[3]) then return {'ERR', 'DAILY_LIMIT_REACHED'} end
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], 259200)
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1])
return {'OK', ''}
