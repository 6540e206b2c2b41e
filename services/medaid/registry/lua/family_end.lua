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
-- ARGV[1] mode, ARGV[2] family id, ARGV[3] actor ('' = the registry itself), ARGV[4] target ('' when it
-- dissolves), ARGV[5] operation id, ARGV[6] now, ARGV[7] end reason, ARGV[8] token; after the persons,
-- what the caller judged the operation on, read under the lock (family_rules.check_end, began_after:
-- the one implementation of who may end which place): ARGV[#KEYS + 1] the account's state,
-- ARGV[#KEYS + 2] the target's member entry ('' : none) and ARGV[#KEYS + 3] their share ('' : not
-- judged on it). This script decides nothing: should any of them differ now (an invitation made or
-- answered, a share spent or given meanwhile), it writes nothing and answers AGAIN (the caller reads
-- and judges again).
-- Replies: {'OK', returns} | {'DUP', returns} | {'STALE', ''} | {'AGAIN', ''}; returns is
-- 'PENDING|id:amount,…' or 'DONE|…'
local mode, fid, actor, target, op, now, reason = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local done = redis.call('HGET', KEYS[6], op)
if done then return {'DUP', done} end
if not fence_ok(KEYS[7], ARGV[8]) then return {'STALE', ''} end
local n = #KEYS
local share = tonumber(redis.call('HGET', KEYS[3], target) or '0')
if (redis.call('HGET', KEYS[1], 'state') or '') ~= ARGV[n + 1]
    or (redis.call('HGET', KEYS[2], target) or '') ~= ARGV[n + 2]
    or (ARGV[n + 3] ~= '' and share ~= tonumber(ARGV[n + 3])) then
  return {'AGAIN', ''}
end
local creator = redis.call('HGET', KEYS[1], 'creator')
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
  if mode ~= 'WITHDRAW' then ending[1] = target end
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
