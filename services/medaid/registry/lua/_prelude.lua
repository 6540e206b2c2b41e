-- Shared helpers, prepended to every registry script at load time.
-- Integers are formatted with %d: Lua numbers are doubles and `..` would print 1e+14.
local function fmt(n) return string.format('%d', n) end

local function fence_ok(fence_key, token)
  return tonumber(redis.call('GET', fence_key) or '0') == tonumber(token)
end

-- Whether the recovery loop took over the entry of this bind, invitation or creation at the writer's
-- mark (Context.write_announced, Context.fence_place): the script's last key is the entry's fence, its
-- last argument the writer's mark. A fenced writer writes nothing.
local function place_fenced()
  return tonumber(redis.call('GET', KEYS[#KEYS]) or '-1') == tonumber(ARGV[#ARGV])
end

local function entry(acct_key, ledger_key, delta, kind, ref, now)
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

-- Write a person's fields (KEYS of life_event.lua, premium_finish.lua): every write of `status` or
-- `moved_to` counts in `sv`, the person's status version, whatever it writes (an operator's status,
-- a move, a death, a 代缴's), so that a 代缴 tells whether anything set the status since it did
-- (premium_finish.lua), even a change and its reversal.
local function person_set(person_key, ...)
  local fv = {...}
  redis.call('HSET', person_key, unpack(fv))
  for i = 1, #fv, 2 do
    if fv[i] == 'status' or fv[i] == 'moved_to' then
      redis.call('HINCRBY', person_key, 'sv', 1)
      return
    end
  end
end

-- Move `delta` fen (signed) on an account hash and append a ledger entry. Returns balance after.
-- Money that lands on an account already paid out to an heir (inherit.lua set `heir` on it: a
-- deceased person's, SPEC §5b) goes on to the heir in the same script, as an INHERITANCE_PAYOUT
-- under the same ref: once, because the credit is once, and with no moment in which it sits there.
local function move(acct_key, ledger_key, delta, kind, ref, now)
  local bal = entry(acct_key, ledger_key, delta, kind, ref, now)
  if delta > 0 and redis.call('HEXISTS', acct_key, 'heir') == 1 then
    bal = entry(acct_key, ledger_key, -delta, 'INHERITANCE_PAYOUT', ref, now)
    redis.call('HINCRBY', acct_key, 'paid_out', delta)
  end
  return bal
end

-- Append an event to a family account's history (family_*.lua).
local function hist(key, kind, id, amount, ref, now, detail)
  redis.call('RPUSH', key, cjson.encode({kind = kind, id = id, amount = fmt(amount), ref = ref, at = now,
    detail = detail or ''}))
end

-- Whether a family account's member entry `m` holds a place at `now`: a MEMBER's, or an invitation not
-- yet expired (the creator's entry is a MEMBER's).
local function holds_place(m, now)
  return m.state == 'MEMBER' or (m.state == 'INVITED' and tonumber(m.expires_at) > tonumber(now))
end

-- Why `member` may not take a place in the family account `fid` now ('' : they may), checked atomically
-- with the write that follows it (family_invite.lua, family_respond.lua: neither takes the family's
-- lock): the places everyone else holds (the creator and open invitations counted) against
-- `max_members`, and, where `exclusive` is '1', a MEMBER place of `member` in another account (of_key:
-- their memberships).
local function join_refusal(members_key, of_key, fid, member, now, max_members, exclusive)
  local seats = 0
  local rows = redis.call('HGETALL', members_key)
  for i = 1, #rows, 2 do
    if rows[i] ~= member and holds_place(cjson.decode(rows[i + 1]), now) then seats = seats + 1 end
  end
  if seats >= tonumber(max_members) then return 'MEMBER_LIMIT_REACHED' end
  if exclusive == '1' then
    local of = redis.call('HGETALL', of_key)
    for i = 1, #of, 2 do
      if of[i] ~= fid and of[i + 1] == 'MEMBER' then return 'ALREADY_IN_ANOTHER_RELATION' end
    end
  end
  return ''
end

-- The name of a family account's lot in its lots hash: its sequence number, zero-padded so that the
-- names sort oldest first.
local function lot_field(seq) return string.format('%012d', seq) end

-- A 划拨 `xid` of `amount` by contributor `c` becomes a new lot of the family account (family_credit.lua,
-- and a creation's initial 划拨 in family_create.lua): tagged with its contributor, counted in their
-- share and the balance, marked once in `applied` ('x|' .. xid), the account listed among those the
-- contributor has given to. `fk`: family, lots, shares, applied, history, lot counter, given-to set.
local function lot_in(fk, xid, c, amount, now)
  local seq = redis.call('INCR', fk[6])
  redis.call('HSET', fk[2], lot_field(seq), c .. ':' .. fmt(amount))
  redis.call('HINCRBY', fk[3], c, amount)
  redis.call('HINCRBY', fk[1], 'bal', amount)
  redis.call('HSET', fk[4], 'x|' .. xid, 'OK')
  redis.call('SADD', fk[7], redis.call('HGET', fk[1], 'id'))
  hist(fk[5], 'TRANSFER_IN', c, amount, xid, now)
end

-- The family-account step of a settlement or of a 代缴 (SPEC §3b), once per id `sid`, on the family
-- account whose keys are `fk` (family, members, lots, shares, applied, history). It applies exactly
-- the lot parts that Python planned (rules.family_step, the one implementation of oldest contribution
-- first), `takes` = 'lot seq:contributor:what the lot held:amount,…', and decides nothing: each lot
-- must still hold what the plan saw and the patient must still be a MEMBER of the ACTIVE account,
-- else it writes nothing and answers CONFLICT (the caller reads and plans again). `takes` '' records
-- that the plan took nothing (VOID, its share is cash), so that a late retry cannot take anything
-- after the settlement finished without it. The first outcome sticks (DUP, VOID); with `fresh` (the
-- atomic path) an earlier outcome is a CONFLICT. What it took, lot by lot, is kept for the reversal.
-- Returns status ('OK' | 'DUP' | 'VOID' | 'CONFLICT') and the charges 'contributor:amount:share after,…'.
local function family_take(fk, sid, patient, takes, now, fresh)
  local done = redis.call('HGET', fk[5], sid)
  if done and fresh then return 'CONFLICT', '' end
  if done == 'VOID' then return 'VOID', '' end
  if done then return 'DUP', redis.call('HGET', fk[5], 'c|' .. sid) end
  if takes == '' then
    redis.call('HSET', fk[5], sid, 'VOID')
    return 'VOID', ''
  end
  local raw = redis.call('HGET', fk[2], patient)
  local m = raw and cjson.decode(raw) or {state = ''}
  if redis.call('HGET', fk[1], 'state') ~= 'ACTIVE' or m.state ~= 'MEMBER' then return 'CONFLICT', '' end
  local taken, order, by, lots = {}, {}, {}, {}
  for part in string.gmatch(takes, '[^,]+') do
    local seq, c, rem, pay = string.match(part, '^(%d+):([^:]+):(%d+):(%d+)$')
    local f = lot_field(tonumber(seq))
    rem, pay = tonumber(rem), tonumber(pay)
    if pay <= 0 or pay > rem or redis.call('HGET', fk[3], f) ~= c .. ':' .. fmt(rem) then return 'CONFLICT', '' end
    lots[#lots + 1] = {f, c, rem, pay}
    taken[#taken + 1] = f .. ':' .. c .. ':' .. fmt(pay)
    if not by[c] then by[c] = 0; order[#order + 1] = c end
    by[c] = by[c] + pay
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
  redis.call('HSET', fk[5], sid, table.concat(taken, ','), 'c|' .. sid, out)
  hist(fk[6], 'SPENT', patient, total, sid, now, table.concat(spent, ','))
  return 'OK', out
end
