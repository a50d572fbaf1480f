//! Every command and reply field against a real server, on every
//! backend of the contract: the module, and the script twin called with
//! FCALL, with EVALSHA and as a restricted ACL user. One test source: each
//! test takes the backend, and `on_every_backend!` makes a test of it per
//! backend. What only the module has (its data type, `max-entries`) is
//! tested for the module alone, and says so.

use harness::{check, digest, run, Backend, Server};
use std::thread::sleep;
use std::time::Duration;

fn check_replies_allowed_remaining_retry_and_reset(backend: Backend) {
    let (_server, lim) = backend.start(&[]);
    let mut con = lim.connect();
    assert_eq!(lim.check(&mut con, "k", 60_000, 5), [1, 4, 0, 60_000]);
    let costly: Vec<i64> = lim.run(
        &mut con,
        &["RATELIMIT.CHECK", "k", "60000", "5", "COST", "3"],
    );
    assert_eq!(costly, [1, 1, 0, 60_000]);
    let full: Vec<i64> = lim.run(
        &mut con,
        &["RATELIMIT.CHECK", "k", "60000", "5", "cost", "1"],
    );
    assert_eq!(full, [1, 0, 0, 60_000]);
    let denied = lim.check(&mut con, "k", 60_000, 5);
    assert_eq!(&denied[..2], [0, 0]);
    assert!(
        (59_000..=60_000).contains(&denied[2]),
        "retry_after {denied:?}"
    );
    assert!(
        denied[3] >= denied[2],
        "the last entry expires no sooner than the first: {denied:?}"
    );
}

fn a_denied_check_records_nothing(backend: Backend) {
    let (server, lim) = backend.start(&[]);
    let mut con = lim.connect();
    let mut admin = server.connect();
    lim.check(&mut con, "k", 60_000, 1);
    let before = digest(&mut admin, "k");
    for _ in 0..5 {
        assert_eq!(lim.check(&mut con, "k", 60_000, 1)[0], 0);
    }
    assert_eq!(digest(&mut admin, "k"), before);
    let refunded: i64 = lim.run(&mut con, &["RATELIMIT.UNDO", "k", "COST", "10"]);
    assert_eq!(refunded, 1, "only the one allowed request was recorded");
}

fn peek_answers_without_recording(backend: Backend) {
    let (_server, lim) = backend.start(&[]);
    let mut con = lim.connect();
    let missing: Vec<i64> = lim.run(&mut con, &["RATELIMIT.PEEK", "k", "1000", "5"]);
    assert_eq!(missing, [1, 5, 0, 0]);
    let exists: i64 = run(&mut con, &["EXISTS", "k"]);
    assert_eq!(exists, 0, "PEEK must not create the key");
    lim.run::<Vec<i64>>(
        &mut con,
        &["RATELIMIT.CHECK", "k", "60000", "5", "COST", "4"],
    );
    for _ in 0..3 {
        let peek: Vec<i64> = lim.run(&mut con, &["RATELIMIT.PEEK", "k", "60000", "5"]);
        assert_eq!(&peek[..3], [1, 1, 0]);
        assert!((59_000..=60_000).contains(&peek[3]), "{peek:?}");
    }
    let too_much: Vec<i64> = lim.run(
        &mut con,
        &["RATELIMIT.PEEK", "k", "60000", "5", "COST", "2"],
    );
    assert_eq!(&too_much[..2], [0, 1]);
    assert!(too_much[2] > 0);
    assert_eq!(lim.check(&mut con, "k", 60_000, 5)[..2], [1, 0]);
}

fn undo_refunds_the_newest_entries_and_deletes_an_empty_log(backend: Backend) {
    let (_server, lim) = backend.start(&[]);
    let mut con = lim.connect();
    let none: i64 = lim.run(&mut con, &["RATELIMIT.UNDO", "missing"]);
    assert_eq!(none, 0);
    for _ in 0..3 {
        lim.check(&mut con, "k", 60_000, 3);
    }
    assert_eq!(lim.check(&mut con, "k", 60_000, 3)[0], 0);
    let one: i64 = lim.run(&mut con, &["RATELIMIT.UNDO", "k"]);
    assert_eq!(one, 1);
    assert_eq!(
        lim.check(&mut con, "k", 60_000, 3)[..2],
        [1, 0],
        "the refund freed one slot"
    );
    let rest: i64 = lim.run(&mut con, &["RATELIMIT.UNDO", "k", "COST", "10"]);
    assert_eq!(rest, 3);
    let exists: i64 = run(&mut con, &["EXISTS", "k"]);
    assert_eq!(exists, 0);
}

fn a_window_expires_and_takes_the_key_with_it(backend: Backend) {
    let (_server, lim) = backend.start(&[]);
    let mut con = lim.connect();
    assert_eq!(lim.check(&mut con, "k", 300, 2)[0], 1);
    let pttl: i64 = run(&mut con, &["PTTL", "k"]);
    assert!((1..=300).contains(&pttl), "pttl {pttl}");
    assert_eq!(lim.check(&mut con, "k", 300, 2)[0], 1);
    let denied = lim.check(&mut con, "k", 300, 2);
    assert_eq!(denied[0], 0);
    assert!((1..=300).contains(&denied[2]), "{denied:?}");
    sleep(Duration::from_millis(denied[2] as u64 + 20));
    assert_eq!(
        lim.check(&mut con, "k", 300, 2)[0],
        1,
        "allowed once retry_after has passed"
    );
    sleep(Duration::from_millis(350));
    let exists: i64 = run(&mut con, &["EXISTS", "k"]);
    assert_eq!(exists, 0, "the key is gone after its newest entry expired");
}

fn wrongtype_both_ways(backend: Backend) {
    let (_server, lim) = backend.start(&[]);
    let mut con = lim.connect();
    let wrongtype = "WRONGTYPE Operation against a key holding the wrong kind of value";
    run::<()>(&mut con, &["SET", "s", "1"]);
    for words in [
        &["RATELIMIT.CHECK", "s", "1000", "5"][..],
        &["RATELIMIT.PEEK", "s", "1000", "5"],
        &["RATELIMIT.UNDO", "s"],
    ] {
        assert_eq!(lim.error(&mut con, words), wrongtype, "{words:?}");
    }
    let untouched: String = run(&mut con, &["GET", "s"]);
    assert_eq!(untouched, "1");
    run::<()>(&mut con, &["RPUSH", "list", "1"]);
    assert_eq!(
        lim.error(&mut con, &["RATELIMIT.CHECK", "list", "1000", "5"]),
        wrongtype
    );
    lim.check(&mut con, "rl", 1000, 5);
    assert_eq!(harness::error(&mut con, &["LPUSH", "rl", "x"]), wrongtype);
    let kind: String = run(&mut con, &["TYPE", "rl"]);
    // The module's own type; the twin's log is a string (whose bytes
    // start with its magic, which a foreign string does not).
    let expected = if backend.is_twin() {
        "string"
    } else {
        "ratelimit"
    };
    assert_eq!(kind, expected);
}

/// Module only: the twin has no configuration (a managed service would
/// not let a user set one).
#[test]
fn module_max_entries_bounds_the_entries_of_a_key_and_says_so() {
    let server = Server::start_with_module_args(&["max-entries", "3"], &[]);
    let mut con = server.connect();
    for _ in 0..3 {
        assert_eq!(check(&mut con, "k", 60_000, 1_000_000)[0], 1);
        sleep(Duration::from_millis(2));
    }
    let before = digest(&mut con, "k");
    let full = harness::error(&mut con, &["RATELIMIT.CHECK", "k", "60000", "1000000"]);
    assert_eq!(
        full,
        "ERR this key's log is full: it holds ratelimit.max-entries (3) entries. \
         Nothing was recorded. Use PRECISION p to share entries, or raise ratelimit.max-entries"
    );
    assert_eq!(digest(&mut con, "k"), before, "a full log records nothing");
    // max-entries bounds entries, not max or COST: a token budget needs no setting.
    let tokens: Vec<i64> = run(
        &mut con,
        &[
            "RATELIMIT.CHECK",
            "tokens",
            "60000",
            "10000000",
            "COST",
            "2500",
        ],
    );
    assert_eq!(tokens, [1, 9_997_500, 0, 60_000]);
    let info: String = run(&mut con, &["INFO", "ratelimit"]);
    assert!(info.contains("ratelimit_log_full:1\r"), "{info}");
    let config: Vec<String> = run(&mut con, &["CONFIG", "GET", "ratelimit.max-entries"]);
    assert_eq!(config, ["ratelimit.max-entries", "3"]);
}

fn several_windows_are_decided_together_and_recorded_once(backend: Backend) {
    let (_server, lim) = backend.start(&[]);
    let mut con = lim.connect();
    // 3 per second and 5 per minute, given in any order.
    let call = ["RATELIMIT.CHECK", "api:42", "60000", "5", "1000", "3"];
    for remaining in [2, 1, 0] {
        let reply: Vec<i64> = lim.run(&mut con, &call);
        assert_eq!(reply, [1, remaining, 0, 60_000]);
    }
    let burst: Vec<i64> = lim.run(&mut con, &call);
    assert_eq!(&burst[..2], [0, 0]);
    assert!(
        (1..=1000).contains(&burst[2]),
        "the burst window decides: {burst:?}"
    );
    assert!((59_000..=60_000).contains(&burst[3]), "{burst:?}");
    sleep(Duration::from_millis(burst[2] as u64 + 10));
    for remaining in [1, 0] {
        let reply: Vec<i64> = lim.run(&mut con, &call);
        assert_eq!(reply[..2], [1, remaining], "the minute still has room");
    }
    let sustained: Vec<i64> = lim.run(&mut con, &call);
    assert_eq!(&sustained[..2], [0, 0]);
    assert!(
        sustained[2] > 57_000,
        "the minute window decides: {sustained:?}"
    );
    let refunded: i64 = lim.run(&mut con, &["RATELIMIT.UNDO", "api:42", "COST", "100"]);
    assert_eq!(refunded, 5, "each allowed request was recorded once");
    let peek: Vec<i64> = lim.run(
        &mut con,
        &["RATELIMIT.PEEK", "api:42", "1000", "3", "60000", "5"],
    );
    assert_eq!(peek, [1, 3, 0, 0]);
}

fn a_short_limit_never_prunes_what_a_long_limit_on_the_key_counts(backend: Backend) {
    let (_server, lim) = backend.start(&[]);
    let mut con = lim.connect();
    for _ in 0..5 {
        assert_eq!(lim.check(&mut con, "k", 3_600_000, 5)[0], 1);
    }
    for _ in 0..50 {
        assert_eq!(lim.check(&mut con, "k", 1000, 100)[0], 1);
        sleep(Duration::from_millis(30));
    }
    let hourly = lim.check(&mut con, "k", 3_600_000, 5);
    assert_eq!(hourly[..2], [0, 0], "the hourly limit still counts its 5");
    let pttl: i64 = run(&mut con, &["PTTL", "k"]);
    assert!(
        pttl > 3_500_000,
        "the key lives as long as its longest window: {pttl}"
    );
}

fn a_request_costs_the_same_whatever_its_cost(backend: Backend) {
    let (_server, lim) = backend.start(&[]);
    let mut con = lim.connect();
    for key in ["unit", "heavy"] {
        let cost = if key == "unit" { "1" } else { "100000" };
        for _ in 0..200 {
            lim.run::<Vec<i64>>(
                &mut con,
                &["RATELIMIT.CHECK", key, "60000", "100000000", "COST", cost],
            );
            sleep(Duration::from_micros(300));
        }
    }
    let usage = |con: &mut redis::Connection, key| -> i64 { run(con, &["MEMORY", "USAGE", key]) };
    let (unit, heavy) = (usage(&mut con, "unit"), usage(&mut con, "heavy"));
    assert!(
        heavy <= unit + 1_200,
        "COST 100000: {heavy} B, COST 1: {unit} B"
    );
    let peek: Vec<i64> = lim.run(&mut con, &["RATELIMIT.PEEK", "heavy", "60000", "100000000"]);
    assert_eq!(peek[1], 100_000_000 - 200 * 100_000);
}

fn undo_takes_part_of_a_request(backend: Backend) {
    let (_server, lim) = backend.start(&[]);
    let mut con = lim.connect();
    lim.run::<Vec<i64>>(
        &mut con,
        &["RATELIMIT.CHECK", "k", "60000", "10", "COST", "4"],
    );
    lim.run::<Vec<i64>>(
        &mut con,
        &["RATELIMIT.CHECK", "k", "60000", "10", "COST", "3"],
    );
    let refunded: i64 = lim.run(&mut con, &["RATELIMIT.UNDO", "k", "COST", "5"]);
    assert_eq!(
        refunded, 5,
        "all 3 of the newest request and 2 of the one before"
    );
    let peek: Vec<i64> = lim.run(&mut con, &["RATELIMIT.PEEK", "k", "60000", "10"]);
    assert_eq!(peek[..3], [1, 8, 0]);
    let rest: i64 = lim.run(&mut con, &["RATELIMIT.UNDO", "k", "COST", "10"]);
    assert_eq!(rest, 2);
}

fn precision_bounds_a_hot_key(backend: Backend) {
    let (_server, lim) = backend.start(&[]);
    let mut con = lim.connect();
    let fill = |con: &mut redis::Connection, key: &str, precision: &[&str]| {
        for _ in 0..20 {
            let mut pipe = redis::pipe();
            for _ in 0..100 {
                let mut call = vec!["RATELIMIT.CHECK", key, "60000", "1000000"];
                call.extend(precision);
                pipe.add_command(lim.command(&call)).ignore();
            }
            pipe.query::<()>(con).expect("pipeline");
            sleep(Duration::from_millis(5));
        }
    };
    fill(&mut con, "exact", &[]);
    fill(&mut con, "coarse", &["PRECISION", "1000"]);
    for key in ["exact", "coarse"] {
        let peek: Vec<i64> = lim.run(&mut con, &["RATELIMIT.PEEK", key, "60000", "1000000"]);
        assert_eq!(peek[1], 1_000_000 - 2_000, "{key}: every request counts");
    }
    let usage = |con: &mut redis::Connection, key| -> i64 { run(con, &["MEMORY", "USAGE", key]) };
    let (exact, coarse) = (usage(&mut con, "exact"), usage(&mut con, "coarse"));
    // Under a second of requests spans at most 2 cells of 1000 ms: the
    // module's 16-byte block one request takes, or the 48-byte one; the
    // twin's one entry, or two.
    lim.check(&mut con, "single", 60_000, 1_000_000);
    let one_request = usage(&mut con, "single");
    assert!(coarse <= one_request + 48, "PRECISION 1000: {coarse} B");
    assert!(exact > coarse, "exact {exact} B, coarse {coarse} B");
    let peek: Vec<i64> = lim.run(&mut con, &["RATELIMIT.PEEK", "coarse", "60000", "1000000"]);
    assert!((59_000..=60_000).contains(&peek[3]), "{peek:?}");
}

fn copy_and_dump_restore_keep_the_log(backend: Backend) {
    let (server, lim) = backend.start(&[]);
    let mut con = lim.connect();
    // DEBUG and RESTORE are the administrator's.
    let mut admin = server.connect();
    for _ in 0..7 {
        lim.check(&mut con, "k", 60_000, 10);
    }
    let original = digest(&mut admin, "k");
    let copied: i64 = run(&mut con, &["COPY", "k", "copy"]);
    assert_eq!(copied, 1);
    assert_eq!(digest(&mut admin, "copy"), original);
    let dump: Vec<u8> = redis::cmd("DUMP").arg("k").query(&mut con).expect("DUMP");
    // Digests cover the expiry too, so restore with the same one.
    let expires_at: i64 = run(&mut con, &["PEXPIRETIME", "k"]);
    let restored: String = redis::cmd("RESTORE")
        .arg("restored")
        .arg(expires_at)
        .arg(&dump)
        .arg("ABSTTL")
        .query(&mut admin)
        .expect("RESTORE");
    assert_eq!(restored, "OK");
    assert_eq!(digest(&mut admin, "restored"), original);
    let peek: Vec<i64> = lim.run(&mut con, &["RATELIMIT.PEEK", "restored", "60000", "10"]);
    assert_eq!(&peek[..2], [1, 3]);
    // The copies are independent: refunding one leaves the other.
    lim.run::<i64>(&mut con, &["RATELIMIT.UNDO", "copy", "COST", "7"]);
    assert_eq!(digest(&mut admin, "k"), original);
}

fn ten_thousand_requests_take_at_most_eight_bytes_each(backend: Backend) {
    let (_server, lim) = backend.start(&[]);
    let mut con = lim.connect();
    let mut pipe = redis::pipe();
    for _ in 0..10_000 {
        pipe.add_command(lim.command(&["RATELIMIT.CHECK", "big", "3600000", "10000"]))
            .ignore();
    }
    pipe.query::<()>(&mut con).expect("pipeline");
    let peek: Vec<i64> = lim.run(&mut con, &["RATELIMIT.PEEK", "big", "3600000", "10000"]);
    assert_eq!(&peek[..2], [0, 0], "all 10,000 were recorded");
    let usage: i64 = run(&mut con, &["MEMORY", "USAGE", "big"]);
    assert!(usage <= 80_000, "MEMORY USAGE {usage} for 10,000 requests");
    eprintln!("MEMORY USAGE for 10,000 requests: {usage} bytes");
}

/// This round's decision 1: a denied CHECK whose longest window is longer
/// than the log's registers it, so the key lives as long as that window
/// needs and a later shorter call does not prune what it counts.
fn a_denied_check_registers_a_longer_window(backend: Backend) {
    let (_server, lim) = backend.start(&[]);
    let mut con = lim.connect();
    assert_eq!(lim.check(&mut con, "k", 1000, 1)[0], 1);
    let denied = lim.check(&mut con, "k", 60_000, 1);
    assert_eq!(denied[..2], [0, 0], "the minute counts the first request");
    let pttl: i64 = run(&mut con, &["PTTL", "k"]);
    assert!(
        pttl > 50_000,
        "the key now lives until its newest entry leaves the minute: {pttl}"
    );
    sleep(Duration::from_millis(1100));
    assert_eq!(
        lim.check(&mut con, "k", 1000, 1)[0],
        1,
        "the second's window is empty again"
    );
    let peek: Vec<i64> = lim.run(&mut con, &["RATELIMIT.PEEK", "k", "60000", "5"]);
    assert_eq!(peek[..2], [1, 3], "the minute still counts both requests");
}

harness::on_every_backend!(
    check_replies_allowed_remaining_retry_and_reset,
    a_denied_check_records_nothing,
    peek_answers_without_recording,
    undo_refunds_the_newest_entries_and_deletes_an_empty_log,
    a_window_expires_and_takes_the_key_with_it,
    wrongtype_both_ways,
    several_windows_are_decided_together_and_recorded_once,
    a_short_limit_never_prunes_what_a_long_limit_on_the_key_counts,
    a_request_costs_the_same_whatever_its_cost,
    undo_takes_part_of_a_request,
    precision_bounds_a_hot_key,
    copy_and_dump_restore_keep_the_log,
    ten_thousand_requests_take_at_most_eight_bytes_each,
    a_denied_check_registers_a_longer_window,
);
