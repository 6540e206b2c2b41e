-- Staged step 1, on the patient's slot, under the patient's fenced lock: open the settlement
-- record (OPEN, with the plan) and debit the patient's own account. A stale holder cannot write.
-- KEYS[1] settlement record, KEYS[2] account, KEYS[3] ledger, KEYS[4] fence counter
-- ARGV[1] token, ARGV[2] settlement id, ARGV[3] acct_pay, ARGV[4] now, ARGV[5..] the record's
-- field, value … pairs (without own_bal_after).
-- Replies: {'OK', balance after} | {'EXISTS', state} | {'SHORT', balance} | {'STALE', ''}
if not fence_ok(KEYS[4], ARGV[1]) then return {'STALE', ''} end
local state = redis.call('HGET', KEYS[1], 'state')
if state then return {'EXISTS', state} end
local acct_pay = tonumber(ARGV[3])
local after = tonumber(redis.call('HGET', KEYS[2], 'bal') or '-1')
if acct_pay > 0 then
  if after < acct_pay then return {'SHORT', fmt(after)} end
  after = move(KEYS[2], KEYS[3], -acct_pay, 'SETTLE_OWN', ARGV[2], ARGV[4])
end
redis.call('HSET', KEYS[1], 'own_bal_after', fmt(after), unpack(ARGV, 5))
return {'OK', fmt(after)}
