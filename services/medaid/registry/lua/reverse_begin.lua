-- KEYS[1] settlement record, KEYS[2] fence; ARGV[1] token, ARGV[2] reversal id, ARGV[3] now,
-- ARGV[4] '1' for a 2601 冲正 of the settlement: it is cancelled for good ('cancelled_by', the first
-- one's id), whether this reversal reverses it or another one has (reversing or reversed), so that no
-- undo of a reversal restores it from now on (restore_begin.lua). Under the fence.
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'REVERSING' or state == 'REVERSED' then
  if ARGV[4] == '1' then
    if not fence_ok(KEYS[2], ARGV[1]) then return {'STALE', ''} end
    redis.call('HSETNX', KEYS[1], 'cancelled_by', ARGV[2])
  end
  return {state, redis.call('HGET', KEYS[1], 'reversal_id')}
end
if state ~= 'SETTLED' then return {'BADSTATE', state or ''} end
if not fence_ok(KEYS[2], ARGV[1]) then return {'STALE', ''} end
redis.call('HSET', KEYS[1], 'state', 'REVERSING', 'reversal_id', ARGV[2], 'reversal_started_at', ARGV[3])
if ARGV[4] == '1' then redis.call('HSETNX', KEYS[1], 'cancelled_by', ARGV[2]) end
return {'REVERSING', ARGV[2]}
