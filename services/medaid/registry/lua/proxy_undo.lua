-- A 亲情账户 addition's second read of its sides, after its write, recorded (Proxies.proxy_ended), by the
-- adding registry, its recovery loop or a resend at any registry that finds the addition remembered.
-- 'keep' (both sides read ACTIVE after the write): the addition stands for good; a death recorded after that
-- read finds the proxy in its own search and ends it (SPEC §5b), so no later read undoes it.
-- 'undo' (a side read DECEASED): request ARGV[3] added the proxy holder → relative, and a side's death,
-- recorded between its checks and its write, may have missed it. Only an addition whose second read is
-- still to come may be undone: one marked pending by its write (proxy_bind.lua), or one the caller holds
-- the entry of (ARGV[5] '1': its writer, or the recovery loop finishing it). Its record goes, so that the
-- request id answers as a bind after the death does, and the proxy where it still stands as this request
-- wrote it (one the death's own ending removed, or a later addition, is not this request's). An addition
-- read both ACTIVE first (kept), or one neither marked nor held (answered before additions were marked:
-- its sides were read ACTIVE then), stands: a death since ended the proxy by its own search.
-- KEYS[1] holder's relatives hash, KEYS[2] relative's holders hash, KEYS[3] additions hash,
-- KEYS[4] additions kept (request id -> '1'), KEYS[5] additions pending (request id -> '1')
-- ARGV[1] holder, ARGV[2] relative, ARGV[3] request id, ARGV[4] 'keep' or 'undo', ARGV[5] '1': the caller
-- holds the addition's entry (its second read is still to come)
-- Returns, for 'keep': 1 (kept) or 0 (this request id's addition is undone, or was never made);
-- for 'undo': 1 (undone now), 0 (this request id added nothing to undo here) or 2 (it stands).
local earlier = redis.call('HGET', KEYS[3], ARGV[3])
if not earlier then return 0 end
local was = cjson.decode(earlier)
if was['holder'] ~= ARGV[1] or was['relative'] ~= ARGV[2] then return 0 end
if ARGV[4] == 'keep' then
  redis.call('HSET', KEYS[4], ARGV[3], '1')
  redis.call('HDEL', KEYS[5], ARGV[3])
  return 1
end
if redis.call('HEXISTS', KEYS[4], ARGV[3]) == 1 then return 2 end
if redis.call('HEXISTS', KEYS[5], ARGV[3]) == 0 and ARGV[5] ~= '1' then return 2 end
redis.call('HDEL', KEYS[3], ARGV[3])
redis.call('HDEL', KEYS[5], ARGV[3])
local standing = redis.call('HGET', KEYS[1], ARGV[2])
if standing and cjson.decode(standing)['rid'] == ARGV[3] then
  redis.call('HDEL', KEYS[1], ARGV[2])
  redis.call('HDEL', KEYS[2], ARGV[1])
end
return 1
