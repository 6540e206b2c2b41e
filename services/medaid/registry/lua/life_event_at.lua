-- The time of a life-cycle event just written (life_event.lua), taken again once the write landed, fenced
-- by the person's lock: the event's time is then not earlier than the write, so a wallet transfer whose
-- checks read the person before the write began by the event, and the end of the relationships takes it
-- (Context.write_event). The event is found as it was written, the newest such; none: nothing to do.
-- KEYS[1] history, KEYS[2] fence
-- ARGV[1] token, ARGV[2] the event as written (JSON), ARGV[3] the event with its time taken again (JSON)
-- Replies 1 (written, or nothing to do) | 0 (a newer holder took the lock: nothing written)
if not fence_ok(KEYS[2], ARGV[1]) then return 0 end
local i = redis.call('LPOS', KEYS[1], ARGV[2], 'RANK', -1)
if i then redis.call('LSET', KEYS[1], i, ARGV[3]) end
return 1
