-- Keep the owner's status as the registry of the wallet's province reported it, unless the wallet is
-- of another province by now (it followed its owner there while the status was read: that province's
-- status counts, and the following wrote it).
-- KEYS[1] wallet; ARGV[1] the province the status was read from, ARGV[2] the status
-- Returns 1 (kept) | 0 (nothing written)
if redis.call('HGET', KEYS[1], 'province') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2])
return 1
