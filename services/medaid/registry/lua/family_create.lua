-- 创建 a family account (SPEC §3b), on the province's `{fam}` slot: one ACTIVE account per creator;
-- the creator takes the first place of the new account under the rule every place is taken by
-- (join_refusal, as invite and respond: in an exclusive province no MEMBER place in another account;
-- the seats of the new account, empty, never refuse). Every key is declared,
-- the new family's too: the caller reads the id counter and the creator's ACTIVE family first and
-- names the keys of the id that follows (Family._create_script); should either have changed since,
-- the script writes nothing and answers AGAIN (the caller reads them again). A script that reached a
-- key it built itself could be stopped halfway on a cluster while the slot migrates.
-- With an initial 划拨 (ARGV[9]), already debited from the creator's personal account under their lock
-- (family_debit.lua), the account is written holding it, its first lot (lot_in): the account and the
-- money in it are one write, so that no one sees the one without the other. With ARGV[11] 'CHECK' it
-- only answers whether it would write (the refusal, or {'OK', ''}), writing nothing: a creation with an
-- initial 划拨 asks it before the debit, so that a refusal moves no money.
-- KEYS[1] family id counter (shared with the lots' numbers), KEYS[2] the creator's ACTIVE family (by),
-- KEYS[3] the creator's memberships (of), KEYS[4] the index of all families, KEYS[5] the new family,
-- KEYS[6] its members, KEYS[7] its history, KEYS[8] the family KEYS[2] named when read (KEYS[5] if none),
-- KEYS[9] its lots, KEYS[10] its shares, KEYS[11] its applied marks, KEYS[12] the families the creator
-- has given to
-- ARGV[1] creator, ARGV[2] now, ARGV[3] exclusive '1'|'0', ARGV[4] request id, ARGV[5] the new family's
-- id, ARGV[6] the counter's value it takes, ARGV[7] KEYS[2]'s value when read ('' none), ARGV[8] max
-- members, ARGV[9] the initial 划拨's transfer id ('' : none), ARGV[10] its amount, ARGV[11] 'CHECK' |
-- 'WRITE', KEYS[13] / ARGV[12] the entry's fence and the writer's mark (place_fenced)
-- Replies: {'OK', family id} | {'ERR', reason code} | {'AGAIN', ''}
local check = ARGV[11] == 'CHECK'
if not check and place_fenced() then return {'ERR', 'FENCED'} end
local creator, now, rid, fid = ARGV[1], ARGV[2], ARGV[4], ARGV[5]
local existing = redis.call('GET', KEYS[2])
if (existing or '') ~= ARGV[7] then return {'AGAIN', ''} end
if existing then
  if redis.call('HGET', KEYS[8], 'req') == rid then return {'OK', existing} end
  return {'ERR', 'FAMILY_ACCOUNT_EXISTS'}
end
local why = join_refusal(KEYS[6], KEYS[3], fid, creator, now, ARGV[8], ARGV[3])
if why ~= '' then return {'ERR', why} end
if check then return {'OK', ''} end
if tonumber(redis.call('GET', KEYS[1]) or '0') + 1 ~= tonumber(ARGV[6]) then return {'AGAIN', ''} end
redis.call('SET', KEYS[1], ARGV[6])
redis.call('HSET', KEYS[5], 'id', fid, 'creator', creator, 'state', 'ACTIVE', 'created_at', now, 'bal', 0, 'req', rid)
redis.call('HSET', KEYS[6], creator, cjson.encode({state = 'MEMBER', creator = '1', relation = '',
  temporary = '0', invited_at = now, expires_at = '0', joined_at = now, ended_at = '0', end_reason = ''}))
redis.call('HSET', KEYS[3], fid, 'MEMBER')
redis.call('SET', KEYS[2], fid)
redis.call('SADD', KEYS[4], fid)
hist(KEYS[7], 'CREATED', creator, 0, rid, now)
if ARGV[9] ~= '' then
  lot_in({KEYS[5], KEYS[9], KEYS[10], KEYS[11], KEYS[7], KEYS[1], KEYS[12]}, ARGV[9], creator, tonumber(ARGV[10]), now)
end
return {'OK', fid}
