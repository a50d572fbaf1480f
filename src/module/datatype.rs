//! The `ratelimit` native type: how a key's state (its log and block) is
//! saved, loaded, copied, digested, measured and freed by Redis.
//!
//! RDB encoding, version 3: unsigned window, unsigned entry count, signed
//! oldest time, the entries as one string (see `log/persist.rs`), then
//! the block's end as a signed time (0: none). Version 2 (the same without
//! the block) and version 1 (release 0.1.0: unit count, oldest time, one
//! varint gap per unit) still load, unblocked.

use crate::gcra::BucketError;
use crate::log::{DecodeError, Encoded, TimeLog};
use crate::module::api::api;
use crate::module::boundary::guard;
use crate::module::{replication, stats};
use crate::state::State;
use redis_module::native_types::RedisType;
use redis_module::raw;
use std::alloc::Layout;
use std::os::raw::{c_int, c_void};
use std::ptr::{self, NonNull};

/// Bumped whenever the RDB encoding changes; older encodings stay loadable.
const ENCODING_VERSION: c_int = 3;
const UNBLOCKED_ENCODING: c_int = 2;
const UNITS_ENCODING: c_int = 1;

pub static RATELIMIT_TYPE: RedisType = RedisType::new(
    "ratelimit",
    ENCODING_VERSION,
    type_methods(Callbacks {
        rdb_load: Some(rdb_load),
        rdb_save: Some(rdb_save),
        aof_rewrite: Some(aof_rewrite),
        mem_usage: Some(mem_usage),
        digest: Some(digest),
        free: Some(free),
        copy: Some(copy),
        defrag: Some(defrag),
    }),
);

/// The callbacks each of the module's types gives Redis (the others stay
/// unset).
pub struct Callbacks {
    pub rdb_load: raw::RedisModuleTypeLoadFunc,
    pub rdb_save: raw::RedisModuleTypeSaveFunc,
    pub aof_rewrite: raw::RedisModuleTypeRewriteFunc,
    pub mem_usage: raw::RedisModuleTypeMemUsageFunc,
    pub digest: raw::RedisModuleTypeDigestFunc,
    pub free: raw::RedisModuleTypeFreeFunc,
    pub copy: raw::RedisModuleTypeCopyFunc,
    pub defrag: raw::RedisModuleTypeDefragFunc,
}

/// The struct Redis reads a type's callbacks from.
pub const fn type_methods(callbacks: Callbacks) -> raw::RedisModuleTypeMethods {
    raw::RedisModuleTypeMethods {
        version: raw::REDISMODULE_TYPE_METHOD_VERSION as u64,
        rdb_load: callbacks.rdb_load,
        rdb_save: callbacks.rdb_save,
        aof_rewrite: callbacks.aof_rewrite,
        mem_usage: callbacks.mem_usage,
        digest: callbacks.digest,
        free: callbacks.free,
        aux_load: None,
        aux_save: None,
        aux_save2: None,
        aux_save_triggers: 0,
        free_effort: None,
        unlink: None,
        copy: callbacks.copy,
        defrag: callbacks.defrag,
        copy2: None,
        free_effort2: None,
        mem_usage2: None,
        unlink2: None,
    }
}

/// SAFETY (for every callback below): Redis only hands back values this
/// module stored, which are `Box<State>` pointers.
unsafe fn state_of<'a>(value: *const c_void) -> &'a State {
    // SAFETY: see above; Redis keeps it alive for the callback.
    unsafe { &*value.cast::<State>() }
}

/// A value for Redis to own: freed by the type's `free`.
pub fn into_value<T>(value: T) -> *mut c_void {
    Box::into_raw(Box::new(value)).cast()
}

unsafe extern "C" fn rdb_save(rdb: *mut raw::RedisModuleIO, value: *mut c_void) {
    // SAFETY: a value of this type (see `state_of`).
    let state = unsafe { state_of(value) };
    guard((), || {
        let (stored, blocked_until) = state.encode();
        raw::save_unsigned(rdb, stored.window);
        raw::save_unsigned(rdb, stored.len);
        raw::save_signed(rdb, stored.oldest);
        raw::save_slice(rdb, &stored.entries);
        raw::save_signed(rdb, blocked_until);
    })
}

/// Returns null (Redis then refuses the RDB or the RESTORE) for an
/// unknown encoding, a short read, or bytes that do not decode to a log
/// the module could hold (see `log/persist.rs`), saying which in the log.
unsafe extern "C" fn rdb_load(rdb: *mut raw::RedisModuleIO, encver: c_int) -> *mut c_void {
    guard(ptr::null_mut(), || {
        let state = match encver {
            ENCODING_VERSION => load_state(rdb),
            UNBLOCKED_ENCODING => load_entries(rdb)
                .and_then(|stored| refused_if_bad(TimeLog::decode(&stored)))
                .and_then(unblocked),
            UNITS_ENCODING => load_units(rdb).and_then(unblocked),
            _ => None,
        };
        state.map_or(ptr::null_mut(), into_value)
    })
}

fn load_state(rdb: *mut raw::RedisModuleIO) -> Option<State> {
    let stored = load_entries(rdb)?;
    let blocked_until = raw::load_signed(rdb).ok()?;
    refused_if_bad(State::decode(&stored, blocked_until))
}

fn load_entries(rdb: *mut raw::RedisModuleIO) -> Option<Encoded> {
    Some(Encoded {
        window: raw::load_unsigned(rdb).ok()?,
        len: raw::load_unsigned(rdb).ok()?,
        oldest: raw::load_signed(rdb).ok()?,
        entries: raw::load_string_buffer(rdb).ok()?.as_ref().to_vec(),
    })
}

fn load_units(rdb: *mut raw::RedisModuleIO) -> Option<TimeLog> {
    let units = raw::load_unsigned(rdb).ok()?;
    let oldest = raw::load_signed(rdb).ok()?;
    let gaps = raw::load_string_buffer(rdb).ok()?;
    refused_if_bad(TimeLog::decode_units(oldest, units, gaps.as_ref()))
}

/// An older version's log, which had no block (refused if empty).
fn unblocked(log: TimeLog) -> Option<State> {
    refused_if_bad(State::with_block(log, 0))
}

/// Why stored bytes do not form a value, as the server's log says it.
pub trait Refusal: std::fmt::Debug {
    /// What was refused: "log", "bucket".
    const WHAT: &'static str;
    fn describe(&self) -> &'static str;
}

impl Refusal for DecodeError {
    const WHAT: &'static str = "log";
    fn describe(&self) -> &'static str {
        DecodeError::describe(self)
    }
}

impl Refusal for BucketError {
    const WHAT: &'static str = "bucket";
    fn describe(&self) -> &'static str {
        BucketError::describe(self)
    }
}

/// Says in the server's log why a stored value was refused (Redis itself
/// only reports that the module could not load it).
pub fn refused_if_bad<T, E: Refusal>(decoded: Result<T, E>) -> Option<T> {
    decoded
        .map_err(|error| {
            redis_module::logging::log_warning(format!(
                "ratelimit: refused a stored {} ({error:?}): {}",
                E::WHAT,
                error.describe()
            ));
        })
        .ok()
}

unsafe extern "C" fn aof_rewrite(
    aof: *mut raw::RedisModuleIO,
    key: *mut raw::RedisModuleString,
    value: *mut c_void,
) {
    // SAFETY: a value of this type (see `state_of`).
    let state = unsafe { state_of(value) };
    guard((), || replication::emit_state(aof, key, state))
}

unsafe extern "C" fn mem_usage(value: *const c_void) -> usize {
    // SAFETY: a value of this type (see `state_of`).
    let state = unsafe { state_of(value) };
    std::mem::size_of::<State>() + state.heap_size()
}

/// Over the persisted form, which does not depend on how the log is kept;
/// the block's end only when there is one, so an unblocked key digests as
/// it did before blocks existed.
unsafe extern "C" fn digest(md: *mut raw::RedisModuleDigest, value: *mut c_void) {
    // SAFETY: a value of this type (see `state_of`).
    let state = unsafe { state_of(value) };
    guard((), || {
        let (stored, blocked_until) = state.encode();
        let add_number = api().digest_add_long_long;
        // SAFETY: plain calls on the digest Redis handed us.
        unsafe {
            add_number(md, stored.window as i64);
            add_number(md, stored.len as i64);
            add_number(md, stored.oldest);
            (api().digest_add_string_buffer)(
                md,
                stored.entries.as_ptr().cast(),
                stored.entries.len(),
            );
            if blocked_until != 0 {
                add_number(md, blocked_until);
            }
            (api().digest_end_sequence)(md);
        }
    })
}

unsafe extern "C" fn copy(
    _from: *mut raw::RedisModuleString,
    _to: *mut raw::RedisModuleString,
    value: *const c_void,
) -> *mut c_void {
    // SAFETY: a value of this type (see `state_of`).
    let state = unsafe { state_of(value) };
    guard(ptr::null_mut(), || into_value(state.clone()))
}

/// Active defragmentation (servers built with Redis's jemalloc): moves the
/// block Redis points at and whatever the state holds beyond it (a block,
/// the log's heap). A state is at most three allocations, so it is done
/// in one call (returns 0).
unsafe extern "C" fn defrag(
    ctx: *mut raw::RedisModuleDefragCtx,
    _key: *mut raw::RedisModuleString,
    value: *mut *mut c_void,
) -> c_int {
    guard(0, || {
        // SAFETY: `*value` is our `Box<State>` block, moved as a whole
        // (the old one freed), then its own allocations are offered the
        // same way.
        let moved = unsafe {
            usize::from(relocate_value::<State>(ctx, value))
                + (*(*value).cast::<State>()).relocate(&mut defragmenter(ctx))
        };
        stats::DEFRAG_MOVED.add(moved as u64);
        0
    })
}

/// The defragmenter's move of one allocation of ours: a new one holding
/// the same bytes, the old one freed (`None`: it stays where it is).
fn defragmenter(
    ctx: *mut raw::RedisModuleDefragCtx,
) -> impl FnMut(NonNull<u8>, Layout) -> Option<NonNull<u8>> {
    // SAFETY: a copy of a function pointer Redis filled in at load.
    let defrag_alloc = unsafe { raw::RedisModule_DefragAlloc };
    move |old: NonNull<u8>, _| {
        let defrag_alloc = defrag_alloc?;
        // SAFETY: DefragAlloc moves an allocation of ours (null: it stays)
        // and frees the old one, as `TimeLog::relocate` requires.
        NonNull::new(unsafe { defrag_alloc(ctx, old.as_ptr().cast()) }.cast::<u8>())
    }
}

/// Moves the block Redis points at, a `Box<T>`, where the defragmenter
/// wants it; true if it moved.
///
/// # Safety
///
/// `*value` is a `Box<T>` of ours that Redis holds.
pub unsafe fn relocate_value<T>(
    ctx: *mut raw::RedisModuleDefragCtx,
    value: *mut *mut c_void,
) -> bool {
    // SAFETY: the caller promises `*value` is our block.
    let block = unsafe { NonNull::new((*value).cast()) };
    match block.and_then(|b| defragmenter(ctx)(b, Layout::new::<T>())) {
        Some(moved) => {
            // SAFETY: as above; Redis reads the new pointer from here on.
            unsafe { *value = moved.as_ptr().cast() };
            true
        }
        None => false,
    }
}

unsafe extern "C" fn free(value: *mut c_void) {
    // SAFETY: Redis frees each value once, a `Box<State>` of ours.
    drop(unsafe { Box::from_raw(value.cast::<State>()) });
}
