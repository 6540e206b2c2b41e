-- Step 3, on the patient's slot: record the outcome (and the member's consumption record).
-- KEYS[1] settlement record, KEYS[2] fence, KEYS[3] consumption hash, KEYS[4] consumption index
-- ARGV[1] token, ARGV[2] settlement id, ARGV[3] result bytes, ARGV[4] consumption json or '',
-- ARGV[5..] field, value …
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'SETTLED' or state == 'REVERSING' or state == 'REVERSED' then
  return {'DONE', redis.call('HGET', KEYS[1], 'result')}
end
if not fence_ok(KEYS[2], ARGV[1]) then return {'STALE', ''} end
if state ~= 'OWN_DONE' then return {'BADSTATE', state or ''} end
redis.call('HSET', KEYS[1], 'state', 'SETTLED', 'result', ARGV[3], unpack(ARGV, 5))
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[2], ARGV[4])
  redis.call('RPUSH', KEYS[4], ARGV[2])
end
return {'OK', ARGV[3]}
