//! Counters since the module loaded, shown by `INFO ratelimit`.

use crate::module::config;
use redis_module::raw;
use std::sync::atomic::{AtomicU64, Ordering};

/// A counter only the main thread writes: a plain load and store, with no
/// locked read-modify-write on the hot path. Atomic only so that a static
/// may hold it. It saturates at `i64::MAX`, the most INFO shows, rather
/// than wrapping into negative numbers (units of COST add up fast).
pub struct Counter(AtomicU64);

impl Counter {
    const fn new() -> Counter {
        Counter(AtomicU64::new(0))
    }

    pub fn add(&self, n: u64) {
        let sum = self.0.load(Ordering::Relaxed).saturating_add(n);
        self.0.store(sum.min(i64::MAX as u64), Ordering::Relaxed);
    }

    fn get(&self) -> i64 {
        i64::try_from(self.0.load(Ordering::Relaxed)).unwrap_or(i64::MAX)
    }
}

pub static CHECKS: Counter = Counter::new();
pub static ALLOWED: Counter = Counter::new();
pub static PEEKS: Counter = Counter::new();
pub static UNDOS: Counter = Counter::new();
pub static UNITS_RECORDED: Counter = Counter::new();
pub static UNITS_REFUNDED: Counter = Counter::new();
pub static RECORDS_REPLAYED: Counter = Counter::new();
pub static LOG_FULL: Counter = Counter::new();
pub static DEFRAG_MOVED: Counter = Counter::new();
pub static BLOCKS_STARTED: Counter = Counter::new();
pub static UNBLOCKS: Counter = Counter::new();
pub static CHARGES: Counter = Counter::new();
pub static CHARGES_OVER: Counter = Counter::new();
pub static UNITS_CHARGED: Counter = Counter::new();
pub static GCRA_CHECKS: Counter = Counter::new();
pub static GCRA_ALLOWED: Counter = Counter::new();
pub static GCRA_PEEKS: Counter = Counter::new();
pub static GCRA_TOKENS: Counter = Counter::new();
pub static GCRA_CHARGES: Counter = Counter::new();
pub static GCRA_CHARGES_OVER: Counter = Counter::new();
pub static GCRA_REFUNDS: Counter = Counter::new();
pub static GCRA_TOKENS_REFUNDED: Counter = Counter::new();

const FIELDS: [(&str, &Counter); 22] = [
    ("checks", &CHECKS),
    ("allowed", &ALLOWED),
    ("peeks", &PEEKS),
    ("undos", &UNDOS),
    ("units_recorded", &UNITS_RECORDED),
    ("units_refunded", &UNITS_REFUNDED),
    ("records_replayed", &RECORDS_REPLAYED),
    ("log_full", &LOG_FULL),
    ("defrag_moved", &DEFRAG_MOVED),
    ("blocks_started", &BLOCKS_STARTED),
    ("unblocks", &UNBLOCKS),
    ("charges", &CHARGES),
    ("charges_over", &CHARGES_OVER),
    ("units_charged", &UNITS_CHARGED),
    ("gcra_checks", &GCRA_CHECKS),
    ("gcra_allowed", &GCRA_ALLOWED),
    ("gcra_peeks", &GCRA_PEEKS),
    ("gcra_tokens", &GCRA_TOKENS),
    ("gcra_charges", &GCRA_CHARGES),
    ("gcra_charges_over", &GCRA_CHARGES_OVER),
    ("gcra_refunds", &GCRA_REFUNDS),
    ("gcra_tokens_refunded", &GCRA_TOKENS_REFUNDED),
];

/// The INFO callback: sections `ratelimit_stats` and `ratelimit_config`.
pub extern "C" fn info(ctx: *mut raw::RedisModuleInfoCtx, _for_crash_report: i32) {
    raw::add_info_section(ctx, Some("stats"));
    for (name, counter) in FIELDS {
        raw::add_info_field_long_long(ctx, name, counter.get());
    }
    // Both saturate; once `checks` has, `denied` is no longer exact.
    raw::add_info_field_long_long(ctx, "denied", CHECKS.get().saturating_sub(ALLOWED.get()));
    raw::add_info_field_long_long(
        ctx,
        "gcra_limited",
        GCRA_CHECKS.get().saturating_sub(GCRA_ALLOWED.get()),
    );
    raw::add_info_section(ctx, Some("config"));
    raw::add_info_field_str(ctx, "version", env!("CARGO_PKG_VERSION"));
    raw::add_info_field_long_long(ctx, "max_entries", config::max_entries() as i64);
    raw::add_info_field_str(ctx, "aliases", &config::registered_aliases());
}
