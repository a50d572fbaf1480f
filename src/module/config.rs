//! Settings, readable and writable with `CONFIG GET/SET ratelimit.*` and
//! given at load time as module arguments (`max-entries 5000000`).

use std::sync::atomic::{AtomicI64, Ordering};

pub const DEFAULT_MAX_ENTRIES: i64 = 1_000_000;
/// A log costs about one byte per entry, so this bounds a key near 1 GB.
pub const MAX_MAX_ENTRIES: i64 = 1_000_000_000;

/// The largest `max` a limit may have, so one key's log stays bounded.
pub static MAX_ENTRIES: AtomicI64 = AtomicI64::new(DEFAULT_MAX_ENTRIES);

pub fn max_entries() -> u64 {
    MAX_ENTRIES.load(Ordering::Relaxed).max(1) as u64
}
