-- Return the patient's own-account part and close the reversal.
-- KEYS[1] settlement record, KEYS[2] account, KEYS[3] ledger, KEYS[4] fence, KEYS[5] consumption hash
-- ARGV[1] token, ARGV[2] settlement id, ARGV[3] acct refund, ARGV[4] now, ARGV[5] consumption json or ''
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'REVERSED' then return {'DONE', redis.call('HGET', KEYS[1], 'rev_own_bal_after')} end
if state ~= 'REVERSING' then return {'BADSTATE', state or ''} end
if not fence_ok(KEYS[4], ARGV[1]) then return {'STALE', ''} end
local refund = tonumber(ARGV[3])
local after = -1
if refund > 0 then
  after = move(KEYS[2], KEYS[3], refund, 'REVERSE_OWN', ARGV[2], ARGV[4])
elseif redis.call('EXISTS', KEYS[2]) == 1 then
  after = tonumber(redis.call('HGET', KEYS[2], 'bal'))
end
redis.call('HSET', KEYS[1], 'state', 'REVERSED', 'reversed_at', ARGV[4], 'rev_own_bal_after', fmt(after))
if ARGV[5] ~= '' then redis.call('HSET', KEYS[5], ARGV[2], ARGV[5]) end
return {'OK', fmt(after)}
