-- 亲情账户: KEYS[1] holder's relatives hash, KEYS[2] relative's holders hash, KEYS[3] additions hash
-- (request id -> record: national like the proxies, so a resend at another province's registry
-- finds what it added, even once removed, and the same id naming another proxy is told apart)
-- ARGV[1] holder, ARGV[2] relative, ARGV[3] record json (with the request id as "rid"), ARGV[4] request id,
-- ARGV[5] most relatives a holder may add, ARGV[6] '1': only an earlier addition of this request id is
-- looked for (a resend not judged afresh: Proxies.bind_proxy), nothing written
-- KEYS[4] additions whose second read is not recorded yet (request id -> '1'; proxy_undo.lua)
-- KEYS[5] / ARGV[7] the entry's fence and the writer's mark (place_fenced: {'ERR', 'FENCED'})
-- Returns {1, record} (created), {2, record} (created earlier by this request id: a resend), {3, ''}
-- (this request id added another proxy), {0, ''} (exists), {-1, ''} (limit reached) or, ARGV[6] '1', {4, ''}
-- (no addition of this request id: undone since).
if place_fenced() then return {'ERR', 'FENCED'} end
local earlier = redis.call('HGET', KEYS[3], ARGV[4])
if earlier then
  local was = cjson.decode(earlier)
  if was['holder'] == ARGV[1] and was['relative'] == ARGV[2] and was['relation'] == cjson.decode(ARGV[3])['relation'] then
    return {2, earlier}
  end
  return {3, ''}
end
if ARGV[6] == '1' then return {4, ''} end
local existing = redis.call('HGET', KEYS[1], ARGV[2])
if existing then
  if cjson.decode(existing)['rid'] == ARGV[4] then return {2, existing} end
  return {0, ''}
end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[5]) then return {-1, ''} end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[4], ARGV[3])
redis.call('HSET', KEYS[4], ARGV[4], '1')
return {1, ARGV[3]}
