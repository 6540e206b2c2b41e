-- A reversal of a family charge (SPEC §3b), on the `{fam}` slot, once per settlement id: each fen goes
-- back to the lot it was taken from (so the contributor's sub-ledger and its place in the oldest-first
-- order are as before). A contributor who has left, or an account dissolved since, has no sub-ledger
-- any more: that part is owed to the contributor's personal account (family_payout.lua pays it).
-- KEYS[1] family, KEYS[2] members, KEYS[3] lots, KEYS[4] shares, KEYS[5] applied, KEYS[6] history
-- ARGV[1] settlement id, ARGV[2] now
-- Replies: {'OK'|'DUP', 'contributor:amount:F|A,…'} (F: back in the family account, A: owed to the
-- personal account)
local sid, now = ARGV[1], ARGV[2]
local mark = 'rev|' .. sid
local done = redis.call('HGET', KEYS[5], mark)
if done then return {'DUP', done} end
local lots = redis.call('HGET', KEYS[5], sid)
if not lots or lots == 'VOID' then
  redis.call('HSET', KEYS[5], mark, '')
  return {'OK', ''}
end
local active = redis.call('HGET', KEYS[1], 'state') == 'ACTIVE'
local order, by = {}, {}
for item in string.gmatch(lots, '[^,]+') do
  local f, c, amount = string.match(item, '^([^:]+):([^:]+):(%d+)$')
  amount = tonumber(amount)
  local raw = redis.call('HGET', KEYS[2], c)
  local member = raw and cjson.decode(raw).state == 'MEMBER'
  local where = (active and member) and 'F' or 'A'
  if where == 'F' then
    local cur = redis.call('HGET', KEYS[3], f)
    local rem = cur and tonumber(string.match(cur, ':(%d+)$')) or 0
    redis.call('HSET', KEYS[3], f, c .. ':' .. fmt(rem + amount))
    redis.call('HINCRBY', KEYS[4], c, amount)
    redis.call('HINCRBY', KEYS[1], 'bal', amount)
  end
  local key = c .. ':' .. where
  if not by[key] then by[key] = 0; order[#order + 1] = key end
  by[key] = by[key] + amount
end
local out, back = {}, 0
for _, key in ipairs(order) do
  local c, where = string.match(key, '^([^:]+):(%a)$')
  out[#out + 1] = c .. ':' .. fmt(by[key]) .. ':' .. where
  if where == 'F' then back = back + by[key] end
end
local result = table.concat(out, ',')
redis.call('HSET', KEYS[5], mark, result)
-- amount: what came back into the account; detail: every part and where it went (F here, A the
-- contributor's personal account), which the money verdict reads.
hist(KEYS[6], 'REVERSED', '', back, sid, now, result)
return {'OK', result}
