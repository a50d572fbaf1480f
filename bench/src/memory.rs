//! Bytes per key and per recorded request: the module's log against the
//! guide's sorted set with `req:<ms>:<random>` members.

use crate::approaches::{self, Random};
use crate::measure;
use crate::Bench;
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
    Module,
    SortedSet,
}

/// Fills `keys` keys with `entries` requests each, as the module records
/// them (one CHECK per request) or as the guide's pipeline does (ZADD with
/// its member format, EXPIRE), and measures the growth.
pub fn footprint(bench: &Bench, store: Store, entries: u64, keys: u64) -> Footprint {
    let mut con = bench.connect();
    measure::reset(&mut con);
    let before = measure::used_memory(&mut con);
    let mut random = Random::seeded(entries);
    let now = approaches::client_clock_ms();
    let mut pipe = redis::pipe();
    let mut queued = 0;
    for key in 0..keys {
        let name = format!("k:{key}");
        match store {
            Store::Module => {
                for _ in 0..entries {
                    pipe.cmd("RATELIMIT.CHECK")
                        .arg(&name)
                        .arg(3_600_000)
                        .arg(entries)
                        .ignore();
                }
                queued += entries;
            }
            Store::SortedSet => {
                let mut zadd = redis::cmd("ZADD");
                zadd.arg(&name);
                for _ in 0..entries {
                    zadd.arg(now)
                        .arg(approaches::guide_member(now, random.next()));
                }
                pipe.add_command(zadd).ignore();
                pipe.cmd("EXPIRE").arg(&name).arg(3600).ignore();
                queued += entries;
            }
        }
        if queued >= 10_000 {
            flush(&mut con, &mut pipe);
            queued = 0;
        }
    }
    flush(&mut con, &mut pipe);
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

fn flush(con: &mut Connection, pipe: &mut redis::Pipeline) {
    pipe.query::<()>(con).expect("fill");
    pipe.clear();
}
