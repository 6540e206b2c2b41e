-- Free a request id's claim in progress, only as the caller read it (Context.free_claim) or took it
-- (Idempotency.run: an attempt refused or told to retry): still PENDING with the same fingerprint,
-- recovery entry and attempt number. A holder that took the claim again since (idem_begin.lua: a new
-- attempt number), an answer recorded since, or another request that took the id keeps it.
-- KEYS[1] claim hash; ARGV[1] fingerprint, ARGV[2] entry ('' : none), ARGV[3] attempt number ('' : none)
-- Returns 1 if freed, else 0
local state, fp, entry, n = unpack(redis.call('HMGET', KEYS[1], 'state', 'fp', 'entry', 'n'))
if state ~= 'PENDING' or fp ~= ARGV[1] or (entry or '') ~= ARGV[2] or (n or '') ~= ARGV[3] then
  return 0
end
return redis.call('DEL', KEYS[1])
