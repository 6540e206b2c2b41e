-- A transfer failed before any money moved: give its daily count back and clear pending. Once.
-- KEYS[1] pending, KEYS[2] day counter (of the reservation's day), KEYS[3] reserved hash; ARGV[1] tid
if redis.call('HDEL', KEYS[3], ARGV[1]) == 0 then return 0 end
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
if tonumber(redis.call('GET', KEYS[2]) or '0') > 0 then redis.call('DECR', KEYS[2]) end
return 1
