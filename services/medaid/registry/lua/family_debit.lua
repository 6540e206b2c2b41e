-- 划拨 step 1, on the contributor's slot, under their fenced lock: debit the personal account and
-- record the transfer DEBITED (the recovery loop finishes it). The province's limits on the
-- contributor are checked atomically with the debit: the balance, the floor that must stay
-- (`keep_min_balance_fen`) and the count this calendar month (`transfers_per_month`).
-- KEYS[1] transfer record, KEYS[2] account, KEYS[3] ledger, KEYS[4] fence, KEYS[5] month counts
-- ARGV[1] token, ARGV[2] transfer id, ARGV[3] family id, ARGV[4] amount, ARGV[5] now, ARGV[6] floor,
-- ARGV[7] month (yyyymm), ARGV[8] per-month cap (0: none)
-- Replies: {'OK', balance after} | {'EXISTS', state} | {'SHORT'|'FLOOR'|'MONTHLY', ''} | {'STALE', ''}
if not fence_ok(KEYS[4], ARGV[1]) then return {'STALE', ''} end
local state = redis.call('HGET', KEYS[1], 'state')
if state then return {'EXISTS', state} end
local amount = tonumber(ARGV[4])
local bal = tonumber(redis.call('HGET', KEYS[2], 'bal') or '-1')
if bal < amount then return {'SHORT', ''} end
if bal - amount < tonumber(ARGV[6]) then return {'FLOOR', ''} end
local cap = tonumber(ARGV[8])
if cap > 0 and tonumber(redis.call('HGET', KEYS[5], ARGV[7]) or '0') >= cap then return {'MONTHLY', ''} end
local after = move(KEYS[2], KEYS[3], -amount, 'FAMILY_TRANSFER_OUT', ARGV[2], ARGV[5])
redis.call('HINCRBY', KEYS[5], ARGV[7], 1)
redis.call('HSET', KEYS[1], 'state', 'DEBITED', 'family', ARGV[3], 'amount', ARGV[4], 'month', ARGV[7],
  'at', ARGV[5], 'bal_after', fmt(after))
return {'OK', fmt(after)}
