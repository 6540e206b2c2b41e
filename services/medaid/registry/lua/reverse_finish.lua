-- The last step of a reversal, on the patient's slot, fenced: return the own-account part, mark the
-- member's consumption records REVERSED and close the record.
-- KEYS[1] settlement record, KEYS[2] account, KEYS[3] ledger, KEYS[4] fence, KEYS[5] consumption hash
-- ARGV[1] token, ARGV[2] settlement id, ARGV[3] own refund, ARGV[4] now, ARGV[5] n, then n (name, json),
-- then each helper's (contributor's) balance after their refund, comma-separated, kept in the record as
-- the reversal's answer gives them (5203 of the refund answers them too)
-- Replies: {'OK', own balance after} | {'DONE', own balance after} | {'STALE', ''} | {'BADSTATE', state}
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'REVERSED' then return {'DONE', redis.call('HGET', KEYS[1], 'rev_own_bal_after')} end
if state ~= 'REVERSING' then return {'BADSTATE', state or ''} end
if not fence_ok(KEYS[4], ARGV[1]) then return {'STALE', ''} end
local refund = tonumber(ARGV[3])
local after = tonumber(redis.call('HGET', KEYS[2], 'bal') or '-1')
if refund > 0 then after = move(KEYS[2], KEYS[3], refund, 'REVERSE_OWN', ARGV[2], ARGV[4]) end
for i = 1, tonumber(ARGV[5]) do
  redis.call('HSET', KEYS[5], ARGV[4 + 2 * i], ARGV[5 + 2 * i])
end
redis.call('HSET', KEYS[1], 'state', 'REVERSED', 'reversed_at', ARGV[4], 'rev_own_bal_after', fmt(after),
  'rev_helper_afters', ARGV[6 + 2 * tonumber(ARGV[5])] or '')
return {'OK', fmt(after)}
