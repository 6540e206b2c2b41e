-- 代缴 from the payer's personal account, on the payer's slot, once per premium id. The first outcome
-- sticks: one that found too little, or a payer no longer ACTIVE (a death or a termination recorded
-- since the payment was decided on takes no lock of the payer), is VOID, so a late retry cannot take
-- it after the payment was dropped.
-- KEYS[1] account, KEYS[2] ledger, KEYS[3] applied, KEYS[4] payer person
-- ARGV[1] mark, ARGV[2] amount, ARGV[3] premium id, ARGV[4] now
-- Replies: {'OK', balance after} | {'DUP', balance after} | {'VOID', ''}
local done = redis.call('HGET', KEYS[3], ARGV[1])
if done == 'VOID' then return {'VOID', ''} end
if done then return {'DUP', done} end
local amount = tonumber(ARGV[2])
if redis.call('HGET', KEYS[4], 'status') ~= 'ACTIVE'
    or tonumber(redis.call('HGET', KEYS[1], 'bal') or '-1') < amount then
  redis.call('HSET', KEYS[3], ARGV[1], 'VOID')
  return {'VOID', ''}
end
local after = move(KEYS[1], KEYS[2], -amount, 'PREMIUM_PAID', ARGV[3], ARGV[4])
redis.call('HSET', KEYS[3], ARGV[1], fmt(after))
return {'OK', fmt(after)}
