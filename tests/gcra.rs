//! The token bucket (GCRA) on a real server, module only: redis-cell's
//! replies through RATELIMIT.GCRA and the drop-in names (opt-in at load,
//! left out where the server has the name), exact rates, changed limits,
//! its own type that never mixes with a log, replication and every reload
//! to the master's exact bytes, DUMP/RESTORE/COPY and refused payloads,
//! the encoding-1 fixture, and what a built-in command shows (COMMAND
//! DOCS against docs/gcra.md, key specs, ACL, INFO, events, WATCH).

use harness::{
    all_digests_and_expiries, all_dumps_and_expiries, aof_commands, assert_survives_every_reload,
    bucket_payload, command_docs, error, fixture_payload, info_field, info_text, restore, run,
    server_clock_ms, synopsis, text, wait_for_replica, Server,
};
use redis::{Connection, Value};

const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";

fn with_aliases() -> Server {
    Server::start_with_module_args(&["aliases", "cl.throttle,gcra"], &[])
}

/// The calls in one pipeline (the issue's "within a second"), each
/// reply.
fn pipelined(con: &mut Connection, calls: &[&[&str]]) -> Vec<Vec<i64>> {
    let mut pipe = redis::pipe();
    for call in calls {
        pipe.add_command(harness::command(call));
    }
    pipe.query(con).expect("the pipeline")
}

/// `CL.THROTTLE user123 15 30 60` twenty times within a second answers
/// `0 16 16-k -1 2k` for k = 1..16, then `1 16 0 2 32`; RATELIMIT.GCRA and
/// GCRA answer the same, and MS gives the waits in milliseconds.
#[test]
fn the_issue_example_in_every_spelling() {
    let server = with_aliases();
    let mut con = server.connect();
    let mut expected: Vec<Vec<i64>> = (1..=16).map(|k| vec![0, 16, 16 - k, -1, 2 * k]).collect();
    expected.extend((17..=20).map(|_| vec![1, 16, 0, 2, 32]));
    for call in [
        ["CL.THROTTLE", "user123", "15", "30", "60"],
        ["RATELIMIT.GCRA", "user124", "15", "30", "60"],
        ["GCRA", "user125", "15", "30", "60"],
    ] {
        assert_eq!(pipelined(&mut con, &[&call[..]; 20]), expected, "{call:?}");
    }
    let ms = pipelined(
        &mut con,
        &vec![&["RATELIMIT.GCRA", "user126", "15", "30", "60", "MS"][..]; 17],
    );
    assert_eq!(ms[0], [0, 16, 15, -1, 2000]);
    // The 17th waits for one token (2 s) less what drained since the
    // first call: the same drain in both waits.
    let [limited, burst, remaining, retry, reset] = ms[16][..] else {
        panic!("{:?}", ms[16]);
    };
    assert_eq!((limited, burst, remaining), (1, 16, 0));
    assert!((1000..=2000).contains(&retry), "{retry}");
    assert_eq!(reset - retry, 30_000, "{:?}", ms[16]);
    let kind: String = run(&mut con, &["TYPE", "user123"]);
    assert_eq!(kind, "gcralimit");
}

/// A bucket and a sliding-window log never mix: each is WRONGTYPE for the
/// other's commands, as is any other type (where redis-cell panics the
/// server, #91), and nothing changes.
#[test]
fn a_bucket_and_a_log_never_mix() {
    let server = with_aliases();
    let mut con = server.connect();
    run::<Vec<i64>>(&mut con, &["RATELIMIT.GCRA", "bucket", "5", "1", "60"]);
    run::<Vec<i64>>(&mut con, &["RATELIMIT.CHECK", "log", "1000", "5"]);
    run::<()>(&mut con, &["SET", "s", "1559260935732768000"]);
    run::<()>(&mut con, &["RPUSH", "list", "x"]);
    let before = all_digests_and_expiries(&mut con);
    let calls: [&[&str]; 9] = [
        &["RATELIMIT.CHECK", "bucket", "1000", "5"],
        &["RATELIMIT.PEEK", "bucket", "1000", "5"],
        &["RATELIMIT.UNDO", "bucket"],
        &["RATELIMIT.MCHECK", "1", "bucket", "1", "1000", "5"],
        &["RATELIMIT.UNBLOCK", "bucket"],
        &["RATELIMIT.GCRA", "log", "5", "1", "1"],
        &["CL.THROTTLE", "s", "5", "1", "1"],
        &["GCRA", "list", "5", "1", "1", "TOKENS", "0"],
        &["GET", "bucket"],
    ];
    for words in calls {
        assert_eq!(error(&mut con, words), WRONGTYPE, "{words:?}");
    }
    assert_eq!(all_digests_and_expiries(&mut con), before);
    let kinds: Vec<String> = ["bucket", "log"]
        .iter()
        .map(|key| run(&mut con, &["TYPE", key]))
        .collect();
    assert_eq!(kinds, ["gcralimit", "ratelimit"]);
    let buckets: (String, Vec<String>) = run(
        &mut con,
        &["SCAN", "0", "COUNT", "100", "TYPE", "gcralimit"],
    );
    assert_eq!(buckets.1, ["bucket"]);
}

/// TOKENS 0 (quantity 0) asks: a fresh key answers full and is not
/// created; an existing one keeps its bytes and expiry, and a WATCH on it
/// holds.
#[test]
fn zero_tokens_ask_without_charging() {
    let server = with_aliases();
    let (mut con, mut watcher) = (server.connect(), server.connect());
    let fresh: Vec<i64> = run(&mut con, &["CL.THROTTLE", "fresh", "5", "1", "1", "0"]);
    assert_eq!(fresh, [0, 6, 6, -1, 0]);
    let exists: i64 = run(&mut con, &["EXISTS", "fresh"]);
    assert_eq!(exists, 0);
    run::<Vec<i64>>(
        &mut con,
        &["RATELIMIT.GCRA", "k", "5", "1", "60", "TOKENS", "2"],
    );
    let before = all_dumps_and_expiries(&mut con);
    run::<()>(&mut watcher, &["WATCH", "k"]);
    let asked: Vec<i64> = run(
        &mut con,
        &["RATELIMIT.GCRA", "k", "5", "1", "60", "TOKENS", "0"],
    );
    assert_eq!(asked[..4], [0, 6, 4, -1]);
    // A limited call changes nothing either.
    let limited: Vec<i64> = run(
        &mut con,
        &["RATELIMIT.GCRA", "k", "5", "1", "60", "TOKENS", "5"],
    );
    assert_eq!(limited[..3], [1, 6, 4]);
    run::<()>(&mut watcher, &["MULTI"]);
    run::<()>(&mut watcher, &["SET", "marker", "1"]);
    let exec: Value = run(&mut watcher, &["EXEC"]);
    assert_eq!(exec, Value::Array(vec![Value::Okay]), "the key was touched");
    run::<i64>(&mut con, &["DEL", "marker"]);
    assert_eq!(all_dumps_and_expiries(&mut con), before);
    assert_eq!(
        info_field(&mut con, "ratelimit", "ratelimit_gcra_peeks"),
        Some(2)
    );
    assert_eq!(
        info_field(&mut con, "ratelimit", "ratelimit_gcra_limited"),
        Some(1)
    );
}

/// redis-cell #50 (a sub-second emission interval: its key expired at
/// once) and #80 (above 1,000 per second: "zero rates are not supported"):
/// both are limits like any other here.
#[test]
fn sub_second_periods_and_fast_rates_work() {
    let server = with_aliases();
    let mut con = server.connect();
    let reply: Vec<i64> = run(&mut con, &["CL.THROTTLE", "fast", "0", "2000", "1", "1"]);
    assert_eq!(reply[..4], [0, 1, 0, -1]);
    let burst = pipelined(
        &mut con,
        &vec![&["CL.THROTTLE", "burst", "5999", "6000", "1"][..]; 6000],
    );
    assert!(burst.iter().all(|r| r[0] == 0), "a burst of 6,000 fits");
    let pttl: i64 = run(&mut con, &["PTTL", "burst"]);
    assert!(
        (1..=1000).contains(&pttl),
        "the key lives until it drains: {pttl}"
    );
    let half = pipelined(
        &mut con,
        &[&["RATELIMIT.GCRA", "half", "0", "1", "0.5", "MS"][..]; 2],
    );
    assert_eq!(half[0], [0, 1, 0, -1, 500]);
    assert_eq!(half[1][..3], [1, 1, 0]);
    assert!((1..=500).contains(&half[1][3]), "{half:?}");
}

/// redis-cell #54: raising the rate on a live key applies at once to what
/// was used (redis-cell kept the old schedule and limited the call).
#[test]
fn a_changed_limit_keeps_the_tokens_in_use() {
    let server = with_aliases();
    let mut con = server.connect();
    let slow: &[&str] = &["CL.THROTTLE", "user1", "15", "10", "20", "1"];
    let replies = pipelined(
        &mut con,
        &[
            slow,
            slow,
            slow,
            &["CL.THROTTLE", "user1", "15", "1000", "20", "1"],
            &["RATELIMIT.GCRA", "user1", "0", "1000", "20", "MS"],
        ],
    );
    let faster = &replies[3];
    assert_eq!(faster[..2], [0, 16], "{faster:?}");
    assert!(
        (12..=15).contains(&faster[2]),
        "three tokens used: {faster:?}"
    );
    // A smaller burst leaves the key over full: its four tokens drain
    // (one every 20 ms) before one fits.
    let tighter = &replies[4];
    assert_eq!(tighter[..3], [1, 1, 0]);
    assert!((60..=80).contains(&tighter[3]), "{tighter:?}");
}

/// `RATELIMIT.GCRA ... TOKENS n CHARGE` and `REFUND` (issue 27).
fn gcra(con: &mut Connection, key: &str, rest: &[&str]) -> Vec<i64> {
    let mut words = vec!["RATELIMIT.GCRA", key];
    words.extend(rest);
    run(con, &words)
}

/// Issue 27's settlement on a token bucket: reserve an estimate, CHARGE
/// the rest past full (a debt the next requests wait out, never limited
/// itself), REFUND what was not used (a key left empty is deleted); the
/// errors; the drop-in names have neither option.
#[test]
fn settlements_charge_past_full_and_refund() {
    let server = with_aliases();
    let mut con = server.connect();
    // An hour per token: nothing drains between the calls.
    let with = |opts: &[&'static str]| -> Vec<&'static str> {
        let mut w = vec!["3", "1", "3600"];
        w.extend(opts);
        w
    };
    assert_eq!(
        gcra(&mut con, "k", &with(&["TOKENS", "2"]))[..4],
        [0, 4, 2, -1]
    );
    let charged = gcra(&mut con, "k", &with(&["TOKENS", "5", "CHARGE", "MS"]));
    assert_eq!(charged[..3], [3, 4, 0], "7 tokens in a bucket of 4");
    // A token fits again when 4 of the 7 have drained: 4 hours.
    assert!(
        (14_399_000..=14_400_000).contains(&charged[3]),
        "{charged:?}"
    );
    assert!(
        (25_199_000..=25_200_000).contains(&charged[4]),
        "{charged:?}"
    );
    // Limited until the debt drains; CHARGE itself never is.
    let limited = gcra(&mut con, "k", &with(&[]));
    assert_eq!(limited[..3], [1, 4, 0]);
    let again = gcra(&mut con, "k", &with(&["CHARGE"]));
    assert_eq!(again[..3], [4, 4, 0]);
    // TOKENS 0 charges nothing and answers as things stand.
    let before = all_dumps_and_expiries(&mut con);
    assert_eq!(
        gcra(&mut con, "k", &with(&["TOKENS", "0", "CHARGE"]))[..3],
        [4, 4, 0]
    );
    assert_eq!(
        gcra(&mut con, "k", &with(&["TOKENS", "0", "REFUND"]))[..3],
        [4, 4, 0]
    );
    assert_eq!(all_dumps_and_expiries(&mut con), before);
    // A refund takes back what is held now.
    let refunded = gcra(&mut con, "k", &with(&["TOKENS", "6", "REFUND"]));
    assert_eq!(refunded[..4], [0, 4, 2, -1]);
    let ttl: i64 = run(&mut con, &["PTTL", "k"]);
    assert!((7_199_000..=7_200_000).contains(&ttl), "{ttl}");
    let emptied = gcra(&mut con, "k", &with(&["TOKENS", "100", "REFUND"]));
    assert_eq!(emptied, [0, 4, 4, -1, 0]);
    assert_eq!(run::<i64>(&mut con, &["EXISTS", "k"]), 0, "deleted");
    assert_eq!(gcra(&mut con, "k", &with(&["REFUND"])), [0, 4, 4, -1, 0]);
    assert_eq!(run::<i64>(&mut con, &["EXISTS", "k"]), 0);
    // Past the exact bound: refused whole, nothing changes.
    gcra(
        &mut con,
        "big",
        &["0", "1", "7776000", "TOKENS", "1157407", "CHARGE"],
    );
    let big = all_dumps_and_expiries(&mut con);
    let overflow = "ERR this key would hold more than 9000000000000000 token-milliseconds (its tokens times the period in milliseconds, the most a bucket holds exactly): nothing was charged";
    assert_eq!(
        error(
            &mut con,
            &["RATELIMIT.GCRA", "big", "0", "1", "7776000", "CHARGE"]
        ),
        overflow
    );
    assert_eq!(
        error(
            &mut con,
            &[
                "RATELIMIT.GCRA",
                "new",
                "0",
                "1",
                "1",
                "TOKENS",
                "9000000000000000",
                "CHARGE"
            ]
        ),
        overflow
    );
    assert_eq!(all_dumps_and_expiries(&mut con), big);
    assert_eq!(
        error(
            &mut con,
            &["RATELIMIT.GCRA", "k", "3", "1", "1", "CHARGE", "REFUND"]
        ),
        "ERR CHARGE and REFUND cannot both be given: a call charges or refunds"
    );
    assert_eq!(
        error(&mut con, &["GCRA", "k", "3", "1", "1", "CHARGE"]),
        "ERR unknown option 'CHARGE' (the options are TOKENS n)"
    );
    assert_eq!(
        error(
            &mut con,
            &["CL.THROTTLE", "k", "3", "1", "1", "1", "REFUND"]
        ),
        "ERR wrong number of arguments for 'cl.throttle' command"
    );
    assert_eq!(
        error(
            &mut con,
            &["RATELIMIT.GCRA", "k", "3", "1", "1", "COST", "1"]
        ),
        "ERR unknown option 'COST' (the options are TOKENS n, MS, CHARGE and REFUND)"
    );
    run::<()>(&mut con, &["SET", "s", "x"]);
    assert_eq!(
        error(&mut con, &["RATELIMIT.GCRA", "s", "3", "1", "1", "CHARGE"]),
        WRONGTYPE
    );
    assert_eq!(
        error(&mut con, &["RATELIMIT.GCRA", "s", "3", "1", "1", "REFUND"]),
        WRONGTYPE
    );
}

/// Settlements are writes: WATCH fires, a charge publishes
/// `ratelimit.recorded`, a refund `ratelimit.refunded` (and
/// `ratelimit.deleted` when it empties the key); INFO counts them.
#[test]
fn settlements_watch_events_and_info() {
    let server = Server::start(&["--notify-keyspace-events", "Kd$"]);
    let mut subscriber = server.subscriber();
    let mut pubsub = subscriber.as_pubsub();
    pubsub.subscribe("__keyspace@0__:k").expect("SUBSCRIBE");
    let (mut con, mut watcher) = (server.connect(), server.connect());
    for opts in [
        &["TOKENS", "5", "CHARGE"][..],
        &["TOKENS", "1", "REFUND"],
        &["TOKENS", "9", "REFUND"],
    ] {
        run::<()>(&mut watcher, &["WATCH", "k"]);
        let mut words = vec!["1", "1", "60"];
        words.extend(opts);
        gcra(&mut con, "k", &words);
        run::<()>(&mut watcher, &["MULTI"]);
        run::<()>(&mut watcher, &["SET", "marker", "1"]);
        assert_eq!(
            run::<Value>(&mut watcher, &["EXEC"]),
            Value::Nil,
            "{opts:?}"
        );
    }
    // Nothing to refund, nothing charged: no write.
    run::<()>(&mut watcher, &["WATCH", "k"]);
    gcra(&mut con, "k", &["1", "1", "60", "REFUND"]);
    gcra(&mut con, "k", &["1", "1", "60", "TOKENS", "0", "CHARGE"]);
    run::<()>(&mut watcher, &["MULTI"]);
    run::<()>(&mut watcher, &["SET", "marker", "1"]);
    assert_eq!(
        run::<Value>(&mut watcher, &["EXEC"]),
        Value::Array(vec![Value::Okay])
    );
    run::<()>(&mut con, &["SET", "k", "done"]);
    let mut events = Vec::new();
    loop {
        let event: String = pubsub
            .get_message()
            .expect("an event")
            .get_payload()
            .expect("text");
        if event == "set" {
            break;
        }
        events.push(event);
    }
    assert_eq!(
        events,
        [
            "ratelimit.recorded",
            "ratelimit.refunded",
            "ratelimit.refunded",
            "ratelimit.deleted"
        ]
    );
    for (field, value) in [
        ("ratelimit_gcra_charges", 2),
        ("ratelimit_gcra_charges_over", 1),
        ("ratelimit_gcra_tokens", 5),
        ("ratelimit_gcra_refunds", 3),
        ("ratelimit_gcra_tokens_refunded", 10),
        ("ratelimit_gcra_checks", 0),
        ("ratelimit_charges", 0),
        ("ratelimit_undos", 0),
    ] {
        assert_eq!(
            info_field(&mut con, "ratelimit", field),
            Some(value),
            "{field}"
        );
    }
}

/// A settlement reaches replicas and the AOF as what it left: GCRASET
/// with the master's bucket and expiry, or DEL for a key a refund
/// emptied; replica and AOF replay hold the master's exact bytes, and a
/// debt survives every reload.
#[test]
fn settlements_replicate_and_persist_as_the_masters_buckets() {
    let mut master = Server::start(&["--appendonly", "yes", "--appendfsync", "always"]);
    let replica = Server::start(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
    let (mut m, mut r) = (master.connect(), replica.connect());
    wait_for_replica(&mut m, &mut r);
    gcra(&mut m, "debt", &["1", "1", "60", "TOKENS", "7", "CHARGE"]);
    gcra(&mut m, "part", &["4", "1", "60", "TOKENS", "3"]);
    gcra(&mut m, "part", &["4", "1", "60", "TOKENS", "2", "REFUND"]);
    gcra(&mut m, "gone", &["4", "1", "60", "TOKENS", "3", "CHARGE"]);
    gcra(&mut m, "gone", &["4", "1", "60", "TOKENS", "3", "REFUND"]);
    gcra(&mut m, "none", &["4", "1", "60", "TOKENS", "3", "REFUND"]);
    let script =
        "return redis.call('RATELIMIT.GCRA', KEYS[1], 0, 1, 60, 'TOKENS', 4, 'CHARGE', 'MS')";
    let scripted: Vec<i64> = run(&mut m, &["EVAL", script, "1", "scripted"]);
    assert_eq!(scripted[..3], [3, 1, 0]);
    wait_for_replica(&mut m, &mut r);
    let on_master = all_dumps_and_expiries(&mut m);
    assert_eq!(on_master.len(), 3, "{on_master:?}");
    assert_eq!(all_dumps_and_expiries(&mut r), on_master, "the replica");
    assert_eq!(
        all_digests_and_expiries(&mut r),
        all_digests_and_expiries(&mut m)
    );
    let names: Vec<String> = aof_commands(&master)
        .iter()
        .map(|c| c[0].to_lowercase())
        .filter(|name| !["select", "multi", "exec"].contains(&name.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            "ratelimit.gcraset",
            "ratelimit.gcraset",
            "ratelimit.gcraset",
            "ratelimit.gcraset",
            "del",
            "ratelimit.gcraset"
        ],
        "{names:?}"
    );
    master.kill();
    master.relaunch();
    let mut m = master.connect();
    assert_eq!(
        all_dumps_and_expiries(&mut m),
        on_master,
        "the AOF replays to the same bytes"
    );
    // The debt persists: 7 tokens, 5 over a bucket of 2.
    let debt = gcra(&mut m, "debt", &["1", "1", "60", "TOKENS", "0", "CHARGE"]);
    assert_eq!(debt[..3], [5, 2, 0]);
    let buckets = assert_survives_every_reload(&mut master, all_dumps_and_expiries);
    assert_eq!(buckets.len(), 3);
}

/// Buckets of every shape: each spelling, several tokens, fractional
/// levels and periods, a changed limit, a full bucket, and a bucket
/// without an expiry.
fn every_bucket_shape(con: &mut Connection) {
    // Slow rates: every bucket outlives the reloads, however slow.
    let calls: [&[&str]; 9] = [
        &["RATELIMIT.GCRA", "b:minute", "15", "1", "60"],
        &[
            "RATELIMIT.GCRA",
            "b:minute",
            "15",
            "1",
            "60",
            "TOKENS",
            "3",
            "MS",
        ],
        &["CL.THROTTLE", "b:cell", "4", "1", "60", "2"],
        &["GCRA", "b:redis", "9", "1", "90.5", "TOKENS", "4"],
        &["RATELIMIT.GCRA", "b:changed", "15", "10", "20"],
        &[
            "RATELIMIT.GCRA",
            "b:changed",
            "15",
            "1",
            "60",
            "TOKENS",
            "2",
        ],
        &["RATELIMIT.GCRA", "b:full", "2", "1", "3600", "TOKENS", "3"],
        &[
            "RATELIMIT.GCRA",
            "b:tokens",
            "9999999",
            "1000",
            "60",
            "TOKENS",
            "2500",
        ],
        &["RATELIMIT.GCRA", "b:persisted", "0", "1", "3600"],
    ];
    for words in calls {
        let reply: Vec<i64> = run(con, words);
        assert_eq!(reply[0], 0, "{words:?}: {reply:?}");
    }
    run::<i64>(con, &["PERSIST", "b:persisted"]);
}

/// Replicas and the AOF get `RATELIMIT.GCRASET` with the master's bucket
/// and expiry, never the call: a replica (loaded without the aliases) and
/// a replay of the AOF hold the master's exact bytes and expiries, and the
/// replica decides nothing itself.
#[test]
fn replicas_and_the_aof_hold_the_masters_buckets() {
    let mut master = Server::start_with_module_args(
        &["aliases", "cl.throttle,gcra"],
        &["--appendonly", "yes", "--appendfsync", "always"],
    );
    let replica = Server::start(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
    let (mut m, mut r) = (master.connect(), replica.connect());
    wait_for_replica(&mut m, &mut r);
    every_bucket_shape(&mut m);
    run::<Vec<i64>>(&mut m, &["RATELIMIT.GCRA", "b:full", "2", "1", "3600"]);
    // In a transaction and from a script, as single calls.
    let (first, second): (Vec<i64>, Vec<i64>) = redis::pipe()
        .atomic()
        .add_command(harness::command(&[
            "RATELIMIT.GCRA",
            "b:multi",
            "5",
            "1",
            "60",
        ]))
        .add_command(harness::command(&[
            "GCRA", "b:multi", "5", "1", "60", "TOKENS", "2",
        ]))
        .query(&mut m)
        .expect("MULTI/EXEC");
    assert_eq!((first[2], second[2]), (5, 3));
    let script = "return redis.call('RATELIMIT.GCRA', KEYS[1], 5, 1, 60, 'TOKENS', 3)";
    let scripted: Vec<i64> = run(&mut m, &["EVAL", script, "1", "b:script"]);
    assert_eq!(scripted[..3], [0, 6, 3]);
    wait_for_replica(&mut m, &mut r);
    let on_master = all_dumps_and_expiries(&mut m);
    assert_eq!(on_master.len(), 9, "{on_master:?}");
    assert_eq!(all_dumps_and_expiries(&mut r), on_master, "the replica");
    assert_eq!(
        info_field(&mut r, "ratelimit", "ratelimit_gcra_checks"),
        Some(0)
    );
    assert_eq!(
        info_field(&mut r, "ratelimit", "ratelimit_records_replayed"),
        Some(12)
    );
    let refused = error(&mut r, &["RATELIMIT.GCRA", "b:minute", "15", "30", "60"]);
    assert!(refused.starts_with("READONLY"), "{refused}");

    let names: Vec<String> = aof_commands(&master)
        .iter()
        .map(|c| c[0].to_lowercase())
        .filter(|name| name != "select")
        .collect();
    let sets = names.iter().filter(|n| *n == "ratelimit.gcraset").count();
    assert_eq!(sets, 12, "one GCRASET per charge: {names:?}");
    let written = ["ratelimit.gcraset", "persist", "multi", "exec"];
    assert!(
        names.iter().all(|n| written.contains(&n.as_str())),
        "{names:?}"
    );
    master.kill();
    master.relaunch();
    let mut m = master.connect();
    assert_eq!(
        all_dumps_and_expiries(&mut m),
        on_master,
        "the AOF replays to the same bytes"
    );
}

/// Buckets survive DEBUG RELOAD, a restart from the RDB, from the AOF and
/// from a rewritten AOF (GCRASET per key, then Redis's PEXPIREAT) with the
/// same bytes and expiry, and answer the same.
#[test]
fn buckets_survive_every_reload() {
    let mut server = Server::start_with_module_args(
        &["aliases", "cl.throttle,gcra"],
        &[
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--aof-use-rdb-preamble",
            "no",
        ],
    );
    let mut con = server.connect();
    every_bucket_shape(&mut con);
    let ask = ["RATELIMIT.GCRA", "b:full", "2", "1", "3600", "TOKENS", "0"];
    let answer: Vec<i64> = run(&mut con, &ask);
    assert_eq!(answer[..3], [0, 3, 0]);
    let buckets = assert_survives_every_reload(&mut server, all_dumps_and_expiries);
    assert_eq!(buckets.len(), 7, "{buckets:?}");
    let mut con = server.connect();
    let after: Vec<i64> = run(&mut con, &ask);
    assert_eq!(after[..3], answer[..3]);
    let ttl: i64 = run(&mut con, &["PTTL", "b:persisted"]);
    assert_eq!(ttl, -1, "a bucket without expiry stays without one");
}

/// COPY and DUMP/RESTORE keep a bucket's bytes; a payload holding numbers
/// no bucket holds, or from a future encoding, is refused (saying why in
/// the server's log) and the server goes on.
#[test]
fn copy_restore_and_refused_payloads() {
    let server = Server::start(&[]);
    let mut con = server.connect();
    run::<Vec<i64>>(
        &mut con,
        &["RATELIMIT.GCRA", "k", "15", "1", "60", "TOKENS", "7"],
    );
    run::<i64>(&mut con, &["COPY", "k", "copy"]);
    let dump: Vec<u8> = run(&mut con, &["DUMP", "k"]);
    assert_eq!(restore(&mut con, "restored", &dump).expect("RESTORE"), "OK");
    let dumps: Vec<Vec<u8>> = ["k", "copy", "restored"]
        .iter()
        .map(|key| run(&mut con, &["DUMP", key]))
        .collect();
    assert!(dumps.iter().all(|d| *d == dump), "{dumps:?}");
    let now = server_clock_ms(&mut con);
    let good = bucket_payload(&mut con, now, 60_000, 60_000);
    assert_eq!(
        restore(&mut con, "crafted", &good).expect("a good payload"),
        "OK"
    );
    let crafted: Vec<i64> = run(
        &mut con,
        &["RATELIMIT.GCRA", "crafted", "15", "30", "60", "TOKENS", "0"],
    );
    assert_eq!(crafted[..3], [0, 16, 15]);
    for (at, period, level) in [
        (0, 60_000, 1),
        (-5, 60_000, 1),
        (1 << 42, 60_000, 1),
        (now, 0, 1),
        (now, 7_776_000_001, 1),
        (now, 60_000, 0),
        (now, 60_000, 9_000_000_000_000_001),
    ] {
        let payload = bucket_payload(&mut con, at, period, level);
        assert!(
            restore(&mut con, "bad", &payload).is_err(),
            "{at} {period} {level}"
        );
    }
    let exists: i64 = run(&mut con, &["EXISTS", "bad"]);
    assert_eq!(exists, 0);
    assert!(
        server.log().contains("refused a stored bucket (Time)"),
        "{}",
        server.log()
    );
    assert!(server.log().contains("refused a stored bucket (Level)"));
    // A future encoding version is refused, not misread.
    let mut future = dump.clone();
    let id = u64::from_be_bytes(future[2..10].try_into().expect("8 bytes"));
    assert_eq!(id & 1023, 1, "this build writes encoding version 1");
    future[2..10].copy_from_slice(&((id & !1023) | 2).to_be_bytes());
    run::<String>(&mut con, &["DEBUG", "SET-SKIP-CHECKSUM-VALIDATION", "1"]);
    assert!(restore(&mut con, "future", &future).is_err());
    let pong: String = run(&mut con, &["PING"]);
    assert_eq!(pong, "PONG");
}

/// Encoding version 1 as its first build wrote it (tests/fixtures/gcra1):
/// it restores, answers as then, and dumps back byte for byte.
#[test]
fn the_encoding_1_fixtures_still_load() {
    let server = Server::start(&[]);
    let mut con = server.connect();
    for (name, limit, seconds, ms) in [
        (
            "minute",
            ["15", "30", "60"],
            [0, 16, 13, -1, 5],
            [0, 16, 13, -1, 4116],
        ),
        (
            "tenth",
            ["0", "1", "0.1"],
            [0, 1, 0, -1, 1],
            [0, 1, 0, -1, 100],
        ),
    ] {
        let payload = fixture_payload("gcra1", name);
        assert_eq!(restore(&mut con, name, &payload).expect("RESTORE"), "OK");
        let dumped: Vec<u8> = run(&mut con, &["DUMP", name]);
        let value = |dump: &[u8]| dump[..dump.len() - 10].to_vec();
        assert_eq!(value(&dumped), value(&payload), "{name} dumps as it loaded");
        let mut ask = vec!["RATELIMIT.GCRA", name];
        ask.extend(limit);
        ask.extend(["TOKENS", "0"]);
        assert_eq!(run::<Vec<i64>>(&mut con, &ask), seconds, "{name}");
        ask.push("MS");
        assert_eq!(run::<Vec<i64>>(&mut con, &ask), ms, "{name}");
    }
}

/// The drop-in names exist only when asked for; one the server already
/// has (here ECHO renamed to GCRA) is left out, saying so in the log; an
/// unknown one refuses the load; the setting cannot change afterwards.
#[test]
fn aliases_are_opt_in_and_never_take_a_name() {
    let plain = Server::start(&[]);
    let mut con = plain.connect();
    let unknown = error(&mut con, &["CL.THROTTLE", "k", "1", "1", "1"]);
    assert!(unknown.starts_with("ERR unknown command"), "{unknown}");
    assert_eq!(
        info_text(&mut con, "ratelimit", "ratelimit_aliases").as_deref(),
        Some("")
    );

    let taken = Server::start_with_module_args(
        &["aliases", "GCRA CL.THROTTLE"],
        &["--rename-command", "ECHO", "GCRA"],
    );
    let mut con = taken.connect();
    let echo: String = run(&mut con, &["GCRA", "mine"]);
    assert_eq!(echo, "mine", "the server's own command stays");
    let cell: Vec<i64> = run(&mut con, &["CL.THROTTLE", "k", "1", "1", "1"]);
    assert_eq!(cell[0], 0);
    assert_eq!(
        info_text(&mut con, "ratelimit", "ratelimit_aliases").as_deref(),
        Some("cl.throttle")
    );
    assert!(taken.log().contains(
        "ratelimit: not registering GCRA: the server already has a command of that name"
    ));
    let config: Vec<String> = run(&mut con, &["CONFIG", "GET", "ratelimit.aliases"]);
    assert_eq!(config[1], "GCRA CL.THROTTLE");
    let immutable = error(&mut con, &["CONFIG", "SET", "ratelimit.aliases", ""]);
    assert!(immutable.starts_with("ERR"), "{immutable}");

    let log = Server::refused_start(&["aliases", "cl.throttle,throttle"]);
    assert!(
        log.contains("unknown alias 'throttle' in aliases (the aliases are CL.THROTTLE and GCRA)"),
        "{log}"
    );
}

/// Every malformed call gets its error and changes nothing, in each
/// spelling; GCRASET is refused from clients.
#[test]
fn every_malformed_call_is_refused_and_changes_nothing() {
    let server = with_aliases();
    let mut con = server.connect();
    run::<Vec<i64>>(&mut con, &["RATELIMIT.GCRA", "k", "5", "1", "60"]);
    let before = all_dumps_and_expiries(&mut con);
    let arity = |name: &str| format!("ERR wrong number of arguments for '{name}' command");
    let period = "ERR period must be a number of seconds from 0.001 to 7776000 (90 days), in whole milliseconds";
    let max_burst = "ERR max_burst must be an integer from 0 to 8999999999999999";
    let count = "ERR count must be an integer from 1 to 9000000000000000";
    let capacity = "ERR max_burst + 1 times the period in milliseconds is above 9000000000000000: lower max_burst or the period";
    let tokens =
        "ERR TOKENS must be an integer from 0 to 9000000000000000 (0 asks without charging)";
    let mut cases: Vec<(Vec<&str>, String)> =
        vec![
        (vec!["RATELIMIT.GCRA", "k", "5", "1"], arity("ratelimit.gcra")),
        (vec!["CL.THROTTLE", "k", "5", "1"], arity("cl.throttle")),
        (vec!["CL.THROTTLE", "k", "5", "1", "60", "1", "1"], arity("cl.throttle")),
        (vec!["GCRA", "k"], arity("gcra")),
        (
            vec!["GCRA", "k", "5", "0", "60"],
            "ERR tokens_per_period must be an integer from 1 to 9000000000000000".into(),
        ),
        (
            vec!["CL.THROTTLE", "k", "5", "1", "60", "-1"],
            "ERR quantity must be an integer from 0 to 9000000000000000 (0 asks without charging)"
                .into(),
        ),
        (vec!["RATELIMIT.GCRA", "k", "5", "1", "60", "TOKENS", "x"], tokens.into()),
        (
            vec!["RATELIMIT.GCRA", "k", "5", "1", "60", "TOKENS"],
            "ERR syntax error: TOKENS needs a value".into(),
        ),
        (
            vec!["RATELIMIT.GCRA", "k", "5", "1", "60", "MS", "ms"],
            "ERR MS given more than once".into(),
        ),
        (
            vec!["RATELIMIT.GCRA", "k", "5", "1", "60", "COST", "1"],
            "ERR unknown option 'COST' (the options are TOKENS n, MS, CHARGE and REFUND)".into(),
        ),
        (
            vec!["GCRA", "k", "5", "1", "60", "MS"],
            "ERR unknown option 'MS' (the options are TOKENS n)".into(),
        ),
        (vec!["RATELIMIT.GCRA", "k", "9000000000000", "1", "1"], capacity.into()),
        (
            vec!["RATELIMIT.GCRASET", "k", "1700000000000", "1000", "1000", "0"],
            "ERR ratelimit.gcraset is internal: it only runs from the replication link or the AOF"
                .into(),
        ),
    ];
    for command in ["RATELIMIT.GCRA", "CL.THROTTLE", "GCRA"] {
        for bad in [
            "0", "-1", "0.0001", "1.0005", "1e3", ".5", "5.", "x", "", "7776001", "+1",
        ] {
            cases.push((vec![command, "k", "5", "1", bad], period.into()));
        }
        for bad in ["-1", "x", "1.5", "9000000000000000", "99999999999999999999"] {
            cases.push((vec![command, "k", bad, "1", "60"], max_burst.into()));
        }
        if command != "GCRA" {
            for bad in ["0", "-1", "x", "9000000000000001"] {
                cases.push((vec![command, "k", "5", bad, "60"], count.into()));
            }
        }
    }
    for (words, expected) in &cases {
        assert_eq!(&error(&mut con, words), expected, "{words:?}");
    }
    assert_eq!(all_dumps_and_expiries(&mut con), before, "nothing changed");
    eprintln!("{} malformed calls refused", cases.len());
}

/// A bucket costs Redis what a sliding-window key with one request costs:
/// its 16-byte block (48 bytes for key `k:0` on Redis 7.0, as redis-cell's
/// string).
#[test]
fn a_bucket_costs_sixteen_bytes() {
    let server = Server::start(&[]);
    let mut con = server.connect();
    run::<Vec<i64>>(&mut con, &["RATELIMIT.GCRA", "k:0", "15", "30", "60"]);
    run::<Vec<i64>>(&mut con, &["RATELIMIT.CHECK", "k:1", "60000", "5"]);
    let usage = |con: &mut Connection, key: &str| -> i64 { run(con, &["MEMORY", "USAGE", key]) };
    let (bucket, log) = (usage(&mut con, "k:0"), usage(&mut con, "k:1"));
    assert_eq!(
        bucket, log,
        "a bucket {bucket} B, a one-request log {log} B"
    );
}

/// COMMAND DOCS against docs/gcra.md (each command's heading and summary),
/// key specs, ACL categories where the server has them, and a RESP3
/// client getting the same array.
#[test]
fn commands_show_themselves_like_built_in_ones() {
    let server = with_aliases();
    let mut con = server.connect();
    let gcra_md = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/gcra.md"))
        .expect("docs/gcra.md");
    for name in ["RATELIMIT.GCRA", "CL.THROTTLE", "GCRA"] {
        let docs = command_docs(&mut con, name);
        let heading = format!("`{}`", synopsis(name, &docs));
        assert!(
            gcra_md
                .lines()
                .any(|l| l.starts_with('#') && l.ends_with(&heading)),
            "docs/gcra.md has no heading {heading}"
        );
        let summary = format!("> {}", text(&docs["summary"]));
        assert!(
            gcra_md.contains(&summary),
            "docs/gcra.md lacks the summary of {name}: {summary}"
        );
        let keys: Vec<(String, Vec<String>)> = run(
            &mut con,
            &["COMMAND", "GETKEYSANDFLAGS", name, "rl:1", "1", "1", "1"],
        );
        let flags = vec!["RW".to_string(), "update".to_string()];
        assert_eq!(keys, [("rl:1".to_string(), flags)], "{name}");
    }
    let info: Value = run(&mut con, &["COMMAND", "INFO", "RATELIMIT.GCRA"]);
    let text = format!("{info:?}");
    assert!(text.contains("fast") && text.contains("write"), "{text}");
    if text.contains("@ratelimit") {
        assert!(text.contains("@fast") && text.contains("@write"), "{text}");
    } else {
        eprintln!("this server gives module commands no ACL categories (Redis < 7.2)");
    }
    let client = redis::Client::open(format!("{}?protocol=resp3", server.url())).expect("url");
    let mut resp3 = client.get_connection().expect("RESP3");
    let reply: Value = run(&mut resp3, &["RATELIMIT.GCRA", "r3", "1", "1", "1"]);
    assert_eq!(
        reply,
        Value::Array([0, 2, 1, -1, 1].map(Value::Int).to_vec())
    );
}

/// INFO counts GCRA calls apart from the sliding window's; an allowed call
/// publishes `ratelimit.recorded`, a limited one and a question nothing.
#[test]
fn info_and_keyspace_events() {
    let server = Server::start(&["--notify-keyspace-events", "Kd$"]);
    let mut subscriber = server.subscriber();
    let mut pubsub = subscriber.as_pubsub();
    pubsub.subscribe("__keyspace@0__:k").expect("SUBSCRIBE");
    let mut con = server.connect();
    for words in [
        &["RATELIMIT.GCRA", "k", "1", "1", "60", "TOKENS", "2"][..],
        &["RATELIMIT.GCRA", "k", "1", "1", "60"],
        &["RATELIMIT.GCRA", "k", "1", "1", "60", "TOKENS", "0"],
    ] {
        run::<Vec<i64>>(&mut con, words);
    }
    run::<()>(&mut con, &["SET", "k", "done"]);
    let mut events = Vec::new();
    loop {
        let event: String = pubsub
            .get_message()
            .expect("an event")
            .get_payload()
            .expect("text");
        if event == "set" {
            break;
        }
        events.push(event);
    }
    assert_eq!(events, ["ratelimit.recorded"]);
    for (field, value) in [
        ("ratelimit_gcra_checks", 2),
        ("ratelimit_gcra_allowed", 1),
        ("ratelimit_gcra_limited", 1),
        ("ratelimit_gcra_peeks", 1),
        ("ratelimit_gcra_tokens", 2),
        ("ratelimit_checks", 0),
    ] {
        assert_eq!(
            info_field(&mut con, "ratelimit", field),
            Some(value),
            "{field}"
        );
    }
}

/// Where the server defragments memory actively (both Redis 8 builds),
/// fragmented buckets move (INFO counts them) and keep their bytes, and
/// go on answering.
#[test]
fn active_defragmentation_moves_buckets_and_changes_nothing() {
    let server = Server::start(&["--hz", "100"]);
    let mut con = server.connect();
    if let Err(skipped) = harness::can_defragment(&mut con) {
        eprintln!("skipped: {skipped}");
        return;
    }
    let keys: Vec<String> = (0..60_000).map(|i| format!("bucket:{i}")).collect();
    for chunk in keys.chunks(10_000) {
        let mut pipe = redis::pipe();
        for key in chunk {
            pipe.add_command(harness::command(&[
                "RATELIMIT.GCRA",
                key,
                "15",
                "1",
                "3600",
            ]))
            .ignore();
        }
        pipe.query::<()>(&mut con).expect("fill");
    }
    let kept = harness::fragment(&mut con, keys);
    let before = all_dumps_and_expiries(&mut con);
    let moved = harness::defragment(&mut con);
    assert_eq!(all_dumps_and_expiries(&mut con), before);
    let mut pipe = redis::pipe();
    for key in &kept {
        pipe.add_command(harness::command(&[
            "RATELIMIT.GCRA",
            key,
            "15",
            "1",
            "3600",
        ]));
    }
    let replies: Vec<Vec<i64>> = pipe.query(&mut con).expect("GCRA");
    assert!(
        replies.iter().all(|r| r[..3] == [0, 16, 14]),
        "{:?}",
        &replies[..3]
    );
    eprintln!("defrag moved {moved} buckets");
}
