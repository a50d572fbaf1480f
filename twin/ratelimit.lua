#!lua name=ratelimit
-- The script twin of redis-ratelimit's contract: RATELIMIT.CHECK, PEEK,
-- UNDO, MCHECK, MPEEK, MUNDO and UNBLOCK (with BLOCK ms), the settlements
-- CHARGE and MCHARGE, and the token bucket RATELIMIT.GCRA, for servers that cannot load the module (managed
-- services). Same arguments, same replies, same error texts; where Lua's
-- numbers (doubles) cannot be exact, a twin-only error instead (see
-- twin/README.md).
--
-- Function form:  FUNCTION LOAD REPLACE <this file>   (an administrator, once)
--                 FCALL ratelimit_check 1 key window max [...] [COST n] [PRECISION p] [BLOCK ms]
--                 FCALL_RO ratelimit_peek 1 key window max [...]
--                 FCALL ratelimit_undo 1 key [COST n]
--                 FCALL ratelimit_mcheck numkeys key [key ...] npairs window max [...] [...]
--                 FCALL_RO ratelimit_mpeek numkeys key [key ...] <as mcheck>
--                 FCALL ratelimit_mundo numkeys key [key ...] [COST n]
--                 FCALL ratelimit_unblock 1 key
--                 FCALL ratelimit_charge 1 key window max [...] [COST n] [PRECISION p]
--                 FCALL ratelimit_mcharge numkeys key [key ...] <as mcheck, without BLOCK>
--                 FCALL ratelimit_gcra 1 key max_burst count period [TOKENS n] [MS] [CHARGE] [REFUND]
-- Script form:    this file without its first line, as EVAL/EVALSHA:
--                 EVALSHA sha numkeys key [key ...]
--                   check|peek|undo|mcheck|mpeek|mundo|unblock|gcra|charge|mcharge
--                 <the same arguments>
--
-- Only base Lua 5.1 (string, math, table, ipairs, pairs, tonumber, type,
-- pcall, error, unpack) and redis.call/pcall/error_reply: no cjson,
-- cmsgpack, struct or bit, so it runs on every Redis 7.0+ and Valkey 8+.
--
-- Bounded work. Whatever a key holds, a call reads at most a fixed number
-- of bytes per key and limit: a small value whole (at most 276 bytes), or
-- a paged value's header and tail page; then, in a paged value, a window's
-- count, a wait and a refund are each found from page headers (17 bytes
-- each: the page is guessed from the pages around it, then bisected) and
-- one page of at most PAGE bytes. A key holds at most MAX_ENTRIES entries
-- (the module's default cap); expired entries leave by moving an offset,
-- never by being walked. Every value read is checked before it is
-- trusted: a value the twin could not have written answers WRONGTYPE, and
-- a call over several keys reads and plans every key before it writes any.
--
-- Storage: one string key per limiter: a sliding-window log in one of two
-- forms (small or paged, below), or a token bucket (at the end).
--
-- Small (at most SMALL_LIMIT = 256 bytes of entries): magic "rl\4" (3) |
-- window (5) | the oldest entry's time (6), little-endian; for a key
-- blocked by BLOCK ms, magic "rl\5" and the block's end (6) after those;
-- then the entries, up to the end of the value. Written whole with SET.
-- Release 0.3's small form still reads (and is written this way from its
-- next change on): magic "rl\1" | window (5) | head (4) | tail (4) |
-- newest (6) | span = newest - oldest (5) | total cost (7), or "rl\2" with
-- the block's end (6) after those, then the entries in bytes [head, tail).
--
-- Paged (more than SMALL_LIMIT bytes of entries): magic "rl\3" and
--   window (5) | newest (6) | oldest (6) | total cost (7) | count (4) |
--   blocked until (6, 0: not blocked) | head (2) | used (2) | last (2) |
--   tail first time (6) | cost before the tail (7) | entries before the
--   tail (4) | cost after the newest entry (7) | entries up to it (4) |
--   slots (2) | three runs of slots, each start (2) and count (2)
-- (RING_HEADER bytes), then the tail page's entries (PAGE bytes, `used` of
-- them meaningful, the newest entry at `last`), then `slots` slots of
-- SLOT bytes, each a sealed page: its first entry's time (6), the cost
-- before it (7) and the entries before it (4), then its entries, padded
-- with zero bytes. Cost sums count from the key's creation modulo 2^53,
-- entry counts modulo 2^32. The sealed pages, oldest first, are the slots
-- of the runs in order (a ring that grows: at most three runs); the first
-- live entry is at `head` in the first of them. Each write rewrites the
-- header and the tail page in one SETRANGE; a full tail page is sealed
-- into a free slot.
--
-- Entries, in both forms: the gap to the previous entry's time and the
-- cost, as "flagged varints": the first byte holds 6 value bits and a flag
-- (bit 0), every byte a continuation bit (bit 7). An entry is gap(flag =
-- cost ~= 1) [cost(flag = 1)], so most entries take 1 to 3 bytes. A
-- page's first entry's gap is not read (its time is the page's first, or
-- the log's oldest); every other gap is at least 1 ms.
--
-- Token bucket (RATELIMIT.GCRA), always 21 bytes: magic "rl\6" | the time
-- of the last charge, ms (6) | that charge's period, ms (5) | the tokens
-- held then, in 1/period tokens (7), little-endian: the module's bucket
-- (core/src/gcra.rs) byte-aligned, each field within the module's bounds
-- (time 1 to 2^42 - 1, period 1 to 7776000000, level 1 to 9e15). Written
-- whole with SET ... PXAT (when the bucket is empty again). A log given
-- to gcra, and a bucket given to a sliding-window operation, answer
-- WRONGTYPE as the module's two types do; a value that starts "rl\6" but
-- is not such a bucket answers an error naming the key.

-- The fast path -------------------------------------------------------------------
--
-- CHECK and PEEK with one `window max` pair and no option, on a key that
-- does not exist or holds a small unblocked value: most calls. It answers
-- exactly as the general code does, or returns nil before it has written
-- anything and the general code answers (a denial that widens the log's
-- window, a log that outgrows the small form, a clock behind the log, a
-- 0.3 value, every error). It is one function with its constants written
-- out because the script form builds every function the file defines, and
-- every name it closes over, again on each call (measured in Redis: about
-- 800 instructions a function and 500 a name, where a Lua operation costs
-- 50 to 100 and a table 1,500), so the common call builds two.
-- Its constants: the small header is 14 bytes (magic "rl\4", window,
-- oldest time), a small value holds at most 256 bytes of entries (PAGE),
-- windows are at most 31536000000 ms, a key's cost at most 2^53 =
-- 9007199254740992, times below 2^47 = 140737488355328.
local function fast(key, window_word, max_word, peek)
  if #window_word > 11 or #max_word > 15 or not window_word:find('^[1-9]%d*$')
    or not max_word:find('^[1-9]%d*$') then
    return nil
  end
  local window, max = tonumber(window_word), tonumber(max_word)
  if window > 31536000000 then
    return nil
  end
  local size = redis.pcall('STRLEN', key)
  if type(size) ~= 'number' or size > 270 then
    return nil
  end
  local v = redis.call('GET', key)
  if v == '' then
    return nil
  end
  local time = redis.pcall('TIME')
  if time.err then
    return nil
  end
  local us = time[2] / 1000
  local now = time[1] * 1000 + us - us % 1
  local room = max - 1
  if not v then
    if peek then
      return { 1, max, 0, 0 }
    end
    v = '\0'
    size = 0
  end
  local r, l, magic, w1, w2, w3, w4, w5, o1, o2, o3, o4, o5, o6 = v:byte(1, 14)
  local old_window, oldest = 0, now
  if size > 0 then
    if r ~= 114 or l ~= 108 or magic ~= 4 or size <= 14 then
      return nil
    end
    old_window = (((w5 * 256 + w4) * 256 + w3) * 256 + w2) * 256 + w1
    oldest = ((((o6 * 256 + o5) * 256 + o4) * 256 + o3) * 256 + o2) * 256 + o1
    if old_window < 1 or old_window > 31536000000 or oldest > now then
      return nil
    end
  end
  local horizon = now - window
  local log_window = old_window >= window and old_window or window
  -- Entries at or before `prune` leave when the request is recorded.
  local prune = now - log_window
  -- A pass over the entries, each decoded and checked: the cost before the
  -- first in the window (so the cost in it), where the entries the record
  -- keeps start, and the newest entry; then, only if the request does not
  -- fit, a second pass from the first entry in the window to the one at
  -- which enough has left. An entry of one byte (an even byte below 128:
  -- a gap below 64 ms and a cost of 1) or two (a gap below 8192 ms) is
  -- most entries, read without the general decoding.
  local b = { v:byte(15, size) }
  local i, t, sum, length = 1, oldest, 0, #b
  local used_from, kept_from, kept_sum, kept_time, newest_at, newest_cost, before_newest, first_in, before_first
  local target, leaves_at, used, newest
  while true do
    while i <= length do
      local x = b[i]
      local gap, cost, j
      if x % 2 == 0 and x > 0 then
        if x < 128 then
          gap, cost, j = x / 2, 1, i + 1
        else
          local y = b[i + 1]
          if y and y < 128 and y > 0 then
            gap, cost, j = (x - 128) / 2 + y * 64, 1, i + 2
          end
        end
      end
      if not gap then
        local flag = x % 2
        gap, j = (x % 128 - flag) / 2, i + 1
        if x >= 128 then
          local scale = 64
          repeat
            x = b[j]
            if not x or scale > 281474976710656 then
              return nil
            end
            gap, scale, j = gap + x % 128 * scale, scale * 128, j + 1
          until x < 128
          if x == 0 then
            return nil
          end
        end
        cost = 1
        if flag == 1 then
          x = b[j]
          if not x or x % 2 == 0 then
            return nil
          end
          cost, j = (x % 128 - 1) / 2, j + 1
          if x >= 128 then
            local scale = 64
            repeat
              x = b[j]
              if not x or scale > 281474976710656 then
                return nil
              end
              cost, scale, j = cost + x % 128 * scale, scale * 128, j + 1
            until x < 128
            if x == 0 then
              return nil
            end
          end
          if cost < 2 then
            return nil
          end
        end
        if gap < 1 and i > 1 then
          return nil
        end
      end
      if i > 1 then
        before_newest, t = t, t + gap
      end
      if target then
        sum = sum + cost
        if sum >= target then
          leaves_at = t
          break
        end
      else
        if not used_from then
          if not kept_from and t > prune then
            kept_from, kept_sum, kept_time = i, sum, t
          end
          if t > horizon then
            used_from, first_in, before_first = sum, i, before_newest
          end
        end
        sum, newest_at, newest_cost = sum + cost, i, cost
      end
      i = j
    end
    if target then
      break
    end
    -- The whole log read: its newest time and cost sum, checked.
    if size > 0 and (t > now or t - oldest >= old_window or sum > 9007199254740992) then
      return nil
    end
    newest, used = t, used_from and sum - used_from or 0
    if used <= room then
      break
    end
    -- Denied: the wait, from the first entry in the window.
    target, i, t, sum = sum - room, first_in, first_in > 1 and before_first or oldest, used_from
  end
  if leaves_at then
    -- A CHECK naming a window longer than the log's registers it: a
    -- write, which the general code makes.
    if not peek and window > old_window then
      return nil
    end
    return { 0, used < max and max - used or 0, leaves_at - horizon, newest > horizon and newest - horizon or 0 }
  end
  if peek then
    return { 1, max - used, 0, newest > horizon and newest - horizon or 0 }
  end
  -- The recorded value: its header, the entries kept (from `kept_from`
  -- to `kept_to`, bytes of `v`), and the request, appended, or joined to
  -- the newest entry in its millisecond (which then takes the request's
  -- time, as the log's record does).
  -- Its last entry's bytes are written here for gaps below 2^20 ms (17
  -- minutes) and a joined entry's gap and cost below 8192; the general code
  -- writes larger ones.
  local kept_to, last
  if not kept_from then
    -- Every entry expired, or a new key.
    kept_from, kept_to, last, sum, kept_sum = 1, 0, '\0', 0, 0
  elseif newest < now then
    local gap = now - newest
    local low = gap % 64
    kept_to = size
    if gap < 64 then
      last = string.char(gap * 2)
    elseif gap < 8192 then
      last = string.char(128 + low * 2, (gap - low) / 64)
    elseif gap < 1048576 then
      local middle = (gap - low) / 64 % 128
      last = string.char(128 + low * 2, 128 + middle, (gap - low - middle * 64) / 8192)
    else
      return nil
    end
  else
    -- The joined entry: flagged gap, then cost, each one or two bytes.
    local gap, cost = newest_at == kept_from and 0 or now - before_newest, newest_cost + 1
    if gap >= 8192 or cost >= 8192 then
      return nil
    end
    local g, c = gap % 64, cost % 64
    last = (gap < 64 and string.char(gap * 2 + 1) or string.char(129 + g * 2, (gap - g) / 64))
      .. (cost < 64 and string.char(cost * 2 + 1) or string.char(129 + c * 2, (cost - c) / 64))
    kept_to = 13 + newest_at
    if newest_at == kept_from then
      kept_time = now
    end
  end
  if sum - kept_sum + 1 > 9007199254740992 or kept_to - 13 - kept_from + #last > 256 then
    return nil
  end
  local value
  if size > 0 and kept_from == 1 and kept_time == oldest and log_window == old_window then
    -- The header as it is.
    value = (kept_to == size and v or v:sub(1, kept_to)) .. last
  else
    -- The small header: magic, window, oldest.
    if log_window ~= old_window then
      local w = log_window
      w1 = w % 256; w = (w - w1) / 256
      w2 = w % 256; w = (w - w2) / 256
      w3 = w % 256; w = (w - w3) / 256
      w4 = w % 256; w5 = (w - w4) / 256
    end
    local o = kept_time or now
    o1 = o % 256; o = (o - o1) / 256
    o2 = o % 256; o = (o - o2) / 256
    o3 = o % 256; o = (o - o3) / 256
    o4 = o % 256; o = (o - o4) / 256
    o5 = o % 256; o = (o - o5) / 256
    value = string.char(114, 108, 4, w1, w2, w3, w4, w5, o1, o2, o3, o4, o5, o) .. v:sub(14 + kept_from, kept_to)
      .. last
  end
  redis.call('SET', key, value, 'PXAT', now + log_window)
  return { 1, room - used, 0, window }
end

-- The script form tries the fast path before it defines anything else.
if not redis.register_function then
  local argv, keys = ARGV, KEYS
  local operation = argv[1]
  if (operation == 'check' or operation == 'peek') and #keys == 1 and #argv == 3 then
    local answer = fast(keys[1], argv[2], argv[3], operation == 'peek')
    if answer then
      return answer
    end
  end
end

-- The token bucket ------------------------------------------------------------------
--
-- RATELIMIT.GCRA key max_burst count period [TOKENS n] [MS] [CHARGE] [REFUND],
-- as the module (core/src/gcra.rs, core/src/args/gcra.rs) answers it: the
-- same checks in the same order with the same texts, the same integer
-- steps, the same reply. A request is allowed or limited; CHARGE adds the
-- tokens whatever the bucket holds, even past full (a debt that drains at
-- the rate), refused only past 9e15 units; REFUND takes them back, at most
-- what the bucket holds, and deletes a key it empties. A debt persists: the
-- units held stay as they are under the same period, even above a smaller
-- burst. One function, built in the script form only for a call that gets
-- past the fast path (a sliding-window call the fast path answers never
-- builds it), building no table but its reply: a call reads the key
-- (GETRANGE of at most 22 bytes, EXISTS only when that is empty) and TIME,
-- and writes at most one SET or DEL: O(1) whatever the key holds.
--
-- Exact in doubles. Every bound is at most MAX_EXACT = 9e15 < 2^53, so an
-- integer below it is exact, and so is every sum, difference and product
-- whose exact value is at most 2^53 (the double nearest an integer that a
-- double holds is that integer). Each step below says why its value stays
-- there; the products that may pass it, the drain and a settlement's
-- n * P, are only compared (and used only once known to be below 9e15).
-- Remainders are math.fmod's, exact for any doubles (not a quotient
-- rounded first, as Lua's %), so floor(u / c) = (u - fmod(u, c)) / c
-- exactly: u - fmod(u, c) is a multiple of c at most u.
local function gcra(keys, argv, first)
  local error_reply = redis.error_reply
  local o = first or 1
  -- The server checks the module command's arity (-5) before the module
  -- reads a word; FCALL's numkeys stands for the key, exactly one.
  local n_args = #argv - o + 1
  if #keys ~= 1 or n_args < 3 then
    return error_reply("ERR wrong number of arguments for 'ratelimit.gcra' command")
  end
  local key, max_burst_word, count_word, period_word = keys[1], argv[o], argv[o + 1], argv[o + 2]
  -- The options first, as the module's parser reads them: any case, each
  -- at most once, TOKENS with its value, MS, CHARGE and REFUND flags; then
  -- CHARGE with REFUND is refused, before the limit's words are read.
  local tokens_word, ms, charge, refund
  local i = o + 3
  while i <= #argv do
    local word = argv[i]
    local upper = #word <= 6 and word:upper()
    if upper == 'TOKENS' then
      if i == #argv then
        return error_reply('ERR syntax error: TOKENS needs a value')
      end
      if tokens_word then
        return error_reply('ERR TOKENS given more than once')
      end
      tokens_word, i = argv[i + 1], i + 2
    elseif upper == 'MS' or upper == 'CHARGE' or upper == 'REFUND' then
      if (upper == 'MS' and ms) or (upper == 'CHARGE' and charge) or (upper == 'REFUND' and refund) then
        return error_reply('ERR ' .. upper .. ' given more than once')
      end
      if upper == 'MS' then
        ms = true
      elseif upper == 'CHARGE' then
        charge = true
      else
        refund = true
      end
      i = i + 1
    else
      -- The word as the module's error shows it: a space for a NUL, CR or LF.
      return error_reply("ERR unknown option '" .. (word:gsub('[%z\r\n]', ' '))
        .. "' (the options are TOKENS n, MS, CHARGE and REFUND)")
    end
  end
  if charge and refund then
    return error_reply('ERR CHARGE and REFUND cannot both be given: a call charges or refunds')
  end
  -- Integers as Redis writes them (no sign, no leading zero); at most 16
  -- digits, so a double holds any that passes the bound (a 16-digit word
  -- above 9e15 reads as a double above it: rounding keeps the order).
  local max_burst = #max_burst_word <= 16
    and (max_burst_word == '0' or max_burst_word:find('^[1-9]%d*$')) and tonumber(max_burst_word)
  if not max_burst or max_burst >= 9000000000000000 then
    return error_reply('ERR max_burst must be an integer from 0 to 8999999999999999')
  end
  local c = #count_word <= 16 and count_word:find('^[1-9]%d*$') and tonumber(count_word)
  if not c or c > 9000000000000000 then
    return error_reply('ERR count must be an integer from 1 to 9000000000000000')
  end
  -- Seconds with at most three significant decimals, in whole ms.
  local whole, dot, fraction = period_word:match('^(%d+)(%.?)(%d*)$')
  local P = whole and #whole <= 7 and (whole == '0' or whole:byte(1) ~= 48)
    and (dot == '' or fraction ~= '' and not fraction:find('[1-9]', 4))
    and tonumber(whole) * 1000 + (dot == '' and 0 or tonumber((fraction .. '000'):sub(1, 3)))
  if not P or P < 1 or P > 7776000000 then
    return error_reply('ERR period must be a number of seconds from 0.001 to 7776000 (90 days), '
      .. 'in whole milliseconds')
  end
  -- b <= 9e15; b * P is compared only: if its exact value is at most 9e15
  -- the product is exact, and if above, the double is above too.
  local b = max_burst + 1
  local C = b * P
  if C > 9000000000000000 then
    return error_reply('ERR max_burst + 1 times the period in milliseconds is above 9000000000000000: '
      .. 'lower max_burst or the period')
  end
  local n = 1
  if tokens_word then
    n = #tokens_word <= 16 and (tokens_word == '0' or tokens_word:find('^[1-9]%d*$'))
      and tonumber(tokens_word)
    if not n or n > 9000000000000000 then
      return error_reply('ERR TOKENS must be an integer from 0 to 9000000000000000 (0 asks without charging)')
    end
  end

  -- The key: missing, a bucket, or WRONGTYPE (another type, a log, any
  -- other string) as the module's types answer; at most 22 bytes read.
  -- (Words, not numbers: a number sent to a command is printed as a double.)
  local v = redis.pcall('GETRANGE', key, '0', '21')
  if type(v) == 'table' then
    return error_reply(v.err)
  end
  local at, held_period, stored
  if v == '' then
    -- Missing, or an empty string (which is not a bucket).
    if redis.call('EXISTS', key) == 1 then
      return error_reply('WRONGTYPE Operation against a key holding the wrong kind of value')
    end
  else
    local r, l, magic, a1, a2, a3, a4, a5, a6, p1, p2, p3, p4, p5, l1, l2, l3, l4, l5, l6, l7 = v:byte(1, 21)
    if r ~= 114 or l ~= 108 or magic ~= 6 then
      return error_reply('WRONGTYPE Operation against a key holding the wrong kind of value')
    end
    -- Each field below 2^56, summed from its high byte: exact while below
    -- 2^53, and a larger one reads as a double above every bound.
    if #v == 21 then
      at = ((((a6 * 256 + a5) * 256 + a4) * 256 + a3) * 256 + a2) * 256 + a1
      held_period = (((p5 * 256 + p4) * 256 + p3) * 256 + p2) * 256 + p1
      stored = (((((l7 * 256 + l6) * 256 + l5) * 256 + l4) * 256 + l3) * 256 + l2) * 256 + l1
    end
    if not at or at < 1 or at > 4398046511103 or held_period < 1 or held_period > 7776000000 or stored < 1
      or stored > 9000000000000000 then
      return error_reply("ERR key '" .. (key:gsub('[%z\r\n]', ' ')) .. "' holds a damaged token bucket "
        .. "(a value that starts as the script twin's buckets do, but is not one it writes): "
        .. 'nothing was changed; DEL it to start the bucket afresh')
    end
  end

  -- The clock: TIME in ms, within the times a bucket holds (1 to 2^42 - 1),
  -- and never before the key's last charge.
  local time = redis.pcall('TIME')
  if time.err then
    -- Redis says "can't run this command", Valkey "no permissions".
    if time.err:find("can't run", 1, true) or time.err:find('permission', 1, true)
      or time.err:find('NOPERM', 1, true) then
      return error_reply("NOPERM this user may not run TIME, which the script twin needs to read the server's "
        .. 'clock: grant it with ACL SETUSER <user> +time')
    end
    return error_reply(time.err)
  end
  local fmod = math.fmod
  local us = time[2] / 1000
  local now = time[1] * 1000 + us - us % 1
  if now < 1 then
    now = 1
  elseif now > 4398046511103 then
    now = 4398046511103
  end
  -- The units held at `now`, in 1/P tokens: what the last charge left,
  -- even above this call's bucket (a settled debt, a smaller burst), less
  -- what drained since at this call's rate; at most 9e15.
  local level = 0
  if at then
    if at > now then
      now = at
    end
    local held = stored
    if held_period ~= P then
      -- Under another period the tokens held, a partly drained one counted
      -- whole (an exact quotient at most `stored`), at most the
      -- floor(9e15 / P) whole tokens a bucket of this period holds
      -- exactly (at least b, as b * P <= 9e15), in units of P: <= 9e15.
      local rest = fmod(stored, held_period)
      local tokens = (stored - rest) / held_period + (rest > 0 and 1 or 0)
      rest = fmod(9000000000000000, P)
      local most = (9000000000000000 - rest) / P
      held = (tokens < most and tokens or most) * P
    end
    -- The drain since the charge, (now - at) * c, may pass 2^53; it is
    -- only compared with held <= 9e15: a product at least held reads at
    -- least held, and one below it is exact. Then held - drained < held.
    local drained = (now - at) * c
    level = drained < held and held - drained or 0
  end
  -- The reply's fields: the first (limited, or for a settlement the whole
  -- tokens above the bucket), the units below a full bucket, the wait
  -- (nil: -1) and the units to drain until empty; and what is written
  -- (nil: nothing, 0: the key is deleted, else the level stored).
  local first_field, left, retry, reset, write
  if not charge and not refund then
    -- A request. need = n * P <= b * P = C when n <= b, and never fits
    -- otherwise (not multiplied). It fits if the bucket is at most full
    -- and has room: after = level + need <= C. Limited, its wait is
    -- level + need - C, summed as (level - C) + need: an exact difference
    -- (both <= 9e15), then a sum whose exact value is at most 9e15 (need
    -- <= C) and above 0.
    local need = n <= b and n * P
    if need and level <= C and need <= C - level then
      first_field, left, reset = 0, C - level - need, level + need
      if need > 0 then
        write = reset
      end
    else
      first_field, left, retry, reset = 1, level < C and C - level or 0, need and (level - C) + need, level
    end
  else
    -- A settlement: after = what the bucket holds after it, never limited.
    local after
    if charge then
      -- n * P is compared only: when its exact value is at most the room
      -- to 9e15 (an exact difference) it is exact, and when above, the
      -- double is at least 2^53 or exact, so above too. Then after <= 9e15.
      if n * P > 9000000000000000 - level then
        return error_reply('ERR this key would hold more than 9000000000000000 token-milliseconds (its tokens '
          .. 'times the period in milliseconds, the most a bucket holds exactly): nothing was charged')
      end
      after = level + n * P
      if n > 0 then
        write = after
      end
    else
      -- At most what is held is taken back (the same comparison, with
      -- level <= 9e15); a refund on a missing key changes nothing.
      after = n * P < level and level - n * P or 0
      if n > 0 and at then
        write = after
      end
    end
    -- Above the bucket: ceil((after - C) / P) whole tokens, an exact
    -- difference. One more token fits after (after - C) + P units: <= 9e15
    -- + P < 2^53.
    first_field, left, reset = 0, after < C and C - after or 0, after
    if after > C then
      local over = after - C
      local rest = fmod(over, P)
      first_field = (over - rest) / P + (rest > 0 and 1 or 0)
    end
    retry = (after - C) + P
    if retry <= 0 then
      retry = nil
    end
  end
  if write == 0 then
    -- A refund that empties the bucket: the key goes, as the module's.
    redis.call('DEL', key)
  elseif write then
    -- Stored: (now, P, write), expiring when the bucket is empty again,
    -- now + ceil(write / c) <= 2^42 + 9e15 < 2^53, written as digits (a
    -- number's own text may be an exponent): %d prints Lua 5.1's number
    -- as a C long, 64 bits on every server's platform.
    local rest = fmod(write, c)
    local expires = string.format('%d', now + (write - rest) / c + (rest > 0 and 1 or 0))
    -- Bytes by % 256, exact (a quotient by a power of two is).
    local a1, a2, a3, a4, a5, a6, p1, p2, p3, p4, p5, l1, l2, l3, l4, l5, l6, l7
    local x = now
    a1 = x % 256; x = (x - a1) / 256
    a2 = x % 256; x = (x - a2) / 256
    a3 = x % 256; x = (x - a3) / 256
    a4 = x % 256; x = (x - a4) / 256
    a5 = x % 256; a6 = (x - a5) / 256
    x = P
    p1 = x % 256; x = (x - p1) / 256
    p2 = x % 256; x = (x - p2) / 256
    p3 = x % 256; x = (x - p3) / 256
    p4 = x % 256; p5 = (x - p4) / 256
    x = write
    l1 = x % 256; x = (x - l1) / 256
    l2 = x % 256; x = (x - l2) / 256
    l3 = x % 256; x = (x - l3) / 256
    l4 = x % 256; x = (x - l4) / 256
    l5 = x % 256; x = (x - l5) / 256
    l6 = x % 256; l7 = (x - l6) / 256
    redis.call('SET', key, string.char(114, 108, 6, a1, a2, a3, a4, a5, a6, p1, p2, p3, p4, p5, l1, l2, l3, l4,
      l5, l6, l7), 'PXAT', expires)
  end
  -- A wait of u units is u / c ms: with MS rounded up; else redis-cell's
  -- seconds, the whole ms rounded up to seconds. Every value <= 9e15 + P.
  local function wait(u)
    local part = fmod(u, c)
    local whole = (u - part) / c
    if ms then
      return whole + (part > 0 and 1 or 0)
    end
    part = fmod(whole, 1000)
    return (whole - part) / 1000 + (part > 0 and 1 or 0)
  end
  local rest = fmod(left, P)
  return { first_field, b, (left - rest) / P, retry and wait(retry) or -1, wait(reset) }
end

-- The script form's gcra, before anything else is defined.
if not redis.register_function and ARGV[1] == 'gcra' then
  return gcra(KEYS, ARGV, 2)
end

-- Everything but the fast path: built once by the function form, and by
-- the script form only for a call the fast path leaves to it.
local function general()
  -- The forms' magic bytes (after "rl"): release 0.3's small value, and
  -- blocked; paged; small, and blocked.
  local OLD_SMALL, OLD_BLOCKED, RING, SMALL, BLOCKED = 1, 2, 3, 4, 5
  local OLD_HEADER, OLD_BLOCKED_HEADER, RING_HEADER = 34, 40, 85
  local SMALL_HEADER, BLOCKED_HEADER = 14, 20
  -- A small value holds at most SMALL_LIMIT bytes of entries (the fast
  -- path's 256); a paged one's pages, PAGE bytes each.
  local SMALL_LIMIT = 256
  local PAGE, PAGE_HEAD = 128, 17
  local SLOT = PAGE_HEAD + PAGE
  -- The first read: a whole small value, or a paged one's header and tail.
  -- Where a paged value's slots start.
  local SLOTS_AT = RING_HEADER + PAGE
  local FIRST_READ = SLOTS_AT > BLOCKED_HEADER + SMALL_LIMIT and SLOTS_AT or BLOCKED_HEADER + SMALL_LIMIT
  -- A 0.3 value larger than a small value is read whole, up to this many bytes of entries.
  local LEGACY = 16384
  -- A paged value up to this size grows by a rewrite (allocated exactly);
  -- a larger one by SETRANGE past its end.
  local REWRITE = 65536
  -- The module's default ratelimit.max-entries (its error names it).
  local MAX_ENTRIES = 1000000
  local MAX_SLOTS = 65535
  local MAX_WINDOW = 31536000000
  local MAX_LIMITS, MAX_KEYS = 8, 16
  -- The largest integer a double holds exactly, with every integer below it:
  -- the most cost a key may hold, and the modulus of cost sums.
  local EXACT = 9007199254740992
  local COUNTS = 4294967296
  -- Stored times are ms since the epoch, below 2^47 (year 6429).
  local LATEST = 140737488355328
  local WRONGTYPE = 'WRONGTYPE Operation against a key holding the wrong kind of value'

  -- Errors travel as tables thrown with error() and are turned into error
  -- replies at the top, so every text is exactly the module's.
  local function fail(text)
    error({ reply = text }, 0)
  end

  -- Numbers and bytes ----------------------------------------------------------

  -- A flagged varint: 6 value bits and the flag in the first byte, then 7
  -- value bits a byte, low bits first; bit 7 says another byte follows.
  local function varint(n, flag)
    local low = n % 64
    n = (n - low) / 64
    if n == 0 then
      return string.char(low * 2 + flag)
    end
    local bytes = { low * 2 + flag + 128 }
    while n >= 128 do
      local b = n % 128
      bytes[#bytes + 1] = b + 128
      n = (n - b) / 128
    end
    bytes[#bytes + 1] = n
    return string.char(unpack(bytes))
  end


  -- The little-endian integer of bytes b[i .. i + width - 1].
  local function le(b, i, width)
    local n = 0
    for j = i + width - 1, i, -1 do
      n = n * 256 + b[j]
    end
    return n
  end

  -- Appends the `width` little-endian bytes of n to the byte list `out`.
  local function put(out, n, width)
    local at = #out
    for j = 1, width do
      local low = n % 256
      out[at + j] = low
      n = (n - low) / 256
    end
  end

  -- (a + b) and (a - b) modulo 2^53, for a below it and b at most it: exact
  -- in doubles, whose integers stop being exact above 2^53.
  local function add_cost(a, b)
    local sum = a - (EXACT - b)
    return sum >= 0 and sum or a + b
  end

  local function sub_cost(a, b)
    local difference = a - b
    return difference < 0 and difference + EXACT or difference
  end

  local function entry(gap, cost)
    if cost == 1 then
      return varint(gap, 0)
    end
    return varint(gap, 1) .. varint(cost, 1)
  end

  -- The entries in bytes [from, limit) of `src` (0-based offsets): the first
  -- at time `first`, each next `gap` ms after the one before, with the cost
  -- before each counted from `base`; with `padded`, a zero byte where an
  -- entry would start ends them. A page: arrays at, cost, before, start (the
  -- entry's offset), n entries, `finish` the offset after the last. Nil if
  -- the bytes are not entries the twin writes (a varint past 8 bytes or
  -- with a needless last byte, a flagged cost below 2, a gap of 0).
  local general_entry
  local function decode(src, from, limit, first, base, padded, mark)
    local b = { src:byte(from + 1, math.min(limit, from + 4096)) }
    for chunk = from + 4097, limit, 4096 do
      local more = { src:byte(chunk, math.min(limit, chunk + 4095)) }
      for j = 1, #more do
        b[#b + 1] = more[j]
      end
    end
    if #b ~= limit - from then
      return nil
    end
    local at, before = {}, {}
    local n, i, length, t, sum, marked, last_start = 0, 1, #b, first, base, nil, nil
    while i <= length do
      local x = b[i]
      if x == 0 and padded and n > 0 then
        break
      end
      -- An entry of one byte (a gap below 64 ms and a cost of 1) or two (a
      -- gap below 8192 ms) is most entries: read without the general
      -- decoding (which checks the same, slower).
      local gap, c, j
      if x % 2 == 0 and x > 0 then
        if x < 128 then
          gap, c, j = x / 2, 1, i + 1
        else
          local y = b[i + 1]
          if y and y < 128 and y > 0 then
            gap, c, j = (x - 128) / 2 + y * 64, 1, i + 2
          end
        end
      end
      last_start = i
      if i == mark then
        marked = n + 1
      end
      if gap then
        if n > 0 then
          t = t + gap
        end
        n = n + 1
        at[n], before[n] = t, sum
        sum, i = sum + 1, j
      else
        i, n, t, sum = general_entry(b, i, n, t, sum, at, before)
        if not i then
          return nil
        end
      end
    end
    -- An entry's cost is the sum before the next less its own before.
    before[n + 1] = sum
    -- Offsets are 0-based in `src`; `b` holds its bytes from `from`.
    return { at = at, before = before, n = n, finish = from + i - 1, src = src, b = b, from = from,
      last_start = last_start and from + last_start - 1, marked = marked, live = 1, count_before = 0,
      sum = sum - base }
  end

  -- The offset in page.src of the page's entry k (entries are walked from
  -- the page's first byte: only a few are asked for in a call).
  local function start_of(page, k)
    local b, i = page.b, 1
    for _ = 2, k do
      local x = b[i]
      local flag = x % 2
      while x >= 128 do
        i = i + 1
        x = b[i]
      end
      i = i + 1
      if flag == 1 then
        x = b[i]
        while x >= 128 do
          i = i + 1
          x = b[i]
        end
        i = i + 1
      end
    end
    return page.from + i - 1
  end

  -- decode's general case: the entry at b[i] in any encoding the twin
  -- writes, appended to the arrays; the state after it, or nil if the
  -- bytes are not such an entry.
  function general_entry(b, i, n, t, sum, at, before)
    local x = b[i]
    local flag = x % 2
    local gap = (x % 128 - flag) / 2
    local j = i + 1
    if x >= 128 then
      local scale = 64
      repeat
        x = b[j]
        if not x or scale > 281474976710656 then
          return nil
        end
        gap, scale, j = gap + x % 128 * scale, scale * 128, j + 1
      until x < 128
      if x == 0 then
        return nil
      end
    end
    local c = 1
    if flag == 1 then
      x = b[j]
      if not x or x % 2 == 0 then
        return nil
      end
      c, j = (x % 128 - 1) / 2, j + 1
      if x >= 128 then
        local scale = 64
        repeat
          x = b[j]
          if not x or scale > 281474976710656 then
            return nil
          end
          c, scale, j = c + x % 128 * scale, scale * 128, j + 1
        until x < 128
        if x == 0 then
          return nil
        end
      end
      if c < 2 then
        return nil
      end
    end
    if n > 0 then
      if gap < 1 then
        return nil
      end
      t = t + gap
    end
    n = n + 1
    at[n], before[n] = t, sum
    return j, n, t, sum + c
  end

  -- The cost of entry k of a decoded page.
  local function cost_of(page, k)
    return page.before[k + 1] - page.before[k]
  end

  -- Searches --------------------------------------------------------------------

  -- The first entry of `page`, from index page.live, whose time is after t
  -- (nil if none), by bisection.
  local function first_after(page, t)
    local at, low, high = page.at, page.live, page.n + 1
    while low < high do
      local middle = (low + high - (low + high) % 2) / 2
      if at[middle] > t then
        high = middle
      else
        low = middle + 1
      end
    end
    return low <= page.n and low or nil
  end

  -- The first entry of `page`, from index page.live, whose cost sum with
  -- everything before it reaches `target` (nil if none).
  local function first_reaching(page, target)
    local before, low, high = page.before, page.live, page.n + 1
    while low < high do
      local middle = (low + high - (low + high) % 2) / 2
      if before[middle + 1] >= target then
        high = middle
      else
        low = middle + 1
      end
    end
    return low <= page.n and low or nil
  end

  -- What is built only when a call needs it: in the script form every call
  -- runs this file from the top, so code that most calls do not need waits
  -- in a builder (the function form keeps what it built).
  local built = {}
  local builders = {}
  local function need(name)
    local module = built[name]
    if not module then
      module = builders[name]()
      built[name] = module
    end
    return module
  end

  -- Where the first entry after t is, in a log that holds some: its page
  -- and index (nil if none is).
  local function seek_time(log, t)
    if log.sealed > 0 then
      return need('paged').seek_time(log, t)
    end
    local k = first_after(log.tail, t)
    return k and { page = log.tail, k = k }
  end

  -- The entry at which the cost counted from the first live entry reaches
  -- `target` (at most the log's total).
  local function seek_cost(log, target)
    if log.sealed > 0 then
      return need('paged').seek_cost(log, target)
    end
    return { page = log.tail, k = first_reaching(log.tail, target) }
  end

  -- Opening a key ---------------------------------------------------------------

  local function corrupt()
    fail(WRONGTYPE)
  end

  -- A small log from its entries [head, tail) of `v`, checked: the first at
  -- `oldest`, each next after the one before, their cost sum at most 2^53
  -- (WRONGTYPE for anything else). Its one page is the tail.
  local function small_log(key, v, head, tail, window, oldest, blocked)
    local page = decode(v, head, tail, oldest, 0, false)
    if not page or window < 1 or window > MAX_WINDOW or oldest > LATEST or blocked > LATEST
      or page.n == 0 and blocked == 0 or page.n > 0 and (page.at[page.n] - oldest >= window or page.sum > EXACT) then
      corrupt()
    end
    page.first = oldest
    return { key = key, window = window, newest = page.n > 0 and page.at[page.n] or oldest, oldest = oldest,
      total = page.sum, count = page.n, blocked = blocked, sealed = 0, tail = page }
  end

  -- A small value's log, from its first bytes `v`: this version's (magic
  -- "rl\4", or "rl\5" and the block's end), or release 0.3's ("rl\1" or
  -- "rl\2" and more fields, read as they are and written this way from
  -- their next change on).
  local function open_small(key, v, magic)
    if magic == SMALL or magic == BLOCKED then
      local base = magic == BLOCKED and BLOCKED_HEADER or SMALL_HEADER
      if #v < base or #v > base + SMALL_LIMIT then
        corrupt()
      end
      local b = { v:byte(1, base) }
      local blocked = magic == BLOCKED and le(b, 15, 6) or 0
      if magic == BLOCKED and blocked == 0 then
        corrupt()
      end
      return small_log(key, v, base, #v, le(b, 4, 5), le(b, 9, 6), blocked)
    end
    local base = magic == OLD_BLOCKED and OLD_BLOCKED_HEADER or OLD_HEADER
    if #v < base then
      corrupt()
    end
    local b = { v:byte(1, base) }
    local window, head, tail, newest = le(b, 4, 5), le(b, 9, 4), le(b, 13, 4), le(b, 17, 6)
    local span, total = le(b, 23, 5), le(b, 28, 7)
    local blocked = base == OLD_BLOCKED_HEADER and le(b, 35, 6) or 0
    if head < base or tail < head or span > newest or (base == OLD_BLOCKED_HEADER) ~= (blocked > 0) then
      corrupt()
    end
    if tail > #v then
      -- A 0.3 value larger than one read: read on if its entries are no more
      -- than LEGACY bytes (and really there).
      if #v < FIRST_READ or redis.call('STRLEN', key) < tail then
        corrupt()
      end
      if tail - head > LEGACY then
        fail('ERR this key was written by the script twin 0.3 and holds more than ' .. LEGACY
          .. ' bytes of entries, more than this version reads in one call: DEL it, or let it expire')
      end
      v = v .. redis.call('GETRANGE', key, #v, tail - 1)
    end
    local log = small_log(key, v, head, tail, window, newest - span, blocked)
    if log.total ~= total or log.count > 0 and log.newest ~= newest then
      corrupt()
    end
    return log
  end

  -- The key's log, or nil if the key does not exist.
  local function open(key)
    local v = redis.pcall('GETRANGE', key, 0, FIRST_READ - 1)
    if type(v) == 'table' then
      fail(v.err)
    end
    if v == '' then
      -- Missing, or an empty string (which is not a limiter).
      if redis.call('EXISTS', key) == 1 then
        corrupt()
      end
      return nil
    end
    local r, l, magic = v:byte(1, 3)
    if r ~= 114 or l ~= 108 or not magic then
      corrupt()
    end
    if magic == RING then
      return need('paged').open(key, v)
    end
    if magic < OLD_SMALL or magic > BLOCKED then
      corrupt()
    end
    return open_small(key, v, magic)
  end

  -- The server's clock in ms: the only clock the twin reads. A user whose
  -- ACL lacks TIME is told what to grant.
  local function clock()
    local time = redis.pcall('TIME')
    if time.err then
      -- Redis says "can't run this command", Valkey "no permissions".
      if time.err:find("can't run", 1, true) or time.err:find('permission', 1, true)
        or time.err:find('NOPERM', 1, true) then
        fail("NOPERM this user may not run TIME, which the script twin needs to read the server's clock: "
          .. 'grant it with ACL SETUSER <user> +time')
      end
      fail(time.err)
    end
    return math.max(tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000), 0)
  end

  -- The call's time on a key: the clock, or the key's newest entry's time if
  -- later, so time never runs backwards for a key.
  local function decision_time(log, now)
    if log and log.count > 0 and log.newest > now then
      return log.newest
    end
    return now
  end

  -- The decision, as src/limiter.rs makes it -----------------------------------

  -- [fits, remaining before, remaining after, retry, reset] at `now`: each
  -- limit's cost in its window from the first entry in it, and, where the
  -- request does not fit, the wait until enough has left.
  local function standing(log, now, call)
    local fits, remaining, after, retry = true, nil, nil, 0
    local cost = call.cost
    for _, limit in ipairs(call.limits) do
      local used, wait = 0, 0
      if log and log.count > 0 then
        local horizon = now - limit.window
        local first = seek_time(log, horizon)
        if first then
          used = log.total - first.page.before[first.k]
          local room = limit.max - cost
          if used > room then
            local leaving = seek_cost(log, first.page.before[first.k] + used - room)
            wait = leaving.page.at[leaving.k] - horizon
          end
        end
      end
      local room = used < limit.max and limit.max - used or 0
      fits = fits and used <= limit.max - cost
      remaining = math.min(remaining or room, room)
      local left = room > cost and room - cost or 0
      after = math.min(after or left, left)
      retry = math.max(retry, wait)
    end
    local reset = 0
    if log and log.count > 0 and log.newest > now - call.longest then
      reset = log.newest - (now - call.longest)
    end
    return { fits = fits, remaining = remaining, after = after, retry = retry, reset = reset }
  end

  -- What a call on a key blocked for `rest` more ms sees: denied, no room,
  -- a wait and a reset of at least the rest of the block.
  local function under_block(seen, rest)
    seen.fits, seen.remaining = false, 0
    seen.retry = math.max(seen.retry, rest)
    seen.reset = math.max(seen.reset, rest)
    return seen
  end

  -- A key's standing at `now`, under its block if it is blocked.
  local function seen_at(log, now, call)
    local seen = standing(log, now, call)
    if log and log.blocked > now then
      return under_block(seen, log.blocked - now), true
    end
    return seen, false
  end

  local function reply(seen)
    if seen.fits then
      return { 1, seen.remaining, 0, seen.reset }
    end
    return { 0, seen.remaining, seen.retry, seen.reset }
  end

  -- Writing ---------------------------------------------------------------------

  -- A call writes in two steps: every key is read and checked and its writes
  -- planned (a list of commands), then the commands run. A script that fails
  -- halfway keeps what it wrote, so nothing that can fail comes second.
  local function commit(writes)
    for _, words in ipairs(writes) do
      redis.call(unpack(words))
    end
  end

  -- SET of a small value holding `body` (entries), with its expiry (`nil`:
  -- keep the key's).
  local function store_small(log, body, expires)
    local bytes = { 114, 108, log.blocked > 0 and BLOCKED or SMALL }
    put(bytes, log.window, 5)
    put(bytes, body == '' and 0 or log.oldest, 6)
    if log.blocked > 0 then
      put(bytes, log.blocked, 6)
    end
    local value = string.char(unpack(bytes)) .. body
    if expires then
      return { { 'SET', log.key, value, 'PXAT', expires } }
    end
    return { { 'SET', log.key, value, 'KEEPTTL' } }
  end

  -- A log written out in whichever form its entries (times `at`, costs
  -- `cost`, oldest first) need: small if they fit in a page.
  local function rebuild(log, at, cost, expires)
    local parts = {}
    for i = 1, #at do
      parts[i] = entry(i > 1 and at[i] - at[i - 1] or 0, cost[i])
    end
    local body = table.concat(parts)
    if #body <= SMALL_LIMIT then
      return store_small(log, body, expires)
    end
    return need('paged').build(log, at, cost, parts, expires)
  end

  local function cell(t, precision)
    return math.floor(t / precision)
  end

  -- The bytes of a small log's entries from index k, the newest replaced by
  -- `newest` (bytes) if given, `extra` appended.
  local function small_body(page, k, newest, extra)
    local src = page.src
    if newest then
      return src:sub(start_of(page, k) + 1, page.last_start) .. newest .. extra
    end
    return src:sub(start_of(page, k) + 1, page.finish) .. extra
  end

  -- Whether a request recorded at `at` joins the log's newest entry: both
  -- in one PRECISION cell (the entry then takes the request's time).
  local function joins_newest(log, at, precision)
    return cell(log.newest, precision) == cell(at, precision)
  end

  -- The writes of a request recorded at `at` (as TimeLog::record: widen the
  -- window, prune what expired under it, join the newest entry if it lies
  -- in the same precision cell, else append), after every check: an
  -- allowed CHECK's, and CHARGE's, which records on a blocked key too. A
  -- block in force stays (only CHARGE meets one: a CHECK on a blocked key
  -- is denied), an ended one goes; the key expires when its newest entry
  -- leaves the window or when the block ends, whichever is later.
  local function plan_record(key, log, at, call)
    local window = call.longest
    local first
    local blocked = log and log.blocked > at and log.blocked or 0
    -- A log with no entry (a blocked key a refund emptied) keeps no window.
    if log and log.count > 0 then
      window = math.max(log.window, window)
      first = seek_time(log, at - window)
    end
    local expires = math.max(at + window, blocked)
    if not first then
      local fresh = { key = key, window = window, newest = at, oldest = at, total = call.cost, blocked = blocked }
      return store_small(fresh, entry(0, call.cost), expires)
    end
    local page, k = first.page, first.k
    local kept = log.total - page.before[k]
    if kept > EXACT - call.cost then
      fail('ERR this key would hold more than 9007199254740992 units of cost, which the script twin '
        .. 'cannot count exactly: nothing was recorded (load the module, or use smaller units)')
    end
    local merge = joins_newest(log, at, call.precision)
    local count = log.count - (page.count_before + k - 1) + (merge and 0 or 1)
    if count > MAX_ENTRIES then
      -- The module's text: the twin's cap is the module's default, fixed.
      fail("ERR this key's log is full: it holds ratelimit.max-entries (1000000) entries. Nothing was recorded. "
        .. 'Use PRECISION p to share entries, or raise ratelimit.max-entries')
    end
    local change = { window = window, at = at, cost = call.cost, merge = merge, total = kept + call.cost,
      count = count, first = first, blocked = blocked, expires = expires }
    if log.sealed > 0 then
      return need('paged').plan_record(log, change)
    end
    local tail, n = log.tail, log.tail.n
    local body
    if merge then
      local gap = k == n and 0 or at - tail.at[n - 1]
      body = small_body(tail, k, entry(gap, cost_of(tail, n) + call.cost), '')
    else
      body = small_body(tail, k, nil, entry(at - log.newest, call.cost))
    end
    local updated = { key = key, window = window, newest = at, oldest = k == n and merge and at or tail.at[k],
      total = kept + call.cost, blocked = blocked }
    if #body <= SMALL_LIMIT then
      return store_small(updated, body, expires)
    end
    -- Past a page: the kept entries and the new one, paged.
    local times, costs = {}, {}
    for i = k, n do
      times[#times + 1], costs[#costs + 1] = tail.at[i], cost_of(tail, i)
    end
    if merge then
      times[#times], costs[#costs] = at, costs[#costs] + call.cost
    else
      times[#times + 1], costs[#costs + 1] = at, call.cost
    end
    return rebuild(updated, times, costs, expires)
  end

  -- When the key expires: when its newest entry leaves its window, or when
  -- its block ends, whichever is later.
  local function expiry_of(log)
    local own = log.count > 0 and log.newest + log.window or 0
    return math.max(own, log.blocked)
  end

  -- A small log's entries as they are, for a header that changed.
  local function restore_small(log, expires)
    local tail = log.tail
    if log.count == 0 or tail.finish - tail.from <= SMALL_LIMIT then
      return store_small(log, log.count > 0 and small_body(tail, 1, nil, '') or '', expires)
    end
    -- A 0.3 value past a page: written paged from now on.
    local times, costs = {}, {}
    for i = 1, tail.n do
      times[i], costs[i] = tail.at[i], cost_of(tail, i)
    end
    return rebuild(log, times, costs, expires)
  end

  -- What a denial writes: a longest window longer than the log's is
  -- registered (decision 1 of an earlier round: the key then lives until its
  -- newest entry expires under it), and `block_until`, if given, starts a
  -- block. Nothing else is written: a denial that does neither is read-only.
  -- A log with no entry has no window to keep.
  local function plan_deny(log, window, block_until)
    if not log then
      return {}
    end
    local widens = log.count > 0 and window > log.window
    if not (widens or block_until) then
      return {}
    end
    log.window = widens and window or log.window
    log.blocked = block_until or log.blocked
    if log.sealed > 0 then
      return need('paged').plan_header(log, expiry_of(log))
    end
    return restore_small(log, expiry_of(log))
  end

  -- The operations ----------------------------------------------------------------

  -- A word as the module shows it in an error: an error reply cannot carry
  -- a NUL, CR or LF byte, and the module's shows a space for each.
  local function shown(word)
    return (word:gsub('[%z\r\n]', ' '))
  end

  local function arity(name)
    fail("ERR wrong number of arguments for '" .. name .. "' command")
  end

  -- The common call, one limit and no option, with numbers a double holds
  -- exactly, read straight (nil for any other, which the general parser reads).
  local function simple_call(window, max)
    if #window <= 11 and #max <= 15 and window:find('^[1-9]%d*$') and max:find('^[1-9]%d*$') then
      local w = tonumber(window)
      if w <= MAX_WINDOW then
        return { limits = { { window = w, max = tonumber(max) } }, cost = 1, precision = 1, longest = w }
      end
    end
    return nil
  end

  -- check|peek's call: limits sorted by window, cost, precision, the longest
  -- window and the block, or the module's error for the first thing wrong.
  -- With `settles`, charge's: no BLOCK, and COST may be above a max.
  local function limit_call(name, args, settles)
    local call = #args == 2 and simple_call(args[1], args[2])
    if call then
      return call
    end
    if #args < 2 then
      arity(name)
    end
    return need('parse').limit_call(args, settles)
  end

  local function check(key, args)
    local call = limit_call('ratelimit.check', args)
    local log = open(key)
    local now = decision_time(log, clock())
    local seen, blocked = seen_at(log, now, call)
    if not seen.fits then
      -- Denied by its limits, with BLOCK: the key is blocked from now on.
      local block_until = not blocked and call.block and now + call.block or nil
      if block_until then
        under_block(seen, call.block)
      end
      commit(plan_deny(log, call.longest, block_until))
      return reply(seen)
    end
    commit(plan_record(key, log, now, call))
    return { 1, seen.after, 0, call.longest }
  end

  local function peek(key, args)
    local call = limit_call('ratelimit.peek', args)
    local log = open(key)
    return reply((seen_at(log, decision_time(log, clock()), call)))
  end

  -- The operations by name. `one_key`: exactly one key (the module's
  -- argument 1); `read_only`: writes nothing; `arity`: the module command's
  -- (negative: at least), which the server checks before the module reads
  -- a word.
  local OPERATIONS = {
    check = { run = check, name = 'ratelimit.check', one_key = true, arity = -4 },
    peek = { run = peek, name = 'ratelimit.peek', one_key = true, read_only = true, arity = -4 },
    undo = { module = 'rare', name = 'ratelimit.undo', one_key = true, arity = -2 },
    unblock = { module = 'rare', name = 'ratelimit.unblock', one_key = true, arity = 2 },
    mcheck = { module = 'multi', name = 'ratelimit.mcheck', arity = -6 },
    mpeek = { module = 'multi', name = 'ratelimit.mpeek', read_only = true, arity = -6 },
    mundo = { module = 'multi', name = 'ratelimit.mundo', arity = -3 },
    charge = { module = 'settle', name = 'ratelimit.charge', one_key = true, arity = -4 },
    mcharge = { module = 'settle', name = 'ratelimit.mcharge', arity = -6 },
  }

  local function run_operation(operation, keys, args)
    -- The module command's words: its name, its keys (with numkeys for
    -- several), its arguments.
    local words = 1 + #keys + #args + (operation.one_key and 0 or 1)
    if operation.arity > 0 and words ~= operation.arity or words < -operation.arity then
      arity(operation.name)
    end
    local run = operation.run or need(operation.module)[operation.name]
    if not operation.one_key then
      return run(keys, args)
    end
    if #keys ~= 1 then
      arity(operation.name)
    end
    return run(keys[1], args)
  end

  -- Runs an operation; thrown error texts become error replies.
  local function call(operation, keys, args)
    local ok, result = pcall(run_operation, operation, keys, args)
    if ok then
      return result
    end
    if type(result) == 'table' and result.reply then
      return redis.error_reply(result.reply)
    end
    error(result, 0)
  end

  -- Arguments: the general form ---------------------------------------------------

  builders.parse = function()
    local MAX_COST = '9223372036854775807'
    local EXACT_DIGITS = '9007199254740992'
    local WINDOW_DIGITS = '31536000000'
    local LIMIT_OPTIONS = { { 'COST', 'n' }, { 'PRECISION', 'p' }, { 'BLOCK', 'ms' } }
    -- A settlement is never denied, so it has nothing to block.
    local CHARGE_OPTIONS = { { 'COST', 'n' }, { 'PRECISION', 'p' } }
    local UNDO_OPTIONS = { { 'COST', 'n' } }

    -- A decimal integer the way Redis writes one (digits, no leading zero,
    -- no '+', within 64 bits), positive: its digits, else nil.
    local function positive_digits(word)
      if not word:match('^[1-9]%d*$') then
        return nil
      end
      if #word > #MAX_COST or (#word == #MAX_COST and word > MAX_COST) then
        return nil
      end
      return word
    end

    -- Compares two canonical positive digit strings: a < b.
    local function below(a, b)
      return #a < #b or (#a == #b and a < b)
    end

    -- A positive integer at most `high` (digits), or nil.
    local function positive_up_to(word, high)
      local digits = positive_digits(word)
      if digits and not below(high, digits) then
        return digits
      end
      return nil
    end

    local function exact_number(digits, what)
      if below(EXACT_DIGITS, digits) then
        fail('ERR ' .. what .. ' above ' .. EXACT_DIGITS .. ' cannot be counted exactly by the script twin '
          .. '(Lua numbers are doubles): load the module for larger values')
      end
      return tonumber(digits)
    end


    -- Named options, each followed by its value, at most once, any case.
    local function parse_options(words, from, names)
      local values = {}
      local i = from
      while i <= #words do
        local word = words[i]
        local slot
        for index, name in ipairs(names) do
          if word:upper() == name[1] then
            slot = index
          end
        end
        if not slot then
          local known = {}
          for index, name in ipairs(names) do
            known[index] = name[1] .. ' ' .. name[2]
          end
          -- "A", "A and B", "A, B and C".
          local last = table.remove(known)
          local listed = #known > 0 and table.concat(known, ', ') .. ' and ' .. last or last
          fail("ERR unknown option '" .. shown(word) .. "' (the options are " .. listed .. ')')
        end
        local token = names[slot][1]
        if i + 1 > #words then
          fail('ERR syntax error: ' .. token .. ' needs a value')
        end
        if values[slot] then
          fail('ERR ' .. token .. ' given more than once')
        end
        values[slot] = words[i + 1]
        i = i + 2
      end
      return values
    end

    local function cost_digits(word)
      local digits = positive_digits(word)
      if not digits then
        fail('ERR COST must be a positive integer')
      end
      return digits
    end

    -- BLOCK's value in ms, or nil if not given.
    local function parse_block(word)
      if not word then
        return nil
      end
      local digits = positive_up_to(word, WINDOW_DIGITS)
      if not digits then
        fail('ERR BLOCK must be an integer from 1 to ' .. WINDOW_DIGITS .. ' (milliseconds)')
      end
      return tonumber(digits)
    end

    local function precision_error(shortest)
      fail('ERR PRECISION must be an integer from 1 to ' .. string.format('%.0f', shortest)
        .. ' (the shortest window)')
    end

    local function by_window(a, b)
      return a.window < b.window
    end

    -- One `window max` pair, or the module's error for what is wrong with it
    -- (`max_word` is nil when the words ran out).
    local function parse_pair(window_word, max_word)
      local window = positive_up_to(window_word, WINDOW_DIGITS)
      if not window then
        fail('ERR window must be an integer from 1 to ' .. WINDOW_DIGITS .. ' (milliseconds)')
      end
      if not max_word then
        fail('ERR syntax error: window ' .. shown(window_word) .. ' has no max')
      end
      local max = positive_digits(max_word)
      if not max then
        fail('ERR max must be an integer from 1 to ' .. MAX_COST)
      end
      return { window = tonumber(window), max_digits = max }
    end

    -- The request of `limits` with the options' values (words, or nil),
    -- checked in the module's order: COST, PRECISION, a window twice, COST
    -- above a max (not for a charge, `settles`: what it records was
    -- spent), PRECISION above the shortest window. Limits sorted by
    -- window; the numbers Lua cannot hold exactly are refused later, by
    -- `make_exact`.
    local function build_call(limits, options, settles)
      local cost = options[1] and cost_digits(options[1]) or '1'
      local shortest = MAX_WINDOW
      for _, limit in ipairs(limits) do
        shortest = math.min(shortest, limit.window)
      end
      local precision = 1
      if options[2] then
        local digits = positive_up_to(options[2], WINDOW_DIGITS)
        if not digits then
          precision_error(shortest)
        end
        precision = tonumber(digits)
      end
      table.sort(limits, by_window)
      local smallest_max = limits[1].max_digits
      for i, limit in ipairs(limits) do
        if i > 1 and limits[i - 1].window == limit.window then
          fail('ERR window ' .. string.format('%.0f', limit.window) .. ' is given twice')
        end
        if below(limit.max_digits, smallest_max) then
          smallest_max = limit.max_digits
        end
      end
      if below(smallest_max, cost) and not settles then
        fail('ERR COST ' .. cost .. ' is above max ' .. smallest_max .. ': such a request could never be allowed')
      end
      if precision > shortest then
        precision_error(shortest)
      end
      return { limits = limits, cost_digits = cost, precision = precision, longest = limits[#limits].window }
    end

    -- What the module accepts and Lua cannot count exactly (COST first: a
    -- COST above 2^53 comes with a max above it), once the module's own
    -- checks have passed; the call's numbers as Lua numbers.
    local function make_exact(call)
      call.cost = exact_number(call.cost_digits, 'COST')
      for _, limit in ipairs(call.limits) do
        limit.max = exact_number(limit.max_digits, 'max')
      end
      return call
    end

    local parse = { positive_up_to = positive_up_to, parse_options = parse_options, parse_pair = parse_pair,
      build_call = build_call, make_exact = make_exact, parse_block = parse_block, LIMIT_OPTIONS = LIMIT_OPTIONS,
      CHARGE_OPTIONS = CHARGE_OPTIONS }

    -- check|peek with any words; charge's with `settles`.
    function parse.limit_call(args, settles)
      local limits = {}
      local at = 1
      -- The first pair is required; more follow while the next word is a
      -- number rather than an option name.
      while at <= #args and (at == 1 or args[at]:match('^[%d%-]')) do
        local limit = parse_pair(args[at], args[at + 1])
        if #limits == MAX_LIMITS then
          fail('ERR at most ' .. MAX_LIMITS .. ' window/max pairs')
        end
        limits[#limits + 1] = limit
        at = at + 2
      end
      local options = parse_options(args, at, settles and CHARGE_OPTIONS or LIMIT_OPTIONS)
      local block = parse_block(options[3])
      local call = make_exact(build_call(limits, options, settles))
      call.block = block
      return call
    end

    -- undo|mundo: the units to refund.
    function parse.units(args)
      local options = parse_options(args, 1, UNDO_OPTIONS)
      return options[1] and tonumber(cost_digits(options[1])) or 1
    end

    return parse
  end

  -- UNDO and UNBLOCK --------------------------------------------------------------

  builders.rare = function()
    local rare = {}

    -- UNDO's writes: the newest `units` of cost leave, from the newest entry
    -- back; a log with no entry (a blocked key a refund emptied) has none,
    -- and nothing is written. Returns the writes and the units removed.
    function rare.plan_refund(log, units)
      if not log or log.count == 0 then
        return {}, 0
      end
      local removed = math.min(units, log.total)
      if removed == log.total then
        if log.blocked > clock() then
          -- Kept, with no entry, until its block ends.
          log.count, log.total = 0, 0
          return store_small(log, '', log.blocked), removed
        end
        return { { 'DEL', log.key } }, removed
      end
      -- The entry where the cost that stays ends: it keeps part of its cost.
      local keep = log.total - removed
      local last = seek_cost(log, keep)
      if log.sealed > 0 then
        return need('paged').plan_truncate(log, last, keep), removed
      end
      local page, k = last.page, last.k
      local times, costs = {}, {}
      for i = 1, k do
        times[i], costs[i] = page.at[i], cost_of(page, i)
      end
      costs[k] = keep - page.before[k]
      log.total, log.newest = keep, page.at[k]
      return rebuild(log, times, costs, nil), removed
    end

    rare['ratelimit.undo'] = function(key, args)
      local units = need('parse').units(args)
      local writes, removed = rare.plan_refund(open(key), units)
      commit(writes)
      return removed
    end

    -- UNBLOCK: lifts a block in force, keeping the history; 1 if it did.
    rare['ratelimit.unblock'] = function(key)
      local log = open(key)
      local now = decision_time(log, clock())
      if not (log and log.blocked > now) then
        return 0
      end
      log.blocked = 0
      if log.count > 0 and log.newest + log.window > now then
        if log.sealed > 0 then
          commit(need('paged').plan_header(log, log.newest + log.window))
        else
          commit(restore_small(log, log.newest + log.window))
        end
      else
        -- Nothing live is left without the block.
        redis.call('DEL', key)
      end
      return 1
    end

    return rare
  end

  -- Several keys ----------------------------------------------------------------

  builders.multi = function()
    local parse = need('parse')
    local multi = {}

    -- `numkeys key [key ...]` (FCALL's and EVAL's own keys): 1 to 16 keys,
    -- each at most once.
    local function check_keys(keys)
      if #keys < 1 or #keys > MAX_KEYS then
        fail('ERR numkeys must be an integer from 1 to ' .. MAX_KEYS)
      end
      local seen = {}
      for _, key in ipairs(keys) do
        if seen[key] then
          fail("ERR key '" .. shown(key) .. "' is given more than once")
        end
        seen[key] = true
      end
    end

    -- Runs `run(...)`; an error it raises names `key` first, as the module's
    -- errors about one key of a multi-key call do.
    function multi.about_key(key, run, ...)
      local ok, result = pcall(run, ...)
      if ok then
        return result
      end
      if type(result) == 'table' and result.reply and result.reply:sub(1, 4) == 'ERR ' then
        fail("ERR key '" .. shown(key) .. "': " .. result.reply:sub(5))
      end
      error(result, 0)
    end

    -- One key's call of a multi-key call: its `npairs` pairs from `args[from]`.
    local function key_call(args, from, npairs, options, settles)
      local simple = npairs == 1 and not (options[1] or options[2]) and simple_call(args[from], args[from + 1])
      if simple then
        return simple
      end
      local limits = {}
      for i = 1, npairs do
        local at = from + 2 * (i - 1)
        limits[i] = parse.parse_pair(args[at], args[at + 1])
      end
      return parse.build_call(limits, options, settles)
    end

    -- mcheck|mpeek: each key's call, in key order, as CHECK on that key alone
    -- would parse it (COST and PRECISION apply to every key), or the module's
    -- error for the first thing wrong; the twin's own refusals after all.
    -- mcharge's with `settles`, as CHARGE on each key would parse it.
    function multi.parse_multi_call(name, keys, args, settles)
      check_keys(keys)
      local starts, counts = {}, {}
      local at = 1
      for position = 1, #keys do
        if not args[at] then
          arity(name)
        end
        local npairs = parse.positive_up_to(args[at], tostring(MAX_LIMITS))
        if not npairs then
          fail('ERR npairs of key ' .. position .. ' must be an integer from 1 to ' .. MAX_LIMITS)
        end
        starts[position], counts[position] = at + 1, tonumber(npairs)
        at = at + 1 + 2 * counts[position]
        if at - 1 > #args then
          arity(name)
        end
      end
      local options = parse.parse_options(args, at, settles and parse.CHARGE_OPTIONS or parse.LIMIT_OPTIONS)
      local block = parse.parse_block(options[3])
      local calls = {}
      for position, key in ipairs(keys) do
        calls[position] = multi.about_key(key, key_call, args, starts[position], counts[position], options, settles)
      end
      for position, key in ipairs(keys) do
        if not calls[position].cost then
          multi.about_key(key, parse.make_exact, calls[position])
        end
        calls[position].block = block
      end
      return calls
    end

    -- Every key of a multi-key call opened (WRONGTYPE for the first key of
    -- another type) and seen at its own decision time, one clock for all,
    -- under its block if it is blocked.
    local function survey(name, keys, args)
      local calls = multi.parse_multi_call(name, keys, args)
      local clock_now = clock()
      local keyed = {}
      for i, key in ipairs(keys) do
        local log = open(key)
        local now = decision_time(log, clock_now)
        local seen, blocked = seen_at(log, now, calls[i])
        keyed[i] = { key = key, log = log, call = calls[i], now = now, seen = seen, blocked = blocked }
      end
      return keyed
    end

    -- MCHECK's and MPEEK's reply over every key: as CHECK would reply if
    -- allowed (as PEEK would with `as_peek`), as PEEK would if denied; then
    -- the 1-based positions of the keys that denied (by their limits or by a
    -- block).
    local function joint(keyed, as_peek)
      local denied = {}
      for i, k in ipairs(keyed) do
        if not k.seen.fits then
          denied[#denied + 1] = i
        end
      end
      local allowed = #denied == 0
      local remaining, retry, reset = nil, 0, 0
      for _, k in ipairs(keyed) do
        local seen = k.seen
        if allowed and not as_peek then
          remaining = math.min(remaining or seen.after, seen.after)
          reset = math.max(reset, k.call.longest)
        else
          remaining = math.min(remaining or seen.remaining, seen.remaining)
          retry = math.max(retry, seen.retry)
          reset = math.max(reset, seen.reset)
        end
      end
      return { allowed and 1 or 0, remaining, retry, reset, denied }
    end

    -- MCHECK: every key is read and every write planned before any key
    -- changes; then every key records the request (allowed), or (denied)
    -- keeps its longest window as a denied CHECK's does and, with BLOCK, is
    -- blocked if its own limits denied and it was not blocked already.
    multi['ratelimit.mcheck'] = function(keys, args)
      local keyed = survey('ratelimit.mcheck', keys, args)
      local allowed = true
      for _, k in ipairs(keyed) do
        allowed = allowed and k.seen.fits
      end
      local plans = {}
      for i, k in ipairs(keyed) do
        if allowed then
          plans[i] = multi.about_key(k.key, plan_record, k.key, k.log, k.now, k.call)
        else
          local block = k.call.block
          local block_until = block and not k.seen.fits and not k.blocked and k.now + block or nil
          if block_until then
            under_block(k.seen, block)
          end
          plans[i] = plan_deny(k.log, k.call.longest, block_until)
        end
      end
      for _, writes in ipairs(plans) do
        commit(writes)
      end
      return joint(keyed, false)
    end

    multi['ratelimit.mpeek'] = function(keys, args)
      return joint(survey('ratelimit.mpeek', keys, args), true)
    end

    -- MUNDO: every key read and its refund planned before any is refunded.
    multi['ratelimit.mundo'] = function(keys, args)
      check_keys(keys)
      local units = parse.units(args)
      local rare = need('rare')
      local logs, plans, removed = {}, {}, {}
      for i, key in ipairs(keys) do
        logs[i] = open(key) or false
      end
      for i, log in ipairs(logs) do
        plans[i], removed[i] = rare.plan_refund(log or nil, units)
      end
      for _, writes in ipairs(plans) do
        commit(writes)
      end
      return removed
    end

    return multi
  end

  -- CHARGE and MCHARGE ------------------------------------------------------------

  builders.settle = function()
    local settle = {}

    -- CHARGE's answer for `call` recorded at `now` (the model's charge):
    -- [over, remaining, retry, reset]. Worked out on the log as it was
    -- before the record, which a paged log's planned record changes: the
    -- record adds the charge to every window of the call (it is at `now`),
    -- and prunes only what no window of it holds; the newest entry, if the
    -- charge joins it, moves to `now` and so leaves with the charge.
    function settle.settlement(log, now, call)
      local live = log and log.count > 0
      local joins = live and joins_newest(log, now, call.precision)
      local over, remaining, retry = 0, nil, 0
      for _, limit in ipairs(call.limits) do
        local horizon = now - limit.window
        local first = live and seek_time(log, horizon)
        local before = first and first.page.before[first.k] or 0
        -- At most 2^53 once plan_record has accepted the charge.
        local used = (first and log.total - before or 0) + call.cost
        over = math.max(over, used - limit.max)
        remaining = math.min(remaining or math.huge, math.max(limit.max - used, 0))
        -- A request of 1 fits when `leave` units have left the window: those
        -- the log held first, in time order, then the charge's own entry.
        local leave = used - limit.max + 1
        if leave > 0 then
          local wait = limit.window
          if leave <= used - call.cost then
            local leaving = seek_cost(log, before + leave)
            local moved = joins and leaving.page == log.tail and leaving.k == log.tail.n
            wait = moved and wait or leaving.page.at[leaving.k] - horizon
          end
          retry = math.max(retry, wait)
        end
      end
      -- The charge's entry is the newest: the longest window empties with it.
      return { over, remaining, retry, call.longest }
    end

    -- One key's charge: its answer and its writes, or the error that
    -- refuses it (an overflow, a full log: plan_record's checks).
    function settle.plan(key, log, now, call)
      -- The answer first: plan_record changes a paged log's fields.
      local settled = settle.settlement(log, now, call)
      return { settled = settled, writes = plan_record(key, log, now, call) }
    end

    settle['ratelimit.charge'] = function(key, args)
      local call = limit_call('ratelimit.charge', args, true)
      local log = open(key)
      local planned = settle.plan(key, log, decision_time(log, clock()), call)
      commit(planned.writes)
      return planned.settled
    end

    -- MCHARGE: every key opened (WRONGTYPE for the first of another type),
    -- then each key's charge planned in key order (its refusal names it),
    -- before any key is written: all or nothing.
    settle['ratelimit.mcharge'] = function(keys, args)
      local multi = need('multi')
      local calls = multi.parse_multi_call('ratelimit.mcharge', keys, args, true)
      local clock_now = clock()
      local logs = {}
      for i, key in ipairs(keys) do
        logs[i] = open(key) or false
      end
      local plans = {}
      for i, key in ipairs(keys) do
        local log = logs[i] or nil
        plans[i] = multi.about_key(key, settle.plan, key, log, decision_time(log, clock_now), calls[i])
      end
      -- The most over, the least remaining, the longest waits, the keys over.
      local over, remaining, retry, reset, over_keys = 0, nil, 0, 0, {}
      for i, planned in ipairs(plans) do
        local s = planned.settled
        over, retry, reset = math.max(over, s[1]), math.max(retry, s[3]), math.max(reset, s[4])
        remaining = math.min(remaining or s[2], s[2])
        if s[1] > 0 then
          over_keys[#over_keys + 1] = i
        end
      end
      for _, planned in ipairs(plans) do
        commit(planned.writes)
      end
      return { over, remaining, retry, reset, over_keys }
    end

    return settle
  end

  -- The paged form ------------------------------------------------------------------

  builders.paged = function()
    local paged = {}

    -- The paged header's fields, in order, with their widths.
    local FIELDS = { { 'window', 5 }, { 'newest', 6 }, { 'oldest', 6 }, { 'total', 7 }, { 'count', 4 },
      { 'blocked', 6 }, { 'head', 2 }, { 'used', 2 }, { 'last', 2 }, { 'tail_first', 6 }, { 'tail_cost', 7 },
      { 'tail_count', 4 }, { 'end_cost', 7 }, { 'end_count', 4 }, { 'slots', 2 } }

    local function header(log)
      local bytes = { 114, 108, RING }
      for _, field in ipairs(FIELDS) do
        put(bytes, log[field[1]], field[2])
      end
      for i = 1, 3 do
        local run = log.runs[i]
        put(bytes, run and run.start or 0, 2)
        put(bytes, run and run.count or 0, 2)
      end
      return string.char(unpack(bytes))
    end

    local function slot_offset(slot)
      return SLOTS_AT + slot * SLOT
    end

    -- The slot of sealed page i (1 the oldest).
    local function slot_of(log, i)
      for _, run in ipairs(log.runs) do
        if i <= run.count then
          return run.start + i - 1
        end
        i = i - run.count
      end
    end

    -- The runs are one to three disjoint ranges of slots, holding the
    -- sealed pages between them.
    local function valid_runs(log)
      local runs, sealed = log.runs, 0
      if #runs < 1 then
        return false
      end
      for i, run in ipairs(runs) do
        if run.count < 1 or run.start + run.count > log.slots then
          return false
        end
        for j = 1, i - 1 do
          local other = runs[j]
          if run.start < other.start + other.count and other.start < run.start + run.count then
            return false
          end
        end
        sealed = sealed + run.count
      end
      log.sealed = sealed
      return true
    end

    function paged.open(key, v)
      if #v < SLOTS_AT then
        corrupt()
      end
      local b = { v:byte(1, RING_HEADER) }
      local log = { key = key, runs = {} }
      local at = 4
      for _, field in ipairs(FIELDS) do
        log[field[1]] = le(b, at, field[2])
        at = at + field[2]
      end
      for i = 1, 3 do
        local start, count = le(b, at, 2), le(b, at + 2, 2)
        if count > 0 then
          log.runs[#log.runs + 1] = { start = start, count = count }
        end
        at = at + 4
      end
      -- The cost and entries before the first live one.
      log.cost_head = sub_cost(log.end_cost, log.total)
      log.count_head = (log.end_count - log.count) % COUNTS
      local tail_rel = sub_cost(log.tail_cost, log.cost_head)
      local tail_entries = (log.end_count - log.tail_count) % COUNTS
      if log.window < 1 or log.window > MAX_WINDOW or log.newest > LATEST or log.oldest > log.newest
        or log.newest - log.oldest >= log.window or log.total < 2 or log.total > EXACT or log.count < 2
        or log.count > MAX_ENTRIES or log.blocked > LATEST or log.head >= PAGE or log.used < 1
        or log.used > PAGE or log.last >= log.used or log.tail_first <= log.oldest or log.tail_first > log.newest
        or log.end_cost >= EXACT or log.tail_cost >= EXACT or log.slots > MAX_SLOTS or not valid_runs(log)
        or tail_rel < 1 or tail_rel >= log.total or tail_entries < 1 or tail_entries >= log.count then
        corrupt()
      end
      local tail = decode(v, RING_HEADER, RING_HEADER + log.used, log.tail_first, tail_rel, false)
      if not tail or tail.n ~= tail_entries or tail.sum ~= log.total - tail_rel or tail.at[tail.n] ~= log.newest
        or tail.last_start ~= RING_HEADER + log.last then
        corrupt()
      end
      tail.first, tail.index, tail.count_before = log.tail_first, log.sealed + 1, log.count - tail_entries
      log.tail, log.heads, log.pages = tail, {}, {}
      return log
    end

    -- Sealed page i's header (read once per call): its first entry's time,
    -- the cost and the entries before it, relative to the first live entry.
    -- Checked against what the log's header says of the pages around it.
    local function page_head(log, i)
      local head = log.heads[i]
      if head then
        return head
      end
      local bytes = redis.call('GETRANGE', log.key, slot_offset(slot_of(log, i)), slot_offset(slot_of(log, i))
        + PAGE_HEAD - 1)
      local b = { bytes:byte(1, PAGE_HEAD) }
      if #b ~= PAGE_HEAD then
        corrupt()
      end
      head = { first = le(b, 1, 6), cost = le(b, 7, 7), count = le(b, 14, 4) }
      head.rel = sub_cost(head.cost, log.cost_head)
      head.count_before = (head.count - log.count_head) % COUNTS
      if head.cost >= EXACT or head.first >= log.tail_first or i == 1 and head.first > log.oldest
        or i > 1 and (head.first <= log.oldest or head.rel < 1 or head.rel >= log.tail.before[1]
          or head.count_before < 1 or head.count_before >= log.tail.count_before) then
        corrupt()
      end
      log.heads[i] = head
      return head
    end

    -- Page i decoded (sealed pages 1 .. sealed, the tail sealed + 1): times,
    -- costs and the cost before each entry relative to the first live one.
    -- The first page's live entries start at `head`.
    local function page(log, i)
      if i > log.sealed then
        return log.tail
      end
      local decoded = log.pages[i]
      if decoded then
        return decoded
      end
      local head = page_head(log, i)
      local offset = slot_offset(slot_of(log, i)) + PAGE_HEAD
      local src = redis.call('GETRANGE', log.key, offset, offset + PAGE - 1)
      local base = head.rel
      if i == 1 then
        -- Before the first live entry: the cost pruned from this page.
        base = -sub_cost(log.cost_head, head.cost)
      end
      -- The first page's live entries start at `head` (byte head + 1 of it).
      decoded = decode(src, 0, PAGE, head.first, base, true, i == 1 and log.head + 1 or nil)
      -- The page ends where the next begins: the cost and the entries
      -- before the next page are this page's and its own, the next's
      -- first time after this one's last.
      local next_first, next_rel, next_count
      if i < log.sealed then
        local following = page_head(log, i + 1)
        next_first, next_rel, next_count = following.first, following.rel, following.count_before
      else
        next_first, next_rel, next_count = log.tail_first, log.tail.before[1], log.tail.count_before
      end
      if not decoded or decoded.at[decoded.n] >= next_first
        or decoded.before[decoded.n + 1] ~= next_rel then
        corrupt()
      end
      decoded.first, decoded.index, decoded.count_before = head.first, i, head.count_before
      if i == 1 then
        -- The live part starts at `head`, at the log's oldest time, with no
        -- cost before it.
        local live = decoded.marked
        if not live or decoded.at[live] ~= log.oldest or decoded.before[live] ~= 0 then
          corrupt()
        end
        decoded.live, decoded.count_before = live, 1 - live
      end
      if decoded.count_before + decoded.n ~= next_count then
        corrupt()
      end
      log.pages[i] = decoded
      return decoded
    end

    -- The last page in [1, sealed + 1] whose key (`key_of(page index)`) is at
    -- most x (below x with `strict`): the first page's is known to be, so
    -- the search gallops from the end nearer x, then bisects.
    -- The last page in [1, sealed + 1] whose key (`key_of(page index)`) is
    -- at most x (below x with `strict`); the first page's is known to be.
    -- Page keys (first times, cost sums) grow about evenly with traffic,
    -- so the search guesses the page from the keys around it (two or
    -- three header reads for most logs), and bisects after three guesses
    -- (at most a header read per halving, whatever the log holds).
    local function last_page(log, key_of, x, strict)
      -- Every key probed lies strictly between those of the pages around
      -- it already probed (page headers out of order: WRONGTYPE).
      local keys = { [1] = key_of(1), [log.sealed + 1] = key_of(log.sealed + 1) }
      local function fits(i)
        local key = keys[i]
        if not key then
          key = key_of(i)
          keys[i] = key
          for j, other in pairs(keys) do
            if (j < i and other >= key) or (j > i and other <= key) then
              corrupt()
            end
          end
        end
        return key < x or not strict and key == x
      end
      local low, high = 1, log.sealed + 1
      if fits(high) then
        return high
      end
      local guesses = 0
      while high - low > 1 do
        local middle
        if guesses < 3 then
          local guess = low + (x - keys[low]) / (keys[high] - keys[low]) * (high - low)
          middle = math.min(math.max(guess - guess % 1, low + 1), high - 1)
          guesses = guesses + 1
        else
          middle = (low + high - (low + high) % 2) / 2
        end
        if fits(middle) then
          low = middle
        else
          high = middle
        end
      end
      return low
    end

    function paged.seek_time(log, t)
      if t >= log.newest then
        return nil
      end
      if t < log.oldest then
        return { page = page(log, 1), k = page(log, 1).live }
      end
      local function first_time(i)
        if i == 1 then
          return log.oldest
        end
        return i > log.sealed and log.tail_first or page_head(log, i).first
      end
      local i = last_page(log, first_time, t, false)
      local found = page(log, i)
      local k = first_after(found, t)
      if k then
        return { page = found, k = k }
      end
      return { page = page(log, i + 1), k = 1 }
    end

    function paged.seek_cost(log, target)
      local function cost_before(i)
        if i == 1 then
          return 0
        end
        return i > log.sealed and log.tail.before[1] or page_head(log, i).rel
      end
      local i = last_page(log, cost_before, target, true)
      local found = page(log, i)
      return { page = found, k = first_reaching(found, target) }
    end

    -- Adds a slot at the back of the runs for a new sealed page: the next
    -- slot after the last run if free; slot 0 once the only run has left it;
    -- else a new slot at the end of the value (in a run of its own when the
    -- last run ran into the first: at most three runs).
    local function push_slot(log)
      local runs = log.runs
      local last = runs[#runs]
      local next_slot = last.start + last.count
      if next_slot < log.slots then
        local taken = false
        for _, run in ipairs(runs) do
          taken = taken or (run.start <= next_slot and next_slot < run.start + run.count)
        end
        if not taken then
          last.count = last.count + 1
          return next_slot
        end
        runs[#runs + 1] = { start = log.slots, count = 1 }
      elseif #runs == 1 and last.start > 0 then
        runs[2] = { start = 0, count = 1 }
        return 0
      else
        last.count = last.count + 1
      end
      log.slots = log.slots + 1
      return log.slots - 1
    end

    local function drop_front(log, pages)
      local runs = log.runs
      while pages > 0 do
        local run = runs[1]
        local taken = math.min(pages, run.count)
        run.start, run.count, pages = run.start + taken, run.count - taken, pages - taken
        if run.count == 0 then
          table.remove(runs, 1)
        end
      end
    end

    local function drop_back(log, pages)
      local runs = log.runs
      while pages > 0 do
        local run = runs[#runs]
        local taken = math.min(pages, run.count)
        run.count, pages = run.count - taken, pages - taken
        if run.count == 0 then
          runs[#runs] = nil
        end
      end
    end

    -- A sealed page's slot: its header and entries, padded.
    local function slot_bytes(first, cost, count, entries)
      local bytes = {}
      put(bytes, first, 6)
      put(bytes, cost, 7)
      put(bytes, count, 4)
      return string.char(unpack(bytes)) .. entries .. string.rep('\0', PAGE - #entries)
    end

    -- A slot's bytes as stored.
    local function read_slot(log, slot)
      local bytes = redis.call('GETRANGE', log.key, slot_offset(slot), slot_offset(slot) + SLOT - 1)
      if #bytes ~= SLOT then
        corrupt()
      end
      return bytes
    end

    -- The whole value of a paged log whose slots hold `slots` (bytes).
    local function whole(log, slots)
      return header(log) .. log.tail_bytes .. string.rep('\0', PAGE - #log.tail_bytes) .. slots
    end

    -- A paged value for entries (times, costs, and their bytes `parts`, each
    -- encoded with its gap to the one before) that are more than a page.
    function paged.build(log, at, cost, parts, expires)
      local pages, current, firsts, starts = {}, {}, {}, {}
      local size, sum, cum_before, counts = 0, 0, {}, {}
      for i = 1, #at do
        local bytes = parts[i]
        if #current == 0 or size + #bytes > PAGE then
          pages[#pages + 1], current, size = current, {}, 0
          firsts[#pages + 1], cum_before[#pages + 1], counts[#pages + 1] = at[i], sum, i - 1
          bytes = entry(0, cost[i])
        end
        starts[i] = size
        current[#current + 1] = bytes
        size, sum = size + #bytes, sum + cost[i]
      end
      pages[#pages + 1] = current
      -- pages[1] is the empty list before the first; pages[2 ..] hold entries.
      local sealed = #pages - 2
      local slots = {}
      for p = 2, #pages - 1 do
        slots[#slots + 1] = slot_bytes(firsts[p], cum_before[p] % EXACT, counts[p], table.concat(pages[p]))
      end
      local tail = #pages
      log.tail_bytes = table.concat(pages[tail])
      log.head, log.used, log.last = 0, #log.tail_bytes, starts[#at]
      log.tail_first, log.tail_cost, log.tail_count = firsts[tail], cum_before[tail] % EXACT, counts[tail]
      log.end_cost, log.end_count, log.count, log.oldest = sum % EXACT, #at, #at, at[1]
      log.slots, log.runs = sealed, { { start = 0, count = sealed } }
      if expires then
        return { { 'SET', log.key, whole(log, table.concat(slots)), 'PXAT', expires } }
      end
      return { { 'SET', log.key, whole(log, table.concat(slots)), 'KEEPTTL' } }
    end

    -- The header and tail page, as they stand, in one SETRANGE, with the
    -- expiry if given.
    local function header_write(log, writes, expires)
      writes[#writes + 1] = { 'SETRANGE', log.key, 0, header(log) .. log.tail_bytes }
      if expires then
        writes[#writes + 1] = { 'PEXPIREAT', log.key, expires }
      end
      return writes
    end

    function paged.plan_header(log, expires)
      log.tail_bytes = log.tail.src:sub(RING_HEADER + 1, RING_HEADER + log.used)
      return header_write(log, {}, expires)
    end

    -- A recorded request's writes on a paged log (the shared checks done):
    -- pages the prune passed leave the runs, the request joins the newest
    -- entry or is appended to the tail page, a full tail page is sealed into
    -- a slot.
    function paged.plan_record(log, change)
      local first, at, cost = change.first, change.at, change.cost
      local tail, n = log.tail, log.tail.n
      log.window, log.total, log.count, log.blocked = change.window, change.total, change.count, change.blocked
      local newest_cost = change.merge and cost_of(tail, n) + cost or cost
      if first.page.index > log.sealed then
        -- Every sealed page expired: what is left of the tail, and the request.
        local times, costs = {}, {}
        for i = first.k, n do
          times[#times + 1], costs[#costs + 1] = tail.at[i], cost_of(tail, i)
        end
        if change.merge then
          times[#times], costs[#costs] = at, newest_cost
        else
          times[#times + 1], costs[#costs + 1] = at, cost
        end
        log.oldest, log.newest = times[1], at
        return rebuild(log, times, costs, change.expires)
      end
      local dropped = first.page.index - 1
      drop_front(log, dropped)
      log.sealed = log.sealed - dropped
      log.head, log.oldest = start_of(first.page, first.k), first.page.at[first.k]
      local src = tail.src:sub(RING_HEADER + 1, RING_HEADER + log.used)
      local kept, new_entry, gap
      if change.merge then
        kept = src:sub(1, log.last)
        gap = n == 1 and 0 or at - tail.at[n - 1]
      else
        kept, gap = src, at - log.newest
      end
      new_entry = entry(gap, newest_cost)
      local grows, slot, sealed = log.slots, nil, nil
      if #kept + #new_entry <= PAGE then
        log.tail_bytes, log.last = kept .. new_entry, #kept
        if change.merge and n == 1 then
          log.tail_first = at
        end
      else
        -- The tail page is full: sealed into a slot, the request starts the next.
        local before_newest = change.merge and sub_cost(log.end_cost, cost_of(tail, n)) or log.end_cost
        local count_before = change.merge and (log.end_count - 1) % COUNTS or log.end_count
        slot = push_slot(log)
        sealed = slot_bytes(log.tail_first, log.tail_cost, log.tail_count, kept)
        log.tail_first, log.tail_cost, log.tail_count = at, before_newest, count_before
        log.tail_bytes, log.last = entry(0, newest_cost), 0
        log.sealed = log.sealed + 1
      end
      log.end_cost = add_cost(log.end_cost, cost)
      log.end_count = (log.end_count + (change.merge and 0 or 1)) % COUNTS
      log.newest, log.used = at, #log.tail_bytes
      local expires = change.expires
      if log.sealed <= 8 and log.slots > 2 * log.sealed + 8 then
        -- A few pages live in many slots (a burst has passed): the value
        -- written anew with just them (at most 8 slots read).
        local pages = {}
        for i = 1, log.sealed do
          local at_slot = slot_of(log, i)
          pages[i] = at_slot == slot and sealed or read_slot(log, at_slot)
        end
        log.slots, log.runs = log.sealed, { { start = 0, count = log.sealed } }
        return { { 'SET', log.key, whole(log, table.concat(pages)), 'PXAT', expires } }
      end
      if log.slots > grows and SLOTS_AT + log.slots * SLOT <= REWRITE then
        -- A new slot at the end: the value written anew, allocated exactly.
        local slots = grows > 0 and redis.call('GETRANGE', log.key, SLOTS_AT, SLOTS_AT + grows * SLOT - 1) or ''
        if #slots ~= grows * SLOT then
          corrupt()
        end
        return { { 'SET', log.key, whole(log, slots .. sealed), 'PXAT', expires } }
      end
      local writes = {}
      if sealed then
        writes[1] = { 'SETRANGE', log.key, slot_offset(slot), sealed }
      end
      return header_write(log, writes, expires)
    end

    -- UNDO's writes on a paged log when `keep` of its cost stays: the entry
    -- `last` keeps part of its cost and becomes the newest; pages after it
    -- leave the runs, and the page it is in becomes the tail page.
    function paged.plan_truncate(log, last, keep)
      local found, k = last.page, last.k
      local kept_cost = keep - found.before[k]
      local gap = k == found.live and 0 or found.at[k] - found.at[k - 1]
      log.total, log.newest = keep, found.at[k]
      log.count = found.count_before + k
      if found.index == 1 then
        -- Only the first sealed page is left: small again.
        local times, costs = {}, {}
        for i = found.live, k do
          times[#times + 1], costs[#costs + 1] = found.at[i], cost_of(found, i)
        end
        costs[#costs] = kept_cost
        log.oldest, log.sealed = found.at[found.live], 0
        return rebuild(log, times, costs, nil)
      end
      local src = found.index > log.sealed and found.src:sub(RING_HEADER + 1, RING_HEADER + log.used) or found.src
      local origin = found.index > log.sealed and RING_HEADER or 0
      local at_k = start_of(found, k)
      local bytes = src:sub(1, at_k - origin) .. entry(gap, kept_cost)
      if found.index <= log.sealed then
        local head = page_head(log, found.index)
        drop_back(log, log.sealed - found.index + 1)
        log.sealed = found.index - 1
        log.tail_first, log.tail_cost, log.tail_count = head.first, head.cost, head.count
      end
      log.tail_bytes, log.used, log.last = bytes, #bytes, at_k - origin
      log.end_cost = add_cost(log.cost_head, keep % EXACT)
      log.end_count = (log.count_head + log.count) % COUNTS
      return header_write(log, {}, nil)
    end

    return paged
  end

  -- The script form: ARGV[1] names the operation.
  local function dispatch(keys, argv)
    local operation = OPERATIONS[argv[1] or '']
    if not operation then
      return redis.error_reply("ERR unknown operation '" .. tostring(argv[1])
        .. "' (the script twin's operations are check, peek, undo, mcheck, mpeek, mundo, unblock, gcra, "
        .. 'charge and mcharge)')
    end
    local args = {}
    for i = 2, #argv do
      args[i - 1] = argv[i]
    end
    return call(operation, keys, args)
  end

  return { call = call, dispatch = dispatch, OPERATIONS = OPERATIONS }
end

if redis.register_function then
  -- The functions, `ratelimit_<operation>`, in a fixed order. (The top
  -- level of a library may not touch globals such as `ipairs` on Redis 7.0.)
  local FUNCTIONS = { 'check', 'peek', 'undo', 'unblock', 'mcheck', 'mpeek', 'mundo', 'charge', 'mcharge' }
  local rest = general()
  for i = 1, #FUNCTIONS do
    local name = FUNCTIONS[i]
    local operation = rest.OPERATIONS[name]
    local tries_fast, peek = name == 'check' or name == 'peek', name == 'peek'
    redis.register_function({
      function_name = 'ratelimit_' .. name,
      callback = function(keys, args)
        if tries_fast and #keys == 1 and #args == 2 then
          local answer = fast(keys[1], args[1], args[2], peek)
          if answer then
            return answer
          end
        end
        return rest.call(operation, keys, args)
      end,
      -- Reads only: FCALL_RO, and so replicas, may run them.
      flags = operation.read_only and { 'no-writes' } or nil,
    })
  end
  -- The token bucket: a write, even with TOKENS 0 (as the module's command).
  redis.register_function({ function_name = 'ratelimit_gcra', callback = gcra })
else
  -- The script form: ARGV[1] names the operation.
  return general().dispatch(KEYS, ARGV)
end
