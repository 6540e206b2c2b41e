-- Undoing a reversal could not take every share (a source no longer covers it). On the patient's
-- slot, fenced, in two calls:
--   'mark'    records the refusal while the record is still RESTORING, before anything goes back,
--             so an attempt resumed after a crash gives back instead of charging on;
--   'finish'  once the helpers' and the wallet's shares went back, returns the own-account share
--             and leaves the settlement REVERSED as it was (DONE when already finished).
-- KEYS[1] settlement record, KEYS[2] account, KEYS[3] ledger, KEYS[4] fence
-- ARGV[1] token, ARGV[2] undo request id, ARGV[3] now, ARGV[4] reason, ARGV[5] 'mark' | 'finish',
-- ARGV[6] the attempt's money ref (undo.attempt_ref)
-- Replies: {'OK'} | {'DONE'} | {'STALE'} | {'BADSTATE', state}
local state, restore_id, acct_pay, refused = unpack(redis.call('HMGET', KEYS[1], 'state', 'restore_id',
  'acct_pay', 'restore_refused'))
if restore_id ~= ARGV[2] then return {'BADSTATE', state or ''} end
if state ~= 'RESTORING' then
  if state == 'REVERSED' and refused and refused ~= '' then return {'DONE'} end
  return {'BADSTATE', state or ''}
end
if not fence_ok(KEYS[4], ARGV[1]) then return {'STALE'} end
if ARGV[5] == 'mark' then
  if not refused or refused == '' then redis.call('HSET', KEYS[1], 'restore_refused', ARGV[4]) end
  return {'OK'}
end
local amount = tonumber(acct_pay)
if amount > 0 then move(KEYS[2], KEYS[3], amount, 'REVERSE_OWN', ARGV[6], ARGV[3]) end
redis.call('HSET', KEYS[1], 'state', 'REVERSED')
return {'OK'}
