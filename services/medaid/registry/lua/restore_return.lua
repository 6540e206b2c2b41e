-- Undoing a reversal was refused: give a helper back what this attempt (money ref) took from them,
-- once. A charge this attempt never made is marked VOID first, so a late settle_charge of the same
-- ref (a paused process) can never take it after the attempt was given up. The return's mark is the
-- reversal's ('rev|' + ref): '|' is in no request id.
-- KEYS[1] account, KEYS[2] ledger, KEYS[3] applied, KEYS[4] consumption hash
-- ARGV[1] money ref, ARGV[2] amount, ARGV[3] now, ARGV[4] consumption name, ARGV[5] record json
-- Replies: {'OK', balance after} | {'DUP', ''} | {'NONE', ''}
local done = redis.call('HGET', KEYS[3], ARGV[1])
if not done then
  redis.call('HSET', KEYS[3], ARGV[1], 'VOID')
  return {'NONE', ''}
end
if done == 'VOID' then return {'NONE', ''} end
local mark = 'rev|' .. ARGV[1]
if redis.call('HGET', KEYS[3], mark) then return {'DUP', ''} end
local after = move(KEYS[1], KEYS[2], tonumber(ARGV[2]), 'REVERSE_HELPER', ARGV[1], ARGV[3])
redis.call('HSET', KEYS[4], ARGV[4], ARGV[5])
redis.call('HSET', KEYS[3], mark, fmt(after))
return {'OK', fmt(after)}
