-- Fast path of a settlement, entirely on the patient's slot, no lock needed: when the patient's
-- own personal account covers the whole amount, the waterfall stops at step 1. One atomic script
-- checks the patient, debits, and records the settlement as SETTLED.
-- Otherwise it moves no money: it takes the patient's fenced lock for the multi-account path and
-- answers LOCKED with the token and what the plan needs (or BUSY when someone else holds it).
-- KEYS[1] person, KEYS[2] account, KEYS[3] ledger, KEYS[4] settlement record, KEYS[5] lock, KEYS[6] fence
-- ARGV[1] settlement id, ARGV[2] amount, ARGV[3] now, ARGV[4] result bytes (balance filled in on read),
-- ARGV[5] lock owner, ARGV[6] lock ttl ms, ARGV[7] use account (0/1). The fast record holds only the
-- state and the result (everything a replay, GetSettlement or a reversal reads).
local state = redis.call('HGET', KEYS[4], 'state')
if state then return {'EXISTS', state} end
local p = redis.call('HMGET', KEYS[1], 'status', 'itype', 'tier', 'region', 'wallet_place', 'moved_to')
if not p[1] then return {'NOPERSON', ''} end
if p[1] ~= 'ACTIVE' then return {'INACTIVE', p[1]} end
local amount = tonumber(ARGV[2])
local bal = tonumber(redis.call('HGET', KEYS[2], 'bal') or '-1')
if ARGV[7] == '1' and bal >= amount then
  local after = move(KEYS[2], KEYS[3], -amount, 'SETTLE_OWN', ARGV[1], ARGV[3])
  redis.call('HSET', KEYS[4], 'state', 'SETTLED', 'own_bal_after', fmt(after), 'result', ARGV[4], 'fast', '1')
  return {'OK', fmt(after)}
end
if redis.call('PTTL', KEYS[5]) ~= -2 then return {'BUSY', ''} end
local token = redis.call('INCR', KEYS[6])
redis.call('SET', KEYS[5], ARGV[5] .. ':' .. token, 'PX', ARGV[6])
return {'LOCKED', fmt(token), p[1], p[2], p[3] or '0', p[4], p[5] or '', p[6] or '', fmt(math.max(bal, 0))}
