-- Enrol a person once. A resend of the same request (its reply lost) recognises its own earlier
-- write by the request id and answers MINE, so the caller finishes the rest (indexes, directory).
-- Fenced by the person's lock (the recovery loop drops an enrolment's entry under it).
-- KEYS[1] person hash, KEYS[2] account hash, KEYS[3] fence
-- ARGV[1] has_account (0/1), ARGV[2] request id, ARGV[3] token, ARGV[4..] person field, value …
-- Returns 1 (created), 2 (created earlier by this request id), 0 (enrolled by another request) or
-- -1 (a newer holder took the lock: nothing written).
if not fence_ok(KEYS[3], ARGV[3]) then return -1 end
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'enroll_rid') == ARGV[2] then return 2 end
  return 0
end
redis.call('HSET', KEYS[1], 'enroll_rid', ARGV[2], unpack(ARGV, 4))
if ARGV[1] == '1' then
  redis.call('HSET', KEYS[2], 'bal', 0, 'credited', 0, 'debited', 0, 'lseq', 0)
end
return 1
