-- The family-account step of a settlement (SPEC §3b, waterfall step 3 in a pooled province), on the
-- `{fam}` slot, once per settlement id: take up to the planned amount from the lots, oldest
-- contribution first (the account may pay part). What it took, lot by lot, is kept for the reversal.
-- The first outcome sticks: a charge that finds the patient no longer a member, or nothing to take,
-- is VOID (its share is cash), so a late retry cannot take it after the settlement finished without it.
-- KEYS[1] family, KEYS[2] members, KEYS[3] lots, KEYS[4] shares, KEYS[5] applied, KEYS[6] history
-- ARGV[1] settlement id, ARGV[2] patient, ARGV[3] amount, ARGV[4] now, ARGV[5] category
-- Replies: {'OK', charges} | {'DUP', charges} | {'VOID', ''}; charges 'contributor:amount:share after,…'
local sid, patient, now = ARGV[1], ARGV[2], ARGV[4]
local done = redis.call('HGET', KEYS[5], sid)
if done == 'VOID' then return {'VOID', ''} end
if done then return {'DUP', redis.call('HGET', KEYS[5], 'c:' .. sid)} end
local raw = redis.call('HGET', KEYS[2], patient)
local m = raw and cjson.decode(raw) or {state = ''}
if redis.call('HGET', KEYS[1], 'state') ~= 'ACTIVE' or m.state ~= 'MEMBER'
    or (m.temporary == '1' and ARGV[5] ~= 'RESIDENT_PREMIUM') then
  redis.call('HSET', KEYS[5], sid, 'VOID')
  return {'VOID', ''}
end
local fields = redis.call('HKEYS', KEYS[3])
table.sort(fields)
local left, taken, order, by = tonumber(ARGV[3]), {}, {}, {}
for _, f in ipairs(fields) do
  if left <= 0 then break end
  local c, rem = string.match(redis.call('HGET', KEYS[3], f), '^([^:]+):(%d+)$')
  rem = tonumber(rem)
  local pay = math.min(rem, left)
  if pay > 0 then
    if rem == pay then redis.call('HDEL', KEYS[3], f) else redis.call('HSET', KEYS[3], f, c .. ':' .. fmt(rem - pay)) end
    taken[#taken + 1] = f .. ':' .. c .. ':' .. fmt(pay)
    if not by[c] then by[c] = 0; order[#order + 1] = c end
    by[c] = by[c] + pay
    left = left - pay
  end
end
if #taken == 0 then
  redis.call('HSET', KEYS[5], sid, 'VOID')
  return {'VOID', ''}
end
local charges, spent, total = {}, {}, 0
for _, c in ipairs(order) do
  local after = redis.call('HINCRBY', KEYS[4], c, -by[c])
  if after == 0 then redis.call('HDEL', KEYS[4], c) end
  charges[#charges + 1] = c .. ':' .. fmt(by[c]) .. ':' .. fmt(after)
  spent[#spent + 1] = c .. ':' .. fmt(by[c])
  total = total + by[c]
end
redis.call('HINCRBY', KEYS[1], 'bal', -total)
local out = table.concat(charges, ',')
redis.call('HSET', KEYS[5], sid, table.concat(taken, ','), 'c:' .. sid, out)
hist(KEYS[6], 'SPENT', patient, total, sid, now, table.concat(spent, ','))
return {'OK', out}
