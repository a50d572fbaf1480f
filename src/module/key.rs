//! Opening a key that holds (or will hold) a log.
//!
//! The crate's key wrappers cannot set an absolute expiry, which replicas
//! and AOF replay need to reach the master's exact expiry, so this is a
//! small RAII wrapper over the raw key handle.

use crate::log::{Millis, TimeLog};
use crate::module::boundary::{Arg, CommandError};
use crate::module::datatype::RATELIMIT_TYPE;
use redis_module::raw;
use redis_module::Context;
use std::os::raw::c_int;

pub struct LimiterKey {
    handle: *mut raw::RedisModuleKey,
}

impl LimiterKey {
    pub fn open(ctx: &Context, name: &Arg, mode: raw::KeyMode) -> Self {
        LimiterKey {
            handle: raw::open_key(ctx.ctx, name.as_ptr(), mode),
        }
    }

    /// The stored log; `None` if the key does not exist; WRONGTYPE if it
    /// holds anything but a log.
    pub fn log(&mut self) -> Result<Option<&mut TimeLog>, CommandError> {
        if self.handle.is_null() {
            return Ok(None);
        }
        // SAFETY: plain calls on a live key handle; values of our type
        // are always Box<TimeLog>.
        unsafe {
            let kind = raw::RedisModule_KeyType.expect("in every Redis")(self.handle);
            if kind == raw::REDISMODULE_KEYTYPE_EMPTY as c_int {
                return Ok(None);
            }
            let ours = kind == raw::REDISMODULE_KEYTYPE_MODULE as c_int
                && raw::RedisModule_ModuleTypeGetType.expect("in every Redis")(self.handle)
                    == *RATELIMIT_TYPE.raw_type.borrow();
            if !ours {
                return Err(CommandError::WrongType);
            }
            let value = raw::RedisModule_ModuleTypeGetValue.expect("in every Redis")(self.handle);
            Ok(value.cast::<TimeLog>().as_mut())
        }
    }

    /// Stores a new log in an empty key opened for writing, and returns it.
    pub fn create(&mut self, log: TimeLog) -> &mut TimeLog {
        let value = Box::into_raw(Box::new(log));
        // SAFETY: the key is open for writing and empty; Redis owns the box
        // from here on and frees it through the type's `free`.
        unsafe {
            raw::RedisModule_ModuleTypeSetValue.expect("in every Redis")(
                self.handle,
                *RATELIMIT_TYPE.raw_type.borrow(),
                value.cast(),
            );
            &mut *value
        }
    }

    pub fn expire_at(&self, at: Millis) {
        // SAFETY: the key is open for writing and holds a value. Presence
        // of the function is checked when the module loads.
        unsafe { raw::RedisModule_SetAbsExpire.expect("checked at load")(self.handle, at) };
    }

    pub fn delete(&self) {
        // SAFETY: the key is open for writing.
        unsafe { raw::RedisModule_DeleteKey.expect("in every Redis")(self.handle) };
    }
}

impl Drop for LimiterKey {
    fn drop(&mut self) {
        raw::close_key(self.handle);
    }
}
