-- 亲情账户 removal, by either side, once per request id. The removals are national like the proxies,
-- so a resend at another province's registry finds the removal it made, and the same id naming
-- another proxy is told apart (a province's own request-id claims only see its own requests).
-- KEYS[1] holder's relatives hash, KEYS[2] relative's holders hash, KEYS[3] removals hash (request id -> record)
-- ARGV[1] holder, ARGV[2] relative, ARGV[3] request id
-- Returns {1, record} (removed now), {2, record} (removed earlier by this request id), {3, ''} (this
-- request id removed another proxy) or {0, ''}.
local earlier = redis.call('HGET', KEYS[3], ARGV[3])
if earlier then
  local was = cjson.decode(earlier)
  if was['holder'] == ARGV[1] and was['relative'] == ARGV[2] then return {2, earlier} end
  return {3, ''}
end
local existing = redis.call('HGET', KEYS[1], ARGV[2])
if not existing then return {0, ''} end
redis.call('HDEL', KEYS[1], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[3], existing)
return {1, existing}
