-- A sender's insurance ended or moved: take their unspent lots out of this wallet, once per release id,
-- and open a return record (the credit back to their account is driven until it is DONE). The record
-- names the oldest transfer among the lots returned (`tid`).
-- KEYS[1] wallet, KEYS[2] lots hash, KEYS[3] lot order, KEYS[4] entries, KEYS[5] returns hash
-- ARGV[1] release id, ARGV[2] sender id, ARGV[3] now
local done = redis.call('HGET', KEYS[5], ARGV[1])
if done then return {'DUP', done} end
local total = 0
local sprov, first = '', ''
for _, tid in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do
  local lot = cjson.decode(redis.call('HGET', KEYS[2], tid))
  if lot.sender == ARGV[2] and lot.rem > 0 then
    total = total + lot.rem
    sprov = lot.sprov
    if first == '' then first = tid end
    lot.rem = 0
    redis.call('HSET', KEYS[2], tid, cjson.encode(lot))
  end
end
local rec
if total > 0 then
  local after = redis.call('HINCRBY', KEYS[1], 'bal', -total)
  entry(KEYS[1], KEYS[4], 'LOT_RELEASE', -total, after, ARGV[1], ARGV[3])
  rec = cjson.encode({sender = ARGV[2], sprov = sprov, amount = total, tid = first, state = 'RETURNING'})
else
  rec = cjson.encode({sender = ARGV[2], sprov = sprov, amount = 0, state = 'DONE'})
end
redis.call('HSET', KEYS[5], ARGV[1], rec)
return {'OK', rec}
