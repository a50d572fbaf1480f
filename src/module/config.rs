//! Settings, readable and writable with `CONFIG GET/SET ratelimit.*` and
//! given at load time as module arguments (`max-entries 5000000`).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

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

/// The drop-in names to register at load (`aliases cl.throttle,gcra`):
/// read once, when the module loads, so it cannot be changed afterwards.
pub static ALIASES: Mutex<String> = Mutex::new(String::new());

/// The drop-in names registered, for INFO: those asked for that the
/// server did not already have.
pub static REGISTERED_ALIASES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

/// The aliases asked for, as written.
pub fn aliases() -> String {
    ALIASES
        .lock()
        .map_or_else(|e| e.into_inner().clone(), |a| a.clone())
}

/// The aliases registered, comma-separated.
pub fn registered_aliases() -> String {
    REGISTERED_ALIASES
        .lock()
        .map_or_else(|e| e.into_inner().join(","), |a| a.join(","))
}
