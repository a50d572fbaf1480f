//! RATELIMIT.MCHECK, MPEEK and MUNDO on a real server: one decision over
//! several keys (a user, an IP, a tenant) that charges every key or none,
//! whichever key denies and whatever goes wrong on one key; the same state
//! on a replica, after an AOF replay and a restart; every key visible to
//! the server (COMMAND GETKEYS, ACL key patterns, CROSSSLOT).
//!
//! The contract tests run on every backend (`on_every_backend!`: the
//! module, and the script twin via FCALL, EVALSHA and as a restricted ACL
//! user). What only the module has (`max-entries`, its key specs and
//! `getkeys-api`, its RECORD/WIDEN replication, its keyspace events) is
//! tested on the module alone and says so, and the twin's replication and
//! AOF, which are its own (effects replication), have their own test.

use harness::{
    all_digests, aof_commands, digest, error, run, wait_for_replica, Backend, Caller, Server,
};
use redis::{Connection, Value};

const KEYS: [&str; 3] = ["{t:7}:user:42", "{t:7}:ip:10.0.0.1", "{t:7}:tenant"];

/// MCHECK (or MPEEK) over KEYS: 2 per minute for the user, 5 per second
/// and 3 per minute for the IP, 4 per minute for the tenant.
fn call(name: &str, extra: &[&str]) -> Vec<String> {
    let mut words: Vec<&str> = vec![name, "3"];
    words.extend(KEYS);
    words.extend([
        "1", "60000", "2", "2", "1000", "5", "60000", "3", "1", "60000", "4",
    ]);
    words.extend(extra);
    words.into_iter().map(str::to_string).collect()
}

/// `[allowed, remaining, retry_after_ms, reset_after_ms, [denied ...]]`.
fn mcheck_by(
    lim: &Caller,
    con: &mut Connection,
    name: &str,
    extra: &[&str],
) -> (Vec<i64>, Vec<i64>) {
    let words = call(name, extra);
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let (a, b, c, d, denied): (i64, i64, i64, i64, Vec<i64>) = lim.run(con, &words);
    (vec![a, b, c, d], denied)
}

fn mcheck(lim: &Caller, con: &mut Connection) -> (Vec<i64>, Vec<i64>) {
    mcheck_by(lim, con, "RATELIMIT.MCHECK", &[])
}

/// Each of KEYS' digest (empty for a missing key), read as the
/// administrator (DEBUG is not the restricted user's).
fn digests(admin: &mut Connection) -> Vec<String> {
    KEYS.iter()
        .map(|key| {
            let exists: i64 = run(admin, &["EXISTS", key]);
            match exists {
                0 => String::new(),
                _ => digest(admin, key),
            }
        })
        .collect()
}

fn any_one_denial_charges_no_key(backend: Backend) {
    let (server, lim) = backend.start(&[]);
    let (mut con, mut admin) = (lim.connect(), server.connect());
    let (first, denied) = mcheck(&lim, &mut con);
    assert_eq!((first, denied), (vec![1, 1, 0, 60_000], vec![]));
    // The user's own limit (2 per minute) denies the third call.
    assert_eq!(mcheck(&lim, &mut con).0[..2], [1, 0]);
    let before = digests(&mut admin);
    let (decision, denied) = mcheck(&lim, &mut con);
    assert_eq!(denied, [1], "{decision:?}");
    assert_eq!(decision[..2], [0, 0]);
    assert!((59_000..=60_000).contains(&decision[2]), "{decision:?}");
    assert_eq!(digests(&mut admin), before, "nothing recorded anywhere");

    // The IP alone denies: a second user on it fills its minute.
    run::<()>(&mut con, &["DEL", KEYS[0]]);
    lim.run::<Vec<i64>>(&mut con, &["RATELIMIT.CHECK", KEYS[1], "60000", "3"]);
    let before = digests(&mut admin);
    let (decision, denied) = mcheck(&lim, &mut con);
    assert_eq!((decision[0], denied), (0, vec![2]));
    assert_eq!(digests(&mut admin), before);

    // The tenant alone denies, then two keys at once.
    for key in KEYS {
        run::<()>(&mut con, &["DEL", key]);
    }
    let tenant_full = ["RATELIMIT.CHECK", KEYS[2], "60000", "4", "COST", "4"];
    lim.run::<Vec<i64>>(&mut con, &tenant_full);
    let (decision, denied) = mcheck(&lim, &mut con);
    assert_eq!((decision[0], denied), (0, vec![3]));
    let exists: i64 = run(&mut con, &["EXISTS", KEYS[0], KEYS[1]]);
    assert_eq!(exists, 0, "a denied call creates no key");
    let (decision, denied) = mcheck_by(&lim, &mut con, "RATELIMIT.MCHECK", &["COST", "2"]);
    assert_eq!((decision[0], denied), (0, vec![3]));
    lim.run::<Vec<i64>>(&mut con, &["RATELIMIT.CHECK", KEYS[0], "60000", "2"]);
    let (_, denied) = mcheck_by(&lim, &mut con, "RATELIMIT.MCHECK", &["COST", "2"]);
    assert_eq!(denied, [1, 3]);
}

fn mpeek_answers_and_mundo_refunds_every_key(backend: Backend) {
    let (server, lim) = backend.start(&[]);
    let (mut con, mut admin) = (lim.connect(), server.connect());
    assert_eq!(
        mcheck_by(&lim, &mut con, "RATELIMIT.MPEEK", &[]),
        (vec![1, 2, 0, 0], vec![])
    );
    let exists: i64 = run(&mut con, &["EXISTS", KEYS[0], KEYS[1], KEYS[2]]);
    assert_eq!(exists, 0, "MPEEK creates nothing");
    mcheck(&lim, &mut con);
    mcheck(&lim, &mut con);
    let before = digests(&mut admin);
    let (peeked, denied) = mcheck_by(&lim, &mut con, "RATELIMIT.MPEEK", &[]);
    assert_eq!((peeked[..2].to_vec(), denied), (vec![0, 0], vec![1]));
    assert_eq!(digests(&mut admin), before);
    let refunded: Vec<i64> = lim.run(
        &mut con,
        &[
            "RATELIMIT.MUNDO",
            "3",
            KEYS[0],
            KEYS[2],
            "missing",
            "COST",
            "3",
        ],
    );
    assert_eq!(refunded, [2, 2, 0]);
    let exists: i64 = run(&mut con, &["EXISTS", KEYS[0], KEYS[2]]);
    assert_eq!(exists, 0, "emptied logs are deleted");
    assert_eq!(
        mcheck(&lim, &mut con).0[..2],
        [1, 0],
        "the IP's minute is now full"
    );
}

/// MCHECK over two keys, 9 per minute each.
fn two_keys<'a>(a: &'a str, b: &'a str) -> [&'a str; 10] {
    [
        "RATELIMIT.MCHECK",
        "2",
        a,
        b,
        "1",
        "60000",
        "9",
        "1",
        "60000",
        "9",
    ]
}

/// A key of another type anywhere in the call refuses the whole call, and
/// each argument error has the module's text: nothing changes.
fn an_error_on_one_key_changes_no_key(backend: Backend) {
    let (server, lim) = backend.start(&[]);
    let (mut con, mut admin) = (lim.connect(), server.connect());
    mcheck(&lim, &mut con);
    run::<()>(&mut con, &["SET", "plain", "x"]);
    let before = digests(&mut admin);
    for words in [
        &two_keys(KEYS[0], "plain")[..],
        &two_keys("fresh", "plain"),
        &["RATELIMIT.MUNDO", "2", KEYS[0], "plain"],
        &[
            "RATELIMIT.MPEEK",
            "2",
            KEYS[0],
            "plain",
            "1",
            "10",
            "1",
            "1",
            "10",
            "1",
        ],
    ] {
        let wrongtype = lim.error(&mut con, words);
        assert!(wrongtype.starts_with("WRONGTYPE"), "{words:?}: {wrongtype}");
    }
    assert_eq!(digests(&mut admin), before);
    let exists: i64 = run(&mut con, &["EXISTS", "fresh"]);
    assert_eq!(exists, 0);
    let seventeen: Vec<String> = (0..17).map(|k| format!("k{k}")).collect();
    let mut too_many = vec!["RATELIMIT.MUNDO", "17"];
    too_many.extend(seventeen.iter().map(String::as_str));
    for (words, expected) in [
        (
            vec!["RATELIMIT.MCHECK", "0", "a", "1", "10", "1"],
            "ERR numkeys must be an integer from 1 to 16",
        ),
        (too_many, "ERR numkeys must be an integer from 1 to 16"),
        (
            vec![
                "RATELIMIT.MCHECK",
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
            "ERR key 'a' is given more than once",
        ),
        (
            vec!["RATELIMIT.MPEEK", "1", "a", "9", "10", "1"],
            "ERR npairs of key 1 must be an integer from 1 to 8",
        ),
        (
            vec![
                "RATELIMIT.MCHECK",
                "2",
                "a",
                "b",
                "1",
                "10",
                "5",
                "1",
                "10",
                "2",
                "COST",
                "3",
            ],
            "ERR key 'b': COST 3 is above max 2: such a request could never be allowed",
        ),
        (
            vec![
                "RATELIMIT.MCHECK",
                "2",
                "a",
                "b",
                "1",
                "10",
                "5",
                "2",
                "10",
                "2",
                "10",
                "3",
            ],
            "ERR key 'b': window 10 is given twice",
        ),
        (
            vec!["RATELIMIT.MCHECK", "1", "a", "1", "10", "1", "COST", "0"],
            "ERR key 'a': COST must be a positive integer",
        ),
        (
            vec![
                "RATELIMIT.MCHECK",
                "1",
                "a",
                "1",
                "10",
                "1",
                "PRECISION",
                "11",
            ],
            "ERR key 'a': PRECISION must be an integer from 1 to 10 (the shortest window)",
        ),
        (
            vec!["RATELIMIT.MCHECK", "1", "a", "1", "10", "1", "X", "5"],
            "ERR unknown option 'X' (the options are COST n, PRECISION p and BLOCK ms)",
        ),
        (
            vec!["RATELIMIT.MCHECK", "1", "a", "1", "10", "1", "BLOCK", "0"],
            "ERR BLOCK must be an integer from 1 to 31536000000 (milliseconds)",
        ),
        (
            vec![
                "RATELIMIT.MPEEK",
                "1",
                "a",
                "1",
                "10",
                "1",
                "BLOCK",
                "31536000001",
            ],
            "ERR BLOCK must be an integer from 1 to 31536000000 (milliseconds)",
        ),
        (
            vec!["RATELIMIT.MCHECK", "1", "a", "1", "10", "1", "BLOCK"],
            "ERR syntax error: BLOCK needs a value",
        ),
        (
            vec![
                "RATELIMIT.MCHECK",
                "1",
                "a",
                "1",
                "10",
                "1",
                "BLOCK",
                "5",
                "block",
                "5",
            ],
            "ERR BLOCK given more than once",
        ),
        (
            vec!["RATELIMIT.MUNDO", "1", "a", "BLOCK", "5"],
            "ERR unknown option 'BLOCK' (the options are COST n)",
        ),
        (
            vec!["RATELIMIT.MUNDO", "1", "a", "PRECISION", "5"],
            "ERR unknown option 'PRECISION' (the options are COST n)",
        ),
    ] {
        assert_eq!(lim.error(&mut con, &words), expected, "{words:?}");
    }
    let arity = lim.error(&mut con, &["RATELIMIT.MCHECK", "2", "a", "b", "1", "10"]);
    assert!(arity.contains("wrong number of arguments"), "{arity}");
    assert_eq!(digests(&mut admin), before);
}

/// Module only (the twin has no `max-entries`): a full log on one key
/// refuses the whole call, naming that key.
#[test]
fn module_a_full_log_on_one_key_changes_no_key() {
    let server = Server::start_with_module_args(&["max-entries", "2"], &[]);
    let mut con = server.connect();
    let lim = Caller::of(Backend::Module);
    mcheck(&lim, &mut con);
    // The IP's log holds two entries (max-entries 2): a third refuses the
    // whole call, although the other key alone had room.
    std::thread::sleep(std::time::Duration::from_millis(2));
    run::<Vec<i64>>(&mut con, &["RATELIMIT.CHECK", KEYS[1], "60000", "9"]);
    let before = digests(&mut con);
    std::thread::sleep(std::time::Duration::from_millis(2));
    let full = error(&mut con, &two_keys("fresh", KEYS[1]));
    let named = format!("ERR key '{}': this key's log is full", KEYS[1]);
    assert!(full.starts_with(&named), "{full}");
    assert_eq!(digests(&mut con), before);
    let exists: i64 = run(&mut con, &["EXISTS", "fresh"]);
    assert_eq!(exists, 0);
}

fn sixteen_keys_with_eight_pairs_each(backend: Backend) {
    let (_server, lim) = backend.start(&[]);
    let mut con = lim.connect();
    let keys: Vec<String> = (0..16).map(|k| format!("k{k}")).collect();
    let mut words = vec!["RATELIMIT.MCHECK".to_string(), "16".to_string()];
    words.extend(keys.iter().cloned());
    for k in 0..16 {
        words.push("8".into());
        for pair in 1..=8 {
            words.push((pair * 1000).to_string());
            // Key k0 allows 2 per second, every other key more.
            words.push(if k == 0 && pair == 1 { 2 } else { 10 + pair }.to_string());
        }
    }
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    for expected_remaining in [1, 0] {
        let (a, remaining, _, reset, denied): (i64, i64, i64, i64, Vec<i64>) =
            lim.run(&mut con, &words);
        assert_eq!(
            (a, remaining, reset, denied),
            (1, expected_remaining, 8000, vec![])
        );
    }
    let (a, _, retry, _, denied): (i64, i64, i64, i64, Vec<i64>) = lim.run(&mut con, &words);
    assert_eq!((a, denied), (0, vec![1]));
    assert!((1..=1000).contains(&retry), "{retry}");
    let mut undo = vec!["RATELIMIT.MUNDO", "16"];
    undo.extend(&words[2..18]);
    undo.extend(["COST", "5"]);
    let refunded: Vec<i64> = lim.run(&mut con, &undo);
    assert_eq!(
        refunded,
        vec![2; 16],
        "the two allowed calls, not the denied one"
    );
}

fn resp2_and_resp3_get_the_same_reply(backend: Backend) {
    let (_server, lim) = backend.start(&[]);
    let (mut resp2, mut resp3) = (lim.connect(), lim.connect_resp3());
    let ints = |values: &[i64]| Value::Array(values.iter().copied().map(Value::Int).collect());
    for con in [&mut resp2, &mut resp3] {
        run::<()>(con, &["DEL", KEYS[0], KEYS[1], KEYS[2]]);
        let words = call("RATELIMIT.MCHECK", &["COST", "2"]);
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        let allowed: Value = lim.run(con, &words);
        assert_eq!(
            allowed,
            Value::Array(vec![
                Value::Int(1),
                Value::Int(0),
                Value::Int(0),
                Value::Int(60_000),
                ints(&[])
            ])
        );
        let denied: Value = lim.run(con, &words);
        let Value::Array(fields) = denied else {
            panic!("not an array: {denied:?}");
        };
        assert_eq!(fields.len(), 5);
        assert_eq!(fields[..2], [Value::Int(0), Value::Int(0)]);
        assert_eq!(fields[4], ints(&[1, 2]), "the tenant had room");
    }
}

harness::on_every_backend!(
    any_one_denial_charges_no_key,
    mpeek_answers_and_mundo_refunds_every_key,
    an_error_on_one_key_changes_no_key,
    sixteen_keys_with_eight_pairs_each,
    resp2_and_resp3_get_the_same_reply,
    cluster_mode_refuses_keys_in_different_slots,
    acl_key_patterns_apply_to_every_key,
    the_readme_example_replies_as_shown,
);

/// A connection as a new ACL user with these rules.
fn connect_as(server: &Server, user: &str, rules: &[&str]) -> Connection {
    let mut words = vec!["ACL", "SETUSER", user, "on", ">pw"];
    words.extend(rules);
    run::<()>(&mut server.connect(), &words);
    redis::Client::open(format!("redis://{user}:pw@127.0.0.1:{}/", server.port))
        .and_then(|client| client.get_connection())
        .unwrap_or_else(|e| panic!("a connection as {user}: {e}"))
}

/// Module only: the module's key specs and `getkeys-api` (the twin's keys
/// are FCALL's and EVALSHA's own).
#[test]
fn every_key_is_visible_to_getkeys() {
    let server = Server::start(&[]);
    let mut admin = server.connect();
    let words = call("RATELIMIT.MCHECK", &[]);
    let mut getkeys = vec!["COMMAND", "GETKEYS"];
    getkeys.extend(words.iter().map(String::as_str));
    let keys: Vec<String> = run(&mut admin, &getkeys);
    assert_eq!(keys, KEYS);
    let undo_keys: Vec<String> = run(
        &mut admin,
        &[
            "COMMAND",
            "GETKEYS",
            "RATELIMIT.MUNDO",
            "2",
            "a",
            "b",
            "COST",
            "2",
        ],
    );
    assert_eq!(undo_keys, ["a", "b"]);
}

/// ACL key patterns apply to every key a call names (the module's key
/// specs, the keys FCALL and EVALSHA declare): a user without the
/// tenant's key may not name it, and no key changes.
fn acl_key_patterns_apply_to_every_key(backend: Backend) {
    let (server, lim) = backend.start(&[]);
    let mut admin = server.connect();
    let mut app = connect_as(
        &server,
        "limited",
        &["~{t:7}:user:*", "~{t:7}:ip:*", "+@all"],
    );
    for name in ["RATELIMIT.MCHECK", "RATELIMIT.MPEEK"] {
        let words = call(name, &[]);
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        let refused = lim.error(&mut app, &words);
        assert!(refused.starts_with("NOPERM"), "{name}: {refused}");
    }
    let refused = lim.error(&mut app, &["RATELIMIT.MUNDO", "2", KEYS[0], KEYS[2]]);
    assert!(refused.starts_with("NOPERM"), "{refused}");
    let allowed: (i64, i64, i64, i64, Vec<i64>) = lim.run(
        &mut app,
        &[
            "RATELIMIT.MCHECK",
            "2",
            KEYS[0],
            KEYS[1],
            "1",
            "1000",
            "1",
            "1",
            "1000",
            "1",
        ],
    );
    assert_eq!(allowed.0, 1);
    let keys: Vec<String> = all_digests(&mut admin)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, [KEYS[1], KEYS[0]]);
}

/// A user who may only read the limiter keys (`%R~`) may MPEEK them but
/// not MCHECK or MUNDO them: the key specs' flags (`RO access`, `RW
/// update`, `RW delete`) are what ACL checks, and what GETKEYSANDFLAGS says.
/// Module only: a script's keys carry no such flags.
#[test]
fn read_only_key_patterns_allow_mpeek_only() {
    let server = Server::start(&[]);
    let mut admin = server.connect();
    let flags = |con: &mut Connection, name: &str| -> Vec<Vec<Value>> {
        let mut words = vec!["COMMAND", "GETKEYSANDFLAGS"];
        let call = call(name, &[]);
        words.extend(call.iter().map(String::as_str));
        run(con, &words)
    };
    let mpeek = flags(&mut admin, "RATELIMIT.MPEEK");
    assert_eq!(mpeek.len(), 3);
    for entry in mpeek {
        let key_flags: Vec<String> = redis::from_redis_value(&entry[1]).expect("flags");
        assert_eq!(key_flags, ["RO", "access"]);
    }
    let mut reader = connect_as(&server, "reader", &["%R~{t:7}:*", "+@all"]);
    let module = Caller::of(Backend::Module);
    let (fields, denied) = mcheck_by(&module, &mut reader, "RATELIMIT.MPEEK", &[]);
    assert_eq!((fields[0], denied), (1, vec![]));
    let words = call("RATELIMIT.MCHECK", &[]);
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let refused = error(&mut reader, &words);
    assert!(refused.starts_with("NOPERM"), "{refused}");
    let refused = error(&mut reader, &["RATELIMIT.MUNDO", "2", KEYS[0], KEYS[1]]);
    assert!(refused.starts_with("NOPERM"), "{refused}");
    let written: i64 = run(&mut admin, &["DBSIZE"]);
    assert_eq!(written, 0);
}

/// The server refuses a call whose keys span slots (the module's key
/// specs, FCALL's and EVALSHA's declared keys alike).
fn cluster_mode_refuses_keys_in_different_slots(backend: Backend) {
    let bus = harness::free_port().to_string();
    let (server, lim) = backend.start(&[
        "--cluster-enabled",
        "yes",
        "--cluster-port",
        &bus,
        "--cluster-config-file",
        "nodes.conf",
    ]);
    let mut admin = server.connect();
    run::<()>(&mut admin, &["CLUSTER", "ADDSLOTSRANGE", "0", "16383"]);
    for _ in 0..100 {
        let state: String = run(&mut admin, &["CLUSTER", "INFO"]);
        if state.contains("cluster_state:ok") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut con = lim.connect();
    let (decision, _) = mcheck(&lim, &mut con);
    assert_eq!(decision[0], 1, "hash-tagged keys share a slot");
    for name in ["RATELIMIT.MCHECK", "RATELIMIT.MPEEK"] {
        let refused = lim.error(
            &mut con,
            &[
                name, "2", "user:1", "ip:1", "1", "1000", "5", "1", "1000", "5",
            ],
        );
        assert!(refused.starts_with("CROSSSLOT"), "{name}: {refused}");
    }
    let refused = lim.error(&mut con, &["RATELIMIT.MUNDO", "2", "user:1", "ip:1"]);
    assert!(refused.starts_with("CROSSSLOT"), "{refused}");
}

/// the documentation's example of the native all-or-nothing call, word for word.
fn the_readme_example_replies_as_shown(backend: Backend) {
    let readme = harness::documentation();
    let line = readme
        .lines()
        .find_map(|line| line.strip_prefix("redis-cli RATELIMIT.MCHECK "))
        .expect("the documentation shows an MCHECK");
    let (_server, lim) = backend.start(&[]);
    let mut con = lim.connect();
    let mut words = vec!["RATELIMIT.MCHECK"];
    words.extend(line.split(' '));
    let reply: (i64, i64, i64, i64, Vec<i64>) = lim.run(&mut con, &words);
    assert_eq!(reply, (1, 99, 0, 60_000, vec![]));
    assert!(readme.contains(
        "1) (integer) 1\n2) (integer) 99\n3) (integer) 0\n4) (integer) 60000\n5) (empty array)"
    ));
}

/// A denied MCHECK that widens nothing changes nothing (a WATCHing client
/// keeps its transaction, no event); an allowed one signals and publishes
/// every key; MUNDO every key it refunds. Module only: the twin's writes
/// publish the string commands' events.
#[test]
fn watch_and_keyspace_events_see_every_key_and_only_changes() {
    let lim = Caller::of(Backend::Module);
    let server = Server::start(&["--notify-keyspace-events", "Kd$"]);
    let mut subscriber = server.subscriber();
    let mut pubsub = subscriber.as_pubsub();
    pubsub.psubscribe("__keyspace@0__:*").expect("PSUBSCRIBE");
    let (mut watcher, mut con) = (server.connect(), server.connect());
    let transaction = |watcher: &mut Connection, con: &mut Connection| {
        run::<()>(watcher, &["WATCH", KEYS[2]]);
        mcheck(&lim, con);
        run::<()>(watcher, &["MULTI"]);
        run::<()>(watcher, &["SET", "marker", "1"]);
        run::<Value>(watcher, &["EXEC"])
    };
    assert_eq!(
        transaction(&mut watcher, &mut con),
        Value::Nil,
        "allowed: a write"
    );
    mcheck(&lim, &mut con);
    assert_eq!(
        transaction(&mut watcher, &mut con),
        Value::Array(vec![Value::Okay]),
        "denied, widening nothing: no write"
    );
    run::<Value>(&mut con, &["RATELIMIT.MUNDO", "2", KEYS[0], KEYS[2]]);
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
    let recorded: Vec<String> = KEYS
        .iter()
        .map(|k| format!("{k} ratelimit.recorded"))
        .collect();
    let mut expected = [recorded.clone(), recorded].concat();
    expected.push(format!("{} ratelimit.refunded", KEYS[0]));
    expected.push(format!("{} ratelimit.refunded", KEYS[2]));
    assert_eq!(events, expected);
}

/// Each of KEYS' absolute expiry, in ms (-2 for a missing key).
fn expiries(con: &mut Connection) -> Vec<i64> {
    KEYS.iter()
        .map(|key| run(con, &["PEXPIRETIME", key]))
        .collect()
}

/// MCHECKs (allowed, denied, denied and widening, with PRECISION) and a
/// MUNDO on a master with an AOF and a replica: the replica, an AOF replay
/// and a restart hold the master's every key, bytes and expiry;
/// `in_the_aof` checks the AOF's commands (SELECT left out: servers put
/// the first write's inside or before MULTI).
fn replicas_and_the_aof_get_every_key_at_once(backend: Backend, in_the_aof: fn(&[Vec<String>])) {
    let (mut master, lim) = backend.start(&["--appendonly", "yes", "--appendfsync", "always"]);
    let follow = ["--replicaof", "127.0.0.1", &master.port.to_string()];
    let replica = match backend {
        Backend::Module => Server::start(&follow),
        _ => Server::start_without_module(&follow),
    };
    let (mut m, mut r) = (master.connect(), replica.connect());
    wait_for_replica(&mut m, &mut r);
    mcheck(&lim, &mut m);
    mcheck(&lim, &mut m);
    let (decision, denied) = mcheck(&lim, &mut m);
    assert_eq!((decision[0], denied), (0, vec![1]), "the user is full");
    // Denied again, and the IP's log now keeps an hour.
    let widening = [
        "RATELIMIT.MCHECK",
        "2",
        KEYS[0],
        KEYS[1],
        "1",
        "60000",
        "2",
        "1",
        "3600000",
        "5",
    ];
    lim.run::<Value>(&mut m, &widening);
    lim.run::<Vec<i64>>(&mut m, &["RATELIMIT.MUNDO", "2", KEYS[0], KEYS[2]]);
    mcheck_by(&lim, &mut m, "RATELIMIT.MCHECK", &["PRECISION", "100"]);
    wait_for_replica(&mut m, &mut r);
    let on_master = all_digests(&mut m);
    assert_eq!(on_master.len(), 3);
    assert_eq!(all_digests(&mut r), on_master);
    assert_eq!(
        expiries(&mut r),
        expiries(&mut m),
        "the same absolute expiry"
    );
    let peeked = mcheck_by(&lim, &mut r, "RATELIMIT.MPEEK", &[]);
    assert_eq!(
        peeked.1,
        mcheck_by(&lim, &mut m, "RATELIMIT.MPEEK", &[]).1,
        "MPEEK runs on a replica"
    );
    let words = call("RATELIMIT.MCHECK", &[]);
    let refused = lim.error(
        &mut r,
        &words.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(refused.starts_with("READONLY"), "{refused}");
    let ttl: i64 = run(&mut r, &["PTTL", KEYS[1]]);
    assert!(
        ttl > 3_000_000,
        "the widened hour reached the replica: {ttl}"
    );
    let commands: Vec<Vec<String>> = aof_commands(&master)
        .into_iter()
        .filter(|c| !c[0].eq_ignore_ascii_case("select"))
        .collect();
    in_the_aof(&commands);

    master.kill();
    master.relaunch();
    let mut m = master.connect();
    assert_eq!(
        all_digests(&mut m),
        on_master,
        "the AOF replays to the same state"
    );
    master.restart(true);
    let mut m = master.connect();
    assert_eq!(all_digests(&mut m), on_master, "and after a restart");
}

/// The `count` commands after the first named `name`, with the one before
/// it: their names, and the keys of the `count`.
fn around_first(commands: &[Vec<String>], name: &str, count: usize) -> (Vec<String>, Vec<String>) {
    let first = commands
        .iter()
        .position(|c| c[0].eq_ignore_ascii_case(name))
        .unwrap_or_else(|| panic!("no {name} in {commands:?}"));
    let names = commands[first - 1..=first + count]
        .iter()
        .map(|c| c[0].to_lowercase())
        .collect();
    let keys = commands[first..first + count]
        .iter()
        .map(|c| c[1].clone())
        .collect();
    (names, keys)
}

/// The module's decisions replicate as their writes: an allowed MCHECK
/// as one MRECORD over its keys, a widening denial as WIDEN.
#[test]
fn module_replicas_and_the_aof_get_every_key_at_once() {
    replicas_and_the_aof_get_every_key_at_once(Backend::Module, |commands| {
        let names: Vec<String> = commands.iter().map(|c| c[0].to_lowercase()).collect();
        let first = commands
            .iter()
            .find(|c| c[0].eq_ignore_ascii_case("ratelimit.mrecord"))
            .unwrap_or_else(|| panic!("no MRECORD in {commands:?}"));
        assert_eq!(first[1..5], ["3", KEYS[0], KEYS[1], KEYS[2]]);
        assert!(names.iter().any(|n| n == "ratelimit.widen"), "{names:?}");
        assert!(
            !names
                .iter()
                .any(|n| n == "ratelimit.mcheck" || n == "ratelimit.record"),
            "decisions replicate as their writes, every key in one: {names:?}"
        );
    });
}

/// The twin's multi-key calls replicate as the writes they made (effects
/// replication), which the server wraps in one MULTI/EXEC: the first call
/// created the three keys in one transaction.
#[test]
fn twin_replicas_and_the_aof_get_every_key_at_once() {
    replicas_and_the_aof_get_every_key_at_once(Backend::Function, |commands| {
        let (names, keys) = around_first(commands, "set", 3);
        assert_eq!(
            names,
            ["multi", "set", "set", "set", "exec"],
            "{commands:?}"
        );
        assert_eq!(keys, KEYS);
    });
}
