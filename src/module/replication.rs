//! What replicas and the AOF receive, so that they reach the master's state
//! whatever their own clocks say.
//!
//! An allowed `RATELIMIT.CHECK key window max [COST n]` is propagated as
//! `RATELIMIT.RECORD key at window cost`: the decision is the master's, and
//! `at` is the time it recorded the request at. A denied CHECK and PEEK
//! change nothing and propagate nothing. UNDO reads no clock and is
//! propagated as it was called.
//!
//! RECORD could forge history if clients could send it, so it only runs
//! from the master's link or while loading the AOF.

use crate::args::MAX_WINDOW_MS;
use crate::log::{Millis, TimeLog};
use redis_module::{raw, Context, ContextFlags};
use std::ffi::CStr;
use std::num::NonZeroU64;

pub const RECORD_COMMAND: &CStr = c"RATELIMIT.RECORD";

/// Key, then `at`, `window` and `cost` as integers: Redis formats them
/// itself, so nothing is allocated here.
const RECORD_FORMAT: &CStr = c"slll";

pub fn replicate_record(
    ctx: &Context,
    key: *mut raw::RedisModuleString,
    at: Millis,
    window: NonZeroU64,
    cost: NonZeroU64,
) {
    // SAFETY: the format names a RedisModuleString and three long longs.
    unsafe {
        raw::RedisModule_Replicate.expect("in every Redis")(
            ctx.ctx,
            RECORD_COMMAND.as_ptr(),
            RECORD_FORMAT.as_ptr(),
            key,
            at,
            window.get() as i64,
            cost.get() as i64,
        );
    }
}

pub fn replicate_as_called(ctx: &Context) {
    raw::replicate_verbatim(ctx.ctx);
}

/// True when the running command came from the master or the AOF.
pub fn is_replayed(ctx: &Context) -> bool {
    ctx.get_flags()
        .intersects(ContextFlags::REPLICATED | ContextFlags::LOADING)
}

/// AOF rewrite: one RECORD per run of entries at the same time, with a
/// window wide enough to prune none of them, then PERSIST. Redis follows a
/// rewritten key with its PEXPIREAT if it has an expiry, so the PERSIST
/// only matters for a key whose expiry was removed.
pub fn emit_log(aof: *mut raw::RedisModuleIO, key: *mut raw::RedisModuleString, log: &TimeLog) {
    let (Some(oldest), Some(newest)) = (log.oldest(), log.newest()) else {
        return;
    };
    let span = newest.abs_diff(oldest).saturating_add(1).min(MAX_WINDOW_MS);
    let mut entries = log.iter().peekable();
    while let Some(at) = entries.next() {
        let mut count = 1i64;
        while entries.next_if_eq(&at).is_some() {
            count += 1;
        }
        // SAFETY: the format names a RedisModuleString and three long longs.
        unsafe {
            raw::RedisModule_EmitAOF.expect("in every Redis")(
                aof,
                RECORD_COMMAND.as_ptr(),
                RECORD_FORMAT.as_ptr(),
                key,
                at,
                span as i64,
                count,
            );
        }
    }
    // SAFETY: the format names one RedisModuleString.
    unsafe {
        raw::RedisModule_EmitAOF.expect("in every Redis")(
            aof,
            c"PERSIST".as_ptr(),
            c"s".as_ptr(),
            key,
        );
    }
}
