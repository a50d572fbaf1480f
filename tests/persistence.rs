//! State survives DEBUG RELOAD, restarts from RDB and from AOF (with and
//! without an RDB preamble), byte for byte by digest; blocks included (the
//! module's own data type: module only).

use harness::{
    all_digests, all_digests_and_expiries, all_dumps_and_expiries, all_values,
    assert_survives_every_reload, every_charge_shape, every_log_shape, every_log_shape_by,
    fixture_payload, restore, run, version_1_payload, wait_for_background_saves, Backend, Server,
    VERSION_1,
};
use redis::Connection;

fn peeks(con: &mut Connection) -> Vec<Vec<i64>> {
    (0..7)
        .map(|i| {
            run(
                con,
                &["RATELIMIT.PEEK", &format!("user:{i}"), "600000", "40"],
            )
        })
        .collect()
}

fn assert_same_state(con: &mut Connection, digests: &[(String, String)], remaining: &[Vec<i64>]) {
    assert_eq!(all_digests(con), digests);
    let now = peeks(con);
    for (before, after) in remaining.iter().zip(&now) {
        assert_eq!(before[..3], after[..3], "allowed, remaining, retry_after");
    }
}

#[test]
fn debug_reload_keeps_every_log() {
    let server = Server::start(&[]);
    let mut con = server.connect();
    every_log_shape(&mut con);
    let (digests, remaining) = (all_digests(&mut con), peeks(&mut con));
    assert!(digests.len() >= 13, "{digests:?}");
    run::<String>(&mut con, &["DEBUG", "RELOAD"]);
    assert_same_state(&mut con, &digests, &remaining);
}

#[test]
fn a_restart_from_rdb_keeps_every_log() {
    let mut server = Server::start(&[]);
    let mut con = server.connect();
    every_log_shape(&mut con);
    let (digests, remaining) = (all_digests(&mut con), peeks(&mut con));
    server.restart(true);
    let mut con = server.connect();
    assert_same_state(&mut con, &digests, &remaining);
}

/// Replays the AOF as written command by command: the RECORD commands
/// carry the master's timestamps, so the replay reaches the same state.
#[test]
fn a_restart_from_the_aof_keeps_every_log() {
    let mut server = Server::start(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mut con = server.connect();
    every_log_shape(&mut con);
    let (digests, remaining) = (all_digests(&mut con), peeks(&mut con));
    server.kill();
    server.relaunch();
    let mut con = server.connect();
    assert_same_state(&mut con, &digests, &remaining);
}

/// BGREWRITEAOF without the RDB preamble goes through the type's
/// aof_rewrite, which must rebuild each log and keep its expiry.
#[test]
fn a_rewritten_aof_keeps_every_log() {
    let mut server = Server::start(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--aof-use-rdb-preamble",
        "no",
    ]);
    let mut con = server.connect();
    every_log_shape(&mut con);
    run::<i64>(&mut con, &["PERSIST", "single"]);
    let (digests, remaining) = (all_digests(&mut con), peeks(&mut con));
    run::<String>(&mut con, &["BGREWRITEAOF"]);
    wait_for_background_saves(&mut con);
    server.kill();
    server.relaunch();
    let mut con = server.connect();
    assert_same_state(&mut con, &digests, &remaining);
    let ttl: i64 = run(&mut con, &["PTTL", "single"]);
    assert_eq!(ttl, -1, "a key without expiry stays without one");
    let ttl: i64 = run(&mut con, &["PTTL", "user:1"]);
    assert!(ttl > 0, "expiry kept: {ttl}");
}

/// A payload written by a future encoding version is refused, not misread.
#[test]
fn restore_refuses_a_future_encoding_version() {
    let server = Server::start(&[]);
    let mut con = server.connect();
    run::<Vec<i64>>(&mut con, &["RATELIMIT.CHECK", "k", "600000", "5"]);
    let mut dump: Vec<u8> = redis::cmd("DUMP").arg("k").query(&mut con).expect("DUMP");
    // RDB_TYPE_MODULE_2, then the 64-bit module id (type name and, in its
    // low 10 bits, the encoding version) as 0x81 + 8 bytes big-endian.
    assert_eq!(dump[..2], [7, 0x81]);
    let id = u64::from_be_bytes(dump[2..10].try_into().expect("8 bytes"));
    assert_eq!(id & 1023, 3, "this build writes encoding version 3");
    dump[2..10].copy_from_slice(&((id & !1023) | 4).to_be_bytes());
    run::<String>(&mut con, &["DEBUG", "SET-SKIP-CHECKSUM-VALIDATION", "1"]);
    let refused = redis::cmd("RESTORE")
        .arg("future")
        .arg(0)
        .arg(&dump)
        .query::<String>(&mut con)
        .expect_err("a future version must be refused");
    assert!(refused.to_string().contains("Bad data format"), "{refused}");
    let exists: i64 = run(&mut con, &["EXISTS", "future"]);
    assert_eq!(exists, 0);
}

/// What release 0.1.0's keys answer (see tests/fixtures/v1/README.md):
/// their entries lie in the year 2200, so today's clock reads before
/// them and every answer is taken at the newest entry's time.
fn assert_version_1_answers(con: &mut Connection, prefix: &str) {
    let peek = |con: &mut Connection, key: &str, limit: &[&str]| -> Vec<i64> {
        let key = format!("{prefix}{key}");
        let mut words = vec!["RATELIMIT.PEEK", key.as_str()];
        words.extend(limit);
        run(con, &words)
    };
    assert_eq!(peek(con, "one", &["60000", "1"]), [0, 0, 60_000, 60_000]);
    let year = ["31536000000", "100"];
    assert_eq!(peek(con, "mixed", &year), [1, 92, 0, 31_536_000_000]);
    assert_eq!(peek(con, "mixed", &["1000", "5"]), [1, 4, 0, 1000]);
    assert_eq!(peek(con, "mixed", &["3000000", "8"]), [1, 1, 0, 3_000_000]);
    assert_eq!(peek(con, "long", &year), [1, 70, 0, 31_536_000_000]);
    assert_eq!(peek(con, "long", &["10000", "5"]), [0, 0, 6000, 10_000]);
    let units: i64 = run(
        con,
        &["RATELIMIT.UNDO", &format!("{prefix}mixed"), "COST", "100"],
    );
    assert_eq!(units, 8);
}

#[test]
fn version_1_dump_payloads_still_restore() {
    let server = Server::start(&[]);
    let mut con = server.connect();
    for key in ["one", "mixed", "long"] {
        let restored = restore(
            &mut con,
            &format!("restored:{key}"),
            &version_1_payload(key),
        );
        assert_eq!(restored.expect("a version-1 payload restores"), "OK");
    }
    assert_version_1_answers(&mut con, "restored:");
}

/// Release 0.2.0's payloads (encoding version 2, before blocks) load
/// unblocked and answer as the same logs did (see tests/fixtures/v2).
#[test]
fn version_2_dump_payloads_still_restore() {
    let server = Server::start(&[]);
    let mut con = server.connect();
    for key in ["one", "mixed", "long"] {
        let payload = fixture_payload("v2", key);
        assert_eq!(payload[9], 2, "a version-2 payload");
        let restored = restore(&mut con, &format!("v2:{key}"), &payload);
        assert_eq!(restored.expect("a version-2 payload restores"), "OK");
    }
    assert_version_1_answers(&mut con, "v2:");
}

/// Encoding version 3 carries the block: a blocked key and a blocked key
/// whose log a refund emptied restore blocked, and dump back byte for
/// byte (see tests/fixtures/v3).
#[test]
fn version_3_payloads_carry_the_block() {
    const T: i64 = 7_258_118_400_000;
    let server = Server::start(&[]);
    let mut con = server.connect();
    for key in ["blocked", "emptied"] {
        let payload = fixture_payload("v3", key);
        let restored = restore(&mut con, key, &payload);
        assert_eq!(restored.expect("a version-3 payload restores"), "OK");
        // The same value; the footer (the server's RDB version and the
        // checksum) is the server's own.
        let dumped: Vec<u8> = run(&mut con, &["DUMP", key]);
        let value = |dump: &[u8]| dump[..dump.len() - 10].to_vec();
        assert_eq!(value(&dumped), value(&payload), "{key} dumps as it loaded");
    }
    // The newest entry is at T + 3000000, later than today's clock, so
    // the answer is taken then: an hour of block left.
    let blocked: Vec<i64> = run(&mut con, &["RATELIMIT.PEEK", "blocked", "60000", "100"]);
    assert_eq!(blocked, [0, 0, 3_600_000, 3_600_000]);
    let emptied: Vec<i64> = run(&mut con, &["RATELIMIT.PEEK", "emptied", "60000", "100"]);
    assert_eq!(emptied[..2], [0, 0]);
    let now: i64 = harness::server_clock_ms(&mut con);
    assert!(
        (T + 3_600_000 - now - emptied[2]).abs() < 2_000,
        "{emptied:?}"
    );
    let lifted: i64 = run(&mut con, &["RATELIMIT.UNBLOCK", "blocked"]);
    assert_eq!(lifted, 1);
    let unblocked: Vec<i64> = run(&mut con, &["RATELIMIT.PEEK", "blocked", "60000", "100"]);
    assert_eq!(unblocked[..3], [1, 99, 0]);
}

/// Blocked keys (with entries, emptied by a refund, widened by the denial
/// that blocked them) survive DEBUG RELOAD, a restart from the RDB, from
/// the AOF, and from a rewritten AOF, with the same digest and expiry.
#[test]
fn blocks_survive_every_reload() {
    let mut server = Server::start(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--aof-use-rdb-preamble",
        "no",
    ]);
    let mut con = server.connect();
    let block = |con: &mut Connection, key: &str, window: &str| {
        for _ in 0..2 {
            run::<Vec<i64>>(
                con,
                &["RATELIMIT.CHECK", key, window, "1", "BLOCK", "3600000"],
            );
        }
    };
    block(&mut con, "blocked", "60000");
    block(&mut con, "emptied", "60000");
    run::<i64>(&mut con, &["RATELIMIT.UNDO", "emptied"]);
    block(&mut con, "widened", "1000");
    run::<Vec<i64>>(
        &mut con,
        &[
            "RATELIMIT.CHECK",
            "widened",
            "7200000",
            "1",
            "BLOCK",
            "3600000",
        ],
    );
    run::<Vec<i64>>(&mut con, &["RATELIMIT.CHECK", "open", "60000", "5"]);
    let before = assert_survives_every_reload(&mut server, all_digests_and_expiries);
    assert_eq!(before.len(), 4, "{before:?}");
    let mut con = server.connect();
    let blocked: Vec<i64> = run(&mut con, &["RATELIMIT.PEEK", "emptied", "10", "9"]);
    assert_eq!(blocked[..2], [0, 0], "still blocked: {blocked:?}");
}

#[test]
fn a_version_1_rdb_file_still_loads_and_saves_as_version_3() {
    let mut server = Server::start(&[]);
    server.kill();
    std::fs::copy(format!("{VERSION_1}/dump.rdb"), server.dir.join("dump.rdb")).expect("copy");
    server.relaunch();
    let mut con = server.connect();
    let digests = all_digests(&mut con);
    assert_eq!(digests.len(), 3, "{digests:?}");
    run::<String>(&mut con, &["DEBUG", "RELOAD"]);
    assert_eq!(
        all_digests(&mut con),
        digests,
        "saved again as version 3, unchanged"
    );
    assert_version_1_answers(&mut con, "v1:");
}

/// The twin's keys and its function library come back from the AOF (the
/// writes the script made, replayed) and from an RDB restart, byte for
/// byte with the same expiry, and answer as before.
#[test]
fn the_twin_state_survives_an_aof_reload_and_a_restart() {
    let (mut server, twin) =
        Backend::Function.start(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mut con = server.connect();
    every_log_shape_by(&twin, &mut con);
    let values = all_values(&mut con);
    assert!(values.len() >= 15, "{values:?}");
    let peek = ["RATELIMIT.PEEK", "user:1", "600000", "40"];
    let before: Vec<i64> = twin.run(&mut con, &peek);
    server.kill();
    server.relaunch();
    let mut con = server.connect();
    assert_eq!(all_values(&mut con), values, "replayed from the AOF");
    let after: Vec<i64> = twin.run(&mut con, &peek);
    assert_eq!(after[..3], before[..3]);
    server.restart(true);
    let mut con = server.connect();
    assert_eq!(all_values(&mut con), values, "loaded from the RDB");
}

/// Settled keys (CHARGE, MCHARGE: over their limits, blocked, ahead of the
/// clock) replay from the AOF as the RECORDs and MRECORDs the master wrote,
/// and survive every other reload, byte for byte (DUMP) with their
/// absolute expiries.
#[test]
fn charged_keys_survive_every_reload_byte_for_byte() {
    let mut server = Server::start(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--aof-use-rdb-preamble",
        "no",
    ]);
    let keys = every_charge_shape(&mut server.connect());
    let before = assert_survives_every_reload(&mut server, all_dumps_and_expiries);
    assert_eq!(before.len(), keys.len(), "{before:?}");
}
