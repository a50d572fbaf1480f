//! The Redis skin: registration, commands, keys, persistence, replication.

mod boundary;
mod commands;
mod config;
mod datatype;
mod key;
mod registry;
mod replication;
mod stats;

use datatype::RATELIMIT_TYPE;
use redis_module::configuration::ConfigurationFlags;
use redis_module::{raw, Context, ModuleOptions, Status};

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
    // A panic is caught at the boundary and answered with an error; this
    // puts what happened in the server's log, where the reply points.
    std::panic::set_hook(Box::new(|panic| {
        redis_module::logging::log_warning(format!("ratelimit: internal error: {panic}"));
    }));
    if let Err(reason) = registry::register(ctx) {
        ctx.log_warning(&format!("ratelimit: {reason}"));
        return Status::Err;
    }
    // Replaces the empty INFO callback the crate's macro registered.
    raw::register_info_function(ctx.ctx, Some(stats::info));
    Status::Ok
}

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
