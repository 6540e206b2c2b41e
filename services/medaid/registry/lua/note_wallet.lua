-- The wallet's note of a person's 医保钱包 and its use-place (waterfall step 2 asks the wallet only
-- where this says it is used), kept only if it is not older than the note held: the wallet raises
-- the use-place's version on every change, so a note that arrives late cannot undo a newer one.
-- KEYS[1] person hash; ARGV[1] use-place, ARGV[2] its version
-- Returns 'NOT_FOUND' | 'OLDER' (nothing written) | 'OK'
if redis.call('EXISTS', KEYS[1]) == 0 then return 'NOT_FOUND' end
if tonumber(ARGV[2]) < tonumber(redis.call('HGET', KEYS[1], 'wallet_v') or '0') then return 'OLDER' end
redis.call('HSET', KEYS[1], 'wallet_place', ARGV[1], 'wallet_v', ARGV[2])
return 'OK'
