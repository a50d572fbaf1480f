//! The Redis skin: registration, commands, keys, persistence, replication.

mod boundary;
mod commands;
mod config;
mod datatype;
mod key;
mod replication;

use redis_module::{raw, Context, ModuleOptions, Status};
use std::os::raw::c_int;

/// The crate version as Redis wants it: major * 10000 + minor * 100 + patch.
const MODULE_VERSION: i32 = {
    const fn number(text: &str) -> i32 {
        let bytes = text.as_bytes();
        let mut value = 0;
        let mut i = 0;
        while i < bytes.len() {
            value = value * 10 + (bytes[i] - b'0') as i32;
            i += 1;
        }
        value
    }
    number(env!("CARGO_PKG_VERSION_MAJOR")) * 10_000
        + number(env!("CARGO_PKG_VERSION_MINOR")) * 100
        + number(env!("CARGO_PKG_VERSION_PATCH"))
};

fn init(ctx: &Context, _args: &[redis_module::RedisString]) -> Status {
    // SAFETY: copies of function pointers Redis filled in at load.
    let (set_abs_expire, milliseconds) =
        unsafe { (raw::RedisModule_SetAbsExpire, raw::RedisModule_Milliseconds) };
    if set_abs_expire.is_none() || milliseconds.is_none() {
        ctx.log_warning("ratelimit needs Redis 7.0 or later (RedisModule_SetAbsExpire)");
        return Status::Err;
    }
    ctx.set_module_options(ModuleOptions::HANDLE_IO_ERRORS);
    for (name, handler, flags) in commands::COMMANDS {
        // SAFETY: static C strings and a valid callback; the key is argument 1.
        let created = unsafe {
            raw::RedisModule_CreateCommand.expect("in every Redis")(
                ctx.ctx,
                name.as_ptr(),
                Some(handler),
                flags.as_ptr(),
                1,
                1,
                1,
            )
        };
        if created != raw::Status::Ok as c_int {
            ctx.log_warning(&format!("ratelimit: could not create {name:?}"));
            return Status::Err;
        }
    }
    Status::Ok
}

use datatype::RATELIMIT_TYPE;
use redis_module::configuration::ConfigurationFlags;

redis_module::redis_module! {
    name: "ratelimit",
    version: MODULE_VERSION,
    allocator: (redis_module::alloc::RedisAlloc, redis_module::alloc::RedisAlloc),
    data_types: [RATELIMIT_TYPE],
    init: init,
    configurations: [
        i64: [
            ["max-entries", &config::MAX_ENTRIES, config::DEFAULT_MAX_ENTRIES, 1, config::MAX_MAX_ENTRIES, ConfigurationFlags::DEFAULT, None],
        ],
        // The macro needs every kind listed to read module arguments.
        string: [],
        bool: [],
        enum: [],
        module_args_as_configuration: true,
    ]
}
