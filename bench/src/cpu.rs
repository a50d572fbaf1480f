//! Instructions per allowed call, whole server, AOF on (issue 23's CPU
//! aim): redis-server under valgrind's callgrind, each approach on its own
//! 1,000 keys, 9 calls a key to warm them, then the 10th call of each key
//! counted between `callgrind_control --zero` and `--dump`, on one
//! connection. Instruction counts are steady where timings on this shared
//! machine are not. Written to bench/results/cpu.csv.

use crate::approaches::{self, client_clock_ms};
use harness::{twin_library, twin_script, Server};
use redis::Connection;
use std::path::Path;
use std::process::Command;

const KEYS: usize = 1_000;
const WARM: usize = 9;

/// The sorted-set script and the sliding-window counter, loaded; their
/// SHA1s.
fn load_scripts(con: &mut Connection) -> (String, String) {
    let counter = include_str!("../lua/sliding_window_counter.lua");
    let load = |con: &mut Connection, script: &str| -> String {
        redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(script)
            .query(con)
            .expect("SCRIPT LOAD")
    };
    (load(con, approaches::LUA_SLIDING_LOG), load(con, counter))
}

/// An approach's call on key number `i`.
type Call = Box<dyn Fn(usize) -> redis::Cmd>;

/// Each approach's name and its call.
fn approaches(twin_sha: &str, log_sha: &str, counter_sha: &str) -> Vec<(&'static str, Call)> {
    let (twin_sha, log_sha, counter_sha) = (
        twin_sha.to_string(),
        log_sha.to_string(),
        counter_sha.to_string(),
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

fn pipeline(con: &mut Connection, call: &dyn Fn(usize) -> redis::Cmd) {
    let mut pipe = redis::pipe();
    for i in 0..KEYS {
        pipe.add_command(call(i)).ignore();
    }
    pipe.query::<()>(con).expect("a pipeline of calls");
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

/// Instructions per call of each approach, in one server run.
pub fn run() -> Vec<(String, f64)> {
    let server = Server::start_under(
        &[
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=callgrind.out.%p",
        ],
        &["--appendonly", "yes", "--appendfsync", "everysec"],
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
    let (log_sha, counter_sha) = load_scripts(&mut con);
    let mut rows = vec![];
    for (name, call) in approaches(&twin_sha, &log_sha, &counter_sha) {
        for _ in 0..WARM {
            pipeline(&mut con, &call);
        }
        callgrind_control(server.pid(), "--zero");
        pipeline(&mut con, &call);
        callgrind_control(server.pid(), "--dump");
        let per_call = newest_dump_total(&server.dir) as f64 / KEYS as f64;
        eprintln!("  {name}: {per_call:.0} instructions per call");
        rows.push((name.to_string(), per_call));
    }
    rows
}

pub fn write(rows: &[(String, f64)], dir: &Path) -> std::io::Result<()> {
    let incr = rows.first().map_or(1.0, |r| r.1);
    let mut csv = String::from("approach,instructions_per_call,times_incr\n");
    for (name, per_call) in rows {
        csv.push_str(&format!("{name},{per_call:.0},{:.2}\n", per_call / incr));
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("cpu.csv"), csv)
}
