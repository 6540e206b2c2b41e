-- The transfer is accepted or returned: the sender may send again. KEYS[1] pending; ARGV[1] tid
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
