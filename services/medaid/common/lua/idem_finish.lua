-- Record a request's answer, unless one is recorded already: the first answer recorded stays the
-- request's answer (a concurrent duplicate that drove the same request, or the recovery loop, may
-- finish it too, later, with the state read later).
-- A refusal that came after effects (a wallet transfer that FAILED) is recorded the same way, as `err`.
-- Only a claim in progress takes an answer: one freed meanwhile (gone) or voided by a 冲正 is left as it
-- stands, so that no answer is ever kept without the fingerprint and operation it answers (a claim with
-- none would be taken afresh by the same id with other fields, and hand them this answer's leftovers).
-- KEYS[1] claim hash; ARGV[1] serialized answer, ARGV[2] ttl seconds (0: none), ARGV[3] the refusal
-- (JSON; optional: ARGV[1] is then '')
-- Returns {resp, err}: the answer the claim now holds (err: a refusal recorded after effects), or the
-- caller's own where the claim takes none
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'DONE' then
  return {redis.call('HGET', KEYS[1], 'resp') or '', redis.call('HGET', KEYS[1], 'err') or ''}
end
local err = ARGV[3] or ''
if state ~= 'PENDING' then
  return {err == '' and ARGV[1] or '', err}
end
if err ~= '' then
  redis.call('HSET', KEYS[1], 'state', 'DONE', 'err', err)
else
  redis.call('HSET', KEYS[1], 'state', 'DONE', 'resp', ARGV[1])
end
if tonumber(ARGV[2]) > 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return {err == '' and ARGV[1] or '', err}
