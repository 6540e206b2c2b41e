-- An onward transfer failed or was not accepted: its quota goes back to the lots it came from, once.
-- A part whose lot's relationship ended meanwhile goes home instead (a return record, leg per origin,
-- driven like a lot release). Unknown transfer id: cancelled for good, so a late debit is refused.
-- KEYS[1] wallet, KEYS[2] lots hash, KEYS[3] entries, KEYS[4] onward debits hash, KEYS[5] returns hash
-- ARGV[1] tid, ARGV[2] now, ARGV[3] return id (for parts that go home)
-- Returns {'OK'|'DUP'|'CANCELLED', fen back in the wallet, fen sent home}
local raw = redis.call('HGET', KEYS[4], ARGV[1])
if not raw then
  redis.call('HSET', KEYS[4], ARGV[1], cjson.encode({state = 'CANCELLED'}))
  return {'CANCELLED', 0, 0}
end
local rec = cjson.decode(raw)
if rec.state ~= 'DEBITED' then return {'DUP', rec.back or 0, rec.home or 0} end
local back = 0
local h = home_legs()
for _, p in ipairs(rec.parts) do
  local lot = cjson.decode(redis.call('HGET', KEYS[2], p.lot))
  if lot.ended == 1 then
    add_home(h, lot, p.amount)
  else
    lot.rem = lot.rem + p.amount
    redis.call('HSET', KEYS[2], p.lot, cjson.encode(lot))
    back = back + p.amount
  end
end
if back > 0 then
  local after = redis.call('HINCRBY', KEYS[1], 'bal', back)
  entry(KEYS[1], KEYS[3], 'XFER_BACK', back, after, ARGV[1], ARGV[2])
end
local home = h.total
if home > 0 then
  -- In and out again at once, so the wallet's entries replay to its balance and lots.
  local bal = redis.call('HGET', KEYS[1], 'bal')
  entry(KEYS[1], KEYS[3], 'XFER_BACK', home, tonumber(bal) + home, ARGV[1], ARGV[2])
  entry(KEYS[1], KEYS[3], 'LOT_RELEASE', -home, tonumber(bal), ARGV[3], ARGV[2])
  redis.call('HSET', KEYS[5], ARGV[3], home_record(h))
end
rec.state = 'REFUNDED'
rec.back = back
rec.home = home
redis.call('HSET', KEYS[4], ARGV[1], cjson.encode(rec))
return {'OK', back, home}
