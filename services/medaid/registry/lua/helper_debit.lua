-- Step 2, on the helper's slot: debit the helper once per settlement id (共济支付).
-- KEYS[1] helper person, KEYS[2] account, KEYS[3] ledger, KEYS[4] applied, KEYS[5] consumption hash,
-- KEYS[6] consumption index
-- ARGV[1] settlement id, ARGV[2] amount, ARGV[3] now, ARGV[4] consumption record json
local done = redis.call('HGET', KEYS[4], ARGV[1])
if done then return {'DUP', done} end
if redis.call('HGET', KEYS[1], 'status') ~= 'ACTIVE' then return {'INACTIVE', ''} end
local amount = tonumber(ARGV[2])
local bal = tonumber(redis.call('HGET', KEYS[2], 'bal') or '0')
if bal < amount then return {'SHORT', fmt(bal)} end
local after = move(KEYS[2], KEYS[3], -amount, 'SETTLE_HELPER', ARGV[1], ARGV[3])
redis.call('HSET', KEYS[5], ARGV[1], ARGV[4])
redis.call('RPUSH', KEYS[6], ARGV[1])
redis.call('HSET', KEYS[4], ARGV[1], fmt(after))
return {'OK', fmt(after)}
