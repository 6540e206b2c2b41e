-- Onward transfer: take quota out of the sending wallet, oldest lot first, once per transfer id (the
-- wallet's counterpart of the registry's xfer_debit). Each part keeps its lot's origin, when that
-- origin funded it (`funded`) and when this wallet got it (`held`: its lot's `began`); 0 unknown (a
-- lot written before lots kept these), and the wallets that passed that quota on before this one
-- (`chain`: the lot's own chain, then the lot's `via` with its `vprov` and `vbegan`; absent: none),
-- so that every one of them is a sender of the lot it makes. See lots_release.lua.
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
local parts = {}
for _, taken in ipairs(take_oldest_first(KEYS[2], KEYS[3], amount)) do
  local lid, lot, take = taken[1], taken[2], taken[3]
  local part = {lot = lid, sender = lot.sender, sprov = lot.sprov, amount = take,
    funded = lot.funded or lot.began or 0, held = lot.began or 0}
  if (lot.via or '') ~= '' then
    local chain = {}
    for _, c in ipairs(lot.chain or {}) do chain[#chain + 1] = c end
    chain[#chain + 1] = {via = lot.via, vprov = lot.vprov, vbegan = lot.vbegan or 0}
    part.chain = chain
  end
  parts[#parts + 1] = part
end
local after = redis.call('HINCRBY', KEYS[1], 'bal', -amount)
entry(KEYS[1], KEYS[4], 'XFER_OUT', -amount, after, ARGV[1], ARGV[3])
redis.call('HSET', KEYS[5], ARGV[1], cjson.encode({state = 'DEBITED', parts = parts, amount = amount}))
return {'OK', cjson.encode(parts)}
