//! What replicas and the AOF receive, so that they reach the master's state
//! whatever their own clocks say.
//!
//! An allowed `RATELIMIT.CHECK key window max [window max ...] [COST n]
//! [PRECISION p]` is propagated as `RATELIMIT.RECORD key at window cost
//! [precision]`, with its longest window: the decision is the master's,
//! and `at` is the time it recorded the request at; pruning under the
//! log's window and sharing a precision cell then happen alike everywhere.
//! A denied CHECK whose longest window is longer than the log's makes the
//! log keep that window, and is propagated as `RATELIMIT.WIDEN key window`
//! (no time: it drops nothing, and the key's expiry follows from its
//! newest entry). Any other denied CHECK, and PEEK, change nothing and
//! propagate nothing. UNDO reads no clock and is propagated as it was
//! called.
//!
//! A CHARGE (a settlement, recorded whatever the limits say) is propagated
//! as an allowed CHECK is, `RATELIMIT.RECORD key at window cost
//! [precision]` with the master's time, and an MCHARGE as an allowed
//! MCHECK is, one MRECORD: what replicas apply is what was recorded, and
//! they never decide (nor refuse) anything themselves.
//!
//! An allowed MCHECK is propagated as one command for all its keys,
//! `RATELIMIT.MRECORD numkeys key [key ...] at cost precision window
//! [window ...]`: the replica applies every key's record in one command,
//! and the master pays for one propagated command rather than a RECORD
//! per key in a MULTI/EXEC. `at` is the earliest of the keys' times: each
//! key's own is the later of the clock and its newest entry, which is
//! what RECORD makes of any earlier `at` on a log equal to the master's.
//!
//! A denial that starts a block is propagated as `RATELIMIT.BLOCKUNTIL key
//! until` with the master's absolute end of the block (after the call's
//! WIDEN, if it made one: the server wraps what one command propagates in
//! MULTI/EXEC). UNBLOCK decides on the master's clock, so what it lifted
//! is propagated as `RATELIMIT.BLOCKUNTIL key 0`, or as `DEL key` when the
//! key held nothing live and went.
//!
//! An allowed GCRA call (a token bucket, `RATELIMIT.GCRA` or an alias) is
//! propagated as what it stored, `RATELIMIT.GCRASET key at period level
//! expires_at`: the master's bucket and the key's absolute expiry. A
//! limited call, and one of 0 tokens, store nothing and propagate nothing.
//!
//! RECORD, WIDEN, BLOCKUNTIL and GCRASET could forge history if clients
//! could send them, so they only run from the master's link or while
//! loading the AOF.

use crate::args::LimitCall;
use crate::gcra::{Bucket, Charge};
use crate::log::Millis;
use crate::module::api::api;
use crate::module::boundary::Arg;
use crate::state::State;
use redis_module::{raw, Context, ContextFlags};
use std::cell::Cell;
use std::ffi::CStr;
use std::ptr;

pub const RECORD_COMMAND: &CStr = c"ratelimit.record";
pub const WIDEN_COMMAND: &CStr = c"ratelimit.widen";
pub const BLOCK_UNTIL_COMMAND: &CStr = c"ratelimit.blockuntil";
pub const MULTI_RECORD_COMMAND: &CStr = c"ratelimit.mrecord";
pub const GCRA_SET_COMMAND: &CStr = c"ratelimit.gcraset";

/// `RATELIMIT.GCRASET key at period level expires_at`: what an allowed
/// GCRA call stored (`at` shared by every call in the same millisecond).
pub fn replicate_charge(ctx: &Context, key: &Arg, charge: &Charge) {
    let bucket = charge.bucket;
    // SAFETY: the format names two RedisModuleStrings, alive, and three
    // long longs.
    unsafe {
        (api().replicate)(
            ctx.ctx,
            GCRA_SET_COMMAND.as_ptr(),
            c"sslll".as_ptr(),
            key.as_ptr(),
            SHARED.at(bucket.at()),
            bucket.period() as i64,
            bucket.level() as i64,
            charge.expires_at,
        )
    };
}

/// `RATELIMIT.MRECORD numkeys key [key ...] at cost precision window
/// [window ...]` for the allowed `calls` (every key's, in key order),
/// from the caller's own argument strings (`numkeys` as called, the
/// options every key shares) and the shared `at`.
pub fn replicate_multi_record<R>(
    ctx: &Context,
    numkeys: &Arg,
    calls: &[LimitCall<Arg, R>],
    at: Millis,
) {
    let Some(first) = calls.first() else {
        return;
    };
    let mut words = Vec::with_capacity(4 + 2 * calls.len());
    words.push(numkeys.as_ptr());
    words.extend(calls.iter().map(|c| c.key.as_ptr()));
    words.push(SHARED.at(at));
    words.push(first.cost.map_or_else(|| SHARED.one(), Arg::as_ptr));
    words.push(first.precision.map_or_else(|| SHARED.one(), Arg::as_ptr));
    words.extend(calls.iter().map(|c| c.longest_window.as_ptr()));
    // SAFETY: the format names one vector of RedisModuleStrings, all
    // alive, and its length; Redis takes its own reference to each.
    unsafe {
        (api().replicate)(
            ctx.ctx,
            MULTI_RECORD_COMMAND.as_ptr(),
            c"v".as_ptr(),
            words.as_ptr(),
            words.len(),
        )
    };
}

/// `RATELIMIT.BLOCKUNTIL key until` (0: lift the block).
pub fn replicate_block_until(ctx: &Context, key: &Arg, until: Millis) {
    // SAFETY: the format names a RedisModuleString, alive, and a long long.
    unsafe {
        (api().replicate)(
            ctx.ctx,
            BLOCK_UNTIL_COMMAND.as_ptr(),
            c"sl".as_ptr(),
            key.as_ptr(),
            until,
        )
    };
}

/// `DEL key`, for a key a command deleted on the master's clock.
pub fn replicate_delete(ctx: &Context, key: &Arg) {
    // SAFETY: the format names one RedisModuleString, alive.
    unsafe { (api().replicate)(ctx.ctx, c"DEL".as_ptr(), c"s".as_ptr(), key.as_ptr()) };
}

/// `RATELIMIT.WIDEN key window`, with the call's longest window as given.
pub fn replicate_widen(ctx: &Context, call: &LimitCall<Arg>) {
    let replicate = api().replicate;
    // SAFETY: the format names two RedisModuleStrings, both alive.
    unsafe {
        replicate(
            ctx.ctx,
            WIDEN_COMMAND.as_ptr(),
            c"ss".as_ptr(),
            call.key.as_ptr(),
            call.longest_window.as_ptr(),
        )
    };
}

/// Every argument is a string Redis only takes a reference to: the window,
/// cost and precision are the caller's own arguments and `at` is shared by
/// every call in the same millisecond, so replicating allocates nothing
/// per call but the command Redis builds.
pub fn replicate_record<R>(ctx: &Context, call: &LimitCall<Arg, R>, at: Millis) {
    let cost = call.cost.map_or_else(|| SHARED.one(), Arg::as_ptr);
    let replicate = api().replicate;
    let (name, key, at, window) = (
        RECORD_COMMAND.as_ptr(),
        call.key.as_ptr(),
        SHARED.at(at),
        call.longest_window.as_ptr(),
    );
    // SAFETY: each format names as many RedisModuleStrings, all alive.
    unsafe {
        match call.precision {
            Some(precision) => replicate(
                ctx.ctx,
                name,
                c"sssss".as_ptr(),
                key,
                at,
                window,
                cost,
                precision.as_ptr(),
            ),
            None => replicate(ctx.ctx, name, c"ssss".as_ptr(), key, at, window, cost),
        };
    }
}

/// Strings kept between calls. Commands only run on Redis's main thread,
/// which is the only one that touches these.
struct SharedStrings {
    one: Cell<*mut raw::RedisModuleString>,
    at: Cell<(Millis, *mut raw::RedisModuleString)>,
}

// SAFETY: only ever used from Redis's main thread (see above).
unsafe impl Sync for SharedStrings {}

static SHARED: SharedStrings = SharedStrings {
    one: Cell::new(ptr::null_mut()),
    at: Cell::new((0, ptr::null_mut())),
};

impl SharedStrings {
    fn one(&self) -> *mut raw::RedisModuleString {
        if self.one.get().is_null() {
            self.one.set(string_of(1));
        }
        self.one.get()
    }

    fn at(&self, at: Millis) -> *mut raw::RedisModuleString {
        let (cached_at, cached) = self.at.get();
        if !cached.is_null() && cached_at == at {
            return cached;
        }
        if !cached.is_null() {
            // SAFETY: our own reference; Redis holds its own on strings
            // still waiting to be propagated.
            unsafe { (api().free_string)(ptr::null_mut(), cached) };
        }
        let fresh = string_of(at);
        self.at.set((at, fresh));
        fresh
    }
}

fn string_of(n: i64) -> *mut raw::RedisModuleString {
    // SAFETY: a context-free string, freed by us (see `at`) or kept.
    unsafe { (api().create_string_from_long_long)(ptr::null_mut(), n) }
}

pub fn replicate_as_called(ctx: &Context) {
    raw::replicate_verbatim(ctx.ctx);
}

/// True when the running command came from the master or the AOF.
pub fn is_replayed(ctx: &Context) -> bool {
    ctx.get_flags()
        .intersects(ContextFlags::REPLICATED | ContextFlags::LOADING)
}

/// AOF rewrite: one RECORD per entry, with the log's window (under which
/// none of its entries has expired, relative to the newer ones), then the
/// block's BLOCKUNTIL if the key has one, then PERSIST. Redis follows a
/// rewritten key with its PEXPIREAT if it has an expiry, so the PERSIST
/// only matters for a key whose expiry was removed.
pub fn emit_state(aof: *mut raw::RedisModuleIO, key: *mut raw::RedisModuleString, state: &State) {
    let view = state.log().view();
    let window = view.window as i64;
    for entry in view.entries() {
        // SAFETY: the format names a RedisModuleString and three long longs.
        unsafe {
            (api().emit_aof)(
                aof,
                RECORD_COMMAND.as_ptr(),
                c"slll".as_ptr(),
                key,
                entry.at,
                window,
                entry.cost as i64,
            );
        }
    }
    if let Some(until) = state.blocked_until() {
        // SAFETY: the format names a RedisModuleString and a long long.
        unsafe {
            (api().emit_aof)(
                aof,
                BLOCK_UNTIL_COMMAND.as_ptr(),
                c"sl".as_ptr(),
                key,
                until,
            );
        }
    }
    // SAFETY: the format names one RedisModuleString.
    unsafe {
        (api().emit_aof)(aof, c"PERSIST".as_ptr(), c"s".as_ptr(), key);
    }
}

/// AOF rewrite of a bucket: its GCRASET without an expiry (Redis follows
/// a rewritten key with its PEXPIREAT if it has one).
pub fn emit_bucket(
    aof: *mut raw::RedisModuleIO,
    key: *mut raw::RedisModuleString,
    bucket: &Bucket,
) {
    // SAFETY: the format names a RedisModuleString and four long longs.
    unsafe {
        (api().emit_aof)(
            aof,
            GCRA_SET_COMMAND.as_ptr(),
            c"sllll".as_ptr(),
            key,
            bucket.at(),
            bucket.period() as i64,
            bucket.level() as i64,
            0 as std::os::raw::c_longlong,
        );
    }
}
