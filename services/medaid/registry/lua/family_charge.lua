-- The family-account step of a staged settlement (SPEC §3b) on the `{fam}` slot, once per settlement
-- id: `family_take` (the prelude) without an expected split.
-- KEYS[1] family, KEYS[2] members, KEYS[3] lots, KEYS[4] shares, KEYS[5] applied, KEYS[6] history
-- ARGV[1] settlement id, ARGV[2] patient, ARGV[3] amount, ARGV[4] now, ARGV[5] category
-- Replies: {'OK', charges} | {'DUP', charges} | {'VOID', ''}; charges 'contributor:amount:share after,…'
local status, out = family_take({KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]}, ARGV[1], ARGV[2],
  tonumber(ARGV[3]), ARGV[4], ARGV[5], nil)
return {status, out}
