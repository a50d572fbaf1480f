//! What is the script twin's own: a server without the module says so,
//! a user without admin rights loads and calls the twin, the two kinds
//! of keys never mix, the EVAL form, README's error tables and the
//! refusals where Lua's doubles cannot be exact.

use harness::{error, run, twin_library, twin_script, Backend, Caller, Server, TWINS};

const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";

/// 2^53, the largest integer below which a double holds every integer.
const EXACT: u64 = 1 << 53;

#[test]
fn a_server_without_the_module_says_so_and_the_twin_answers() {
    let (server, twin) = Backend::Function.start(&[]);
    let mut con = server.connect();
    let missing = error(&mut con, &["RATELIMIT.CHECK", "k", "1000", "5"]);
    assert!(
        missing.starts_with("ERR unknown command 'RATELIMIT.CHECK'"),
        "how a client learns the module is not there: {missing}"
    );
    assert_eq!(twin.check(&mut con, "k", 1000, 5)[..3], [1, 4, 0]);
}

/// the documentation's least-privilege user (harness `USER_RULES`, and
/// `MODULE_RULES` where the module is loaded), on a server with the module
/// and the twin's library (loaded by an administrator):
/// it runs every call of both, in both of the twin's forms, and can load
/// the script form into the cache; it can neither load, replace, delete
/// or flush a function library, nor empty the script cache, nor run
/// anything administrative.
#[test]
fn the_least_privilege_user_runs_everything_and_replaces_nothing() {
    let server = Server::start(&[]);
    let module = Backend::Module.prepare(&server);
    let twin = Backend::Restricted.prepare(&server);
    let mut words = vec!["ACL", "SETUSER", harness::USER];
    words.extend(harness::MODULE_RULES);
    let _: () = run(&mut server.connect(), &words);
    let mut con = twin.connect();
    let script = Caller::of(Backend::Script);
    let sha: String = run(&mut con, &["SCRIPT", "LOAD", &twin_script()]);
    let script = script.with_sha(&sha);
    let calls: &[&[&str]] = &[
        &["RATELIMIT.CHECK", "k", "60000", "5"],
        &["RATELIMIT.PEEK", "k", "60000", "5"],
        &["RATELIMIT.UNDO", "k"],
        &["RATELIMIT.CHECK", "k", "60000", "5", "BLOCK", "1000"],
        &["RATELIMIT.UNBLOCK", "k"],
        &[
            "RATELIMIT.MCHECK",
            "2",
            "a",
            "b",
            "1",
            "60000",
            "5",
            "1",
            "60000",
            "5",
        ],
        &[
            "RATELIMIT.MPEEK",
            "2",
            "a",
            "b",
            "1",
            "60000",
            "5",
            "1",
            "60000",
            "5",
        ],
        &["RATELIMIT.MUNDO", "2", "a", "b"],
        &["RATELIMIT.CHARGE", "k", "60000", "5", "COST", "9"],
        &[
            "RATELIMIT.MCHARGE",
            "2",
            "a",
            "b",
            "1",
            "60000",
            "5",
            "1",
            "60000",
            "5",
        ],
    ];
    for caller in [&module, &twin, &script] {
        for words in calls {
            // Each form on its own keys (the module's and the twin's never mix).
            let name = caller.backend.name().replace(' ', "-");
            let words: Vec<String> = words
                .iter()
                .map(|w| {
                    if ["k", "a", "b"].contains(w) {
                        format!("{name}:{w}")
                    } else {
                        w.to_string()
                    }
                })
                .collect();
            let words: Vec<&str> = words.iter().map(String::as_str).collect();
            let reply = caller.command(&words).query::<redis::Value>(&mut con);
            assert!(
                reply.is_ok(),
                "{}: {words:?}: {reply:?}",
                caller.backend.name()
            );
        }
    }
    let library = twin_library();
    for words in [
        &["FUNCTION", "LOAD", "REPLACE", library.as_str()][..],
        &["FUNCTION", "DELETE", "ratelimit"],
        &["FUNCTION", "FLUSH"],
        &["SCRIPT", "FLUSH"],
        &["MODULE", "LIST"],
        &["CONFIG", "GET", "maxmemory"],
        &["DEBUG", "DIGEST-VALUE", "k"],
        &["FLUSHALL"],
    ] {
        let refused = error(&mut con, words);
        assert!(
            refused.starts_with("NOPERM"),
            "{:?}: {refused}",
            &words[..2]
        );
    }
    // What a user did not replace answers still, for everyone.
    let mut admin = server.connect();
    assert_eq!(twin.check(&mut admin, "after", 1000, 5)[..3], [1, 4, 0]);
    let readme = harness::documentation();
    for rules in [harness::USER_RULES, harness::MODULE_RULES] {
        let recipe =
            format!("ACL SETUSER {} {}", harness::USER, rules.join(" ")).replace("~*", "~rl:*");
        assert!(
            readme.contains(&recipe),
            "the documentation gives the recipe the tests use: {recipe}"
        );
    }
}

/// A user whose ACL lacks TIME is told, in one error, what to grant.
#[test]
fn a_user_without_time_is_told_to_grant_it() {
    let server = Server::start_without_module(&[]);
    let twin = Backend::Function.prepare(&server);
    let mut admin = server.connect();
    let mut words = vec!["ACL", "SETUSER", "notime"];
    words.extend(
        harness::USER_RULES
            .iter()
            .map(|r| if *r == ">app-secret" { ">x" } else { r }),
    );
    words.push("-time");
    let _: () = run(&mut admin, &words);
    let sha: String = run(&mut admin, &["SCRIPT", "LOAD", &twin_script()]);
    let mut con = redis::Client::open(format!("redis://notime:x@127.0.0.1:{}/", server.port))
        .and_then(|c| c.get_connection())
        .expect("a connection as notime");
    let expected = "NOPERM this user may not run TIME, which the script twin needs to read the server's clock: \
                    grant it with ACL SETUSER <user> +time";
    for caller in [twin.clone(), Caller::of(Backend::Script).with_sha(&sha)] {
        for words in [
            &["RATELIMIT.CHECK", "k", "1000", "5"][..],
            &["RATELIMIT.CHECK", "k", "1000", "5", "1", "10"],
            &["RATELIMIT.PEEK", "k", "1000", "5"],
            &["RATELIMIT.MCHECK", "1", "k", "1", "1000", "5"],
        ] {
            assert_eq!(
                caller.error(&mut con, words),
                expected,
                "{}: {words:?}",
                caller.backend.name()
            );
        }
    }
}

#[test]
fn keys_of_the_module_and_of_the_twin_never_mix() {
    let server = Server::start(&[]);
    let module = Backend::Module.prepare(&server);
    let twin = Backend::Function.prepare(&server);
    let script = Backend::Script.prepare(&server);
    let mut con = server.connect();
    module.check(&mut con, "module-key", 60_000, 5);
    twin.check(&mut con, "twin-key", 60_000, 5);
    run::<()>(&mut con, &["SET", "text", "hello"]);
    // A string that starts like the twin's value but is not one.
    run::<()>(&mut con, &["SET", "lookalike", "rl\u{1}not a log at all"]);
    run::<()>(
        &mut con,
        &[
            "SET",
            "blocked-lookalike",
            "rl\u{2}not a blocked log either",
        ],
    );
    run::<()>(&mut con, &["SET", "empty", ""]);
    let before: String = run(&mut con, &["DEBUG", "DIGEST"]);
    for (caller, key) in [
        (&twin, "module-key"),
        (&script, "module-key"),
        (&module, "twin-key"),
        (&twin, "text"),
        (&twin, "lookalike"),
        (&script, "blocked-lookalike"),
        (&script, "empty"),
    ] {
        for words in [
            &["RATELIMIT.CHECK", key, "60000", "5"][..],
            &["RATELIMIT.PEEK", key, "60000", "5"],
            &["RATELIMIT.UNDO", key],
            &["RATELIMIT.UNBLOCK", key],
        ] {
            assert_eq!(
                caller.error(&mut con, words),
                WRONGTYPE,
                "{}: {words:?}",
                caller.backend.name()
            );
        }
    }
    let after: String = run(&mut con, &["DEBUG", "DIGEST"]);
    assert_eq!(after, before, "refused calls change nothing");
}

#[test]
fn the_eval_form_runs_without_a_loaded_script() {
    let server = Server::start_without_module(&[]);
    let mut con = server.connect();
    let script = twin_script();
    assert!(twin_library().starts_with("#!lua name=ratelimit\n"));
    let eval = |con: &mut redis::Connection, command: &str, words: &[&str]| -> redis::Value {
        let mut cmd = redis::cmd(command);
        cmd.arg(&script).arg(1).arg(words);
        cmd.query(con).expect("EVAL")
    };
    let allowed = eval(&mut con, "EVAL", &["k", "check", "1000", "5"]);
    let peeked = eval(&mut con, "EVAL_RO", &["k", "peek", "1000", "5"]);
    let refunded = eval(&mut con, "EVAL", &["k", "undo"]);
    let decision = |value: redis::Value| -> Vec<i64> {
        redis::FromRedisValue::from_redis_value(&value).expect("4 integers")
    };
    assert_eq!(decision(allowed), [1, 4, 0, 1000]);
    assert_eq!(decision(peeked)[..3], [1, 4, 0]);
    assert_eq!(refunded, redis::Value::Int(1));
    let unknown = redis::cmd("EVAL")
        .arg(&script)
        .arg(1)
        .arg("k")
        .arg("CHECK")
        .query::<redis::Value>(&mut con);
    assert_eq!(
        unknown.map_err(|e| e.detail().unwrap_or_default().to_string()),
        Err(
            "unknown operation 'CHECK' (the script twin's operations are check, peek, undo, mcheck, mpeek, mundo, unblock, gcra, charge and mcharge)"
                .into()
        )
    );
}

/// README's tables, rows as (input, replies).
fn table_rows(section: &str) -> Vec<(String, Vec<String>)> {
    section
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

fn readme_section(start: &str) -> String {
    let readme = harness::documentation();
    let rest = readme
        .split(start)
        .nth(1)
        .unwrap_or_else(|| panic!("the documentation has {start}"));
    rest.split("\n## ").next().unwrap_or_default().to_string()
}

/// Every row of README's error table but max-entries (the module's
/// setting), and every row of the twin's own table, word for word from
/// each of the twin's forms.
#[test]
fn the_readme_error_tables_are_what_the_twin_sends() {
    let errors = readme_section("\n## Errors");
    let shared = table_rows(errors.split("\n#").next().unwrap_or_default());
    let own = table_rows(&readme_section("### Refusals of the script twin alone"));
    assert!(!own.is_empty(), "the twin's own table has rows");
    let mut nine_pairs = vec!["RATELIMIT.CHECK", "k"];
    for window in ["1", "2", "3", "4", "5", "6", "7", "8", "9"] {
        nine_pairs.extend([window, "5"]);
    }
    let check = |words: &[&'static str]| -> Vec<&'static str> {
        let mut call = vec!["RATELIMIT.CHECK", "k"];
        call.extend(words);
        call
    };
    let calls: Vec<(&str, Vec<&str>)> = vec![
        ("wrong number of arguments", check(&[])),
        ("bad `window`", check(&["0", "5"])),
        ("bad `max`", check(&["1000", "0"])),
        ("a window without its max", check(&["60000", "5", "1000"])),
        ("a window twice", check(&["1000", "5", "1000", "6"])),
        ("more than 8 pairs", nine_pairs),
        ("bad `COST`", check(&["1000", "5", "COST", "0"])),
        (
            "`COST` above the smallest `max`",
            check(&["60000", "5", "COST", "6"]),
        ),
        ("bad `PRECISION`", check(&["1000", "5", "PRECISION", "0"])),
        ("bad `BLOCK`", check(&["1000", "5", "BLOCK", "0"])),
        (
            "an option without a value, twice, unknown",
            check(&["1000", "5", "BLOCK"]),
        ),
        (
            "an option without a value, twice, unknown",
            check(&["1000", "5", "BLOCK", "1", "BLOCK", "1"]),
        ),
        (
            "an option without a value, twice, unknown",
            check(&["1000", "5", "X", "1"]),
        ),
        (
            "key of another type (and other commands on a limiter key)",
            vec!["RATELIMIT.CHECK", "s", "1000", "5"],
        ),
        ("`max` above 2^53", check(&["1000", "9007199254740993"])),
        (
            "`COST` above 2^53",
            check(&["1000", "9223372036854775807", "COST", "9007199254740993"]),
        ),
        (
            "an operation the script does not know (script form)",
            vec!["RATELIMIT.CHECK"],
        ),
    ];
    for backend in TWINS {
        let (server, twin) = backend.start(&[]);
        let mut con = twin.connect();
        run::<()>(&mut con, &["SET", "s", "text"]);
        for (input, words) in &calls {
            let (_, replies) = shared
                .iter()
                .chain(&own)
                .find(|(row, _)| row == input)
                .unwrap_or_else(|| {
                    panic!("the documentation's error tables have no row {input:?}")
                });
            let got = if *input == "an operation the script does not know (script form)" {
                if backend != Backend::Script {
                    continue;
                }
                unknown_operation(&mut con)
            } else {
                twin.error(&mut con, words)
            };
            assert!(
                replies.contains(&got),
                "{}: {words:?}: {got:?} is not in {replies:?}",
                backend.name()
            );
        }
        let (_, full) = own
            .iter()
            .find(|(row, _)| row.starts_with("a key's recorded cost"))
            .expect("the twin's table has the cost-sum row");
        // One unit kept by a minute's window, then 2^53 that a 1 ms
        // window allows: the key would hold 2^53 + 1.
        assert_eq!(twin.check(&mut con, "sum", 60_000, 10)[0], 1);
        std::thread::sleep(std::time::Duration::from_millis(3));
        let exact = EXACT.to_string();
        let got = twin.error(
            &mut con,
            &["RATELIMIT.CHECK", "sum", "1", &exact, "COST", &exact],
        );
        assert_eq!(vec![got], *full);
        // In MCHECK, as each error about one key, after the key's name;
        // and the key that had room records nothing either.
        // 2^53 units a ms for a fresh key and for `sum`, whose max is given.
        let over_two_keys = |name, sum_max| {
            let exact = exact.as_str();
            vec![name, "2", "room", "sum", "1", "1", exact, "1", "1", sum_max]
        };
        let mut multi = over_two_keys("RATELIMIT.MCHECK", &exact);
        multi.extend(["COST", &exact]);
        let named = full[0].replacen("ERR ", "ERR key 'sum': ", 1);
        assert_eq!(twin.error(&mut con, &multi), named);
        let above = (EXACT + 1).to_string();
        let max_above = over_two_keys("RATELIMIT.MPEEK", &above);
        let got = twin.error(&mut con, &max_above);
        assert!(
            got.starts_with("ERR key 'sum': max above 9007199254740992"),
            "{got}"
        );
        let exists: i64 = run(&mut con, &["EXISTS", "room"]);
        assert_eq!(exists, 0, "a refused call changes no key");
        drop(server);
    }
}

/// The script form with its operation word in capitals.
fn unknown_operation(con: &mut redis::Connection) -> String {
    let mut script = redis::cmd("EVAL");
    script.arg(twin_script()).arg(1).arg("k").arg("UNDO");
    harness::error_line(script.query::<redis::Value>(con), "EVAL with UNDO")
}

/// Up to 2^53 the twin is exact, like the module; above, it refuses
/// what it could not count exactly and changes nothing.
#[test]
fn the_twin_is_exact_up_to_2_53_and_refuses_beyond() {
    for backend in TWINS {
        let (_server, twin) = backend.start(&[]);
        let mut con = twin.connect();
        let exact = EXACT.to_string();
        let half = (EXACT / 2).to_string();
        let reply: Vec<i64> = twin.run(
            &mut con,
            &["RATELIMIT.CHECK", "k", "60000", &exact, "COST", &half],
        );
        assert_eq!(reply, [1, (EXACT / 2) as i64, 0, 60_000]);
        let reply: Vec<i64> = twin.run(
            &mut con,
            &[
                "RATELIMIT.CHECK",
                "k",
                "60000",
                &exact,
                "COST",
                &(EXACT / 2 - 1).to_string(),
            ],
        );
        assert_eq!(reply[..3], [1, 1, 0], "exact to the unit at 2^53");
        let reply: Vec<i64> = twin.run(
            &mut con,
            &["RATELIMIT.CHECK", "k", "60000", &exact, "COST", "2"],
        );
        assert_eq!(reply[..2], [0, 1]);
        let value: Vec<u8> = redis::cmd("GET").arg("k").query(&mut con).expect("GET");
        let refused = twin.error(
            &mut con,
            &["RATELIMIT.CHECK", "k", "60000", "9007199254740993"],
        );
        assert!(refused.contains("above 9007199254740992"), "{refused}");
        let after: Vec<u8> = redis::cmd("GET").arg("k").query(&mut con).expect("GET");
        assert_eq!(after, value, "a refused call changes nothing");
        let refunded: i64 = twin.run(&mut con, &["RATELIMIT.UNDO", "k", "COST", &exact]);
        assert_eq!(refunded, (EXACT - 1) as i64);
    }
}

/// A blocked key's value carries its block (magic `rl\5`, the block's end
/// after the header); an open one has magic `rl\4`, and lifting a block
/// gives back the very bytes the key held before it.
#[test]
fn a_block_is_stored_in_the_value_and_lifted_from_it() {
    for backend in TWINS {
        let (_server, twin) = backend.start(&[]);
        let mut con = twin.connect();
        let get = |con: &mut redis::Connection| -> Vec<u8> {
            redis::cmd("GET").arg("k").query(con).expect("GET")
        };
        for _ in 0..3 {
            assert_eq!(twin.check(&mut con, "k", 60_000, 3)[0], 1);
        }
        let open = get(&mut con);
        assert!(open.starts_with(b"rl\x04"), "{open:?}");
        let denied: Vec<i64> = twin.run(
            &mut con,
            &["RATELIMIT.CHECK", "k", "60000", "3", "BLOCK", "3600000"],
        );
        assert_eq!(denied, [0, 0, 3_600_000, 3_600_000]);
        let blocked = get(&mut con);
        assert!(blocked.starts_with(b"rl\x05"), "{blocked:?}");
        assert_eq!(blocked.len(), open.len() + 6, "6 bytes of block");
        let pttl: i64 = run(&mut con, &["PTTL", "k"]);
        assert!(
            pttl > 3_590_000,
            "the key lives as long as its block: {pttl}"
        );
        let lifted: i64 = twin.run(&mut con, &["RATELIMIT.UNBLOCK", "k"]);
        assert_eq!(lifted, 1);
        assert_eq!(get(&mut con), open, "the bytes from before the block");
        let pttl: i64 = run(&mut con, &["PTTL", "k"]);
        assert!((1..=60_000).contains(&pttl), "the log's own expiry: {pttl}");
        for key in ["k", "missing"] {
            let nothing: i64 = twin.run(&mut con, &["RATELIMIT.UNBLOCK", key]);
            assert_eq!(nothing, 0, "{key}: no block to lift");
        }
        assert_eq!(twin.check(&mut con, "k", 60_000, 3)[..2], [0, 0]);
    }
}

/// Words the module's own parser never sees as the twin does (the server
/// checks a command's arity first; an error reply cannot carry a NUL, CR
/// or LF byte): the twin answers each as the module does.
#[test]
fn odd_words_get_the_modules_answer() {
    let server = Server::start(&[]);
    let module = Backend::Module.prepare(&server);
    let twins = [
        Backend::Function.prepare(&server),
        Backend::Script.prepare(&server),
    ];
    let mut con = server.connect();
    let calls: &[&[&str]] = &[
        &["RATELIMIT.MCHECK", "1", "k", "01"],
        &["RATELIMIT.MCHECK", "1", "k", "1", "1000"],
        &["RATELIMIT.MPEEK", "2", "a", "b", "1"],
        &["RATELIMIT.CHECK", "k", "1000"],
        &["RATELIMIT.UNBLOCK", "k", "extra"],
        &["RATELIMIT.CHECK", "k", "1000", "5", "X\0Y", "1"],
        &["RATELIMIT.CHECK", "k", "1000", "5", "X\r\nY", "1"],
        &["RATELIMIT.CHECK", "k", "10\u{0}00", "5"],
        &["RATELIMIT.CHECK", "k", "1000", "5", "2\0", "x"],
        &[
            "RATELIMIT.MCHECK",
            "2",
            "a\0b",
            "a\0b",
            "1",
            "1000",
            "5",
            "1",
            "1000",
            "5",
        ],
        &[
            "RATELIMIT.MCHECK",
            "2",
            "a\0b",
            "c",
            "1",
            "1000",
            "5",
            "1",
            "1000",
            "0",
        ],
        &["RATELIMIT.UNDO", "k", "COST", "0"],
    ];
    for words in calls {
        let expected = module.error(&mut con, words);
        for twin in &twins {
            assert_eq!(
                twin.error(&mut con, words),
                expected,
                "{}: {words:?}",
                twin.backend.name()
            );
        }
    }
}
