-- 代缴's last step, on the payee's slot, fenced: PENDING → PAID (the payee becomes ACTIVE: paying is
-- what makes them insured for the insurance year paid), PENDING dropped (the money could not be
-- taken: nothing stays), or CANCELLING → CANCELLED (the payee's status as it was before the payment).
-- A payment made before its insurance year starts (the collection window is in the year before)
-- lifts nothing yet: `lifted` is 'due', and 'LIFT' (the registry's loop, from the year's first
-- instant on) lifts it then.
-- A status changed by anything else since the payment opened (a death, a move, a termination, which
-- take no lock) is left as it is: the payment lifts only the status it opened on (`lifted` says
-- whether it did), and a cancellation puts back only a status the payment lifted and nothing changed
-- since.
-- KEYS[1] premium record, KEYS[2] fence, KEYS[3] payee person
-- ARGV[1] token, ARGV[2] 'PAID' | 'DROP' | 'CANCELLED' | 'LIFT', ARGV[3] now, ARGV[4] contributors,
-- ARGV[5] the first instant of the insurance year (unix ms; 'PAID')
-- Replies: {state} | {'STALE'} | {'BADSTATE', state}; 'LIFT': {'LIFTED'} (the payment lifted the
-- payee, now or before) | {'NONE'} (it lifts nothing: cancelled, replaced, or the status changed since)
if not fence_ok(KEYS[2], ARGV[1]) then return {'STALE'} end
local state = redis.call('HGET', KEYS[1], 'state')
local want = ARGV[2]
local function unchanged()
  return (redis.call('HGET', KEYS[3], 'status') or '') == redis.call('HGET', KEYS[1], 'prev_status')
    and (redis.call('HGET', KEYS[3], 'moved_to') or '') == (redis.call('HGET', KEYS[1], 'prev_moved') or '')
end
if want == 'PAID' then
  if state == 'PAID' then return {'PAID'} end
  if state ~= 'PENDING' then return {'BADSTATE', state or ''} end
  local lifted = '0'
  if unchanged() then
    if tonumber(ARGV[3]) >= tonumber(ARGV[5] or '0') or redis.call('HGET', KEYS[3], 'status') == 'ACTIVE' then
      redis.call('HSET', KEYS[3], 'status', 'ACTIVE')
      lifted = '1'
    else
      lifted = 'due'
    end
  end
  redis.call('HSET', KEYS[1], 'state', 'PAID', 'paid_at', ARGV[3], 'contributors', ARGV[4], 'lifted', lifted,
    'lift_at', ARGV[5])
  return {'PAID'}
end
if want == 'LIFT' then
  local lifted = redis.call('HGET', KEYS[1], 'lifted')
  if state ~= 'PAID' then return {'NONE'} end
  if lifted == '1' then return {'LIFTED'} end
  if lifted ~= 'due' then return {'NONE'} end
  if unchanged() then
    redis.call('HSET', KEYS[3], 'status', 'ACTIVE')
    redis.call('HSET', KEYS[1], 'lifted', '1')
    return {'LIFTED'}
  end
  redis.call('HSET', KEYS[1], 'lifted', '0')
  return {'NONE'}
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
local lifted = redis.call('HGET', KEYS[1], 'lifted')
if prev and prev ~= '' and (lifted == '1' or not lifted) and as_left then
  redis.call('HSET', KEYS[3], 'status', prev)
end
return {'CANCELLED'}
