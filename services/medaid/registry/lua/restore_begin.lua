-- Undoing a reversal (冲正 of a 2208), step 1 on the patient's slot, fenced: take the own-account
-- share back and mark the record RESTORING under the attempt's new money ref, which Python made
-- (undo.new_attempt_ref) and the record keeps. Checks the fence first (a holder overtaken since it
-- read the record learns only that), then that the reversal to undo is the one in force and that the
-- patient can still pay it, and that no 2601 of the settlement itself cancelled it (reverse_begin.lua);
-- writes nothing if not.
-- KEYS[1] settlement record, KEYS[2] patient person, KEYS[3] account, KEYS[4] ledger, KEYS[5] fence
-- ARGV[1] token, ARGV[2] undo request id, ARGV[3] reversal id, ARGV[4] now, ARGV[5] the attempt's money ref
-- Replies: {'OK', n, own balance after} | {'RESUME', n, ''} | {'STALE', '', ''} | {'BADSTATE', state, ''}
-- | {'INACTIVE', '', ''} | {'SHORT', balance, ''} | {'CANCELLED', the 2601 that cancelled it, ''}
local state, restore_id, reversal_id, restores, acct_pay, cancelled_by = unpack(redis.call('HMGET', KEYS[1],
  'state', 'restore_id', 'reversal_id', 'restores', 'acct_pay', 'cancelled_by'))
if not fence_ok(KEYS[5], ARGV[1]) then return {'STALE', '', ''} end
if state == 'RESTORING' and restore_id == ARGV[2] then return {'RESUME', restores, ''} end
if cancelled_by then return {'CANCELLED', cancelled_by, ''} end
if state ~= 'REVERSED' or reversal_id ~= ARGV[3] then return {'BADSTATE', state or '', ''} end
if redis.call('HGET', KEYS[2], 'status') ~= 'ACTIVE' then return {'INACTIVE', '', ''} end
local amount = tonumber(acct_pay)
local bal = tonumber(redis.call('HGET', KEYS[3], 'bal') or '-1')
if amount > 0 and bal < amount then return {'SHORT', fmt(bal), ''} end
local n = tonumber(restores or '0') + 1
local after = bal
if amount > 0 then after = move(KEYS[3], KEYS[4], -amount, 'SETTLE_OWN', ARGV[5], ARGV[4]) end
redis.call('HSET', KEYS[1], 'state', 'RESTORING', 'restores', fmt(n), 'restore_id', ARGV[2], 'restore_ref', ARGV[5],
  'restore_refused', '',
  'restore_started_at', ARGV[4], 'restore_own_bal_after', fmt(after))
return {'OK', fmt(n), fmt(after)}
