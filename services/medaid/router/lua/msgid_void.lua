-- 冲正 (2601) of a msgid: its claim becomes a void one, so the original, should it arrive later, is
-- refused (ORIGINAL_CANCELLED) before any registry is asked. 'if_absent' voids a msgid nobody
-- claimed (the original never arrived); 'always' voids it after its effect was undone. A void claim
-- is never replaced: it names the first 2601 that cancelled the original, and a later 2601 of the
-- same original (answered ALREADY_REVERSED, ALREADY_RESTORED, VOIDED) writes nothing.
-- KEYS[1] the original msgid's claim; ARGV[1] 'if_absent' | 'always', ARGV[2] the 2601's id
-- Returns the claim's fingerprint before ('' when there was none).
local kind = redis.call('TYPE', KEYS[1]).ok
local before = ''
if kind == 'hash' then before = redis.call('HGET', KEYS[1], 'fp') or ''
elseif kind == 'string' then before = redis.call('GET', KEYS[1]) end
if before == '' or (ARGV[1] == 'always' and string.sub(before, 1, 5) ~= 'void:') then
  redis.call('DEL', KEYS[1])
  -- `open` 1 and a fingerprint no attempt has: no release can ever remove it.
  redis.call('HSET', KEYS[1], 'fp', 'void:' .. ARGV[2], 'open', 1)
end
return before
