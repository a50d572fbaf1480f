//! Bytes per key and per recorded request: the module's log and the
//! script twin's string against the guide's sorted set with
//! `req:<ms>:<random>` members.

use crate::approaches;
use crate::measure;
use crate::Bench;
use harness::Random;
use redis::Connection;

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
}

/// Fills `keys` keys with `entries` requests each and measures the growth.
pub fn footprint(bench: &Bench, store: Store, entries: u64, keys: u64) -> Footprint {
    let mut con = bench.connect();
    measure::reset(&mut con);
    let before = measure::used_memory(&mut con);
    match store {
        Store::Module | Store::Twin => fill_spread(&mut con, store, entries, keys),
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
