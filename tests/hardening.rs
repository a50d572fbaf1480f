//! The findings of issue 19, each held at the server: a denied CHECK that
//! names a longer window registers it (and replicates so); stored values
//! are held to the bounds RECORD accepts and to what the module writes;
//! INFO counters saturate; max-entries refuses only a new entry; the
//! reset_after_ms wording; PEEK and CHECK are not flagged `fast`. And a
//! stored block is held to its canonical form (module only).

use harness::{
    aof_text, blocked_log_payload, check, digest, documentation, error, info_text, log_payload,
    peek, restore, run, server_clock_ms, wait_for_background_saves, wait_for_replica, Server,
};
use std::thread::sleep;
use std::time::Duration;

const HOUR: u64 = 3_600_000;
/// The latest time an entry may have (`log::TIMES`), as RECORD accepts it.
const LAST_TIME: i64 = i64::MAX / 2;

fn pexpiretime(con: &mut redis::Connection, key: &str) -> i64 {
    run(con, &["PEXPIRETIME", key])
}

/// Ten CHECKs under 1 s, then a 1 h CHECK: denied, it counted the ten; so
/// a second later the same 1 h request must still see them.
fn deny_with_a_longer_window(con: &mut redis::Connection) {
    for _ in 0..10 {
        assert_eq!(check(con, "k", 1000, 10)[0], 1);
    }
    let denied = check(con, "k", HOUR, 10);
    assert_eq!(denied[..2], [0, 0], "{denied:?}");
    sleep(Duration::from_millis(1100));
}

#[test]
fn a_denied_check_registers_its_longer_window() {
    let server = Server::start(&[]);
    let mut con = server.connect();
    deny_with_a_longer_window(&mut con);
    let again = check(&mut con, "k", HOUR, 10);
    assert_eq!(again[..2], [0, 0], "the hour still holds ten: {again:?}");
    assert_eq!(peek(&mut con, "k", HOUR, 11)[1], 1);
    // The key now lives as long as the hour needs it.
    let ttl: i64 = run(&mut con, &["PTTL", "k"]);
    assert!(ttl > HOUR as i64 - 5_000, "PTTL {ttl}");
    // A denied CHECK that widens nothing still changes nothing.
    let before = (digest(&mut con, "k"), pexpiretime(&mut con, "k"));
    assert_eq!(check(&mut con, "k", HOUR, 5)[0], 0);
    assert_eq!((digest(&mut con, "k"), pexpiretime(&mut con, "k")), before);
}

#[test]
fn a_widening_denial_reaches_replicas_and_the_aof() {
    let master = Server::start(&["--appendonly", "yes"]);
    let replica = Server::start(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
    let (mut m, mut r) = (master.connect(), replica.connect());
    wait_for_replica(&mut m, &mut r);
    deny_with_a_longer_window(&mut m);
    wait_for_replica(&mut m, &mut r);
    let on_master = (digest(&mut m, "k"), pexpiretime(&mut m, "k"));
    assert_eq!((digest(&mut r, "k"), pexpiretime(&mut r, "k")), on_master);
    // The two PEEKs run a few ms apart: the waits they answer may differ
    // by that much (the logs and expiries are equal above).
    let (there, here) = (peek(&mut r, "k", HOUR, 10), peek(&mut m, "k", HOUR, 10));
    assert_eq!(there[..2], here[..2], "{there:?} {here:?}");
    let apart = there.iter().zip(&here).map(|(a, b)| a.abs_diff(*b)).max();
    assert!(apart < Some(1_000), "{there:?} {here:?}");
    let replayed = info_text(&mut r, "ratelimit", "ratelimit_records_replayed");
    assert_eq!(replayed.as_deref(), Some("11"), "ten RECORDs and a WIDEN");
    // A client cannot send the replicated form.
    let refused = error(&mut m, &["RATELIMIT.WIDEN", "k", "7200000"]);
    assert!(refused.contains("is internal"), "{refused}");
    run::<String>(&mut m, &["DEBUG", "LOADAOF"]);
    assert_eq!((digest(&mut m, "k"), pexpiretime(&mut m, "k")), on_master);
    run::<String>(&mut m, &["BGREWRITEAOF"]);
    wait_for_background_saves(&mut m);
    run::<String>(&mut m, &["DEBUG", "LOADAOF"]);
    assert_eq!((digest(&mut m, "k"), pexpiretime(&mut m, "k")), on_master);
}

/// What a stored value may hold is what RECORD accepts: a log whose
/// newest entry is past the last time RECORD takes is refused, one at it
/// loads, records there and replicates.
#[test]
fn stored_times_are_held_to_the_bounds_record_accepts() {
    let master = Server::start(&[]);
    let replica = Server::start(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
    let (mut m, mut r) = (master.connect(), replica.connect());
    let far = log_payload(&mut m, HOUR, &[(1 << 62, 1)]);
    assert!(restore(&mut m, "far", &far).is_err());
    assert!(master
        .log()
        .contains("ratelimit: refused a stored log (BadTime)"));
    let last = log_payload(&mut m, HOUR, &[(LAST_TIME - 5, 2), (LAST_TIME, 1)]);
    assert_eq!(restore(&mut m, "last", &last).expect("RESTORE"), "OK");
    assert_eq!(check(&mut m, "last", HOUR, 10)[..2], [1, 6]);
    wait_for_replica(&mut m, &mut r);
    assert_eq!(digest(&mut r, "last"), digest(&mut m, "last"));
    assert_eq!(
        peek(&mut r, "last", HOUR, 10),
        peek(&mut m, "last", HOUR, 10)
    );
    assert!(!replica.log().contains("CRITICAL"), "{}", replica.log());
}

/// Only a log the module could hold itself loads: no time 0, no two
/// entries in one millisecond that one entry could hold, nothing expired
/// under the window. What loads survives an AOF rewrite and a reload.
#[test]
fn non_canonical_payloads_are_refused_and_canonical_ones_survive() {
    let server = Server::start(&["--appendonly", "yes"]);
    let mut con = server.connect();
    let now = server_clock_ms(&mut con);
    let refused: [(&str, &[(i64, u64)]); 3] = [
        ("BadTime", &[(0, 1), (now, 1)]),
        ("SharedMillisecond", &[(now - 10, 1), (now - 10, 1)]),
        ("Expired", &[(now - HOUR as i64, 1), (now, 1)]),
    ];
    for (reason, entries) in refused {
        let payload = log_payload(&mut con, HOUR, entries);
        assert!(restore(&mut con, "bad", &payload).is_err(), "{reason}");
        let logged = format!("ratelimit: refused a stored log ({reason})");
        assert!(server.log().contains(&logged), "the log lacks {logged}");
    }
    // Two entries in one millisecond whose costs could not share one.
    let big = i64::MAX as u64 - 1;
    let accepted: [(&str, &[(i64, u64)]); 2] = [
        ("full", &[(now - 10, big), (now - 10, 2), (now - 5, 1)]),
        (
            "spread",
            &[(now - HOUR as i64 + 1, 3), (now - 1000, 1), (now, 7)],
        ),
    ];
    let mut before = Vec::new();
    for (key, entries) in accepted {
        let payload = log_payload(&mut con, HOUR, entries);
        assert_eq!(restore(&mut con, key, &payload).expect(key), "OK");
        let dumped: Vec<u8> = run(&mut con, &["DUMP", key]);
        assert_eq!(dumped, payload, "{key} dumps as it loaded");
        before.push((digest(&mut con, key), peek(&mut con, key, HOUR, 100)));
    }
    run::<String>(&mut con, &["BGREWRITEAOF"]);
    wait_for_background_saves(&mut con);
    run::<String>(&mut con, &["DEBUG", "LOADAOF"]);
    for (index, (key, _)) in accepted.iter().enumerate() {
        let after = (digest(&mut con, key), peek(&mut con, key, HOUR, 100));
        assert_eq!(after.0, before[index].0, "{key} after the AOF rewrite");
    }
}

/// A stored block ends after the newest entry, and a key holding no
/// entry is blocked: anything else is refused, as the module never writes
/// it. What loads dumps back as it loaded.
#[test]
fn non_canonical_blocks_are_refused() {
    let server = Server::start(&[]);
    let mut con = server.connect();
    let now = server_clock_ms(&mut con);
    type Case<'a> = (&'a str, &'a [(i64, u64)], i64);
    let refused: [Case; 4] = [
        ("BadBlock", &[(now, 1)], now),
        ("BadBlock", &[(now, 1)], now - 5),
        ("BadBlock", &[(now, 1)], -1),
        ("Empty", &[], 0),
    ];
    for (reason, entries, until) in refused {
        let window = if entries.is_empty() { 0 } else { HOUR };
        let payload = blocked_log_payload(&mut con, window, entries, until);
        assert!(
            restore(&mut con, "bad", &payload).is_err(),
            "{reason} {until}"
        );
        let logged = format!("ratelimit: refused a stored log ({reason})");
        assert!(server.log().contains(&logged), "the log lacks {logged}");
    }
    let empty_with_window = blocked_log_payload(&mut con, HOUR, &[], now + 5);
    assert!(restore(&mut con, "bad", &empty_with_window).is_err());
    for (key, entries) in [("blocked", &[(now, 1)][..]), ("emptied", &[])] {
        let window = if entries.is_empty() { 0 } else { HOUR };
        let payload = blocked_log_payload(&mut con, window, entries, now + 1);
        assert_eq!(restore(&mut con, key, &payload).expect(key), "OK");
        let dumped: Vec<u8> = run(&mut con, &["DUMP", key]);
        assert_eq!(dumped, payload, "{key} dumps as it loaded");
    }
}

#[test]
fn info_counters_saturate_instead_of_wrapping() {
    let server = Server::start(&[]);
    let mut con = server.connect();
    let max = i64::MAX.to_string();
    let cost = (1u64 << 62).to_string();
    for key in ["a", "b", "c"] {
        let reply: Vec<i64> = run(
            &mut con,
            &["RATELIMIT.CHECK", key, "60000", &max, "COST", &cost],
        );
        assert_eq!(reply[0], 1);
    }
    let recorded = info_text(&mut con, "ratelimit", "ratelimit_units_recorded");
    assert_eq!(recorded, Some(max.clone()));
    run::<i64>(&mut con, &["RATELIMIT.UNDO", "a", "COST", &max]);
    run::<i64>(&mut con, &["RATELIMIT.UNDO", "b", "COST", &max]);
    let refunded = info_text(&mut con, "ratelimit", "ratelimit_units_refunded");
    assert_eq!(refunded, Some(max));
}

/// A key over a lowered max-entries still takes a request that joins its
/// newest entry; only one needing a new entry is refused.
#[test]
fn max_entries_refuses_only_a_new_entry() {
    let server = Server::start(&[]);
    let mut con = server.connect();
    let now = server_clock_ms(&mut con);
    // Newest a minute ahead of the clock: every CHECK records at it.
    let ahead: Vec<(i64, u64)> = (0..10).map(|i| (now + 50_000 + i * 1000, 1)).collect();
    let behind: Vec<(i64, u64)> = (0..10).map(|i| (now - 50_000 + i * 1000, 1)).collect();
    let (ahead, behind) = (
        log_payload(&mut con, HOUR, &ahead),
        log_payload(&mut con, HOUR, &behind),
    );
    restore(&mut con, "ahead", &ahead).expect("RESTORE");
    restore(&mut con, "behind", &behind).expect("RESTORE");
    run::<String>(&mut con, &["CONFIG", "SET", "ratelimit.max-entries", "5"]);
    assert_eq!(check(&mut con, "ahead", HOUR, 100)[..2], [1, 89]);
    let full = error(&mut con, &["RATELIMIT.CHECK", "behind", "3600000", "100"]);
    assert!(full.contains("this key's log is full"), "{full}");
}

/// The README says what reset_after_ms is in one sentence for every call,
/// and the server answers by it: the call's longest window, not the log's.
#[test]
fn reset_after_is_about_the_calls_longest_window() {
    let wording = "wait until the call's longest window holds nothing of this key";
    assert!(
        documentation().contains(wording),
        "the documentation lacks: {wording}"
    );
    let server = Server::start(&[]);
    let mut con = server.connect();
    assert_eq!(check(&mut con, "k", HOUR, 100)[0], 1);
    assert_eq!(check(&mut con, "k", 1000, 100)[3], 1000);
    let peeked = peek(&mut con, "k", 1000, 100)[3];
    assert!((1..=1000).contains(&peeked), "{peeked}");
}

/// CHECK and PEEK read every entry of a shorter window in the worst case,
/// which is not what Redis means by `fast`; UNDO's work is what it takes
/// back.
#[test]
fn only_undo_is_flagged_fast() {
    let server = Server::start(&[]);
    let mut con = server.connect();
    for (name, fast) in [
        ("RATELIMIT.CHECK", false),
        ("RATELIMIT.PEEK", false),
        ("RATELIMIT.UNDO", true),
    ] {
        let reply: Vec<Vec<redis::Value>> = run(&mut con, &["COMMAND", "INFO", name]);
        // [name, arity, flags, ...]
        let flags: Vec<String> = redis::from_redis_value(&reply[0][2]).expect("flags");
        assert_eq!(flags.iter().any(|f| f == "fast"), fast, "{name}: {flags:?}");
    }
}

/// An AOF as a master writes it, at every bound: a WIDEN for a key that
/// does not exist (it creates nothing), a WIDEN that lengthens a key's
/// life, two costs of 2^63-1 in one millisecond, a 365-day window with a
/// PRECISION cell, entries at the latest time. It loads on every server,
/// and every log survives an AOF rewrite (one RECORD per entry), a reload
/// of it and an RDB reload unchanged.
#[test]
fn an_aof_at_the_bounds_loads_and_survives_rewrites() {
    let mut server = Server::start(&["--appendonly", "yes", "--aof-use-rdb-preamble", "no"]);
    let now = server_clock_ms(&mut server.connect());
    server.stop();
    std::fs::remove_dir_all(server.dir.join("appendonlydir")).expect("the AOF directory");
    let (max, year, last) = (i64::MAX.to_string(), "31536000000", LAST_TIME.to_string());
    let (at, later) = (now.to_string(), (now + 7).to_string());
    let commands: Vec<Vec<String>> = [
        vec!["SELECT", "0"],
        vec!["RATELIMIT.WIDEN", "missing", "5000"],
        vec!["RATELIMIT.RECORD", "k", &at, "1000", "1"],
        vec!["RATELIMIT.WIDEN", "k", "60000"],
        vec!["RATELIMIT.RECORD", "big", &at, "1000", &max],
        vec!["RATELIMIT.RECORD", "big", &at, "1000", &max],
        vec!["RATELIMIT.RECORD", "big", &later, year, "5", "100000"],
        vec!["RATELIMIT.RECORD", "big", &later, year, "3", "100000"],
        vec!["RATELIMIT.RECORD", "far", &last, year, &max],
        vec!["RATELIMIT.RECORD", "far", &last, year, "1"],
    ]
    .iter()
    .map(|words| words.iter().map(|w| w.to_string()).collect())
    .collect();
    std::fs::write(server.dir.join("appendonly.aof"), aof_text(&commands)).expect("the AOF");
    server.relaunch();
    let mut con = server.connect();
    let exists: i64 = run(&mut con, &["EXISTS", "missing"]);
    assert_eq!(exists, 0, "a WIDEN without a log creates none");
    assert_eq!(pexpiretime(&mut con, "k"), now + 60_000);
    assert_eq!(pexpiretime(&mut con, "far"), LAST_TIME + 31_536_000_000);
    let keys = ["k", "big", "far"];
    let state = |con: &mut redis::Connection| -> Vec<(String, i64)> {
        keys.iter()
            .map(|key| (digest(con, key), pexpiretime(con, key)))
            .collect()
    };
    let loaded = state(&mut con);
    let big: Vec<i64> = run(&mut con, &["RATELIMIT.PEEK", "big", year, &max]);
    assert_eq!(big[..2], [0, 0], "{big:?}");
    run::<String>(&mut con, &["BGREWRITEAOF"]);
    wait_for_background_saves(&mut con);
    run::<String>(&mut con, &["DEBUG", "LOADAOF"]);
    assert_eq!(state(&mut con), loaded, "after an AOF rewrite");
    run::<String>(&mut con, &["DEBUG", "RELOAD"]);
    assert_eq!(state(&mut con), loaded, "after an RDB reload");
    assert!(!server.log().contains("refused"), "{}", server.log());
}
