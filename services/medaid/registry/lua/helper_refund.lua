-- Return a helper's 共济支付 once per settlement id, whatever the helper's status now.
-- KEYS[1] account, KEYS[2] ledger, KEYS[3] applied, KEYS[4] consumption hash
-- ARGV[1] refund ref, ARGV[2] amount, ARGV[3] now, ARGV[4] settlement id, ARGV[5] consumption json
local done = redis.call('HGET', KEYS[3], ARGV[1])
if done then return {'DUP', done} end
local after = move(KEYS[1], KEYS[2], tonumber(ARGV[2]), 'REVERSE_HELPER', ARGV[4], ARGV[3])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[4], ARGV[4], ARGV[5]) end
redis.call('HSET', KEYS[3], ARGV[1], fmt(after))
return {'OK', fmt(after)}
