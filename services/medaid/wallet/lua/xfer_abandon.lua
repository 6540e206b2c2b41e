-- The recovery loop found a transfer in the in-flight index with no record after the grace: its
-- creator is dead or paused. Record it FAILED (never debited) unless the record exists by now, so a
-- paused creator that wakes up finds FAILED and never debits a transfer the index no longer tracks.
-- The record goes into the recipient's incoming transfers as xfer_create.lua puts one there (its
-- sender's listing has it from the reservation).
-- KEYS[1] transfer record, KEYS[2] the recipient's incoming transfers (zset by creation time);
-- ARGV[1] now, ARGV[2..] field, value … (with tid and created_at); returns the state found, or ABANDONED
local state = redis.call('HGET', KEYS[1], 'state')
if state then return state end
local tid, created = nil, nil
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  if ARGV[i] == 'tid' then tid = ARGV[i + 1] elseif ARGV[i] == 'created_at' then created = ARGV[i + 1] end
end
redis.call('HSET', KEYS[1], 'state', 'FAILED', 'failure_reason', 'TRANSFER_ABANDONED', 'finished_at', ARGV[1])
redis.call('ZADD', KEYS[2], created, tid)
return 'ABANDONED'
