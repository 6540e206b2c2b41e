-- An attempt under a msgid's claim was answered with its effect (settled, reversed, undone): the
-- claim is marked `done`, so its attempts are never counted as over (msgid_claim.lua) and the msgid
-- stays bound to its transaction and person for good.
-- KEYS[1] the msgid's claim; ARGV[1] the attempt's fingerprint
-- Returns 1 when marked (0: the claim is another's now, e.g. voided by a 2601).
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' or not same_attempt(redis.call('HGET', KEYS[1], 'fp'), ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'done', 1)
return 1
