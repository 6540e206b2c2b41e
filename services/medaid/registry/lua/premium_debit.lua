-- 代缴 from the payer's personal account, on the payer's slot, once per premium id. Python judged the
-- payer (premium_rules.check_payer: the one implementation of who may pay from their account, and how
-- much it must hold) on the person and the balance it read; this script decides nothing: should any
-- of them differ now (a status change, a move, a death or money in or out meanwhile, none of which
-- takes a lock this payment holds), it writes nothing and answers AGAIN (the caller reads and judges
-- again). The first outcome sticks: a payer judged unable to pay is VOID, so a late retry cannot
-- take it after the payment was dropped.
-- KEYS[1] account, KEYS[2] ledger, KEYS[3] applied, KEYS[4] payer person
-- ARGV[1] mark, ARGV[2] amount, ARGV[3] premium id, ARGV[4] now, ARGV[5] the judgement 'OK' | 'VOID',
-- ARGV[6] the balance as judged, ARGV[7…] the person's fields as judged: name, value, name, value …
-- ('' : absent)
-- Replies: {'OK', balance after} | {'DUP', balance after} | {'VOID', ''} | {'AGAIN', ''}
local done = redis.call('HGET', KEYS[3], ARGV[1])
if done == 'VOID' then return {'VOID', ''} end
if done then return {'DUP', done} end
if tonumber(redis.call('HGET', KEYS[1], 'bal') or '0') ~= tonumber(ARGV[6]) then return {'AGAIN', ''} end
for i = 7, #ARGV, 2 do
  if (redis.call('HGET', KEYS[4], ARGV[i]) or '') ~= ARGV[i + 1] then return {'AGAIN', ''} end
end
if ARGV[5] ~= 'OK' then
  redis.call('HSET', KEYS[3], ARGV[1], 'VOID')
  return {'VOID', ''}
end
local after = move(KEYS[1], KEYS[2], -tonumber(ARGV[2]), 'PREMIUM_PAID', ARGV[3], ARGV[4])
redis.call('HSET', KEYS[3], ARGV[1], fmt(after))
return {'OK', fmt(after)}
