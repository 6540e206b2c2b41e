-- A wallet relationship ended: take the matching unspent lots out of this wallet, once per release id,
-- and open a return record with one leg per funding employee (origin sender and province): the
-- credit of each leg back to that employee's account is driven until the record is DONE. Matched lots
-- are marked ended, so quota that comes back to them later (an onward transfer returned) goes home too.
-- KEYS[1] wallet, KEYS[2] lots hash, KEYS[3] lot order, KEYS[4] entries, KEYS[5] returns hash,
-- KEYS[6] onward debits hash
-- ARGV[1] release id, ARGV[2] who, ARGV[3] now, ARGV[4] mode:
--   SENDER  lots funded or passed on by `who` (every relationship where `who` sent): passed on last
--           (`via`) or earlier, the quota passed on again since (`chain`)
--   PAIR    lots of the relationship `who` → this wallet (passed on by `who`, or sent directly by `who`)
--   ALL     every lot (this wallet's owner is the side whose relationships end)
-- ARGV[5] province ('' any): SENDER and ALL end only the relationships `who` has as an insured person of
--   it: lots they funded from it (sprov) or passed on from a wallet of it (vprov), lots this wallet
--   received as its insured (hprov). A lot written before lots kept vprov/hprov matches.
-- ARGV[6] scope ('' none): a JSON list of lot and transfer ids; only a lot named there, or made by a
--   transfer named there, is taken out (PAIR: the relationship as it stood when the ending began).
-- ARGV[7] event time ('' or '0' none): SENDER and ALL end only the relationships begun by then (the
--   person's move, termination or death, as the registry recorded it), so that an end arriving late
--   leaves a relationship begun after the event: as if it had ended at the event. A lot's holder's
--   relationship began when the transfer that made it was created (`began`: one sent before the event
--   but accepted after began before it); the employee's who funded an onward lot, when they funded it
--   (`funded`); the one's who passed it on, when they got that quota (`vbegan`: quota they held at
--   the event, passed on after it, would have gone home at the event). A lot written before lots kept
--   these began at 0 (it ends). An earlier passer in the chain is judged like `via`, by its own
--   `vbegan`.
-- SENDER: the record also keeps (`onward`, transfer id → fen) the quota of the lots ended here that an
-- onward transfer debited and has not refunded yet: one debited after the ending looked for transfers
-- in flight, whose refund (it carries quota of a relationship that ended) sends that quota home after
-- this release; the ending counts it once that transfer has ended (endings.py `_onward_home`).
local done = redis.call('HGET', KEYS[5], ARGV[1])
if done then return {'DUP', done} end
local who, mode, prov = ARGV[2], ARGV[4], ARGV[5] or ''
local event = tonumber(ARGV[7] or '') or 0
local function of(p) return prov == '' or not p or p == prov end
local function by(t) return event == 0 or (t or 0) <= event end
local function passed_earlier(lot)
  for _, c in ipairs(lot.chain or {}) do
    if c.via == who and of(c.vprov) and by(c.vbegan) then return true end
  end
  return false
end
local scope
if ARGV[6] and ARGV[6] ~= '' then
  scope = {}
  for _, id in ipairs(cjson.decode(ARGV[6])) do scope[id] = true end
end
local h = home_legs()
local now_ended = {}
for _, lid in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do
  local lot = cjson.decode(redis.call('HGET', KEYS[2], lid))
  local via = lot.via or ''
  local match = (mode == 'ALL' and of(lot.hprov) and by(lot.began))
    or (mode == 'SENDER' and ((lot.sender == who and of(lot.sprov) and by(lot.funded or lot.began))
      or (via == who and of(lot.vprov) and by(lot.vbegan)) or passed_earlier(lot)))
    or (mode == 'PAIR' and (via == who or (via == '' and lot.sender == who)))
  if match and scope and not scope[lid] and not scope[lot.tid] then match = false end
  if match and lot.ended ~= 1 then
    if lot.rem > 0 then add_home(h, lot, lot.rem) end
    lot.rem = 0
    lot.ended = 1
    now_ended[lid] = true
    redis.call('HSET', KEYS[2], lid, cjson.encode(lot))
  end
end
local onward, any_onward = {}, false
if mode == 'SENDER' and next(now_ended) then
  local debits = redis.call('HGETALL', KEYS[6])
  for i = 1, #debits, 2 do
    local d = cjson.decode(debits[i + 1])
    if d.state == 'DEBITED' then
      local fen = 0
      for _, p in ipairs(d.parts or {}) do
        if now_ended[p.lot] then fen = fen + p.amount end
      end
      if fen > 0 then onward[debits[i]] = fen; any_onward = true end
    end
  end
end
local rec
if h.total > 0 then
  local after = redis.call('HINCRBY', KEYS[1], 'bal', -h.total)
  entry(KEYS[1], KEYS[4], 'LOT_RELEASE', -h.total, after, ARGV[1], ARGV[3])
  rec = cjson.decode(home_record(h))
else
  rec = {state = 'DONE', amount = 0, sender = who, sprov = ''}
end
if any_onward then rec.onward = onward end
rec = cjson.encode(rec)
redis.call('HSET', KEYS[5], ARGV[1], rec)
return {'OK', rec}
