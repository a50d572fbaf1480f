//! The token bucket's commands: `RATELIMIT.GCRA`, the drop-in names
//! `CL.THROTTLE` and `GCRA` (registered when asked for at load), and the
//! replicated `RATELIMIT.GCRASET`. Parse, open the key, ask the core
//! (`crate::gcra`), store what an allowed call charged, reply, replicate.

use crate::args::{self, GcraOp, GcraSyntax};
use crate::gcra::{self, Bucket, Write};
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
/// GCRASET; anything else changes nothing. `CHARGE` and `REFUND`
/// (`RATELIMIT.GCRA` only) settle instead (see `settle`).
fn throttle(ctx: &Context, args: &[Arg], syntax: GcraSyntax) -> Result<(), CommandError> {
    let call = args::parse_gcra(args, syntax)?;
    if call.op != GcraOp::Request {
        return settle(ctx, &call);
    }
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
    reply(ctx, verdict.decision.reply(call.units));
    Ok(())
}

/// `CHARGE` (issue 27's settlement): the tokens charged whatever the
/// bucket holds, even past full, never limited (refused whole only past
/// what a bucket holds exactly); stored, expiring when the bucket is
/// empty, `ratelimit.recorded`, replicated as GCRASET. `REFUND`: up to
/// the tokens taken back from what the bucket holds now; a bucket left
/// holding some is stored as a charge is, one left empty is deleted
/// (`ratelimit.refunded` then `ratelimit.deleted`, replicated as DEL).
/// TOKENS 0, and a refund on a missing key, change nothing.
fn settle(ctx: &Context, call: &args::GcraCall<Arg>) -> Result<(), CommandError> {
    let mut key = WriteKey::open(ctx, call.key);
    let slot = key.slot::<Bucket>()?;
    let now = clock();
    let charging = call.op == GcraOp::Charge;
    let settled = if charging {
        gcra::charge(slot.state(), now, &call.limit, call.tokens)
            .map_err(|_| CommandError::Invalid(args::GCRA_OVERFLOW.into()))?
    } else {
        gcra::refund(slot.state(), now, &call.limit, call.tokens)
    };
    match settled.write {
        Some(Write::Store(charge)) => {
            slot.put(charge.bucket);
            key.expire_at(charge.expires_at);
            let change = match charging {
                true => Change::Recorded,
                false => Change::Refunded,
            };
            events::changed(ctx.ctx, call.key, &[change]);
            replication::replicate_charge(ctx, call.key, &charge);
        }
        Some(Write::Delete) => {
            key.delete();
            events::changed(ctx.ctx, call.key, &[Change::Refunded, Change::Deleted]);
            replication::replicate_delete(ctx, call.key);
        }
        None => {}
    }
    if charging {
        stats::GCRA_CHARGES.add(1);
        stats::GCRA_TOKENS.add(call.tokens);
        if settled.settlement.over > 0 {
            stats::GCRA_CHARGES_OVER.add(1);
        }
    } else {
        stats::GCRA_REFUNDS.add(1);
        // The tokens asked back by a refund that changed its key (at
        // most what it held was taken).
        if settled.write.is_some() {
            stats::GCRA_TOKENS_REFUNDED.add(call.tokens);
        }
    }
    reply(ctx, settled.settlement.reply(call.units));
    Ok(())
}

/// Five integers, an array in RESP2 and RESP3 alike (as CHECK's, for the
/// same reason).
fn reply(ctx: &Context, fields: [i64; 5]) {
    raw::reply_with_array(ctx.ctx, 5);
    for value in fields {
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
