//! What a server says about itself, and waiting on what it does in the
//! background.

use crate::commands::run;
use redis::Connection;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// A field of an INFO section, such as `redis_version` in `server`.
pub fn info_text(con: &mut Connection, section: &str, field: &str) -> Option<String> {
    let info: String = run(con, &["INFO", section]);
    info.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .map(|value| value.trim().to_string())
}

/// A numeric field of an INFO section, such as `used_memory` in `memory`.
pub fn info_field(con: &mut Connection, section: &str, field: &str) -> Option<i64> {
    info_text(con, section, field)?.parse().ok()
}

/// Polls `done` until it holds; fails with `what` after `patience`.
fn wait_until(patience: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + patience;
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        sleep(Duration::from_millis(20));
    }
}

/// Waits until the replica has applied everything the master had sent
/// when called. (WAIT would only cover writes made on the connection that
/// sends it, and the writes here come from many.)
pub fn wait_for_replica(master: &mut Connection, replica: &mut Connection) {
    let target =
        info_field(master, "replication", "master_repl_offset").expect("master_repl_offset");
    let mut applied = -1;
    wait_until(
        Duration::from_secs(60),
        "the replica never caught up with the master",
        || {
            let info: String = run(replica, &["INFO", "replication"]);
            applied = info_field(replica, "replication", "slave_repl_offset").unwrap_or(-1);
            info.contains("master_link_status:up") && applied >= target
        },
    );
}

/// Waits until no BGSAVE or AOF rewrite runs or is scheduled. (Generous,
/// for servers running under valgrind.)
pub fn wait_for_background_saves(con: &mut Connection) {
    wait_until(
        Duration::from_secs(120),
        "a background save or AOF rewrite never finished",
        || {
            let info: String = run(con, &["INFO", "persistence"]);
            [
                "rdb_bgsave_in_progress:0",
                "aof_rewrite_in_progress:0",
                "aof_rewrite_scheduled:0",
            ]
            .iter()
            .all(|idle| info.contains(idle))
        },
    );
}

/// Ok if this server defragments memory actively (built with Redis's own
/// jemalloc); else why not, for a test to say it skipped. Leaves it off.
pub fn can_defragment(con: &mut Connection) -> Result<(), String> {
    let set = |con: &mut Connection, value: &str| {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("activedefrag")
            .arg(value)
            .query::<()>(con)
    };
    match set(con, "yes").and_then(|()| set(con, "no")) {
        Ok(()) => Ok(()),
        Err(e) => {
            assert!(e.to_string().contains("Jemalloc"), "{e}");
            Err(format!(
                "this server ({}) has no active defragmentation: {e}",
                crate::server_binary()
            ))
        }
    }
}

/// Deletes two keys in three, leaving holes on every page of their
/// allocations; returns the keys kept.
pub fn fragment(con: &mut Connection, keys: Vec<String>) -> Vec<String> {
    let (kept, doomed): (Vec<(usize, String)>, _) =
        keys.into_iter().enumerate().partition(|(i, _)| i % 3 == 0);
    for chunk in doomed.chunks(1000) {
        let names: Vec<&String> = chunk.iter().map(|(_, key)| key).collect();
        redis::cmd("DEL").arg(names).query::<()>(con).expect("DEL");
    }
    kept.into_iter().map(|(_, key)| key).collect()
}

/// Runs active defragmentation, as eagerly as the server allows, until the
/// module has moved something (`ratelimit_defrag_moved` in INFO), then
/// turns it off; returns how many allocations it moved.
pub fn defragment(con: &mut Connection) -> i64 {
    let moved = |con: &mut Connection| {
        info_field(con, "ratelimit", "ratelimit_defrag_moved").expect("defrag_moved in INFO")
    };
    let before = moved(con);
    for (name, value) in [
        ("active-defrag-ignore-bytes", "1"),
        ("active-defrag-threshold-lower", "1"),
        ("active-defrag-cycle-min", "50"),
        ("active-defrag-cycle-max", "90"),
        ("activedefrag", "yes"),
    ] {
        run::<()>(con, &["CONFIG", "SET", name, value]);
    }
    wait_until(Duration::from_secs(60), "nothing moved", || {
        moved(con) > before
    });
    run::<()>(con, &["CONFIG", "SET", "activedefrag", "no"]);
    moved(con) - before
}
