-- Debit a sender's personal account for a cross-province transfer, once per transfer id.
-- The marks beside the transfer id ('xfer|' debited, 'xfer-back|' given back or cancelled) hold '|',
-- which no request id holds, so that no credit or settlement on the account (each marked by its own
-- request id) can be taken for them.
-- KEYS[1] person, KEYS[2] account, KEYS[3] ledger, KEYS[4] applied
-- ARGV[1] transfer id, ARGV[2] amount, ARGV[3] now
-- Returns {'OK'|'DUP', balance} | {'ERR', code}
if redis.call('EXISTS', KEYS[1]) == 0 then return {'ERR', 'PERSON_NOT_FOUND'} end
local mark = 'xfer|' .. ARGV[1]
if redis.call('HEXISTS', KEYS[4], 'xfer-back|' .. ARGV[1]) == 1 then return {'ERR', 'TRANSFER_CANCELLED'} end
local done = redis.call('HGET', KEYS[4], mark)
if done then
  if done ~= ARGV[2] then return {'ERR', 'TRANSFER_MISMATCH'} end
  return {'DUP', redis.call('HGET', KEYS[2], 'bal')}
end
if redis.call('HGET', KEYS[1], 'status') ~= 'ACTIVE' then return {'ERR', 'SENDER_NOT_ACTIVE'} end
if redis.call('EXISTS', KEYS[2]) == 0 then return {'ERR', 'SENDER_NOT_EMPLOYEE'} end
local amount = tonumber(ARGV[2])
if tonumber(redis.call('HGET', KEYS[2], 'bal')) < amount then return {'ERR', 'INSUFFICIENT_BALANCE'} end
local after = move(KEYS[2], KEYS[3], -amount, 'TRANSFER_OUT', ARGV[1], ARGV[3])
redis.call('HSET', KEYS[4], mark, ARGV[2])
return {'OK', fmt(after)}
