-- 邀请 a near-kin into a family account (SPEC §3b), on the `{fam}` slot. Who invites whom was judged
-- in Python (Family.invite: the account exists and the caller is its creator, neither of which
-- changes once the account is created; family_rules.check_invitee: the person rules); this checks
-- what must be atomic with the write: the account is ACTIVE, no open invitation or membership, the
-- cap (`max_members`, the creator and open invitations counted) and exclusivity (join_refusal).
-- Under 16 (or a temporary member) joins at once.
-- KEYS[1] family, KEYS[2] members, KEYS[3] the invitee's memberships (of), KEYS[4] history
-- ARGV[1] family id, ARGV[2] member, ARGV[3] relation, ARGV[4] now, ARGV[5] invitation expires at,
-- ARGV[6] max members, ARGV[7] exclusive, ARGV[8] joins at once '1'|'0', ARGV[9] temporary '1'|'0',
-- ARGV[10] request id
-- KEYS[5] / ARGV[11] the entry's fence and the writer's mark (place_fenced: {'ERR', 'FENCED'})
-- Replies: {'OK', state} | {'ERR', reason code}
if place_fenced() then return {'ERR', 'FENCED'} end
local fid, member, now = ARGV[1], ARGV[2], ARGV[4]
if redis.call('HGET', KEYS[1], 'state') ~= 'ACTIVE' then return {'ERR', 'FAMILY_NOT_ACTIVE'} end
local raw = redis.call('HGET', KEYS[2], member)
local own = raw and cjson.decode(raw)
if own and holds_place(own, now) then
  if own.req == ARGV[10] then return {'OK', own.state} end
  return {'ERR', own.state == 'MEMBER' and 'ALREADY_MEMBER' or 'ALREADY_INVITED'}
end
local why = join_refusal(KEYS[2], KEYS[3], fid, member, now, ARGV[6], ARGV[7])
if why ~= '' then return {'ERR', why} end
local now_state = ARGV[8] == '1' and 'MEMBER' or 'INVITED'
redis.call('HSET', KEYS[2], member, cjson.encode({state = now_state, creator = '0', relation = ARGV[3],
  temporary = ARGV[9], invited_at = now, expires_at = ARGV[5], joined_at = now_state == 'MEMBER' and now or '0',
  ended_at = '0', end_reason = '', req = ARGV[10]}))
redis.call('HSET', KEYS[3], fid, now_state)
hist(KEYS[4], now_state == 'MEMBER' and 'JOINED' or 'INVITED', member, 0, ARGV[10], now)
return {'OK', now_state}
