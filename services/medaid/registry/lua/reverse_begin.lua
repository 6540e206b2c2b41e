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
-- The reversal's time, chosen here once (its reversed_at, its 3201 day, the month its wallet refund is
-- counted out in): never before the settlement it reverses, nor an earlier reversal or undo of it, as a
-- registry process whose clock is behind the one that settled would otherwise date it.
local at = tonumber(ARGV[3])
for _, field in ipairs({'at', 'reversed_at', 'restored_at'}) do
  local t = tonumber(redis.call('HGET', KEYS[1], field) or '0') or 0
  if t > at then at = t end
end
redis.call('HSET', KEYS[1], 'state', 'REVERSING', 'reversal_id', ARGV[2], 'reversal_started_at', fmt(at))
if ARGV[4] == '1' then redis.call('HSETNX', KEYS[1], 'cancelled_by', ARGV[2]) end
return {'REVERSING', ARGV[2]}
