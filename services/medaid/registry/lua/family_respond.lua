-- The invitee accepts (with face verification, checked in Python) or declines (SPEC §3b), on the
-- `{fam}` slot. Accepting re-checks the cap and exclusivity (join_refusal), which may have changed
-- since the invitation. An expired invitation is refused and left as it is (a refusal writes nothing).
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
if not holds_place(m, now) then return {'ERR', 'INVITATION_EXPIRED'} end
if ARGV[3] == '1' then
  local why = join_refusal(KEYS[2], KEYS[3], fid, member, now, ARGV[5], ARGV[6])
  if why ~= '' then return {'ERR', why} end
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
