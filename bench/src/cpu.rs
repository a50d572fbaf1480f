//! Instructions per call, whole server, AOF on (issue 23's CPU aim, and
//! issue 26's for the token bucket): redis-server under valgrind's
//! callgrind, each approach on its own 1,000 keys, 9 calls a key to warm
//! them, then the 10th call of each key counted between `callgrind_control
//! --zero` and `--dump`, on one connection; every call allowed, but for
//! the token buckets' "limited" rows, whose burst of 4 the warm-up spent.
//! The token bucket (RATELIMIT.GCRA) stands beside a GCRA script written
//! the way go-redis/redis_rate documents its algorithm
//! (`bench/lua/gcra_float.lua`) and redis-cell's CL.THROTTLE when its
//! module is given (`make bench EXTRA_MODULE=.../libredis_cell.so
//! EXTRA_COMMAND="CL.THROTTLE k:__rand_int__ 15 30 60"`, built from its
//! own source, which this repository does not hold; its rows are left
//! out, with a note, without it). And each approach's MEMORY USAGE of one
//! key (the token buckets' keys named alike, `gcra:0`, `rate:0`,
//! `cell:0`). Instruction counts are steady where timings on this shared
//! machine are not. Issue 27's settlements stand beside one CHECK: a
//! CHARGE alone, and "reserve and settle", a request that reserves its
//! estimate (CHECK COST estimate) and settles the rest of its actual cost
//! after its response (CHARGE COST actual - estimate, or UNDO COST
//! estimate - actual), two commands counted as one request. Written to bench/results/cpu.csv.

use crate::approaches::{self, client_clock_ms};
use harness::{twin_library, twin_script, Server};
use redis::Connection;
use std::path::Path;
use std::process::Command;

const KEYS: usize = 1_000;
const WARM: usize = 9;

/// The sorted-set script, the sliding-window counter and the GCRA
/// script, loaded; their SHA1s.
fn load_scripts(con: &mut Connection) -> Scripts {
    let load = |con: &mut Connection, script: &str| -> String {
        redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(script)
            .query(con)
            .expect("SCRIPT LOAD")
    };
    Scripts {
        log: load(con, approaches::LUA_SLIDING_LOG),
        counter: load(con, include_str!("../lua/sliding_window_counter.lua")),
        gcra: load(con, include_str!("../lua/gcra_float.lua")),
    }
}

struct Scripts {
    log: String,
    counter: String,
    gcra: String,
}

/// A token bucket's limit in redis-cell's words (`max_burst count
/// period`): 30 per minute, bursts of 16 (the warm-up's 9 calls and the
/// counted one fit), or bursts of 4 at one an hour (they do not:
/// "limited", even when a pass under callgrind takes seconds, which a
/// bucket of 30 a minute would refill).
const ROOMY: [&str; 3] = ["15", "30", "60"];
const TIGHT: [&str; 3] = ["3", "1", "3600"];

/// A token bucket approach's call on key `i`: `words` then the limit.
fn bucket_call(words: &[&str], key: String, limit: [&str; 3]) -> redis::Cmd {
    let mut cmd = redis::cmd(words[0]);
    cmd.arg(&words[1..]).arg(key).arg(&limit[..]);
    cmd
}

/// The GCRA script's call: redis_rate's Limit{Rate: 30, Burst: max_burst +
/// 1, Period: 60 s}, cost 1.
fn script_call(sha: &str, key: String, limit: [&str; 3]) -> redis::Cmd {
    let burst = limit[0].parse::<u64>().map_or(1, |b| b + 1);
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(sha)
        .arg(1)
        .arg(key)
        .arg(burst)
        .arg(limit[1])
        .arg(limit[2])
        .arg(1);
    cmd
}

/// An approach's call on key number `i`.
type Call = Box<dyn Fn(usize) -> redis::Cmd>;

/// A request's calls on key number `i`: one command for most approaches,
/// two for "reserve and settle".
type Request = Vec<Call>;

/// The token buckets' rows: the module's, the GCRA script's and, when
/// loaded, redis-cell's, each allowed and limited.
fn bucket_approaches(gcra_sha: &str, twin_sha: &str, with_cell: bool) -> Vec<(&'static str, Call)> {
    let sha = gcra_sha.to_string();
    let twin = twin_sha.to_string();
    let twin_script = move |prefix: &'static str, limit: [&'static str; 3]| -> Call {
        let sha = twin.clone();
        Box::new(move |i| {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(&sha)
                .arg(1)
                .arg(format!("{prefix}:{i}"))
                .arg("gcra")
                .arg(&limit[..]);
            cmd
        })
    };
    let script = move |prefix: &'static str, limit| -> Call {
        let sha = sha.clone();
        Box::new(move |i| script_call(&sha, format!("{prefix}:{i}"), limit))
    };
    let command = |name: &'static str, prefix: &'static str, limit| -> Call {
        Box::new(move |i| bucket_call(&[name], format!("{prefix}:{i}"), limit))
    };
    let mut rows = vec![
        ("RATELIMIT.GCRA", command("RATELIMIT.GCRA", "gcra", ROOMY)),
        (
            "RATELIMIT.GCRA, limited",
            command("RATELIMIT.GCRA", "gcrl", TIGHT),
        ),
        (
            "GCRA script (redis_rate's algorithm, EVALSHA)",
            script("rate", ROOMY),
        ),
        (
            "GCRA script (redis_rate's algorithm, EVALSHA), limited",
            script("ratl", TIGHT),
        ),
        (
            "twin, FCALL ratelimit_gcra",
            Box::new(|i| bucket_call(&["FCALL", "ratelimit_gcra", "1"], format!("tgf:{i}"), ROOMY)),
        ),
        (
            "twin, FCALL ratelimit_gcra, limited",
            Box::new(|i| bucket_call(&["FCALL", "ratelimit_gcra", "1"], format!("tgl:{i}"), TIGHT)),
        ),
        ("twin, EVALSHA gcra", twin_script("tge", ROOMY)),
        ("twin, EVALSHA gcra, limited", twin_script("tgk", TIGHT)),
    ];
    if with_cell {
        rows.push((
            "redis-cell CL.THROTTLE",
            command("CL.THROTTLE", "cell", ROOMY),
        ));
        rows.push((
            "redis-cell CL.THROTTLE, limited",
            command("CL.THROTTLE", "celk", TIGHT),
        ));
    }
    rows
}

/// Each approach's name and its call on key number `i`.
fn approaches(twin_sha: &str, scripts: &Scripts) -> Vec<(&'static str, Call)> {
    let (twin_sha, log_sha, counter_sha) = (
        twin_sha.to_string(),
        scripts.log.clone(),
        scripts.counter.clone(),
    );
    let window = 60_000u64;
    vec![
        (
            "INCR",
            Box::new(|i| redis::cmd("INCR").arg(format!("incr:{i}")).clone()),
        ),
        (
            "RATELIMIT.CHECK",
            Box::new(move |i| {
                redis::cmd("RATELIMIT.CHECK")
                    .arg(format!("module:{i}"))
                    .arg(window)
                    .arg(100)
                    .clone()
            }),
        ),
        (
            "twin, FCALL ratelimit_check",
            Box::new(move |i| {
                redis::cmd("FCALL")
                    .arg("ratelimit_check")
                    .arg(1)
                    .arg(format!("fcall:{i}"))
                    .arg(window)
                    .arg(100)
                    .clone()
            }),
        ),
        (
            "twin, EVALSHA (the packages' form)",
            Box::new(move |i| {
                redis::cmd("EVALSHA")
                    .arg(&twin_sha)
                    .arg(1)
                    .arg(format!("evalsha:{i}"))
                    .arg("check")
                    .arg(window)
                    .arg(100)
                    .clone()
            }),
        ),
        (
            "sorted-set log script (EVALSHA)",
            Box::new(move |i| {
                redis::cmd("EVALSHA")
                    .arg(&log_sha)
                    .arg(1)
                    .arg(format!("zset:{i}"))
                    .arg(window)
                    .arg(100)
                    .clone()
            }),
        ),
        (
            "sliding-window counter script (upstash's algorithm, EVALSHA)",
            Box::new(move |i| {
                let now = client_clock_ms();
                let current = now as u64 / window;
                redis::cmd("EVALSHA")
                    .arg(&counter_sha)
                    .arg(2)
                    .arg(format!("{{counter:{i}}}:{current}"))
                    .arg(format!("{{counter:{i}}}:{}", current - 1))
                    .arg(100)
                    .arg(now)
                    .arg(window)
                    .clone()
            }),
        ),
    ]
}

fn pipeline(con: &mut Connection, request: &[Call]) {
    let mut pipe = redis::pipe();
    for i in 0..KEYS {
        for call in request {
            pipe.add_command(call(i)).ignore();
        }
    }
    pipe.query::<()>(con).expect("a pipeline of calls");
}

/// A token budget of 10,000 a minute: a reservation alone (CHECK COST
/// 100, the same request never settled), a CHARGE alone (a settlement of
/// 20 units), and a request that reserves an estimate of 100 with CHECK
/// and settles its actual cost: 120 with CHARGE COST 20, or 80 with UNDO
/// COST 20 (an estimate that bounds the cost, such as a completion's
/// `max_tokens`, settles this way). Ten of each per key stay within the
/// budget.
fn settlements() -> Vec<(&'static str, Request)> {
    let budget = |name: &str, prefix: &'static str, cost: u64| -> Call {
        let name = name.to_string();
        Box::new(move |i| {
            redis::cmd(&name)
                .arg(format!("{prefix}:{i}"))
                .arg(60_000)
                .arg(10_000)
                .arg("COST")
                .arg(cost)
                .clone()
        })
    };
    vec![
        (
            "RATELIMIT.CHECK COST estimate (a reservation, never settled)",
            vec![budget("RATELIMIT.CHECK", "reserve", 100)],
        ),
        (
            "RATELIMIT.CHARGE (a settlement)",
            vec![budget("RATELIMIT.CHARGE", "charge", 20)],
        ),
        (
            "reserve and settle: CHECK COST estimate + CHARGE COST (actual - estimate)",
            vec![
                budget("RATELIMIT.CHECK", "settle", 100),
                budget("RATELIMIT.CHARGE", "settle", 20),
            ],
        ),
        (
            "reserve and settle below the estimate: CHECK COST estimate + UNDO COST (estimate - actual)",
            vec![
                budget("RATELIMIT.CHECK", "refund", 100),
                Box::new(|i| {
                    redis::cmd("RATELIMIT.UNDO")
                        .arg(format!("refund:{i}"))
                        .arg("COST")
                        .arg(20)
                        .clone()
                }),
            ],
        ),
    ]
}

fn callgrind_control(pid: u32, option: &str) {
    let status = Command::new("callgrind_control")
        .arg(option)
        .arg(pid.to_string())
        .output()
        .expect("callgrind_control (valgrind) runs");
    assert!(
        status.status.success(),
        "callgrind_control {option}: {status:?}"
    );
}

/// The instruction total of the newest callgrind dump in `dir`.
fn newest_dump_total(dir: &Path) -> u64 {
    let newest = std::fs::read_dir(dir)
        .expect("the server's directory")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("callgrind.out"))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .expect("a callgrind dump");
    let text = std::fs::read_to_string(newest.path()).expect("the dump");
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary: ")
                .or_else(|| l.strip_prefix("totals: "))
        })
        .and_then(|n| n.trim().parse().ok())
        .expect("a summary line")
}

/// One approach's instructions per call, and the MEMORY USAGE of its key
/// 0.
pub struct Row {
    name: String,
    per_call: f64,
    memory_usage: i64,
}

/// What the redis-cell rows need when its module is not given.
const CELL_NOTE: &str = "redis-cell rows left out: give its module (built from \
    github.com/brandur/redis-cell, `cargo build --release`): make bench \
    EXTRA_MODULE=/path/libredis_cell.so EXTRA_COMMAND=\"CL.THROTTLE k:__rand_int__ 15 30 60\"";

/// Instructions per call of each approach, in one server run, with
/// `extra_module` (redis-cell) loaded if given; and a note when the
/// redis-cell rows are left out.
pub fn run(extra_module: Option<&str>) -> (Vec<Row>, Option<&'static str>) {
    let mut extra = vec!["--appendonly", "yes", "--appendfsync", "everysec"];
    if let Some(path) = extra_module {
        extra.extend(["--loadmodule", path]);
    }
    let server = Server::start_under(
        &[
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=callgrind.out.%p",
        ],
        &extra,
    );
    let mut con = server.connect();
    redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(twin_library())
        .query::<String>(&mut con)
        .expect("FUNCTION LOAD");
    let twin_sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(twin_script())
        .query(&mut con)
        .expect("SCRIPT LOAD");
    let scripts = load_scripts(&mut con);
    let with_cell = redis::cmd("COMMAND")
        .arg("INFO")
        .arg("CL.THROTTLE")
        .query::<Vec<Option<redis::Value>>>(&mut con)
        .is_ok_and(|info| info.first().is_some_and(Option::is_some));
    let mut all: Vec<(&str, Request)> = approaches(&twin_sha, &scripts)
        .into_iter()
        .map(|(name, call)| (name, vec![call]))
        .collect();
    all.extend(settlements());
    all.extend(
        bucket_approaches(&scripts.gcra, &twin_sha, with_cell)
            .into_iter()
            .map(|(name, call)| (name, vec![call])),
    );
    let mut rows = vec![];
    for (name, request) in all {
        for _ in 0..WARM {
            pipeline(&mut con, &request);
        }
        callgrind_control(server.pid(), "--zero");
        pipeline(&mut con, &request);
        callgrind_control(server.pid(), "--dump");
        let per_call = newest_dump_total(&server.dir) as f64 / KEYS as f64;
        let memory_usage = memory_usage(&mut con, &request[0](0));
        eprintln!("  {name}: {per_call:.0} instructions per call, MEMORY USAGE {memory_usage}");
        rows.push(Row {
            name: name.to_string(),
            per_call,
            memory_usage,
        });
    }
    (rows, (!with_cell).then_some(CELL_NOTE))
}

/// MEMORY USAGE of the (first) key `call` names: its first argument, or
/// a script's or a function's first key, after `numkeys`.
fn memory_usage(con: &mut Connection, call: &redis::Cmd) -> i64 {
    let words: Vec<String> = call
        .args_iter()
        .map(|arg| match arg {
            redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            redis::Arg::Cursor => String::new(),
        })
        .collect();
    let at = match words[0].to_uppercase().as_str() {
        "EVALSHA" | "FCALL" => 3,
        _ => 1,
    };
    redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(&words[at])
        .query(con)
        .expect("MEMORY USAGE of a key just written")
}

pub fn write(rows: &[Row], note: Option<&str>, dir: &Path) -> std::io::Result<()> {
    let incr = rows.first().map_or(1.0, |r| r.per_call);
    let mut csv = String::from("approach,instructions_per_call,times_incr,memory_usage_of_a_key\n");
    for row in rows {
        // Quoted: an approach's name may hold a comma.
        csv.push_str(&format!(
            "\"{}\",{:.0},{:.2},{}\n",
            row.name.replace('"', "\"\""),
            row.per_call,
            row.per_call / incr,
            row.memory_usage
        ));
    }
    if let Some(note) = note {
        csv.push_str(&format!("# {note}\n"));
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("cpu.csv"), csv)
}
