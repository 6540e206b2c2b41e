-- 划拨 step 2, on the `{fam}` slot, once per transfer id: the money becomes a new lot tagged with its
-- contributor (a per-contributor sub-ledger, spent oldest first), or, where the account does not take
-- it (dissolved, or the contributor may no longer contribute), it is GONE, for good, and the
-- contributor's slot gives the debit back. Python judged which (family_rules.credit_taken, the one
-- implementation of who may 划拨) on the account's state and the contributor's member entry it read;
-- this script decides nothing: should either differ now (a leave, a removal or a dissolution
-- meanwhile), it writes nothing and answers AGAIN (the caller reads and judges again). The first
-- outcome sticks.
-- KEYS[1] family, KEYS[2] members, KEYS[3] lots, KEYS[4] shares, KEYS[5] applied, KEYS[6] history,
-- KEYS[7] lot counter, KEYS[8] the families the contributor has given to (a set)
-- ARGV[1] transfer id, ARGV[2] contributor, ARGV[3] amount, ARGV[4] now, ARGV[5] the judgement
-- 'OK' | 'GONE', ARGV[6] the account's state as judged, ARGV[7] the contributor's member entry as judged
-- ('' : none)
-- Replies: {'OK'} | {'GONE'} | {'AGAIN'}
local mark = 'x|' .. ARGV[1]
local done = redis.call('HGET', KEYS[5], mark)
if done then return {done} end
local c, amount = ARGV[2], tonumber(ARGV[3])
if (redis.call('HGET', KEYS[1], 'state') or '') ~= ARGV[6] or (redis.call('HGET', KEYS[2], c) or '') ~= ARGV[7] then
  return {'AGAIN'}
end
if ARGV[5] ~= 'OK' then
  redis.call('HSET', KEYS[5], mark, 'GONE')
  return {'GONE'}
end
lot_in({KEYS[1], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]}, ARGV[1], c, amount, ARGV[4])
return {'OK'}
