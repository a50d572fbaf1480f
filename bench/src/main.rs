//! `make bench`: what the module costs and what it saves, side by side in
//! one run against one server. See docs/performance.md.
//!
//! Usage: ratelimit-bench [--quick] [--extra-module PATH] [--extra-command "CMD ARGS"]
//!   [throughput] [scaling] [memory] [weighted] [exactness] [worst] [multi] [cpu]   (all when none is named)

mod approaches;
mod cpu;
mod exactness;
mod measure;
mod memory;
mod multi;
mod report;
mod throughput;
mod weighted;
mod worst;

use harness::Server;
use memory::Store;
use redis::Connection;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The server under test and how hard to push it.
pub struct Bench {
    _server: Server,
    pub port: u16,
    pub dir: PathBuf,
    quick: bool,
}

impl Bench {
    fn start(extra: &[String]) -> Bench {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let server = Server::start(&extra);
        Bench {
            port: server.port,
            dir: server.dir.clone(),
            _server: server,
            quick: false,
        }
    }

    pub fn connect(&self) -> Connection {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))
            .and_then(|c| c.get_connection())
            .expect("a connection to the bench server")
    }

    /// redis-benchmark requests per run: about two seconds' worth, and at
    /// most 60 per key, so "mostly allowed" stays under max 100.
    pub fn requests(&self, depth: usize) -> u64 {
        let full = if depth > 1 { 600_000 } else { 200_000 };
        if self.quick {
            full / 10
        } else {
            full
        }
    }

    pub fn own_duration(&self) -> Duration {
        Duration::from_millis(if self.quick { 500 } else { 2_000 })
    }
}

struct Options {
    quick: bool,
    extra_module: Option<String>,
    extra_command: Option<Vec<String>>,
    sections: Vec<String>,
}

fn options() -> Options {
    let mut options = Options {
        quick: false,
        extra_module: None,
        extra_command: None,
        sections: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--extra-module" => options.extra_module = args.next().filter(|s| !s.is_empty()),
            "--extra-command" => {
                options.extra_command = args
                    .next()
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| s.split_whitespace().map(String::from).collect())
            }
            section => options.sections.push(section.to_string()),
        }
    }
    options
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let version = std::process::Command::new(harness::server_binary())
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("Machine: {cores} cores ({cpu}), shared and noisy. Server: {version}. Server and load generator share the machine.")
}

fn main() {
    let options = options();
    let wants = |section: &str| {
        options.sections.is_empty() || options.sections.iter().any(|s| s == section)
    };
    let mut extra_args = Vec::new();
    if let Some(path) = &options.extra_module {
        extra_args.extend(["--loadmodule".to_string(), path.clone()]);
    }
    let mut bench = Bench::start(&extra_args);
    bench.quick = options.quick;
    let sha = approaches::load_script(&mut bench.connect());
    let twin_sha = approaches::load_twin(&mut bench.connect());
    let mut results = report::Results {
        machine: machine(),
        throughput: Vec::new(),
        scaling: Vec::new(),
        memory: Vec::new(),
        twin_memory: Vec::new(),
        headline: None,
        burst: None,
        costs: Vec::new(),
        hot: Vec::new(),
        exactness: Vec::new(),
    };
    if wants("throughput") {
        eprintln!("throughput:");
        let scenarios = throughput::scenarios(&sha, &twin_sha, options.extra_command.as_deref());
        results.throughput = throughput::run(
            &bench,
            &scenarios,
            &[1, 32],
            if bench.quick { 1 } else { 3 },
        );
    }
    if wants("scaling") {
        eprintln!("scaling:");
        let sizes: &[u64] = if bench.quick {
            &[10, 1_000]
        } else {
            &[10, 1_000, 100_000]
        };
        results.scaling = throughput::scaling(&bench, sizes, &sha);
    }
    if wants("memory") {
        eprintln!("memory:");
        for entries in [10u64, 100, 1_000, 10_000] {
            let keys = (1_000_000 / entries).min(10_000) / if bench.quick { 10 } else { 1 };
            results.memory.push((
                memory::footprint(&bench, Store::Module, entries, keys),
                memory::footprint(&bench, Store::SortedSet, entries, keys),
            ));
            results
                .twin_memory
                .push(memory::footprint(&bench, Store::Twin, entries, keys));
        }
        let keys = if bench.quick { 100_000 } else { 1_000_000 };
        results.headline = Some((
            memory::footprint(&bench, Store::Module, 10, keys),
            memory::footprint(&bench, Store::SortedSet, 10, keys),
        ));
        results.burst = Some(memory::footprint(&bench, Store::ModuleBurst, 10, keys));
    }
    if wants("weighted") {
        eprintln!("weighted:");
        let (keys, requests) = if bench.quick { (100, 50) } else { (1_000, 200) };
        results.costs = [1, 100, 10_000, 1 << 32]
            .iter()
            .map(|&cost| weighted::cost_row(&bench, cost, keys, requests))
            .collect();
        let seconds = Duration::from_secs(if bench.quick { 1 } else { 5 });
        results.hot = [None, Some(1000)]
            .iter()
            .map(|&precision| weighted::hot_key(&bench, precision, seconds))
            .collect();
    }
    if wants("worst") {
        eprintln!("worst case of one call:");
        let size = if bench.quick { 100_000 } else { 1_000_000 };
        let rows = worst::run(&bench, size, &twin_sha);
        let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
        if let Err(e) = worst::write(&rows, size, &out) {
            eprintln!("cannot write worst.csv: {e}");
        }
    }
    if wants("multi") {
        eprintln!("several keys in one call:");
        let requests = if bench.quick { 2_000 } else { 20_000 };
        let rows = multi::run(&bench, requests);
        let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
        if let Err(e) = multi::write(&rows, requests, &out) {
            eprintln!("cannot write multi.csv: {e}");
        }
    }
    drop(bench);
    if wants("cpu") {
        eprintln!("instructions per call (callgrind, AOF on):");
        let (rows, note) = cpu::run(options.extra_module.as_deref());
        if let Some(note) = note {
            eprintln!("  {note}");
        }
        let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
        if let Err(e) = cpu::write(&rows, note, &out) {
            eprintln!("cannot write cpu.csv: {e}");
        }
    }
    if wants("exactness") {
        eprintln!("exactness:");
        let aof = ["--appendonly", "yes", "--appendfsync", "no"].map(String::from);
        let bench = Bench::start(&aof);
        let sha = approaches::load_script(&mut bench.connect());
        approaches::load_twin(&mut bench.connect());
        results.exactness = exactness::run(&bench, &sha, &[1_000, 10_000], 100, 8, options.quick);
    }
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
    match report::write(&results, &out, options.sections.is_empty()) {
        Ok(summary) => println!("{summary}\nwritten to {}", out.display()),
        Err(e) => {
            eprintln!("cannot write results to {}: {e}", out.display());
            std::process::exit(1);
        }
    }
}
