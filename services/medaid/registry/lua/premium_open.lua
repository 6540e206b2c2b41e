-- 代缴 step 1, on the payee's slot, under the payee's fenced lock: the premium record of (payee, year)
-- opens PENDING — one per payee and year (a CANCELLED one may be paid again). The payee's status is
-- kept so a cancellation can put it back.
-- KEYS[1] premium record, KEYS[2] fence, KEYS[3] payee person
-- ARGV[1] token, then id, payer, payee, relation, year, amount, source, family, now, wallet place, and
-- ARGV[12] the money ref its money moves under (premiums.money_ref)
-- Replies: {'OK', ''} | {'EXISTS', state} (this id) | {'PAID', id} (another id) | {'STALE', ''}
if not fence_ok(KEYS[2], ARGV[1]) then return {'STALE', ''} end
local state = redis.call('HGET', KEYS[1], 'state')
if state and state ~= 'CANCELLED' then
  local id = redis.call('HGET', KEYS[1], 'id')
  if id == ARGV[2] then return {'EXISTS', state} end
  return {'PAID', id}
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'id', ARGV[2], 'payer', ARGV[3], 'payee', ARGV[4], 'relation', ARGV[5], 'year', ARGV[6],
  'amount', ARGV[7], 'source', ARGV[8], 'family', ARGV[9], 'opened_at', ARGV[10], 'place', ARGV[11], 'mref', ARGV[12],
  'state', 'PENDING',
  'prev_status', redis.call('HGET', KEYS[3], 'status') or '', 'contributors', '', 'paid_at', '0', 'cancelled_at', '0')
return {'OK', ''}
