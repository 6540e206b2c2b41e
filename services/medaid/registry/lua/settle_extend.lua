-- Staged step 2b, on the patient's slot, fenced: helpers asked in place of charges that could not be
-- taken (staged.py) join the OPEN record before any of them is charged, so a re-drive after a crash
-- charges them, each once per settlement id, and never plans their shares again.
-- KEYS[1] settlement record, KEYS[2] fence counter
-- ARGV[1] token, ARGV[2] the new charges 'id:amount:-1,…'
-- Replies: {'OK'} | {'DONE'} (already final: another holder finished it) | {'STALE'} | {'BADSTATE', state}
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'SETTLED' or state == 'REVERSING' or state == 'REVERSED' then return {'DONE'} end
if not fence_ok(KEYS[2], ARGV[1]) then return {'STALE'} end
if state ~= 'OPEN' then return {'BADSTATE', state or ''} end
local charges = redis.call('HGET', KEYS[1], 'charges') or ''
redis.call('HSET', KEYS[1], 'charges', charges == '' and ARGV[2] or charges .. ',' .. ARGV[2])
return {'OK'}
