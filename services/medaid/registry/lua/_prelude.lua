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
