-- 代缴 step 1, on the payee's slot, under the payee's fenced lock: the premium record of (payee, year)
-- opens PENDING — one per payee and year (a CANCELLED one may be paid again), only while the payee's
-- status, moved_to and 统筹区 are still what the payment was decided on (a death or a move recorded
-- meanwhile takes no lock; a move of 统筹区 decides whether a personal or family account may pay, SPEC §3). That status is kept so the payment can lift it to ACTIVE and a cancellation can put
-- it back, with the payee's status version (`sv`, person_set) by which they tell whether anything set
-- the status since (premium_finish.lua).
-- KEYS[1] premium record, KEYS[2] fence, KEYS[3] payee person
-- ARGV[1] token, then id, payer, payee, relation, year, amount, source, family, now (the payment's time,
-- `at`: its paid_at and the month its wallet spend clears in, however late it is finished), wallet place,
-- ARGV[12] the money ref its money moves under (premium_refs.money_ref), and ARGV[13] / ARGV[14] / ARGV[15]
-- the payee's status / moved_to / region the payment was decided on
-- Replies: {'OK', ''} | {'EXISTS', state} (this id's, cancelled too) | {'PAID', id} (another id) | {'CHANGED', ''} (the
-- payee's status or 统筹区 changed since the decision) | {'STALE', ''}
if not fence_ok(KEYS[2], ARGV[1]) then return {'STALE', ''} end
local state = redis.call('HGET', KEYS[1], 'state')
local id = redis.call('HGET', KEYS[1], 'id')
-- This id's own payment, in any state: a cancelled one too, which a resend of the payment never opens
-- again (its money moved once under this id: opened again, it would be paid with no money taken).
if state and id == ARGV[2] then return {'EXISTS', state} end
if state and state ~= 'CANCELLED' then return {'PAID', id} end
local status = redis.call('HGET', KEYS[3], 'status') or ''
local moved = redis.call('HGET', KEYS[3], 'moved_to') or ''
local region = redis.call('HGET', KEYS[3], 'region') or ''
if status ~= ARGV[13] or moved ~= ARGV[14] or region ~= ARGV[15] then return {'CHANGED', ''} end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'id', ARGV[2], 'payer', ARGV[3], 'payee', ARGV[4], 'relation', ARGV[5], 'year', ARGV[6],
  'amount', ARGV[7], 'source', ARGV[8], 'family', ARGV[9], 'opened_at', ARGV[10], 'at', ARGV[10], 'place', ARGV[11], 'mref', ARGV[12],
  'state', 'PENDING',
  'prev_status', status, 'prev_moved', moved, 'prev_sv', redis.call('HGET', KEYS[3], 'sv') or '0', 'contributors', '', 'paid_at', '0', 'cancelled_at', '0')
return {'OK', ''}
