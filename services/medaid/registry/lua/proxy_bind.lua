-- 亲情账户: KEYS[1] holder's relatives hash, KEYS[2] relative's holders hash
-- ARGV[1] holder, ARGV[2] relative, ARGV[3] record json (with the request id as "rid"), ARGV[4] request id,
-- ARGV[5] most relatives a holder may add
-- Returns 1 (created), 2 (created earlier by this request id: a resend), 0 (exists) or -1 (limit reached).
local existing = redis.call('HGET', KEYS[1], ARGV[2])
if existing then
  if cjson.decode(existing)['rid'] == ARGV[4] then return 2 end
  return 0
end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[5]) then return -1 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1
