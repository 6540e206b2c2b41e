-- KEYS[1] transfer record; ARGV field, value … ; returns the state (CREATED for a new record)
local state = redis.call('HGET', KEYS[1], 'state')
if state then return state end
for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'state', 'CREATED')
return 'CREATED'
