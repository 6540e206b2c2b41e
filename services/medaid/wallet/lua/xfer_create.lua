-- KEYS[1] transfer record, KEYS[2] the recipient's incoming transfers (zset by creation time);
-- ARGV field, value … (with tid and created_at); returns the state (CREATED for a new record)
local state = redis.call('HGET', KEYS[1], 'state')
if state then return state end
local tid, created = nil, nil
for i = 1, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  if ARGV[i] == 'tid' then tid = ARGV[i + 1] elseif ARGV[i] == 'created_at' then created = ARGV[i + 1] end
end
redis.call('HSET', KEYS[1], 'state', 'CREATED')
redis.call('ZADD', KEYS[2], created, tid)
return 'CREATED'
