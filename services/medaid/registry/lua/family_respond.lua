-- The invitee accepts (with face verification, checked in Python) or declines (SPEC §3b), on the
-- `{fam}` slot. Accepting re-checks the cap and exclusivity, which may have changed since the
-- invitation. An expired invitation is refused and left as it is (a refusal writes nothing).
-- KEYS[1] family, KEYS[2] members, KEYS[3] the invitee's memberships (of), KEYS[4] history
-- ARGV[1] family id, ARGV[2] member, ARGV[3] accept '1'|'0', ARGV[4] now, ARGV[5] max members,
-- ARGV[6] exclusive, ARGV[7] request id
-- Replies: {'OK', state} | {'ERR', reason code}
local fid, member, now = ARGV[1], ARGV[2], ARGV[4]
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'ERR', 'FAMILY_NOT_FOUND'} end
if state ~= 'ACTIVE' then return {'ERR', 'FAMILY_NOT_ACTIVE'} end
local raw = redis.call('HGET', KEYS[2], member)
if not raw then return {'ERR', 'NO_INVITATION'} end
local m = cjson.decode(raw)
if m.resp == ARGV[7] then return {'OK', m.state} end
if m.state ~= 'INVITED' then return {'ERR', m.state == 'MEMBER' and 'ALREADY_MEMBER' or 'NO_INVITATION'} end
if tonumber(m.expires_at) <= tonumber(now) then return {'ERR', 'INVITATION_EXPIRED'} end
if ARGV[3] == '1' then
  local seats = 0
  local rows = redis.call('HGETALL', KEYS[2])
  for i = 1, #rows, 2 do
    local o = cjson.decode(rows[i + 1])
    if rows[i] ~= member and (o.state == 'MEMBER' or (o.state == 'INVITED' and tonumber(o.expires_at) > tonumber(now))) then
      seats = seats + 1
    end
  end
  if seats >= tonumber(ARGV[5]) then return {'ERR', 'MEMBER_LIMIT_REACHED'} end
  if ARGV[6] == '1' then
    local of = redis.call('HGETALL', KEYS[3])
    for i = 1, #of, 2 do
      if of[i] ~= fid and of[i + 1] == 'MEMBER' then return {'ERR', 'ALREADY_IN_ANOTHER_RELATION'} end
    end
  end
  m.state, m.joined_at = 'MEMBER', now
  redis.call('HSET', KEYS[3], fid, 'MEMBER')
else
  m.state, m.ended_at = 'DECLINED', now
  redis.call('HDEL', KEYS[3], fid)
end
m.resp = ARGV[7]
redis.call('HSET', KEYS[2], member, cjson.encode(m))
hist(KEYS[4], m.state == 'MEMBER' and 'JOINED' or 'DECLINED', member, 0, ARGV[7], now)
return {'OK', m.state}
