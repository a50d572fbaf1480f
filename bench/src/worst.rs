//! The worst case of one call, on the module and on the script twin side
//! by side (issues 19 and 23): keys holding up to `size` entries (the
//! twin's cap and the module's default), restored from crafted values
//! (harness payloads for the module, `twin_format` for the twin: a CHECK
//! adds at most one entry per millisecond), and the calls that read the
//! most of them. Server time per call from SLOWLOG (every call logged),
//! its median and its largest; written to bench/results/worst.csv.

use crate::Bench;
use harness::twin_format::{self, TwinLog};
use harness::{log_payload, restore, server_clock_ms, Caller};
use redis::Connection;
use std::path::Path;

/// How a row's key is built: `entries` unit entries 1 ms apart under
/// `window`, the newest `age` ms before the call.
struct Shape {
    entries: usize,
    window: u64,
    age: i64,
}

/// A row: what it shows, the key's shape, the call (module words after
/// the key), whether the call changes the key (restored before each).
struct Case {
    label: &'static str,
    shape: Shape,
    words: &'static [&'static str],
    changes: bool,
    /// The error the call must get (its first word), if refused.
    refusal: Option<&'static str>,
}

const CALLS: usize = 12;

fn cases(size: usize) -> Vec<Case> {
    let live = |window| Shape {
        entries: size,
        window,
        age: 1_000,
    };
    vec![
        Case {
            label: "pause: 60,000 entries expired, CHECK",
            shape: Shape {
                entries: 60_000,
                window: 60_000,
                age: 61_000,
            },
            words: &["60000", "100000"],
            changes: true,
            refusal: None,
        },
        Case {
            label: "all entries expired, CHECK",
            shape: Shape {
                entries: size,
                window: size as u64,
                age: size as i64 + 1_000,
            },
            words: &["1000000", "2000000"],
            changes: true,
            refusal: None,
        },
        Case {
            label: "PEEK 10-min window full at 10",
            shape: live(3_600_000),
            words: &["600000", "10"],
            changes: false,
            refusal: None,
        },
        Case {
            label: "PEEK 30-min window not full",
            shape: live(3_600_000),
            words: &["1800000", "2000000"],
            changes: false,
            refusal: None,
        },
        Case {
            label: "PEEK 1 h window COST 500000 denied",
            shape: live(3_600_000),
            words: &["3600000", "1000000", "COST", "500000"],
            changes: false,
            refusal: None,
        },
        Case {
            label: "CHECK 10-min window full at 10 (denied)",
            shape: live(3_600_000),
            words: &["600000", "10"],
            changes: false,
            refusal: None,
        },
        Case {
            label: "CHECK 1 s and 1 h windows, allowed",
            shape: Shape {
                entries: size - CALLS - 1,
                ..live(3_600_000)
            },
            words: &["1000", "1000", "3600000", "5000000"],
            changes: true,
            refusal: None,
        },
        Case {
            label: "CHECK needing an entry past the cap: refused",
            // The cap: the module's default max-entries, the twin's own.
            shape: Shape {
                entries: 1_000_000,
                ..live(3_600_000)
            },
            words: &["1000", "1000", "3600000", "5000000"],
            changes: false,
            refusal: Some("ERR"),
        },
        Case {
            // A settlement over a full window: its wait found in the log.
            label: "CHARGE 10-min window full at 10 and 1 h window, COST 500000",
            shape: Shape {
                entries: size - CALLS - 1,
                ..live(3_600_000)
            },
            words: &["600000", "10", "3600000", "5000000", "COST", "500000"],
            changes: true,
            refusal: None,
        },
        Case {
            label: "CHARGE needing an entry past the cap: refused",
            shape: Shape {
                entries: 1_000_000,
                ..live(3_600_000)
            },
            words: &["1000", "1000", "3600000", "5000000"],
            changes: false,
            refusal: Some("ERR"),
        },
        Case {
            label: "UNDO COST 600000",
            shape: live(3_600_000),
            words: &["COST", "600000"],
            changes: true,
            refusal: None,
        },
    ]
}

/// Server µs of each call of `command` since the last SLOWLOG RESET.
fn slowlog(con: &mut Connection, command: &str) -> Vec<f64> {
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(10_000)
        .query(con)
        .expect("SLOWLOG GET");
    entries
        .iter()
        .filter_map(|entry| {
            let redis::Value::Array(fields) = entry else {
                return None;
            };
            let usec: i64 = redis::from_redis_value(fields.get(2)?).ok()?;
            let words: Vec<String> = redis::from_redis_value(fields.get(3)?).ok()?;
            words
                .first()
                .filter(|w| w.eq_ignore_ascii_case(command))
                .map(|_| usec as f64)
        })
        .collect()
}

/// One row's (median, largest) µs on a backend: the key built before each
/// call that changes it, once for the others.
fn measure(
    con: &mut Connection,
    caller: &Caller,
    case: &Case,
    build: &dyn Fn(&mut Connection),
) -> (f64, f64) {
    let command = if case.label.starts_with("UNDO") {
        "RATELIMIT.UNDO"
    } else if case.label.starts_with("CHARGE") {
        "RATELIMIT.CHARGE"
    } else if case.label.contains("PEEK") {
        "RATELIMIT.PEEK"
    } else {
        "RATELIMIT.CHECK"
    };
    let mut words = vec![command, "big"];
    words.extend(case.words);
    build(con);
    redis::cmd("SLOWLOG")
        .arg("RESET")
        .query::<()>(con)
        .expect("SLOWLOG RESET");
    for _ in 0..CALLS {
        if case.changes {
            build(con);
        }
        let reply = caller.command(&words).query::<redis::Value>(con);
        let refusal = reply
            .as_ref()
            .err()
            .map(|e| e.code().unwrap_or_default().to_string());
        assert_eq!(
            refusal.as_deref(),
            case.refusal,
            "{}: {words:?}: {reply:?}",
            caller.backend.name()
        );
    }
    // The name the server logs: the command, FCALL or EVALSHA.
    let logged = caller.command(&words).get_packed_command();
    let logged = String::from_utf8_lossy(&logged);
    let name = logged.split("\r\n").nth(2).unwrap_or(command).to_string();
    let mut usec = slowlog(con, &name);
    usec.sort_by(f64::total_cmp);
    assert!(
        !usec.is_empty(),
        "{}: no {name} in SLOWLOG",
        caller.backend.name()
    );
    (usec[usec.len() / 2], usec[usec.len() - 1])
}

/// The module's and the twin's rows (µs median and largest for each of
/// the module, FCALL and EVALSHA), and the refusals of oversized values.
pub fn run(bench: &Bench, size: usize, twin_sha: &str) -> Vec<(String, [(f64, f64); 3])> {
    let mut con = bench.connect();
    crate::measure::reset(&mut con);
    // Every call logged, and kept: a script's own commands are logged too.
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg(0)
        .arg("slowlog-max-len")
        .arg(1_000_000)
        .query::<()>(&mut con)
        .expect("CONFIG SET slowlog-log-slower-than 0 slowlog-max-len 1000000");
    let module = Caller::of(harness::Backend::Module);
    let fcall = Caller::of(harness::Backend::Function);
    let evalsha = Caller::of(harness::Backend::Script).with_sha(twin_sha);
    let mut rows = Vec::new();
    for case in cases(size) {
        let shape = &case.shape;
        let newest = server_clock_ms(&mut con) - shape.age;
        let entries: Vec<(i64, u64)> = (0..shape.entries as i64)
            .map(|i| (newest - shape.entries as i64 + 1 + i, 1))
            .collect();
        let payload = log_payload(&mut con, shape.window, &entries);
        let twin_value = twin_format::canonical(&TwinLog {
            window: shape.window,
            entries: entries.clone(),
            blocked_until: 0,
        });
        let as_module = |con: &mut Connection| {
            redis::cmd("DEL").arg("big").query::<()>(con).expect("DEL");
            restore(con, "big", &payload).expect("RESTORE of a crafted log");
        };
        let as_twin = |con: &mut Connection| {
            redis::cmd("SET")
                .arg("big")
                .arg(&twin_value)
                .arg("PXAT")
                .arg(newest + 10 * shape.window as i64)
                .query::<()>(con)
                .expect("SET of a crafted twin value");
        };
        let results = [
            measure(&mut con, &module, &case, &as_module),
            measure(&mut con, &fcall, &case, &as_twin),
            measure(&mut con, &evalsha, &case, &as_twin),
        ];
        eprintln!(
            "  {} entries; {}: module {:.0}/{:.0} µs, twin FCALL {:.0}/{:.0}, EVALSHA {:.0}/{:.0} (median/largest)",
            shape.entries, case.label, results[0].0, results[0].1, results[1].0, results[1].1, results[2].0, results[2].1
        );
        rows.push((case.label.to_string(), results));
    }
    rows.push(several_keys(&mut con, size, [&module, &fcall, &evalsha]));
    rows.extend(refusals(&mut con, &fcall));
    rows
}

/// The most one call reads: MPEEK over 16 keys of `size` entries, each
/// with 8 windows from a second to an hour (every window's count and
/// wait found in each key).
fn several_keys(
    con: &mut Connection,
    size: usize,
    callers: [&Caller; 3],
) -> (String, [(f64, f64); 3]) {
    const KEYS: usize = 16;
    let windows = [
        "1000", "10000", "60000", "300000", "600000", "1200000", "1800000", "3600000",
    ];
    let newest = server_clock_ms(con) - 1_000;
    let entries: Vec<(i64, u64)> = (0..size as i64)
        .map(|i| (newest - size as i64 + 1 + i, 1))
        .collect();
    let payload = log_payload(con, 3_600_000, &entries);
    let twin_value = twin_format::canonical(&TwinLog {
        window: 3_600_000,
        entries,
        blocked_until: 0,
    });
    let keys: Vec<String> = (0..KEYS).map(|i| format!("many:{i}")).collect();
    let mut words: Vec<&str> = vec!["RATELIMIT.MPEEK", "16"];
    words.extend(keys.iter().map(String::as_str));
    // Each key: 8 windows, each with a max its log passes, so every
    // window's wait is looked for.
    let pairs = windows.iter().flat_map(|window| [*window, "5"]);
    let per_key: Vec<&str> = std::iter::once("8").chain(pairs).collect();
    for _ in 0..KEYS {
        words.extend(&per_key);
    }
    let mut results = [(0.0, 0.0); 3];
    for (caller, result) in callers.into_iter().zip(&mut results) {
        for key in &keys {
            if caller.backend == harness::Backend::Module {
                redis::cmd("DEL").arg(key).query::<()>(con).expect("DEL");
                restore(con, key, &payload).expect("RESTORE");
            } else {
                redis::cmd("SET")
                    .arg(key)
                    .arg(&twin_value)
                    .arg("PXAT")
                    .arg(newest + 36_000_000)
                    .query::<()>(con)
                    .expect("SET");
            }
        }
        redis::cmd("SLOWLOG")
            .arg("RESET")
            .query::<()>(con)
            .expect("SLOWLOG RESET");
        redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query::<()>(con)
            .expect("RESETSTAT");
        for _ in 0..CALLS {
            let reply: redis::Value = caller.command(&words).query(con).expect("MPEEK");
            assert!(
                matches!(&reply, redis::Value::Array(fields) if fields.len() == 5),
                "{reply:?}"
            );
        }
        let logged = caller.command(&words).get_packed_command();
        let name = String::from_utf8_lossy(&logged)
            .split("\r\n")
            .nth(2)
            .unwrap_or_default()
            .to_string();
        let mut usec = slowlog(con, &name);
        usec.sort_by(f64::total_cmp);
        *result = (usec[usec.len() / 2], usec[usec.len() - 1]);
        let reads = crate::measure::calls(&crate::measure::command_stats(con), "getrange");
        eprintln!(
            "    {}: {} GETRANGEs a call",
            caller.backend.name(),
            reads / CALLS as u64
        );
    }
    let label = "MPEEK over 16 keys, 8 windows each";
    eprintln!(
        "  {size} entries a key; {label}: module {:.0}/{:.0} µs, twin FCALL {:.0}/{:.0}, EVALSHA {:.0}/{:.0}",
        results[0].0, results[0].1, results[1].0, results[1].1, results[2].0, results[2].1
    );
    (label.to_string(), results)
}

/// Values the twin refuses in bounded time: 8 MB of varint behind a small
/// value's header, and a paged header that claims 12 million entries.
fn refusals(con: &mut Connection, fcall: &Caller) -> Vec<(String, [(f64, f64); 3])> {
    let mut small = twin_format::small(&TwinLog {
        window: 60_000,
        entries: vec![(server_clock_ms(con), 1)],
        blocked_until: 0,
    });
    small.extend(std::iter::repeat_n(0x80, 8 << 20));
    let mut claims = twin_format::canonical(&TwinLog {
        window: 86_400_000,
        entries: (0..2_000)
            .map(|i| (server_clock_ms(con) - 10_000 + i, 1))
            .collect(),
        blocked_until: 0,
    });
    // The count field (4 bytes at 27): 12,000,000.
    claims[27..31].copy_from_slice(&12_000_000u32.to_le_bytes());
    let mut rows = vec![];
    for (label, value) in [
        ("a crafted 8 MB value: WRONGTYPE", small),
        ("a header claiming 12,000,000 entries: WRONGTYPE", claims),
    ] {
        let case = Case {
            label: "PEEK",
            shape: Shape {
                entries: 0,
                window: 0,
                age: 0,
            },
            words: &["60000", "10"],
            changes: false,
            refusal: Some("WRONGTYPE"),
        };
        let build = |con: &mut Connection| {
            redis::cmd("SET")
                .arg("big")
                .arg(&value)
                .query::<()>(con)
                .expect("SET");
        };
        let twin = measure(con, fcall, &case, &build);
        eprintln!("  {label}: twin FCALL {:.0}/{:.0} µs", twin.0, twin.1);
        rows.push((
            label.to_string(),
            [(f64::NAN, f64::NAN), twin, (f64::NAN, f64::NAN)],
        ));
    }
    rows
}

pub fn write(rows: &[(String, [(f64, f64); 3])], size: usize, dir: &Path) -> std::io::Result<()> {
    let mut csv = String::from(
        "entries,call,module_median_usec,module_max_usec,twin_fcall_median_usec,twin_fcall_max_usec,twin_evalsha_median_usec,twin_evalsha_max_usec\n",
    );
    for (label, results) in rows {
        csv.push_str(&format!("{size},{label}"));
        for (median, max) in results {
            csv.push_str(&format!(",{median:.0},{max:.0}"));
        }
        csv.push('\n');
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("worst.csv"), csv)
}
