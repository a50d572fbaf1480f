//! Opening a key that holds (or will hold) a log, for reading or for
//! writing: only a `WriteKey` can change the log, create it, delete it or
//! set its expiry, so what needs a key opened for writing is a type.
//!
//! The crate's key wrappers cannot set an absolute expiry, which replicas
//! and AOF replay need to reach the master's exact expiry, so these are
//! small RAII wrappers over the raw key handle.

use crate::log::{Millis, TimeLog};
use crate::module::boundary::{Arg, CommandError};
use crate::module::datatype::RATELIMIT_TYPE;
use redis_module::raw;
use redis_module::Context;
use std::os::raw::c_int;

/// An open key handle, closed when dropped.
struct Handle(*mut raw::RedisModuleKey);

impl Handle {
    fn open(ctx: &Context, name: &Arg, mode: raw::KeyMode) -> Handle {
        Handle(raw::open_key(ctx.ctx, name.as_ptr(), mode))
    }

    /// The stored log; `None` if the key does not exist; WRONGTYPE if it
    /// holds anything but a log.
    fn log(&self) -> Result<Option<*mut TimeLog>, CommandError> {
        if self.0.is_null() {
            return Ok(None);
        }
        // SAFETY: plain calls on a live key handle; values of our type
        // are always Box<TimeLog>.
        unsafe {
            let kind = raw::RedisModule_KeyType.expect("in every Redis")(self.0);
            if kind == raw::REDISMODULE_KEYTYPE_EMPTY as c_int {
                return Ok(None);
            }
            let ours = kind == raw::REDISMODULE_KEYTYPE_MODULE as c_int
                && raw::RedisModule_ModuleTypeGetType.expect("in every Redis")(self.0)
                    == *RATELIMIT_TYPE.raw_type.borrow();
            if !ours {
                return Err(CommandError::WrongType);
            }
            let value = raw::RedisModule_ModuleTypeGetValue.expect("in every Redis")(self.0);
            Ok(Some(value.cast::<TimeLog>()))
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        raw::close_key(self.0);
    }
}

pub struct ReadKey(Handle);

impl ReadKey {
    pub fn open(ctx: &Context, name: &Arg) -> ReadKey {
        ReadKey(Handle::open(ctx, name, raw::KeyMode::READ))
    }

    pub fn log(&self) -> Result<Option<&TimeLog>, CommandError> {
        // SAFETY: Redis keeps the value alive while the key is open.
        Ok(self.0.log()?.map(|log| unsafe { &*log }))
    }
}

pub struct WriteKey(Handle);

impl WriteKey {
    pub fn open(ctx: &Context, name: &Arg) -> WriteKey {
        WriteKey(Handle::open(
            ctx,
            name,
            raw::KeyMode::READ | raw::KeyMode::WRITE,
        ))
    }

    pub fn log(&mut self) -> Result<Option<&mut TimeLog>, CommandError> {
        // SAFETY: Redis keeps the value alive while the key is open, and
        // this handle's borrow is the only way to it.
        Ok(self.0.log()?.map(|log| unsafe { &mut *log }))
    }

    /// Stores a new empty log in the key, which must be empty (`log`
    /// said `None`), and returns it.
    pub fn create(&mut self) -> &mut TimeLog {
        let value = Box::into_raw(Box::<TimeLog>::default());
        // SAFETY: the key is open for writing and empty; Redis owns the box
        // from here on and frees it through the type's `free`.
        unsafe {
            raw::RedisModule_ModuleTypeSetValue.expect("in every Redis")(
                (self.0).0,
                *RATELIMIT_TYPE.raw_type.borrow(),
                value.cast(),
            );
            &mut *value
        }
    }

    pub fn expire_at(&self, at: Millis) {
        // SAFETY: the key is open for writing and holds a value. Presence
        // of the function is checked when the module loads.
        unsafe { raw::RedisModule_SetAbsExpire.expect("checked at load")((self.0).0, at) };
    }

    pub fn delete(&self) {
        // SAFETY: the key is open for writing.
        unsafe { raw::RedisModule_DeleteKey.expect("in every Redis")((self.0).0) };
    }
}
