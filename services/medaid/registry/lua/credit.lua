-- Credit a personal account (月度划入), once per request id.
-- KEYS[1] person, KEYS[2] account, KEYS[3] ledger, KEYS[4] applied (ref -> result)
-- ARGV[1] ref, ARGV[2] amount, ARGV[3] kind, ARGV[4] now ms, ARGV[5] max balance
local done = redis.call('HGET', KEYS[4], ARGV[1])
if done then return {'DUP', done} end
if redis.call('HGET', KEYS[1], 'status') ~= 'ACTIVE' then return {'ERR', 'PERSON_NOT_ACTIVE'} end
if redis.call('EXISTS', KEYS[2]) == 0 then return {'ERR', 'NO_PERSONAL_ACCOUNT'} end
local amount = tonumber(ARGV[2])
local bal = tonumber(redis.call('HGET', KEYS[2], 'bal'))
if bal + amount > tonumber(ARGV[5]) then return {'ERR', 'BALANCE_LIMIT'} end
local after = move(KEYS[2], KEYS[3], amount, ARGV[3], ARGV[1], ARGV[4])
local entry = redis.call('LINDEX', KEYS[3], -1)
redis.call('HSET', KEYS[4], ARGV[1], entry)
return {'OK', entry}
