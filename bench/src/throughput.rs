//! Ops/s, latency and server CPU per logical request for each approach,
//! at pipeline depths 1 and 32, repeated and interleaved.

use crate::approaches;
use crate::measure::{self, Spread};
use crate::Bench;
use harness::{log_payload, restore, Random};
use redis::Connection;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub const CLIENTS: usize = 50;
pub const KEYSPACE: u32 = 10_000;

/// How a scenario's load is generated.
#[derive(Clone)]
pub enum Driver {
    /// redis-benchmark with these command words (`__rand_int__` keys).
    RedisBenchmark(Vec<String>),
    /// This harness's own clients: INCR, for a same-tool baseline.
    OwnIncr,
    /// This harness's own clients running the guide's pipeline.
    NaivePipeline,
}

#[derive(Clone)]
pub struct Scenario {
    pub name: String,
    pub driver: Driver,
    /// Commands whose server CPU one logical request costs.
    pub commands: Vec<String>,
    /// The command counted once per logical request.
    pub counted: String,
    /// The same-tool INCR row this one is compared with.
    pub baseline: &'static str,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    pub ops: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub usec: f64,
}

pub struct Row {
    pub scenario: Scenario,
    pub depth: usize,
    pub ops: Spread,
    pub p50_ms: Spread,
    pub p99_ms: Spread,
    pub usec: Spread,
}

fn names(commands: &[&str]) -> Vec<String> {
    commands.iter().map(|c| c.to_string()).collect()
}

pub fn scenarios(script_sha: &str, twin_sha: &str, extra: Option<&[String]>) -> Vec<Scenario> {
    let rb = |words: &[&str]| Driver::RedisBenchmark(words.iter().map(|w| w.to_string()).collect());
    let mut list = vec![
        Scenario {
            name: "INCR".into(),
            driver: rb(&["INCR", "c:__rand_int__"]),
            commands: names(&["incr"]),
            counted: "incr".into(),
            baseline: "INCR",
        },
        Scenario {
            name: "RATELIMIT.CHECK, mostly allowed".into(),
            driver: rb(&["RATELIMIT.CHECK", "a:__rand_int__", "60000", "100"]),
            commands: names(&["ratelimit.check"]),
            counted: "ratelimit.check".into(),
            baseline: "INCR",
        },
        Scenario {
            name: "RATELIMIT.CHECK, mostly denied".into(),
            driver: rb(&["RATELIMIT.CHECK", "d:__rand_int__", "60000", "1"]),
            commands: names(&["ratelimit.check"]),
            counted: "ratelimit.check".into(),
            baseline: "INCR",
        },
        Scenario {
            name: "RATELIMIT.PEEK, missing key (module floor)".into(),
            driver: rb(&["RATELIMIT.PEEK", "m:__rand_int__", "60000", "100"]),
            commands: names(&["ratelimit.peek"]),
            counted: "ratelimit.peek".into(),
            baseline: "INCR",
        },
        Scenario {
            name: "Lua sliding log (EVALSHA)".into(),
            driver: rb(&["EVALSHA", script_sha, "1", "z:__rand_int__", "60000", "100"]),
            commands: names(&["evalsha"]),
            counted: "evalsha".into(),
            baseline: "INCR",
        },
        Scenario {
            name: "Twin (FCALL), mostly allowed".into(),
            driver: rb(&[
                "FCALL",
                "ratelimit_check",
                "1",
                "t:__rand_int__",
                "60000",
                "100",
            ]),
            commands: names(&["fcall"]),
            counted: "fcall".into(),
            baseline: "INCR",
        },
        Scenario {
            name: "Twin (FCALL), mostly denied".into(),
            driver: rb(&[
                "FCALL",
                "ratelimit_check",
                "1",
                "u:__rand_int__",
                "60000",
                "1",
            ]),
            commands: names(&["fcall"]),
            counted: "fcall".into(),
            baseline: "INCR",
        },
        Scenario {
            name: "Twin (EVALSHA), mostly allowed".into(),
            driver: rb(&[
                "EVALSHA",
                twin_sha,
                "1",
                "e:__rand_int__",
                "check",
                "60000",
                "100",
            ]),
            commands: names(&["evalsha"]),
            counted: "evalsha".into(),
            baseline: "INCR",
        },
        Scenario {
            name: "INCR (harness clients)".into(),
            driver: Driver::OwnIncr,
            commands: names(&["incr"]),
            counted: "incr".into(),
            baseline: "INCR (harness clients)",
        },
        Scenario {
            name: "Client-side pipeline (guide)".into(),
            driver: Driver::NaivePipeline,
            commands: names(&[
                "zremrangebyscore",
                "zcard",
                "zadd",
                "expire",
                "zremrangebyrank",
            ]),
            counted: "zcard".into(),
            baseline: "INCR (harness clients)",
        },
    ];
    if let Some(words) = extra {
        let name = words[0].to_lowercase();
        list.push(Scenario {
            name: format!("{} (given)", words.join(" ")),
            driver: Driver::RedisBenchmark(words.to_vec()),
            commands: vec![name.clone()],
            counted: name,
            baseline: "INCR",
        });
    }
    list
}

/// Every scenario at every depth, `repeats` times, interleaved so that a
/// noisy moment on the machine hits all of them alike.
pub fn run(bench: &Bench, scenarios: &[Scenario], depths: &[usize], repeats: usize) -> Vec<Row> {
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); scenarios.len() * depths.len()];
    for round in 0..repeats {
        for (d, &depth) in depths.iter().enumerate() {
            for (s, scenario) in scenarios.iter().enumerate() {
                let sample = measure_once(bench, scenario, depth);
                eprintln!(
                    "  round {} depth {depth:>2} {:<45} {:>10.0} ops/s {:>6.2} µs/req",
                    round + 1,
                    scenario.name,
                    sample.ops,
                    sample.usec
                );
                samples[d * scenarios.len() + s].push(sample);
            }
        }
    }
    let mut rows = Vec::new();
    for (d, &depth) in depths.iter().enumerate() {
        for (s, scenario) in scenarios.iter().enumerate() {
            let of = |f: fn(&Sample) -> f64| {
                Spread::of(
                    &samples[d * scenarios.len() + s]
                        .iter()
                        .map(f)
                        .collect::<Vec<_>>(),
                )
            };
            rows.push(Row {
                scenario: scenario.clone(),
                depth,
                ops: of(|s| s.ops),
                p50_ms: of(|s| s.p50_ms),
                p99_ms: of(|s| s.p99_ms),
                usec: of(|s| s.usec),
            });
        }
    }
    rows
}

fn measure_once(bench: &Bench, scenario: &Scenario, depth: usize) -> Sample {
    let mut con = bench.connect();
    measure::reset(&mut con);
    let mut sample = match &scenario.driver {
        Driver::RedisBenchmark(words) => redis_benchmark(bench, words, depth),
        Driver::OwnIncr => own_clients(bench, depth, |con, keys, _| {
            let mut pipe = redis::pipe();
            for key in keys {
                pipe.cmd("INCR").arg(key).ignore();
            }
            pipe.query::<()>(con).expect("INCR");
        }),
        Driver::NaivePipeline => own_clients(bench, depth, |con, keys, random| {
            approaches::naive_pipeline(con, keys, (60_000, 100), 0, random);
        }),
    };
    let stats = measure::command_stats(&mut con);
    let requests = measure::calls(&stats, &scenario.counted);
    sample.usec = measure::usec_per(&stats, &scenario.commands, requests);
    sample
}

fn redis_benchmark(bench: &Bench, words: &[String], depth: usize) -> Sample {
    let requests = bench.requests(depth);
    let output = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &bench.port.to_string()])
        .args(["-c", &CLIENTS.to_string(), "-n", &requests.to_string()])
        .args([
            "-r",
            &KEYSPACE.to_string(),
            "-P",
            &depth.to_string(),
            "--csv",
        ])
        .args(words)
        .output()
        .expect("redis-benchmark (apt package redis-tools)");
    let text = String::from_utf8_lossy(&output.stdout);
    let row = text
        .lines()
        .nth(1)
        .unwrap_or_else(|| panic!("redis-benchmark said: {text}"));
    let fields: Vec<f64> = row
        .split("\",\"")
        .skip(1)
        .map(|f| f.trim_matches('"').parse().unwrap_or(0.0))
        .collect();
    // rps, avg, min, p50, p95, p99, max
    Sample {
        ops: fields[0],
        p50_ms: fields[3],
        p99_ms: fields[5],
        usec: 0.0,
    }
}

/// CLIENTS connections, each sending batches of `depth` logical requests
/// on random keys for a fixed time; latency is per batch.
fn own_clients(
    bench: &Bench,
    depth: usize,
    batch: fn(&mut Connection, &[String], &mut Random),
) -> Sample {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let stop = Arc::clone(&stop);
            let mut con = bench.connect();
            std::thread::spawn(move || {
                let mut random = Random::seeded(client as u64 + 1);
                let mut latencies = Vec::new();
                let mut done = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let keys: Vec<String> = (0..depth)
                        .map(|_| format!("n:{}", random.next_u64() % u64::from(KEYSPACE)))
                        .collect();
                    let sent = Instant::now();
                    batch(&mut con, &keys, &mut random);
                    latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                    done += depth;
                }
                (done, latencies)
            })
        })
        .collect();
    std::thread::sleep(bench.own_duration());
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut latencies = Vec::new();
    for worker in workers {
        let (done, mut l) = worker.join().expect("client thread");
        total += done;
        latencies.append(&mut l);
    }
    let elapsed = started.elapsed().as_secs_f64();
    Sample {
        ops: total as f64 / elapsed,
        p50_ms: measure::quantile(&mut latencies, 0.5),
        p99_ms: measure::quantile(&mut latencies, 0.99),
        usec: 0.0,
    }
}

/// Server CPU per CHECK on one key held at a fixed size: each CHECK
/// (allowed, adding an entry) is followed by a refund of that entry, and
/// only the CHECK's CPU is counted. The same for the Lua script, whose
/// newest member is removed after each call.
pub fn scaling(bench: &Bench, sizes: &[u64], script_sha: &str) -> Vec<(u64, f64, f64)> {
    let mut con = bench.connect();
    let calls = 20_000;
    sizes
        .iter()
        .map(|&size| {
            measure::reset(&mut con);
            restore_log(&mut con, "s", size);
            fill_sorted_set(&mut con, "z", size);
            redis::cmd("CONFIG")
                .arg("RESETSTAT")
                .query::<()>(&mut con)
                .expect("RESETSTAT");
            for _ in 0..calls / 100 {
                let mut pipe = redis::pipe();
                for _ in 0..100 {
                    pipe.cmd("RATELIMIT.CHECK")
                        .arg("s")
                        .arg(3_600_000)
                        .arg(1_000_000)
                        .ignore();
                    pipe.cmd("RATELIMIT.UNDO").arg("s").ignore();
                    pipe.cmd("EVALSHA")
                        .arg(script_sha)
                        .arg(1)
                        .arg("z")
                        .arg(3_600_000)
                        .arg(1_000_000)
                        .ignore();
                    pipe.cmd("ZREMRANGEBYRANK")
                        .arg("z")
                        .arg(-1)
                        .arg(-1)
                        .ignore();
                }
                pipe.query::<()>(&mut con).expect("scaling calls");
            }
            let stats = measure::command_stats(&mut con);
            let module = measure::usec_per(&stats, &["ratelimit.check"], calls);
            let lua = measure::usec_per(&stats, &["evalsha"], calls);
            eprintln!("  {size:>7} entries: CHECK {module:.2} µs, Lua {lua:.2} µs");
            (size, module, lua)
        })
        .collect()
}

/// A log of `size` unit entries 1 ms apart ending a second ago, under a
/// one-hour window, made by RESTORE of a crafted payload
/// (`harness::log_payload`): CHECK adds at most one entry per millisecond,
/// too slow to fill 100,000.
fn restore_log(con: &mut Connection, key: &str, size: u64) {
    let oldest = approaches::client_clock_ms() - size as i64 - 1000;
    let entries: Vec<(i64, u64)> = (0..size as i64).map(|i| (oldest + i, 1)).collect();
    let payload = log_payload(con, 3_600_000, &entries);
    restore(con, key, &payload).expect("RESTORE of a crafted log");
    let units: Vec<i64> = redis::cmd("RATELIMIT.PEEK")
        .arg(key)
        .arg(3_600_000)
        .arg(size)
        .query(con)
        .expect("PEEK");
    assert_eq!(units[1], 0, "the restored log holds {size} units");
}

/// A sorted set of `size` guide-style members at the current time.
fn fill_sorted_set(con: &mut Connection, key: &str, size: u64) {
    let now = approaches::client_clock_ms();
    let mut random = Random::seeded(size);
    let mut left = size;
    while left > 0 {
        let chunk = left.min(1000);
        approaches::guide_zadd(key, now, chunk, &mut random)
            .query::<()>(con)
            .expect("ZADD");
        left -= chunk;
    }
}
