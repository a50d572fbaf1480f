//! Every command and persistence path under valgrind's memcheck (the
//! token bucket's and its drop-in names included): run by
//! `make memcheck`, which sets RATELIMIT_WRAPPER to valgrind. Fails on any
//! invalid read or write, use of uninitialised memory, or block
//! definitely lost by the module.

use harness::{
    bucket_payload, check, every_log_shape, log_payload, restore, run, version_1_payload,
    wait_for_background_saves, Server,
};
use std::thread::sleep;
use std::time::Duration;

#[test]
#[ignore = "slow: run by `make memcheck`, under valgrind"]
fn every_path_is_clean_under_memcheck() {
    let mut server = Server::start_with_module_args(
        &["aliases", "cl.throttle,gcra"],
        &["--appendonly", "yes", "--aof-use-rdb-preamble", "no"],
    );
    let mut con = server.connect();
    for i in 0..300 {
        let key = format!("k{}", i % 20);
        check(&mut con, &key, 600_000, 10);
        run::<Vec<i64>>(
            &mut con,
            &["RATELIMIT.CHECK", &key, "600000", "10", "COST", "3"],
        );
        run::<Vec<i64>>(&mut con, &["RATELIMIT.PEEK", &key, "600000", "10"]);
        if i % 7 == 0 {
            run::<i64>(&mut con, &["RATELIMIT.UNDO", &key, "COST", "2"]);
        }
    }
    every_log_shape(&mut con);
    charges(&mut con);
    redis::cmd("RESTORE")
        .arg("v1")
        .arg(0)
        .arg(version_1_payload("long"))
        .query::<()>(&mut con)
        .expect("RESTORE of a version-1 payload");
    check(&mut con, "empty-me", 600_000, 10);
    run::<i64>(&mut con, &["RATELIMIT.UNDO", "empty-me", "COST", "5"]);
    check(&mut con, "short", 100, 10);
    // A denied CHECK that registers a longer window (a WIDEN in the AOF),
    // and a payload the loader refuses for what it holds (logged).
    check(&mut con, "widened", 1000, 1);
    check(&mut con, "widened", 600_000, 1);
    let refused = log_payload(&mut con, 600_000, &[(0, 1), (5, 1)]);
    assert!(restore(&mut con, "refused", &refused).is_err());
    run::<i64>(&mut con, &["COPY", "k1", "copy"]);
    let dump: Vec<u8> = redis::cmd("DUMP").arg("k2").query(&mut con).expect("DUMP");
    redis::cmd("RESTORE")
        .arg("restored")
        .arg(0)
        .arg(&dump)
        .query::<()>(&mut con)
        .expect("RESTORE");
    run::<String>(&mut con, &["DEBUG", "SET-SKIP-CHECKSUM-VALIDATION", "1"]);
    for cut in [12, 20, dump.len() - 11] {
        let damaged = [&dump[..cut], &dump[dump.len() - 10..]].concat();
        let _ = redis::cmd("RESTORE")
            .arg("bad")
            .arg(0)
            .arg(&damaged)
            .arg("REPLACE")
            .query::<()>(&mut con);
    }
    token_buckets(&mut con);
    run::<()>(&mut con, &["SET", "s", "1"]);
    let _ = redis::cmd("RATELIMIT.CHECK")
        .arg("s")
        .arg(1000)
        .arg(5)
        .query::<redis::Value>(&mut con);
    let _ = redis::cmd("RATELIMIT.CHECK")
        .arg("k1")
        .arg(0)
        .arg(5)
        .query::<redis::Value>(&mut con);
    run::<String>(&mut con, &["INFO", "ratelimit"]);
    run::<redis::Value>(&mut con, &["COMMAND", "DOCS", "RATELIMIT.CHECK"]);
    run::<()>(&mut con, &["CONFIG", "SET", "ratelimit.max-entries", "500"]);
    run::<String>(&mut con, &["DEBUG", "RELOAD"]);
    run::<String>(&mut con, &["BGREWRITEAOF"]);
    wait_for_background_saves(&mut con);
    run::<String>(&mut con, &["DEBUG", "LOADAOF"]);
    sleep(Duration::from_millis(300)); // "short" expires
    let expired: i64 = run(&mut con, &["EXISTS", "short"]);
    assert_eq!(expired, 0);
    run::<i64>(&mut con, &["DEL", "k3", "copy"]);
    run::<()>(&mut con, &["FLUSHALL"]);
    server.stop();

    let mut problems = Vec::new();
    let mut logs = 0;
    for entry in std::fs::read_dir(&server.dir)
        .expect("server dir")
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("valgrind") {
            continue;
        }
        logs += 1;
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        problems.extend(problems_in(&text));
    }
    assert!(
        logs > 0,
        "no valgrind log in {}: is RATELIMIT_WRAPPER set?",
        server.dir.display()
    );
    assert!(
        problems.is_empty(),
        "memcheck found:\n{}",
        problems.join("\n---\n")
    );
    eprintln!("memcheck: {logs} valgrind log(s), no invalid access, nothing definitely lost by the module");
}

/// Settlements (CHARGE, MCHARGE): over the limit, on a blocked key, with
/// PRECISION, refused for an overflow, a key of another type and a full
/// log (the setting put back after).
fn charges(con: &mut redis::Connection) {
    for i in 0..60 {
        let key = format!("c{}", i % 6);
        run::<Vec<i64>>(
            con,
            &[
                "RATELIMIT.CHARGE",
                &key,
                "600000",
                "10",
                "1000",
                "3",
                "COST",
                "4",
            ],
        );
        run::<redis::Value>(
            con,
            &[
                "RATELIMIT.MCHARGE",
                "2",
                &key,
                "c-all",
                "1",
                "600000",
                "10",
                "1",
                "600000",
                "500",
                "PRECISION",
                "50",
            ],
        );
    }
    check(con, "c-blocked", 600_000, 1);
    run::<Vec<i64>>(
        con,
        &[
            "RATELIMIT.CHECK",
            "c-blocked",
            "600000",
            "1",
            "BLOCK",
            "600000",
        ],
    );
    run::<Vec<i64>>(con, &["RATELIMIT.CHARGE", "c-blocked", "600000", "1"]);
    let max = "9223372036854775807";
    run::<Vec<i64>>(
        con,
        &["RATELIMIT.CHARGE", "c-big", "600000", "1", "COST", max],
    );
    for words in [
        &["RATELIMIT.CHARGE", "c-big", "600000", "1"][..],
        &[
            "RATELIMIT.MCHARGE",
            "2",
            "c0",
            "c-big",
            "1",
            "1000",
            "1",
            "1",
            "1000",
            "1",
        ],
        &["RATELIMIT.CHARGE", "c0", "1000", "1", "BLOCK", "5"],
    ] {
        let _ = redis::cmd(words[0])
            .arg(&words[1..])
            .query::<redis::Value>(con);
    }
    run::<()>(con, &["CONFIG", "SET", "ratelimit.max-entries", "1"]);
    let _ = redis::cmd("RATELIMIT.MCHARGE")
        .arg(&["2", "c-all", "c1", "1", "600000", "9", "1", "600000", "9"])
        .query::<redis::Value>(con);
    run::<()>(con, &["CONFIG", "SET", "ratelimit.max-entries", "1000000"]);
}

/// Token buckets in every spelling, allowed, limited and asked, copied,
/// restored, and a payload the loader refuses.
fn token_buckets(con: &mut redis::Connection) {
    for i in 0..40 {
        let key = format!("b{}", i % 5);
        for words in [
            &["RATELIMIT.GCRA", &key, "3", "30", "60", "TOKENS", "2", "MS"][..],
            &["CL.THROTTLE", &key, "3", "30", "60"],
            &["GCRA", &key, "3", "30", "0.5", "TOKENS", "0"],
        ] {
            run::<Vec<i64>>(con, words);
        }
    }
    run::<i64>(con, &["COPY", "b1", "b-copy"]);
    let dump: Vec<u8> = redis::cmd("DUMP").arg("b2").query(con).expect("DUMP");
    assert_eq!(restore(con, "b-restored", &dump).expect("RESTORE"), "OK");
    let refused = bucket_payload(con, 0, 60_000, 1);
    assert!(restore(con, "b-refused", &refused).is_err());
    let _ = redis::cmd("RATELIMIT.GCRA")
        .arg("k1")
        .arg(1)
        .arg(1)
        .arg(1)
        .query::<redis::Value>(con);
}

/// Valgrind's reports of invalid accesses anywhere, and of blocks
/// definitely lost whose allocation stack passes through the module.
fn problems_in(log: &str) -> Vec<String> {
    // Lines read "==PID== text"; a report is a run of lines between blanks.
    let lines: Vec<&str> = log
        .lines()
        .map(|line| line.splitn(3, "==").nth(2).unwrap_or(line).trim())
        .collect();
    lines
        .split(|line| line.is_empty())
        .map(|report| report.join("\n"))
        .filter(|report| {
            let invalid = [
                "Invalid read",
                "Invalid write",
                "uninitialised",
                "Invalid free",
                "Mismatched free",
            ]
            .iter()
            .any(|kind| report.starts_with(kind));
            let lost_by_us = report.contains("definitely lost in loss record")
                && report.contains("redis_ratelimit");
            invalid || lost_by_us
        })
        .collect()
}
