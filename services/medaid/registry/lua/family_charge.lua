-- The family-account step of a staged settlement or of a 代缴 (SPEC §3b) on the `{fam}` slot, once per
-- id: `family_take` (the prelude) of the lot parts Python planned.
-- KEYS[1] family, KEYS[2] members, KEYS[3] lots, KEYS[4] shares, KEYS[5] applied, KEYS[6] history
-- ARGV[1] settlement id (or a premium's money ref), ARGV[2] patient, ARGV[3] the planned lot parts
-- ('seq:contributor:what the lot held:amount,…'; '' when the plan takes nothing), ARGV[4] now
-- Replies: {'OK', charges} | {'DUP', charges} | {'VOID', ''} | {'CONFLICT', ''}; charges
-- 'contributor:amount:share after,…'
local status, out = family_take({KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]}, ARGV[1], ARGV[2],
  ARGV[3], ARGV[4], false)
return {status, out}
