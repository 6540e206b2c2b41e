-- Enrol a person once. A resend of the same request (its reply lost) recognises its own earlier
-- write by the request id and answers MINE, so the caller finishes the rest (indexes, directory).
-- KEYS[1] person hash, KEYS[2] account hash
-- ARGV[1] has_account (0/1), ARGV[2] request id, ARGV[3..] person field, value …
-- Returns 1 (created), 2 (created earlier by this request id) or 0 (enrolled by another request).
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'enroll_rid') == ARGV[2] then return 2 end
  return 0
end
redis.call('HSET', KEYS[1], 'enroll_rid', ARGV[2], unpack(ARGV, 3))
if ARGV[1] == '1' then
  redis.call('HSET', KEYS[2], 'bal', 0, 'credited', 0, 'debited', 0, 'lseq', 0)
end
return 1
