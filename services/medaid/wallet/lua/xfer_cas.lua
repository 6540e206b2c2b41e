-- Compare-and-set a transfer's state. KEYS[1] transfer record
-- ARGV[1] expected state, ARGV[2] new state, ARGV[3..] field, value …
-- Returns {'OK'|'NO', {the record after, as HGETALL gives it}}: the caller needs no second read.
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= ARGV[1] then return {'NO', redis.call('HGETALL', KEYS[1])} end
redis.call('HSET', KEYS[1], 'state', ARGV[2])
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return {'OK', redis.call('HGETALL', KEYS[1])}
