//! The script twin run in-process: the unmodified twin/ratelimit.lua, in
//! the EVAL form, in the Lua 5.1 that Redis and Valkey embed, over a
//! small keyspace written in Lua that answers the few commands the twin
//! sends (GET, GETRANGE, STRLEN, SETRANGE, SET .. PXAT|KEEPTTL, PEXPIREAT, EXISTS, DEL,
//! TIME) and expires keys as Redis does (its token bucket, `gcra`, included). Its TIME reads a clock the test sets, so
//! the timed fields can be held to a model: the twin itself never takes
//! a clock from its caller.

use crate::backend::twin_script;
use crate::corpus::{BucketState, Held, KeyState, Reply};
use crate::twin_format;
use mlua::{Function, Lua, Value};

/// The keyspace and `redis` table the twin sees.
const MOCK: &str = r#"
clock = { ms = 0 }
local store, expires = {}, {}
local function live(key)
  local at = expires[key]
  if at and clock.ms > at then
    store[key], expires[key] = nil, nil
  end
  return store[key]
end
local commands = {}
function commands.TIME()
  local seconds = math.floor(clock.ms / 1000)
  -- Microseconds within the millisecond, which the twin must drop.
  return { tostring(seconds), tostring((clock.ms - seconds * 1000) * 1000 + 999) }
end
function commands.GETRANGE(key, from, to)
  local value = live(key) or ''
  from, to = tonumber(from), math.min(tonumber(to), #value - 1)
  if from > to then
    return ''
  end
  return value:sub(from + 1, to + 1)
end
function commands.STRLEN(key)
  return #(live(key) or '')
end
function commands.GET(key)
  return live(key) or false
end
function commands.SETRANGE(key, offset, bytes)
  local value = live(key) or ''
  offset = tonumber(offset)
  if #value < offset then
    value = value .. string.rep('\0', offset - #value)
  end
  store[key] = value:sub(1, offset) .. bytes .. value:sub(offset + #bytes + 1)
  return #store[key]
end
function commands.SET(key, value, option, at)
  if option == 'KEEPTTL' then
    assert(live(key), 'KEEPTTL on a live key')
    store[key] = value
  else
    assert(option == 'PXAT', 'the twin sets an expiry with every new value')
    store[key], expires[key] = value, tonumber(at)
  end
  return { ok = 'OK' }
end
function commands.PEXPIREAT(key, at)
  if not live(key) then
    return 0
  end
  expires[key] = tonumber(at)
  return 1
end
function commands.EXISTS(key)
  return live(key) and 1 or 0
end
function commands.DEL(key)
  local existed = live(key) and 1 or 0
  store[key], expires[key] = nil, nil
  return existed
end
redis = {}
function redis.call(name, ...)
  local command = commands[name]
  assert(command, 'the mock has no ' .. tostring(name))
  return command(...)
end
redis.pcall = redis.call
function redis.error_reply(text)
  return { err = text }
end
-- The test's own look at a key: what a call would see, without the
-- expiry on access a call does.
local function seen(key)
  local at = expires[key]
  if at and clock.ms > at then
    return nil
  end
  return store[key]
end
function exists(key)
  return seen(key) ~= nil
end
function value(key)
  return seen(key)
end
function expiry(key)
  return seen(key) and expires[key]
end
"#;

pub struct EmbeddedTwin {
    lua: Lua,
    script: Function,
    /// The bytes of entries a page of its paged form holds.
    pub page: usize,
}

impl Default for EmbeddedTwin {
    fn default() -> Self {
        Self::new()
    }
}

impl EmbeddedTwin {
    pub fn new() -> EmbeddedTwin {
        Self::from_source(&twin_script())
    }

    /// The twin with pages of `bytes` bytes of entries instead of its own
    /// size, so that short tests reach what long logs reach: many sealed
    /// pages, a ring that wraps and grows, refunds across pages.
    /// With `rewrite` 0, every new slot extends the value by SETRANGE, as
    /// only values past 64 KB do otherwise.
    pub fn with_page(bytes: usize, rewrite: usize) -> EmbeddedTwin {
        let mut script = twin_script();
        for (constant, value) in [
            (
                "local PAGE, PAGE_HEAD = 128, 17",
                format!("local PAGE, PAGE_HEAD = {bytes}, 17"),
            ),
            (
                "local REWRITE = 65536",
                format!("local REWRITE = {rewrite}"),
            ),
        ] {
            assert!(
                script.contains(constant),
                "twin/ratelimit.lua says {constant:?}"
            );
            script = script.replace(constant, &value);
        }
        EmbeddedTwin {
            page: bytes,
            ..Self::from_source(&script)
        }
    }

    fn from_source(source: &str) -> EmbeddedTwin {
        let lua = Lua::new();
        lua.load(MOCK).exec().expect("the mock keyspace");
        let script = lua
            .load(source)
            .set_name("twin/ratelimit.lua")
            .into_function()
            .expect("twin/ratelimit.lua compiles as Lua 5.1");
        EmbeddedTwin {
            lua,
            script,
            page: crate::twin_format::PAGE,
        }
    }

    /// Sets the clock TIME reads, in ms since the epoch.
    pub fn set_clock(&self, ms: i64) {
        let clock: mlua::Table = self.lua.globals().get("clock").expect("clock");
        clock.set("ms", ms).expect("set the clock");
    }

    /// Runs `EVAL <twin> 1 key operation args...`.
    pub fn call(&self, key: &str, operation: &str, args: &[String]) -> Reply {
        self.call_keys(&[key], operation, args)
    }

    /// Runs `EVAL <twin> numkeys key [key ...] operation args...`.
    pub fn call_keys(&self, keys: &[&str], operation: &str, args: &[String]) -> Reply {
        let globals = self.lua.globals();
        globals.set("KEYS", keys.to_vec()).expect("KEYS");
        let mut argv = vec![operation.to_string()];
        argv.extend(args.iter().cloned());
        globals.set("ARGV", argv).expect("ARGV");
        let reply: Value = self.script.call(()).unwrap_or_else(|e| {
            panic!("the twin raised an error on {keys:?} {operation} {args:?}: {e}")
        });
        let integers = |table: &mlua::Table, count: usize| -> Vec<i64> {
            (1..=count)
                .map(|i| table.get::<f64>(i).expect("an integer field") as i64)
                .collect()
        };
        match reply {
            Value::Table(table) => {
                if let Ok(text) = table.get::<String>("err") {
                    return Reply::Error(text);
                }
                // MUNDO's integers, one per key; GCRA's five.
                if operation == "gcra" {
                    let fields = integers(&table, 5).try_into().expect("5 fields");
                    return Reply::Bucket(fields);
                }
                if operation == "mundo" {
                    return Reply::Integers(integers(&table, table.raw_len()));
                }
                let fields = integers(&table, 4).try_into().expect("4 fields");
                match table.raw_len() {
                    4 => Reply::Decision(fields),
                    5 => {
                        let denied: mlua::Table = table.get(5).expect("the denying keys");
                        Reply::Joint(fields, integers(&denied, denied.raw_len()))
                    }
                    other => panic!("a reply of {other} fields"),
                }
            }
            Value::Number(n) => Reply::Integer(n as i64),
            Value::Integer(n) => Reply::Integer(n),
            other => panic!("unexpected reply {other:?}"),
        }
    }

    /// Sends a contract call, written as the module's words, in the
    /// twin's form (`twin_form`); None if it has none.
    pub fn send(&self, call: &[String]) -> Option<Reply> {
        let (keys, operation, args) = twin_form(call)?;
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        Some(self.call_keys(&keys, &operation, &args))
    }

    /// The key as the corpus writes a state (times less `epoch`): its
    /// stored value decoded (a log or a token bucket), and its expiry.
    pub fn state(&self, key: &str, epoch: i64) -> Result<Option<Held>, String> {
        let Some(value) = self.value(key) else {
            return Ok(None);
        };
        let expires = self.expires(key).ok_or("a key without an expiry")? - epoch;
        if value.starts_with(&TwinBucket::MAGIC) {
            let bucket = TwinBucket::decode(&value)?;
            return Ok(Some(Held::Bucket(BucketState {
                at: bucket.at - epoch,
                period: bucket.period,
                level: bucket.level,
                expires,
            })));
        }
        let log = twin_format::decode_paged_by(&value, self.page).map_err(|e| e.to_string())?;
        Ok(Some(Held::Log(KeyState {
            window: if log.entries.is_empty() {
                0
            } else {
                log.window
            },
            entries: log.entries.iter().map(|&(at, c)| (at - epoch, c)).collect(),
            blocked_until: match log.blocked_until {
                0 => 0,
                at => at - epoch,
            },
            expires,
        })))
    }

    /// Whether the key exists at the clock's time.
    pub fn exists(&self, key: &str) -> bool {
        let exists: Function = self.lua.globals().get("exists").expect("exists");
        exists.call(key).expect("exists")
    }

    /// The last moment the key exists (its PXAT), if it has an expiry.
    pub fn expires(&self, key: &str) -> Option<i64> {
        let expires: Function = self.lua.globals().get("expiry").expect("expiry");
        expires.call(key).expect("expiry")
    }

    /// The token bucket the key holds (None if it does not exist, an
    /// error if it holds anything but the twin's 21-byte bucket).
    pub fn bucket(&self, key: &str) -> Result<Option<TwinBucket>, String> {
        self.value(key).map(|v| TwinBucket::decode(&v)).transpose()
    }

    /// The key's stored bytes.
    pub fn value(&self, key: &str) -> Option<Vec<u8>> {
        let value: Function = self.lua.globals().get("value").expect("value");
        let bytes: Option<mlua::String> = value.call(key).expect("value");
        bytes.map(|b| b.as_bytes().to_vec())
    }
}

/// A token bucket as the twin stores it (twin/ratelimit.lua's header):
/// magic `rl\6`, then, little-endian, the time of the last charge (6
/// bytes), that charge's period in ms (5) and the tokens held then in
/// `1 / period` tokens (7): 21 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TwinBucket {
    pub at: i64,
    pub period: u64,
    pub level: u64,
}

impl TwinBucket {
    pub const MAGIC: [u8; 3] = *b"rl\x06";
    pub const LEN: usize = 21;

    pub fn decode(bytes: &[u8]) -> Result<TwinBucket, String> {
        if bytes.len() != Self::LEN || bytes[..3] != Self::MAGIC {
            return Err(format!("not a twin bucket: {bytes:?}"));
        }
        let le = |range: std::ops::Range<usize>| {
            bytes[range]
                .iter()
                .rev()
                .fold(0u64, |n, &b| n << 8 | u64::from(b))
        };
        Ok(TwinBucket {
            at: le(3..9) as i64,
            period: le(9..14),
            level: le(14..21),
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Self::MAGIC.to_vec();
        bytes.extend(&(self.at as u64).to_le_bytes()[..6]);
        bytes.extend(&self.period.to_le_bytes()[..5]);
        bytes.extend(&self.level.to_le_bytes()[..7]);
        bytes
    }
}

/// The twin's operation for a contract call, if it has one: the module's
/// command name after `RATELIMIT.`, in lower case.
pub fn twin_operation(call: &[String]) -> Option<String> {
    let name = call.first()?.to_ascii_lowercase();
    let operation = name.strip_prefix("ratelimit.")?;
    [
        "check", "peek", "undo", "unblock", "mcheck", "mpeek", "mundo", "gcra", "charge", "mcharge",
    ]
    .contains(&operation)
    .then(|| operation.to_string())
}

/// A contract call as the twin is sent it: its keys, its operation and
/// the words after the keys; None where FCALL itself would refuse the
/// call's numkeys (not a number as the server writes it, or more keys
/// than words).
pub fn twin_form(call: &[String]) -> Option<(Vec<String>, String, Vec<String>)> {
    let operation = twin_operation(call)?;
    let several = operation.starts_with('m');
    let count = match several {
        false => call.len().min(2) - 1,
        true => {
            let numkeys = call.get(1)?;
            let canonical = numkeys == "0" || !numkeys.starts_with('0');
            let count: usize = numkeys.parse().ok().filter(|_| canonical)?;
            if count > call.len() - 2 {
                return None;
            }
            count
        }
    };
    let first = if several { 2 } else { 1 };
    let keys = call[first..first + count].to_vec();
    Some((keys, operation, call[first + count..].to_vec()))
}
