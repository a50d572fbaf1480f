//! The commands: parse, open the key, ask the core, reply, replicate.

use crate::args;
use crate::limiter::{self, Decision};
use crate::log::{Millis, TimeLog};
use crate::module::boundary::{run_command, Arg, CommandError, Handler};
use crate::module::config;
use crate::module::key::LimiterKey;
use crate::module::replication;
use crate::module::stats;
use redis_module::raw::{self, KeyMode};
use redis_module::{Context, ContextFlags};
use std::num::NonZeroU64;
use std::os::raw::c_int;

pub type RawCommand =
    extern "C" fn(*mut raw::RedisModuleCtx, *mut *mut raw::RedisModuleString, c_int) -> c_int;

macro_rules! raw_command {
    ($name:ident, $handler:expr) => {
        pub extern "C" fn $name(
            ctx: *mut raw::RedisModuleCtx,
            argv: *mut *mut raw::RedisModuleString,
            argc: c_int,
        ) -> c_int {
            const HANDLER: Handler = $handler;
            run_command(ctx, argv, argc, HANDLER)
        }
    };
}

raw_command!(check_command, check);
raw_command!(peek_command, peek);
raw_command!(undo_command, undo);
raw_command!(record_command, record);

/// The server's wall clock, read once per call.
fn clock() -> Millis {
    // SAFETY: presence is checked when the module loads.
    unsafe { raw::RedisModule_Milliseconds.expect("checked at load")() }
}

/// Every command's key is its first argument (arity checked by parsing).
fn key_name(args: &[Arg]) -> &Arg {
    &args[1]
}

/// Records `cost` entries at `at` in the key's log, creating it if need
/// be, and moves the key's expiry to when its newest entry expires.
fn record_entries(
    key: &mut LimiterKey,
    at: Millis,
    window: NonZeroU64,
    cost: NonZeroU64,
) -> Result<(), CommandError> {
    let log = match key.log()? {
        Some(log) => log,
        None => key.create(TimeLog::default()),
    };
    let expires_at = limiter::record(log, at, window, cost);
    key.expire_at(expires_at);
    Ok(())
}

fn check(ctx: &Context, args: &[Arg]) -> Result<(), CommandError> {
    let request = args::parse_request(args, config::max_entries())?;
    let mut key = LimiterKey::open(ctx, key_name(args), KeyMode::READ | KeyMode::WRITE);
    let verdict = limiter::decide(key.log()?.as_deref(), clock(), &request);
    stats::CHECKS.add(1);
    if verdict.decision.allowed {
        stats::ALLOWED.add(1);
        stats::ENTRIES_RECORDED.add(request.cost().get());
        record_entries(&mut key, verdict.at, request.window(), request.cost())?;
        // The window is argument 2; a COST, given at most once, is last.
        let cost_arg = (args.len() > 4).then(|| &args[args.len() - 1]);
        replication::replicate_record(ctx, key_name(args), verdict.at, &args[2], cost_arg);
    }
    reply_decision(ctx, &verdict.decision);
    Ok(())
}

fn peek(ctx: &Context, args: &[Arg]) -> Result<(), CommandError> {
    let request = args::parse_request(args, config::max_entries())?;
    let mut key = LimiterKey::open(ctx, key_name(args), KeyMode::READ);
    let decision = limiter::peek(key.log()?.as_deref(), clock(), &request);
    stats::PEEKS.add(1);
    reply_decision(ctx, &decision);
    Ok(())
}

fn undo(ctx: &Context, args: &[Arg]) -> Result<(), CommandError> {
    let count = args::parse_refund(args)?;
    let mut key = LimiterKey::open(ctx, key_name(args), KeyMode::READ | KeyMode::WRITE);
    let removed = match key.log()? {
        Some(log) => {
            let removed = limiter::refund(log, count);
            if log.is_empty() {
                key.delete();
            }
            removed
        }
        None => 0,
    };
    stats::UNDOS.add(1);
    stats::ENTRIES_REFUNDED.add(removed);
    if removed > 0 {
        replication::replicate_as_called(ctx);
    }
    raw::reply_with_long_long(ctx.ctx, removed as i64);
    Ok(())
}

fn record(ctx: &Context, args: &[Arg]) -> Result<(), CommandError> {
    if !replication::is_replayed(ctx) {
        return Err(CommandError::Invalid(
            "RATELIMIT.RECORD is internal: it only runs from the replication link or the AOF"
                .into(),
        ));
    }
    let entry = args::parse_record(args)?;
    let mut key = LimiterKey::open(ctx, key_name(args), KeyMode::READ | KeyMode::WRITE);
    record_entries(&mut key, entry.at, entry.window, entry.cost)?;
    stats::RECORDS_REPLAYED.add(1);
    replication::replicate_as_called(ctx);
    ctx.reply_simple_string("OK");
    Ok(())
}

/// RESP2: `[allowed, remaining, retry_after_ms, reset_after_ms]`; RESP3:
/// the same as a map with a boolean `allowed`. Built in place.
fn reply_decision(ctx: &Context, decision: &Decision) {
    let numbers = [
        (c"remaining", decision.remaining),
        (c"retry_after_ms", decision.retry_after_ms),
        (c"reset_after_ms", decision.reset_after_ms),
    ];
    if ctx.get_flags().contains(ContextFlags::FLAGS_RESP3) {
        raw::reply_with_map(ctx.ctx, 4);
        raw::reply_with_simple_string(ctx.ctx, c"allowed".as_ptr());
        raw::reply_with_bool(ctx.ctx, c_int::from(decision.allowed));
        for (name, value) in numbers {
            raw::reply_with_simple_string(ctx.ctx, name.as_ptr());
            raw::reply_with_long_long(ctx.ctx, value as i64);
        }
    } else {
        raw::reply_with_array(ctx.ctx, 4);
        raw::reply_with_long_long(ctx.ctx, i64::from(decision.allowed));
        for (_, value) in numbers {
            raw::reply_with_long_long(ctx.ctx, value as i64);
        }
    }
}
