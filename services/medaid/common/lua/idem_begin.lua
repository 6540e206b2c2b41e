-- Claim a request id, or report what happened to it before.
-- KEYS[1] claim hash; ARGV[1] fingerprint, ARGV[2] op, ARGV[3] subject, ARGV[4] now ms
-- Returns {'NEW'} | {'REUSED', op} | {'DONE', resp, err} | {'PENDING', subject}
local fp = redis.call('HGET', KEYS[1], 'fp')
if not fp then
  redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'op', ARGV[2], 'subject', ARGV[3], 'state', 'PENDING',
             'at', ARGV[4])
  return {'NEW'}
end
if fp ~= ARGV[1] then
  return {'REUSED', redis.call('HGET', KEYS[1], 'op') or ''}
end
if redis.call('HGET', KEYS[1], 'state') == 'DONE' then
  return {'DONE', redis.call('HGET', KEYS[1], 'resp') or '', redis.call('HGET', KEYS[1], 'err') or ''}
end
return {'PENDING', redis.call('HGET', KEYS[1], 'subject') or ''}
