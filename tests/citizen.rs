//! Behaving like a built-in command: COMMAND DOCS and key specs (checked
//! against README.md), INFO, CONFIG, RESP3, ACL, MODULE LIST.

use harness::{command_docs, error, fields, info_text, items, run, synopsis, text, Server};
use redis::Value;
use std::collections::HashMap;

#[test]
fn readme_reference_matches_command_docs() {
    let server = Server::start(&[]);
    let mut con = server.connect();
    let readme = harness::documentation();
    for name in [
        "RATELIMIT.CHECK",
        "RATELIMIT.PEEK",
        "RATELIMIT.UNDO",
        "RATELIMIT.MCHECK",
        "RATELIMIT.MPEEK",
        "RATELIMIT.MUNDO",
        "RATELIMIT.UNBLOCK",
        "RATELIMIT.CHARGE",
        "RATELIMIT.MCHARGE",
    ] {
        let docs = command_docs(&mut con, name);
        let heading = format!("## `{}`", synopsis(name, &docs));
        assert!(
            readme.contains(&heading),
            "the documentation lacks {heading}"
        );
        let summary = format!("> {}", text(&docs["summary"]));
        assert!(
            readme.contains(&summary),
            "the documentation lacks the summary of {name}: {summary}"
        );
        assert!(docs.contains_key("complexity"));
    }
}

#[test]
fn key_specs_and_getkeys() {
    let server = Server::start(&[]);
    let mut con = server.connect();
    for (name, flags) in [
        ("RATELIMIT.CHECK", ["RW", "update"]),
        ("RATELIMIT.PEEK", ["RO", "access"]),
        ("RATELIMIT.UNDO", ["RW", "delete"]),
        ("RATELIMIT.CHARGE", ["RW", "update"]),
    ] {
        let reply: Value = run(&mut con, &["COMMAND", "INFO", name]);
        let info = items(&items(&reply)[0]);
        // [name, arity, flags, first, last, step, acl, tips, key specs, subcommands]
        let specs = items(&info[8]);
        assert_eq!(specs.len(), 1, "{name}");
        let spec = fields(&specs[0]);
        let found: Vec<String> = items(&spec["flags"]).iter().map(text).collect();
        assert_eq!(found, flags, "{name}");
        let keys: Value = run(
            &mut con,
            &["COMMAND", "GETKEYSANDFLAGS", name, "rl:1", "1000", "5"],
        );
        let key = items(&items(&keys)[0]);
        assert_eq!(text(&key[0]), "rl:1");
        let key_flags: Vec<String> = items(&key[1]).iter().map(text).collect();
        assert_eq!(key_flags, flags, "{name}");
    }
}

#[test]
fn info_counts_calls_since_load() {
    let server = Server::start(&[]);
    let mut con = server.connect();
    run::<Vec<i64>>(
        &mut con,
        &["RATELIMIT.CHECK", "k", "60000", "3", "COST", "2"],
    );
    run::<Vec<i64>>(
        &mut con,
        &["RATELIMIT.CHECK", "k", "60000", "3", "COST", "2"],
    );
    run::<Vec<i64>>(&mut con, &["RATELIMIT.PEEK", "k", "60000", "3"]);
    run::<i64>(&mut con, &["RATELIMIT.UNDO", "k", "COST", "5"]);
    let info: String = run(&mut con, &["INFO", "ratelimit"]);
    for line in [
        "ratelimit_checks:2",
        "ratelimit_allowed:1",
        "ratelimit_denied:1",
        "ratelimit_peeks:1",
        "ratelimit_undos:1",
        "ratelimit_units_recorded:2",
        "ratelimit_units_refunded:2",
        "ratelimit_records_replayed:0",
        &format!("ratelimit_version:{}", env!("CARGO_PKG_VERSION")),
        "ratelimit_max_entries:1000000",
    ] {
        assert!(info.contains(line), "INFO ratelimit lacks {line}:\n{info}");
    }
}

#[test]
fn config_get_set_and_rewrite() {
    let server = Server::start_with_config("ratelimit.max-entries 500\n");
    let mut con = server.connect();
    let get = |con: &mut redis::Connection| -> Vec<String> {
        run(con, &["CONFIG", "GET", "ratelimit.max-entries"])
    };
    assert_eq!(get(&mut con)[1], "500");
    run::<()>(
        &mut con,
        &["CONFIG", "SET", "ratelimit.max-entries", "2000"],
    );
    assert_eq!(get(&mut con)[1], "2000");
    assert_eq!(
        run::<Vec<i64>>(&mut con, &["RATELIMIT.CHECK", "k", "1000", "2000"])[0],
        1
    );
    for bad in ["0", "-1", "1000000001", "lots"] {
        let refused = error(&mut con, &["CONFIG", "SET", "ratelimit.max-entries", bad]);
        assert!(refused.starts_with("ERR"), "{bad}: {refused}");
        assert_eq!(get(&mut con)[1], "2000", "{bad} changed the setting");
    }
    run::<()>(&mut con, &["CONFIG", "REWRITE"]);
    let written = std::fs::read_to_string(server.dir.join("redis.conf")).expect("config file");
    assert!(written.contains("ratelimit.max-entries 2000"), "{written}");
}

/// The same array of four integers in both protocols: a map in RESP3
/// would be misread by the clients that default to it.
#[test]
fn resp2_and_resp3_clients_get_the_same_array() {
    let server = Server::start(&[]);
    let client = redis::Client::open(format!("{}?protocol=resp3", server.url())).expect("url");
    let mut resp3 = client.get_connection().expect("RESP3 connection");
    let hello: Value = redis::cmd("HELLO").query(&mut resp3).expect("HELLO");
    assert_eq!(fields(&hello)["proto"], Value::Int(3));
    let mut resp2 = server.connect();
    let check = |con: &mut redis::Connection, key: &str, cost: &str| -> Value {
        redis::cmd("RATELIMIT.CHECK")
            .arg(key)
            .arg(60_000)
            .arg(2)
            .arg("COST")
            .arg(cost)
            .query(con)
            .expect("CHECK")
    };
    let ints = |values: [i64; 4]| Value::Array(values.map(Value::Int).to_vec());
    for (key, con) in [("resp3", &mut resp3), ("resp2", &mut resp2)] {
        assert_eq!(check(con, key, "1"), ints([1, 1, 0, 60_000]));
        let denied = check(con, key, "2");
        let Value::Array(fields) = &denied else {
            panic!("not an array: {denied:?}");
        };
        assert_eq!(fields[..2], [Value::Int(0), Value::Int(1)], "{denied:?}");
        let peek: Value = redis::cmd("RATELIMIT.PEEK")
            .arg(key)
            .arg(60_000)
            .arg(2)
            .query(con)
            .expect("PEEK");
        assert!(
            matches!(&peek, Value::Array(f) if f.len() == 4 && f[0] == Value::Int(1)),
            "{peek:?}"
        );
    }
}

/// A connection as a new ACL user with these rules and password "pw".
fn user(
    server: &Server,
    admin: &mut redis::Connection,
    name: &str,
    rules: &[&str],
) -> redis::Connection {
    let mut setuser = vec!["ACL", "SETUSER", name, "on", ">pw"];
    setuser.extend_from_slice(rules);
    run::<()>(admin, &setuser);
    redis::Client::open(format!("redis://{name}:pw@127.0.0.1:{}/", server.port))
        .and_then(|client| client.get_connection())
        .expect("a connection as the new user")
}

#[test]
fn acl_key_patterns_and_command_rules_apply() {
    let server = Server::start(&[]);
    let mut admin = server.connect();
    let mut app = user(
        &server,
        &mut admin,
        "app",
        &["~rl:*", "+ratelimit.check", "+ratelimit.peek"],
    );
    assert_eq!(
        run::<Vec<i64>>(&mut app, &["RATELIMIT.CHECK", "rl:1", "1000", "5"])[0],
        1
    );
    let refused = error(&mut app, &["RATELIMIT.CHECK", "other:1", "1000", "5"]);
    assert!(refused.starts_with("NOPERM"), "{refused}");
    let refused = error(&mut app, &["RATELIMIT.UNDO", "rl:1"]);
    assert!(refused.starts_with("NOPERM"), "{refused}");
}

#[test]
fn acl_categories_where_the_server_has_them() {
    let server = Server::start(&[]);
    let mut admin = server.connect();
    let info: Value = run(&mut admin, &["COMMAND", "INFO", "RATELIMIT.PEEK"]);
    let categories: Vec<String> = items(&items(&items(&info)[0])[6])
        .iter()
        .map(text)
        .collect();
    if categories.is_empty() {
        eprintln!(
            "skipped: this server ({}) gives module commands no ACL categories (Redis < 7.2)",
            harness::server_binary()
        );
        return;
    }
    assert_eq!(categories, ["@read", "@ratelimit"]);
    let mut reader = user(&server, &mut admin, "reader", &["~*", "+@read"]);
    assert_eq!(
        run::<Vec<i64>>(&mut reader, &["RATELIMIT.PEEK", "k", "1000", "5"])[0],
        1
    );
    let refused = error(&mut reader, &["RATELIMIT.CHECK", "k", "1000", "5"]);
    assert!(refused.starts_with("NOPERM"), "{refused}");
    let mut limiter = user(&server, &mut admin, "limiter", &["~*", "+@ratelimit"]);
    assert_eq!(
        run::<Vec<i64>>(&mut limiter, &["RATELIMIT.CHECK", "k", "1000", "5"])[0],
        1
    );
    assert!(error(&mut limiter, &["GET", "k"]).starts_with("NOPERM"));
}

#[test]
fn module_list_shows_the_crate_version() {
    let server = Server::start(&[]);
    let mut con = server.connect();
    // Newer servers list modules of their own beside this one.
    let modules: Value = run(&mut con, &["MODULE", "LIST"]);
    let listed: Vec<HashMap<String, Value>> = items(&modules).iter().map(fields).collect();
    let names: Vec<String> = listed.iter().map(|m| text(&m["name"])).collect();
    let module = listed
        .iter()
        .find(|m| text(&m["name"]) == "ratelimit")
        .unwrap_or_else(|| panic!("ratelimit is not in MODULE LIST: {names:?}"));
    let v: Vec<i64> = env!("CARGO_PKG_VERSION")
        .split('.')
        .map(|n| n.parse().expect("digits"))
        .collect();
    assert_eq!(
        text(&module["ver"]),
        (v[0] * 10_000 + v[1] * 100 + v[2]).to_string()
    );
}

/// The repository's redis.conf (what `make run` starts) loads the build.
#[test]
fn the_repository_redis_conf_loads_the_module() {
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let port = harness::free_port();
    // redis.conf names the module relative to the repository, where `make
    // run` starts the server (a --dir would move it away before loading);
    // nothing is saved, so nothing is written there.
    let child = std::process::Command::new(harness::server_binary())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("redis.conf")
        .args(["--port", &port.to_string()])
        .args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--ratelimit.max-entries",
            "777",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("a server started from redis.conf");
    let _stop = Stop(child);
    let url = format!("redis://127.0.0.1:{port}/");
    let mut con = (0..200)
        .find_map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(25));
            let mut con = redis::Client::open(url.as_str())
                .ok()?
                .get_connection()
                .ok()?;
            redis::cmd("PING").query::<String>(&mut con).ok()?;
            Some(con)
        })
        .expect("the server from redis.conf answers");
    let reply: Vec<i64> = run(&mut con, &["RATELIMIT.CHECK", "user:42", "60000", "5"]);
    assert_eq!(reply, [1, 4, 0, 60_000]);
    let config: Vec<String> = run(&mut con, &["CONFIG", "GET", "ratelimit.max-entries"]);
    assert_eq!(
        config[1], "777",
        "module settings work as config directives"
    );
}

/// The limits the documentation's opening shows, pasted as a user would, each
/// doing what its comment says.
#[test]
fn readme_opening_examples_behave_as_documented() {
    let readme = harness::documentation();
    let examples: Vec<Vec<&str>> = readme
        .lines()
        .take_while(|line| !line.starts_with("## "))
        .filter(|line| line.starts_with("RATELIMIT.CHECK") && line.contains("  # "))
        .map(|line| {
            line.split("  # ")
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect()
        })
        .collect();
    assert_eq!(examples.len(), 4, "{examples:?}");
    let server = Server::start(&[]);
    let mut con = server.connect();
    let mut call = |words: &[&str]| -> Vec<i64> { run(&mut con, words) };
    assert_eq!(call(&examples[0]), [1, 4, 0, 60_000]);
    // 10 per second and 1,000 per hour: the 11th call in a second waits.
    let burst = &examples[1];
    assert_eq!(call(burst), [1, 9, 0, 3_600_000]);
    for _ in 0..9 {
        assert_eq!(call(burst)[0], 1);
    }
    let eleventh = call(burst);
    assert_eq!(&eleventh[..2], [0, 0]);
    assert!((1..=1000).contains(&eleventh[2]), "{eleventh:?}");
    // A 2,500-token request against 10,000,000 tokens per minute.
    let tokens = &examples[2];
    assert_eq!(call(tokens), [1, 9_997_500, 0, 60_000]);
    for _ in 0..3_999 {
        assert_eq!(call(tokens)[0], 1);
    }
    assert_eq!(
        &call(tokens)[..2],
        [0, 0],
        "4,000 requests spent the budget"
    );
    // A hot global limit: thousands of calls in under a second share at
    // most 2 entries of 1000 ms: the 16-byte block, or the 48-byte one.
    let global = &examples[3];
    for _ in 0..2_000 {
        assert_eq!(call(global)[0], 1);
    }
    let peek: Vec<i64> = run(
        &mut con,
        &["RATELIMIT.PEEK", "global", "3600000", "36000000"],
    );
    assert_eq!(peek[1], 36_000_000 - 2_000);
    let usage: i64 = run(&mut con, &["MEMORY", "USAGE", "global"]);
    run::<Vec<i64>>(&mut con, &["RATELIMIT.CHECK", "single", "3600000", "5"]);
    let one_request: i64 = run(&mut con, &["MEMORY", "USAGE", "single"]);
    assert!(
        usage <= one_request + 48,
        "{usage} B, one request {one_request} B"
    );
}

/// A denied CHECK changes nothing, so a client WATCHing the key keeps its
/// transaction; an allowed one, like any write, aborts it.
#[test]
fn only_real_changes_touch_a_watched_key() {
    let server = Server::start(&[]);
    let (mut watcher, mut other) = (server.connect(), server.connect());
    run::<Vec<i64>>(&mut other, &["RATELIMIT.CHECK", "k", "60000", "1"]);
    let transaction =
        |watcher: &mut redis::Connection, other: &mut redis::Connection, max: &str| {
            run::<()>(watcher, &["WATCH", "k"]);
            run::<Vec<i64>>(other, &["RATELIMIT.CHECK", "k", "60000", max]);
            run::<()>(watcher, &["MULTI"]);
            run::<()>(watcher, &["SET", "marker", "1"]);
            run::<Value>(watcher, &["EXEC"])
        };
    let after_denied = transaction(&mut watcher, &mut other, "1");
    assert_eq!(
        after_denied,
        Value::Array(vec![Value::Okay]),
        "a denied CHECK touched the key"
    );
    let after_allowed = transaction(&mut watcher, &mut other, "5");
    assert_eq!(
        after_allowed,
        Value::Nil,
        "an allowed CHECK must abort the transaction"
    );
}

/// Each change of a log is published in the module class of keyspace
/// events; a denied CHECK and PEEK publish nothing.
#[test]
fn changes_are_published_as_keyspace_events() {
    let server = Server::start(&["--notify-keyspace-events", "Kd$"]);
    let mut subscriber = server.subscriber();
    let mut pubsub = subscriber.as_pubsub();
    pubsub.subscribe("__keyspace@0__:k").expect("SUBSCRIBE");
    let mut con = server.connect();
    let calls: [&[&str]; 6] = [
        &["RATELIMIT.CHECK", "k", "60000", "2", "COST", "2"],
        &["RATELIMIT.CHECK", "k", "60000", "2"],
        &["RATELIMIT.PEEK", "k", "60000", "2"],
        &["RATELIMIT.UNDO", "k"],
        &["RATELIMIT.UNDO", "k", "COST", "5"],
        &["RATELIMIT.UNDO", "k"],
    ];
    for call in calls {
        run::<Value>(&mut con, call);
    }
    run::<()>(&mut con, &["SET", "k", "done"]);
    let mut events = Vec::new();
    loop {
        let message = pubsub.get_message().expect("an event");
        let event: String = message.get_payload().expect("text");
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
}

/// Servers built with Redis's own jemalloc defragment memory in the
/// background; the module's defrag callback moves its logs' blocks. With
/// logs of every form fragmented by deletes, the logs moved (INFO counts
/// them) and afterwards every log digests and answers as before.
#[test]
fn active_defragmentation_moves_logs_and_changes_nothing() {
    let server = Server::start(&["--hz", "100"]);
    let mut con = server.connect();
    if let Err(skipped) = harness::can_defragment(&mut con) {
        eprintln!("skipped: {skipped}");
        return;
    }
    let keys = fill_logs_of_every_form(&mut con, 60_000);
    let kept = harness::fragment(&mut con, keys);
    let before = answers(&mut con, &kept);
    let moved = harness::defragment(&mut con);
    assert_eq!(answers(&mut con, &kept), before);
    // And the moved logs keep counting.
    let mut pipe = redis::pipe();
    for key in &kept {
        pipe.cmd("RATELIMIT.CHECK")
            .arg(key)
            .arg(3_600_000)
            .arg(1_000_000);
    }
    let checks: Vec<Vec<i64>> = pipe.query(&mut con).expect("CHECKs");
    for (check, (_, _, remaining)) in checks.iter().zip(&before) {
        assert_eq!(check[..2], [1, remaining - 1]);
    }
    eprintln!("defrag moved {moved} log allocations");
}

/// `count` keys, each with a log of one of the three forms: one request
/// (16-byte block), five (48-byte block) or sixty (heap deque).
fn fill_logs_of_every_form(con: &mut redis::Connection, count: usize) -> Vec<String> {
    let requests = |i: usize| [1, 1, 1, 5, 60][i % 5];
    let keys: Vec<String> = (0..count).map(|i| format!("log:{i}")).collect();
    for pass in 0..60 {
        let mut pipe = redis::pipe();
        for (i, key) in keys.iter().enumerate().filter(|(i, _)| requests(*i) > pass) {
            pipe.cmd("RATELIMIT.CHECK")
                .arg(key)
                .arg(3_600_000)
                .arg(1_000_000)
                .arg("COST")
                .arg(1 + i % 3)
                .ignore();
        }
        pipe.query::<()>(con).expect("fill");
        // Each pass a millisecond later, so that requests do not merge.
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    keys
}

/// Each key's digest and what PEEK says (allowed, remaining) under the
/// fill's limit, in which nothing expires during the test.
fn answers(con: &mut redis::Connection, keys: &[String]) -> Vec<(String, i64, i64)> {
    let mut pipe = redis::pipe();
    for key in keys {
        pipe.cmd("DEBUG").arg("DIGEST-VALUE").arg(key);
        pipe.cmd("RATELIMIT.PEEK")
            .arg(key)
            .arg(3_600_000)
            .arg(1_000_000);
    }
    let replies: Vec<Value> = pipe.query(con).expect("digests and PEEKs");
    replies
        .chunks(2)
        .map(|pair| {
            let peek: Vec<i64> = redis::from_redis_value(&pair[1]).expect("a PEEK reply");
            (text(&items(&pair[0])[0]), peek[0], peek[1])
        })
        .collect()
}

/// the documentation's support table lists the server this test runs on, by
/// product and exact version: a server added to harness/servers.txt needs
/// its row.
#[test]
fn the_readme_support_table_lists_this_server() {
    let server = Server::start(&[]);
    let mut con = server.connect();
    let mut field = |name: &str| info_text(&mut con, "server", name);
    // Valkey also reports the Redis version it is compatible with.
    let (product, version) = match field("valkey_version") {
        Some(version) => ("Valkey", version),
        None => ("Redis", field("redis_version").expect("redis_version")),
    };
    let row = format!("| {product} | {version} |");
    assert!(
        harness::documentation().contains(&row),
        "the documentation's support table has no row {row}"
    );
}
