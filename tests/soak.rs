//! Soak with faults: 200 connections run CHECK/PEEK/UNDO/DEL over 10,000
//! keys with `appendonly yes` and `appendfsync always`, while BGSAVE and
//! BGREWRITEAOF run; then the master is killed with SIGKILL and restarted
//! from its AOF. Every acknowledged admission must still be recorded, no
//! key may be corrupt, the replica must agree by digest, no hot key may
//! have admitted more than its max, and once every window has passed the
//! replica's dataset memory must be back where it started.
//!
//! SOAK_SECONDS sets the workload's length (default 5; `make soak` runs 60).

use harness::{
    all_digests, info_field, run, wait_for_background_saves, wait_for_replica, Random, Server,
};
use redis::Connection;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

const CONNECTIONS: usize = 200;
const OWNED_KEYS: usize = 10_000;
const HOT_KEYS: usize = 50;
const OWNED_MAX: u64 = 5;
const HOT_MAX: u64 = 100;

/// What one connection saw: the entries its own keys should hold, and
/// what it was admitted on the shared hot keys.
#[derive(Default)]
struct Seen {
    owned: HashMap<String, u64>,
    hot_admitted: HashMap<String, u64>,
    calls: u64,
}

fn owned_key(i: usize) -> String {
    format!("owned:{i}")
}

fn hot_key(i: usize) -> String {
    format!("hot:{i}")
}

fn client(con: &mut Connection, index: usize, window: &str, stop: &AtomicBool) -> Seen {
    let mut seen = Seen::default();
    let mut random = Random::seeded(index as u64);
    let mine: Vec<String> = (index..OWNED_KEYS)
        .step_by(CONNECTIONS)
        .map(owned_key)
        .collect();
    while !stop.load(Ordering::Relaxed) {
        seen.calls += 1;
        if random.below(2) == 0 {
            let key = hot_key(random.below(HOT_KEYS as u64) as usize);
            let command = if random.below(4) == 0 {
                "RATELIMIT.PEEK"
            } else {
                "RATELIMIT.CHECK"
            };
            let reply: Vec<i64> = run(con, &[command, &key, window, &HOT_MAX.to_string()]);
            if command == "RATELIMIT.CHECK" && reply[0] == 1 {
                *seen.hot_admitted.entry(key).or_default() += 1;
            }
            continue;
        }
        let key = &mine[random.below(mine.len() as u64) as usize];
        let count = seen.owned.entry(key.clone()).or_default();
        match random.below(20) {
            0..=11 => {
                let cost = 1 + random.below(2);
                let reply: Vec<i64> = run(
                    con,
                    &[
                        "RATELIMIT.CHECK",
                        key,
                        window,
                        &OWNED_MAX.to_string(),
                        "COST",
                        &cost.to_string(),
                    ],
                );
                if reply[0] == 1 {
                    *count += cost;
                }
                assert_eq!(reply[1] as u64, OWNED_MAX - *count, "{key}: remaining");
            }
            12..=14 => {
                let reply: Vec<i64> = run(
                    con,
                    &["RATELIMIT.PEEK", key, window, &OWNED_MAX.to_string()],
                );
                assert_eq!(reply[1] as u64, OWNED_MAX - *count, "{key}: remaining");
            }
            15..=17 => {
                let refunded: u64 = run(con, &["RATELIMIT.UNDO", key, "COST", "2"]);
                assert_eq!(refunded, (*count).min(2), "{key}: refunded");
                *count -= refunded;
            }
            _ => {
                run::<i64>(con, &["DEL", key]);
                *count = 0;
            }
        }
    }
    seen
}

/// `used_memory_dataset`: used memory less Redis's own overhead (client
/// buffers, replication backlog, hash tables), where a leaked log shows.
fn dataset_memory(con: &mut Connection) -> i64 {
    info_field(con, "memory", "used_memory_dataset").expect("used_memory_dataset in INFO")
}

#[test]
fn survives_load_background_saves_and_kill_9() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    // Long enough that nothing expires before the checks after the restart.
    let window_ms = (seconds + 20) * 1000;
    let window = window_ms.to_string();
    // A small backlog, so that its filling up does not pass for a leak.
    let mut master = Server::start(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--repl-backlog-size",
        "16kb",
    ]);
    let replica = Server::start(&[
        "--replicaof",
        "127.0.0.1",
        &master.port.to_string(),
        "--repl-backlog-size",
        "16kb",
    ]);
    let (mut m, mut r) = (master.connect(), replica.connect());
    wait_for_replica(&mut m, &mut r);
    let replica_baseline = dataset_memory(&mut r);

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|index| {
            let (stop, window) = (Arc::clone(&stop), window.clone());
            let mut con = master.connect();
            std::thread::spawn(move || client(&mut con, index, &window, &stop))
        })
        .collect();
    let started = Instant::now();
    sleep(Duration::from_secs(seconds) / 3);
    run::<String>(&mut m, &["BGSAVE"]);
    sleep(Duration::from_secs(seconds) / 3);
    let _: redis::Value = run(&mut m, &["BGREWRITEAOF"]);
    sleep(Duration::from_secs(seconds).saturating_sub(started.elapsed()));
    stop.store(true, Ordering::Relaxed);
    let seen: Vec<Seen> = clients
        .into_iter()
        .map(|c| c.join().expect("client"))
        .collect();
    let calls: u64 = seen.iter().map(|s| s.calls).sum();

    let mut hot: HashMap<String, u64> = HashMap::new();
    for s in &seen {
        for (key, n) in &s.hot_admitted {
            *hot.entry(key.clone()).or_default() += n;
        }
    }
    for (key, admitted) in &hot {
        assert!(
            *admitted <= HOT_MAX,
            "{key} admitted {admitted} in one window, max {HOT_MAX}"
        );
    }

    wait_for_replica(&mut m, &mut r);
    let before = all_digests(&mut m);
    assert_eq!(
        all_digests(&mut r),
        before,
        "the replica agrees with the master"
    );
    wait_for_background_saves(&mut m);

    master.kill();
    master.relaunch();
    let mut m = master.connect();
    assert_eq!(
        all_digests(&mut m),
        before,
        "the AOF brought back every log"
    );
    let peek = |con: &mut Connection, key: &str, max: u64| -> u64 {
        run::<Vec<i64>>(con, &["RATELIMIT.PEEK", key, &window, &max.to_string()])[1] as u64
    };
    for s in &seen {
        for (key, count) in &s.owned {
            assert_eq!(
                peek(&mut m, key, OWNED_MAX),
                OWNED_MAX - count,
                "{key} after kill -9"
            );
        }
    }
    for i in 0..HOT_KEYS {
        let key = hot_key(i);
        let admitted = hot.get(&key).copied().unwrap_or(0);
        assert_eq!(
            peek(&mut m, &key, HOT_MAX),
            HOT_MAX - admitted,
            "{key} after kill -9"
        );
    }
    wait_for_replica(&mut m, &mut r);
    assert_eq!(
        all_digests(&mut r),
        before,
        "the replica agrees after the restart"
    );

    // Every window passes; keys expire on the master, which deletes them
    // on the replica too; the replica's memory returns to its start.
    let deadline = Instant::now() + Duration::from_millis(window_ms) + Duration::from_secs(30);
    loop {
        let (on_master, on_replica): (i64, i64) =
            (run(&mut m, &["DBSIZE"]), run(&mut r, &["DBSIZE"]));
        if on_master == 0 && on_replica == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "keys outlived their windows: {on_master} on the master, {on_replica} on the replica"
        );
        sleep(Duration::from_millis(200));
    }
    let after = dataset_memory(&mut r);
    eprintln!(
        "soak: {calls} calls in {seconds} s on {CONNECTIONS} connections; replica used_memory_dataset {replica_baseline} before, {after} after"
    );
    // An emptied database keeps its hash tables (keys and expiries) until
    // Redis shrinks them, and INFO counts them as dataset while no key is
    // left: 8 bytes a slot. Leaked logs would be ~100 bytes a key more.
    let tables = 2 * 8 * ((OWNED_KEYS + HOT_KEYS).next_power_of_two() as i64);
    assert!(
        after - replica_baseline < tables + (64 << 10),
        "replica dataset memory grew from {replica_baseline} to {after}"
    );
}
