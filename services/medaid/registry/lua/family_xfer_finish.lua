-- 划拨 step 3, on the contributor's slot: the family account took the money (CREDITED), or it could
-- not (the account was dissolved or the contributor left meanwhile; a creation's account was refused):
-- the debit is returned and the month's count given back (REFUNDED). Once: a finished record answers
-- its state. A creation's initial 划拨 is finished under the creator's fenced lock (ARGV[5]): whether
-- its account was written is known only under that lock (Family.drive_creation).
-- KEYS[1] transfer record, KEYS[2] account, KEYS[3] ledger, KEYS[4] month counts, KEYS[5] fence
-- ARGV[1] 'CREDITED' | 'REFUNDED', ARGV[2] now, ARGV[3] the account that took it ('' : as recorded),
-- ARGV[4] why a creation was refused ('' : none), ARGV[5] the lock's token ('' : not fenced)
-- Reply: {state} | {'STALE'}
if (ARGV[5] or '') ~= '' and not fence_ok(KEYS[5], ARGV[5]) then return {'STALE'} end
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'DEBITED' then return {state or ''} end
if ARGV[1] == 'REFUNDED' then
  local xid = string.match(KEYS[1], 'famx:(.*)$')
  local after = move(KEYS[2], KEYS[3], tonumber(redis.call('HGET', KEYS[1], 'amount')), 'FAMILY_TRANSFER_REFUND',
    xid, ARGV[2])
  redis.call('HINCRBY', KEYS[4], redis.call('HGET', KEYS[1], 'month'), -1)
  redis.call('HSET', KEYS[1], 'bal_after', fmt(after), 'why', ARGV[4] or '')
end
if (ARGV[3] or '') ~= '' then redis.call('HSET', KEYS[1], 'family', ARGV[3]) end
redis.call('HSET', KEYS[1], 'state', ARGV[1])
return {ARGV[1]}
