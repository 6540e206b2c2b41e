-- KEYS[1] returns hash; ARGV[1] release id
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local rec = cjson.decode(raw)
rec.state = 'DONE'
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(rec))
return 1
