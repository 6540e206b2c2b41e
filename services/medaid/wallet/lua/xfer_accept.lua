-- Accept: PENDING_ACCEPT -> COMPLETED and the quota lands as a lot, in one script (recipient's slot).
-- A lot keeps the province the recipient received it as an insured person of (hprov), so that a
-- relationship's end reported by that province finds it, and when its relationships began (`began`:
-- its transfer's creation; an onward lot also `funded`, its part's original funding, and `vbegan`,
-- when the wallet that passed it on got it), so that an end that arrives late leaves a relationship
-- begun after the event (lots_release.lua).
-- KEYS[1] transfer record, KEYS[2] wallet, KEYS[3] lots hash, KEYS[4] lot order, KEYS[5] entries
-- ARGV[1] tid, ARGV[2] now, ARGV[3] recipient id
-- Returns {'OK'|'DUP', balance, record, wallet} (record and wallet as HGETALL gives them, after the
-- accept: the caller answers from them without a second read) | {'NO', reason}
local t = redis.call('HGET', KEYS[1], 'state')
if t == 'COMPLETED' then
  return {'DUP', redis.call('HGET', KEYS[2], 'bal'), redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2])}
end
if not t then return {'NO', 'NOT_FOUND'} end
if redis.call('HGET', KEYS[1], 'recipient') ~= ARGV[3] then return {'NO', 'NOT_RECIPIENT'} end
if t ~= 'PENDING_ACCEPT' then return {'NO', t} end
if tonumber(ARGV[2]) >= tonumber(redis.call('HGET', KEYS[1], 'expires_at')) then return {'NO', 'EXPIRED'} end
local amount = tonumber(redis.call('HGET', KEYS[1], 'amount'))
redis.call('HSET', KEYS[1], 'state', 'COMPLETED', 'finished_at', ARGV[2])
local hprov = redis.call('HGET', KEYS[1], 'recipient_province')
local began = tonumber(redis.call('HGET', KEYS[1], 'created_at'))
local parts = redis.call('HGET', KEYS[1], 'parts')
if parts then
  -- An onward transfer: one lot per part, each keeping the employee (and province) that funded it,
  -- and naming the wallet holder who passed it on (and the province they passed it on from), and the
-- ones who passed that quota on before them (`chain`, as the part carries it).
  local via = redis.call('HGET', KEYS[1], 'sender')
  for i, p in ipairs(cjson.decode(parts)) do
    local lid = ARGV[1] .. '#' .. i
    local lot = {tid = ARGV[1], sender = p.sender, sprov = p.sprov, via = via,
      vprov = redis.call('HGET', KEYS[1], 'sender_province'), hprov = hprov,
      amount = p.amount, rem = p.amount, at = tonumber(ARGV[2]), began = began, funded = p.funded or 0,
      vbegan = p.held or 0}
    if p.chain and #p.chain > 0 then lot.chain = p.chain end
    redis.call('HSET', KEYS[3], lid, cjson.encode(lot))
    redis.call('RPUSH', KEYS[4], lid)
  end
else
  redis.call('HSET', KEYS[3], ARGV[1], cjson.encode({
    tid = ARGV[1], sender = redis.call('HGET', KEYS[1], 'sender'),
    sprov = redis.call('HGET', KEYS[1], 'sender_province'), hprov = hprov, amount = amount, rem = amount,
    at = tonumber(ARGV[2]), began = began}))
  redis.call('RPUSH', KEYS[4], ARGV[1])
end
local bal = redis.call('HINCRBY', KEYS[2], 'bal', amount)
entry(KEYS[2], KEYS[5], 'LOT_IN', amount, bal, ARGV[1], ARGV[2])
return {'OK', fmt(bal), redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2])}
