-- Spend quota oldest lot first, once per ref; count it for clearing.
-- KEYS[1] wallet, KEYS[2] lots hash, KEYS[3] lot order, KEYS[4] entries, KEYS[5] spends hash,
-- KEYS[6] clearing hash of the month, KEYS[7] barred spend ids ('<id>': every province's, '<province>|<id>':
-- that province's; spend_bar.lua)
-- ARGV[1] ref, ARGV[2] amount, ARGV[3] now, ARGV[4] month, ARGV[5] spending admdvs ('' = the use-place),
-- ARGV[6] kind, ARGV[7] the refunded spend this one takes again ('' none: oldest lot first),
-- ARGV[8] '1': check only (every check, then {'CHECKED', balance it would leave}, nothing written),
-- ARGV[9] '1': up to ARGV[2] (a settlement's share, SPEC §4 step 2: the wallet pays min(balance,
-- amount)): a wallet holding less spends what it holds; one holding nothing is SHORT. Not with ARGV[7].
-- Returns {'DUP'|'OK', record} | {'NO_WALLET', ''} | {'OUTSIDE', use-place} | {'SHORT', balance}
-- | {'BARRED', ''} | {'UNRESTORABLE', why} | {'CHECKED', balance after}.
-- Taking a refunded spend again (undoing a reversal) takes exactly its parts: the same lots, the same
-- amounts, or nothing; never another sender's quota, nor a lot whose relationship ended since; and
-- once (the refunded spend keeps `restored_by`; another spend may take it again only once that one
-- is refunded in its turn).
-- A ref already spent answers first, before any check: a resend of a spend whose reply was lost
-- gets its spend back even if the wallet changed since (e.g. its use-place).
local done = redis.call('HGET', KEYS[5], ARGV[1])
if done then return {'DUP', done} end
if redis.call('SISMEMBER', KEYS[7], ARGV[1]) == 1 then return {'BARRED', ''} end
local place = redis.call('HGET', KEYS[1], 'use_place')
if not place then return {'NO_WALLET', ''} end
local spending = ARGV[5]
if spending == '' then spending = place elseif spending ~= place then return {'OUTSIDE', place} end
local sprov = string.sub(spending, 1, 2)
-- Barred by the registry of the province it is spent in (a bar counts for that province's spends only)
if redis.call('SISMEMBER', KEYS[7], sprov .. '|' .. ARGV[1]) == 1 then return {'BARRED', ''} end
local amount = tonumber(ARGV[2])
local bal = tonumber(redis.call('HGET', KEYS[1], 'bal'))
if bal < amount then
  if ARGV[9] ~= '1' or ARGV[7] ~= '' or bal == 0 then return {'SHORT', fmt(bal)} end
  amount = bal
end
local taking
if ARGV[7] ~= '' then
  local raw = redis.call('HGET', KEYS[5], ARGV[7])
  if not raw then return {'UNRESTORABLE', 'no spend ' .. ARGV[7] .. ' of this wallet'} end
  local first = cjson.decode(raw)
  if first.refunded ~= 1 then return {'UNRESTORABLE', 'spend ' .. ARGV[7] .. ' was not refunded'} end
  if first.amount ~= amount then return {'UNRESTORABLE', 'spend ' .. ARGV[7] .. ' was of ' .. fmt(first.amount)} end
  -- Taken again once: while the spend that took it again stands (not refunded since), the refund it
  -- undid is undone already, and taking it once more would charge the wallet twice for one refund.
  if first.restored_by then
    local by = redis.call('HGET', KEYS[5], first.restored_by)
    if by and cjson.decode(by).refunded ~= 1 then
      return {'UNRESTORABLE', 'spend ' .. ARGV[7] .. ' was taken again already by ' .. first.restored_by}
    end
  end
  taking = {}
  for _, p in ipairs(first.parts) do
    local lot = cjson.decode(redis.call('HGET', KEYS[2], p[1]))
    if lot.ended == 1 then return {'UNRESTORABLE', 'the relationship of lot ' .. p[1] .. ' ended'} end
    if lot.rem < p[3] then return {'UNRESTORABLE', 'lot ' .. p[1] .. ' holds less than ' .. fmt(p[3])} end
    taking[#taking + 1] = {p[1], lot, p[3]}
  end
  if ARGV[8] == '1' then return {'CHECKED', fmt(bal - amount)} end
  for _, t in ipairs(taking) do
    t[2].rem = t[2].rem - t[3]
    redis.call('HSET', KEYS[2], t[1], cjson.encode(t[2]))
  end
  first.restored_by = ARGV[1]
  redis.call('HSET', KEYS[5], ARGV[7], cjson.encode(first))
else
  if ARGV[8] == '1' then return {'CHECKED', fmt(bal - amount)} end
  taking = take_oldest_first(KEYS[2], KEYS[3], amount)
end
local parts = {}
for _, taken in ipairs(taking) do
  local tid, lot, take = taken[1], taken[2], taken[3]
  parts[#parts + 1] = {tid, lot.sprov, take}
  redis.call('HINCRBY', KEYS[6], lot.sprov .. '>' .. sprov, take)
end
local lines = {}
for _, p in ipairs(parts) do lines[p[2] .. '>' .. sprov] = true end
for line, _ in pairs(lines) do redis.call('HINCRBY', KEYS[6], line .. '#n', 1) end
local after = redis.call('HINCRBY', KEYS[1], 'bal', -amount)
entry(KEYS[1], KEYS[4], ARGV[6], -amount, after, ARGV[1], ARGV[3])
local rec = cjson.encode({amount = amount, parts = parts, month = ARGV[4], sprov = sprov, kind = ARGV[6],
  refunded = 0, at = tonumber(ARGV[3]), bal = after})
redis.call('HSET', KEYS[5], ARGV[1], rec)
return {'OK', rec}
