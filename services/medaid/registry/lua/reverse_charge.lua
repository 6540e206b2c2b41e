-- A reversal returns a helper's charge once per settlement id, whatever the helper's status now,
-- and marks the consumption record REVERSED. The mark holds '|', which no request id holds, so that no
-- credit (whose mark is its request id) or settlement id on the helper's account can be taken for it.
-- KEYS[1] account, KEYS[2] ledger, KEYS[3] applied, KEYS[4] consumption hash
-- ARGV[1] settlement id, ARGV[2] amount, ARGV[3] now, ARGV[4] consumption name, ARGV[5] record json
local mark = 'rev|' .. ARGV[1]
local done = redis.call('HGET', KEYS[3], mark)
if done then return {'DUP', done} end
local after = move(KEYS[1], KEYS[2], tonumber(ARGV[2]), 'REVERSE_HELPER', ARGV[1], ARGV[3])
redis.call('HSET', KEYS[4], ARGV[4], ARGV[5])
redis.call('HSET', KEYS[3], mark, fmt(after))
return {'OK', fmt(after)}
