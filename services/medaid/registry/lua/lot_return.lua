-- Credit a sender's unspent quota back to their account (insurance ended or moved), once per return id.
-- Whatever the sender's status now: the money is theirs. The return's mark keeps the amount and the
-- transfer the lot came from; it holds '|', which no request id holds, so that no credit or settlement
-- on the account (each marked by its own request id) can be taken for it. A return credited before the
-- mark held '|' is known by its old mark, 'lotret:' + the id, holding exactly that value (no credit's
-- or settlement's mark holds a '|').
-- KEYS[1] account, KEYS[2] ledger, KEYS[3] applied
-- ARGV[1] return id, ARGV[2] amount, ARGV[3] now, ARGV[4] transfer id
local mark = 'lotret|' .. ARGV[1]
local value = ARGV[2] .. '|' .. ARGV[4]
local done = redis.call('HGET', KEYS[3], mark)
if not done and redis.call('HGET', KEYS[3], 'lotret:' .. ARGV[1]) == value then done = value end
if done then
  if done ~= value then return {'ERR', 'RETURN_MISMATCH'} end
  return {'DUP', redis.call('HGET', KEYS[1], 'bal')}
end
if redis.call('EXISTS', KEYS[1]) == 0 then return {'ERR', 'NO_PERSONAL_ACCOUNT'} end
local after = move(KEYS[1], KEYS[2], tonumber(ARGV[2]), 'LOT_RETURN', ARGV[1], ARGV[3])
redis.call('HSET', KEYS[3], mark, value)
return {'OK', fmt(after)}
