#!lua name=ratelimit
-- The script twin of redis-ratelimit's contract: RATELIMIT.CHECK, PEEK,
-- UNDO, MCHECK, MPEEK, MUNDO and UNBLOCK (with BLOCK ms) for servers that cannot load the module
-- (managed services). Same arguments, same replies, same error texts;
-- where Lua's numbers (doubles) cannot be exact, a twin-only error instead
-- (see twin/README.md).
--
-- Function form:  FUNCTION LOAD REPLACE <this file>
--                 FCALL ratelimit_check 1 key window max [...] [COST n] [PRECISION p]
--                 FCALL_RO ratelimit_peek 1 key window max [...]
--                 FCALL ratelimit_undo 1 key [COST n]
--                 FCALL ratelimit_mcheck numkeys key [key ...] npairs window max [...] [...]
--                 FCALL_RO ratelimit_mpeek numkeys key [key ...] <as mcheck>
--                 FCALL ratelimit_mundo numkeys key [key ...] [COST n]
--                 FCALL ratelimit_unblock 1 key
-- Script form:    this file without its first line, as EVAL/EVALSHA:
--                 EVALSHA sha numkeys key [key ...] check|peek|undo|mcheck|mpeek|mundo|unblock
--                 <the same arguments>
--
-- Only base Lua 5.1 (string, math, table, ipairs, tonumber, tostring,
-- type, pcall, error) and redis.call/pcall:
-- no cjson, cmsgpack, struct or bit, so it runs on every Redis 7.0+ and
-- Valkey 8+.
--
-- Storage: one string key per limiter.
--   header (HEADER bytes, fixed width, little-endian):
--     magic "rl\1" (3) | window (5) | head (4) | tail (4) |
--     newest time (6) | span = newest - oldest (5) | total cost (7)
--   or, for a key blocked by `BLOCK ms` (BLOCKED_HEADER bytes), the same
--   with magic "rl\2" and then the block's end, blocked_until (6): a key
--   that is never blocked keeps the short header, and values written
--   before blocks existed read as they are. A blocked key may hold no
--   entry (head = tail, total 0) until its block ends.
--   entries, oldest first, in bytes [head, tail): each is the gap to the
--   previous entry's time and its cost, as "flagged varints": the first
--   byte holds 6 value bits and a flag (bit 0), every byte a continuation
--   bit (bit 7). An entry is gap(flag = cost ~= 1) [cost(flag = 1)], so
--   most entries take 1 to 3 bytes, and from the back a varint whose flag
--   is set can only be a cost (a flagged gap is always followed by one):
--   entries can be walked from either end. The gap of the entry at head
--   means nothing (its time is newest - span).
-- Entries leave at the front by moving head (compacted once the dead
-- prefix outgrows the live part: amortised O(1) per pruned entry) and at
-- the back by moving tail. Bytes are read with GETRANGE; a small log is
-- written whole with SET (exactly allocated, one call), a larger one has
-- only its changed bytes and header overwritten with SETRANGE, so a call
-- touches only the entries it prunes or reads.

local MAGIC = 'rl\1'
local HEADER = 34
local BLOCKED_MAGIC = 'rl\2'
local BLOCKED_HEADER = 40
local MAX_WINDOW = 31536000000
local MAX_COST = '9223372036854775807'
-- The largest integer a double holds exactly, with every integer below it.
local EXACT = 9007199254740992
local MAX_LIMITS = 8
local WRONGTYPE = 'WRONGTYPE Operation against a key holding the wrong kind of value'

-- Errors travel as tables thrown with error() and are turned into error
-- replies at the top, so every text is exactly the module's.
local function fail(text)
  error({ reply = text }, 0)
end

-- Integers --------------------------------------------------------------

-- A decimal integer the way Redis writes one: optional '-', digits, no
-- leading zero, no '+', within 64 bits. Returns the canonical digits of
-- a positive value (nil for zero, negatives and anything else).
local function positive_digits(word)
  if word:match('^%-[1-9]%d*$') then
    return nil
  end
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

local EXACT_DIGITS = '9007199254740992'

local function exact_number(digits, what)
  if below(EXACT_DIGITS, digits) then
    fail('ERR ' .. what .. ' above ' .. EXACT_DIGITS .. ' cannot be counted exactly by the script twin '
      .. '(Lua numbers are doubles): load the module for larger values')
  end
  return tonumber(digits)
end

-- Arguments -------------------------------------------------------------

local WINDOW_DIGITS = '31536000000'

local function window_range()
  fail('ERR window must be an integer from 1 to ' .. WINDOW_DIGITS .. ' (milliseconds)')
end

local function arity(name)
  fail("ERR wrong number of arguments for '" .. name .. "' command")
end

local LIMIT_OPTIONS = { { 'COST', 'n' }, { 'PRECISION', 'p' }, { 'BLOCK', 'ms' } }
local UNDO_OPTIONS = { { 'COST', 'n' } }

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
      fail("ERR unknown option '" .. word .. "' (the options are " .. listed .. ')')
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
    window_range()
  end
  if not max_word then
    fail('ERR syntax error: window ' .. window_word .. ' has no max')
  end
  local max = positive_digits(max_word)
  if not max then
    fail('ERR max must be an integer from 1 to ' .. MAX_COST)
  end
  return { window = tonumber(window), max_digits = max }
end

-- The request of `limits` with the options' values (words, or nil), checked
-- in the module's order: COST, PRECISION, a window twice, COST above a max,
-- PRECISION above the shortest window. Limits sorted by window; the numbers
-- Lua cannot hold exactly are refused later, by `make_exact`.
local function build_call(limits, options)
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
  if below(smallest_max, cost) then
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

-- The common call, one limit and no option, with numbers a double holds
-- exactly, read straight to what the general path would give (nil for
-- any other, which the general path reads).
local function simple_call(window, max)
  if #window <= 11 and #max <= 15 and window:find('^[1-9]%d*$') and max:find('^[1-9]%d*$') then
    local w = tonumber(window)
    if w <= MAX_WINDOW then
      return { limits = { { window = w, max = tonumber(max) } }, cost = 1, precision = 1, longest = w }
    end
  end
  return nil
end

-- check|peek: limits sorted by window, cost, precision and the longest
-- window, or the module's error for the first thing wrong.
local function parse_limit_call(name, args)
  local simple = #args == 2 and simple_call(args[1], args[2])
  if simple then
    return simple
  end
  if #args < 2 then
    arity(name)
  end
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
  local options = parse_options(args, at, LIMIT_OPTIONS)
  local block = parse_block(options[3])
  local call = make_exact(build_call(limits, options))
  call.block = block
  return call
end

-- Several keys ----------------------------------------------------------------

local MAX_KEYS = 16

-- `numkeys key [key ...]` (FCALL's and EVAL's own keys): 1 to 16 keys,
-- each at most once.
local function check_keys(keys)
  if #keys < 1 or #keys > MAX_KEYS then
    fail('ERR numkeys must be an integer from 1 to ' .. MAX_KEYS)
  end
  local seen = {}
  for _, key in ipairs(keys) do
    if seen[key] then
      fail("ERR key '" .. key .. "' is given more than once")
    end
    seen[key] = true
  end
end

-- Runs `run(...)`; an error it raises names `key` first, as the module's
-- errors about one key of a multi-key call do.
local function about_key(key, run, ...)
  local ok, result = pcall(run, ...)
  if ok then
    return result
  end
  if type(result) == 'table' and result.reply and result.reply:sub(1, 4) == 'ERR ' then
    fail("ERR key '" .. key .. "': " .. result.reply:sub(5))
  end
  error(result, 0)
end

-- One key's call of a multi-key call: its `npairs` pairs from `args[from]`.
local function key_call(args, from, npairs, options)
  local simple = npairs == 1 and not (options[1] or options[2]) and simple_call(args[from], args[from + 1])
  if simple then
    return simple
  end
  local limits = {}
  for i = 1, npairs do
    local at = from + 2 * (i - 1)
    limits[i] = parse_pair(args[at], args[at + 1])
  end
  return build_call(limits, options)
end

-- mcheck|mpeek: each key's call, in key order, as CHECK on that key alone
-- would parse it (COST and PRECISION apply to every key), or the module's
-- error for the first thing wrong; the twin's own refusals after all of them.
local function parse_multi_call(name, keys, args)
  check_keys(keys)
  local starts, counts = {}, {}
  local at = 1
  for position = 1, #keys do
    if not args[at] then
      arity(name)
    end
    local npairs = positive_up_to(args[at], tostring(MAX_LIMITS))
    if not npairs then
      fail('ERR npairs of key ' .. position .. ' must be an integer from 1 to ' .. MAX_LIMITS)
    end
    starts[position], counts[position] = at + 1, tonumber(npairs)
    at = at + 1 + 2 * counts[position]
    if at - 1 > #args then
      arity(name)
    end
  end
  local options = parse_options(args, at, LIMIT_OPTIONS)
  local block = parse_block(options[3])
  local calls = {}
  for position, key in ipairs(keys) do
    calls[position] = about_key(key, key_call, args, starts[position], counts[position], options)
  end
  for position, key in ipairs(keys) do
    if not calls[position].cost then
      about_key(key, make_exact, calls[position])
    end
    calls[position].block = block
  end
  return calls
end

local function parse_undo(args)
  local options = parse_options(args, 1, UNDO_OPTIONS)
  return options[1] and tonumber(cost_digits(options[1])) or 1
end

-- Stored bytes --------------------------------------------------------------

-- A flagged varint: 6 value bits and the flag in the first byte, then 7
-- value bits a byte, low bits first; bit 7 says another byte follows.
local function varint(n, flag)
  local low = n % 64
  n = (n - low) / 64
  if n == 0 then
    return string.char(low * 2 + flag)
  end
  local text = string.char(low * 2 + flag + 128)
  while n >= 128 do
    local b = n % 128
    text = text .. string.char(b + 128)
    n = (n - b) / 128
  end
  return text .. string.char(n)
end

local function encode_entry(gap, cost)
  if cost == 1 then
    return varint(gap, 0)
  end
  return varint(gap, 1) .. varint(cost, 1)
end

-- A log's header as stored: every field's bytes in one string.char.
local function encode_header(log)
  local w, h, t, n, s, c = log.window, log.head, log.tail, log.newest, log.newest - log.oldest, log.total
  local w1 = w % 256; w = (w - w1) / 256
  local w2 = w % 256; w = (w - w2) / 256
  local w3 = w % 256; w = (w - w3) / 256
  local w4 = w % 256; w = (w - w4) / 256
  local h1 = h % 256; h = (h - h1) / 256
  local h2 = h % 256; h = (h - h2) / 256
  local h3 = h % 256; h = (h - h3) / 256
  local t1 = t % 256; t = (t - t1) / 256
  local t2 = t % 256; t = (t - t2) / 256
  local t3 = t % 256; t = (t - t3) / 256
  local n1 = n % 256; n = (n - n1) / 256
  local n2 = n % 256; n = (n - n2) / 256
  local n3 = n % 256; n = (n - n3) / 256
  local n4 = n % 256; n = (n - n4) / 256
  local n5 = n % 256; n = (n - n5) / 256
  local s1 = s % 256; s = (s - s1) / 256
  local s2 = s % 256; s = (s - s2) / 256
  local s3 = s % 256; s = (s - s3) / 256
  local s4 = s % 256; s = (s - s4) / 256
  local c1 = c % 256; c = (c - c1) / 256
  local c2 = c % 256; c = (c - c2) / 256
  local c3 = c % 256; c = (c - c3) / 256
  local c4 = c % 256; c = (c - c4) / 256
  local c5 = c % 256; c = (c - c5) / 256
  local c6 = c % 256; c = (c - c6) / 256
  local fields = string.char(w1, w2, w3, w4, w, h1, h2, h3, h, t1, t2, t3, t, n1, n2, n3, n4, n5, n,
    s1, s2, s3, s4, s, c1, c2, c3, c4, c5, c6, c)
  if log.blocked == 0 then
    return MAGIC .. fields
  end
  local b = log.blocked
  local b1 = b % 256; b = (b - b1) / 256
  local b2 = b % 256; b = (b - b2) / 256
  local b3 = b % 256; b = (b - b3) / 256
  local b4 = b % 256; b = (b - b4) / 256
  local b5 = b % 256; b = (b - b5) / 256
  return BLOCKED_MAGIC .. fields .. string.char(b1, b2, b3, b4, b5, b)
end

-- The header's size for the log as it is now (a block needs the long one).
local function header_size(log)
  return log.blocked == 0 and HEADER or BLOCKED_HEADER
end

local function le(a, b, c, d, e, f, g)
  return ((((((g or 0) * 256 + (f or 0)) * 256 + (e or 0)) * 256 + (d or 0)) * 256 + c) * 256 + b) * 256 + a
end

-- Lazily fetched bytes of the stored value: one contiguous segment
-- [lo, hi), grown with GETRANGE at either end by at least its own size
-- (so reading k adjacent bytes costs O(k) in all), or started afresh
-- around a byte far from it (a log's two ends are read, not its middle).
local CHUNK = 64

local function fetch_byte(log, offset)
  if offset < log.head or offset >= log.tail then
    fail(WRONGTYPE)
  end
  local size = math.max(CHUNK, log.hi - log.lo)
  if offset >= log.hi + size or offset < log.lo - size then
    log.lo = math.max(log.head, offset - CHUNK + 1)
    log.hi = math.min(log.tail, offset + CHUNK)
    log.segment = redis.call('GETRANGE', log.key, log.lo, log.hi - 1)
  elseif offset >= log.hi then
    local hi = math.min(log.tail, math.max(offset + 1, log.hi + size))
    log.segment = log.segment .. redis.call('GETRANGE', log.key, log.hi, hi - 1)
    log.hi = hi
  elseif offset < log.lo then
    local lo = math.max(log.head, math.min(offset, log.lo - size))
    log.segment = redis.call('GETRANGE', log.key, lo, log.lo - 1) .. log.segment
    log.lo = lo
  end
  if #log.segment ~= log.hi - log.lo then
    fail(WRONGTYPE)
  end
  return log.segment:byte(offset - log.lo + 1)
end

local function byte_at(log, offset)
  local lo = log.lo
  if offset >= lo and offset < log.hi and offset >= log.head and offset < log.tail then
    return log.segment:byte(offset - lo + 1)
  end
  return fetch_byte(log, offset)
end

-- The flagged varint that starts at `offset`: value, flag, next offset.
local function varint_at(log, offset)
  local b = byte_at(log, offset)
  local flag = b % 2
  local n = ((b % 128) - flag) / 2
  local scale = 64
  while b >= 128 do
    offset = offset + 1
    b = byte_at(log, offset)
    n = n + (b % 128) * scale
    scale = scale * 128
  end
  return n, flag, offset + 1
end

-- The flagged varint that ends just before `finish`: value, flag, start.
local function varint_before(log, finish)
  local start = finish - 1
  while start > log.head and byte_at(log, start - 1) >= 128 do
    start = start - 1
  end
  local n, flag = varint_at(log, start)
  return n, flag, start
end

-- Entries, walked from the oldest: `front(log)` gives a cursor whose
-- fields are the entry's time, cost and the offsets around it.
local function entry_at(log, offset, previous_at)
  local gap, flag, after = varint_at(log, offset)
  local cost = 1
  if flag == 1 then
    local _
    cost, _, after = varint_at(log, after)
  end
  local at = previous_at and previous_at + gap or log.oldest
  return { at = at, cost = cost, gap = gap, start = offset, finish = after }
end

-- The oldest entry (read once per call: the log's front is only moved
-- by recording, which reads no further).
local function front(log)
  if log.head >= log.tail then
    return nil
  end
  local first = log.first
  if not first then
    first = entry_at(log, log.head, nil)
    log.first = first
  end
  return first
end

local function next_entry(log, entry)
  if entry.finish >= log.tail then
    return nil
  end
  return entry_at(log, entry.finish, entry.at)
end

-- Entries walked from the newest: the entry that ends at `finish` and
-- whose time is `at`.
local function entry_before(log, finish, at)
  if finish <= log.head then
    return nil
  end
  local n, flag, start = varint_before(log, finish)
  local gap, cost = n, 1
  if flag == 1 then
    local _
    cost = n
    gap, _, start = varint_before(log, start)
  end
  return { at = at, cost = cost, gap = gap, start = start, finish = finish }
end

-- The newest entry (read once per call, like the oldest).
local function back(log)
  local last = log.last
  if not last then
    last = entry_before(log, log.tail, log.newest)
    log.last = last
  end
  return last
end

local function previous_entry(log, entry)
  return entry_before(log, entry.start, entry.at - entry.gap)
end

-- The key's log, or nil if the key does not exist; WRONGTYPE for any
-- other value, as the module answers.
local function open(key)
  local reply = redis.pcall('GETRANGE', key, 0, BLOCKED_HEADER + CHUNK - 1)
  if type(reply) == 'table' and reply.err then
    fail(reply.err)
  end
  if reply == '' then
    -- Missing, or an empty string (which is not a limiter).
    if redis.call('EXISTS', key) == 1 then
      fail(WRONGTYPE)
    end
    return nil
  end
  local magic = reply:sub(1, 3)
  local base = (magic == MAGIC and HEADER) or (magic == BLOCKED_MAGIC and BLOCKED_HEADER) or nil
  if not base or #reply < base then
    fail(WRONGTYPE)
  end
  -- The header's fields, low byte first (see the top of this file).
  local _, _, _, w1, w2, w3, w4, w5, h1, h2, h3, h4, t1, t2, t3, t4, n1, n2, n3, n4, n5, n6,
    s1, s2, s3, s4, s5, c1, c2, c3, c4, c5, c6, c7, b1, b2, b3, b4, b5, b6 = reply:byte(1, base)
  local newest = le(n1, n2, n3, n4, n5, n6)
  local log = {
    key = key,
    window = le(w1, w2, w3, w4, w5),
    head = le(h1, h2, h3, h4),
    tail = le(t1, t2, t3, t4),
    newest = newest,
    oldest = newest - le(s1, s2, s3, s4, s5),
    total = le(c1, c2, c3, c4, c5, c6, c7),
    blocked = b1 and le(b1, b2, b3, b4, b5, b6) or 0,
    base = base,
    segment = reply,
    lo = 0,
    hi = #reply,
  }
  -- Entries with a positive cost sum, or none in a key that is blocked.
  local entries = log.tail > log.head
  if log.head < base or log.tail < log.head or log.total > EXACT or entries ~= (log.total > 0)
    or (base == BLOCKED_HEADER) ~= (log.blocked > 0) or not (entries or log.blocked > 0) then
    fail(WRONGTYPE)
  end
  return log
end

local function has_entries(log)
  return log.tail > log.head
end

-- When the key expires: when its newest entry leaves its window, or when
-- its block ends, whichever is later.
local function expiry_of(log)
  local own = has_entries(log) and log.newest + log.window or 0
  return math.max(own, log.blocked)
end

-- The server's clock in ms: the only clock the twin reads.
local function clock()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

-- The decision, as src/limiter.rs makes it ------------------------------------

-- One limit's window when the log's own window is no longer: from the
-- front, against the cost sum, skipping only what expired.
local function from_the_front(log, horizon, limit, cost)
  local entry = front(log)
  local expired = 0
  while entry and entry.at <= horizon do
    expired = expired + entry.cost
    entry = next_entry(log, entry)
  end
  local used = log.total - expired
  local room = limit.max - cost
  local retry = 0
  if used > room then
    local over, leaving = used - room, 0
    while entry do
      leaving = leaving + entry.cost
      if leaving >= over then
        retry = entry.at - horizon
        break
      end
      entry = next_entry(log, entry)
    end
  end
  return used, retry
end

-- A shorter window: the entries in it, newest first, no more.
local function from_the_back(log, horizon, limit, cost)
  local room = limit.max - cost
  local used, last_to_leave = 0, nil
  local entry = back(log)
  while entry and entry.at > horizon do
    used = used + entry.cost
    if not last_to_leave and used > room then
      last_to_leave = entry.at
    end
    entry = previous_entry(log, entry)
  end
  return used, last_to_leave and last_to_leave - horizon or 0
end

-- [fits, remaining before, remaining after, retry, reset] at `now`.
local function standing(log, now, call)
  local fits, remaining, after, retry = true, nil, nil, 0
  for _, limit in ipairs(call.limits) do
    local used, wait = 0, 0
    if log then
      local horizon = now - limit.window
      if log.window <= limit.window then
        used, wait = from_the_front(log, horizon, limit, call.cost)
      else
        used, wait = from_the_back(log, horizon, limit, call.cost)
      end
    end
    local room = used < limit.max and limit.max - used or 0
    fits = fits and used <= limit.max - call.cost
    remaining = math.min(remaining or room, room)
    local left = room > call.cost and room - call.cost or 0
    after = math.min(after or left, left)
    retry = math.max(retry, wait)
  end
  local reset = 0
  if log and has_entries(log) then
    local horizon = now - call.longest
    if log.newest > horizon then
      reset = log.newest - horizon
    end
  end
  return { fits = fits, remaining = remaining, after = after, retry = retry, reset = reset }
end

-- The call's time on a key: the clock (read once per call), or the key's
-- newest entry's time if later, so time never runs backwards for a key.
local function decision_time(log, now)
  if log and has_entries(log) and log.newest > now then
    return log.newest
  end
  return now
end

local function read_clock()
  return math.max(clock(), 0)
end

-- The block's end if the key is blocked at `now`.
local function block_at(log, now)
  if log and log.blocked > now then
    return log.blocked
  end
  return nil
end

-- What a call on a key blocked for `rest` more ms sees: denied, no room,
-- a wait and a reset of at least the rest of the block.
local function under_block(seen, rest)
  seen.fits, seen.remaining = false, 0
  seen.retry = math.max(seen.retry, rest)
  seen.reset = math.max(seen.reset, rest)
  return seen
end

local function reply(seen)
  if seen.fits then
    return { 1, seen.remaining, 0, seen.reset }
  end
  return { 0, seen.remaining, seen.retry, seen.reset }
end

-- Recording --------------------------------------------------------------------

local function cell(t, precision)
  return math.floor(t / precision)
end

-- A log whose entries take at most this many bytes is written whole
-- with SET, which allocates it exactly (SETRANGE would grow the string
-- greedily, to twice its size) and costs one call instead of three.
local SMALL = 512

-- The live entries' bytes before `offset`, from what was read if it holds
-- them.
local function live_before(log, offset)
  if offset <= log.head then
    return ''
  end
  if log.lo <= log.head and offset <= log.hi then
    return log.segment:sub(log.head - log.lo + 1, offset - log.lo)
  end
  return redis.call('GETRANGE', log.key, log.head, offset - 1)
end

-- Writes the entries `bytes` at `from` (the end of the live entries
-- after them), the header and the expiry (`expires`, or nil to keep it):
-- a small log, or one whose dead prefix outgrew its live entries (each
-- pruned byte is then copied once at most), is written whole; a larger
-- one has only its changed bytes and its header overwritten.
local function write(log, from, bytes, expires)
  local live = from - log.head
  local dead = log.head - log.base
  local size = header_size(log)
  -- A header that changes size (a block starts or ends) moves the entries.
  if live + #bytes <= SMALL or (dead > CHUNK and dead > live) or size ~= log.base then
    local entries = live_before(log, from) .. bytes
    log.head, log.tail, log.base = size, size + #entries, size
    local value = encode_header(log) .. entries
    if expires then
      redis.call('SET', log.key, value, 'PXAT', expires)
    else
      redis.call('SET', log.key, value, 'KEEPTTL')
    end
    return
  end
  log.tail = from + #bytes
  if #bytes > 0 then
    redis.call('SETRANGE', log.key, from, bytes)
  end
  redis.call('SETRANGE', log.key, 0, encode_header(log))
  if expires then
    redis.call('PEXPIREAT', log.key, expires)
  end
end

-- A new key holding one entry.
local function create(key, at, window, cost)
  local log = { key = key, window = window, head = HEADER, tail = HEADER, newest = at, oldest = at,
    total = cost, blocked = 0, base = HEADER, lo = 0, hi = 0, segment = '' }
  write(log, HEADER, encode_entry(0, cost), at + window)
end

-- What recording at `at` keeps of the log (as TimeLog::record: widen the
-- window, prune what expired under it): the window, the oldest entry kept
-- (nil if none) and the cost it holds. Refuses, before anything is
-- written, a sum Lua could not count exactly.
local function plan_record(log, at, call)
  -- A log with no entry (a blocked key a refund emptied) keeps no window.
  if not log or not has_entries(log) then
    return { window = call.longest }
  end
  local window = math.max(log.window, call.longest)
  local horizon = at - window
  local entry = front(log)
  local pruned = 0
  while entry and entry.at <= horizon do
    pruned = pruned + entry.cost
    entry = next_entry(log, entry)
  end
  local total = log.total - pruned
  if total > EXACT - call.cost then
    fail('ERR this key would hold more than ' .. EXACT_DIGITS .. ' units of cost, which the script twin '
      .. 'cannot count exactly: nothing was recorded (load the module, or use smaller units)')
  end
  return { window = window, entry = entry, total = total }
end

-- Records an allowed request as planned: join the newest entry if it lies
-- in the same precision cell, else append.
local function record(key, log, at, call, plan)
  local entry = plan.entry
  if not entry then
    create(key, at, plan.window, call.cost)
    return
  end
  log.window = plan.window
  log.head, log.oldest, log.total = entry.start, entry.at, plan.total + call.cost
  -- Allowed, so any block has ended by `at`: recording clears it.
  log.blocked = 0
  local newest = back(log)
  local from, bytes
  if cell(newest.at, call.precision) == cell(at, call.precision) then
    -- The entry at head keeps a meaningless gap: its time is the oldest.
    local gap = 0
    if newest.start == log.head then
      log.oldest = at
    else
      gap = newest.gap + (at - newest.at)
    end
    from, bytes = newest.start, encode_entry(gap, newest.cost + call.cost)
  else
    from, bytes = log.tail, encode_entry(at - newest.at, call.cost)
  end
  log.newest = at
  write(log, from, bytes, at + plan.window)
end

-- What a denial writes: a longest window longer than the log's is
-- registered (decision 1 of an earlier round: the key then lives until its
-- newest entry expires under it), and `block_until`, if given, starts a
-- block. Nothing else is written: a denial that does neither is read-only.
-- A log with no entry has no window to keep.
local function deny(log, window, block_until)
  if not log then
    return
  end
  local widens = has_entries(log) and window > log.window
  if not (widens or block_until) then
    return
  end
  log.window = widens and window or log.window
  log.blocked = block_until or log.blocked
  if header_size(log) ~= log.base then
    write(log, log.tail, '', expiry_of(log))
    return
  end
  redis.call('SETRANGE', log.key, 0, encode_header(log))
  redis.call('PEXPIREAT', log.key, expiry_of(log))
end

-- UNDO: takes back up to `units` of the newest cost; a log with no entry
-- (a blocked key a refund emptied) has none, and nothing is written.
local function refund(log, units)
  if not has_entries(log) then
    return 0
  end
  local removed = 0
  local entry = back(log)
  while entry and removed < units do
    local taken = math.min(entry.cost, units - removed)
    removed = removed + taken
    if taken < entry.cost then
      log.total = log.total - removed
      write(log, entry.start, encode_entry(entry.gap, entry.cost - taken), nil)
      return removed
    end
    log.tail = entry.start
    entry = previous_entry(log, entry)
    if entry then
      log.newest = entry.at
    end
  end
  if not entry then
    log.total = 0
    if log.blocked > read_clock() then
      -- Kept until its block ends.
      write(log, log.tail, '', log.blocked)
    else
      redis.call('DEL', log.key)
    end
    return removed
  end
  log.total = log.total - removed
  write(log, log.tail, '', nil)
  return removed
end

-- The operations ------------------------------------------------------------

-- A key's standing at `now`, under its block if it is blocked.
local function seen_at(log, now, call)
  local seen = standing(log, now, call)
  local ends = block_at(log, now)
  if ends then
    return under_block(seen, ends - now), true
  end
  return seen, false
end

local function check(key, args)
  local call = parse_limit_call('ratelimit.check', args)
  local log = open(key)
  local now = decision_time(log, read_clock())
  local seen, blocked = seen_at(log, now, call)
  if not seen.fits then
    -- Denied by its limits, with BLOCK: the key is blocked from now on.
    local block_until = not blocked and call.block and now + call.block or nil
    if block_until then
      under_block(seen, call.block)
    end
    deny(log, call.longest, block_until)
    return reply(seen)
  end
  record(key, log, now, call, plan_record(log, now, call))
  return { 1, seen.after, 0, call.longest }
end

local function peek(key, args)
  local call = parse_limit_call('ratelimit.peek', args)
  local log = open(key)
  return reply((seen_at(log, decision_time(log, read_clock()), call)))
end

local function undo(key, args)
  local units = parse_undo(args)
  local log = open(key)
  if not log then
    return 0
  end
  return refund(log, units)
end

-- UNBLOCK: lifts a block in force, keeping the history; 1 if it did.
local function unblock(key, args)
  if #args > 0 then
    arity('ratelimit.unblock')
  end
  local log = open(key)
  local now = decision_time(log, read_clock())
  if not block_at(log, now) then
    return 0
  end
  log.blocked = 0
  if has_entries(log) and log.newest + log.window > now then
    write(log, log.tail, '', log.newest + log.window)
  else
    -- Nothing live is left without the block.
    redis.call('DEL', key)
  end
  return 1
end

-- Every key of a multi-key call opened (WRONGTYPE for the first key of
-- another type) and seen at its own decision time, one clock for all,
-- under its block if it is blocked.
local function survey(name, keys, args)
  local calls = parse_multi_call(name, keys, args)
  local clock_now = read_clock()
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

-- MCHECK: every key is read and every write checked before any key
-- changes; then every key records the request (allowed), or (denied)
-- keeps its longest window as a denied CHECK's does and, with BLOCK, is
-- blocked if its own limits denied and it was not blocked already.
local function mcheck(keys, args)
  local keyed = survey('ratelimit.mcheck', keys, args)
  local allowed = true
  for _, k in ipairs(keyed) do
    allowed = allowed and k.seen.fits
  end
  if not allowed then
    for _, k in ipairs(keyed) do
      local block = k.call.block
      k.block_until = block and not k.seen.fits and not k.blocked and k.now + block or nil
      if k.block_until then
        under_block(k.seen, block)
      end
    end
    for _, k in ipairs(keyed) do
      deny(k.log, k.call.longest, k.block_until)
    end
    return joint(keyed, false)
  end
  for _, k in ipairs(keyed) do
    k.plan = about_key(k.key, plan_record, k.log, k.now, k.call)
  end
  for _, k in ipairs(keyed) do
    record(k.key, k.log, k.now, k.call, k.plan)
  end
  return joint(keyed, false)
end

local function mpeek(keys, args)
  return joint(survey('ratelimit.mpeek', keys, args), true)
end

-- MUNDO: every key's type is checked before any is refunded.
local function mundo(keys, args)
  check_keys(keys)
  local units = parse_undo(args)
  local logs = {}
  for i, key in ipairs(keys) do
    logs[i] = open(key) or false
  end
  local removed = {}
  for i, log in ipairs(logs) do
    removed[i] = log and refund(log, units) or 0
  end
  return removed
end

-- `one_key` operations take exactly one key (the module's argument 1);
-- `read_only` ones write nothing.
local OPERATIONS = {
  check = { run = check, name = 'ratelimit.check', one_key = true },
  peek = { run = peek, name = 'ratelimit.peek', one_key = true, read_only = true },
  undo = { run = undo, name = 'ratelimit.undo', one_key = true },
  unblock = { run = unblock, name = 'ratelimit.unblock', one_key = true },
  mcheck = { run = mcheck, name = 'ratelimit.mcheck' },
  mpeek = { run = mpeek, name = 'ratelimit.mpeek', read_only = true },
  mundo = { run = mundo, name = 'ratelimit.mundo' },
}

local function run_operation(operation, keys, args)
  if not operation.one_key then
    return operation.run(keys, args)
  end
  if #keys ~= 1 then
    arity(operation.name)
  end
  return operation.run(keys[1], args)
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

-- The script form: ARGV[1] names the operation.
local function dispatch(keys, argv)
  local operation = OPERATIONS[argv[1] or '']
  if not operation then
    return redis.error_reply("ERR unknown operation '" .. tostring(argv[1])
      .. "' (the script twin's operations are check, peek, undo, mcheck, mpeek, mundo and unblock)")
  end
  local args = {}
  for i = 2, #argv do
    args[i - 1] = argv[i]
  end
  return call(operation, keys, args)
end

-- The functions, `ratelimit_<operation>`, in a fixed order. (The top level
-- of a library may not touch globals such as `ipairs` on Redis 7.0.)
local FUNCTIONS = { 'check', 'peek', 'undo', 'unblock', 'mcheck', 'mpeek', 'mundo' }

if redis.register_function then
  for i = 1, #FUNCTIONS do
    local operation = OPERATIONS[FUNCTIONS[i]]
    redis.register_function({
      function_name = 'ratelimit_' .. FUNCTIONS[i],
      callback = function(keys, args)
        return call(operation, keys, args)
      end,
      -- Reads only: FCALL_RO, and so replicas, may run them.
      flags = operation.read_only and { 'no-writes' } or nil,
    })
  end
else
  return dispatch(KEYS, ARGV)
end
