-- Credit a sender's unspent quota back to their account (insurance ended or moved), once per return id.
-- Whatever the sender's status now: the money is theirs.
-- KEYS[1] account, KEYS[2] ledger, KEYS[3] applied
-- ARGV[1] return id, ARGV[2] amount, ARGV[3] now
local mark = 'lotret:' .. ARGV[1]
local done = redis.call('HGET', KEYS[3], mark)
if done then
  if done ~= ARGV[2] then return {'ERR', 'RETURN_MISMATCH'} end
  return {'DUP', redis.call('HGET', KEYS[1], 'bal')}
end
if redis.call('EXISTS', KEYS[1]) == 0 then return {'ERR', 'NO_PERSONAL_ACCOUNT'} end
local after = move(KEYS[1], KEYS[2], tonumber(ARGV[2]), 'LOT_RETURN', ARGV[1], ARGV[3])
redis.call('HSET', KEYS[3], mark, ARGV[2])
return {'OK', fmt(after)}
