//! Every command the module registers, with what Redis shows of it (names
//! in lower case, as Redis names its own commands in errors and replies):
//! flags, COMMAND DOCS (summary, complexity, arity, arguments), key specs
//! and ACL categories. docs/commands.md is tested against
//! the COMMAND DOCS this produces (`tests/citizen.rs`).

use crate::args::{self, Alias, OptionName};
use crate::module::api::api;
use crate::module::commands::{self, RawCommand};
use crate::module::config;
use crate::module::gcra_commands;
use crate::module::replication::{
    BLOCK_UNTIL_COMMAND, GCRA_SET_COMMAND, MULTI_RECORD_COMMAND, RECORD_COMMAND, WIDEN_COMMAND,
};
use redis_module::raw;
use redis_module::Context;
use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int};
use std::ptr;

struct CommandSpec {
    name: &'static CStr,
    handler: RawCommand,
    flags: &'static CStr,
    /// Standard categories, set where the server lets modules set them.
    acl_categories: &'static CStr,
    summary: &'static CStr,
    complexity: &'static CStr,
    /// Redis's convention: N words exactly, or -N for at least N.
    arity: c_int,
    key_flags: u32,
    args: &'static [ArgSpec],
    keys: Keys,
    /// The release that added the command.
    since: &'static CStr,
}

/// Where a command's keys are.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keys {
    /// One key, the first argument.
    First,
    /// `numkeys key [key ...]` from the first argument.
    Counted,
}

struct ArgSpec {
    name: &'static str,
    kind: raw::RedisModuleCommandArgType,
    token: Option<&'static str>,
    flags: u32,
    /// The arguments of a block.
    subargs: &'static [ArgSpec],
}

const KEY: raw::RedisModuleCommandArgType = raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_KEY;
const INTEGER: raw::RedisModuleCommandArgType =
    raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_INTEGER;
const BLOCK: raw::RedisModuleCommandArgType =
    raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_BLOCK;
const DOUBLE: raw::RedisModuleCommandArgType =
    raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_DOUBLE;
const PURE_TOKEN: raw::RedisModuleCommandArgType =
    raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_PURE_TOKEN;
const OPTIONAL: u32 = raw::REDISMODULE_CMD_ARG_OPTIONAL;
const MULTIPLE: u32 = raw::REDISMODULE_CMD_ARG_MULTIPLE;

const fn arg(name: &'static str, kind: raw::RedisModuleCommandArgType) -> ArgSpec {
    ArgSpec {
        name,
        kind,
        token: None,
        flags: 0,
        subargs: &[],
    }
}

/// An optional `TOKEN value`, or a flag (a token with no value).
const fn option(name: &OptionName) -> ArgSpec {
    let flag = name.value.is_empty();
    ArgSpec {
        name: if flag { name.token } else { name.value },
        kind: if flag { PURE_TOKEN } else { INTEGER },
        token: Some(name.token),
        flags: OPTIONAL,
        subargs: &[],
    }
}

/// `key max_burst <count> period`, a GCRA call's limit, the count named
/// as each spelling names it.
const fn gcra_limit_args(count: &'static str) -> [ArgSpec; 4] {
    [
        arg("key", KEY),
        arg("max_burst", INTEGER),
        arg(count, INTEGER),
        arg("period", DOUBLE),
    ]
}

const GCRA_FLAGS: &CStr = c"write deny-oom fast";
const GCRA_COMPLEXITY: &CStr = c"O(1).";
const GCRA_KEY_FLAGS: u32 = raw::REDISMODULE_CMD_KEY_RW | raw::REDISMODULE_CMD_KEY_UPDATE;
const GCRA_SINCE: &CStr = c"0.5.0";

/// `RATELIMIT.GCRA key max_burst count period [TOKENS n] [MS] [CHARGE]
/// [REFUND]`.
const GCRA_ARGS: &[ArgSpec] = &{
    let [key, max_burst, count, period] = gcra_limit_args("count");
    [
        key,
        max_burst,
        count,
        period,
        option(&args::TOKENS),
        option(&args::MS),
        option(&args::CHARGE),
        option(&args::REFUND),
    ]
};

/// `key window max [window max ...] [COST n] [PRECISION p] [BLOCK ms]`.
const LIMIT_ARGS: &[ArgSpec] = &[
    arg("key", KEY),
    LIMIT,
    option(&args::COST),
    option(&args::PRECISION),
    option(&args::BLOCK),
];

/// `window max [window max ...]`.
const LIMIT: ArgSpec = ArgSpec {
    name: "limit",
    kind: BLOCK,
    token: None,
    flags: MULTIPLE,
    subargs: &[arg("window", INTEGER), arg("max", INTEGER)],
};

/// `numkeys key [key ...] npairs window max [window max ...] [npairs window
/// max [window max ...] ...] [COST n] [PRECISION p] [BLOCK ms]`.
const MULTI_LIMIT_ARGS: &[ArgSpec] = &[
    arg("numkeys", INTEGER),
    ArgSpec {
        flags: MULTIPLE,
        ..arg("key", KEY)
    },
    ArgSpec {
        name: "limits",
        kind: BLOCK,
        token: None,
        flags: MULTIPLE,
        subargs: &[arg("npairs", INTEGER), LIMIT],
    },
    option(&args::COST),
    option(&args::PRECISION),
    option(&args::BLOCK),
];

/// `key window max [window max ...] [COST n] [PRECISION p]`: CHECK's,
/// without BLOCK (a settlement is never denied).
const CHARGE_ARGS: &[ArgSpec] = &[
    arg("key", KEY),
    LIMIT,
    option(&args::COST),
    option(&args::PRECISION),
];

/// `numkeys key [key ...] npairs window max [window max ...] [npairs window
/// max [window max ...] ...] [COST n] [PRECISION p]`: MCHECK's, without
/// BLOCK.
const MULTI_CHARGE_ARGS: &[ArgSpec] = &[
    arg("numkeys", INTEGER),
    ArgSpec {
        flags: MULTIPLE,
        ..arg("key", KEY)
    },
    ArgSpec {
        name: "limits",
        kind: BLOCK,
        token: None,
        flags: MULTIPLE,
        subargs: &[arg("npairs", INTEGER), LIMIT],
    },
    option(&args::COST),
    option(&args::PRECISION),
];

const CHARGE_SINCE: &CStr = c"0.5.0";

/// The category module commands are also put in, where servers allow it.
pub const ACL_CATEGORY: &CStr = c"ratelimit";

const SPECS: [CommandSpec; 15] = [
    CommandSpec {
        name: c"ratelimit.check",
        handler: commands::check_command,
        // Not `fast`: a shorter window's entries are read one by one.
        flags: c"write deny-oom",
        acl_categories: c"write",
        summary: c"Decides a request against one or more sliding-window limits and records it once if every limit allows. Replies [allowed, remaining, retry_after_ms, reset_after_ms].",
        complexity: c"O(1) amortised for the key's longest window, plus, for each shorter window, its entries newest first until the limit is known to be full (at most ratelimit.max-entries); the same for any COST.",
        arity: args::CHECK_ARITY,
        key_flags: raw::REDISMODULE_CMD_KEY_RW | raw::REDISMODULE_CMD_KEY_UPDATE,
        args: LIMIT_ARGS,
        keys: Keys::First,
        since: c"0.1.0",
    },
    CommandSpec {
        name: c"ratelimit.peek",
        handler: commands::peek_command,
        flags: c"readonly",
        acl_categories: c"read",
        summary: c"Tells whether RATELIMIT.CHECK would allow a request, without recording it. Same reply.",
        complexity: c"As RATELIMIT.CHECK, plus the entries that expired since the last allowed CHECK.",
        arity: args::PEEK_ARITY,
        key_flags: raw::REDISMODULE_CMD_KEY_RO | raw::REDISMODULE_CMD_KEY_ACCESS,
        args: LIMIT_ARGS,
        keys: Keys::First,
        since: c"0.1.0",
    },
    CommandSpec {
        name: c"ratelimit.undo",
        handler: commands::undo_command,
        flags: c"write deny-oom fast",
        acl_categories: c"write fast",
        summary: c"Refunds the n newest recorded units of cost (default 1), taking part of a request's cost if n ends inside it. Replies with the number of units removed.",
        complexity: c"O(1) per entry refunded.",
        arity: args::UNDO_ARITY,
        key_flags: raw::REDISMODULE_CMD_KEY_RW | raw::REDISMODULE_CMD_KEY_DELETE,
        args: &[arg("key", KEY), option(&args::COST)],
        keys: Keys::First,
        since: c"0.1.0",
    },
    CommandSpec {
        name: RECORD_COMMAND,
        handler: commands::record_command,
        flags: c"write fast",
        acl_categories: c"write fast",
        summary: c"Internal: how an allowed RATELIMIT.CHECK, or a RATELIMIT.CHARGE, reaches replicas and the AOF. Refused from clients.",
        complexity: c"O(1) amortised.",
        arity: -5,
        key_flags: raw::REDISMODULE_CMD_KEY_RW | raw::REDISMODULE_CMD_KEY_UPDATE,
        args: &[
            arg("key", KEY),
            arg("at", INTEGER),
            arg("window", INTEGER),
            arg("cost", INTEGER),
            ArgSpec {
                flags: OPTIONAL,
                ..arg("precision", INTEGER)
            },
        ],
        keys: Keys::First,
        since: c"0.1.0",
    },
    CommandSpec {
        name: WIDEN_COMMAND,
        handler: commands::widen_command,
        flags: c"write fast",
        acl_categories: c"write fast",
        summary: c"Internal: how a denied RATELIMIT.CHECK that names a longer window than the key's log keeps reaches replicas and the AOF. Refused from clients.",
        complexity: c"O(1).",
        arity: 3,
        key_flags: raw::REDISMODULE_CMD_KEY_RW | raw::REDISMODULE_CMD_KEY_UPDATE,
        args: &[arg("key", KEY), arg("window", INTEGER)],
        keys: Keys::First,
        since: c"0.2.0",
    },
    CommandSpec {
        name: c"ratelimit.mcheck",
        handler: commands::mcheck_command,
        flags: c"write deny-oom getkeys-api",
        acl_categories: c"write",
        summary: c"Decides one request against several keys, each with its own limits, and records it once in every key if every key's every limit allows, else in none. Replies [allowed, remaining, retry_after_ms, reset_after_ms, denied].",
        complexity: c"RATELIMIT.CHECK's for each key.",
        arity: args::MCHECK_ARITY,
        key_flags: raw::REDISMODULE_CMD_KEY_RW | raw::REDISMODULE_CMD_KEY_UPDATE,
        args: MULTI_LIMIT_ARGS,
        keys: Keys::Counted,
        since: c"0.2.0",
    },
    CommandSpec {
        name: c"ratelimit.mpeek",
        handler: commands::mpeek_command,
        flags: c"readonly getkeys-api",
        acl_categories: c"read",
        summary: c"Tells whether RATELIMIT.MCHECK would allow a request, without recording it. Same reply.",
        complexity: c"RATELIMIT.PEEK's for each key.",
        arity: args::MPEEK_ARITY,
        key_flags: raw::REDISMODULE_CMD_KEY_RO | raw::REDISMODULE_CMD_KEY_ACCESS,
        args: MULTI_LIMIT_ARGS,
        keys: Keys::Counted,
        since: c"0.2.0",
    },
    CommandSpec {
        name: c"ratelimit.mundo",
        handler: commands::mundo_command,
        flags: c"write deny-oom getkeys-api",
        acl_categories: c"write",
        summary: c"Refunds the n newest recorded units of cost (default 1) in each key, as RATELIMIT.UNDO on each. Replies with the number of units removed per key.",
        complexity: c"O(1) per entry refunded.",
        arity: args::MUNDO_ARITY,
        key_flags: raw::REDISMODULE_CMD_KEY_RW | raw::REDISMODULE_CMD_KEY_DELETE,
        args: &[
            arg("numkeys", INTEGER),
            ArgSpec {
                flags: MULTIPLE,
                ..arg("key", KEY)
            },
            option(&args::COST),
        ],
        keys: Keys::Counted,
        since: c"0.2.0",
    },
    CommandSpec {
        name: c"ratelimit.unblock",
        handler: commands::unblock_command,
        flags: c"write fast",
        acl_categories: c"write fast",
        summary: c"Lifts a key's block (set by a denial with BLOCK ms), keeping its history. Replies 1 if the key was blocked, else 0.",
        complexity: c"O(1).",
        arity: args::UNBLOCK_ARITY,
        key_flags: raw::REDISMODULE_CMD_KEY_RW | raw::REDISMODULE_CMD_KEY_UPDATE,
        args: &[arg("key", KEY)],
        keys: Keys::First,
        since: c"0.3.0",
    },
    CommandSpec {
        name: BLOCK_UNTIL_COMMAND,
        handler: commands::block_until_command,
        flags: c"write fast",
        acl_categories: c"write fast",
        summary: c"Internal: how a denial that starts a block, or an UNBLOCK that lifts one (until 0), reaches replicas and the AOF. Refused from clients.",
        complexity: c"O(1).",
        arity: 3,
        key_flags: raw::REDISMODULE_CMD_KEY_RW | raw::REDISMODULE_CMD_KEY_UPDATE,
        args: &[arg("key", KEY), arg("until", INTEGER)],
        keys: Keys::First,
        since: c"0.3.0",
    },
    CommandSpec {
        name: MULTI_RECORD_COMMAND,
        handler: commands::multi_record_command,
        flags: c"write getkeys-api",
        acl_categories: c"write",
        summary: c"Internal: how an allowed RATELIMIT.MCHECK, or a RATELIMIT.MCHARGE, reaches replicas and the AOF, every key's record in one command. Refused from clients.",
        complexity: c"O(1) amortised per key.",
        arity: -7,
        key_flags: raw::REDISMODULE_CMD_KEY_RW | raw::REDISMODULE_CMD_KEY_UPDATE,
        args: &[
            arg("numkeys", INTEGER),
            ArgSpec {
                flags: MULTIPLE,
                ..arg("key", KEY)
            },
            arg("at", INTEGER),
            arg("cost", INTEGER),
            arg("precision", INTEGER),
            ArgSpec {
                flags: MULTIPLE,
                ..arg("window", INTEGER)
            },
        ],
        keys: Keys::Counted,
        since: c"0.3.0",
    },
    CommandSpec {
        name: c"ratelimit.charge",
        handler: commands::charge_command,
        // As CHECK: a shorter window's entries are read one by one.
        flags: c"write deny-oom",
        acl_categories: c"write",
        summary: c"Records a settlement of n units of cost (default 1) whatever the limits say, never denied, and measures the key against them. Replies [over, remaining, retry_after_ms, reset_after_ms].",
        complexity: c"O(1) amortised for the key's longest window, plus, for each shorter window, the entries in it; the same for any COST.",
        arity: args::CHARGE_ARITY,
        key_flags: raw::REDISMODULE_CMD_KEY_RW | raw::REDISMODULE_CMD_KEY_UPDATE,
        args: CHARGE_ARGS,
        keys: Keys::First,
        since: CHARGE_SINCE,
    },
    CommandSpec {
        name: c"ratelimit.mcharge",
        handler: commands::mcharge_command,
        flags: c"write deny-oom getkeys-api",
        acl_categories: c"write",
        summary: c"Records a settlement of n units of cost (default 1) in every key, as RATELIMIT.CHARGE on each with its own limits. Replies [over, remaining, retry_after_ms, reset_after_ms, over_keys].",
        complexity: c"RATELIMIT.CHARGE's for each key.",
        arity: args::MCHARGE_ARITY,
        key_flags: raw::REDISMODULE_CMD_KEY_RW | raw::REDISMODULE_CMD_KEY_UPDATE,
        args: MULTI_CHARGE_ARGS,
        keys: Keys::Counted,
        since: CHARGE_SINCE,
    },
    CommandSpec {
        name: c"ratelimit.gcra",
        handler: gcra_commands::gcra_command,
        flags: GCRA_FLAGS,
        acl_categories: c"write fast",
        summary: c"Decides a request of TOKENS n (default 1; 0 asks without charging) against a token bucket (GCRA) of count per period seconds in bursts of max_burst + 1, and charges it if allowed. Replies as redis-cell's CL.THROTTLE: [limited, max_burst + 1, remaining, retry_after (-1 if allowed), reset_after], in seconds, or in milliseconds with MS. CHARGE settles: the n tokens are charged whatever the bucket holds, even past full, never limited; REFUND takes back up to n tokens. Both reply [over, max_burst + 1, remaining, retry_after (-1 if a token fits now), reset_after].",
        complexity: GCRA_COMPLEXITY,
        arity: args::GCRA_ARITY,
        key_flags: GCRA_KEY_FLAGS,
        args: GCRA_ARGS,
        keys: Keys::First,
        since: GCRA_SINCE,
    },
    CommandSpec {
        name: GCRA_SET_COMMAND,
        handler: gcra_commands::gcra_set_command,
        flags: c"write fast",
        acl_categories: c"write fast",
        summary: c"Internal: how an allowed RATELIMIT.GCRA (or CL.THROTTLE, GCRA) reaches replicas and the AOF: the bucket it stored and the key's expiry. Refused from clients.",
        complexity: GCRA_COMPLEXITY,
        arity: 6,
        key_flags: GCRA_KEY_FLAGS,
        args: &[
            arg("key", KEY),
            arg("at", INTEGER),
            arg("period", INTEGER),
            arg("level", INTEGER),
            arg("expires_at", INTEGER),
        ],
        keys: Keys::First,
        since: GCRA_SINCE,
    },
];

/// The drop-in names, registered only when asked for (`aliases` at load).
fn alias_spec(alias: Alias) -> CommandSpec {
    match alias {
        Alias::CellThrottle => CommandSpec {
            name: c"cl.throttle",
            handler: gcra_commands::cell_throttle_command,
            flags: GCRA_FLAGS,
            acl_categories: c"write fast",
            summary: c"redis-cell's command, on this module's token bucket (loaded with aliases cl.throttle): RATELIMIT.GCRA with the request's tokens as quantity (default 1; 0 asks without charging).",
            complexity: GCRA_COMPLEXITY,
            arity: -5,
            key_flags: GCRA_KEY_FLAGS,
            args: CELL_THROTTLE_ARGS,
            keys: Keys::First,
            since: GCRA_SINCE,
        },
        Alias::Gcra => CommandSpec {
            name: c"gcra",
            handler: gcra_commands::redis_gcra_command,
            flags: GCRA_FLAGS,
            acl_categories: c"write fast",
            summary: c"Redis's held-out GCRA command, on this module's token bucket (loaded with aliases gcra): RATELIMIT.GCRA, its waits in seconds rounded up.",
            complexity: GCRA_COMPLEXITY,
            arity: -5,
            key_flags: GCRA_KEY_FLAGS,
            args: REDIS_GCRA_ARGS,
            keys: Keys::First,
            since: GCRA_SINCE,
        },
    }
}

/// `CL.THROTTLE key max_burst count period [quantity]`.
const CELL_THROTTLE_ARGS: &[ArgSpec] = &{
    let [key, max_burst, count, period] = gcra_limit_args("count");
    [
        key,
        max_burst,
        count,
        period,
        ArgSpec {
            flags: OPTIONAL,
            ..arg("quantity", INTEGER)
        },
    ]
};

/// `GCRA key max_burst tokens_per_period period [TOKENS n]`.
const REDIS_GCRA_ARGS: &[ArgSpec] = &{
    let [key, max_burst, count, period] = gcra_limit_args("tokens_per_period");
    [key, max_burst, count, period, option(&args::TOKENS)]
};

/// Creates every command, and the drop-in names in `aliases` that the
/// server does not already have (one it has is left out, saying so in the
/// server's log; INFO lists those registered). Docs, key specs and
/// categories are set where the server has the API for them (docs from
/// 7.0, categories from 7.2).
pub fn register(ctx: &Context, aliases: &[Alias]) -> Result<(), String> {
    let with_own_category = add_own_category(ctx);
    for spec in &SPECS {
        create(ctx, spec)?;
        describe(ctx, spec, with_own_category)?;
    }
    let mut registered = Vec::new();
    for &alias in aliases {
        let spec = alias_spec(alias);
        if create(ctx, &spec).is_err() {
            ctx.log_warning(&format!(
                "ratelimit: not registering {}: the server already has a command of that name",
                alias.name().to_uppercase()
            ));
            continue;
        }
        describe(ctx, &spec, with_own_category)?;
        registered.push(alias.name());
    }
    if let Ok(mut list) = config::REGISTERED_ALIASES.lock() {
        *list = registered;
    }
    Ok(())
}

/// Adds the `@ratelimit` ACL category where the server lets modules add
/// one (Redis 7.2+, Valkey 8); true if it did.
fn add_own_category(ctx: &Context) -> bool {
    // SAFETY: a copy of a function pointer Redis filled in at load.
    let add_category = unsafe { raw::RedisModule_AddACLCategory };
    match add_category {
        // SAFETY: a static C string, during OnLoad.
        Some(add) => (unsafe { add(ctx.ctx, ACL_CATEGORY.as_ptr()) }) == raw::Status::Ok as c_int,
        None => false,
    }
}

/// Sets a created command's docs, key specs and ACL categories.
fn describe(ctx: &Context, spec: &CommandSpec, with_own_category: bool) -> Result<(), String> {
    // SAFETY: copies of function pointers Redis filled in at load.
    let (get_command, set_info, set_categories) = unsafe {
        (
            raw::RedisModule_GetCommand,
            raw::RedisModule_SetCommandInfo,
            raw::RedisModule_SetCommandACLCategories,
        )
    };
    let Some(get_command) = get_command else {
        return Ok(());
    };
    // SAFETY: the command was just created under this name.
    let command = unsafe { get_command(ctx.ctx, spec.name.as_ptr()) };
    if command.is_null() {
        return Err(format!("cannot find {:?} after creating it", spec.name));
    }
    if let Some(set_info) = set_info {
        set_command_info(spec, command, set_info)?;
    }
    if let Some(set_categories) = set_categories {
        let categories = if with_own_category {
            format!(
                "{} {}",
                spec.acl_categories.to_string_lossy(),
                ACL_CATEGORY.to_string_lossy()
            )
        } else {
            spec.acl_categories.to_string_lossy().into_owned()
        };
        let categories = std::ffi::CString::new(categories).map_err(|e| e.to_string())?;
        // SAFETY: a live command and a C string Redis copies.
        if unsafe { set_categories(command, categories.as_ptr()) } != raw::Status::Ok as c_int {
            return Err(format!("cannot set ACL categories of {:?}", spec.name));
        }
    }
    Ok(())
}

fn create(ctx: &Context, spec: &CommandSpec) -> Result<(), String> {
    // The key is argument 1; counted keys are found by the key spec
    // (servers without key specs are older than the module supports).
    let (first, last, step) = match spec.keys {
        Keys::First => (1, 1, 1),
        Keys::Counted => (0, 0, 0),
    };
    // SAFETY: static C strings and a valid callback.
    let created = unsafe {
        (api().create_command)(
            ctx.ctx,
            spec.name.as_ptr(),
            Some(spec.handler),
            spec.flags.as_ptr(),
            first,
            last,
            step,
        )
    };
    if created == raw::Status::Ok as c_int {
        Ok(())
    } else {
        Err(format!("cannot create {:?}", spec.name))
    }
}

type SetCommandInfo =
    unsafe extern "C" fn(*mut raw::RedisModuleCommand, *const raw::RedisModuleCommandInfo) -> c_int;

/// Builds the C structures Redis reads (and copies) for COMMAND DOCS and
/// key specs; they live on this stack frame or in its arena.
fn set_command_info(
    spec: &CommandSpec,
    command: *mut raw::RedisModuleCommand,
    set_info: SetCommandInfo,
) -> Result<(), String> {
    let version = raw::RedisModuleCommandInfoVersion {
        version: 1,
        sizeof_historyentry: std::mem::size_of::<raw::RedisModuleCommandHistoryEntry>(),
        sizeof_keyspec: std::mem::size_of::<raw::RedisModuleCommandKeySpec>(),
        sizeof_arg: std::mem::size_of::<raw::RedisModuleCommandArg>(),
    };
    // SAFETY: these C structs are plain data; all-zero is their "end of
    // array" marker and a valid empty value.
    let zeroed_key_spec = || unsafe { std::mem::zeroed::<raw::RedisModuleCommandKeySpec>() };
    let mut key_spec = zeroed_key_spec();
    key_spec.flags = u64::from(spec.key_flags);
    key_spec.begin_search_type = raw::RedisModuleKeySpecBeginSearchType_REDISMODULE_KSPEC_BS_INDEX;
    key_spec.bs.index.pos = 1;
    match spec.keys {
        Keys::First => {
            key_spec.find_keys_type =
                raw::RedisModuleKeySpecFindKeysType_REDISMODULE_KSPEC_FK_RANGE;
            key_spec.fk.range.lastkey = 0;
            key_spec.fk.range.keystep = 1;
            key_spec.fk.range.limit = 0;
        }
        Keys::Counted => {
            key_spec.find_keys_type =
                raw::RedisModuleKeySpecFindKeysType_REDISMODULE_KSPEC_FK_KEYNUM;
            key_spec.fk.keynum.keynumidx = 0;
            key_spec.fk.keynum.firstkey = 1;
            key_spec.fk.keynum.keystep = 1;
        }
    }
    let mut key_specs = [key_spec, zeroed_key_spec()];
    let mut arena = ArgArena::default();
    let args = arena.build(spec.args)?;
    let info = raw::RedisModuleCommandInfo {
        version: &version,
        summary: spec.summary.as_ptr(),
        complexity: spec.complexity.as_ptr(),
        since: spec.since.as_ptr(),
        history: ptr::null_mut(),
        tips: ptr::null(),
        arity: spec.arity,
        key_specs: key_specs.as_mut_ptr(),
        args,
    };
    // SAFETY: every pointer in `info` outlives the call; Redis copies them.
    if unsafe { set_info(command, &info) } == raw::Status::Ok as c_int {
        Ok(())
    } else {
        Err(format!("cannot set the docs of {:?}", spec.name))
    }
}

/// Owns the C strings and arrays of a command's argument docs until Redis
/// has copied them.
#[derive(Default)]
struct ArgArena {
    strings: Vec<CString>,
    arrays: Vec<Vec<raw::RedisModuleCommandArg>>,
}

impl ArgArena {
    fn c_str(&mut self, text: &str) -> Result<*const c_char, String> {
        let owned = CString::new(text).map_err(|e| e.to_string())?;
        let pointer = owned.as_ptr();
        self.strings.push(owned);
        Ok(pointer)
    }

    /// The zero-terminated C array for `specs`, blocks included.
    fn build(&mut self, specs: &[ArgSpec]) -> Result<*mut raw::RedisModuleCommandArg, String> {
        let mut array = Vec::with_capacity(specs.len() + 1);
        for spec in specs {
            let subargs = match spec.subargs {
                [] => ptr::null_mut(),
                subargs => self.build(subargs)?,
            };
            array.push(raw::RedisModuleCommandArg {
                name: self.c_str(spec.name)?,
                type_: spec.kind,
                key_spec_index: if spec.kind == KEY { 0 } else { -1 },
                token: match spec.token {
                    Some(token) => self.c_str(token)?,
                    None => ptr::null(),
                },
                summary: ptr::null(),
                since: ptr::null(),
                flags: spec.flags as c_int,
                deprecated_since: ptr::null(),
                subargs,
                display_text: ptr::null(),
            });
        }
        // SAFETY: a plain C struct; all-zero ends the array.
        array.push(unsafe { std::mem::zeroed() });
        let pointer = array.as_mut_ptr();
        // Moving the Vec into the arena keeps its buffer where it is.
        self.arrays.push(array);
        Ok(pointer)
    }
}
