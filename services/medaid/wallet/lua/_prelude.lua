-- Shared helpers, prepended to every wallet script. Integers formatted with %d (Lua numbers are doubles).
local function fmt(n) return string.format('%d', n) end

-- Append a wallet entry; returns nothing. KEYS passed by the caller.
local function entry(wallet_key, entries_key, kind, amount, bal, ref, now)
  local seq = redis.call('HINCRBY', wallet_key, 'eseq', 1)
  redis.call('RPUSH', entries_key, '{"seq":' .. fmt(seq) .. ',"kind":"' .. kind .. '","amount":' .. fmt(amount)
    .. ',"bal":' .. fmt(bal) .. ',"ref":"' .. ref .. '","at":' .. now .. '}')
end

-- Take `amount` from a wallet's quota lots, oldest first (SPEC §5: spending consumes lots oldest
-- first; an onward transfer takes them the same way). Returns the parts taken, each
-- {lot id, lot, amount taken} with the lot as it is after. The caller has checked the balance; lots
-- that do not cover it break the wallet's invariant and fail the whole script.
local function take_oldest_first(lots_key, order_key, amount)
  local left = amount
  local parts = {}
  for _, lid in ipairs(redis.call('LRANGE', order_key, 0, -1)) do
    if left == 0 then break end
    local lot = cjson.decode(redis.call('HGET', lots_key, lid))
    if lot.rem > 0 then
      local take = math.min(lot.rem, left)
      lot.rem = lot.rem - take
      left = left - take
      redis.call('HSET', lots_key, lid, cjson.encode(lot))
      parts[#parts + 1] = {lid, lot, take}
    end
  end
  if left ~= 0 then error('lots do not cover the balance: wallet invariant broken') end
  return parts
end

-- Quota going home (SPEC §5: the unspent lots of an ended relationship return to the employee who
-- funded them): one leg per funding employee and sending province, in the order first met. Used
-- as h = home_legs(); add_home(h, lot, fen) …; then, if h.total > 0, home_record(h) is the
-- RETURNING record that drives the legs' credits (ret_done.lua ends it).
local function home_legs() return {legs = {}, order = {}, total = 0} end

local function add_home(h, lot, amount)
  local key = lot.sender .. '|' .. lot.sprov
  if not h.legs[key] then
    h.legs[key] = {sender = lot.sender, sprov = lot.sprov, amount = 0, tid = lot.tid}
    h.order[#h.order + 1] = key
  end
  h.legs[key].amount = h.legs[key].amount + amount
  h.total = h.total + amount
end

local function home_record(h)
  local list = {}
  for _, key in ipairs(h.order) do list[#list + 1] = h.legs[key] end
  return cjson.encode({state = 'RETURNING', amount = h.total, legs = list, sender = list[1].sender,
    sprov = list[1].sprov, tid = list[1].tid})
end
