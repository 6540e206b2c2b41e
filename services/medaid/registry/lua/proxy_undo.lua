-- A 亲情账户 addition undone (Bindings.proxy_ended): request ARGV[3] added the proxy holder → relative, and a
-- side's death, recorded between its checks and its write, missed it (SPEC §5b). The addition's record goes,
-- so that the request id answers as a bind after the death does, and the proxy where it still stands as
-- this request wrote it (one the death's own ending removed, or a later addition, is not this request's).
-- KEYS[1] holder's relatives hash, KEYS[2] relative's holders hash, KEYS[3] additions hash
-- ARGV[1] holder, ARGV[2] relative, ARGV[3] request id
-- Returns 1 (undone now) or 0 (this request id added nothing to undo here).
local earlier = redis.call('HGET', KEYS[3], ARGV[3])
if not earlier then return 0 end
local was = cjson.decode(earlier)
if was['holder'] ~= ARGV[1] or was['relative'] ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[3], ARGV[3])
local standing = redis.call('HGET', KEYS[1], ARGV[2])
if standing and cjson.decode(standing)['rid'] == ARGV[3] then
  redis.call('HDEL', KEYS[1], ARGV[2])
  redis.call('HDEL', KEYS[2], ARGV[1])
end
return 1
