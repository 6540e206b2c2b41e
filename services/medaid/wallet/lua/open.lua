-- KEYS[1] wallet hash, KEYS[2] the opening's reservation (open_reserve.lua); ARGV field, value …
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'bal', 0, 'eseq', 0)
redis.call('DEL', KEYS[2])
return 1
