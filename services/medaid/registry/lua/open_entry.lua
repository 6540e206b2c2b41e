-- A flow's entry in the recovery index (Keys.open_settlements()), by the holder of the lock the flow's
-- effects are fenced by. Its score, the time the recovery loop's grace runs from, is also the holder's
-- mark on it: each holder writes a score of its own, so a holder's withdrawal takes away only an entry
-- that no later holder wrote again (an entry is a settlement's or a request id's, whichever attempt
-- wrote it: an attempt that took the lock after this one's expired may have begun under it).
--   'hold'      writes the entry with a score past any it had (`now`, or one more than the last);
--   'withdraw'  removes it only while its score is still `mark`, what this holder's 'hold' answered.
-- KEYS[1] recovery index; ARGV[1] 'hold' | 'withdraw', ARGV[2] entry, ARGV[3] now | mark
-- Replies: 'hold': the score written; 'withdraw': 1 if removed, else 0
local old = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[2]) or '-1')
local given = tonumber(ARGV[3])
if ARGV[1] == 'withdraw' then
  if old ~= given then return 0 end
  return redis.call('ZREM', KEYS[1], ARGV[2])
end
local score = given
if old >= score then score = old + 1 end
redis.call('ZADD', KEYS[1], score, ARGV[2])
return fmt(score)
