-- Undo a spend exactly: every part back to the lot it came from, once; clearing counts it out.
-- A part whose lot's relationship ended since the spend goes home instead (a return record, leg per
-- funding employee, driven like a lot release).
-- KEYS[1] wallet, KEYS[2] lots hash, KEYS[3] entries, KEYS[4] spends hash, KEYS[5] clearing hash of the
-- refund's month (a month already reported never changes: a refund is counted out when it happens),
-- KEYS[6] returns hash. ARGV[1] spend ref, ARGV[2] now, ARGV[3] month expected, ARGV[4] refund
-- request id, ARGV[5] return id (for parts that go home), ARGV[6] '1' when that return is in the returns index
-- (else a refund with a part to send home answers {'HOME'} and writes nothing)
-- Returns {'OK', balance after, amount, home} | {'DUP', balance, amount, '0'} | {'ERR', reason, 0, '0'} |
-- {'HOME', '', 0, '0'}; home is '1' when this refund sent a share home (its return record ARGV[5] is
-- there to drive).
-- The refund remembers its request id and the balance it left: a resend of the same refund (its
-- reply lost, or its request stopped before driving the return) gets that answer again; only
-- another request finds the spend already refunded.
local raw = redis.call('HGET', KEYS[4], ARGV[1])
if not raw then return {'ERR', 'SPEND_NOT_FOUND', 0, '0'} end
local rec = cjson.decode(raw)
if rec.month ~= ARGV[3] then return {'ERR', 'MONTH_MISMATCH', 0, '0'} end
if rec.refunded == 1 then
  if rec.refund_rid == ARGV[4] then
    return {'OK', fmt(rec.refund_bal), fmt(rec.amount), fmt(redis.call('HEXISTS', KEYS[6], ARGV[5]))}
  end
  return {'DUP', redis.call('HGET', KEYS[1], 'bal'), fmt(rec.amount), '0'}
end
if ARGV[6] ~= '1' then
  -- The caller registered no return for this refund: if a part must go home, ask it to (writing nothing).
  for _, p in ipairs(rec.parts) do
    if cjson.decode(redis.call('HGET', KEYS[2], p[1])).ended == 1 then return {'HOME', '', 0, '0'} end
  end
end
local lines = {}
local h = home_legs()
for _, p in ipairs(rec.parts) do
  local lot = cjson.decode(redis.call('HGET', KEYS[2], p[1]))
  if lot.ended == 1 then
    add_home(h, lot, p[3])  -- the lot's relationship ended since the spend: the fen go home
  else
    lot.rem = lot.rem + p[3]
    redis.call('HSET', KEYS[2], p[1], cjson.encode(lot))
  end
  redis.call('HINCRBY', KEYS[5], p[2] .. '>' .. rec.sprov, -p[3])
  lines[p[2] .. '>' .. rec.sprov] = true
end
for line, _ in pairs(lines) do redis.call('HINCRBY', KEYS[5], line .. '#n', -1) end
local after = redis.call('HINCRBY', KEYS[1], 'bal', rec.amount)
entry(KEYS[1], KEYS[3], 'SPEND_REFUND', rec.amount, after, ARGV[1], ARGV[2])
if h.total > 0 then
  after = redis.call('HINCRBY', KEYS[1], 'bal', -h.total)
  entry(KEYS[1], KEYS[3], 'LOT_RELEASE', -h.total, after, ARGV[5], ARGV[2])
  redis.call('HSET', KEYS[6], ARGV[5], home_record(h))
end
rec.refunded = 1
rec.refund_rid = ARGV[4]
rec.refund_bal = after
redis.call('HSET', KEYS[4], ARGV[1], cjson.encode(rec))
return {'OK', fmt(after), fmt(rec.amount), h.total > 0 and '1' or '0'}
