//! An allowed RATELIMIT.MCHECK reaches replicas and the AOF as one
//! internal `RATELIMIT.MRECORD` over every key (module only: the twin's
//! writes replicate as effects): replica digests and expiries equal the
//! master's, the AOF replays to the same state, a key whose newest entry
//! is later than the clock records at its own time there too, and clients
//! are refused MRECORD.

use harness::{
    all_digests_and_expiries, aof_commands, error, fixture_payload, restore, run, wait_for_replica,
    Server,
};
use redis::Connection;

const KEYS: [&str; 3] = ["{t:7}:user:42", "{t:7}:ip:10.0.0.1", "{t:7}:tenant"];

/// An allowed MCHECK over KEYS (and `more` after them), with `options`.
fn mcheck(con: &mut Connection, more: &[&str], options: &[&str]) {
    let count = (KEYS.len() + more.len()).to_string();
    let mut words = vec!["RATELIMIT.MCHECK", &count];
    words.extend(KEYS);
    words.extend(more);
    words.extend(["2", "1000", "50", "60000", "500", "1", "3600000", "900"]);
    words.extend(["1", "60000", "9000"]);
    for _ in more {
        words.extend(["1", "31536000000", "900"]);
    }
    words.extend(options);
    let (allowed, ..): (i64, i64, i64, i64, Vec<i64>) = run(con, &words);
    assert_eq!(allowed, 1, "{words:?}");
}

#[test]
fn replicas_and_the_aof_apply_one_mrecord_per_allowed_mcheck() {
    let mut master = Server::start(&["--appendonly", "yes", "--appendfsync", "always"]);
    let replica = Server::start(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
    let (mut m, mut r) = (master.connect(), replica.connect());
    wait_for_replica(&mut m, &mut r);
    // A key whose newest entry lies in the year 2200: it records at that
    // time, the others at the clock, from one MRECORD.
    let ahead = "{t:7}:ahead";
    let payload = fixture_payload("v2", "mixed");
    assert_eq!(restore(&mut m, ahead, &payload).expect("RESTORE"), "OK");
    mcheck(&mut m, &[], &[]);
    mcheck(&mut m, &[ahead], &["COST", "3"]);
    mcheck(&mut m, &[], &["PRECISION", "100", "COST", "2"]);
    for _ in 0..5 {
        mcheck(&mut m, &[ahead], &["PRECISION", "10"]);
    }
    wait_for_replica(&mut m, &mut r);
    let on_master = all_digests_and_expiries(&mut m);
    assert_eq!(on_master.len(), 4, "{on_master:?}");
    assert_eq!(all_digests_and_expiries(&mut r), on_master, "the replica");

    let commands: Vec<Vec<String>> = aof_commands(&master)
        .into_iter()
        .filter(|c| !c[0].eq_ignore_ascii_case("select"))
        .collect();
    let records: Vec<&Vec<String>> = commands
        .iter()
        .filter(|c| c[0].eq_ignore_ascii_case("ratelimit.mrecord"))
        .collect();
    assert_eq!(records.len(), 8, "one MRECORD per allowed MCHECK");
    assert_eq!(records[0][1..5], ["3", KEYS[0], KEYS[1], KEYS[2]]);
    // at, cost, precision, then each key's longest window.
    assert_eq!(records[0][6..], ["1", "1", "60000", "3600000", "60000"]);
    assert_eq!(records[1][7..9], ["3", "1"]);
    assert_eq!(records[2][6..8], ["2", "100"]);
    let names: Vec<String> = commands.iter().map(|c| c[0].to_lowercase()).collect();
    for single in ["multi", "ratelimit.record", "ratelimit.mcheck"] {
        assert!(!names.iter().any(|n| n == single), "{single}: {names:?}");
    }

    master.kill();
    master.relaunch();
    let mut m = master.connect();
    assert_eq!(
        all_digests_and_expiries(&mut m),
        on_master,
        "the AOF replays to the same state"
    );
}

#[test]
fn mrecord_is_refused_from_clients_and_names_its_keys() {
    let server = Server::start(&[]);
    let mut con = server.connect();
    let words = [
        "RATELIMIT.MRECORD",
        "2",
        "a",
        "b",
        "1700000000000",
        "1",
        "1",
        "1000",
        "1000",
    ];
    assert_eq!(
        error(&mut con, &words),
        "ERR ratelimit.mrecord is internal: it only runs from the replication link or the AOF"
    );
    let exists: i64 = run(&mut con, &["EXISTS", "a", "b"]);
    assert_eq!(exists, 0);
    let mut getkeys = vec!["COMMAND", "GETKEYS"];
    getkeys.extend(words);
    let keys: Vec<String> = run(&mut con, &getkeys);
    assert_eq!(keys, ["a", "b"]);
}
