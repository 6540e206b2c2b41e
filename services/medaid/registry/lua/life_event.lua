-- A life-cycle event (status change, 统筹区 move, death) written on the person's slot, fenced by
-- their lock: the person's fields and the history event naming the request, which tells the
-- recovery loop the event was written. Python decided the event; this script decides nothing.
-- KEYS[1] person, KEYS[2] history, KEYS[3] fence
-- ARGV[1] token, ARGV[2] the history event (JSON; '' none: the fields alone, e.g. the newest date of
-- a dated event that changes nothing), ARGV[3..] person field, value …
-- Replies 1 (written) | 0 (a newer holder took the lock: nothing written)
if not fence_ok(KEYS[3], ARGV[1]) then return 0 end
person_set(KEYS[1], unpack(ARGV, 3))
if ARGV[2] ~= '' then redis.call('RPUSH', KEYS[2], ARGV[2]) end
return 1
