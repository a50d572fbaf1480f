//! What a change to a log tells the rest of the server. The module opts
//! out of Redis's implicit "modified" signal on every key opened for
//! writing, so a denied CHECK, which changes nothing, neither aborts a
//! `WATCH` nor invalidates client-side caches; a real change signals the
//! key and publishes a keyspace event in the module class (`d` in
//! `notify-keyspace-events`), as built-in commands do in theirs.

use crate::module::api::api;
use crate::module::boundary::Arg;
use redis_module::raw;
use std::ffi::CStr;
use std::os::raw::c_int;

/// A change to a key's log, named as its keyspace event.
#[derive(Clone, Copy)]
pub enum Change {
    /// An allowed CHECK, a CHARGE, or a RECORD from the master or the AOF.
    Recorded,
    /// An UNDO that took something back.
    Refunded,
    /// An UNDO that emptied the log, whose key is then deleted.
    Deleted,
    /// A denied CHECK that named a longer window than the log kept (or
    /// its WIDEN from the master or the AOF): the log now keeps it.
    Widened,
    /// A denial with BLOCK that blocked the key (or its BLOCKUNTIL).
    Blocked,
    /// An UNBLOCK that lifted a block (or its BLOCKUNTIL 0).
    Unblocked,
}

impl Change {
    fn event(self) -> &'static CStr {
        match self {
            Change::Recorded => c"ratelimit.recorded",
            Change::Refunded => c"ratelimit.refunded",
            Change::Deleted => c"ratelimit.deleted",
            Change::Widened => c"ratelimit.widened",
            Change::Blocked => c"ratelimit.blocked",
            Change::Unblocked => c"ratelimit.unblocked",
        }
    }
}

/// Signals `key` as modified once, and publishes each change.
pub fn changed(ctx: *mut raw::RedisModuleCtx, key: &Arg, changes: &[Change]) {
    // SAFETY: plain calls on the live context with a key name Redis keeps
    // alive for the whole command.
    unsafe {
        (api().signal_modified_key)(ctx, key.as_ptr());
        for change in changes {
            (api().notify_keyspace_event)(
                ctx,
                raw::REDISMODULE_NOTIFY_MODULE as c_int,
                change.event().as_ptr(),
                key.as_ptr(),
            );
        }
    }
}
