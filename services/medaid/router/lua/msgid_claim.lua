-- Claim a msgid for one transaction and person, or join the claim of an identical attempt.
-- KEYS[1] the msgid's claim; ARGV[1] fingerprint (transaction and person, and for a 2207 a digest of
-- the whole message after a '|': '2207:<psn>|<digest>'); ARGV[2] after how many ms since the last
-- attempt began every attempt under the claim is over (MsgidClaims: well past any attempt's deadline)
-- The claim counts `open` attempts: every attempt that has not been refused by a rule. An attempt
-- that settles never leaves, and marks the claim `done` (msgid_done.lua): such a claim is permanent.
-- An attempt whose outcome stayed unknown (not answered in time) never leaves either, but once the
-- claim's last attempt (`at`, Redis TIME in ms) began longer ago than ARGV[2], a claim not `done`
-- counts the joining attempt as its only open one: whatever an earlier attempt did at the registry is
-- done by now, and that registry answers the joining one from it (the same message, the same request
-- id): a refusal by a rule then says the earlier ones wrote nothing either, and frees the msgid.
-- Returns 1 (created), 0 (joined an identical attempt's claim), -1 (taken by another fingerprint),
-- -2 (the msgid was cancelled by a 2601 冲正: msgid_void.lua).
--
-- On one Redis the router also notes a claimed 2207 in its reconciliation index here (index.py),
-- in the same script, so that only a claimed msgid is ever indexed: KEYS[2] the institution's
-- settlements, KEYS[3] their entries, KEYS[4] the visit's settlements (absent: no mdtrt_id);
-- ARGV[3] settlement id, ARGV[4] now, ARGV[5] the entry. Then the reply is {claim reply, 1 when
-- this call wrote the entry, else 0 (an earlier attempt's is there)}.
local function note(claimed)
  if #KEYS < 3 or claimed < 0 then return claimed end
  local wrote = redis.call('ZADD', KEYS[2], 'NX', ARGV[4], ARGV[3])
  wrote = math.min(wrote, redis.call('HSETNX', KEYS[3], ARGV[3], ARGV[5]))
  if KEYS[4] then wrote = math.min(wrote, redis.call('ZADD', KEYS[4], 'NX', ARGV[4], ARGV[3])) end
  return {claimed, wrote}
end

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'none' then
  redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'open', 1, 'at', now)
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
-- A claim written before attempts were dated has no `at`: dated from now on, over only after the limit.
local at, done = unpack(redis.call('HMGET', KEYS[1], 'at', 'done'))
if not done and at and now - tonumber(at) > tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'open', 1, 'at', now)
else
  redis.call('HINCRBY', KEYS[1], 'open', 1)
  redis.call('HSET', KEYS[1], 'at', now)
end
return note(0)
