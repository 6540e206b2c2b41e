-- Shared helpers, prepended to every registry script at load time.
-- Integers are formatted with %d: Lua numbers are doubles and `..` would print 1e+14.
local function fmt(n) return string.format('%d', n) end

local function fence_ok(fence_key, token)
  return tonumber(redis.call('GET', fence_key) or '0') == tonumber(token)
end

-- Move `delta` fen (signed) on an account hash and append a ledger entry. Returns balance after.
local function move(acct_key, ledger_key, delta, kind, ref, now)
  local bal = redis.call('HINCRBY', acct_key, 'bal', delta)
  if delta > 0 then
    redis.call('HINCRBY', acct_key, 'credited', delta)
  else
    redis.call('HINCRBY', acct_key, 'debited', -delta)
  end
  local seq = redis.call('HINCRBY', acct_key, 'lseq', 1)
  redis.call('RPUSH', ledger_key, '{"seq":' .. fmt(seq) .. ',"kind":"' .. kind .. '","amount":' .. fmt(delta)
    .. ',"bal":' .. fmt(bal) .. ',"ref":"' .. ref .. '","at":' .. now .. '}')
  return bal
end

-- Append an event to a family account's history (family_*.lua).
local function hist(key, kind, id, amount, ref, now, detail)
  redis.call('RPUSH', key, cjson.encode({kind = kind, id = id, amount = fmt(amount), ref = ref, at = now,
    detail = detail or ''}))
end

-- The family-account step of a settlement (SPEC §3b, waterfall step 3 in a pooled province), once per
-- settlement id: take up to `amount` from the lots of the family account whose keys are `fk`
-- (family, members, lots, shares, applied, history), oldest contribution first (the account may pay
-- part). What it took, lot by lot, is kept for the reversal.
-- Staged (`expect` nil): the first outcome sticks; a charge that finds the patient no longer a member,
-- or nothing to take, is VOID (its share is cash), so a late retry cannot take it after the settlement
-- finished without it. Atomic (`expect`: the contributors and amounts the plan made, 'c:amount,…'):
-- the take must come out exactly so, else it writes nothing and answers CONFLICT.
-- Returns status ('OK' | 'DUP' | 'VOID' | 'CONFLICT') and the charges 'contributor:amount:share after,…'.
local function family_take(fk, sid, patient, amount, now, category, expect)
  local done = redis.call('HGET', fk[5], sid)
  if done and expect then return 'CONFLICT', '' end
  if done == 'VOID' then return 'VOID', '' end
  if done then return 'DUP', redis.call('HGET', fk[5], 'c:' .. sid) end
  local raw = redis.call('HGET', fk[2], patient)
  local m = raw and cjson.decode(raw) or {state = ''}
  local taken, order, by, lots = {}, {}, {}, {}
  local left = amount
  if redis.call('HGET', fk[1], 'state') == 'ACTIVE' and m.state == 'MEMBER'
      and (m.temporary ~= '1' or category == 'RESIDENT_PREMIUM') then
    local fields = redis.call('HKEYS', fk[3])
    table.sort(fields)  -- lot names are zero-padded sequence numbers: oldest first
    for _, f in ipairs(fields) do
      if left <= 0 then break end
      local c, rem = string.match(redis.call('HGET', fk[3], f), '^([^:]+):(%d+)$')
      rem = tonumber(rem)
      local pay = math.min(rem, left)
      if pay > 0 then
        lots[#lots + 1] = {f, c, rem, pay}
        taken[#taken + 1] = f .. ':' .. c .. ':' .. fmt(pay)
        if not by[c] then by[c] = 0; order[#order + 1] = c end
        by[c] = by[c] + pay
        left = left - pay
      end
    end
  end
  if expect then
    local split = {}
    for _, c in ipairs(order) do split[#split + 1] = c .. ':' .. fmt(by[c]) end
    if table.concat(split, ',') ~= expect then return 'CONFLICT', '' end
  end
  if #taken == 0 then
    redis.call('HSET', fk[5], sid, 'VOID')
    return 'VOID', ''
  end
  for _, lot in ipairs(lots) do
    local f, c, rem, pay = lot[1], lot[2], lot[3], lot[4]
    if rem == pay then redis.call('HDEL', fk[3], f) else redis.call('HSET', fk[3], f, c .. ':' .. fmt(rem - pay)) end
  end
  local charges, spent, total = {}, {}, 0
  for _, c in ipairs(order) do
    local after = redis.call('HINCRBY', fk[4], c, -by[c])
    if after == 0 then redis.call('HDEL', fk[4], c) end
    charges[#charges + 1] = c .. ':' .. fmt(by[c]) .. ':' .. fmt(after)
    spent[#spent + 1] = c .. ':' .. fmt(by[c])
    total = total + by[c]
  end
  redis.call('HINCRBY', fk[1], 'bal', -total)
  local out = table.concat(charges, ',')
  redis.call('HSET', fk[5], sid, table.concat(taken, ','), 'c:' .. sid, out)
  hist(fk[6], 'SPENT', patient, total, sid, now, table.concat(spent, ','))
  return 'OK', out
end
