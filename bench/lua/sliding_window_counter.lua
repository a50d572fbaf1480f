-- The sliding-window counter upstash/ratelimit and Cloudflare describe,
-- written here for comparison (an approximation, not an exact log): two
-- fixed-window counters, the previous one weighted by how much of it the
-- sliding window still covers. KEYS: the current and the previous
-- window's counters; ARGV: limit, now (the client's clock, in ms), window.
local current, previous = KEYS[1], KEYS[2]
local limit, now, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local in_current = tonumber(redis.call('GET', current) or '0')
local in_previous = tonumber(redis.call('GET', previous) or '0')
local weighted = math.floor(in_previous * (1 - (now % window) / window))
if weighted + in_current >= limit then
  return { 0, 0 }
end
local count = redis.call('INCR', current)
if count == 1 then
  redis.call('PEXPIRE', current, window * 2)
end
return { 1, limit - weighted - count }
