//! Helpers for the integration tests. Each test starts its own server
//! (`server.rs`) and talks to it with these.

#![allow(dead_code)] // each test file uses its own part of this

mod server;

pub use server::*;

use redis::{Connection, Value};

/// Runs a command that must succeed.
pub fn run<T: redis::FromRedisValue>(con: &mut Connection, words: &[&str]) -> T {
    let mut cmd = redis::cmd(words[0]);
    for word in &words[1..] {
        cmd.arg(*word);
    }
    cmd.query(con)
        .unwrap_or_else(|e| panic!("{words:?} failed: {e}"))
}

/// Runs a command that must fail, and returns its error line as sent.
pub fn error(con: &mut Connection, words: &[&str]) -> String {
    let mut cmd = redis::cmd(words[0]);
    for word in &words[1..] {
        cmd.arg(*word);
    }
    match cmd.query::<Value>(con) {
        Ok(value) => panic!("{words:?} should fail, got {value:?}"),
        Err(e) => match (e.code(), e.detail()) {
            (Some(code), Some(detail)) => format!("{code} {detail}"),
            (Some(code), None) => code.to_string(),
            _ => e.to_string(),
        },
    }
}

pub fn check(con: &mut Connection, key: &str, window: u64, max: u64) -> Vec<i64> {
    run(
        con,
        &[
            "RATELIMIT.CHECK",
            key,
            &window.to_string(),
            &max.to_string(),
        ],
    )
}

pub fn digest(con: &mut Connection, key: &str) -> String {
    let digests: Vec<String> = run(con, &["DEBUG", "DIGEST-VALUE", key]);
    digests.into_iter().next().expect("one digest")
}

/// Digests of every key, sorted by key, for comparing whole datasets.
pub fn all_digests(con: &mut Connection) -> Vec<(String, String)> {
    let mut keys: Vec<String> = run(con, &["KEYS", "*"]);
    keys.sort();
    keys.into_iter()
        .map(|key| {
            let d = digest(con, &key);
            (key, d)
        })
        .collect()
}

fn replication_field(con: &mut Connection, field: &str) -> Option<i64> {
    let info: String = run(con, &["INFO", "replication"]);
    info.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().parse().ok())
}

/// Waits until the replica has applied everything the master had sent
/// when called. (WAIT would only cover writes made on the connection that
/// sends it, and the writes here come from many.)
pub fn wait_for_replica(master: &mut Connection, replica: &mut Connection) {
    let target = replication_field(master, "master_repl_offset").expect("master_repl_offset");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let info: String = run(replica, &["INFO", "replication"]);
        let applied = replication_field(replica, "slave_repl_offset").unwrap_or(-1);
        if info.contains("master_link_status:up") && applied >= target {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replica is at {applied}, the master at {target}:\n{info}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
