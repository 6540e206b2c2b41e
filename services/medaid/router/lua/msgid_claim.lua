-- Claim a msgid for one transaction and person, or join the claim of an identical attempt.
-- KEYS[1] the msgid's claim; ARGV[1] fingerprint (transaction and person)
-- The claim counts `open` attempts: every attempt that has not been refused by a rule. An attempt
-- that settles, or whose outcome is unknown, never leaves, so such a claim is permanent.
-- Returns 1 (created), 0 (joined an identical attempt's claim), -1 (taken by another fingerprint),
-- -2 (the msgid was cancelled by a 2601 冲正: msgid_void.lua).
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'none' then
  redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'open', 1)
  return 1
end
if kind == 'string' then
  -- A claim written before attempts were counted: permanent, as it always was.
  if redis.call('GET', KEYS[1]) == ARGV[1] then return 0 end
  return -1
end
local fp = redis.call('HGET', KEYS[1], 'fp')
if string.sub(fp, 1, 5) == 'void:' then return -2 end
if fp ~= ARGV[1] then return -1 end
redis.call('HINCRBY', KEYS[1], 'open', 1)
return 0
