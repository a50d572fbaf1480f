//! Data to compare across replication and persistence: logs of every
//! shape the module keeps, and what release 0.1.0 wrote.

use crate::backend::{Backend, Caller};
use redis::Connection;

/// Logs of every shape the module keeps, for comparing state across
/// replication and persistence: unit and weighted costs, whole and partial
/// refunds, several limits per call, short and long windows on one key,
/// PRECISION cells, logs in each of the three forms (16-byte block,
/// 48-byte block, heap), expired entries, a log whose window a denied
/// CHECK widened, a log that pruned hundreds of entries, and a key
/// refunded to nothing. Keys: `user:0`..`user:6`, `multi`, `mixed`,
/// `hot`, `tokens`, `long`, `short`, `single`, `widened`, `sliding`.
pub fn every_log_shape(con: &mut Connection) {
    every_log_shape_by(&Caller::of(Backend::Module), con);
}

/// The same logs written through `caller` (the module, or the twin in
/// one of its forms).
pub fn every_log_shape_by(caller: &Caller, con: &mut Connection) {
    let run = |con: &mut Connection, words: &[&str]| {
        caller
            .command(words)
            .query::<redis::Value>(con)
            .unwrap_or_else(|e| panic!("{words:?} failed: {e}"));
    };
    let check = |con: &mut Connection, key: &str, window: u64, max: u64| {
        caller.check(con, key, window, max);
    };
    for i in 0..60 {
        let key = format!("user:{}", i % 7);
        let cost = (1 + i % 3).to_string();
        run(
            con,
            &["RATELIMIT.CHECK", &key, "600000", "40", "COST", &cost],
        );
        let units = (1 + i % 2).to_string();
        if i % 11 == 0 {
            run(con, &["RATELIMIT.UNDO", &key, "COST", &units]);
        }
        let multi = ["RATELIMIT.CHECK", "multi", "1000", "5", "600000", "50"];
        run(con, &multi);
        let window = if i % 2 == 0 { "600000" } else { "50" };
        run(con, &["RATELIMIT.CHECK", "mixed", window, "30"]);
        let hot = [
            "RATELIMIT.CHECK",
            "hot",
            "600000",
            "1000000",
            "PRECISION",
            "20",
        ];
        run(con, &hot);
        let tokens = [
            "RATELIMIT.CHECK",
            "tokens",
            "60000",
            "10000000",
            "COST",
            "2500",
        ];
        run(con, &tokens);
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
    check(con, "widened", 60_000, 1);
    check(con, "widened", 600_000, 1);
    // Each request prunes the ones 20 ms older (the twin compacts them);
    // the last registers a window that keeps the key for the comparison.
    for _ in 0..300 {
        check(con, "sliding", 20, 1000);
        std::thread::sleep(std::time::Duration::from_micros(300));
    }
    check(con, "sliding", 600_000, 100_000);
    run(
        con,
        &["RATELIMIT.CHECK", "gone", "600000", "5", "COST", "3"],
    );
    run(con, &["RATELIMIT.UNDO", "gone", "COST", "5"]);
}

/// Data written by release 0.1.0 (see tests/fixtures/v1/README.md).
pub const VERSION_1: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/v1");

/// The DUMP payload release 0.1.0 wrote for key `v1:<name>`.
pub fn version_1_payload(name: &str) -> Vec<u8> {
    fixture_payload("v1", name)
}

/// The DUMP payload `tests/fixtures/<version>/<name>.dump.hex` holds.
pub fn fixture_payload(version: &str, name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../tests/fixtures/{version}/{name}.dump.hex",
        env!("CARGO_MANIFEST_DIR")
    );
    let hex = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let hex = hex.trim();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}
