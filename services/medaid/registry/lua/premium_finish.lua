-- 代缴's last step, on the payee's slot, fenced: PENDING → PAID (the payee becomes ACTIVE: paying is
-- what makes them insured for the insurance year paid), PENDING dropped (the money could not be
-- taken: nothing stays), or CANCELLING → CANCELLED (the payee's status as it was before the payment).
-- A payment made before its insurance year starts (the collection window is in the year before)
-- lifts nothing yet: `lifted` is 'due', and 'LIFT' (the registry's loop, from the year's first
-- instant on) lifts it then.
-- One rule decides whether the payment may touch the payee's status (`untouched`): nothing set it
-- since the payment (opened: `prev_sv`; lifted them: `left_sv`), as the payee's status version says
-- (`sv`, person_set: every write of a status counts, a change and its reversal too). So the payment
-- lifts only the status it opened on, and a cancellation puts back the status from before the payment
-- only when the payment lifted it and nothing (an operator's status, a move of province, a death)
-- set it since. Each change it makes is an event of the payee's history (GetPerson),
-- naming the premium and the request: PREMIUM_PAID (made ACTIVE) and PREMIUM_CANCELLED (put back).
-- KEYS[1] premium record, KEYS[2] fence, KEYS[3] payee person, KEYS[4] payee history
-- ARGV[1] token, ARGV[2] 'PAID' | 'DROP' | 'CANCELLED' | 'LIFT', ARGV[3] now, ARGV[4] contributors,
-- ARGV[5] the first instant of the insurance year (unix ms; 'PAID')
-- Replies: {state} | {'STALE'} | {'BADSTATE', state}; 'LIFT': {'LIFTED'} (the payment lifted the
-- payee, now or before) | {'NONE'} (it lifts nothing: cancelled, replaced, or the status changed since)
if not fence_ok(KEYS[2], ARGV[1]) then return {'STALE'} end
local state = redis.call('HGET', KEYS[1], 'state')
local want = ARGV[2]
local function sv() return redis.call('HGET', KEYS[3], 'sv') or '0' end
local function untouched(since)
  local was = redis.call('HGET', KEYS[1], since)
  if was then return sv() == was end
  if redis.call('HEXISTS', KEYS[1], 'prev_sv') == 1 then return false end  -- never lifted (no `left_sv`)
  -- A record opened before records kept the status version: the status as the payment found or left it.
  local status = redis.call('HGET', KEYS[3], 'status') or ''
  local moved = redis.call('HGET', KEYS[3], 'moved_to') or ''
  if since == 'left_sv' then
    local lifted = redis.call('HGET', KEYS[1], 'lifted')
    return (lifted == '1' or not lifted) and status == 'ACTIVE' and moved == ''
  end
  return status == redis.call('HGET', KEYS[1], 'prev_status') and moved == (redis.call('HGET', KEYS[1], 'prev_moved') or '')
end
local function set_status(status, kind, request)
  if (redis.call('HGET', KEYS[3], 'status') or '') == status then return end
  person_set(KEYS[3], 'status', status)
  local rec = redis.call('HMGET', KEYS[1], 'id', 'year')
  redis.call('RPUSH', KEYS[4], cjson.encode({kind = kind, detail = status .. ' year=' .. rec[2] .. ' premium=' .. rec[1]
    .. ' request=' .. request, premium = rec[1], req = request}):sub(1, -2) .. ',"at":' .. ARGV[3] .. '}')
end
local function lift()
  set_status('ACTIVE', 'PREMIUM_PAID', redis.call('HGET', KEYS[1], 'id'))
  redis.call('HSET', KEYS[1], 'lifted', '1', 'left_sv', sv())
end
if want == 'PAID' then
  if state == 'PAID' then return {'PAID'} end
  if state ~= 'PENDING' then return {'BADSTATE', state or ''} end
  redis.call('HSET', KEYS[1], 'state', 'PAID', 'paid_at', ARGV[3], 'contributors', ARGV[4], 'lifted', '0',
    'lift_at', ARGV[5])
  if untouched('prev_sv') then
    if tonumber(ARGV[3]) >= tonumber(ARGV[5] or '0') or redis.call('HGET', KEYS[3], 'status') == 'ACTIVE' then
      lift()
    else
      redis.call('HSET', KEYS[1], 'lifted', 'due')
    end
  end
  return {'PAID'}
end
if want == 'LIFT' then
  local lifted = redis.call('HGET', KEYS[1], 'lifted')
  if state ~= 'PAID' then return {'NONE'} end
  if lifted == '1' then return {'LIFTED'} end
  if lifted ~= 'due' then return {'NONE'} end
  if untouched('prev_sv') then
    lift()
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
if prev and prev ~= '' and untouched('left_sv') then
  set_status(prev, 'PREMIUM_CANCELLED', redis.call('HGET', KEYS[1], 'cancel_id'))
end
return {'CANCELLED'}
