//! The rate limiters compared: this module, its script twin
//! (twin/ratelimit.lua), the classic atomic Lua sliding-log script, and
//! the client-side pipeline many guides recommend.

use harness::Random;
use redis::Connection;
use std::time::{SystemTime, UNIX_EPOCH};

/// The classic atomic sliding log: a sorted set per key, pruned, counted
/// and added to in one script, on the server's clock (`TIME`). Returns
/// `{allowed, remaining, now_ms}`.
pub const LUA_SLIDING_LOG: &str = r#"
local key = KEYS[1]
local window = tonumber(ARGV[1])
local max = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', key, 0, now - window)
local count = redis.call('ZCARD', key)
if count < max then
  redis.call('ZADD', key, now, t[1] .. t[2] .. ':' .. math.random())
  redis.call('PEXPIRE', key, window)
  return {1, max - count - 1, now}
end
return {0, 0, now}
"#;

pub fn load_script(con: &mut Connection) -> String {
    redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(LUA_SLIDING_LOG)
        .query(con)
        .expect("SCRIPT LOAD")
}

/// Loads the script twin both ways (the function library, and the EVAL
/// form into the script cache); returns the script's SHA1.
pub fn load_twin(con: &mut Connection) -> String {
    redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(harness::twin_library())
        .query::<String>(con)
        .expect("FUNCTION LOAD");
    redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(harness::twin_script())
        .query(con)
        .expect("SCRIPT LOAD")
}

pub fn client_clock_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The guide's member: `req:<ms>:<Math.random()>`.
pub fn guide_member(now: i64, random: u64) -> String {
    format!("req:{now}:0.{:016}", random % 10_000_000_000_000_000)
}

/// `ZADD key` with `count` of the guide's members, all at `now`: how the
/// sorted-set rows are filled.
pub fn guide_zadd(key: &str, now: i64, count: u64, random: &mut Random) -> redis::Cmd {
    let mut zadd = redis::cmd("ZADD");
    zadd.arg(key);
    for _ in 0..count {
        zadd.arg(now).arg(guide_member(now, random.next_u64()));
    }
    zadd
}

/// The client-side pipeline from the guide, for a batch of keys: per key
/// ZREMRANGEBYSCORE, ZCARD, ZADD, EXPIRE in one round trip; then, in a
/// second one, `ZREMRANGEBYRANK key -1 -1` for each request that was over
/// the limit. The client's clock is off by `clock_skew_ms`, as an app
/// server's may be. Returns, per key, whether it was allowed and the time
/// the client used.
pub fn naive_pipeline(
    con: &mut Connection,
    keys: &[String],
    (window_ms, max): (i64, i64),
    clock_skew_ms: i64,
    random: &mut Random,
) -> Vec<(bool, i64)> {
    let now = client_clock_ms() + clock_skew_ms;
    let mut pipe = redis::pipe();
    for key in keys {
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(key)
            .arg(0)
            .arg(now - window_ms)
            .ignore();
        pipe.cmd("ZCARD").arg(key);
        pipe.cmd("ZADD")
            .arg(key)
            .arg(now)
            .arg(guide_member(now, random.next_u64()))
            .ignore();
        pipe.cmd("EXPIRE")
            .arg(key)
            .arg((window_ms + 999) / 1000)
            .ignore();
    }
    let counts: Vec<i64> = pipe.query(con).expect("naive pipeline");
    let verdicts: Vec<(bool, i64)> = counts.iter().map(|&count| (count < max, now)).collect();
    let mut fixups = redis::pipe();
    for (key, (allowed, _)) in keys.iter().zip(&verdicts) {
        if !allowed {
            fixups
                .cmd("ZREMRANGEBYRANK")
                .arg(key)
                .arg(-1)
                .arg(-1)
                .ignore();
        }
    }
    if verdicts.iter().any(|(allowed, _)| !allowed) {
        fixups.query::<()>(con).expect("naive fixups");
    }
    verdicts
}
