//! The `gcralimit` native type: a token bucket (see `gcra.rs`), saved,
//! loaded, copied, digested, measured and freed by Redis. Its own type,
//! beside the sliding window's `ratelimit`, so that Redis itself keeps the
//! two apart: a command of one on a key of the other is WRONGTYPE, `TYPE`
//! names each, and `SCAN ... TYPE gcralimit` lists the buckets.
//!
//! RDB encoding, version 1: the time of the last charge (signed), its
//! period and the level (unsigned), as [`Bucket`] keeps them.

use crate::gcra::Bucket;
use crate::module::api::api;
use crate::module::boundary::guard;
use crate::module::datatype::{
    into_value, refused_if_bad, relocate_value, type_methods, Callbacks,
};
use crate::module::{replication, stats};
use redis_module::native_types::RedisType;
use redis_module::raw;
use std::os::raw::{c_int, c_void};
use std::ptr;

/// Bumped whenever the RDB encoding changes; older encodings stay loadable.
const ENCODING_VERSION: c_int = 1;

pub static GCRA_TYPE: RedisType = RedisType::new(
    "gcralimit",
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

/// SAFETY (for every callback below): Redis only hands back values this
/// type stored, which are `Box<Bucket>` pointers.
unsafe fn bucket_of(value: *const c_void) -> Bucket {
    // SAFETY: see above; Redis keeps it alive for the callback.
    unsafe { *value.cast::<Bucket>() }
}

unsafe extern "C" fn rdb_save(rdb: *mut raw::RedisModuleIO, value: *mut c_void) {
    // SAFETY: a value of this type (see `bucket_of`).
    let bucket = unsafe { bucket_of(value) };
    raw::save_signed(rdb, bucket.at());
    raw::save_unsigned(rdb, bucket.period());
    raw::save_unsigned(rdb, bucket.level());
}

/// Returns null (Redis then refuses the RDB or the RESTORE) for an unknown
/// encoding, a short read, or numbers that no bucket the module stores
/// holds, saying which in the server's log.
unsafe extern "C" fn rdb_load(rdb: *mut raw::RedisModuleIO, encver: c_int) -> *mut c_void {
    guard(ptr::null_mut(), || {
        if encver != ENCODING_VERSION {
            return ptr::null_mut();
        }
        let numbers = (|| {
            Some((
                raw::load_signed(rdb).ok()?,
                raw::load_unsigned(rdb).ok()?,
                raw::load_unsigned(rdb).ok()?,
            ))
        })();
        numbers
            .and_then(|(at, period, level)| refused_if_bad(Bucket::new(at, period, level)))
            .map_or(ptr::null_mut(), into_value)
    })
}

unsafe extern "C" fn aof_rewrite(
    aof: *mut raw::RedisModuleIO,
    key: *mut raw::RedisModuleString,
    value: *mut c_void,
) {
    // SAFETY: a value of this type (see `bucket_of`).
    let bucket = unsafe { bucket_of(value) };
    replication::emit_bucket(aof, key, &bucket);
}

unsafe extern "C" fn mem_usage(_value: *const c_void) -> usize {
    std::mem::size_of::<Bucket>()
}

unsafe extern "C" fn digest(md: *mut raw::RedisModuleDigest, value: *mut c_void) {
    // SAFETY: a value of this type (see `bucket_of`).
    let bucket = unsafe { bucket_of(value) };
    let add_number = api().digest_add_long_long;
    // SAFETY: plain calls on the digest Redis handed us.
    unsafe {
        add_number(md, bucket.at());
        add_number(md, bucket.period() as i64);
        add_number(md, bucket.level() as i64);
        (api().digest_end_sequence)(md);
    }
}

unsafe extern "C" fn copy(
    _from: *mut raw::RedisModuleString,
    _to: *mut raw::RedisModuleString,
    value: *const c_void,
) -> *mut c_void {
    // SAFETY: a value of this type (see `bucket_of`).
    guard(ptr::null_mut(), || into_value(unsafe { bucket_of(value) }))
}

/// Active defragmentation: a bucket is the one block Redis points at.
unsafe extern "C" fn defrag(
    ctx: *mut raw::RedisModuleDefragCtx,
    _key: *mut raw::RedisModuleString,
    value: *mut *mut c_void,
) -> c_int {
    guard(0, || {
        // SAFETY: `*value` is our `Box<Bucket>`, moved whole.
        let moved = unsafe { relocate_value::<Bucket>(ctx, value) };
        stats::DEFRAG_MOVED.add(u64::from(moved));
        0
    })
}

unsafe extern "C" fn free(value: *mut c_void) {
    // SAFETY: Redis frees each value once, a `Box<Bucket>` of ours.
    drop(unsafe { Box::from_raw(value.cast::<Bucket>()) });
}
