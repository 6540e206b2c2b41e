-- Onward transfer: take quota out of the sending wallet, oldest lot first, once per transfer id (the
-- wallet's counterpart of the registry's xfer_debit). Each part keeps its lot's origin.
-- KEYS[1] wallet, KEYS[2] lots hash, KEYS[3] lot order, KEYS[4] entries, KEYS[5] onward debits hash
-- ARGV[1] tid, ARGV[2] amount, ARGV[3] now
-- Returns {'OK'|'DUP', parts json} | {'ERR', 'TRANSFER_CANCELLED'|'INSUFFICIENT_QUOTA'|'NO_WALLET'}
local done = redis.call('HGET', KEYS[5], ARGV[1])
if done then
  local rec = cjson.decode(done)
  if rec.state == 'CANCELLED' then return {'ERR', 'TRANSFER_CANCELLED'} end
  return {'DUP', cjson.encode(rec.parts)}
end
local bal = tonumber(redis.call('HGET', KEYS[1], 'bal') or '-1')
if bal < 0 then return {'ERR', 'NO_WALLET'} end
local amount = tonumber(ARGV[2])
if bal < amount then return {'ERR', 'INSUFFICIENT_QUOTA'} end
local left = amount
local parts = {}
for _, lid in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do
  if left == 0 then break end
  local lot = cjson.decode(redis.call('HGET', KEYS[2], lid))
  if lot.rem > 0 then
    local take = math.min(lot.rem, left)
    lot.rem = lot.rem - take
    left = left - take
    redis.call('HSET', KEYS[2], lid, cjson.encode(lot))
    parts[#parts + 1] = {lot = lid, sender = lot.sender, sprov = lot.sprov, amount = take}
  end
end
if left ~= 0 then return redis.error_reply('lots do not cover the balance: wallet invariant broken') end
local after = redis.call('HINCRBY', KEYS[1], 'bal', -amount)
entry(KEYS[1], KEYS[4], 'XFER_OUT', -amount, after, ARGV[1], ARGV[3])
redis.call('HSET', KEYS[5], ARGV[1], cjson.encode({state = 'DEBITED', parts = parts, amount = amount}))
return {'OK', cjson.encode(parts)}
