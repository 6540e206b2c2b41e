-- Staged step 2, on a helper's slot: charge the helper once per settlement id (共济支付). The first
-- outcome sticks: a charge that could not be taken is marked VOID, so a late retry of the same
-- settlement (a paused process, the recovery loop) can never take it after the settlement was
-- finished without it.
-- Undoing a reversal (undo.py) charges the share again with this script under the attempt's money
-- ref, without KEYS[6]: the consumption record's name is indexed already, its text is set back.
-- KEYS[1] helper person, KEYS[2] account, KEYS[3] ledger, KEYS[4] applied, KEYS[5] consumption hash,
-- KEYS[6] consumption index (optional)
-- ARGV[1] settlement id (or money ref), ARGV[2] amount, ARGV[3] now, ARGV[4] consumption name,
-- ARGV[5] record json
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
if KEYS[6] then redis.call('RPUSH', KEYS[6], ARGV[4]) end
redis.call('HSET', KEYS[4], ARGV[1], fmt(after))
return {'OK', fmt(after)}
