//! Opening a key that holds (or will hold) one of the module's values (a
//! sliding-window log and its block, or a token bucket), for reading or
//! for writing: only a `WriteKey` can change a value, create it, delete it
//! or set its expiry, so what needs a key opened for writing is a type. A
//! `WriteKey` hands out its value as a [`Slot`], occupied or vacant, so a
//! value is only ever created in a key that holds none. A key of the
//! other type, or of any other, is WRONGTYPE.
//!
//! The crate's key wrappers cannot set an absolute expiry, which replicas
//! and AOF replay need to reach the master's exact expiry, so these are
//! small RAII wrappers over the raw key handle.

use crate::gcra::Bucket;
use crate::log::Millis;
use crate::module::api::api;
use crate::module::boundary::{Arg, CommandError};
use crate::module::datatype::RATELIMIT_TYPE;
use crate::module::gcra_type::GCRA_TYPE;
use crate::state::State;
use redis_module::native_types::RedisType;
use redis_module::raw;
use redis_module::Context;
use std::os::raw::c_int;

/// A value the module stores in a key of its own type.
pub trait Stored: 'static {
    fn redis_type() -> &'static RedisType;
}

impl Stored for State {
    fn redis_type() -> &'static RedisType {
        &RATELIMIT_TYPE
    }
}

impl Stored for Bucket {
    fn redis_type() -> &'static RedisType {
        &GCRA_TYPE
    }
}

/// An open key handle, closed when dropped.
struct Handle(*mut raw::RedisModuleKey);

impl Handle {
    fn open(ctx: &Context, name: &Arg, mode: raw::KeyMode) -> Handle {
        Handle(raw::open_key(ctx.ctx, name.as_ptr(), mode))
    }

    /// The stored value; `None` if the key does not exist; WRONGTYPE if it
    /// holds anything but a `T`.
    fn state<T: Stored>(&self) -> Result<Option<*mut T>, CommandError> {
        if self.0.is_null() {
            return Ok(None);
        }
        // SAFETY: plain calls on a live key handle; values of `T`'s type
        // are always Box<T>.
        unsafe {
            let kind = (api().key_type)(self.0);
            if kind == raw::REDISMODULE_KEYTYPE_EMPTY as c_int {
                return Ok(None);
            }
            let ours = kind == raw::REDISMODULE_KEYTYPE_MODULE as c_int
                && (api().module_type_get_type)(self.0) == *T::redis_type().raw_type.borrow();
            if !ours {
                return Err(CommandError::WrongType);
            }
            let value = (api().module_type_get_value)(self.0);
            Ok(Some(value.cast::<T>()))
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

    pub fn state<T: Stored>(&self) -> Result<Option<&T>, CommandError> {
        // SAFETY: Redis keeps the value alive while the key is open.
        Ok(self.0.state()?.map(|state| unsafe { &*state }))
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

    /// The key's value, or the room for one.
    pub fn slot<T: Stored>(&mut self) -> Result<Slot<'_, T>, CommandError> {
        Ok(match self.0.state()? {
            // SAFETY: Redis keeps the value alive while the key is open,
            // and this handle's borrow is the only way to it.
            Some(state) => Slot::Occupied(unsafe { &mut *state }),
            None => Slot::Vacant(Vacant(&self.0)),
        })
    }

    pub fn expire_at(&self, at: Millis) {
        // SAFETY: the key is open for writing and holds a value. Presence
        // of the function is checked when the module loads.
        unsafe { (api().set_abs_expire)((self.0).0, at) };
    }

    /// Removes the key's expiry.
    pub fn persist(&self) {
        // SAFETY: as for `expire_at`.
        unsafe { (api().set_abs_expire)((self.0).0, raw::REDISMODULE_NO_EXPIRE.into()) };
    }

    pub fn delete(&self) {
        // SAFETY: the key is open for writing.
        unsafe { (api().delete_key)((self.0).0) };
    }
}

/// A write key's value, or the room for one.
pub enum Slot<'a, T = State> {
    Occupied(&'a mut T),
    Vacant(Vacant<'a>),
}

/// An empty key opened for writing.
pub struct Vacant<'a>(&'a Handle);

impl<'a, T: Stored> Slot<'a, T> {
    pub fn state(&self) -> Option<&T> {
        match self {
            Slot::Occupied(state) => Some(state),
            Slot::Vacant(_) => None,
        }
    }

    /// The value, stored as a new default one if the key held none.
    pub fn or_create(self) -> &'a mut T
    where
        T: Default,
    {
        match self {
            Slot::Occupied(state) => state,
            Slot::Vacant(vacant) => vacant.insert(T::default()),
        }
    }

    /// Stores `value` in place of the key's, or as a new one.
    pub fn put(self, value: T) {
        match self {
            Slot::Occupied(state) => *state = value,
            Slot::Vacant(vacant) => {
                vacant.insert(value);
            }
        }
    }
}

impl<'a> Vacant<'a> {
    fn insert<T: Stored>(self, value: T) -> &'a mut T {
        let value = Box::into_raw(Box::new(value));
        // SAFETY: the key is open for writing and empty; Redis owns the box
        // from here on and frees it through the type's `free`, and keeps it
        // alive while the key is open.
        unsafe {
            (api().module_type_set_value)(
                (self.0).0,
                *T::redis_type().raw_type.borrow(),
                value.cast(),
            );
            &mut *value
        }
    }
}
