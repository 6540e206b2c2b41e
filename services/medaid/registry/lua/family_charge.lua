-- The family-account step of a staged settlement or of a 代缴 (SPEC §3b) on the `{fam}` slot, once per
-- id: `family_take` (the prelude) of the lot parts Python planned. A 代缴 names its payer: Python judged
-- the payer's standing (premium_checks.py `_family_payer`: the one implementation of who may have the account
-- pay a premium) on their member entry as it read it; this script decides nothing: should the entry
-- differ now (a leave, a removal or an ending meanwhile), it writes nothing and answers AGAIN (the
-- caller reads and judges again). An id whose outcome is written answers it, whatever the entry.
-- KEYS[1] family, KEYS[2] members, KEYS[3] lots, KEYS[4] shares, KEYS[5] applied, KEYS[6] history
-- ARGV[1] settlement id (or a premium's money ref), ARGV[2] patient, ARGV[3] the planned lot parts
-- ('seq:contributor:what the lot held:amount,…'; '' when the plan takes nothing), ARGV[4] now,
-- ARGV[5] the payer of a 代缴 ('' or absent: none), ARGV[6] the payer's member entry as judged ('' : none)
-- Replies: {'OK', charges} | {'DUP', charges} | {'VOID', ''} | {'CONFLICT', ''} | {'AGAIN', ''}; charges
-- 'contributor:amount:share after,…'
local payer = ARGV[5] or ''
if payer ~= '' and not redis.call('HGET', KEYS[5], ARGV[1])
    and (redis.call('HGET', KEYS[2], payer) or '') ~= (ARGV[6] or '') then
  return {'AGAIN', ''}
end
local status, out = family_take({KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]}, ARGV[1], ARGV[2],
  ARGV[3], ARGV[4], false)
return {status, out}
