//! RATELIMIT.CHARGE and MCHARGE on a real server (issue 27): token budgets
//! for AI and metered APIs, where a request reserves an estimate with
//! CHECK and settles the actual cost after its response, by CHARGE (never
//! denied, recorded even over the limit) or UNDO. The accounting is exact;
//! a key a settlement put over its limit denies the next requests until
//! its window drains; replicas and the AOF record what the master charged
//! (as RECORD and MRECORD); the replies are the same in RESP2 and RESP3;
//! the errors are docs/commands.md's, word for word; WATCH, keyspace
//! events, INFO, key specs and ACL categories as CHECK's and MCHECK's.
//! The corpus's pinned cases of both commands run in tests/corpus.rs.
//! Module only: the script twin does not have them yet.

use harness::{aof_commands, digest, error, fields, items, run, text, wait_for_replica, Server};
use redis::{Connection, Value};
use std::thread::sleep;
use std::time::{Duration, Instant};

const BUDGET: [&str; 2] = ["60000", "10000"];
const MAX: &str = "9223372036854775807";

/// `RATELIMIT.CHARGE key window max [...] [options]`.
fn charge(con: &mut Connection, key: &str, limits: &[&str], options: &[&str]) -> [i64; 4] {
    let mut words = vec!["RATELIMIT.CHARGE", key];
    words.extend(limits);
    words.extend(options);
    let reply: Vec<i64> = run(con, &words);
    reply.try_into().expect("four integers")
}

/// `RATELIMIT.CHECK key window max [...] [options]`.
fn check(con: &mut Connection, key: &str, limits: &[&str], options: &[&str]) -> [i64; 4] {
    let mut words = vec!["RATELIMIT.CHECK", key];
    words.extend(limits);
    words.extend(options);
    let reply: Vec<i64> = run(con, &words);
    reply.try_into().expect("four integers")
}

/// The cost a key holds in its minute: what a PEEK under a max no key
/// reaches leaves of it.
fn held(con: &mut Connection, key: &str) -> i64 {
    let reply: Vec<i64> = run(con, &["RATELIMIT.PEEK", key, "60000", MAX]);
    i64::MAX - reply[1]
}

/// One request of a 10,000-token-a-minute budget: reserve `estimate`,
/// then settle `actual` (CHARGE the rest, or UNDO the difference). The
/// reservation's reply, or `None` if it was denied.
fn request(con: &mut Connection, key: &str, estimate: i64, actual: i64) -> Option<[i64; 4]> {
    let reserved = check(con, key, &BUDGET, &["COST", &estimate.to_string()]);
    if reserved[0] == 0 {
        return None;
    }
    if actual > estimate {
        let more = (actual - estimate).to_string();
        charge(con, key, &BUDGET, &["COST", &more]);
    } else if actual < estimate {
        let back = (estimate - actual).to_string();
        let refunded: i64 = run(con, &["RATELIMIT.UNDO", key, "COST", &back]);
        assert_eq!(refunded, estimate - actual);
    }
    Some(reserved)
}

/// Issue 27's scenario: estimates reserved, actual costs settled, the key
/// put over its budget by a settlement, and every token accounted for.
#[test]
fn a_token_budget_reserves_estimates_and_settles_actual_costs() {
    let server = Server::start(&[]);
    let mut con = server.connect();
    let key = "tokens:acme";
    let start = Instant::now();
    // Cheaper than estimated: 500 go back.
    assert_eq!(
        request(&mut con, key, 3000, 2500),
        Some([1, 7000, 0, 60_000])
    );
    assert_eq!(held(&mut con, key), 2500);
    // Dearer: 1,000 more, recorded under the budget.
    assert_eq!(
        request(&mut con, key, 3000, 4000),
        Some([1, 4500, 0, 60_000])
    );
    assert_eq!(held(&mut con, key), 6500);
    // As estimated: nothing to settle.
    assert_eq!(
        request(&mut con, key, 2000, 2000),
        Some([1, 1500, 0, 60_000])
    );
    // The estimate fits what is left, the actual cost does not: the
    // settlement is recorded anyway, 2,000 over.
    assert_eq!(request(&mut con, key, 1500, 1500), Some([1, 0, 0, 60_000]));
    let settled = charge(&mut con, key, &BUDGET, &["COST", "2000"]);
    assert_eq!(held(&mut con, key), 12_000, "every token counted");
    assert_eq!(settled[..2], [2000, 0], "over by 2,000, nothing left");
    // Back under once the first request's 2,500 leave the minute.
    let elapsed = start.elapsed().as_millis() as i64;
    let near = |wait: i64| (60_000 - elapsed - 20..=60_000).contains(&wait);
    assert!(near(settled[2]), "{settled:?} after {elapsed} ms");
    assert_eq!(settled[3], 60_000);
    // The next requests are denied, the smallest included, and record
    // nothing; a settlement still records.
    let denied = check(&mut con, key, &BUDGET, &[]);
    assert_eq!(denied[..2], [0, 0]);
    assert!(near(denied[2]) && denied[2] <= settled[2], "{denied:?}");
    assert_eq!(request(&mut con, key, 1, 1), None);
    assert_eq!(
        charge(&mut con, key, &BUDGET, &["COST", "1"])[..2],
        [2001, 0]
    );
    assert_eq!(held(&mut con, key), 12_001);
}

/// A settlement puts a key over a budget of a second and a half: CHECKs
/// are denied for as long as its replies say, then what is left counts.
#[test]
fn a_key_over_its_budget_denies_until_the_window_drains() {
    let server = Server::start(&[]);
    let mut con = server.connect();
    let budget = ["1500", "100"];
    assert_eq!(check(&mut con, "k", &budget, &["COST", "60"])[..2], [1, 40]);
    sleep(Duration::from_millis(300));
    let settled = charge(&mut con, "k", &budget, &["COST", "70"]);
    assert_eq!(settled[..2], [30, 0]);
    assert!((1000..=1200).contains(&settled[2]), "{settled:?}");
    let denied = check(&mut con, "k", &budget, &[]);
    assert_eq!(denied[..2], [0, 0]);
    sleep(Duration::from_millis(denied[2] as u64 / 2));
    assert_eq!(check(&mut con, "k", &budget, &[])[0], 0, "still draining");
    let wait = check(&mut con, "k", &budget, &[])[2];
    sleep(Duration::from_millis(wait as u64 + 5));
    // The 60 left; the 70 settled still count.
    assert_eq!(check(&mut con, "k", &budget, &[])[..3], [1, 29, 0]);
}

/// A settlement never waits for a block, nor starts one: the block stays.
#[test]
fn a_charge_is_recorded_on_a_blocked_key_which_stays_blocked() {
    let server = Server::start(&[]);
    let mut con = server.connect();
    check(&mut con, "login", &["60000", "1"], &[]);
    let blocked = check(&mut con, "login", &["60000", "1"], &["BLOCK", "3600000"]);
    assert_eq!(blocked[..2], [0, 0]);
    let ends: i64 = run(&mut con, &["PEXPIRETIME", "login"]);
    // Recorded: 5 in the minute, 4 over its 1.
    let settled = charge(&mut con, "login", &["60000", "1"], &["COST", "4"]);
    assert_eq!(settled[..2], [4, 0]);
    let still: i64 = run(&mut con, &["PEXPIRETIME", "login"]);
    assert_eq!(still, ends, "the block keeps the key as long as before");
    let peek: Vec<i64> = run(&mut con, &["RATELIMIT.PEEK", "login", "1000", "100"]);
    assert!(
        peek[0] == 0 && peek[2] > 3_500_000,
        "still blocked: {peek:?}"
    );
    // No BLOCK option, and an over key is not blocked by a charge.
    charge(&mut con, "other", &["60000", "1"], &["COST", "9"]);
    let lifted: i64 = run(&mut con, &["RATELIMIT.UNBLOCK", "other"]);
    assert_eq!(lifted, 0);
}

/// `[over, remaining, retry_after_ms, reset_after_ms, [over keys]]`.
type Joint = (i64, i64, i64, i64, Vec<i64>);

const KEYS: [&str; 3] = ["{t:7}:user:42", "{t:7}:ip:10.0.0.1", "{t:7}:tenant"];

/// MCHARGE over KEYS: 5 a minute for the user, 3 a second and 50 a
/// minute for the IP, 100 a minute for the tenant.
fn mcharge_words(options: &[&'static str]) -> Vec<&'static str> {
    let mut words = vec!["RATELIMIT.MCHARGE", "3"];
    words.extend(KEYS);
    words.extend(["1", "60000", "5", "2", "1000", "3", "60000", "50"]);
    words.extend(["1", "60000", "100"]);
    words.extend(options);
    words
}

#[test]
fn mcharge_charges_every_key_and_names_those_over() {
    let server = Server::start(&[]);
    let mut con = server.connect();
    let (over, remaining, retry, reset, keys): Joint =
        run(&mut con, &mcharge_words(&["COST", "4"]));
    assert_eq!(
        (over, remaining, retry, reset, keys),
        (1, 0, 1000, 60_000, vec![2])
    );
    let (over, remaining, _, _, keys): Joint = run(&mut con, &mcharge_words(&["COST", "2"]));
    assert_eq!((over, remaining, keys), (3, 0, vec![1, 2]));
    for (key, cost) in KEYS.iter().zip([6, 6, 6]) {
        assert_eq!(held(&mut con, key), cost, "{key}");
    }
    let getkeys = [&["COMMAND", "GETKEYS"][..], &mcharge_words(&[])].concat();
    let named: Vec<String> = run(&mut con, &getkeys);
    assert_eq!(named, KEYS);
}

/// Each of KEYS' digest (empty for a missing key).
fn digests(con: &mut Connection) -> Vec<String> {
    KEYS.iter()
        .map(|key| match run::<i64>(con, &["EXISTS", key]) {
            0 => String::new(),
            _ => digest(con, key),
        })
        .collect()
}

/// Every key's type, overflow and room are checked before any key is
/// charged: an error on one key changes none.
#[test]
fn an_error_on_one_key_charges_no_key() {
    let server = Server::start(&[]);
    let mut con = server.connect();
    run::<Joint>(&mut con, &mcharge_words(&[]));
    // The tenant, the last key, would hold more than 2^63 - 1.
    let tenant = ["60000", "100"];
    charge(&mut con, KEYS[2], &tenant, &["COST", "9223372036854775806"]);
    let before = digests(&mut con);
    let refused = error(&mut con, &mcharge_words(&["COST", "2"]));
    assert_eq!(
        refused,
        format!("ERR key '{}': {}", KEYS[2], overflow_text())
    );
    assert_eq!(digests(&mut con), before, "an overflow changed a key");
    // The tenant, a string.
    run::<i64>(&mut con, &["DEL", KEYS[2]]);
    run::<()>(&mut con, &["SET", KEYS[2], "text"]);
    let before = [digest(&mut con, KEYS[0]), digest(&mut con, KEYS[1])];
    let refused = error(&mut con, &mcharge_words(&[]));
    assert!(refused.starts_with("WRONGTYPE"), "{refused}");
    let now = [digest(&mut con, KEYS[0]), digest(&mut con, KEYS[1])];
    assert_eq!(now, before, "a key of another type changed a key");
    // The user's log full, under a setting of 1 entry.
    run::<()>(&mut con, &["FLUSHALL"]);
    run::<()>(&mut con, &["CONFIG", "SET", "ratelimit.max-entries", "1"]);
    run::<Joint>(&mut con, &mcharge_words(&[]));
    let before = digests(&mut con);
    sleep(Duration::from_millis(3));
    let refused = error(&mut con, &mcharge_words(&[]));
    let full = format!("ERR key '{}': this key's log is full", KEYS[0]);
    assert!(refused.starts_with(&full), "{refused}");
    assert_eq!(digests(&mut con), before, "a full log changed a key");
}

/// The documentation's text for a charge that would overflow.
fn overflow_text() -> String {
    let row = error_rows()
        .into_iter()
        .find(|(input, _)| input.starts_with("CHARGE, MCHARGE: the key would hold"))
        .expect("the error table's overflow row");
    row.1[0].trim_start_matches("ERR ").to_string()
}

/// The rows of docs/commands.md's error table: input, and the replies.
fn error_rows() -> Vec<(String, Vec<String>)> {
    let docs = harness::documentation();
    let table = docs
        .split("\n## Errors")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("the documentation has an error table")
        .to_string();
    table
        .lines()
        .filter(|line| line.starts_with("| ") && !line.starts_with("| input"))
        .map(|line| {
            let cells: Vec<&str> = line.split(" | ").collect();
            let replies = cells[1]
                .split('`')
                .skip(1)
                .step_by(2)
                .map(String::from)
                .collect();
            (cells[0].trim_start_matches("| ").to_string(), replies)
        })
        .collect()
}

/// The error table's rows that are CHARGE's, and CHECK's that CHARGE
/// shares, word for word from the server; and each refusal changes nothing.
#[test]
fn the_error_table_is_what_charge_sends() {
    let rows = error_rows();
    let server = Server::start(&[]);
    let mut con = server.connect();
    run::<()>(&mut con, &["SET", "s", "text"]);
    charge(&mut con, "big", &["60000", "5"], &["COST", MAX]);
    let replies = |input: &str| -> Vec<String> {
        rows.iter()
            .find(|(row, _)| row.starts_with(input))
            .unwrap_or_else(|| panic!("the error table has no row {input:?}"))
            .1
            .clone()
    };
    let calls: Vec<(&str, Vec<&str>)> = vec![
        ("bad `window`", vec!["RATELIMIT.CHARGE", "k", "0", "5"]),
        ("bad `max`", vec!["RATELIMIT.CHARGE", "k", "1000", "0"]),
        (
            "a window without its max",
            vec!["RATELIMIT.CHARGE", "k", "60000", "5", "1000"],
        ),
        (
            "a window twice",
            vec!["RATELIMIT.CHARGE", "k", "1000", "5", "1000", "6"],
        ),
        (
            "bad `COST`",
            vec!["RATELIMIT.CHARGE", "k", "1000", "5", "COST", "0"],
        ),
        (
            "bad `PRECISION`",
            vec!["RATELIMIT.CHARGE", "k", "1000", "5", "PRECISION", "1001"],
        ),
        (
            "an option without a value, twice, unknown",
            vec!["RATELIMIT.CHARGE", "k", "1000", "5", "COST"],
        ),
        (
            "an option without a value, twice, unknown",
            vec!["RATELIMIT.CHARGE", "k", "1000", "5", "X", "1"],
        ),
        (
            "an option without a value, twice, unknown",
            vec!["RATELIMIT.MCHARGE", "1", "k", "1", "1000", "5", "X", "1"],
        ),
        (
            "CHARGE, MCHARGE: the key would hold",
            vec!["RATELIMIT.CHARGE", "big", "60000", "5"],
        ),
        (
            "CHARGE, MCHARGE: the key would hold",
            vec!["RATELIMIT.CHARGE", "big", "1000", "5"],
        ),
        (
            "MCHECK, MPEEK, MUNDO: bad `numkeys`",
            vec!["RATELIMIT.MCHARGE", "17", "k", "1", "1000", "5"],
        ),
        (
            "a key given twice in one call",
            vec![
                "RATELIMIT.MCHARGE",
                "2",
                "a",
                "a",
                "1",
                "10",
                "1",
                "1",
                "10",
                "1",
            ],
        ),
        (
            "bad `npairs`",
            vec![
                "RATELIMIT.MCHARGE",
                "2",
                "a",
                "b",
                "1",
                "10",
                "1",
                "9",
                "10",
                "1",
            ],
        ),
        (
            "key of another type",
            vec!["RATELIMIT.CHARGE", "s", "1000", "5"],
        ),
        (
            "key of another type",
            vec![
                "RATELIMIT.MCHARGE",
                "2",
                "k",
                "s",
                "1",
                "1000",
                "5",
                "1",
                "1000",
                "5",
            ],
        ),
    ];
    let before = digest(&mut con, "big");
    for (input, words) in &calls {
        let got = error(&mut con, words);
        assert!(
            replies(input).contains(&got),
            "{words:?}: {got:?} is not in {:?}",
            replies(input)
        );
        assert_eq!(digest(&mut con, "big"), before, "{words:?} changed a key");
        let exists: i64 = run(&mut con, &["EXISTS", "k", "a", "b"]);
        assert_eq!(exists, 0, "{words:?} created a key");
    }
    // In MCHARGE, an overflow names its key.
    let named = error(
        &mut con,
        &[
            "RATELIMIT.MCHARGE",
            "2",
            "a",
            "big",
            "1",
            "60000",
            "5",
            "1",
            "60000",
            "5",
        ],
    );
    let text =
        replies("CHARGE, MCHARGE: the key would hold")[0].replacen("ERR ", "ERR key 'big': ", 1);
    assert_eq!(named, text);
    // What CHARGE is refused that CHECK is not, and what it takes.
    assert_eq!(
        error(
            &mut con,
            &["RATELIMIT.CHARGE", "k", "1000", "5", "BLOCK", "1000"]
        ),
        "ERR unknown option 'BLOCK' (the options are COST n and PRECISION p)"
    );
    for name in ["RATELIMIT.CHARGE", "RATELIMIT.MCHARGE"] {
        assert_eq!(
            error(&mut con, &[name, "k"]),
            format!(
                "ERR wrong number of arguments for '{}' command",
                name.to_lowercase()
            )
        );
    }
    assert_eq!(
        charge(&mut con, "k", &["1000", "5"], &["COST", "6"])[..2],
        [1, 0],
        "COST above max is a settlement, not an error"
    );
    // A full log, as CHECK's row says (with the setting at 1).
    let full = replies("the key's log already holds");
    run::<()>(&mut con, &["CONFIG", "SET", "ratelimit.max-entries", "1"]);
    sleep(Duration::from_millis(3));
    let got = error(&mut con, &["RATELIMIT.CHARGE", "k", "1000", "5"]);
    assert_eq!(vec![got.replace("(1)", "(1000000)")], full);
}

/// The same arrays of integers in both protocols.
#[test]
fn resp2_and_resp3_get_the_same_replies() {
    let server = Server::start(&[]);
    let client = redis::Client::open(format!("{}?protocol=resp3", server.url())).expect("url");
    let mut resp3 = client.get_connection().expect("a RESP3 connection");
    let hello: Value = redis::cmd("HELLO").query(&mut resp3).expect("HELLO");
    assert_eq!(fields(&hello)["proto"], Value::Int(3));
    let mut resp2 = server.connect();
    let ints = |values: &[i64]| Value::Array(values.iter().map(|&v| Value::Int(v)).collect());
    for (prefix, con) in [("resp3", &mut resp3), ("resp2", &mut resp2)] {
        let key = format!("{{{prefix}}}:a");
        let other = format!("{{{prefix}}}:b");
        let single: Value = run(con, &["RATELIMIT.CHARGE", &key, "60000", "2", "COST", "3"]);
        assert_eq!(single, ints(&[1, 0, 60_000, 60_000]), "{prefix}");
        let joint: Value = run(
            con,
            &[
                "RATELIMIT.MCHARGE",
                "2",
                &key,
                &other,
                "1",
                "60000",
                "2",
                "1",
                "60000",
                "9",
            ],
        );
        let Value::Array(items) = &joint else {
            panic!("{prefix}: not an array: {joint:?}");
        };
        assert_eq!(items.len(), 5, "{prefix}");
        assert_eq!(items[..2], [Value::Int(2), Value::Int(0)], "{prefix}");
        assert_eq!(items[4], ints(&[1]), "{prefix}");
        let none: Value = run(con, &["RATELIMIT.MCHARGE", "1", &other, "1", "60000", "9"]);
        assert_eq!(
            none,
            Value::Array(vec![
                Value::Int(0),
                Value::Int(7),
                Value::Int(0),
                Value::Int(60_000),
                ints(&[])
            ])
        );
    }
}

/// Replicas and the AOF get what the master charged, as RECORD and
/// MRECORD with its time (never CHARGE, which a replica would decide on
/// its own clock); clients are refused both.
#[test]
fn the_aof_holds_records_of_what_was_charged() {
    let master = Server::start(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mut m = master.connect();
    check(&mut m, "k", &["60000", "5"], &[]);
    charge(
        &mut m,
        "k",
        &["1000", "5", "60000", "5"],
        &["COST", "9", "PRECISION", "100"],
    );
    run::<Joint>(&mut m, &mcharge_words(&["COST", "3"]));
    let commands: Vec<Vec<String>> = aof_commands(&master)
        .into_iter()
        .filter(|c| !c[0].eq_ignore_ascii_case("select"))
        .collect();
    let names: Vec<String> = commands.iter().map(|c| c[0].to_lowercase()).collect();
    assert_eq!(
        names,
        ["ratelimit.record", "ratelimit.record", "ratelimit.mrecord"],
        "{commands:?}"
    );
    // RECORD key at window cost [precision]: the longest window as given.
    assert_eq!(commands[1][1], "k");
    assert_eq!(commands[1][3..], ["60000", "9", "100"]);
    // MRECORD numkeys keys at cost precision windows.
    assert_eq!(commands[2][1..5], ["3", KEYS[0], KEYS[1], KEYS[2]]);
    assert_eq!(commands[2][6..], ["3", "1", "60000", "60000", "60000"]);
    let refused = error(
        &mut m,
        &["RATELIMIT.RECORD", "k", "1700000000000", "1000", "1"],
    );
    assert!(
        refused.ends_with("only runs from the replication link or the AOF"),
        "{refused}"
    );
}

/// A replica holds the master's charged keys exactly, bytes and expiry,
/// keeps the blocks a charge left alone, and refuses CHARGE itself.
#[test]
fn a_replica_refuses_charge_and_records_the_masters() {
    let master = Server::start(&[]);
    let replica = Server::start(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
    let (mut m, mut r) = (master.connect(), replica.connect());
    wait_for_replica(&mut m, &mut r);
    charge(&mut m, "k", &BUDGET, &["COST", "12000"]);
    wait_for_replica(&mut m, &mut r);
    assert_eq!(held(&mut r, "k"), 12_000);
    let refused = error(&mut r, &["RATELIMIT.CHARGE", "k", "60000", "5"]);
    assert!(refused.starts_with("READONLY"), "{refused}");
    let info: String = run(&mut r, &["INFO", "ratelimit"]);
    assert!(
        info.contains("ratelimit_charges:0\r"),
        "the replica charged nothing itself:\n{info}"
    );
}

/// A charge is a write: it aborts a WATCHing transaction and publishes
/// `ratelimit.recorded` for each key; INFO counts it.
#[test]
fn watch_events_and_info_see_every_charge() {
    let server = Server::start(&["--notify-keyspace-events", "Kd$"]);
    let mut subscriber = server.subscriber();
    let mut pubsub = subscriber.as_pubsub();
    pubsub.psubscribe("__keyspace@0__:*").expect("PSUBSCRIBE");
    let (mut watcher, mut con) = (server.connect(), server.connect());
    run::<()>(&mut watcher, &["WATCH", KEYS[1]]);
    run::<Joint>(&mut con, &mcharge_words(&[]));
    run::<()>(&mut watcher, &["MULTI"]);
    run::<()>(&mut watcher, &["SET", "marker", "1"]);
    assert_eq!(run::<Value>(&mut watcher, &["EXEC"]), Value::Nil, "a write");
    run::<()>(&mut watcher, &["WATCH", "solo"]);
    charge(&mut con, "solo", &["60000", "2"], &["COST", "5"]);
    run::<()>(&mut watcher, &["MULTI"]);
    run::<()>(&mut watcher, &["SET", "marker", "1"]);
    assert_eq!(run::<Value>(&mut watcher, &["EXEC"]), Value::Nil, "a write");
    // A refused charge changes nothing and publishes nothing.
    charge(&mut con, "huge", &["60000", "2"], &["COST", MAX]);
    error(&mut con, &["RATELIMIT.CHARGE", "huge", "60000", "2"]);
    run::<()>(&mut con, &["SET", "done", "1"]);
    let mut events = Vec::new();
    loop {
        let message = pubsub.get_message().expect("an event");
        let channel = message.get_channel_name().to_string();
        let event: String = message.get_payload().expect("text");
        if channel.ends_with(":done") {
            break;
        }
        if event.starts_with("ratelimit.") {
            events.push(format!(
                "{} {event}",
                channel.trim_start_matches("__keyspace@0__:")
            ));
        }
    }
    let mut expected: Vec<String> = KEYS
        .iter()
        .map(|k| format!("{k} ratelimit.recorded"))
        .collect();
    expected.push("solo ratelimit.recorded".into());
    expected.push("huge ratelimit.recorded".into());
    assert_eq!(events, expected);
    let info: String = run(&mut con, &["INFO", "ratelimit"]);
    for line in [
        "ratelimit_charges:3",
        "ratelimit_charges_over:2",
        &format!("ratelimit_units_charged:{MAX}"),
        &format!("ratelimit_units_recorded:{MAX}"),
        "ratelimit_checks:0",
    ] {
        assert!(info.contains(line), "INFO ratelimit lacks {line}:\n{info}");
    }
}

/// Key specs, flags and ACL categories as CHECK's and MCHECK's.
#[test]
fn key_specs_flags_and_acl_categories_are_checks() {
    let server = Server::start(&[]);
    let mut con = server.connect();
    let info_of = |con: &mut Connection, name: &str| -> Vec<Value> {
        let reply: Value = run(con, &["COMMAND", "INFO", name]);
        items(&items(&reply)[0])
    };
    for (name, like) in [
        ("RATELIMIT.CHARGE", "RATELIMIT.CHECK"),
        ("RATELIMIT.MCHARGE", "RATELIMIT.MCHECK"),
    ] {
        let (mine, theirs) = (info_of(&mut con, name), info_of(&mut con, like));
        // [name, arity, flags, first, last, step, acl, tips, key specs, ...]
        assert_eq!(mine[1..9], theirs[1..9], "{name} as {like}");
    }
    let flags: Vec<String> = items(&info_of(&mut con, "RATELIMIT.CHARGE")[2])
        .iter()
        .map(text)
        .collect();
    assert!(
        flags.iter().any(|f| f == "write") && flags.iter().any(|f| f == "denyoom"),
        "{flags:?}"
    );
}
