-- The recovery loop found a transfer in the in-flight index with no record after the grace: its
-- creator is dead or paused. Record it FAILED (never debited) unless the record exists by now, so a
-- paused creator that wakes up finds FAILED and never debits a transfer the index no longer tracks.
-- KEYS[1] transfer record; ARGV[1] now, ARGV[2..] field, value … ; returns the state found, or ABANDONED
local state = redis.call('HGET', KEYS[1], 'state')
if state then return state end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'state', 'FAILED', 'failure_reason', 'TRANSFER_ABANDONED', 'finished_at', ARGV[1])
return 'ABANDONED'
