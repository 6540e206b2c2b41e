-- An attempt that a registry refused by a rule (it wrote nothing) leaves the msgid's claim; the
-- last attempt to leave removes it, so the msgid is free again for a corrected message.
-- KEYS[1] the msgid's claim; ARGV[1] the attempt's fingerprint
-- Returns 1 when the claim was removed.
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' or not same_attempt(redis.call('HGET', KEYS[1], 'fp'), ARGV[1]) then
  return 0
end
if redis.call('HINCRBY', KEYS[1], 'open', -1) > 0 then return 0 end
redis.call('DEL', KEYS[1])
return 1
