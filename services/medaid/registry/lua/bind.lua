-- Bind helper -> member atomically with every structural rule (all keys in the {bind} slot).
-- KEYS[1] helper's members zset, KEYS[2] member's helpers zset, KEYS[3] record helper->member,
-- KEYS[4] record member->helper, KEYS[5] member's members zset (member as a helper),
-- KEYS[6] helper's helpers zset (helper as a member), KEYS[7] binding sequence,
-- KEYS[8] helper's all-time members set, KEYS[9] member's all-time helpers set
-- ARGV[1] helper id, ARGV[2] member id, ARGV[3] relation, ARGV[4] now, ARGV[5] max members,
-- ARGV[6] exclusive (0/1), ARGV[7] request id (a resend of the same bind finds its own binding: MINE),
-- KEYS[10] / ARGV[8] the entry's fence and the writer's mark (place_fenced: {'ERR', 'FENCED'})
if place_fenced() then return {'ERR', 'FENCED'} end
if redis.call('HGET', KEYS[3], 'active') == '1' then
  if redis.call('HGET', KEYS[3], 'rid') == ARGV[7] then return {'MINE', redis.call('HGET', KEYS[3], 'seq')} end
  return {'ERR', 'ALREADY_BOUND'}
end
if redis.call('HGET', KEYS[4], 'active') == '1' then return {'ERR', 'REVERSE_BINDING'} end
if ARGV[6] == '1' then
  if redis.call('ZCARD', KEYS[2]) > 0 or redis.call('ZCARD', KEYS[5]) > 0
     or redis.call('ZCARD', KEYS[6]) > 0 then
    return {'ERR', 'ALREADY_IN_ANOTHER_RELATION'}
  end
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[5]) then return {'ERR', 'MEMBER_LIMIT_REACHED'} end
local seq = redis.call('INCR', KEYS[7])
redis.call('ZADD', KEYS[1], seq, ARGV[2])
redis.call('ZADD', KEYS[2], seq, ARGV[1])
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[3], 'helper', ARGV[1], 'member', ARGV[2], 'relation', ARGV[3], 'bound_at', ARGV[4],
           'seq', seq, 'active', '1', 'rid', ARGV[7])
redis.call('SADD', KEYS[8], ARGV[2])
redis.call('SADD', KEYS[9], ARGV[1])
return {'OK', fmt(seq)}
