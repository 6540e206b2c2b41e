-- 代缴's last step, on the payee's slot, fenced: PENDING → PAID (the payee becomes ACTIVE: paying is
-- what makes them insured for the year), PENDING dropped (the money could not be taken: nothing
-- stays), or CANCELLING → CANCELLED (the payee's status as it was before the payment).
-- KEYS[1] premium record, KEYS[2] fence, KEYS[3] payee person
-- ARGV[1] token, ARGV[2] 'PAID' | 'DROP' | 'CANCELLED', ARGV[3] now, ARGV[4] contributors
-- Replies: {state} | {'STALE'} | {'BADSTATE', state}
if not fence_ok(KEYS[2], ARGV[1]) then return {'STALE'} end
local state = redis.call('HGET', KEYS[1], 'state')
local want = ARGV[2]
if want == 'PAID' then
  if state == 'PAID' then return {'PAID'} end
  if state ~= 'PENDING' then return {'BADSTATE', state or ''} end
  redis.call('HSET', KEYS[1], 'state', 'PAID', 'paid_at', ARGV[3], 'contributors', ARGV[4])
  redis.call('HSET', KEYS[3], 'status', 'ACTIVE')
  return {'PAID'}
end
if want == 'DROP' then
  if state == 'PENDING' then redis.call('DEL', KEYS[1]) end
  return {'DROPPED'}
end
if state == 'CANCELLED' then return {'CANCELLED'} end
if state ~= 'CANCELLING' then return {'BADSTATE', state or ''} end
redis.call('HSET', KEYS[1], 'state', 'CANCELLED', 'cancelled_at', ARGV[3])
local prev = redis.call('HGET', KEYS[1], 'prev_status')
if prev and prev ~= '' then redis.call('HSET', KEYS[3], 'status', prev) end
return {'CANCELLED'}
