-- Leaving a family account (SPEC §3b), on the `{fam}` slot, fenced by the family's lock: a member
-- leaves (LEAVE) or is removed (REMOVE), the creator dissolves it (DISSOLVE), or a contributor takes
-- back their unspent share (WITHDRAW, 回拨). Each departing contributor's unspent share leaves the
-- account here, recorded under the operation id as PENDING returns; family_payout.lua then credits
-- each personal account once and family_returned.lua marks them DONE (the recovery loop finishes a
-- PENDING one). A second run with the same operation id answers what the first did.
-- KEYS[1] family, KEYS[2] members, KEYS[3] shares, KEYS[4] lots, KEYS[5] history, KEYS[6] returns,
-- KEYS[7] family fence, KEYS[8] the creator's ACTIVE family (by), KEYS[9…] the memberships (of) of
-- the persons ARGV[9…]: those the caller read as the family's members (the target alone unless it
-- dissolves). Every key is declared, so that a cluster never stops the script halfway while the slot
-- migrates; should a member whose membership ends not be among them (one invited meanwhile), it
-- writes nothing and answers AGAIN (the caller reads the members again).
-- ARGV[1] mode, ARGV[2] family id, ARGV[3] actor ('' = the registry itself), ARGV[4] target,
-- ARGV[5] operation id, ARGV[6] now, ARGV[7] end reason, ARGV[8] token, ARGV[#KEYS + 1] (after the
-- persons) the time of the life event that ends the place (unix ms; absent or 0: any place): only a
-- place the person had by then is the event's, so an event finished late (a resend, the recovery loop)
-- leaves an account created since (DISSOLVE: `created_at`) or a place taken since (REMOVE: a MEMBER's
-- `joined_at`, an INVITED's `invited_at`), once the person was ACTIVE again or back in the 统筹区; a
-- place that kept no time counts as taken before. Such a place is answered LATER, nothing written.
-- Replies: {'OK', returns} | {'DUP', returns} | {'ERR', reason code} | {'STALE', ''} | {'AGAIN', ''}
-- | {'LATER', ''}; returns is
-- 'PENDING|id:amount,…' or 'DONE|…'
local mode, fid, actor, target, op, now, reason = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local done = redis.call('HGET', KEYS[6], op)
if done then return {'DUP', done} end
if not fence_ok(KEYS[7], ARGV[8]) then return {'STALE', ''} end
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'ERR', 'FAMILY_NOT_FOUND'} end
local creator = redis.call('HGET', KEYS[1], 'creator')
if (mode == 'REMOVE' or mode == 'DISSOLVE') and actor ~= '' and actor ~= creator then
  return {'ERR', 'NOT_FAMILY_CREATOR'}
end
if state ~= 'ACTIVE' then return {'ERR', 'FAMILY_NOT_ACTIVE'} end
local by = tonumber(ARGV[#KEYS + 1] or '0') or 0
local function later(at) return by > 0 and (tonumber(at or '0') or 0) > by end
if mode == 'DISSOLVE' and later(redis.call('HGET', KEYS[1], 'created_at')) then return {'LATER', ''} end
local ending, returning = {}, {}
if mode == 'DISSOLVE' then
  local rows = redis.call('HGETALL', KEYS[2])
  for i = 1, #rows, 2 do
    local m = cjson.decode(rows[i + 1])
    if m.state == 'MEMBER' or m.state == 'INVITED' then ending[#ending + 1] = rows[i] end
  end
  local shares = redis.call('HGETALL', KEYS[3])
  for i = 1, #shares, 2 do returning[#returning + 1] = shares[i] end
else
  if target == creator and mode ~= 'WITHDRAW' then return {'ERR', 'CREATOR_CANNOT_LEAVE'} end
  local raw = redis.call('HGET', KEYS[2], target)
  local m = raw and cjson.decode(raw) or {state = ''}
  local may = m.state == 'MEMBER' or (mode == 'REMOVE' and m.state == 'INVITED')
  if not may then return {'ERR', 'NOT_A_MEMBER'} end
  if mode == 'REMOVE' and later(m.state == 'MEMBER' and m.joined_at ~= '0' and m.joined_at or m.invited_at) then
    return {'LATER', ''}
  end
  local share = tonumber(redis.call('HGET', KEYS[3], target) or '0')
  if mode == 'WITHDRAW' then
    if share <= 0 then return {'ERR', 'NO_UNSPENT_SHARE'} end
  else
    ending[1] = target
  end
  if share > 0 then returning[1] = target end
end
local of_key = {}
for i = 9, #KEYS do of_key[ARGV[i]] = KEYS[i] end
for _, t in ipairs(ending) do
  if not of_key[t] then return {'AGAIN', ''} end
end
local parts, total = {}, 0
for _, c in ipairs(returning) do
  local amount = tonumber(redis.call('HGET', KEYS[3], c) or '0')
  if amount > 0 then
    local lots = redis.call('HGETALL', KEYS[4])
    for i = 1, #lots, 2 do
      if string.match(lots[i + 1], '^([^:]+):') == c then redis.call('HDEL', KEYS[4], lots[i]) end
    end
    redis.call('HDEL', KEYS[3], c)
    redis.call('HINCRBY', KEYS[1], 'bal', -amount)
    parts[#parts + 1] = c .. ':' .. fmt(amount)
    total = total + amount
    hist(KEYS[5], mode == 'WITHDRAW' and 'WITHDRAWN' or 'RETURNED', c, amount, op, now)
  end
end
for _, t in ipairs(ending) do
  local m = cjson.decode(redis.call('HGET', KEYS[2], t))
  m.state, m.ended_at, m.end_reason = 'ENDED', now, reason
  redis.call('HSET', KEYS[2], t, cjson.encode(m))
  redis.call('HDEL', of_key[t], fid)
  if mode ~= 'DISSOLVE' then hist(KEYS[5], mode == 'REMOVE' and 'REMOVED' or 'LEFT', t, 0, op, now, reason) end
end
if mode == 'DISSOLVE' then
  redis.call('HSET', KEYS[1], 'state', 'DISSOLVED', 'dissolved_at', now, 'end_reason', reason)
  if redis.call('GET', KEYS[8]) == fid then redis.call('DEL', KEYS[8]) end
  hist(KEYS[5], 'DISSOLVED', actor ~= '' and actor or creator, total, op, now, reason)
end
local returns = (#parts > 0 and 'PENDING|' or 'DONE|') .. table.concat(parts, ',')
redis.call('HSET', KEYS[6], op, returns)
return {'OK', returns}
