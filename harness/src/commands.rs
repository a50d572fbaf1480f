//! Sending commands: ones that must succeed, ones that must fail, and
//! the module's own.

use redis::{ConnectionLike, Value};

/// The words as one command.
pub fn command(words: &[&str]) -> redis::Cmd {
    let mut cmd = redis::cmd(words[0]);
    for word in &words[1..] {
        cmd.arg(*word);
    }
    cmd
}

/// Runs a command that must succeed.
pub fn run<T: redis::FromRedisValue>(con: &mut impl ConnectionLike, words: &[&str]) -> T {
    command(words)
        .query(con)
        .unwrap_or_else(|e| panic!("{words:?} failed: {e}"))
}

/// Runs a command that must fail, and returns its error line as sent.
pub fn error(con: &mut impl ConnectionLike, words: &[&str]) -> String {
    error_line(command(words).query::<Value>(con), &format!("{words:?}"))
}

/// The error line of a reply that must be an error (`what` names the
/// call if it is not).
pub fn error_line(reply: redis::RedisResult<Value>, what: &str) -> String {
    match reply {
        Ok(value) => panic!("{what} should fail, got {value:?}"),
        Err(e) => match (e.code(), e.detail()) {
            (Some(code), Some(detail)) => format!("{code} {detail}"),
            (Some(code), None) => code.to_string(),
            _ => e.to_string(),
        },
    }
}

/// `RATELIMIT.CHECK key window max`.
pub fn check(con: &mut impl ConnectionLike, key: &str, window: u64, max: u64) -> Vec<i64> {
    limit_call(con, "RATELIMIT.CHECK", key, window, max)
}

/// `RATELIMIT.PEEK key window max`.
pub fn peek(con: &mut impl ConnectionLike, key: &str, window: u64, max: u64) -> Vec<i64> {
    limit_call(con, "RATELIMIT.PEEK", key, window, max)
}

fn limit_call(
    con: &mut impl ConnectionLike,
    name: &str,
    key: &str,
    window: u64,
    max: u64,
) -> Vec<i64> {
    run(con, &[name, key, &window.to_string(), &max.to_string()])
}

pub fn digest(con: &mut impl ConnectionLike, key: &str) -> String {
    let digests: Vec<String> = run(con, &["DEBUG", "DIGEST-VALUE", key]);
    digests.into_iter().next().expect("one digest")
}

/// Digests of every key, sorted by key, for comparing whole datasets.
pub fn all_digests(con: &mut impl ConnectionLike) -> Vec<(String, String)> {
    let mut keys: Vec<String> = run(con, &["KEYS", "*"]);
    keys.sort();
    keys.into_iter()
        .map(|key| {
            let d = digest(con, &key);
            (key, d)
        })
        .collect()
}

/// Digests and absolute expiries of every key, sorted by key: a module's
/// whole state, blocks included, to compare exactly.
pub fn all_digests_and_expiries(con: &mut impl ConnectionLike) -> Vec<(String, String, i64)> {
    all_digests(con)
        .into_iter()
        .map(|(key, digest)| {
            let expires_at: i64 = run(con, &["PEXPIRETIME", &key]);
            (key, digest, expires_at)
        })
        .collect()
}

/// Every key's bytes (GET: the twin's limiters are strings) and absolute
/// expiry, sorted by key: the twin's whole state, to compare exactly.
pub fn all_values(con: &mut impl ConnectionLike) -> Vec<(String, Vec<u8>, i64)> {
    all_read_by(con, "GET")
}

/// Every key's DUMP payload and absolute expiry, sorted by key: a module
/// value's exact bytes, to compare a master, its replica and a reload.
pub fn all_dumps_and_expiries(con: &mut impl ConnectionLike) -> Vec<(String, Vec<u8>, i64)> {
    all_read_by(con, "DUMP")
}

/// Every key's bytes as `read` (GET or DUMP) gives them, and its absolute
/// expiry, sorted by key.
fn all_read_by(con: &mut impl ConnectionLike, read: &str) -> Vec<(String, Vec<u8>, i64)> {
    let mut keys: Vec<String> = run(con, &["KEYS", "*"]);
    keys.sort();
    keys.into_iter()
        .map(|key| {
            let bytes: Vec<u8> = run(con, &[read, &key]);
            let expires_at: i64 = run(con, &["PEXPIRETIME", &key]);
            (key, bytes, expires_at)
        })
        .collect()
}
