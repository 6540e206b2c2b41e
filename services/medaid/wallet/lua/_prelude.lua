-- Shared helpers, prepended to every wallet script. Integers formatted with %d (Lua numbers are doubles).
local function fmt(n) return string.format('%d', n) end

-- Append a wallet entry; returns nothing. KEYS passed by the caller.
local function entry(wallet_key, entries_key, kind, amount, bal, ref, now)
  local seq = redis.call('HINCRBY', wallet_key, 'eseq', 1)
  redis.call('RPUSH', entries_key, '{"seq":' .. fmt(seq) .. ',"kind":"' .. kind .. '","amount":' .. fmt(amount)
    .. ',"bal":' .. fmt(bal) .. ',"ref":"' .. ref .. '","at":' .. now .. '}')
end
