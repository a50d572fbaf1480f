//! The `ratelimit` native type: how a key's log is saved, loaded, copied,
//! digested, measured and freed by Redis.
//!
//! RDB encoding (version 1): unsigned entry count, signed oldest
//! timestamp, then the varint gaps as one string (see `log.rs`).

use crate::log::TimeLog;
use crate::module::boundary::guard;
use crate::module::replication;
use redis_module::native_types::RedisType;
use redis_module::raw;
use std::os::raw::{c_int, c_void};
use std::ptr;

/// Bumped whenever the RDB encoding changes; older encodings stay loadable.
const ENCODING_VERSION: c_int = 1;

pub static RATELIMIT_TYPE: RedisType = RedisType::new(
    "ratelimit",
    ENCODING_VERSION,
    raw::RedisModuleTypeMethods {
        version: raw::REDISMODULE_TYPE_METHOD_VERSION as u64,
        rdb_load: Some(rdb_load),
        rdb_save: Some(rdb_save),
        aof_rewrite: Some(aof_rewrite),
        mem_usage: Some(mem_usage),
        digest: Some(digest),
        free: Some(free),
        aux_load: None,
        aux_save: None,
        aux_save2: None,
        aux_save_triggers: 0,
        free_effort: None,
        unlink: None,
        copy: Some(copy),
        defrag: None,
        copy2: None,
        free_effort2: None,
        mem_usage2: None,
        unlink2: None,
    },
);

/// SAFETY (for every callback below): Redis only hands back values this
/// module stored, which are `Box<TimeLog>` pointers.
unsafe fn log_of<'a>(value: *const c_void) -> &'a TimeLog {
    unsafe { &*value.cast::<TimeLog>() }
}

fn into_value(log: TimeLog) -> *mut c_void {
    Box::into_raw(Box::new(log)).cast()
}

/// The gaps in one buffer: a deque may wrap, and both the RDB string and
/// the digest must not depend on where it does.
fn contiguous_gaps(log: &TimeLog) -> Vec<u8> {
    log.gap_bytes().flatten().copied().collect()
}

unsafe extern "C" fn rdb_save(rdb: *mut raw::RedisModuleIO, value: *mut c_void) {
    let log = unsafe { log_of(value) };
    guard((), || {
        raw::save_unsigned(rdb, log.len());
        raw::save_signed(rdb, log.oldest().unwrap_or(0));
        raw::save_slice(rdb, &contiguous_gaps(log));
    })
}

/// Returns null (Redis then refuses the RDB or the RESTORE) for a future
/// encoding, a short read, or bytes that do not decode to a log.
unsafe extern "C" fn rdb_load(rdb: *mut raw::RedisModuleIO, encver: c_int) -> *mut c_void {
    if encver > ENCODING_VERSION {
        return ptr::null_mut();
    }
    guard(ptr::null_mut(), || {
        let (Ok(len), Ok(oldest), Ok(gaps)) = (
            raw::load_unsigned(rdb),
            raw::load_signed(rdb),
            raw::load_string_buffer(rdb),
        ) else {
            return ptr::null_mut();
        };
        match TimeLog::decode(oldest, len, gaps.as_ref()) {
            Ok(log) if !log.is_empty() => into_value(log),
            _ => ptr::null_mut(),
        }
    })
}

unsafe extern "C" fn aof_rewrite(
    aof: *mut raw::RedisModuleIO,
    key: *mut raw::RedisModuleString,
    value: *mut c_void,
) {
    let log = unsafe { log_of(value) };
    guard((), || replication::emit_log(aof, key, log))
}

unsafe extern "C" fn mem_usage(value: *const c_void) -> usize {
    let log = unsafe { log_of(value) };
    std::mem::size_of::<TimeLog>() + log.heap_size()
}

unsafe extern "C" fn digest(md: *mut raw::RedisModuleDigest, value: *mut c_void) {
    let log = unsafe { log_of(value) };
    guard((), || {
        let gaps = contiguous_gaps(log);
        // SAFETY: plain calls on the digest Redis handed us.
        unsafe {
            raw::RedisModule_DigestAddLongLong.expect("in every Redis")(md, log.len() as i64);
            raw::RedisModule_DigestAddLongLong.expect("in every Redis")(
                md,
                log.oldest().unwrap_or(0),
            );
            raw::RedisModule_DigestAddStringBuffer.expect("in every Redis")(
                md,
                gaps.as_ptr().cast(),
                gaps.len(),
            );
            raw::RedisModule_DigestEndSequence.expect("in every Redis")(md);
        }
    })
}

unsafe extern "C" fn copy(
    _from: *mut raw::RedisModuleString,
    _to: *mut raw::RedisModuleString,
    value: *const c_void,
) -> *mut c_void {
    let log = unsafe { log_of(value) };
    guard(ptr::null_mut(), || into_value(log.clone()))
}

unsafe extern "C" fn free(value: *mut c_void) {
    drop(unsafe { Box::from_raw(value.cast::<TimeLog>()) });
}
