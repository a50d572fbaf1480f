//! The commands: parse, open the key, ask the core, reply, replicate.

use crate::args;
use crate::limiter::{self, Decision};
use crate::log::{Millis, TimeLog};
use crate::module::boundary::{run_command, Arg, CommandError, Handler};
use crate::module::config;
use crate::module::key::LimiterKey;
use crate::module::replication;
use redis_module::raw::{self, KeyMode};
use redis_module::Context;
use std::ffi::CStr;
use std::os::raw::c_int;

/// Name, handler, flags: every command the module registers.
pub const COMMANDS: [(&CStr, RawCommand, &CStr); 4] = [
    (c"RATELIMIT.CHECK", check_command, c"write deny-oom fast"),
    (c"RATELIMIT.PEEK", peek_command, c"readonly fast"),
    (c"RATELIMIT.UNDO", undo_command, c"write deny-oom fast"),
    (replication::RECORD_COMMAND, record_command, c"write fast"),
];

type RawCommand =
    extern "C" fn(*mut raw::RedisModuleCtx, *mut *mut raw::RedisModuleString, c_int) -> c_int;

macro_rules! raw_command {
    ($name:ident, $handler:expr) => {
        extern "C" fn $name(
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

fn key_name(args: &[Arg]) -> *mut raw::RedisModuleString {
    args[1].as_ptr()
}

fn check(ctx: &Context, args: &[Arg]) -> Result<(), CommandError> {
    let request = args::parse_request(args, config::max_entries())?;
    let mut key = LimiterKey::open(ctx, key_name(args), KeyMode::READ | KeyMode::WRITE);
    let verdict = limiter::decide(key.log()?.as_deref(), clock(), &request);
    if verdict.decision.allowed {
        let log = match key.log()? {
            Some(log) => log,
            None => key.create(TimeLog::default()),
        };
        let expires_at = limiter::record(log, verdict.at, request.window(), request.cost());
        key.expire_at(expires_at);
        replication::replicate_record(
            ctx,
            key_name(args),
            verdict.at,
            request.window(),
            request.cost(),
        );
    }
    reply_decision(ctx, &verdict.decision);
    Ok(())
}

fn peek(ctx: &Context, args: &[Arg]) -> Result<(), CommandError> {
    let request = args::parse_request(args, config::max_entries())?;
    let mut key = LimiterKey::open(ctx, key_name(args), KeyMode::READ);
    let decision = limiter::peek(key.log()?.as_deref(), clock(), &request);
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
    let log = match key.log()? {
        Some(log) => log,
        None => key.create(TimeLog::default()),
    };
    let expires_at = limiter::record(log, entry.at, entry.window, entry.cost);
    key.expire_at(expires_at);
    replication::replicate_as_called(ctx);
    ctx.reply_simple_string("OK");
    Ok(())
}

/// `[allowed, remaining, retry_after_ms, reset_after_ms]`, built in place.
fn reply_decision(ctx: &Context, decision: &Decision) {
    raw::reply_with_array(ctx.ctx, 4);
    for field in [
        u64::from(decision.allowed),
        decision.remaining,
        decision.retry_after_ms,
        decision.reset_after_ms,
    ] {
        raw::reply_with_long_long(ctx.ctx, field as i64);
    }
}
