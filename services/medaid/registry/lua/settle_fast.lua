-- Fast path of a settlement, entirely on the patient's slot, no lock needed: when the patient's
-- own personal account covers the whole amount, the waterfall stops at step 1. One atomic script
-- checks the patient, debits, and records the settlement as SETTLED. Otherwise it writes nothing
-- and answers SLOW (the multi-account path under the fenced lock takes over).
-- KEYS[1] person, KEYS[2] account, KEYS[3] ledger, KEYS[4] settlement record
-- ARGV[1] settlement id, ARGV[2] amount, ARGV[3] now, ARGV[4] result bytes (balance filled in on read),
-- ARGV[5..] field, value … of the record
local state = redis.call('HGET', KEYS[4], 'state')
if state then return {'EXISTS', state} end
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'NOPERSON', ''} end
if status ~= 'ACTIVE' then return {'INACTIVE', status} end
local amount = tonumber(ARGV[2])
local bal = tonumber(redis.call('HGET', KEYS[2], 'bal') or '-1')
if bal < amount then return {'SLOW', fmt(bal)} end
local after = move(KEYS[2], KEYS[3], -amount, 'SETTLE_OWN', ARGV[1], ARGV[3])
for i = 5, #ARGV, 2 do
  redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1])
end
redis.call('HSET', KEYS[4], 'state', 'SETTLED', 'own_bal_after', fmt(after), 'result', ARGV[4], 'fast', '1')
return {'OK', fmt(after)}
