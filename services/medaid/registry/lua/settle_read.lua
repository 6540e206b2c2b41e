-- Everything one settlement is planned from, read in one script on ONE Redis (the helpers' keys are
-- found from the helper list, so not on a cluster, where the staged path reads them instead). It
-- reads only; the plan is made in Python (rules.plan_settlement) and applied by settle_apply.lua,
-- which checks that these values still hold.
-- KEYS[1] request-id claim, KEYS[2] settlement record, KEYS[3] person, KEYS[4] account,
-- KEYS[5] helpers of the patient (zset, scored by filing order), KEYS[6] proxies as relative,
-- KEYS[7] proxies as holder, KEYS[8] the patient's family memberships (pooled provinces)
-- ARGV[1] what comes before a person id in their keys ('reg:13:{p:'), ARGV[2] the patient,
-- ARGV[3] what comes before a family account's keys ('reg:62:{fam}:'; '' outside pooled provinces)
-- Reply: {claim {fp, state, resp, err}, record (flat HGETALL), person {status, itype, tier, region,
-- wallet_place, moved_to}, own balance, number of proxies, helpers {{id, seq, status, itype, tier,
-- region, balance} …}, memberships (flat HGETALL), families joined {{id, state, member entry, lots (flat),
-- the creator's region} …}}
local helpers = {}
local rows = redis.call('ZRANGE', KEYS[5], 0, -1, 'WITHSCORES')
for i = 1, #rows, 2 do
  local keys = ARGV[1] .. rows[i] .. '}:'
  local h = redis.call('HMGET', keys .. 'person', 'status', 'itype', 'tier', 'region')
  helpers[#helpers + 1] = {rows[i], rows[i + 1], h[1], h[2], h[3], h[4], redis.call('HGET', keys .. 'acct', 'bal')}
end
local memberships, families = {}, {}
if ARGV[3] ~= '' then
  memberships = redis.call('HGETALL', KEYS[8])
  for i = 1, #memberships, 2 do
    if memberships[i + 1] == 'MEMBER' then
      local fid = memberships[i]
      local fam = redis.call('HMGET', ARGV[3] .. 'f:' .. fid, 'state', 'creator')
      local creator_region = fam[2] and redis.call('HGET', ARGV[1] .. fam[2] .. '}:person', 'region') or ''
      families[#families + 1] = {fid, fam[1], redis.call('HGET', ARGV[3] .. 'm:' .. fid, ARGV[2]),
        redis.call('HGETALL', ARGV[3] .. 'lots:' .. fid), creator_region}
    end
  end
end
return {
  redis.call('HMGET', KEYS[1], 'fp', 'state', 'resp', 'err'),
  redis.call('HGETALL', KEYS[2]),
  redis.call('HMGET', KEYS[3], 'status', 'itype', 'tier', 'region', 'wallet_place', 'moved_to'),
  redis.call('HGET', KEYS[4], 'bal'),
  redis.call('HLEN', KEYS[6]) + redis.call('HLEN', KEYS[7]),
  helpers,
  memberships,
  families,
}
