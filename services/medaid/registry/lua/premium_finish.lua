-- 代缴's last step, on the payee's slot, fenced: PENDING → PAID (the payee becomes ACTIVE: paying is
-- what makes them insured for the year), PENDING dropped (the money could not be taken: nothing
-- stays), or CANCELLING → CANCELLED (the payee's status as it was before the payment).
-- A status changed by anything else since the payment opened (a death, a move, a termination, which
-- take no lock) is left as it is: the payment lifts only the status it opened on (`lifted` says
-- whether it did), and a cancellation puts back only a status the payment lifted and nothing changed
-- since.
-- KEYS[1] premium record, KEYS[2] fence, KEYS[3] payee person
-- ARGV[1] token, ARGV[2] 'PAID' | 'DROP' | 'CANCELLED', ARGV[3] now, ARGV[4] contributors
-- Replies: {state} | {'STALE'} | {'BADSTATE', state}
if not fence_ok(KEYS[2], ARGV[1]) then return {'STALE'} end
local state = redis.call('HGET', KEYS[1], 'state')
local want = ARGV[2]
if want == 'PAID' then
  if state == 'PAID' then return {'PAID'} end
  if state ~= 'PENDING' then return {'BADSTATE', state or ''} end
  local lifted = '0'
  if (redis.call('HGET', KEYS[3], 'status') or '') == redis.call('HGET', KEYS[1], 'prev_status')
      and (redis.call('HGET', KEYS[3], 'moved_to') or '') == (redis.call('HGET', KEYS[1], 'prev_moved') or '') then
    redis.call('HSET', KEYS[3], 'status', 'ACTIVE')
    lifted = '1'
  end
  redis.call('HSET', KEYS[1], 'state', 'PAID', 'paid_at', ARGV[3], 'contributors', ARGV[4], 'lifted', lifted)
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
local as_left = redis.call('HGET', KEYS[3], 'status') == 'ACTIVE'
  and (redis.call('HGET', KEYS[3], 'moved_to') or '') == ''
if prev and prev ~= '' and redis.call('HGET', KEYS[1], 'lifted') ~= '0' and as_left then
  redis.call('HSET', KEYS[3], 'status', prev)
end
return {'CANCELLED'}
