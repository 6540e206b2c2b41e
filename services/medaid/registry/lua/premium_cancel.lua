-- 代缴 cancellation step 1, on the payee's slot, fenced: PAID → CANCELLING (owned by the cancel id).
-- KEYS[1] premium record, KEYS[2] fence; ARGV[1] token, ARGV[2] cancel id, ARGV[3] the premium id the
-- cancel was checked against ('' : any), ARGV[4] now (the cancellation's time, `cancel_at`: its
-- cancelled_at and the month its wallet refund clears in, however late it is finished)
-- Replies: {'CANCELLING'} | {'CANCELLED'} (this cancel id, done) | {'ERR', 'PREMIUM_NOT_PAID'} | {'STALE'}
--   | {'CHANGED'} (the record is another payment than the one checked) | {'PENDING'} (the payment is still
--   being paid: nothing to cancel yet)
if not fence_ok(KEYS[2], ARGV[1]) then return {'STALE'} end
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'CANCELLING' or state == 'CANCELLED' then
  if redis.call('HGET', KEYS[1], 'cancel_id') == ARGV[2] then return {state} end
  return {'ERR', 'PREMIUM_NOT_PAID'}
end
if state == 'PENDING' then return {'PENDING'} end
if state ~= 'PAID' then return {'ERR', 'PREMIUM_NOT_PAID'} end
if ARGV[3] ~= nil and ARGV[3] ~= '' and redis.call('HGET', KEYS[1], 'id') ~= ARGV[3] then return {'CHANGED'} end
redis.call('HSET', KEYS[1], 'state', 'CANCELLING', 'cancel_id', ARGV[2], 'cancel_at', ARGV[4])
return {'CANCELLING'}
