-- Credit a personal account once per mark (on the person's slot): a share returned from a family
-- account (leave, removal, dissolution, 回拨), or a reversed family charge whose contributor has
-- left. A credit needs no lock: it is once per mark, and commutes with anything else.
-- KEYS[1] account, KEYS[2] ledger, KEYS[3] applied
-- ARGV[1] mark, ARGV[2] amount, ARGV[3] ledger kind, ARGV[4] ref, ARGV[5] now
-- Replies: {'OK', balance after} | {'DUP', balance after}
local done = redis.call('HGET', KEYS[3], ARGV[1])
if done then return {'DUP', done} end
local after = move(KEYS[1], KEYS[2], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5])
redis.call('HSET', KEYS[3], ARGV[1], fmt(after))
return {'OK', fmt(after)}
