-- Claim a request id, or report what happened to it before. The id names one request of one
-- operation: the same fields sent to another operation (a decline and a leave of one member carry
-- the same fields) are another request, REUSED like changed fields.
-- A flow under a recovery entry names it (ARGV[5]): the claim keeps the entry that leads the recovery
-- loop back to it, and a holder taking its claim again before its write (ARGV[6] 'hold') writes its
-- entry and a new attempt number `n` on it, so that a loop that read the claim before frees it no more
-- (idem_free.lua). A claim without an entry (`Idempotency.run`) found in progress gets a new attempt
-- number too: the caller drives the request as well, and an earlier attempt told to retry frees the
-- claim only under its own attempt number, never one a resend drives or answered since.
-- KEYS[1] claim hash; ARGV[1] fingerprint, ARGV[2] op, ARGV[3] subject, ARGV[4] now ms,
-- ARGV[5] recovery entry ('' or absent: none), ARGV[6] 'hold' (optional)
-- Returns {'NEW'} | {'REUSED', op} | {'DONE', resp, err} | {'PENDING', subject, attempt number ('' : none)};
-- writes on NEW and DONE, and on PENDING for a hold or a claim without an entry
local fp, op = unpack(redis.call('HMGET', KEYS[1], 'fp', 'op'))
local entry = ARGV[5] or ''
if not fp then
  redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'op', ARGV[2], 'subject', ARGV[3], 'state', 'PENDING',
             'at', ARGV[4])
  if entry ~= '' then
    redis.call('HSET', KEYS[1], 'entry', entry)
  end
  return {'NEW'}
end
if fp ~= ARGV[1] or op ~= ARGV[2] then
  return {'REUSED', op or ''}
end
if redis.call('HGET', KEYS[1], 'state') == 'DONE' then
  -- A replay writes its claim's state again (the same value): a write, so the WAIT the cluster client
  -- sends behind this script waits for the master's offset now, which holds the recorded answer and
  -- every earlier write on this master, not for whatever this connection wrote last (a resend answered
  -- OK before a replica had the first attempt's answer would be lost with a failover).
  redis.call('HSET', KEYS[1], 'state', 'DONE')
  return {'DONE', redis.call('HGET', KEYS[1], 'resp') or '', redis.call('HGET', KEYS[1], 'err') or ''}
end
if ARGV[6] == 'hold' and entry ~= '' then
  redis.call('HSET', KEYS[1], 'entry', entry)
  redis.call('HINCRBY', KEYS[1], 'n', 1)
elseif entry == '' and not redis.call('HGET', KEYS[1], 'entry') then
  redis.call('HINCRBY', KEYS[1], 'n', 1)
end
return {'PENDING', redis.call('HGET', KEYS[1], 'subject') or '', redis.call('HGET', KEYS[1], 'n') or ''}
