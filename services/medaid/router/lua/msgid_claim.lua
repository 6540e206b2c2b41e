-- Claim a msgid for one transaction and person, or join the claim of an identical attempt.
-- KEYS[1] the msgid's claim; ARGV[1] fingerprint (transaction and person, and for a 2207 a digest of
-- the whole message after a '|': '2207:<psn>|<digest>')
-- The claim counts `open` attempts: every attempt that has not been refused by a rule. An attempt
-- that settles, or whose outcome is unknown, never leaves, so such a claim is permanent.
-- Returns 1 (created), 0 (joined an identical attempt's claim), -1 (taken by another fingerprint),
-- -2 (the msgid was cancelled by a 2601 冲正: msgid_void.lua).
--
-- On one Redis the router also notes a claimed 2207 in its reconciliation index here (index.py),
-- in the same script, so that only a claimed msgid is ever indexed: KEYS[2] the institution's
-- settlements, KEYS[3] their entries, KEYS[4] the visit's settlements (absent: no mdtrt_id);
-- ARGV[2] settlement id, ARGV[3] now, ARGV[4] the entry. Then the reply is {claim reply, 1 when
-- this call wrote the entry, else 0 (an earlier attempt's is there)}.
local function note(claimed)
  if #KEYS < 3 or claimed < 0 then return claimed end
  local wrote = redis.call('ZADD', KEYS[2], 'NX', ARGV[3], ARGV[2])
  wrote = math.min(wrote, redis.call('HSETNX', KEYS[3], ARGV[2], ARGV[4]))
  if KEYS[4] then wrote = math.min(wrote, redis.call('ZADD', KEYS[4], 'NX', ARGV[3], ARGV[2])) end
  return {claimed, wrote}
end

local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'none' then
  redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'open', 1)
  return note(1)
end
if kind == 'string' then
  -- A claim written before attempts were counted: permanent, as it always was.
  if same_attempt(redis.call('GET', KEYS[1]), ARGV[1]) then return note(0) end
  return -1
end
local fp = redis.call('HGET', KEYS[1], 'fp')
if string.sub(fp, 1, 5) == 'void:' then return -2 end
if not same_attempt(fp, ARGV[1]) then return -1 end
redis.call('HINCRBY', KEYS[1], 'open', 1)
return note(0)
