//! State survives DEBUG RELOAD, restarts from RDB and from AOF (with and
//! without an RDB preamble), byte for byte by digest.

mod common;

use common::{all_digests, run, Server};
use redis::Connection;

/// Several keys with logs of different shapes: costs, refunds, gaps.
fn workload(con: &mut Connection) {
    for i in 0..50 {
        let key = format!("user:{}", i % 7);
        let cost = (1 + i % 3).to_string();
        run::<Vec<i64>>(
            con,
            &["RATELIMIT.CHECK", &key, "600000", "40", "COST", &cost],
        );
        if i % 11 == 0 {
            run::<i64>(con, &["RATELIMIT.UNDO", &key]);
        }
    }
    run::<Vec<i64>>(con, &["RATELIMIT.CHECK", "single", "600000", "1"]);
}

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
    workload(&mut con);
    let (digests, remaining) = (all_digests(&mut con), peeks(&mut con));
    assert_eq!(digests.len(), 8);
    run::<String>(&mut con, &["DEBUG", "RELOAD"]);
    assert_same_state(&mut con, &digests, &remaining);
}

#[test]
fn a_restart_from_rdb_keeps_every_log() {
    let mut server = Server::start(&[]);
    let mut con = server.connect();
    workload(&mut con);
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
    workload(&mut con);
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
    workload(&mut con);
    run::<i64>(&mut con, &["PERSIST", "single"]);
    let (digests, remaining) = (all_digests(&mut con), peeks(&mut con));
    run::<String>(&mut con, &["BGREWRITEAOF"]);
    wait_for_rewrite(&mut con);
    server.kill();
    server.relaunch();
    let mut con = server.connect();
    assert_same_state(&mut con, &digests, &remaining);
    let ttl: i64 = run(&mut con, &["PTTL", "single"]);
    assert_eq!(ttl, -1, "a key without expiry stays without one");
    let ttl: i64 = run(&mut con, &["PTTL", "user:1"]);
    assert!(ttl > 0, "expiry kept: {ttl}");
}

fn wait_for_rewrite(con: &mut Connection) {
    for _ in 0..500 {
        let info: String = run(con, &["INFO", "persistence"]);
        if info.contains("aof_rewrite_in_progress:0") && info.contains("aof_rewrite_scheduled:0") {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("AOF rewrite did not finish");
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
    assert_eq!(id & 1023, 1, "this build writes encoding version 1");
    dump[2..10].copy_from_slice(&((id & !1023) | 2).to_be_bytes());
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
