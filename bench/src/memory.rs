//! Bytes per key and per recorded request: the module's log and the
//! script twin's string against the guide's sorted set with
//! `req:<ms>:<random>` members; and what a block (`BLOCK ms`) adds to a
//! key.

use crate::approaches;
use crate::measure;
use crate::Bench;
use harness::Random;
use redis::Connection;
use std::path::Path;

#[derive(Clone, Copy, Debug)]
pub struct Footprint {
    pub entries_per_key: u64,
    pub keys: u64,
    /// `used_memory` growth per key.
    pub per_key: f64,
    /// `used_memory` growth per recorded request.
    pub per_request: f64,
    /// `MEMORY USAGE` of one key.
    pub memory_usage: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    /// One CHECK per request; requests to a key come at distinct moments
    /// (a pass over every key, then a pause), so each is its own entry.
    Module,
    /// The same requests sent to a key back to back: those in the same
    /// millisecond share an entry.
    ModuleBurst,
    /// The guide's pipeline: ZADD with its member format, EXPIRE.
    SortedSet,
    /// The script twin (FCALL), requests at distinct moments as `Module`.
    Twin,
    /// As `Module`, then one denied CHECK with `BLOCK` per key: every key
    /// blocked.
    ModuleBlocked,
}

/// Fills `keys` keys with `entries` requests each and measures the growth.
pub fn footprint(bench: &Bench, store: Store, entries: u64, keys: u64) -> Footprint {
    let mut con = bench.connect();
    measure::reset(&mut con);
    let before = measure::used_memory(&mut con);
    match store {
        Store::Module | Store::Twin => fill_spread(&mut con, store, entries, keys),
        Store::ModuleBlocked => {
            fill_spread(&mut con, Store::Module, entries, keys);
            block_every_key(&mut con, entries, keys);
        }
        Store::ModuleBurst | Store::SortedSet => fill_by_key(&mut con, store, entries, keys),
    }
    let growth = (measure::used_memory(&mut con) - before) as f64;
    let memory_usage: i64 = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg("k:0")
        .arg("SAMPLES")
        .arg(0)
        .query(&mut con)
        .expect("MEMORY USAGE");
    let result = Footprint {
        entries_per_key: entries,
        keys,
        per_key: growth / keys as f64,
        per_request: growth / (keys * entries) as f64,
        memory_usage,
    };
    eprintln!("  {store:?} {entries:>6}/key × {keys:>7} keys: {:.1} B/key, {:.2} B/request, MEMORY USAGE {memory_usage}", result.per_key, result.per_request);
    result
}

/// `entries` passes over every key, pausing between passes.
fn fill_spread(con: &mut Connection, store: Store, entries: u64, keys: u64) {
    for _ in 0..entries {
        let mut pipe = redis::pipe();
        for key in 0..keys {
            let call = match store {
                Store::Twin => pipe.cmd("FCALL").arg("ratelimit_check").arg(1),
                _ => pipe.cmd("RATELIMIT.CHECK"),
            };
            call.arg(format!("k:{key}"))
                .arg(3_600_000)
                .arg(entries)
                .ignore();
            if pipe.len() >= 10_000 {
                flush(con, &mut pipe);
            }
        }
        flush(con, &mut pipe);
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// One more CHECK per key under the limit `fill_spread` filled: denied,
/// it blocks the key for an hour.
fn block_every_key(con: &mut Connection, entries: u64, keys: u64) {
    let blocks = |con: &mut Connection| {
        harness::info_field(con, "ratelimit", "ratelimit_blocks_started")
            .expect("blocks_started in INFO")
    };
    let before = blocks(con);
    let mut pipe = redis::pipe();
    for key in 0..keys {
        pipe.cmd("RATELIMIT.CHECK")
            .arg(format!("k:{key}"))
            .arg(3_600_000)
            .arg(entries)
            .arg("BLOCK")
            .arg(3_600_000)
            .ignore();
        if pipe.len() >= 10_000 {
            flush(con, &mut pipe);
        }
    }
    flush(con, &mut pipe);
    assert_eq!((blocks(con) - before) as u64, keys, "every key is blocked");
}

/// A blocked key against the same key unblocked, with 1 and with 10
/// entries: (open, blocked) footprints.
pub fn blocked_against_open(bench: &Bench) -> Vec<(Footprint, Footprint)> {
    let keys = if bench.quick { 10_000 } else { 100_000 };
    [1, 10]
        .into_iter()
        .map(|entries| {
            (
                footprint(bench, Store::Module, entries, keys),
                footprint(bench, Store::ModuleBlocked, entries, keys),
            )
        })
        .collect()
}

/// bench/results/block.csv: what a block adds to a key.
pub fn write_blocked(rows: &[(Footprint, Footprint)], dir: &Path) -> std::io::Result<()> {
    let mut csv = String::from(
        "entries_per_key,keys,open_bytes_per_key,blocked_bytes_per_key,open_memory_usage,blocked_memory_usage\n",
    );
    for (open, blocked) in rows {
        csv.push_str(&format!(
            "{},{},{:.1},{:.1},{},{}\n",
            open.entries_per_key,
            open.keys,
            open.per_key,
            blocked.per_key,
            open.memory_usage,
            blocked.memory_usage
        ));
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("block.csv"), csv)
}

/// Every request of one key, then the next key's.
fn fill_by_key(con: &mut Connection, store: Store, entries: u64, keys: u64) {
    let mut random = Random::seeded(entries);
    let now = approaches::client_clock_ms();
    let mut pipe = redis::pipe();
    for key in 0..keys {
        let name = format!("k:{key}");
        if store == Store::SortedSet {
            let zadd = approaches::guide_zadd(&name, now, entries, &mut random);
            pipe.add_command(zadd).ignore();
            pipe.cmd("EXPIRE").arg(&name).arg(3600).ignore();
        } else {
            for _ in 0..entries {
                pipe.cmd("RATELIMIT.CHECK")
                    .arg(&name)
                    .arg(3_600_000)
                    .arg(entries)
                    .ignore();
            }
        }
        if pipe.len() as u64 * entries >= 10_000 {
            flush(con, &mut pipe);
        }
    }
    flush(con, &mut pipe);
}

fn flush(con: &mut Connection, pipe: &mut redis::Pipeline) {
    pipe.query::<()>(con).expect("fill");
    pipe.clear();
}
