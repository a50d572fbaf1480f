//! `BLOCK ms`: a penalty after a denial (issue 18), and `RATELIMIT.UNBLOCK`.
//!
//! The reply rules and the login lockout are one test source for every
//! backend (`on_every_backend!`): the module, and the script twin in each
//! of its forms. What only the module has (its internal BLOCKUNTIL, RDB
//! encoding versions, the AOF rewrite, replica digests, WATCH and
//! keyspace events on its writes) is tested for the module alone, and
//! says so.

use harness::{
    all_digests_and_expiries, error, run, wait_for_background_saves, wait_for_replica, Backend,
    Caller, Server,
};
use redis::{Connection, Value};

const HOUR: i64 = 3_600_000;

/// A decision's four fields (MCHECK's fifth is checked where it matters).
fn call(lim: &Caller, con: &mut Connection, words: &[&str]) -> Vec<i64> {
    lim.run(con, words)
}

/// `[allowed, remaining, retry_after_ms, reset_after_ms]` of a call denied
/// by a block of about `rest` ms (a few ms pass between calls).
fn assert_blocked(reply: &[i64], rest: i64, what: &str) {
    assert_eq!(reply[..2], [0, 0], "{what}: {reply:?}");
    assert!(
        (rest - 2_000..=rest).contains(&reply[2]),
        "{what}: retry_after_ms {reply:?}, the block's rest is about {rest}"
    );
    assert!(reply[3] >= reply[2], "{what}: reset_after_ms {reply:?}");
}

/// The multi-key reply: the four integers, and the 1-based positions of
/// the keys that denied.
fn mcall(lim: &Caller, con: &mut Connection, words: &[&str]) -> (Vec<i64>, Vec<i64>) {
    let (allowed, remaining, retry, reset, denied): (i64, i64, i64, i64, Vec<i64>) =
        lim.run(con, words);
    (vec![allowed, remaining, retry, reset], denied)
}

fn a_denial_with_block_starts_a_block_the_window_does_not_end(backend: Backend) {
    let (_server, lim) = backend.start(&[]);
    let mut con = lim.connect();
    let blocking = ["RATELIMIT.CHECK", "k", "1000", "2", "BLOCK", "3600000"];
    assert_eq!(call(&lim, &mut con, &blocking), [1, 1, 0, 1000]);
    assert_eq!(call(&lim, &mut con, &blocking), [1, 0, 0, 1000]);
    let started = call(&lim, &mut con, &blocking);
    assert_eq!(started, [0, 0, HOUR, HOUR], "retry = the whole block");
    // Whatever the limits say, the key is blocked, and the block is not
    // extended or restarted by the calls it denies, BLOCK or not.
    for words in [
        &["RATELIMIT.CHECK", "k", "10", "100"][..],
        &["RATELIMIT.CHECK", "k", "10", "100", "BLOCK", "7200000"],
        &["RATELIMIT.PEEK", "k", "10", "100"],
        &blocking,
    ] {
        assert_blocked(&call(&lim, &mut con, words), HOUR, &format!("{words:?}"));
    }
    // The limits' own wait counts when it is longer than the block's rest.
    let daily = call(&lim, &mut con, &["RATELIMIT.CHECK", "k", "86400000", "2"]);
    assert_eq!(daily[..2], [0, 0]);
    assert!(daily[2] > 86_000_000, "the day's wait, longer: {daily:?}");
    let undone: i64 = lim.run(&mut con, &["RATELIMIT.UNDO", "k", "COST", "2"]);
    assert_eq!(undone, 2, "the denials recorded nothing");
}

fn a_shorter_block_than_the_limits_wait_answers_the_limits_wait(backend: Backend) {
    let (_server, lim) = backend.start(&[]);
    let mut con = lim.connect();
    let words = ["RATELIMIT.CHECK", "k", "60000", "1", "BLOCK", "1000"];
    assert_eq!(call(&lim, &mut con, &words)[0], 1);
    let denied = call(&lim, &mut con, &words);
    assert_eq!(denied[..2], [0, 0]);
    assert!((59_000..=60_000).contains(&denied[2]), "{denied:?}");
    assert!((denied[2]..=60_000).contains(&denied[3]), "{denied:?}");
}

fn peek_never_starts_a_block(backend: Backend) {
    let (_server, lim) = backend.start(&[]);
    let mut con = lim.connect();
    assert_eq!(lim.check(&mut con, "k", 60_000, 1)[0], 1);
    let peek = call(
        &lim,
        &mut con,
        &["RATELIMIT.PEEK", "k", "60000", "1", "BLOCK", "3600000"],
    );
    assert_eq!(peek[..2], [0, 0]);
    assert!(peek[2] <= 60_000, "the limits' wait only: {peek:?}");
    let roomy = call(&lim, &mut con, &["RATELIMIT.CHECK", "k", "60000", "5"]);
    assert_eq!(roomy[0], 1, "not blocked: {roomy:?}");
}

fn a_call_without_block_starts_none(backend: Backend) {
    let (_server, lim) = backend.start(&[]);
    let mut con = lim.connect();
    lim.check(&mut con, "k", 60_000, 1);
    assert_eq!(lim.check(&mut con, "k", 60_000, 1)[0], 0);
    assert_eq!(lim.check(&mut con, "k", 60_000, 2)[0], 1, "not blocked");
    let none: i64 = lim.run(&mut con, &["RATELIMIT.UNBLOCK", "k"]);
    assert_eq!(none, 0);
}

fn mcheck_blocks_only_the_keys_whose_limits_denied(backend: Backend) {
    let (server, lim) = backend.start(&[]);
    let (mut con, mut admin) = (lim.connect(), server.connect());
    lim.check(&mut con, "{t}:user", 60_000, 1);
    let both = |user_max: &str, ip_max: &str, block: &[&str]| {
        let mut words = vec![
            "RATELIMIT.MCHECK",
            "2",
            "{t}:user",
            "{t}:ip",
            "1",
            "60000",
            user_max,
            "1",
            "60000",
            ip_max,
        ];
        words.extend(block);
        words.iter().map(|w| w.to_string()).collect::<Vec<String>>()
    };
    let words = both("1", "10", &["BLOCK", "3600000"]);
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let (decision, denied) = mcall(&lim, &mut con, &words);
    assert_eq!((decision, denied), (vec![0, 0, HOUR, HOUR], vec![1]));
    // The user is blocked: roomy limits are denied by the block alone.
    let roomy = both("100", "100", &[]);
    let roomy: Vec<&str> = roomy.iter().map(String::as_str).collect();
    let (decision, denied) = mcall(&lim, &mut con, &roomy);
    assert_blocked(&decision, HOUR, "a blocked key denies the call");
    assert_eq!(denied, [1], "denied lists the blocked key");
    // The IP allowed, so it was not blocked, and nothing was charged.
    assert_eq!(lim.check(&mut con, "{t}:ip", 60_000, 1), [1, 0, 0, 60_000]);
    // Both deny now: the IP by its limit (and is blocked), the user by
    // its block, which stays as it was (its end is its expiry).
    let user_ends = |admin: &mut Connection| run::<i64>(admin, &["PEXPIRETIME", "{t}:user"]);
    let ends = user_ends(&mut admin);
    std::thread::sleep(std::time::Duration::from_millis(5));
    let full = both("1", "1", &["BLOCK", "3600000"]);
    let full: Vec<&str> = full.iter().map(String::as_str).collect();
    let (decision, denied) = mcall(&lim, &mut con, &full);
    assert_blocked(&decision, HOUR, "both keys");
    assert_eq!(denied, [1, 2]);
    assert_eq!(
        user_ends(&mut admin),
        ends,
        "the user's block is not restarted"
    );
    let ip = call(&lim, &mut con, &["RATELIMIT.PEEK", "{t}:ip", "10", "100"]);
    assert_blocked(&ip, HOUR, "the IP is blocked now");
    let mpeek = roomy
        .iter()
        .map(|w| w.replace("MCHECK", "MPEEK"))
        .collect::<Vec<String>>();
    let mpeek: Vec<&str> = mpeek.iter().map(String::as_str).collect();
    assert_eq!(mcall(&lim, &mut con, &mpeek).1, [1, 2], "MPEEK agrees");
}

fn undo_keeps_the_block_and_the_key(backend: Backend) {
    let (server, lim) = backend.start(&[]);
    let (mut con, mut admin) = (lim.connect(), server.connect());
    let words = ["RATELIMIT.CHECK", "k", "1000", "1", "BLOCK", "3600000"];
    call(&lim, &mut con, &words);
    assert_eq!(call(&lim, &mut con, &words)[0], 0);
    let undone: i64 = lim.run(&mut con, &["RATELIMIT.UNDO", "k", "COST", "5"]);
    assert_eq!(undone, 1);
    let exists: i64 = run(&mut admin, &["EXISTS", "k"]);
    assert_eq!(exists, 1, "a blocked key outlives its emptied log");
    assert_blocked(&call(&lim, &mut con, &words), HOUR, "still blocked");
    let ttl: i64 = run(&mut admin, &["PTTL", "k"]);
    assert!(ttl > HOUR - 2_000, "kept until the block ends: {ttl}");
}

/// Once a block has ended it keeps nothing alive: a refund that empties
/// the log leaves no key (it expires at the block's end, already past).
fn a_key_whose_block_ended_goes_with_its_last_entry(backend: Backend) {
    let (server, lim) = backend.start(&[]);
    let (mut con, mut admin) = (lim.connect(), server.connect());
    let words = ["RATELIMIT.CHECK", "k", "60000", "1", "BLOCK", "200"];
    call(&lim, &mut con, &words);
    assert_eq!(call(&lim, &mut con, &words)[..2], [0, 0]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let exists: i64 = run(&mut admin, &["EXISTS", "k"]);
    assert_eq!(exists, 1, "the log still counts its entry");
    let undone: i64 = lim.run(&mut con, &["RATELIMIT.UNDO", "k"]);
    assert_eq!(undone, 1);
    let exists: i64 = run(&mut admin, &["EXISTS", "k"]);
    assert_eq!(exists, 0, "nothing live is left");
}

fn unblock_lifts_the_block_and_keeps_the_history(backend: Backend) {
    let (server, lim) = backend.start(&[]);
    let (mut con, mut admin) = (lim.connect(), server.connect());
    let words = ["RATELIMIT.CHECK", "k", "60000", "2", "BLOCK", "3600000"];
    for _ in 0..3 {
        call(&lim, &mut con, &words);
    }
    let lifted: i64 = lim.run(&mut con, &["RATELIMIT.UNBLOCK", "k"]);
    assert_eq!(lifted, 1);
    let again: i64 = lim.run(&mut con, &["RATELIMIT.UNBLOCK", "k"]);
    assert_eq!(again, 0, "nothing left to lift");
    let limited = lim.check(&mut con, "k", 60_000, 2);
    assert_eq!(limited[..2], [0, 0], "the history still counts");
    assert!(limited[2] <= 60_000, "denied by the limit: {limited:?}");
    let ttl: i64 = run(&mut admin, &["PTTL", "k"]);
    assert!(ttl <= 60_000, "the expiry is the log's own again: {ttl}");
    assert_eq!(lim.check(&mut con, "k", 60_000, 3)[0], 1);
    let missing: i64 = lim.run(&mut con, &["RATELIMIT.UNBLOCK", "missing"]);
    assert_eq!(missing, 0);
    run::<()>(&mut admin, &["SET", "plain", "1"]);
    let wrong = lim.error(&mut con, &["RATELIMIT.UNBLOCK", "plain"]);
    assert!(wrong.starts_with("WRONGTYPE"), "{wrong}");
}

/// A blocked key whose log a refund emptied holds nothing once unblocked:
/// it is deleted.
fn unblock_deletes_a_key_that_holds_nothing_live(backend: Backend) {
    let (server, lim) = backend.start(&[]);
    let (mut con, mut admin) = (lim.connect(), server.connect());
    let words = ["RATELIMIT.CHECK", "k", "60000", "1", "BLOCK", "3600000"];
    call(&lim, &mut con, &words);
    call(&lim, &mut con, &words);
    lim.run::<i64>(&mut con, &["RATELIMIT.UNDO", "k"]);
    let lifted: i64 = lim.run(&mut con, &["RATELIMIT.UNBLOCK", "k"]);
    assert_eq!(lifted, 1);
    let exists: i64 = run(&mut admin, &["EXISTS", "k"]);
    assert_eq!(exists, 0);
}

/// A blocked key whose log a refund emptied holds no window: a refund of
/// nothing and a denial by the block (naming a longer window) write
/// nothing (WATCH holds), and once the block has ended (the key kept by
/// PERSIST) the next entry lives under its own window only.
fn an_emptied_blocked_key_keeps_no_window(backend: Backend) {
    let (server, lim) = backend.start(&[]);
    let (mut con, mut admin) = (lim.connect(), server.connect());
    let words = ["RATELIMIT.CHECK", "k", "60000", "1", "BLOCK", "300"];
    call(&lim, &mut con, &words);
    call(&lim, &mut con, &words);
    assert_eq!(lim.run::<i64>(&mut con, &["RATELIMIT.UNDO", "k"]), 1);
    run::<()>(&mut admin, &["WATCH", "k"]);
    assert_eq!(lim.run::<i64>(&mut con, &["RATELIMIT.UNDO", "k"]), 0);
    let longer = ["RATELIMIT.CHECK", "k", "7200000", "1", "BLOCK", "300"];
    assert_eq!(call(&lim, &mut con, &longer)[..2], [0, 0]);
    run::<()>(&mut admin, &["MULTI"]);
    run::<()>(&mut admin, &["PING"]);
    let exec: Value = run(&mut admin, &["EXEC"]);
    assert_ne!(exec, Value::Nil, "nothing was written to the key");
    assert_eq!(run::<i64>(&mut admin, &["PERSIST", "k"]), 1);
    std::thread::sleep(std::time::Duration::from_millis(400));
    assert_eq!(
        call(&lim, &mut con, &["RATELIMIT.CHECK", "k", "1000", "5"])[0],
        1
    );
    let ttl: i64 = run(&mut admin, &["PTTL", "k"]);
    assert!((1..=1_000).contains(&ttl), "the entry's own window: {ttl}");
}

fn del_removes_the_history_and_the_block(backend: Backend) {
    let (server, lim) = backend.start(&[]);
    let (mut con, mut admin) = (lim.connect(), server.connect());
    let words = ["RATELIMIT.CHECK", "k", "60000", "1", "BLOCK", "3600000"];
    call(&lim, &mut con, &words);
    call(&lim, &mut con, &words);
    run::<i64>(&mut admin, &["DEL", "k"]);
    assert_eq!(call(&lim, &mut con, &words)[..2], [1, 0]);
}

fn a_blocked_key_outlives_its_window(backend: Backend) {
    let (server, lim) = backend.start(&[]);
    let (mut con, mut admin) = (lim.connect(), server.connect());
    let words = ["RATELIMIT.CHECK", "k", "100", "1", "BLOCK", "3600000"];
    call(&lim, &mut con, &words);
    call(&lim, &mut con, &words);
    std::thread::sleep(std::time::Duration::from_millis(250));
    let exists: i64 = run(&mut admin, &["EXISTS", "k"]);
    assert_eq!(exists, 1, "the window ended, the block did not");
    assert_blocked(&call(&lim, &mut con, &words), HOUR - 250, "still blocked");
}

fn errors_change_nothing(backend: Backend) {
    let (_server, lim) = backend.start(&[]);
    let mut con = lim.connect();
    lim.check(&mut con, "k", 60_000, 1);
    let range = "ERR BLOCK must be an integer from 1 to 31536000000 (milliseconds)";
    for (args, expected) in [
        (&["BLOCK", "0"][..], range),
        (&["BLOCK", "31536000001"], range),
        (&["BLOCK", "-5"], range),
        (&["BLOCK", "1.5"], range),
        (&["BLOCK"], "ERR syntax error: BLOCK needs a value"),
        (
            &["BLOCK", "5", "BLOCK", "5"],
            "ERR BLOCK given more than once",
        ),
        (
            &["PENALTY", "5"],
            "ERR unknown option 'PENALTY' (the options are COST n, PRECISION p and BLOCK ms)",
        ),
    ] {
        for name in ["RATELIMIT.CHECK", "RATELIMIT.PEEK"] {
            let mut words = vec![name, "k", "60000", "1"];
            words.extend(args);
            assert_eq!(lim.error(&mut con, &words), expected, "{words:?}");
        }
        let mut words = vec!["RATELIMIT.MCHECK", "1", "k", "1", "60000", "1"];
        words.extend(args);
        assert_eq!(lim.error(&mut con, &words), expected, "{words:?}");
    }
    assert_eq!(
        lim.error(&mut con, &["RATELIMIT.UNDO", "k", "BLOCK", "5"]),
        "ERR unknown option 'BLOCK' (the options are COST n)"
    );
    assert_eq!(lim.check(&mut con, "k", 60_000, 2)[0], 1, "nothing blocked");
}

/// Issue 18: 5 failed logins in 15 minutes, then locked out for an hour;
/// the lockout holds through a restart from the RDB and from the AOF, and
/// through a replica's promotion, with the same block; UNBLOCK then leaves
/// the limit to deny, not the block.
fn the_login_lockout_holds_through_restarts_and_a_failover(backend: Backend) {
    let durable = ["--appendonly", "yes", "--appendfsync", "always"];
    let (mut server, lim) = backend.start(&durable);
    let mut con = lim.connect();
    let login = [
        "RATELIMIT.CHECK",
        "login:alice",
        "900000",
        "5",
        "BLOCK",
        "3600000",
    ];
    for remaining in (0..5).rev() {
        assert_eq!(call(&lim, &mut con, &login), [1, remaining, 0, 900_000]);
    }
    assert_eq!(call(&lim, &mut con, &login), [0, 0, HOUR, HOUR]);
    let mut admin = server.connect();
    let ends: i64 = run(&mut admin, &["PEXPIRETIME", "login:alice"]);
    let still_blocked = |server: &Server, what: &str| {
        let lim = backend.prepare(server);
        let mut con = lim.connect();
        assert_blocked(&call(&lim, &mut con, &login), HOUR, what);
        let mut admin = server.connect();
        let now_ends: i64 = run(&mut admin, &["PEXPIRETIME", "login:alice"]);
        assert_eq!(now_ends, ends, "{what}: the same block");
    };
    server.restart(true);
    still_blocked(&server, "after a restart from the RDB");
    server.kill();
    server.relaunch();
    still_blocked(&server, "after a restart from the AOF");

    let replica = match backend {
        Backend::Module => Server::start(&["--replicaof", "127.0.0.1", &server.port.to_string()]),
        _ => Server::start_without_module(&["--replicaof", "127.0.0.1", &server.port.to_string()]),
    };
    let (mut m, mut r) = (server.connect(), replica.connect());
    wait_for_replica(&mut m, &mut r);
    server.kill();
    run::<()>(&mut r, &["REPLICAOF", "NO", "ONE"]);
    still_blocked(&replica, "on the promoted replica");

    let lim = backend.prepare(&replica);
    let mut con = lim.connect();
    let lifted: i64 = lim.run(&mut con, &["RATELIMIT.UNBLOCK", "login:alice"]);
    assert_eq!(lifted, 1);
    let limited = call(&lim, &mut con, &login[..4]);
    assert_eq!(limited[..2], [0, 0]);
    assert!(
        (1..=900_000).contains(&limited[2]),
        "denied by the limit (history kept), not by the block: {limited:?}"
    );
    let mut admin = replica.connect();
    let ttl: i64 = run(&mut admin, &["PTTL", "login:alice"]);
    assert!(ttl <= 900_000, "the log's own expiry again: {ttl}");
}

harness::on_every_backend!(
    a_denial_with_block_starts_a_block_the_window_does_not_end,
    a_shorter_block_than_the_limits_wait_answers_the_limits_wait,
    peek_never_starts_a_block,
    a_call_without_block_starts_none,
    mcheck_blocks_only_the_keys_whose_limits_denied,
    undo_keeps_the_block_and_the_key,
    a_key_whose_block_ended_goes_with_its_last_entry,
    unblock_lifts_the_block_and_keeps_the_history,
    unblock_deletes_a_key_that_holds_nothing_live,
    an_emptied_blocked_key_keeps_no_window,
    del_removes_the_history_and_the_block,
    a_blocked_key_outlives_its_window,
    errors_change_nothing,
    the_login_lockout_holds_through_restarts_and_a_failover,
);

// What only the module has: its internal command, its writes as a server
// sees them (WATCH, keyspace events, replication, the AOF).

/// BLOCKUNTIL could forge or lift blocks: clients are refused it, as
/// RECORD and WIDEN. UNBLOCK is `write fast`, key spec `RW update`.
#[test]
fn module_block_until_is_refused_from_clients() {
    let server = Server::start(&[]);
    let mut con = server.connect();
    let lim = Caller::of(Backend::Module);
    let refused = |con: &mut Connection, until: &str| {
        assert_eq!(
            error(con, &["RATELIMIT.BLOCKUNTIL", "k", until]),
            "ERR ratelimit.blockuntil is internal: it only runs from the replication link or the AOF"
        );
    };
    lim.check(&mut con, "k", 60_000, 5);
    refused(&mut con, "99999999999999");
    assert_eq!(lim.check(&mut con, "k", 60_000, 5)[0], 1, "not blocked");
    let words = ["RATELIMIT.CHECK", "k", "60000", "1", "BLOCK", "3600000"];
    assert_eq!(call(&lim, &mut con, &words), [0, 0, HOUR, HOUR]);
    refused(&mut con, "0");
    let peek = call(&lim, &mut con, &["RATELIMIT.PEEK", "k", "60000", "9"]);
    assert_blocked(&peek, HOUR, "still blocked");
    let info: Value = run(&mut con, &["COMMAND", "INFO", "RATELIMIT.UNBLOCK"]);
    let text = format!("{info:?}");
    for word in ["write", "fast", "RW", "update"] {
        assert!(text.contains(word), "UNBLOCK lacks {word}: {text}");
    }
}

/// A denial that starts a block is a write (WATCH fires, `ratelimit.blocked`);
/// one denied by a block is not; UNBLOCK that lifts is (`ratelimit.unblocked`),
/// one that lifts nothing is not.
#[test]
fn module_only_changes_fire_watch_and_events() {
    let server = Server::start(&["--notify-keyspace-events", "Kd$"]);
    let mut subscriber = server.subscriber();
    let mut pubsub = subscriber.as_pubsub();
    pubsub.psubscribe("__keyspace@0__:*").expect("PSUBSCRIBE");
    let (mut watcher, mut con) = (server.connect(), server.connect());
    let block = ["RATELIMIT.CHECK", "k", "60000", "1", "BLOCK", "3600000"];
    let unblock = ["RATELIMIT.UNBLOCK", "k"];
    let transaction = |watcher: &mut Connection, con: &mut Connection, words: &[&str]| {
        run::<()>(watcher, &["WATCH", "k"]);
        run::<Value>(con, words);
        run::<()>(watcher, &["MULTI"]);
        run::<()>(watcher, &["SET", "marker", "1"]);
        run::<Value>(watcher, &["EXEC"]) != Value::Nil
    };
    let kept = [
        transaction(&mut watcher, &mut con, &block),
        transaction(&mut watcher, &mut con, &block),
        transaction(&mut watcher, &mut con, &block),
        transaction(&mut watcher, &mut con, &unblock),
        transaction(&mut watcher, &mut con, &unblock),
    ];
    assert_eq!(
        kept,
        [false, false, true, false, true],
        "recorded, blocked: writes; denied by the block, nothing to lift: none"
    );
    run::<()>(&mut con, &["SET", "done", "1"]);
    let mut events = Vec::new();
    loop {
        let message = pubsub.get_message().expect("an event");
        let event: String = message.get_payload().expect("text");
        if message.get_channel_name().ends_with(":done") {
            break;
        }
        if event.starts_with("ratelimit.") {
            events.push(event);
        }
    }
    assert_eq!(
        events,
        [
            "ratelimit.recorded",
            "ratelimit.blocked",
            "ratelimit.unblocked"
        ]
    );
}

/// A replica and the AOF reach the master's exact blocks (digest and
/// expiry), through BLOCKUNTIL with the master's end of the block, sent
/// with the call's WIDEN in one MULTI/EXEC; UNBLOCK as BLOCKUNTIL 0, or as
/// DEL for a key it deleted.
#[test]
fn module_replicas_and_the_aof_reach_the_masters_blocks() {
    let mut master = Server::start(&["--appendonly", "yes", "--appendfsync", "always"]);
    let replica = Server::start(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
    let (mut m, mut r) = (master.connect(), replica.connect());
    wait_for_replica(&mut m, &mut r);
    let lim = Caller::of(Backend::Module);
    let check = |con: &mut Connection, key: &str, window: &str| {
        call(
            &lim,
            con,
            &["RATELIMIT.CHECK", key, window, "1", "BLOCK", "3600000"],
        )
    };
    check(&mut m, "plain", "60000");
    check(&mut m, "plain", "60000");
    check(&mut m, "widened", "1000");
    check(&mut m, "widened", "7200000");
    check(&mut m, "lifted", "60000");
    check(&mut m, "lifted", "60000");
    run::<i64>(&mut m, &["RATELIMIT.UNBLOCK", "lifted"]);
    check(&mut m, "deleted", "60000");
    check(&mut m, "deleted", "60000");
    run::<i64>(&mut m, &["RATELIMIT.UNDO", "deleted"]);
    check(&mut m, "emptied", "60000");
    check(&mut m, "emptied", "60000");
    run::<i64>(&mut m, &["RATELIMIT.UNDO", "emptied"]);
    run::<i64>(&mut m, &["RATELIMIT.UNBLOCK", "deleted"]);
    mcall(
        &lim,
        &mut m,
        &[
            "RATELIMIT.MCHECK",
            "2",
            "plain",
            "multi",
            "1",
            "60000",
            "5",
            "1",
            "60000",
            "5",
            "BLOCK",
            "60000",
        ],
    );
    wait_for_replica(&mut m, &mut r);
    let state = all_digests_and_expiries;
    let on_master = state(&mut m);
    let keys: Vec<&str> = on_master.iter().map(|(k, _, _)| k.as_str()).collect();
    assert_eq!(keys, ["emptied", "lifted", "plain", "widened"]);
    assert_eq!(state(&mut r), on_master, "the replica");

    let commands: Vec<Vec<String>> = harness::aof_commands(&master)
        .into_iter()
        .filter(|c| !c[0].eq_ignore_ascii_case("select"))
        .collect();
    let names: Vec<String> = commands.iter().map(|c| c[0].to_lowercase()).collect();
    let widened = names
        .iter()
        .position(|n| n == "ratelimit.widen")
        .expect("a WIDEN");
    assert_eq!(
        names[widened - 1..widened + 3],
        ["multi", "ratelimit.widen", "ratelimit.blockuntil", "exec"],
        "{commands:?}"
    );
    let until: i64 = commands[widened + 1][2].parse().expect("a time");
    let ends: i64 = run(&mut m, &["PEXPIRETIME", "widened"]);
    assert!(
        (HOUR - 1_000..=HOUR).contains(&(ends - until)),
        "the two hours widened outlast the hour's block: {until} {ends}"
    );
    let lifts: Vec<&Vec<String>> = commands
        .iter()
        .filter(|c| c[0].eq_ignore_ascii_case("ratelimit.blockuntil") && c[2] == "0")
        .collect();
    assert_eq!(lifts.len(), 1, "{commands:?}");
    assert_eq!(lifts[0][1], "lifted");
    assert!(
        commands
            .iter()
            .any(|c| c[0].eq_ignore_ascii_case("del") && c[1] == "deleted"),
        "{commands:?}"
    );
    assert!(!names.iter().any(|n| n == "ratelimit.unblock"), "{names:?}");

    master.kill();
    master.relaunch();
    let mut m = master.connect();
    assert_eq!(
        state(&mut m),
        on_master,
        "the AOF replays to the same state"
    );
    run::<String>(&mut m, &["BGREWRITEAOF"]);
    wait_for_background_saves(&mut m);
    master.restart(false);
    let mut m = master.connect();
    assert_eq!(state(&mut m), on_master, "and from the rewritten AOF");
}
