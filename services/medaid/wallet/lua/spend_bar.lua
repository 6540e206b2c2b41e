-- Bar a spend id that no spend has yet, so a later spend with it is refused (spend.lua: BARRED).
-- KEYS[1] spends hash, KEYS[2] barred spend ids; ARGV[1] the spend id, ARGV[2] the province whose
-- spends it bars (its registry's: '<province>|<id>'), '' every province's (no caller identities: '<id>')
-- Returns 'SPENT' (a spend has the id: refund it instead) | 'BARRED'.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 'SPENT' end
if ARGV[2] == '' then redis.call('SADD', KEYS[2], ARGV[1]) else redis.call('SADD', KEYS[2], ARGV[2] .. '|' .. ARGV[1]) end
return 'BARRED'
