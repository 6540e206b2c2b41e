-- A wallet relationship ended: take the matching unspent lots out of this wallet, once per release id,
-- and open a return record with one leg per funding employee (origin sender and province): the
-- credit of each leg back to that employee's account is driven until the record is DONE. Matched lots
-- are marked ended, so quota that comes back to them later (an onward transfer returned) goes home too.
-- KEYS[1] wallet, KEYS[2] lots hash, KEYS[3] lot order, KEYS[4] entries, KEYS[5] returns hash
-- ARGV[1] release id, ARGV[2] who, ARGV[3] now, ARGV[4] mode:
--   SENDER  lots funded or passed on by `who` (every relationship where `who` sent)
--   PAIR    lots of the relationship `who` → this wallet (passed on by `who`, or sent directly by `who`)
--   ALL     every lot (this wallet's owner is the side whose relationships end)
local done = redis.call('HGET', KEYS[5], ARGV[1])
if done then return {'DUP', done} end
local who, mode = ARGV[2], ARGV[4]
local total = 0
local legs, order = {}, {}
for _, lid in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do
  local lot = cjson.decode(redis.call('HGET', KEYS[2], lid))
  local via = lot.via or ''
  local match = mode == 'ALL' or (mode == 'SENDER' and (lot.sender == who or via == who))
    or (mode == 'PAIR' and (via == who or (via == '' and lot.sender == who)))
  if match and lot.ended ~= 1 then
    if lot.rem > 0 then
      local key = lot.sender .. '|' .. lot.sprov
      if not legs[key] then
        legs[key] = {sender = lot.sender, sprov = lot.sprov, amount = 0, tid = lot.tid}
        order[#order + 1] = key
      end
      legs[key].amount = legs[key].amount + lot.rem
      total = total + lot.rem
    end
    lot.rem = 0
    lot.ended = 1
    redis.call('HSET', KEYS[2], lid, cjson.encode(lot))
  end
end
local rec
if total > 0 then
  local after = redis.call('HINCRBY', KEYS[1], 'bal', -total)
  entry(KEYS[1], KEYS[4], 'LOT_RELEASE', -total, after, ARGV[1], ARGV[3])
  local list = {}
  for _, key in ipairs(order) do list[#list + 1] = legs[key] end
  rec = cjson.encode({state = 'RETURNING', amount = total, legs = list, sender = list[1].sender,
    sprov = list[1].sprov, tid = list[1].tid})
else
  rec = cjson.encode({state = 'DONE', amount = 0, sender = who, sprov = ''})
end
redis.call('HSET', KEYS[5], ARGV[1], rec)
return {'OK', rec}
