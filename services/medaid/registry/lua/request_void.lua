-- 冲正 of a request whose answer was lost: void its id if this registry never saw it, else say what
-- it was. A voided id keeps a claim whose fingerprint no request has ('void'), so a late original is
-- refused by the check that refuses any reused id, as ORIGINAL_CANCELLED (idempotency.reused), and
-- writes nothing.
-- KEYS[1] the original id's claim; ARGV[1] the cancelling request id, ARGV[2] now
-- Replies: {'VOIDED'} | {'USED', op, subject, state}
local fp = redis.call('HGET', KEYS[1], 'fp')
if fp == 'void' then return {'VOIDED'} end
if fp then
  local op, subject, state = unpack(redis.call('HMGET', KEYS[1], 'op', 'subject', 'state'))
  return {'USED', op or '', subject or '', state or ''}
end
redis.call('HSET', KEYS[1], 'fp', 'void', 'op', 'void', 'subject', ARGV[1], 'state', 'VOID', 'at', ARGV[2])
return {'VOIDED'}
