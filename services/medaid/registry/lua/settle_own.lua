-- Step 1 of a settlement, on the patient's slot: open the settlement record and debit the
-- patient's own account. Fenced: a stale lock holder cannot write.
-- KEYS[1] settlement record, KEYS[2] account, KEYS[3] ledger, KEYS[4] fence counter
-- ARGV[1] token, ARGV[2] settlement id, ARGV[3] acct_pay, ARGV[4] now, ARGV[5..] field, value …
if not fence_ok(KEYS[4], ARGV[1]) then return {'STALE', ''} end
local state = redis.call('HGET', KEYS[1], 'state')
if state then return {'EXISTS', state} end
local acct_pay = tonumber(ARGV[3])
local after = -1
if acct_pay > 0 then
  local bal = tonumber(redis.call('HGET', KEYS[2], 'bal') or '0')
  if bal < acct_pay then return {'SHORT', fmt(bal)} end
  after = move(KEYS[2], KEYS[3], -acct_pay, 'SETTLE_OWN', ARGV[2], ARGV[4])
elseif redis.call('EXISTS', KEYS[2]) == 1 then
  after = tonumber(redis.call('HGET', KEYS[2], 'bal'))
end
redis.call('HSET', KEYS[1], 'state', 'OWN_DONE', 'own_bal_after', fmt(after), 'token', ARGV[1], unpack(ARGV, 5))
return {'OK', fmt(after)}
