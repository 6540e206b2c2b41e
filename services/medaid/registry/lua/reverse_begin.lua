-- KEYS[1] settlement record, KEYS[2] fence; ARGV[1] token, ARGV[2] reversal id, ARGV[3] now
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'REVERSING' or state == 'REVERSED' then
  return {state, redis.call('HGET', KEYS[1], 'reversal_id')}
end
if state ~= 'SETTLED' then return {'BADSTATE', state or ''} end
if not fence_ok(KEYS[2], ARGV[1]) then return {'STALE', ''} end
redis.call('HSET', KEYS[1], 'state', 'REVERSING', 'reversal_id', ARGV[2], 'reversal_started_at', ARGV[3])
return {'REVERSING', ARGV[2]}
