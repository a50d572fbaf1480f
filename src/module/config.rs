//! Settings, readable and writable with `CONFIG GET/SET ratelimit.*` and
//! given at load time as module arguments (`max-entries 5000000`).

use std::sync::atomic::{AtomicI64, Ordering};

pub const DEFAULT_MAX_ENTRIES: i64 = 1_000_000;
/// An entry takes 1 to 2 bytes on a busy key (at most 20), so this bounds
/// a key's log near 2 GB.
pub const MAX_MAX_ENTRIES: i64 = 1_000_000_000;

/// The most entries (recorded requests, or groups of them sharing a
/// millisecond or a PRECISION cell) one key's log may hold: a bound on a
/// key's memory whatever its limits. It bounds no `max` or COST.
pub static MAX_ENTRIES: AtomicI64 = AtomicI64::new(DEFAULT_MAX_ENTRIES);

pub fn max_entries() -> u64 {
    MAX_ENTRIES.load(Ordering::Relaxed).max(1) as u64
}
