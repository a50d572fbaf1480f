//! The token bucket's commands: `RATELIMIT.GCRA`, the drop-in names
//! `CL.THROTTLE` and `GCRA` (registered when asked for at load), and the
//! replicated `RATELIMIT.GCRASET`. Parse, open the key, ask the core
//! (`crate::gcra`), store what an allowed call charged, reply, replicate.

use crate::args::{self, GcraSyntax};
use crate::gcra::{self, Bucket, Decision, Units};
use crate::module::boundary::{run_command, Arg, CommandError, Handler};
use crate::module::commands::{clock, ensure_replayed, raw_command, reply_replayed};
use crate::module::events::{self, Change};
use crate::module::key::WriteKey;
use crate::module::replication;
use crate::module::stats;
use redis_module::raw;
use redis_module::Context;
use std::os::raw::c_int;

raw_command!(gcra_command, gcra);
raw_command!(cell_throttle_command, cell_throttle);
raw_command!(redis_gcra_command, redis_gcra);
raw_command!(gcra_set_command, gcra_set);

fn gcra(ctx: &Context, args: &[Arg]) -> Result<(), CommandError> {
    throttle(ctx, args, GcraSyntax::Module)
}

fn cell_throttle(ctx: &Context, args: &[Arg]) -> Result<(), CommandError> {
    throttle(ctx, args, GcraSyntax::Cell)
}

fn redis_gcra(ctx: &Context, args: &[Arg]) -> Result<(), CommandError> {
    throttle(ctx, args, GcraSyntax::Redis)
}

/// One GCRA call in any spelling: an allowed request of at least one token
/// stores its bucket and the key's expiry (when the bucket is empty),
/// publishes `ratelimit.recorded` and reaches replicas and the AOF as
/// GCRASET; anything else changes nothing.
fn throttle(ctx: &Context, args: &[Arg], syntax: GcraSyntax) -> Result<(), CommandError> {
    let call = args::parse_gcra(args, syntax)?;
    let mut key = WriteKey::open(ctx, call.key);
    let slot = key.slot::<Bucket>()?;
    let verdict = gcra::decide(slot.state(), clock(), &call.limit, call.tokens);
    if let Some(charge) = verdict.charge {
        slot.put(charge.bucket);
        key.expire_at(charge.expires_at);
        events::changed(ctx.ctx, call.key, &[Change::Recorded]);
        replication::replicate_charge(ctx, call.key, &charge);
        stats::GCRA_ALLOWED.add(1);
        stats::GCRA_TOKENS.add(call.tokens);
    }
    match call.tokens {
        0 => stats::GCRA_PEEKS.add(1),
        _ => stats::GCRA_CHECKS.add(1),
    }
    reply(ctx, &verdict.decision, call.units);
    Ok(())
}

/// redis-cell's five integers, an array in RESP2 and RESP3 alike (as
/// CHECK's, for the same reason).
fn reply(ctx: &Context, decision: &Decision, units: Units) {
    raw::reply_with_array(ctx.ctx, 5);
    for value in decision.reply(units) {
        raw::reply_with_long_long(ctx.ctx, value);
    }
}

/// The master's bucket, stored as it was, with the master's expiry (none
/// for 0, as an AOF rewrite writes it before Redis's PEXPIREAT).
fn gcra_set(ctx: &Context, args: &[Arg]) -> Result<(), CommandError> {
    ensure_replayed(ctx, replication::GCRA_SET_COMMAND)?;
    let call = args::parse_gcra_set(args)?;
    let mut key = WriteKey::open(ctx, call.key);
    key.slot::<Bucket>()?.put(call.bucket);
    match call.expires_at {
        Some(at) => key.expire_at(at),
        None => key.persist(),
    }
    events::changed(ctx.ctx, call.key, &[Change::Recorded]);
    reply_replayed(ctx)
}
