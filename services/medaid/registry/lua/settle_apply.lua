-- A whole settlement in one atomic script, on ONE Redis (the helpers' and family accounts' keys are
-- on other slots): it applies a plan that Python made (rules.plan_settlement) from values it read
-- just before, and decides nothing itself. It checks that those values still hold — the request id
-- unclaimed, no record, the patient's lock free, the patient ACTIVE with the balance the plan saw,
-- each helper still bound to the patient (an unbind between read and apply takes that helper out of
-- the plan), ACTIVE and covering their charge, and in a pooled province, when something was left
-- for the family account, the patient's memberships and that account's balance as the plan saw
-- them, and that each lot the plan takes from still holds what the plan saw (`family_take`) — and
-- otherwise writes nothing and answers why, so the caller reads again and plans again (or takes the
-- staged path).
-- KEYS[1] request-id claim, KEYS[2] settlement record, KEYS[3] patient person, KEYS[4] account,
-- KEYS[5] ledger, KEYS[6] patient lock, KEYS[7] consumption hash, KEYS[8] consumption index,
-- KEYS[9] settlement index (sid -> patient), KEYS[10] the patient's family memberships, KEYS[11]
-- the family account the plan saw (else KEYS[10] again), KEYS[12] the patient's helpers (zset);
-- then per helper i, from 13 + 6(i-1):
-- person, account, ledger, applied, consumption hash, consumption index; then, with a family charge,
-- the account's family, members, lots, shares, applied, history.
-- ARGV[1] settlement id, ARGV[2] fingerprint, ARGV[3] now, ARGV[4] patient, ARGV[5] the own balance
-- the plan saw (-1: no account), ARGV[6] acct_pay, ARGV[7] number of helper charges, ARGV[8] '1' to
-- check the family account, ARGV[9] the memberships the plan saw ('fid=state,…' sorted by id),
-- ARGV[10] that account's balance (-1: it could not pay anyway); then per helper i, from
-- 11 + 5(i-1): id, amount, consumption name, helper's record json, member's record json; then,
-- from f = 11 + 5n: the family charge (0: none), the plan's lot parts for it ('seq:contributor:what
-- the lot held:amount,…'), the number m of the member's consumption records for it, m (name, json)
-- pairs; then the record's field, value … pairs (without state, own_bal_after, charges).
-- Replies: {'OK', own balance after, helper balances after …} | {'REUSED', the claim's fingerprint}
-- | {'DONE'} | {'PENDING'} | {'BUSY'} | {'CONFLICT'}
local sid, fp, now, pid = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local claim_fp = redis.call('HGET', KEYS[1], 'fp')
if claim_fp then
  if claim_fp ~= fp then return {'REUSED', claim_fp} end
  if redis.call('HGET', KEYS[1], 'state') == 'DONE' then return {'DONE'} end
  return {'PENDING'}
end
if redis.call('EXISTS', KEYS[2]) == 1 then return {'PENDING'} end
if redis.call('PTTL', KEYS[6]) ~= -2 then return {'BUSY'} end
if redis.call('HGET', KEYS[3], 'status') ~= 'ACTIVE' then return {'CONFLICT'} end
local bal = tonumber(redis.call('HGET', KEYS[4], 'bal') or '-1')
if bal ~= tonumber(ARGV[5]) then return {'CONFLICT'} end
if ARGV[8] == '1' then
  local raw, seen = redis.call('HGETALL', KEYS[10]), {}
  for i = 1, #raw, 2 do seen[#seen + 1] = raw[i] .. '=' .. raw[i + 1] end
  table.sort(seen)
  if table.concat(seen, ',') ~= ARGV[9] then return {'CONFLICT'} end
  if tonumber(ARGV[10]) >= 0 and tonumber(redis.call('HGET', KEYS[11], 'bal') or '0') ~= tonumber(ARGV[10]) then
    return {'CONFLICT'}
  end
end
local n = tonumber(ARGV[7])
for i = 1, n do
  local k, a = 12 + 6 * (i - 1), 10 + 5 * (i - 1)
  if not redis.call('ZSCORE', KEYS[12], ARGV[a + 1]) then return {'CONFLICT'} end
  if redis.call('HGET', KEYS[k + 1], 'status') ~= 'ACTIVE' then return {'CONFLICT'} end
  if tonumber(redis.call('HGET', KEYS[k + 2], 'bal') or '0') < tonumber(ARGV[a + 2]) then return {'CONFLICT'} end
end

local f = 11 + 5 * n
local family_pay, family_out = tonumber(ARGV[f]), nil
if family_pay > 0 then
  local b = 12 + 6 * n
  local status
  status, family_out = family_take({KEYS[b + 1], KEYS[b + 2], KEYS[b + 3], KEYS[b + 4], KEYS[b + 5], KEYS[b + 6]},
    sid, pid, ARGV[f + 1], now, true)
  if status ~= 'OK' then return {'CONFLICT'} end
end
local m = tonumber(ARGV[f + 2])

local own_after = bal
local acct_pay = tonumber(ARGV[6])
if acct_pay > 0 then own_after = move(KEYS[4], KEYS[5], -acct_pay, 'SETTLE_OWN', sid, now) end
local reply, charges = {'OK', fmt(own_after)}, {}
for i = 1, n do
  local k, a = 12 + 6 * (i - 1), 10 + 5 * (i - 1)
  local amount, name = tonumber(ARGV[a + 2]), ARGV[a + 3]
  local after = move(KEYS[k + 2], KEYS[k + 3], -amount, 'SETTLE_HELPER', sid, now)
  redis.call('HSET', KEYS[k + 4], sid, fmt(after))
  redis.call('HSET', KEYS[k + 5], name, ARGV[a + 4])
  redis.call('RPUSH', KEYS[k + 6], name)
  redis.call('HSET', KEYS[7], name, ARGV[a + 5])
  redis.call('RPUSH', KEYS[8], name)
  charges[i] = ARGV[a + 1] .. ':' .. fmt(amount) .. ':' .. fmt(after)
  reply[#reply + 1] = fmt(after)
end
if family_out then
  for c in string.gmatch(family_out, '[^,]+') do reply[#reply + 1] = string.match(c, ':(-?%d+)$') end
  for i = 1, m do
    local name = ARGV[f + 1 + 2 * i]
    redis.call('HSET', KEYS[7], name, ARGV[f + 2 + 2 * i])
    redis.call('RPUSH', KEYS[8], name)
  end
  charges = {family_out}
end
redis.call('HSET', KEYS[2], 'state', 'SETTLED', 'own_bal_after', fmt(own_after), 'charges',
  table.concat(charges, ','), unpack(ARGV, f + 3 + 2 * m))
redis.call('SET', KEYS[9], pid)
redis.call('HSET', KEYS[1], 'fp', fp, 'op', 'settle', 'subject', pid, 'state', 'DONE', 'at', now)
return reply
