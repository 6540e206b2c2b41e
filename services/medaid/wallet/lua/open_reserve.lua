-- KEYS[1] wallet hash, KEYS[2] the opening's reservation; ARGV[1] request id, ARGV[2] ttl ms
-- 'EXISTS' (nothing written) where the wallet is there; 'BUSY' (nothing written) where another
-- request is opening it; else the opening is this request's: 'OK'.
if redis.call('EXISTS', KEYS[1]) == 1 then return 'EXISTS' end
local held = redis.call('GET', KEYS[2])
if held and held ~= ARGV[1] then return 'BUSY' end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 'OK'
