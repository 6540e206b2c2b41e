-- Give an unaccepted transfer back, once. A transfer never debited is cancelled for good, so a
-- late debit retry cannot take money that will never be returned. The marks are xfer_debit.lua's.
-- A transfer debited before the marks held '|' (still waiting for its recipient then) is known by
-- its old mark, 'xfer:' + its id holding exactly its amount. The 'xfer-back|' mark keeps the amount
-- given back, or '0|' + the amount asked for a transfer cancelled (a cancel marked before it kept the
-- amount holds '0'), so that a resend with another amount is refused TRANSFER_MISMATCH.
-- KEYS[1] account, KEYS[2] ledger, KEYS[3] applied
-- ARGV[1] transfer id, ARGV[2] amount, ARGV[3] now
-- Returns {'OK'|'DUP', refunded, balance} | {'ERR', code}
local back = 'xfer-back|' .. ARGV[1]
local done = redis.call('HGET', KEYS[3], back)
if done then
  local refunded, amount = done, done
  local bar = string.find(done, '|', 1, true)
  if bar then refunded, amount = string.sub(done, 1, bar - 1), string.sub(done, bar + 1) end
  if done ~= '0' and amount ~= ARGV[2] then return {'ERR', 'TRANSFER_MISMATCH'} end
  return {'DUP', refunded, redis.call('HGET', KEYS[1], 'bal') or '0'}
end
local debited = redis.call('HGET', KEYS[3], 'xfer|' .. ARGV[1])
if not debited and redis.call('HGET', KEYS[3], 'xfer:' .. ARGV[1]) == ARGV[2] then debited = ARGV[2] end
if not debited then
  redis.call('HSET', KEYS[3], back, '0|' .. ARGV[2])
  return {'OK', '0', redis.call('HGET', KEYS[1], 'bal') or '0'}
end
if debited ~= ARGV[2] then return {'ERR', 'TRANSFER_MISMATCH'} end
local after = move(KEYS[1], KEYS[2], tonumber(debited), 'TRANSFER_RETURN', ARGV[1], ARGV[3])
redis.call('HSET', KEYS[3], back, debited)
return {'OK', debited, fmt(after)}
