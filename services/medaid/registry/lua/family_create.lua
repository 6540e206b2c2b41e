-- 创建 a family account (SPEC §3b), on the province's `{fam}` slot: one ACTIVE account per creator;
-- in an exclusive province the creator may be a member of no other account. The family's own keys
-- are named from ARGV[5] (the `{fam}` prefix), since its id is chosen here; they share the slot.
-- KEYS[1] family id counter, KEYS[2] the creator's ACTIVE family (by), KEYS[3] the creator's
-- memberships (of), KEYS[4] the index of all families
-- ARGV[1] creator, ARGV[2] now, ARGV[3] exclusive '1'|'0', ARGV[4] request id, ARGV[5] prefix,
-- ARGV[6] province, KEYS[5] / ARGV[7] the entry's fence and the writer's mark (place_fenced)
-- Replies: {'OK', family id} | {'ERR', reason code}
if place_fenced() then return {'ERR', 'FENCED'} end
local creator, now, rid, pre = ARGV[1], ARGV[2], ARGV[4], ARGV[5]
local existing = redis.call('GET', KEYS[2])
if existing then
  if redis.call('HGET', pre .. 'f:' .. existing, 'req') == rid then return {'OK', existing} end
  return {'ERR', 'FAMILY_ACCOUNT_EXISTS'}
end
if ARGV[3] == '1' then
  local of = redis.call('HGETALL', KEYS[3])
  for i = 2, #of, 2 do
    if of[i] == 'MEMBER' then return {'ERR', 'ALREADY_IN_ANOTHER_RELATION'} end
  end
end
local fid = 'FA' .. ARGV[6] .. string.format('%010d', redis.call('INCR', KEYS[1]))
redis.call('HSET', pre .. 'f:' .. fid, 'id', fid, 'creator', creator, 'state', 'ACTIVE', 'created_at', now,
  'bal', 0, 'req', rid)
redis.call('HSET', pre .. 'm:' .. fid, creator, cjson.encode({state = 'MEMBER', creator = '1', relation = '',
  temporary = '0', invited_at = now, expires_at = '0', joined_at = now, ended_at = '0', end_reason = ''}))
redis.call('HSET', KEYS[3], fid, 'MEMBER')
redis.call('SET', KEYS[2], fid)
redis.call('SADD', KEYS[4], fid)
hist(pre .. 'hist:' .. fid, 'CREATED', creator, 0, rid, now)
return {'OK', fid}
