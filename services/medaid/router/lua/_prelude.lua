-- Shared helpers, prepended to every router script at load time.

-- Whether a claim's fingerprint `stored` is the attempt's `fp`: the same, or a claim written before
-- 2207 fingerprints carried a digest of the whole message ('2207:<psn>' for '2207:<psn>|<digest>'),
-- which an attempt of the same person joins (and leaves) as it always did.
local function same_attempt(stored, fp)
  if not stored then return false end
  if stored == fp then return true end
  local bar = string.find(fp, '|', 1, true)
  return bar ~= nil and not string.find(stored, '|', 1, true) and stored == string.sub(fp, 1, bar - 1)
end
