-- GCRA the way go-redis/redis_rate documents it, written for this bench
-- (not its code): the key holds the theoretical arrival time (TAT) as
-- floating-point seconds since 2017-01-01, on the server's clock (TIME),
-- set with an expiry when a request is allowed.
-- KEYS[1]: the limiter. ARGV: burst (the bucket's size), rate, period in
-- seconds, cost.
-- Returns {allowed, remaining, retry_after, reset_after}: the cost if
-- allowed (else 0), and the waits in seconds as strings ("-1": none).
local key = KEYS[1]
local burst = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local period = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])

local interval = period / rate
local tolerance = interval * burst
local clock = redis.call('TIME')
local now = (tonumber(clock[1]) - 1483228800) + tonumber(clock[2]) / 1000000

local tat = math.max(tonumber(redis.call('GET', key)) or now, now)
local candidate = tat + interval * cost
local slack = now - (candidate - tolerance)
if slack < 0 then
  return {0, 0, tostring(-slack), tostring(tat - now)}
end
local reset = candidate - now
if reset > 0 then
  redis.call('SET', key, candidate, 'EX', math.ceil(reset))
end
return {cost, math.floor(slack / interval), '-1', tostring(reset)}
