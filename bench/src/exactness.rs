//! The reason this project exists: under concurrency, how many requests
//! does each approach admit in a window, against the limit?
//!
//! N clients hammer one key. Admitted requests are taken from where each
//! approach decides: for the module, the `RATELIMIT.RECORD` commands in
//! the AOF (the master's exact timestamps); for the script twin, the
//! header writes its allowed calls left in the AOF (each holds the newest
//! entry's time the call recorded); for the Lua script, the server
//! time it returns; for the guide's pipeline, its clients (it decides on
//! the client, on the true clock even when its own is skewed). The report
//! is the largest total admitted in any window.

use crate::approaches;
use crate::Bench;
use harness::Random;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Outcome {
    pub approach: &'static str,
    pub window_ms: i64,
    pub max: i64,
    pub calls: u64,
    pub admitted: u64,
    pub most_in_a_window: u64,
}

impl Outcome {
    pub fn over_admission(&self) -> i64 {
        self.most_in_a_window as i64 - self.max
    }
}

#[derive(Clone, Copy)]
enum Approach {
    Module,
    Twin,
    Lua,
    /// The guide's pipeline; with `skewed`, the clients' clocks are spread
    /// over ±250 ms, as app servers' clocks drift.
    Pipeline {
        skewed: bool,
    },
}

const SKEW_MS: i64 = 250;

/// Client `index` of `clients`: its clock's offset, from -SKEW_MS to +SKEW_MS.
fn skew_of(index: usize, clients: usize) -> i64 {
    -SKEW_MS + 2 * SKEW_MS * index as i64 / (clients.max(2) - 1) as i64
}

/// Each window runs for at least 3 s and 1.5 windows, since requests can
/// only be over-admitted once entries start to expire.
pub fn run(
    bench: &Bench,
    sha: &str,
    windows: &[i64],
    max: i64,
    clients: usize,
    quick: bool,
) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for &window in windows {
        let duration = if quick {
            Duration::from_millis(window as u64 + 500)
        } else {
            Duration::from_millis((window as u64 * 3 / 2).max(3_000))
        };
        for (approach, name) in [
            (Approach::Module, "RATELIMIT.CHECK"),
            (Approach::Twin, "script twin (FCALL)"),
            (Approach::Lua, "Lua sliding log"),
            (Approach::Pipeline { skewed: false }, "client-side pipeline"),
            (
                Approach::Pipeline { skewed: true },
                "pipeline, clocks ±250 ms",
            ),
        ] {
            let key = format!("x:{name}:{window}");
            let (calls, mut admitted) =
                hammer(bench, approach, sha, &key, window, max, clients, duration);
            match approach {
                Approach::Module => admitted = recorded_in_aof(&bench.dir, &key),
                Approach::Twin => admitted = twin_writes_in_aof(&bench.dir, &key),
                _ => {}
            }
            let outcome = Outcome {
                approach: name,
                window_ms: window,
                max,
                calls,
                admitted: admitted.iter().map(|&(_, cost)| cost).sum(),
                most_in_a_window: most_in_any_window(&mut admitted, window),
            };
            eprintln!(
                "  {name:<22} window {window:>5} ms: {calls} calls, {} admitted, at most {} in a window (max {max}, over by {})",
                outcome.admitted,
                outcome.most_in_a_window,
                outcome.over_admission()
            );
            outcomes.push(outcome);
        }
    }
    outcomes
}

/// Admitted (time, cost) pairs as the clients saw them, and the call count.
#[allow(clippy::too_many_arguments)]
fn hammer(
    bench: &Bench,
    approach: Approach,
    sha: &str,
    key: &str,
    window: i64,
    max: i64,
    clients: usize,
    duration: Duration,
) -> (u64, Vec<(i64, u64)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new((0u64, Vec::new())));
    let workers: Vec<_> = (0..clients)
        .map(|client| {
            let (stop, log) = (Arc::clone(&stop), Arc::clone(&log));
            let (mut con, key, sha) = (bench.connect(), key.to_string(), sha.to_string());
            std::thread::spawn(move || {
                let mut random = Random::seeded(client as u64 + 7);
                let mut calls = 0u64;
                let mut admitted = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    calls += 1;
                    match approach {
                        Approach::Module => {
                            let reply: Vec<i64> = redis::cmd("RATELIMIT.CHECK")
                                .arg(&key)
                                .arg(window)
                                .arg(max)
                                .query(&mut con)
                                .expect("CHECK");
                            if reply[0] == 1 {
                                admitted.push((0, 1));
                            }
                        }
                        Approach::Twin => {
                            let reply: Vec<i64> = redis::cmd("FCALL")
                                .arg("ratelimit_check")
                                .arg(1)
                                .arg(&key)
                                .arg(window)
                                .arg(max)
                                .query(&mut con)
                                .expect("FCALL");
                            if reply[0] == 1 {
                                admitted.push((0, 1));
                            }
                        }
                        Approach::Lua => {
                            let reply: Vec<i64> = redis::cmd("EVALSHA")
                                .arg(&sha)
                                .arg(1)
                                .arg(&key)
                                .arg(window)
                                .arg(max)
                                .query(&mut con)
                                .expect("EVALSHA");
                            if reply[0] == 1 {
                                admitted.push((reply[2], 1));
                            }
                        }
                        Approach::Pipeline { skewed } => {
                            let keys = [key.clone()];
                            let skew = if skewed { skew_of(client, clients) } else { 0 };
                            let verdicts = approaches::naive_pipeline(
                                &mut con,
                                &keys,
                                (window, max),
                                skew,
                                &mut random,
                            );
                            for (allowed, now) in verdicts {
                                if allowed {
                                    // Judged on the true clock, not the client's.
                                    admitted.push((now - skew, 1));
                                }
                            }
                        }
                    }
                }
                let mut shared = log.lock().expect("log");
                shared.0 += calls;
                shared.1.append(&mut admitted);
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().expect("client thread");
    }
    let shared = log.lock().expect("log");
    (shared.0, shared.1.clone())
}

/// The largest total cost in any window `(t - window, t]`.
pub fn most_in_any_window(admitted: &mut [(i64, u64)], window: i64) -> u64 {
    admitted.sort_unstable();
    let (mut start, mut inside, mut most) = (0, 0u64, 0u64);
    for end in 0..admitted.len() {
        inside += admitted[end].1;
        while admitted[start].0 <= admitted[end].0 - window {
            inside -= admitted[start].1;
            start += 1;
        }
        most = most.max(inside);
    }
    most
}

/// `(at, cost)` of every `RATELIMIT.RECORD key at window cost` in the AOF.
fn recorded_in_aof(dir: &Path, key: &str) -> Vec<(i64, u64)> {
    let number = |b: &[u8]| String::from_utf8_lossy(b).parse::<i64>().unwrap_or(0);
    aof_commands(dir)
        .into_iter()
        .filter_map(|command| match &command[..] {
            [name, k, at, _window, cost]
                if name.eq_ignore_ascii_case(b"RATELIMIT.RECORD") && k == key.as_bytes() =>
            {
                Some((number(at), number(cost) as u64))
            }
            _ => None,
        })
        .collect()
}

/// The twin's admissions of unit cost on `key`: each allowed call writes
/// the value's header once, last (`SETRANGE key 0 <header>`, or `SET key
/// <header><entries> PXAT t` for a new or compacted value), and a denied
/// call under one window writes nothing. Its newest time (6 bytes,
/// little-endian, at offset 16) is the time the call recorded.
fn twin_writes_in_aof(dir: &Path, key: &str) -> Vec<(i64, u64)> {
    let newest = |header: &[u8]| -> Option<(i64, u64)> {
        let bytes = header.get(16..22)?;
        let at = bytes
            .iter()
            .rev()
            .fold(0i64, |n, &b| n * 256 + i64::from(b));
        Some((at, 1))
    };
    aof_commands(dir)
        .into_iter()
        .filter_map(|command| match &command[..] {
            [name, k, offset, header]
                if name.eq_ignore_ascii_case(b"SETRANGE")
                    && k == key.as_bytes()
                    && offset == b"0" =>
            {
                newest(header)
            }
            [name, k, value, ..] if name.eq_ignore_ascii_case(b"SET") && k == key.as_bytes() => {
                newest(value)
            }
            _ => None,
        })
        .collect()
}

/// Every command of the AOF's incremental files.
fn aof_commands(dir: &Path) -> Vec<Vec<Vec<u8>>> {
    let Ok(files) = std::fs::read_dir(dir.join("appendonlydir")) else {
        return Vec::new();
    };
    files
        .flatten()
        .filter(|file| file.file_name().to_string_lossy().ends_with(".incr.aof"))
        .flat_map(|file| resp_commands(&std::fs::read(file.path()).unwrap_or_default()))
        .collect()
}

/// The commands of an AOF: RESP arrays of bulk strings.
fn resp_commands(bytes: &[u8]) -> Vec<Vec<Vec<u8>>> {
    let mut commands = Vec::new();
    let mut rest = bytes;
    let line = |rest: &mut &[u8], marker: u8| -> Option<usize> {
        let end = rest.windows(2).position(|w| w == b"\r\n")?;
        let (head, tail) = rest.split_at(end);
        *rest = &tail[2..];
        (head.first() == Some(&marker)).then(|| String::from_utf8_lossy(&head[1..]).parse().ok())?
    };
    while let Some(count) = line(&mut rest, b'*') {
        let mut words = Vec::with_capacity(count);
        for _ in 0..count {
            let Some(len) = line(&mut rest, b'$') else {
                return commands;
            };
            if rest.len() < len + 2 {
                return commands;
            }
            words.push(rest[..len].to_vec());
            rest = &rest[len + 2..];
        }
        commands.push(words);
    }
    commands
}
