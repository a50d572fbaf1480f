//! Bad input of every kind gets a clear error, changes nothing and leaves
//! the server up; corrupt payloads are refused; under maxmemory, writes
//! are refused the standard way while reads go on.

use harness::{check, digest, error, restore, run, Server};

const WINDOW: &str = "ERR window must be an integer from 1 to 31536000000 (milliseconds)";
const MAX: &str = "ERR max must be an integer from 1 to 9223372036854775807";
const COST: &str = "ERR COST must be a positive integer";
const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";

const NINE_WINDOWS: [&str; 9] = ["1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// Redis names the command in lower case, as it names its own.
fn arity(name: &str) -> String {
    format!(
        "ERR wrong number of arguments for '{}' command",
        name.to_lowercase()
    )
}

#[test]
fn every_malformed_call_is_refused_and_changes_nothing() {
    let server = Server::start(&[]);
    let mut con = server.connect();
    check(&mut con, "k", 60_000, 5);
    run::<()>(&mut con, &["SET", "s", "text"]);
    let (before, string_before) = (digest(&mut con, "k"), digest(&mut con, "s"));
    let never = |cost: &str, max: &str| {
        format!("ERR COST {cost} is above max {max}: such a request could never be allowed")
    };
    let unknown = |name: &str| {
        format!("ERR unknown option '{name}' (the options are COST n, PRECISION p and BLOCK ms)")
    };
    let mut cases: Vec<(Vec<&str>, String)> = Vec::new();
    for command in ["RATELIMIT.CHECK", "RATELIMIT.PEEK"] {
        cases.push((vec![command], arity(command)));
        cases.push((vec![command, "k"], arity(command)));
        cases.push((vec![command, "k", "60000"], arity(command)));
        for bad in [
            "abc",
            "0",
            "-1",
            "1.5",
            "",
            "9223372036854775808",
            "-9223372036854775809",
            "31536000001",
            "+5",
            "05",
            " 5",
            "1e3",
        ] {
            cases.push((vec![command, "k", bad, "5"], WINDOW.into()));
        }
        for bad in [
            "x",
            "0",
            "-5",
            "2.0",
            "",
            "9223372036854775808",
            "99999999999999999999",
        ] {
            cases.push((vec![command, "k", "60000", bad], MAX.into()));
        }
        for bad in ["0", "-1", "x", "", "1.0", "9223372036854775808"] {
            cases.push((vec![command, "k", "60000", "5", "COST", bad], COST.into()));
        }
        cases.push((
            vec![command, "k", "60000", "5", "COST", "6"],
            never("6", "5"),
        ));
        cases.push((
            vec![command, "k", "60000", "5", "COST", "9223372036854775807"],
            never("9223372036854775807", "5"),
        ));
        cases.push((
            vec![command, "k", "60000", "5", "COST"],
            "ERR syntax error: COST needs a value".into(),
        ));
        cases.push((
            vec![command, "k", "60000", "5", "COST", "1", "COST", "2"],
            "ERR COST given more than once".into(),
        ));
        cases.push((
            vec![command, "k", "60000", "5", "BURST", "1"],
            unknown("BURST"),
        ));
        cases.push((vec![command, "k", "60000", "5", ""], unknown("")));
        cases.push((
            vec![command, "k", "60000", "5", "1000"],
            "ERR syntax error: window 1000 has no max".into(),
        ));
        cases.push((vec![command, "k", "60000", "5", "1000", "x"], MAX.into()));
        cases.push((
            vec![command, "k", "60000", "5", "60000", "10"],
            "ERR window 60000 is given twice".into(),
        ));
        cases.push((
            vec![command, "k", "60000", "50", "1000", "5", "COST", "6"],
            never("6", "5"),
        ));
        for bad in ["0", "x", "1001", "-1"] {
            cases.push((
                vec![command, "k", "60000", "5", "1000", "5", "PRECISION", bad],
                "ERR PRECISION must be an integer from 1 to 1000 (the shortest window)".into(),
            ));
        }
        cases.push((
            vec![command, "k", "60000", "5", "PRECISION"],
            "ERR syntax error: PRECISION needs a value".into(),
        ));
        let mut nine = vec![command, "k"];
        for window in &NINE_WINDOWS {
            nine.extend([*window, "5"]);
        }
        cases.push((nine, "ERR at most 8 window/max pairs".into()));
        cases.push((vec![command, "s", "60000", "5"], WRONGTYPE.into()));
    }
    // CHARGE reads CHECK's words but takes any COST and no BLOCK.
    let charge_unknown = |name: &str| {
        format!("ERR unknown option '{name}' (the options are COST n and PRECISION p)")
    };
    for command in ["RATELIMIT.CHARGE"] {
        cases.push((vec![command], arity(command)));
        cases.push((vec![command, "k", "60000"], arity(command)));
        cases.push((vec![command, "k", "0", "5"], WINDOW.into()));
        cases.push((vec![command, "k", "60000", "-5"], MAX.into()));
        for bad in ["0", "-1", "x", "9223372036854775808"] {
            cases.push((vec![command, "k", "60000", "5", "COST", bad], COST.into()));
        }
        cases.push((
            vec![command, "k", "60000", "5", "BLOCK", "1000"],
            charge_unknown("BLOCK"),
        ));
        cases.push((
            vec![command, "k", "60000", "5", "1000", "5", "PRECISION", "1001"],
            "ERR PRECISION must be an integer from 1 to 1000 (the shortest window)".into(),
        ));
        cases.push((vec![command, "s", "60000", "5"], WRONGTYPE.into()));
    }
    cases.push((
        vec![
            "RATELIMIT.MCHARGE",
            "2",
            "k",
            "s",
            "1",
            "60000",
            "5",
            "1",
            "60000",
            "5",
        ],
        WRONGTYPE.into(),
    ));
    cases.push((
        vec![
            "RATELIMIT.MCHARGE",
            "1",
            "k",
            "1",
            "60000",
            "5",
            "BLOCK",
            "5",
        ],
        charge_unknown("BLOCK"),
    ));
    cases.push((vec!["RATELIMIT.UNDO"], arity("RATELIMIT.UNDO")));
    cases.push((
        vec!["RATELIMIT.UNDO", "k", "COST"],
        "ERR syntax error: COST needs a value".into(),
    ));
    cases.push((vec!["RATELIMIT.UNDO", "k", "COST", "0"], COST.into()));
    cases.push((vec!["RATELIMIT.UNDO", "k", "COST", "-3"], COST.into()));
    cases.push((
        vec!["RATELIMIT.UNDO", "k", "NOW"],
        "ERR unknown option 'NOW' (the options are COST n)".into(),
    ));
    cases.push((vec!["RATELIMIT.UNDO", "s"], WRONGTYPE.into()));
    cases.push((vec!["GET", "k"], WRONGTYPE.into()));
    cases.push((vec!["APPEND", "k", "x"], WRONGTYPE.into()));
    cases.push((
        vec!["RATELIMIT.RECORD", "k", "1", "1"],
        arity("RATELIMIT.RECORD"),
    ));
    cases.push((
        vec!["RATELIMIT.RECORD", "k", "1700000000000", "1000", "1"],
        "ERR ratelimit.record is internal: it only runs from the replication link or the AOF"
            .into(),
    ));
    assert!(cases.len() >= 40, "{} cases", cases.len());
    for (words, expected) in &cases {
        let got = error(&mut con, words);
        assert_eq!(&got, expected, "{words:?}");
        assert_eq!(digest(&mut con, "k"), before, "{words:?} changed the log");
        assert_eq!(
            digest(&mut con, "s"),
            string_before,
            "{words:?} changed the string"
        );
    }
    let pong: String = run(&mut con, &["PING"]);
    assert_eq!(pong, "PONG");
    eprintln!("{} malformed calls refused", cases.len());
}

#[test]
fn corrupt_payloads_are_refused_and_the_server_stays_up() {
    let server = Server::start(&[]);
    let mut con = server.connect();
    for _ in 0..20 {
        check(&mut con, "k", 60_000, 100);
    }
    run::<Vec<i64>>(
        &mut con,
        &["RATELIMIT.CHECK", "k", "60000", "100", "COST", "30"],
    );
    let dump: Vec<u8> = redis::cmd("DUMP").arg("k").query(&mut con).expect("DUMP");

    // Redis's own checksum refuses every truncation and bit flip.
    for len in 0..dump.len() {
        assert!(
            restore(&mut con, "t", &dump[..len]).is_err(),
            "truncated to {len}"
        );
    }
    for bit in 0..dump.len() * 8 {
        let mut flipped = dump.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        assert!(
            restore(&mut con, "f", &flipped).is_err(),
            "bit {bit} flipped"
        );
    }

    // Past the checksum, the module's own decoding must hold: each cut or
    // flipped payload is either refused or (when the damage still spells a
    // well-formed log, as Redis's compressed strings sometimes do) loads as
    // a log that answers, digests and empties like any other.
    run::<String>(&mut con, &["DEBUG", "SET-SKIP-CHECKSUM-VALIDATION", "1"]);
    let body = dump.len() - 10; // the RDB version and CRC trail the value
    let mut damaged: Vec<Vec<u8>> = (0..body)
        .map(|len| [&dump[..len], &dump[body..]].concat())
        .collect();
    for bit in 0..body * 8 {
        let mut flipped = dump.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        damaged.push(flipped);
    }
    let mut accepted = 0;
    for payload in &damaged {
        if restore(&mut con, "d", payload).is_ok() {
            accepted += 1;
            let peek: Vec<i64> = run(&mut con, &["RATELIMIT.PEEK", "d", "60000", "100"]);
            assert_eq!(peek.len(), 4);
            digest(&mut con, "d");
            let _: i64 = run(&mut con, &["RATELIMIT.UNDO", "d", "COST", "1000000"]);
            let exists: i64 = run(&mut con, &["EXISTS", "d"]);
            assert_eq!(exists, 0, "a refund of everything empties the log");
        }
    }
    eprintln!(
        "{accepted} of {} damaged payloads still decode to a well-formed log",
        damaged.len()
    );
    run::<String>(&mut con, &["DEBUG", "RELOAD"]);
    let pong: String = run(&mut con, &["PING"]);
    assert_eq!(pong, "PONG");
}

#[test]
fn at_maxmemory_check_undo_and_charge_are_refused_and_peek_answers() {
    let server = Server::start(&["--maxmemory-policy", "noeviction"]);
    let mut con = server.connect();
    check(&mut con, "k", 60_000, 5);
    let before = digest(&mut con, "k");
    run::<()>(&mut con, &["CONFIG", "SET", "maxmemory", "1"]);
    let refused = error(&mut con, &["RATELIMIT.CHECK", "k", "60000", "5"]);
    assert!(refused.starts_with("OOM command not allowed"), "{refused}");
    let refused = error(&mut con, &["RATELIMIT.CHECK", "new", "60000", "5"]);
    assert!(refused.starts_with("OOM"), "{refused}");
    let refused = error(&mut con, &["RATELIMIT.UNDO", "k"]);
    assert!(refused.starts_with("OOM"), "{refused}");
    // `deny-oom` as CHECK: a settlement too is refused, not recorded.
    let refused = error(&mut con, &["RATELIMIT.CHARGE", "k", "60000", "5"]);
    assert!(refused.starts_with("OOM"), "{refused}");
    let refused = error(
        &mut con,
        &["RATELIMIT.MCHARGE", "1", "k", "1", "60000", "5"],
    );
    assert!(refused.starts_with("OOM"), "{refused}");
    let peek: Vec<i64> = run(&mut con, &["RATELIMIT.PEEK", "k", "60000", "5"]);
    assert_eq!(peek[..2], [1, 4]);
    assert_eq!(digest(&mut con, "k"), before);
    run::<()>(&mut con, &["CONFIG", "SET", "maxmemory", "0"]);
    assert_eq!(check(&mut con, "k", 60_000, 5)[..2], [1, 3]);
}

/// Every row of the documentation's error table, against what the server sends:
/// a call for each row, whose reply must be one of the row's replies,
/// word for word.
#[test]
fn the_readme_error_table_is_what_the_server_sends() {
    let readme = harness::documentation();
    let table = readme
        .split("\n## Errors")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("the documentation has an error table");
    let rows: Vec<(&str, Vec<&str>)> = table
        .lines()
        .filter(|line| line.starts_with("| ") && !line.starts_with("| input"))
        .map(|line| {
            let cells: Vec<&str> = line.split(" | ").collect();
            let replies = cells[1].split('`').skip(1).step_by(2).collect();
            (cells[0].trim_start_matches("| "), replies)
        })
        .collect();
    let server = Server::start(&[]);
    let mut con = server.connect();
    run::<()>(&mut con, &["SET", "s", "text"]);
    // A key that holds 2^63 - 1 units: a charge of one more is refused.
    run::<Vec<i64>>(
        &mut con,
        &[
            "RATELIMIT.CHARGE",
            "full63",
            "60000",
            "5",
            "COST",
            "9223372036854775807",
        ],
    );
    let mut nine_pairs = vec!["RATELIMIT.CHECK", "k"];
    for window in &NINE_WINDOWS {
        nine_pairs.extend([*window, "5"]);
    }
    let calls: Vec<(&str, Vec<&str>)> = vec![
        ("wrong number of arguments", vec!["RATELIMIT.CHECK", "k"]),
        ("bad `window`", vec!["RATELIMIT.CHECK", "k", "0", "5"]),
        ("bad `max`", vec!["RATELIMIT.CHECK", "k", "1000", "0"]),
        (
            "a window without its max",
            vec!["RATELIMIT.CHECK", "k", "60000", "5", "1000"],
        ),
        (
            "a window twice",
            vec!["RATELIMIT.CHECK", "k", "1000", "5", "1000", "6"],
        ),
        ("more than 8 pairs", nine_pairs),
        (
            "bad `COST`",
            vec!["RATELIMIT.CHECK", "k", "1000", "5", "COST", "0"],
        ),
        (
            "`COST` above the smallest `max`",
            vec!["RATELIMIT.CHECK", "k", "60000", "5", "COST", "6"],
        ),
        (
            "bad `PRECISION`",
            vec!["RATELIMIT.CHECK", "k", "1000", "5", "PRECISION", "0"],
        ),
        (
            "bad `BLOCK`",
            vec!["RATELIMIT.CHECK", "k", "1000", "5", "BLOCK", "0"],
        ),
        (
            "an option without a value, twice, unknown",
            vec!["RATELIMIT.CHECK", "k", "1000", "5", "COST"],
        ),
        (
            "an option without a value, twice, unknown",
            vec![
                "RATELIMIT.CHECK",
                "k",
                "1000",
                "5",
                "COST",
                "1",
                "COST",
                "1",
            ],
        ),
        (
            "an option without a value, twice, unknown",
            vec!["RATELIMIT.CHECK", "k", "1000", "5", "X", "1"],
        ),
        (
            "an option without a value, twice, unknown",
            vec!["RATELIMIT.CHARGE", "k", "1000", "5", "X", "1"],
        ),
        (
            "CHARGE, MCHARGE: the key would hold more than 2^63 - 1 units of cost (in MCHARGE, after `key '<key>': `)",
            vec!["RATELIMIT.CHARGE", "full63", "60000", "5"],
        ),
        (
            "MCHECK, MPEEK, MUNDO: bad `numkeys`",
            vec!["RATELIMIT.MCHECK", "0", "a", "1", "10", "1"],
        ),
        (
            "a key given twice in one call",
            vec!["RATELIMIT.MUNDO", "2", "a", "a"],
        ),
        (
            "bad `npairs`",
            vec![
                "RATELIMIT.MPEEK",
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
            "key of another type (and other commands on a limiter key)",
            vec!["RATELIMIT.CHECK", "s", "1000", "5"],
        ),
    ];
    for (input, words) in &calls {
        let (_, replies) = rows
            .iter()
            .find(|(row, _)| row == input)
            .unwrap_or_else(|| panic!("the documentation's error table has no row {input:?}"));
        let got = error(&mut con, words);
        assert!(
            replies.contains(&got.as_str()),
            "{words:?}: {got:?} is not in {replies:?}"
        );
    }
    // The full-log row, shown with the default setting, on a key made full
    // under a setting of 1.
    let (_, full) = rows
        .iter()
        .find(|(row, _)| row.starts_with("the key's log already holds"))
        .expect("the documentation's error table has the full-log row");
    run::<()>(&mut con, &["CONFIG", "SET", "ratelimit.max-entries", "1"]);
    check(&mut con, "full", 60_000, 100);
    std::thread::sleep(std::time::Duration::from_millis(2));
    let got = error(&mut con, &["RATELIMIT.CHECK", "full", "60000", "100"]);
    assert_eq!(vec![got.replace("(1)", "(1000000)").as_str()], *full);
    let covered: std::collections::HashSet<&str> = calls.iter().map(|(input, _)| *input).collect();
    for (row, _) in &rows {
        assert!(
            covered.contains(row) || row.starts_with("the key's log already holds"),
            "the documentation's error row {row:?} has no call here"
        );
    }
}
