-- Every return of a family operation has been credited: PENDING becomes DONE (on the `{fam}` slot).
-- KEYS[1] returns; ARGV[1] operation id. Reply: the returns now.
local r = redis.call('HGET', KEYS[1], ARGV[1])
if r and string.sub(r, 1, 8) == 'PENDING|' then
  r = 'DONE|' .. string.sub(r, 9)
  redis.call('HSET', KEYS[1], ARGV[1], r)
end
return r or ''
