-- Undoing a reversal, on a helper's slot: charge the helper's share again, once per money ref. As
-- in settle_charge.lua the first outcome sticks (a charge that could not be taken is VOID for that
-- ref); the consumption record is set back to its settled form (its name is indexed already).
-- KEYS[1] helper person, KEYS[2] account, KEYS[3] ledger, KEYS[4] applied, KEYS[5] consumption hash
-- ARGV[1] money ref, ARGV[2] amount, ARGV[3] now, ARGV[4] consumption name, ARGV[5] record json
-- Replies: {'OK', balance after} | {'DUP', balance after} | {'VOID', ''} | {'SHORT', ''} | {'INACTIVE', ''}
local done = redis.call('HGET', KEYS[4], ARGV[1])
if done == 'VOID' then return {'VOID', ''} end
if done then return {'DUP', done} end
local amount = tonumber(ARGV[2])
if redis.call('HGET', KEYS[1], 'status') ~= 'ACTIVE' then
  redis.call('HSET', KEYS[4], ARGV[1], 'VOID')
  return {'INACTIVE', ''}
end
if tonumber(redis.call('HGET', KEYS[2], 'bal') or '0') < amount then
  redis.call('HSET', KEYS[4], ARGV[1], 'VOID')
  return {'SHORT', ''}
end
local after = move(KEYS[2], KEYS[3], -amount, 'SETTLE_HELPER', ARGV[1], ARGV[3])
redis.call('HSET', KEYS[5], ARGV[4], ARGV[5])
redis.call('HSET', KEYS[4], ARGV[1], fmt(after))
return {'OK', fmt(after)}
