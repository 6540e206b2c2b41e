-- Death (SPEC §5b): pay the personal account's balance out to the heir (个人账户可继承), as one recorded
-- outflow (ledger kind INHERITANCE_PAYOUT, ref the RecordDeath request id), leaving the balance 0.
-- Paying what is there makes a re-drive safe: a second run finds 0. The heir written on the account
-- makes every later credit (a reversal, a lot return, a refund) go on to them at once (`move`), and
-- `paid_out` there counts everything the heir was paid.
-- KEYS[1] person, KEYS[2] account, KEYS[3] ledger
-- ARGV[1] ref, ARGV[2] heir, ARGV[3] now
-- Returns {paid now, paid in all}
if redis.call('EXISTS', KEYS[2]) == 0 then return {0, 0} end
local bal = tonumber(redis.call('HGET', KEYS[2], 'bal'))
local now_paid = 0
if bal > 0 then
  move(KEYS[2], KEYS[3], -bal, 'INHERITANCE_PAYOUT', ARGV[1], ARGV[3])
  now_paid = bal
end
local total = redis.call('HINCRBY', KEYS[2], 'paid_out', now_paid)
redis.call('HSET', KEYS[2], 'heir', ARGV[2])
redis.call('HSET', KEYS[1], 'heir', ARGV[2])
return {now_paid, total}
