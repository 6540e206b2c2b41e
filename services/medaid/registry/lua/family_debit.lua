-- 划拨 step 1, on the contributor's slot, under their fenced lock: debit the personal account, count
-- the 划拨 in its calendar month and record the transfer DEBITED (the recovery loop finishes it).
-- Python decided the 划拨 (family_rules.check_transfer_in: the balance, the floor that must stay, the
-- count this month) on the balance and the month's count it read; this script decides nothing. When
-- either is no longer what Python saw, it writes nothing and answers CONFLICT: Python reads again
-- and decides again. A creation's initial 划拨 (ARGV[10], the creation's recovery entry, kept on the
-- record) is debited before its account is written, which takes it (family_create.lua); one whose
-- creation was refused (REFUNDED, its request id judged afresh) may be debited again, when Python saw
-- it so (ARGV[9]).
-- KEYS[1] transfer record, KEYS[2] account, KEYS[3] ledger, KEYS[4] fence, KEYS[5] month counts
-- ARGV[1] token, ARGV[2] transfer id, ARGV[3] family id ('' : a creation's, not yet written),
-- ARGV[4] amount, ARGV[5] now, ARGV[6] month (yyyymm), ARGV[7] the balance Python saw, ARGV[8] the count
-- of that month Python saw, ARGV[9] the record's state Python saw ('' : none), ARGV[10] the creation's
-- entry ('' : a 划拨 into an account that stands)
-- Replies: {'OK', balance after} | {'EXISTS', state} | {'CONFLICT', ''} | {'STALE', ''}
if not fence_ok(KEYS[4], ARGV[1]) then return {'STALE', ''} end
local state = redis.call('HGET', KEYS[1], 'state')
if (state or '') ~= (ARGV[9] or '') then
  if state then return {'EXISTS', state} end
  return {'CONFLICT', ''}
end
if tonumber(redis.call('HGET', KEYS[2], 'bal') or '0') ~= tonumber(ARGV[7])
    or tonumber(redis.call('HGET', KEYS[5], ARGV[6]) or '0') ~= tonumber(ARGV[8]) then
  return {'CONFLICT', ''}
end
local after = move(KEYS[2], KEYS[3], -tonumber(ARGV[4]), 'FAMILY_TRANSFER_OUT', ARGV[2], ARGV[5])
redis.call('HINCRBY', KEYS[5], ARGV[6], 1)
redis.call('HSET', KEYS[1], 'state', 'DEBITED', 'family', ARGV[3], 'amount', ARGV[4], 'month', ARGV[6],
  'at', ARGV[5], 'bal_after', fmt(after), 'create', ARGV[10] or '', 'why', '')
return {'OK', fmt(after)}
