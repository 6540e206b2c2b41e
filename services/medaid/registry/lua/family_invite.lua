-- 邀请 a near-kin into a family account (SPEC §3b), on the `{fam}` slot. The person rules were
-- checked in Python (family_rules.check_invitee); this checks what must be atomic with the write:
-- the account is ACTIVE and the caller its creator, no open invitation or membership, the cap
-- (`max_members`, the creator and open invitations counted) and exclusivity (join_refusal). Under
-- 16 (or a temporary member) joins at once.
-- KEYS[1] family, KEYS[2] members, KEYS[3] the invitee's memberships (of), KEYS[4] history
-- ARGV[1] family id, ARGV[2] creator, ARGV[3] member, ARGV[4] relation, ARGV[5] now,
-- ARGV[6] invitation expires at, ARGV[7] max members, ARGV[8] exclusive, ARGV[9] joins at once
-- '1'|'0', ARGV[10] temporary '1'|'0', ARGV[11] request id
-- KEYS[5] / ARGV[12] the entry's fence and the writer's mark (place_fenced: {'ERR', 'FENCED'})
-- Replies: {'OK', state} | {'ERR', reason code}
if place_fenced() then return {'ERR', 'FENCED'} end
local fid, creator, member, now = ARGV[1], ARGV[2], ARGV[3], ARGV[5]
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'ERR', 'FAMILY_NOT_FOUND'} end
if redis.call('HGET', KEYS[1], 'creator') ~= creator then return {'ERR', 'NOT_FAMILY_CREATOR'} end
if state ~= 'ACTIVE' then return {'ERR', 'FAMILY_NOT_ACTIVE'} end
if member == creator then return {'ERR', 'SELF_BINDING'} end
local raw = redis.call('HGET', KEYS[2], member)
local own = raw and cjson.decode(raw)
if own and holds_place(own, now) then
  if own.req == ARGV[11] then return {'OK', own.state} end
  return {'ERR', own.state == 'MEMBER' and 'ALREADY_MEMBER' or 'ALREADY_INVITED'}
end
local why = join_refusal(KEYS[2], KEYS[3], fid, member, now, ARGV[7], ARGV[8])
if why ~= '' then return {'ERR', why} end
local now_state = ARGV[9] == '1' and 'MEMBER' or 'INVITED'
redis.call('HSET', KEYS[2], member, cjson.encode({state = now_state, creator = '0', relation = ARGV[4],
  temporary = ARGV[10], invited_at = now, expires_at = ARGV[6], joined_at = now_state == 'MEMBER' and now or '0',
  ended_at = '0', end_reason = '', req = ARGV[11]}))
redis.call('HSET', KEYS[3], fid, now_state)
hist(KEYS[4], now_state == 'MEMBER' and 'JOINED' or 'INVITED', member, 0, ARGV[11], now)
return {'OK', now_state}
