-- 亲情账户: KEYS[1] holder's relatives hash, KEYS[2] relative's holders hash
-- ARGV[1] holder, ARGV[2] relative, ARGV[3] record json
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1
