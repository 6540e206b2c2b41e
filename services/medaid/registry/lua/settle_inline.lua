-- The whole settlement in one atomic script, for a registry whose state is on ONE Redis (not a
-- cluster: the helper's keys are found here, not passed in KEYS, so they must be on this server).
-- It is settle_fast.lua plus the waterfall's helper step (rules.plan_settlement, mirrored here and
-- checked against it by tests/test_settle_inline.py): own account → one helper, all or nothing →
-- cash. Atomic, so it needs no lock; it still refuses to run while another operation holds the
-- patient's lock (BUSY). When the patient's wallet is usable here it first answers WALLET (the
-- caller asks the wallet service for the balance, many at once, and runs it again with the answer);
-- a wallet that can pay a share means a wallet debit, so then it takes the lock and answers LOCKED
-- exactly as settle_fast.lua does, for the staged path.
-- KEYS[1] person, KEYS[2] account, KEYS[3] ledger, KEYS[4] settlement record, KEYS[5] lock,
-- KEYS[6] fence, KEYS[7] helpers of the patient (zset), KEYS[8] proxies as relative, KEYS[9] proxies
-- as holder, KEYS[10] consumption hash, KEYS[11] consumption index
-- ARGV[1] settlement id, ARGV[2] amount, ARGV[3] now, ARGV[4] result bytes for the own-account case,
-- ARGV[5] lock owner, ARGV[6] lock ttl ms, ARGV[7] use account (0/1), ARGV[8] person key prefix
-- ('reg:13:{p:'), ARGV[9] helper selection, ARGV[10] helper partial (0/1), ARGV[11] institution
-- admdvs ('' = the patient's region), ARGV[12] category, ARGV[13] institution code, ARGV[14] patient id,
-- ARGV[15] the wallet's balance when the caller already asked the wallet service ('' = not asked:
-- answer WALLET with the place to ask about; 'none' = it cannot pay here, ARGV[16] says why),
-- ARGV[17] the request's fingerprint. KEYS[12] the request id's idempotency claim (idem_begin.lua's
-- hash): checked and written here, so a settlement costs one round trip. A claim settled here is
-- DONE without a stored answer: the answer is the settlement record (REPLAY returns it).
-- Every reply starts with NEW (this call created the claim, or wrote none) or PENDING (it existed).
local sid, now, pid = ARGV[1], ARGV[3], ARGV[14]
local claim = KEYS[12]
local origin = 'NEW'
local fp = redis.call('HGET', claim, 'fp')
if fp then
  if fp ~= ARGV[17] then return {'PENDING', 'REUSED', redis.call('HGET', claim, 'op') or ''} end
  if redis.call('HGET', claim, 'state') == 'DONE' then
    local resp, err = redis.call('HGET', claim, 'resp') or '', redis.call('HGET', claim, 'err') or ''
    if resp == '' and err == '' then return {'PENDING', 'REPLAY', redis.call('HGETALL', KEYS[4])} end
    return {'PENDING', 'DONE', resp, err}
  end
  origin = 'PENDING'  -- a crashed or concurrent attempt: go on (the record below tells which)
end
local function claimed(state, reply)
  if origin == 'NEW' then
    redis.call('HSET', claim, 'fp', ARGV[17], 'op', 'settle', 'subject', pid, 'state', state, 'at', now)
  elseif state == 'DONE' then
    redis.call('HSET', claim, 'state', 'DONE')
  end
  table.insert(reply, 1, origin)
  return reply
end
local state = redis.call('HGET', KEYS[4], 'state')
if state then return claimed('PENDING', {'EXISTS', state}) end
local p = redis.call('HMGET', KEYS[1], 'status', 'itype', 'tier', 'region', 'wallet_place', 'moved_to')
if not p[1] then return {origin, 'NOPERSON', ''} end
if p[1] ~= 'ACTIVE' then return {origin, 'INACTIVE', p[1]} end
local amount = tonumber(ARGV[2])
local use = ARGV[7] == '1'
local bal = tonumber(redis.call('HGET', KEYS[2], 'bal') or '-1')
if use and bal >= amount then
  local after = move(KEYS[2], KEYS[3], -amount, 'SETTLE_OWN', sid, now)
  redis.call('HSET', KEYS[4], 'state', 'SETTLED', 'own_bal_after', fmt(after), 'result', ARGV[4], 'fast', '1')
  return claimed('DONE', {'OK', fmt(after)})
end
if redis.call('PTTL', KEYS[5]) ~= -2 then return claimed('PENDING', {'BUSY', ''}) end

local function active(status, itype, tier)
  return status == 'ACTIVE' and (itype == 'EMPLOYEE' or (itype == 'FLEXIBLE' and tier == '2'))
end
local own_balance = math.max(bal, 0)
local acct_pay = 0
if use and active('ACTIVE', p[2], p[3] or '0') then acct_pay = math.min(own_balance, amount) end
local remaining = amount - acct_pay
local place = ARGV[11]
if place == '' then place = p[4] end
local wallet_reason = ''
if use and remaining > 0 then
  local wallet_place = p[5] or ''
  if wallet_place ~= '' and wallet_place == place then
    local known = ARGV[15]
    if known == '' then return {origin, 'WALLET', place} end  -- ask the wallet service, then run again
    if known == 'none' then
      wallet_reason = ARGV[16]
    elseif tonumber(known) > 0 then
      -- The wallet pays a share: the multi-account path (wallet debit), under the patient's lock.
      local token = redis.call('INCR', KEYS[6])
      redis.call('SET', KEYS[5], ARGV[5] .. ':' .. token, 'PX', ARGV[6])
      return claimed('PENDING', {'LOCKED', fmt(token), p[1], p[2], p[3] or '0', p[4], wallet_place, p[6] or '',
        fmt(own_balance)})
    else
      wallet_reason = 'WALLET_ZERO_BALANCE'
    end
  elseif wallet_place ~= '' then
    wallet_reason = 'WALLET_OTHER_USE_PLACE'
  else
    wallet_reason = 'WALLET_NOT_OPENED'
  end
end

local rows = {}
if remaining > 0 or not use then rows = redis.call('ZRANGE', KEYS[7], 0, -1, 'WITHSCORES') end
local mulaid, helper, helper_reason = 0, '', ''
if not use then
  if #rows > 0 then helper_reason = 'ACCOUNT_NOT_USED' end
  acct_pay, remaining = 0, amount
elseif remaining > 0 then
  if #rows == 0 then
    if redis.call('HLEN', KEYS[8]) > 0 or redis.call('HLEN', KEYS[9]) > 0 then helper_reason = 'PROXY_ONLY' end
  else
    -- rows are in binding order (score = binding sequence); a later one wins only when strictly better.
    local chosen, chosen_bal = nil, 0
    for i = 1, #rows, 2 do
      local hid = rows[i]
      local h = redis.call('HMGET', ARGV[8] .. hid .. '}:person', 'status', 'itype', 'tier')
      if active(h[1], h[2], h[3]) then
        local hb = tonumber(redis.call('HGET', ARGV[8] .. hid .. '}:acct', 'bal') or '0')
        if chosen == nil or (ARGV[9] ~= 'BINDING_ORDER' and hb > chosen_bal) then
          chosen, chosen_bal = hid, hb
        end
      end
    end
    if chosen == nil then
      helper_reason = 'NO_ACTIVE_HELPER'
    elseif chosen_bal <= 0 then
      helper_reason = 'HELPER_ZERO_BALANCE'
    elseif chosen_bal >= remaining then
      mulaid, helper = remaining, chosen
    elseif ARGV[10] == '1' then
      mulaid, helper, helper_reason = chosen_bal, chosen, 'HELPER_INSUFFICIENT'
    else
      helper_reason = 'HELPER_INSUFFICIENT'
    end
    remaining = remaining - mulaid
  end
end

-- Money moves: own account, then the helper (each with its ledger entry), then the records.
local own_after = -1
if acct_pay > 0 then
  own_after = move(KEYS[2], KEYS[3], -acct_pay, 'SETTLE_OWN', sid, now)
elseif bal >= 0 then
  own_after = bal
end
local helper_after = 0
local category, institution = ARGV[12], ARGV[13]
if mulaid > 0 then
  local hp = ARGV[8] .. helper .. '}:'
  helper_after = move(hp .. 'acct', hp .. 'ledger', -mulaid, 'SETTLE_HELPER', sid, now)
  local function consumption(role)
    -- The same text as the staged path's json.dumps (key order and separators included).
    return '{"sid": "' .. sid .. '", "role": "' .. role .. '", "helper": "' .. helper .. '", "member": "'
      .. pid .. '", "mulaid": ' .. fmt(mulaid) .. ', "category": ' .. category .. ', "institution": "'
      .. institution .. '", "at": ' .. now .. ', "state": "SETTLED"}'
  end
  redis.call('HSET', hp .. 'consume', sid, consumption('HELPER'))
  redis.call('RPUSH', hp .. 'consume_idx', sid)
  redis.call('HSET', hp .. 'applied', sid, fmt(helper_after))
  redis.call('HSET', KEYS[10], sid, consumption('MEMBER'))
  redis.call('RPUSH', KEYS[11], sid)
end
redis.call('HSET', KEYS[4], 'state', 'SETTLED', 'inline', '1', 'sid', sid, 'place', place, 'patient', pid,
  'amount', fmt(amount), 'acct_pay', fmt(acct_pay), 'wallet_pay', '0', 'mulaid_pay', fmt(mulaid),
  'helper', helper, 'cash_pay', fmt(remaining), 'helper_reason', helper_reason, 'wallet_reason', wallet_reason,
  'category', category, 'institution', institution, 'at', now, 'own_bal_after', fmt(own_after),
  'final_mulaid_pay', fmt(mulaid), 'final_helper', helper, 'final_cash_pay', fmt(remaining),
  'helper_bal_after', fmt(helper_after), 'final_wallet_pay', '0')
return claimed('DONE', {'SETTLED', fmt(acct_pay), fmt(mulaid), helper, fmt(remaining), helper_reason, wallet_reason,
  fmt(own_after), fmt(helper_after)})
