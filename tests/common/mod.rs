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

/// A numeric field of an INFO section, such as `used_memory` in `memory`.
pub fn info_field(con: &mut Connection, section: &str, field: &str) -> Option<i64> {
    let info: String = run(con, &["INFO", section]);
    info.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().parse().ok())
}

/// Waits until the replica has applied everything the master had sent
/// when called. (WAIT would only cover writes made on the connection that
/// sends it, and the writes here come from many.)
pub fn wait_for_replica(master: &mut Connection, replica: &mut Connection) {
    let target =
        info_field(master, "replication", "master_repl_offset").expect("master_repl_offset");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let info: String = run(replica, &["INFO", "replication"]);
        let applied = info_field(replica, "replication", "slave_repl_offset").unwrap_or(-1);
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

/// Logs of every shape the module keeps, for comparing state across
/// replication and persistence: unit and weighted costs, whole and partial
/// refunds, several limits per call, short and long windows on one key,
/// PRECISION cells, logs in each of the three forms (16-byte block,
/// 48-byte block, heap), expired entries, and a
/// key refunded to nothing. Keys: `user:0`..`user:6`, `multi`, `mixed`,
/// `hot`, `tokens`, `long`, `short`, `single`.
pub fn every_log_shape(con: &mut Connection) {
    for i in 0..60 {
        let key = format!("user:{}", i % 7);
        let cost = (1 + i % 3).to_string();
        run::<Vec<i64>>(
            con,
            &["RATELIMIT.CHECK", &key, "600000", "40", "COST", &cost],
        );
        let units = (1 + i % 2).to_string();
        if i % 11 == 0 {
            run::<i64>(con, &["RATELIMIT.UNDO", &key, "COST", &units]);
        }
        let multi = ["RATELIMIT.CHECK", "multi", "1000", "5", "600000", "50"];
        run::<Vec<i64>>(con, &multi);
        let window = if i % 2 == 0 { "600000" } else { "50" };
        run::<Vec<i64>>(con, &["RATELIMIT.CHECK", "mixed", window, "30"]);
        let hot = [
            "RATELIMIT.CHECK",
            "hot",
            "600000",
            "1000000",
            "PRECISION",
            "20",
        ];
        run::<Vec<i64>>(con, &hot);
        let tokens = [
            "RATELIMIT.CHECK",
            "tokens",
            "60000",
            "10000000",
            "COST",
            "2500",
        ];
        run::<Vec<i64>>(con, &tokens);
        check(con, "short", 30, 3);
        if i % 20 == 0 {
            std::thread::sleep(std::time::Duration::from_millis(40));
        }
    }
    for _ in 0..60 {
        check(con, "long", 600_000, 100);
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    check(con, "single", 600_000, 1);
    run::<Vec<i64>>(
        con,
        &["RATELIMIT.CHECK", "gone", "600000", "5", "COST", "3"],
    );
    run::<i64>(con, &["RATELIMIT.UNDO", "gone", "COST", "5"]);
}

/// Data written by release 0.1.0 (see tests/fixtures/v1/README.md).
pub const VERSION_1: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/v1");

/// The DUMP payload release 0.1.0 wrote for key `v1:<name>`.
pub fn version_1_payload(name: &str) -> Vec<u8> {
    let hex = std::fs::read_to_string(format!("{VERSION_1}/{name}.dump.hex")).expect("fixture");
    let hex = hex.trim();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}
