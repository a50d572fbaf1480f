//! The Redis skin: registration, commands, keys, persistence, replication.

mod api;
mod boundary;
mod commands;
mod config;
mod datatype;
mod events;
mod gcra_commands;
mod gcra_type;
mod key;
mod registry;
mod replication;
mod stats;

use datatype::RATELIMIT_TYPE;
use gcra_type::GCRA_TYPE;
use redis_module::configuration::ConfigurationFlags;
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
    if let Err(missing) = api::load() {
        ctx.log_warning(&format!("ratelimit needs Redis 7.0 or later: {missing}"));
        return Status::Err;
    }
    set_module_options(ctx);
    // A panic is caught at the boundary and answered with an error; this
    // puts what happened in the server's log, where the reply points.
    std::panic::set_hook(Box::new(|panic| {
        redis_module::logging::log_warning(format!("ratelimit: internal error: {panic}"));
    }));
    let aliases = match crate::args::parse_aliases(&config::aliases()) {
        Ok(aliases) => aliases,
        Err(reason) => {
            ctx.log_warning(&format!("ratelimit: {reason}"));
            return Status::Err;
        }
    };
    if let Err(reason) = registry::register(ctx, &aliases) {
        ctx.log_warning(&format!("ratelimit: {reason}"));
        return Status::Err;
    }
    // Replaces the empty INFO callback the crate's macro registered.
    raw::register_info_function(ctx.ctx, Some(stats::info));
    Status::Ok
}

/// Valkey's `VALKEYMODULE_OPTIONS_HANDLE_ATOMIC_SLOT_MIGRATION` (9.0+):
/// whatever this module replicates is about its one key, so a slot can
/// move with it. Redis gives this bit no meaning, so it is only set there.
const HANDLE_ATOMIC_SLOT_MIGRATION: c_int = 1 << 5;

/// The options each server understands: short reads are errors, and only
/// real changes signal a key (see `events`).
fn set_module_options(ctx: &Context) {
    let mut bits =
        (ModuleOptions::HANDLE_IO_ERRORS | ModuleOptions::NO_IMPLICIT_SIGNAL_MODIFIED).bits();
    // RM_GetServerVersion gives Valkey's own version on Valkey.
    let version = ctx.get_redis_version().map_or(0, |v| v.major);
    if version >= 9 && server_is_valkey(ctx) {
        bits |= HANDLE_ATOMIC_SLOT_MIGRATION;
    }
    ctx.set_module_options(ModuleOptions::from_bits_retain(bits));
}

/// `server_name:valkey` in `INFO server`, which Redis does not have.
fn server_is_valkey(ctx: &Context) -> bool {
    // SAFETY: copies of function pointers Redis filled in at load.
    let (get_info, get_field, free_info) = unsafe {
        (
            raw::RedisModule_GetServerInfo,
            raw::RedisModule_ServerInfoGetFieldC,
            raw::RedisModule_FreeServerInfo,
        )
    };
    let (Some(get_info), Some(get_field), Some(free_info)) = (get_info, get_field, free_info)
    else {
        return false;
    };
    // SAFETY: the info is read while alive and freed once; the field is a
    // C string owned by it.
    unsafe {
        let info = get_info(ctx.ctx, c"server".as_ptr());
        if info.is_null() {
            return false;
        }
        let name = get_field(info, c"server_name".as_ptr());
        let valkey = !name.is_null() && std::ffi::CStr::from_ptr(name) == c"valkey";
        free_info(ctx.ctx, info);
        valkey
    }
}

redis_module::redis_module! {
    name: "ratelimit",
    version: MODULE_VERSION,
    allocator: (redis_module::alloc::RedisAlloc, redis_module::alloc::RedisAlloc),
    data_types: [RATELIMIT_TYPE, GCRA_TYPE],
    init: init,
    configurations: [
        // The macro needs every kind listed to read module arguments.
        i64: [
            ["max-entries", &config::MAX_ENTRIES, config::DEFAULT_MAX_ENTRIES, 1, config::MAX_MAX_ENTRIES, ConfigurationFlags::DEFAULT, None],
        ],
        string: [
            ["aliases", &config::ALIASES, "", ConfigurationFlags::IMMUTABLE, None],
        ],
        bool: [],
        enum: [],
        module_args_as_configuration: true,
    ]
}
