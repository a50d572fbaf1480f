//! The commands: parse, open the key, ask the core, reply, replicate.

use crate::args;
use crate::args::LimitCall;
use crate::limiter::{
    self, Charge, Decision, Joint, JointSettlement, Record, Request, Settlement, Write,
};
use crate::log::{Millis, TimeLog};
use crate::module::api::api;
use crate::module::boundary::{run_command, Arg, CommandError, Handler};
use crate::module::config;
use crate::module::events::{self, Change};
use crate::module::key::{ReadKey, Slot, WriteKey};
use crate::module::replication;
use crate::module::stats;
use crate::state::State;
use redis_module::raw;
use redis_module::Context;
use std::ffi::CStr;
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

// For the other command files of the skin.
pub(crate) use raw_command;

raw_command!(check_command, check);
raw_command!(peek_command, peek);
raw_command!(undo_command, undo);
raw_command!(record_command, record);
raw_command!(widen_command, widen);
raw_command!(mcheck_command, mcheck);
raw_command!(mpeek_command, mpeek);
raw_command!(mundo_command, mundo);
raw_command!(unblock_command, unblock);
raw_command!(block_until_command, block_until);
raw_command!(multi_record_command, multi_record);
raw_command!(charge_command, charge);
raw_command!(mcharge_command, mcharge);

/// The server's wall clock, read once per call.
pub fn clock() -> Millis {
    // SAFETY: presence is checked when the module loads.
    unsafe { (api().milliseconds)() }
}

fn check(ctx: &Context, args: &[Arg]) -> Result<(), CommandError> {
    let call = args::parse_limit_call(args)?;
    let mut key = WriteKey::open(ctx, call.key);
    let slot = key.slot()?;
    let verdict = limiter::decide(slot.state(), clock(), &call.request);
    if let Some(write) = verdict.write {
        if let (Write::Record(record), Some(state)) = (&write, slot.state()) {
            ensure_room(state.log(), record)?;
        }
        let expires_at = limiter::apply(slot.or_create(), &write);
        key.expire_at(expires_at);
        announce(ctx, &call, &write);
    }
    stats::CHECKS.add(1);
    if verdict.decision.allowed {
        stats::ALLOWED.add(1);
    }
    reply_decision(ctx, &verdict.decision);
    Ok(())
}

/// What a CHECK's applied write tells the server: the keyspace event, the
/// counters, and what replicas and the AOF receive.
fn announce(ctx: &Context, call: &LimitCall<Arg>, write: &Write) {
    notify(ctx, call.key, write);
    replicate(ctx, call, write);
}

/// The keyspace event and the counters of an applied write.
fn notify(ctx: &Context, key: &Arg, write: &Write) {
    match *write {
        Write::Record(record) => {
            events::changed(ctx.ctx, key, &[Change::Recorded]);
            stats::UNITS_RECORDED.add(record.cost.get());
        }
        Write::Widen(_) => events::changed(ctx.ctx, key, &[Change::Widened]),
        Write::Block { widen, .. } => {
            let changes: &[Change] = match widen {
                Some(_) => &[Change::Widened, Change::Blocked],
                None => &[Change::Blocked],
            };
            events::changed(ctx.ctx, key, changes);
            stats::BLOCKS_STARTED.add(1);
        }
    }
}

/// What replicas and the AOF receive for one key's applied write.
fn replicate(ctx: &Context, call: &LimitCall<Arg>, write: &Write) {
    match *write {
        Write::Record(record) => replication::replicate_record(ctx, call, record.at),
        Write::Widen(_) => replication::replicate_widen(ctx, call),
        Write::Block { until, widen } => {
            if widen.is_some() {
                replication::replicate_widen(ctx, call);
            }
            replication::replicate_block_until(ctx, call.key, until);
        }
    }
}

/// CHARGE: a settlement, recorded at the key's decision time whatever its
/// limits say and whether or not it is blocked (a block stays; none
/// starts), unless a count the key holds would pass 2^63 - 1 or its log
/// is full; then measured against the limits. Replicated as an allowed
/// CHECK is (RECORD, with the master's time).
fn charge(ctx: &Context, args: &[Arg]) -> Result<(), CommandError> {
    let call = args::parse_charge(args)?;
    let mut key = WriteKey::open(ctx, call.key);
    let slot = key.slot()?;
    let now = clock();
    let record = limiter::charge(slot.state(), now, &call.request).map_err(|_| overflow())?;
    if let Some(state) = slot.state() {
        ensure_room(state.log(), &record)?;
    }
    let state = slot.or_create();
    let expires_at = limiter::apply(state, &Write::Record(record));
    let settlement = limiter::settled(state, now, &call.request);
    key.expire_at(expires_at);
    events::changed(ctx.ctx, call.key, &[Change::Recorded]);
    replication::replicate_record(ctx, &call, record.at);
    count_charge(record.cost.get(), 1, settlement.over > 0);
    reply_settlement(ctx, &settlement);
    Ok(())
}

/// MCHARGE: every key is opened (its type checked), then each key's
/// charge checked in key order (overflow, room in its log) before any key
/// changes; then each records as CHARGE on it alone would. Replicated as
/// an allowed MCHECK is: one MRECORD over every key.
fn mcharge(ctx: &Context, args: &[Arg]) -> Result<(), CommandError> {
    if report_keys(ctx, args) {
        return Ok(());
    }
    let call = args::parse_multi_charge(args)?;
    let mut keys: Vec<WriteKey> = call
        .calls
        .iter()
        .map(|c| WriteKey::open(ctx, c.key))
        .collect();
    let slots = keys
        .iter_mut()
        .map(WriteKey::slot)
        .collect::<Result<Vec<Slot>, CommandError>>()?;
    let now = clock();
    let mut records = Vec::with_capacity(slots.len());
    for (slot, c) in slots.iter().zip(&call.calls) {
        let record = limiter::charge(slot.state(), now, &c.request)
            .map_err(|_| naming(c.key, overflow()))?;
        if let Some(state) = slot.state() {
            ensure_room(state.log(), &record).map_err(|error| naming(c.key, error))?;
        }
        records.push(record);
    }
    let (joint, expiries) = {
        let states: Vec<&mut State> = slots.into_iter().map(Slot::or_create).collect();
        let mut expiries = Vec::with_capacity(states.len());
        let mut settled: Vec<(&State, &Charge)> = Vec::with_capacity(states.len());
        for ((state, record), c) in states.into_iter().zip(&records).zip(&call.calls) {
            expiries.push(limiter::apply(state, &Write::Record(*record)));
            settled.push((state, &c.request));
        }
        (limiter::settled_all(&settled, now), expiries)
    };
    for ((key, c), expires_at) in keys.iter().zip(&call.calls).zip(expiries) {
        key.expire_at(expires_at);
        events::changed(ctx.ctx, c.key, &[Change::Recorded]);
    }
    if let Some(at) = records.iter().map(|r| r.at).min() {
        replication::replicate_multi_record(ctx, call.numkeys, &call.calls, at);
    }
    let cost = records.first().map_or(0, |r| r.cost.get());
    count_charge(cost, records.len() as u64, !joint.over.is_empty());
    reply_joint_settlement(ctx, &joint);
    Ok(())
}

/// A charge that would make a count a key holds pass 2^63 - 1.
fn overflow() -> CommandError {
    CommandError::Invalid(args::OVERFLOW.into())
}

/// INFO's counters of a CHARGE or MCHARGE: `cost` recorded in `keys`
/// keys, and whether it left one over its limits.
fn count_charge(cost: u64, keys: u64, over: bool) {
    stats::CHARGES.add(1);
    if over {
        stats::CHARGES_OVER.add(1);
    }
    for _ in 0..keys {
        stats::UNITS_CHARGED.add(cost);
        stats::UNITS_RECORDED.add(cost);
    }
}

/// MCHECK: every key is opened and read, and every write checked (type,
/// room in the log), before any key changes; then each key records (or
/// keeps its longer window, or is blocked) as CHECK on it alone would. An
/// allowed call reaches replicas and the AOF as one MRECORD over every
/// key; a denied one's WIDENs and BLOCKUNTILs as one MULTI/EXEC, which the
/// server wraps around what one command replicates.
fn mcheck(ctx: &Context, args: &[Arg]) -> Result<(), CommandError> {
    if report_keys(ctx, args) {
        return Ok(());
    }
    let call = args::parse_multi_call(args)?;
    let mut keys: Vec<WriteKey> = call
        .calls
        .iter()
        .map(|c| WriteKey::open(ctx, c.key))
        .collect();
    let slots = keys
        .iter_mut()
        .map(WriteKey::slot)
        .collect::<Result<Vec<Slot>, CommandError>>()?;
    let verdict = limiter::decide_all(&stored(&call.calls, slots.iter().map(Slot::state)), clock());
    for ((slot, write), c) in slots.iter().zip(&verdict.writes).zip(&call.calls) {
        if let (Some(Write::Record(record)), Some(state)) = (write, slot.state()) {
            ensure_room(state.log(), record).map_err(|error| naming(c.key, error))?;
        }
    }
    let expiries: Vec<Option<Millis>> = slots
        .into_iter()
        .zip(&verdict.writes)
        .map(|(slot, write)| write.map(|write| limiter::apply(slot.or_create(), &write)))
        .collect();
    for ((key, c), (expires_at, write)) in keys
        .iter()
        .zip(&call.calls)
        .zip(expiries.into_iter().zip(&verdict.writes))
    {
        let (Some(expires_at), Some(write)) = (expires_at, write) else {
            continue;
        };
        key.expire_at(expires_at);
        notify(ctx, c.key, write);
        if !verdict.joint.decision.allowed {
            replicate(ctx, c, write);
        }
    }
    if let Some(at) = earliest_record(&verdict.writes) {
        replication::replicate_multi_record(ctx, call.numkeys, &call.calls, at);
    }
    stats::CHECKS.add(1);
    if verdict.joint.decision.allowed {
        stats::ALLOWED.add(1);
    }
    reply_joint(ctx, &verdict.joint);
    Ok(())
}

fn mpeek(ctx: &Context, args: &[Arg]) -> Result<(), CommandError> {
    if report_keys(ctx, args) {
        return Ok(());
    }
    let call = args::parse_multi_call(args)?;
    let keys: Vec<ReadKey> = call
        .calls
        .iter()
        .map(|c| ReadKey::open(ctx, c.key))
        .collect();
    let states = keys
        .iter()
        .map(ReadKey::state)
        .collect::<Result<Vec<_>, CommandError>>()?;
    let joint = limiter::peek_all(&stored(&call.calls, states.into_iter()), clock());
    stats::PEEKS.add(1);
    reply_joint(ctx, &joint);
    Ok(())
}

/// A command with counted keys is asked where its keys are (the
/// `getkeys-api` flag) before it runs, by cluster routing and its
/// CROSSSLOT check, which read no key spec: answers with the positions
/// `numkeys` names, and true, if this call is such a question.
fn report_keys(ctx: &Context, args: &[Arg]) -> bool {
    // SAFETY: plain calls on the live context; presence is checked when
    // the module loads.
    unsafe {
        if (api().is_keys_position_request)(ctx.ctx) == 0 {
            return false;
        }
        for position in args::key_positions(args) {
            (api().key_at_pos)(ctx.ctx, position as c_int);
        }
    }
    true
}

/// The earliest time an allowed MCHECK recorded a key at (see
/// `replication`); `None` for a denied one.
fn earliest_record(writes: &[Option<Write>]) -> Option<Millis> {
    writes
        .iter()
        .filter_map(|write| match write {
            Some(Write::Record(record)) => Some(record.at),
            _ => None,
        })
        .min()
}

/// MRECORD, from the master or the AOF: every key's type is checked
/// before any records, then each records as RECORD would.
fn multi_record(ctx: &Context, args: &[Arg]) -> Result<(), CommandError> {
    if report_keys(ctx, args) {
        return Ok(());
    }
    ensure_replayed(ctx, replication::MULTI_RECORD_COMMAND)?;
    let call = args::parse_multi_record(args)?;
    let mut keys: Vec<WriteKey> = call.keys.iter().map(|k| WriteKey::open(ctx, k)).collect();
    let slots = keys
        .iter_mut()
        .map(WriteKey::slot)
        .collect::<Result<Vec<Slot>, CommandError>>()?;
    let expiries: Vec<Millis> = slots
        .into_iter()
        .zip(&call.records)
        .map(|(slot, record)| limiter::apply(slot.or_create(), &Write::Record(*record)))
        .collect();
    for ((key, name), expires_at) in keys.iter().zip(call.keys).zip(expiries) {
        key.expire_at(expires_at);
        events::changed(ctx.ctx, name, &[Change::Recorded]);
    }
    reply_replayed(ctx)
}

/// Each key's state (`None` for a key that does not exist) with its
/// request.
fn stored<'a>(
    calls: &'a [LimitCall<Arg>],
    states: impl Iterator<Item = Option<&'a State>>,
) -> Vec<(Option<&'a State>, &'a Request)> {
    states
        .zip(calls)
        .map(|(state, c)| (state, &c.request))
        .collect()
}

/// MUNDO: every key is opened and its type checked before any refund.
/// A key left holding nothing (no entry, no block) is deleted; a blocked
/// key stays, however much is refunded.
fn mundo(ctx: &Context, args: &[Arg]) -> Result<(), CommandError> {
    if report_keys(ctx, args) {
        return Ok(());
    }
    let call = args::parse_multi_undo(args)?;
    let mut keys: Vec<WriteKey> = call.keys.iter().map(|k| WriteKey::open(ctx, k)).collect();
    let states: Vec<Option<&mut State>> = keys
        .iter_mut()
        .map(|key| {
            key.slot().map(|slot| match slot {
                Slot::Occupied(state) => Some(state),
                Slot::Vacant(_) => None,
            })
        })
        .collect::<Result<_, CommandError>>()?;
    let refunds: Vec<(u64, Leftover)> = states
        .into_iter()
        .map(|state| match state {
            Some(state) => (limiter::refund(state, call.units), Leftover::of(state)),
            None => (0, Leftover::Log),
        })
        .collect();
    for ((key, name), &(removed, leftover)) in keys.iter().zip(call.keys).zip(&refunds) {
        settle_refund(ctx, key, name, removed, leftover);
    }
    stats::UNDOS.add(1);
    if refunds.iter().any(|&(removed, _)| removed > 0) {
        replication::replicate_as_called(ctx);
    }
    raw::reply_with_array(ctx.ctx, refunds.len() as i64);
    for (removed, _) in refunds {
        raw::reply_with_long_long(ctx.ctx, removed as i64);
    }
    Ok(())
}

/// A key's log holds at most `ratelimit.max-entries` entries: a request
/// that needs a new entry past that is refused whole (neither allowed nor
/// recorded), so the application sees it, rather than counted wrongly. A
/// request whose units join the newest entry is never refused for it.
fn ensure_room(log: &TimeLog, record: &Record) -> Result<(), CommandError> {
    let cap = config::max_entries();
    if log.len_bound() < cap {
        return Ok(());
    }
    match log.len_with_new_entry(record) {
        Some(needed) if needed > cap => {}
        _ => return Ok(()),
    }
    stats::LOG_FULL.add(1);
    Err(CommandError::Invalid(format!(
        "this key's log is full: it holds ratelimit.max-entries ({cap}) entries. \
         Nothing was recorded. Use PRECISION p to share entries, or raise ratelimit.max-entries"
    )))
}

/// A full log's error in a multi-key call, saying which key's.
fn naming(key: &Arg, error: CommandError) -> CommandError {
    match error {
        CommandError::Invalid(text) => CommandError::Invalid(args::about_key(key, &text)),
        other => other,
    }
}

fn peek(ctx: &Context, args: &[Arg]) -> Result<(), CommandError> {
    let call = args::parse_limit_call(args)?;
    let key = ReadKey::open(ctx, call.key);
    let decision = limiter::peek(key.state()?, clock(), &call.request);
    stats::PEEKS.add(1);
    reply_decision(ctx, &decision);
    Ok(())
}

fn undo(ctx: &Context, args: &[Arg]) -> Result<(), CommandError> {
    let call = args::parse_undo(args)?;
    let mut key = WriteKey::open(ctx, call.key);
    let (removed, leftover) = match key.slot()? {
        Slot::Occupied(state) => (limiter::refund(state, call.units), Leftover::of(state)),
        Slot::Vacant(_) => (0, Leftover::Log),
    };
    settle_refund(ctx, &key, call.key, removed, leftover);
    stats::UNDOS.add(1);
    if removed > 0 {
        replication::replicate_as_called(ctx);
    }
    raw::reply_with_long_long(ctx.ctx, removed as i64);
    Ok(())
}

/// What a refund leaves in a key.
#[derive(Clone, Copy)]
enum Leftover {
    /// Entries (or a key that did not exist): the expiry stays as it was.
    Log,
    /// No entry, but a block, which keeps the key until it ends.
    Block { ends: Millis },
    /// Nothing: the key goes.
    Nothing,
}

impl Leftover {
    fn of(state: &State) -> Leftover {
        match state.blocked_until() {
            _ if !state.log().is_empty() => Leftover::Log,
            Some(ends) => Leftover::Block { ends },
            None => Leftover::Nothing,
        }
    }
}

/// After UNDO (or one key of MUNDO) took `removed` units: a key left with
/// nothing is deleted, a blocked key whose log it emptied expires when
/// its block ends (which needs no clock, so replicas replaying the UNDO
/// agree), and each change is announced and counted.
fn settle_refund(ctx: &Context, key: &WriteKey, name: &Arg, removed: u64, leftover: Leftover) {
    stats::UNITS_REFUNDED.add(removed);
    if removed == 0 {
        return;
    }
    match leftover {
        Leftover::Nothing => {
            key.delete();
            events::changed(ctx.ctx, name, &[Change::Refunded, Change::Deleted]);
        }
        Leftover::Block { ends } => {
            key.expire_at(ends);
            events::changed(ctx.ctx, name, &[Change::Refunded]);
        }
        Leftover::Log => events::changed(ctx.ctx, name, &[Change::Refunded]),
    }
}

/// Refuses a replicated form sent by a client: it could forge history.
pub fn ensure_replayed(ctx: &Context, name: &CStr) -> Result<(), CommandError> {
    if replication::is_replayed(ctx) {
        return Ok(());
    }
    Err(CommandError::Invalid(format!(
        "{} is internal: it only runs from the replication link or the AOF",
        name.to_string_lossy()
    )))
}

fn record(ctx: &Context, args: &[Arg]) -> Result<(), CommandError> {
    ensure_replayed(ctx, replication::RECORD_COMMAND)?;
    let call = args::parse_record(args)?;
    let mut key = WriteKey::open(ctx, call.key);
    let state = key.slot()?.or_create();
    let expires_at = limiter::apply(state, &Write::Record(call.record));
    key.expire_at(expires_at);
    events::changed(ctx.ctx, call.key, &[Change::Recorded]);
    reply_replayed(ctx)
}

/// A key that holds no entry has no window to widen (a master only sends
/// this for a key whose log holds entries): nothing changes.
fn widen(ctx: &Context, args: &[Arg]) -> Result<(), CommandError> {
    ensure_replayed(ctx, replication::WIDEN_COMMAND)?;
    let call = args::parse_widen(args)?;
    let mut key = WriteKey::open(ctx, call.key);
    if let Slot::Occupied(state) = key.slot()? {
        let expires_at = limiter::apply(state, &Write::Widen(call.window));
        key.expire_at(expires_at);
        events::changed(ctx.ctx, call.key, &[Change::Widened]);
    }
    reply_replayed(ctx)
}

/// UNBLOCK: lifts a block in force now, keeping the history. The key's
/// expiry returns to its log's own; a key whose log holds nothing live
/// then is deleted. Replies 1 if it lifted a block, else 0 (and then
/// changes and replicates nothing).
fn unblock(ctx: &Context, args: &[Arg]) -> Result<(), CommandError> {
    let call = args::parse_unblock(args)?;
    let mut key = WriteKey::open(ctx, call.key);
    let now = clock();
    let lifted = match key.slot()? {
        Slot::Occupied(state) => limiter::unblock(state, now).then(|| state.expires_at()),
        Slot::Vacant(_) => None,
    };
    if let Some(expires_at) = lifted {
        stats::UNBLOCKS.add(1);
        if expires_at <= now {
            key.delete();
            events::changed(ctx.ctx, call.key, &[Change::Unblocked, Change::Deleted]);
            replication::replicate_delete(ctx, call.key);
        } else {
            key.expire_at(expires_at);
            events::changed(ctx.ctx, call.key, &[Change::Unblocked]);
            replication::replicate_block_until(ctx, call.key, 0);
        }
    }
    raw::reply_with_long_long(ctx.ctx, i64::from(lifted.is_some()));
    Ok(())
}

/// The master's block, applied as it was: blocked until `until` (a key
/// holding nothing is created for it, as the AOF rewrite of a blocked key
/// whose log a refund emptied needs), or lifted (0). A block that would
/// end at or before the key's newest entry is refused, changing nothing.
fn block_until(ctx: &Context, args: &[Arg]) -> Result<(), CommandError> {
    ensure_replayed(ctx, replication::BLOCK_UNTIL_COMMAND)?;
    let call = args::parse_block_until(args)?;
    let mut key = WriteKey::open(ctx, call.key);
    let slot = key.slot::<State>()?;
    match call.until {
        Some(until) => {
            if slot
                .state()
                .is_some_and(|state| !state.accepts_block(until))
            {
                return Err(CommandError::Invalid(
                    "until must be later than the key's newest entry".into(),
                ));
            }
            let expires_at = slot.or_create().block(until);
            key.expire_at(expires_at);
            events::changed(ctx.ctx, call.key, &[Change::Blocked]);
        }
        None => {
            let Slot::Occupied(state) = slot else {
                return reply_replayed(ctx);
            };
            state.unblock();
            let (empty, expires_at) = (state.is_empty(), state.expires_at());
            if empty {
                key.delete();
                events::changed(ctx.ctx, call.key, &[Change::Unblocked, Change::Deleted]);
            } else {
                key.expire_at(expires_at);
                events::changed(ctx.ctx, call.key, &[Change::Unblocked]);
            }
        }
    }
    reply_replayed(ctx)
}

/// What a replicated form answers once applied (or found to change
/// nothing): counted, passed on to this server's own replicas, OK.
pub fn reply_replayed(ctx: &Context) -> Result<(), CommandError> {
    stats::RECORDS_REPLAYED.add(1);
    replication::replicate_as_called(ctx);
    ctx.reply_simple_string("OK");
    Ok(())
}

/// `[allowed, remaining, retry_after_ms, reset_after_ms]`, four integers,
/// in RESP2 and RESP3 alike: clients that speak RESP3 by default turn a
/// map into something the README's array destructuring silently misreads
/// (a truthy `"allowed"` key), which would fail open. Built in place.
fn reply_decision(ctx: &Context, decision: &Decision) {
    raw::reply_with_array(ctx.ctx, 4);
    reply_fields(ctx, decision);
}

/// The four integers of a decision, in their order.
fn reply_fields(ctx: &Context, decision: &Decision) {
    for value in [
        u64::from(decision.allowed),
        decision.remaining,
        decision.retry_after_ms,
        decision.reset_after_ms,
    ] {
        raw::reply_with_long_long(ctx.ctx, value as i64);
    }
}

/// CHARGE's reply, `[over, remaining, retry_after_ms, reset_after_ms]`:
/// four integers in RESP2 and RESP3 alike, as CHECK's.
fn reply_settlement(ctx: &Context, settlement: &Settlement) {
    raw::reply_with_array(ctx.ctx, 4);
    reply_settlement_fields(ctx, settlement);
}

fn reply_settlement_fields(ctx: &Context, settlement: &Settlement) {
    for value in [
        settlement.over,
        settlement.remaining,
        settlement.retry_after_ms,
        settlement.reset_after_ms,
    ] {
        raw::reply_with_long_long(ctx.ctx, value as i64);
    }
}

/// MCHARGE's reply: CHARGE's four integers over every key, then the
/// 1-based positions of the keys now over (an empty array when none is).
fn reply_joint_settlement(ctx: &Context, joint: &JointSettlement) {
    raw::reply_with_array(ctx.ctx, 5);
    reply_settlement_fields(ctx, &joint.settlement);
    raw::reply_with_array(ctx.ctx, joint.over.len() as i64);
    for &position in &joint.over {
        raw::reply_with_long_long(ctx.ctx, position as i64 + 1);
    }
}

/// MCHECK's and MPEEK's reply: CHECK's four integers, then the 1-based
/// positions of the keys that denied (an empty array when allowed). An
/// array in RESP2 and RESP3 alike, as CHECK's.
fn reply_joint(ctx: &Context, joint: &Joint) {
    raw::reply_with_array(ctx.ctx, 5);
    reply_fields(ctx, &joint.decision);
    raw::reply_with_array(ctx.ctx, joint.denied.len() as i64);
    for &position in &joint.denied {
        raw::reply_with_long_long(ctx.ctx, position as i64 + 1);
    }
}
