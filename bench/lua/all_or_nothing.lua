-- All or nothing over several limiters: the request passes only if every
-- key's limit allows it, and then counts in every one; if any denies,
-- none is charged. Atomic, as any script is.
--   EVAL <this script> N key1 .. keyN window1 max1 .. windowN maxN cost
-- On a cluster every key must share one hash tag: {tenant:acme}:user:42 ...
-- Replies {allowed, retry_after_ms, denying key's position (0 if allowed)}:
-- the wait is the longest any denying key asks for.
local cost = ARGV[#ARGV]
local wait, denier = 0, 0
for i, key in ipairs(KEYS) do
  local reply = redis.call('RATELIMIT.PEEK', key, ARGV[2 * i - 1], ARGV[2 * i], 'COST', cost)
  if reply[1] == 0 and (denier == 0 or reply[3] > wait) then
    wait, denier = reply[3], i
  end
end
if denier > 0 then
  return {0, wait, denier}
end
-- The clock only moves forward within the script, so nothing PEEK allowed
-- can be denied here.
for i, key in ipairs(KEYS) do
  redis.call('RATELIMIT.CHECK', key, ARGV[2 * i - 1], ARGV[2 * i], 'COST', cost)
end
return {1, 0, 0}
