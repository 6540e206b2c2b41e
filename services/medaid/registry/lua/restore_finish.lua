-- Undoing a reversal, last step on the patient's slot, fenced: every source paid again, so the
-- settlement stands (SETTLED) with its money under the new ref; the member's consumption records
-- are set back to their settled form.
-- KEYS[1] settlement record, KEYS[2] fence, KEYS[3] consumption hash
-- ARGV[1] token, ARGV[2] undo request id, ARGV[3] now, ARGV[4] the attempt's money ref (undo.attempt_ref),
-- ARGV[5] n, then n (name, json) pairs
-- Replies: {'OK'} | {'DONE'} | {'STALE'} | {'BADSTATE', state}
local state, restore_id = unpack(redis.call('HMGET', KEYS[1], 'state', 'restore_id'))
if restore_id ~= ARGV[2] then return {'BADSTATE', state or ''} end
if state ~= 'RESTORING' then
  if redis.call('HGET', KEYS[1], 'money_ref') == ARGV[4] then return {'DONE'} end
  return {'BADSTATE', state or ''}
end
if not fence_ok(KEYS[2], ARGV[1]) then return {'STALE'} end
for i = 1, tonumber(ARGV[5]) do
  redis.call('HSET', KEYS[3], ARGV[4 + 2 * i], ARGV[5 + 2 * i])
end
redis.call('HSET', KEYS[1], 'state', 'SETTLED', 'money_ref', ARGV[4], 'restored_at', ARGV[3])
return {'OK'}
