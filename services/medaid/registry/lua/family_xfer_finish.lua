-- 划拨 step 3, on the contributor's slot: the family account took the money (CREDITED), or it could
-- not (the account was dissolved or the contributor left meanwhile): the debit is returned and the
-- month's count given back (REFUNDED). Once: a finished record answers its state.
-- KEYS[1] transfer record, KEYS[2] account, KEYS[3] ledger, KEYS[4] month counts
-- ARGV[1] 'CREDITED' | 'REFUNDED', ARGV[2] now
-- Reply: {state}
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'DEBITED' then return {state or ''} end
if ARGV[1] == 'REFUNDED' then
  local xid = string.match(KEYS[1], 'famx:(.*)$')
  local after = move(KEYS[2], KEYS[3], tonumber(redis.call('HGET', KEYS[1], 'amount')), 'FAMILY_TRANSFER_REFUND',
    xid, ARGV[2])
  redis.call('HINCRBY', KEYS[4], redis.call('HGET', KEYS[1], 'month'), -1)
  redis.call('HSET', KEYS[1], 'bal_after', fmt(after))
end
redis.call('HSET', KEYS[1], 'state', ARGV[1])
return {ARGV[1]}
