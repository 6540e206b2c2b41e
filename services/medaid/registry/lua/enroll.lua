-- KEYS[1] person hash, KEYS[2] account hash
-- ARGV[1] has_account (0/1), ARGV[2..] person field, value …
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
if ARGV[1] == '1' then
  redis.call('HSET', KEYS[2], 'bal', 0, 'credited', 0, 'debited', 0, 'lseq', 0)
end
return 1
