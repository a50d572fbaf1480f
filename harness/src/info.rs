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
