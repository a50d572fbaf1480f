//! Opening a key that holds (or will hold) a log.
//!
//! The crate's key wrappers cannot set an absolute expiry, which replicas
//! and AOF replay need to reach the master's exact expiry, so this is a
//! small RAII wrapper over the raw key handle.

use crate::log::{Millis, TimeLog};
use crate::module::boundary::CommandError;
use crate::module::datatype::RATELIMIT_TYPE;
use redis_module::raw::{self, KeyType};
use redis_module::Context;

pub struct LimiterKey {
    handle: *mut raw::RedisModuleKey,
}

impl LimiterKey {
    pub fn open(ctx: &Context, name: *mut raw::RedisModuleString, mode: raw::KeyMode) -> Self {
        LimiterKey {
            handle: raw::open_key(ctx.ctx, name, mode),
        }
    }

    /// The stored log; `None` if the key does not exist; WRONGTYPE if it
    /// holds anything but a log.
    pub fn log(&mut self) -> Result<Option<&mut TimeLog>, CommandError> {
        if self.handle.is_null() {
            return Ok(None);
        }
        // SAFETY: plain calls on a live key handle.
        unsafe {
            match KeyType::from(raw::RedisModule_KeyType.expect("in every Redis")(
                self.handle,
            )) {
                KeyType::Empty => Ok(None),
                KeyType::Module
                    if raw::RedisModule_ModuleTypeGetType.expect("in every Redis")(self.handle)
                        == *RATELIMIT_TYPE.raw_type.borrow() =>
                {
                    let value =
                        raw::RedisModule_ModuleTypeGetValue.expect("in every Redis")(self.handle);
                    // SAFETY: values of our type are always Box<TimeLog>.
                    Ok(value.cast::<TimeLog>().as_mut())
                }
                _ => Err(CommandError::WrongType),
            }
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
