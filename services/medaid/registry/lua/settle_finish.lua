-- Staged step 3, on the patient's slot, fenced: the record becomes SETTLED with what was actually
-- paid, and the member's consumption records are written.
-- KEYS[1] settlement record, KEYS[2] fence, KEYS[3] consumption hash, KEYS[4] consumption index
-- ARGV[1] token, ARGV[2] number of consumption records n, then n (name, json) pairs, then the
-- record's field, value … pairs.
-- Replies: {'OK'} | {'DONE'} (already final) | {'STALE'} | {'BADSTATE', state}
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'SETTLED' or state == 'REVERSING' or state == 'REVERSED' then return {'DONE'} end
if not fence_ok(KEYS[2], ARGV[1]) then return {'STALE'} end
if state ~= 'OPEN' then return {'BADSTATE', state or ''} end
local n = tonumber(ARGV[2])
for i = 1, n do
  local name, json = ARGV[1 + 2 * i], ARGV[2 + 2 * i]
  redis.call('HSET', KEYS[3], name, json)
  redis.call('RPUSH', KEYS[4], name)
end
redis.call('HSET', KEYS[1], unpack(ARGV, 3 + 2 * n))
return {'OK'}
