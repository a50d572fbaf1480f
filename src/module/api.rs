//! The server functions the module calls, looked up once when it loads:
//! a server that lacks one refuses the module, naming it, rather than a
//! command or a save failing later. (The optional ones, which the module
//! does without on older servers, are looked up where they are used.)

use redis_module::raw;
use std::ffi::c_void;
use std::os::raw::{c_char, c_int, c_longlong};
use std::sync::OnceLock;

type Ctx = *mut raw::RedisModuleCtx;
type Key = *mut raw::RedisModuleKey;
type Str = *mut raw::RedisModuleString;
type Digest = *mut raw::RedisModuleDigest;

pub struct Api {
    pub create_command: unsafe extern "C" fn(
        Ctx,
        *const c_char,
        raw::RedisModuleCmdFunc,
        *const c_char,
        c_int,
        c_int,
        c_int,
    ) -> c_int,
    pub milliseconds: unsafe extern "C" fn() -> raw::mstime_t,
    pub key_type: unsafe extern "C" fn(Key) -> c_int,
    pub module_type_get_type: unsafe extern "C" fn(Key) -> *mut raw::RedisModuleType,
    pub module_type_get_value: unsafe extern "C" fn(Key) -> *mut c_void,
    pub module_type_set_value:
        unsafe extern "C" fn(Key, *mut raw::RedisModuleType, *mut c_void) -> c_int,
    pub set_abs_expire: unsafe extern "C" fn(Key, raw::mstime_t) -> c_int,
    pub delete_key: unsafe extern "C" fn(Key) -> c_int,
    pub replicate: unsafe extern "C" fn(Ctx, *const c_char, *const c_char, ...) -> c_int,
    pub emit_aof: unsafe extern "C" fn(*mut raw::RedisModuleIO, *const c_char, *const c_char, ...),
    pub create_string_from_long_long: unsafe extern "C" fn(Ctx, c_longlong) -> Str,
    pub free_string: unsafe extern "C" fn(Ctx, Str),
    pub wrong_arity: unsafe extern "C" fn(Ctx) -> c_int,
    pub signal_modified_key: unsafe extern "C" fn(Ctx, Str) -> c_int,
    pub notify_keyspace_event: unsafe extern "C" fn(Ctx, c_int, *const c_char, Str) -> c_int,
    pub digest_add_long_long: unsafe extern "C" fn(Digest, c_longlong),
    pub digest_add_string_buffer: unsafe extern "C" fn(Digest, *const c_char, usize),
    pub digest_end_sequence: unsafe extern "C" fn(Digest),
    pub is_keys_position_request: unsafe extern "C" fn(Ctx) -> c_int,
    pub key_at_pos: unsafe extern "C" fn(Ctx, c_int),
}

static API: OnceLock<Api> = OnceLock::new();

/// The function Redis filled in under `name`, or why the module cannot load.
fn present<T>(function: Option<T>, name: &str) -> Result<T, String> {
    function.ok_or_else(|| format!("this server lacks RedisModule_{name}"))
}

macro_rules! lookup {
    ($($field:ident: $name:ident),* $(,)?) => {
        // SAFETY: copies of function pointers Redis filled in before
        // OnLoad, on the main thread; nothing writes them afterwards.
        Api { $($field: present(unsafe { raw::$name }, stringify!($name))?),* }
    };
}

/// Looks every function up; called once, from OnLoad.
pub fn load() -> Result<(), String> {
    let api = lookup! {
        create_command: RedisModule_CreateCommand,
        milliseconds: RedisModule_Milliseconds,
        key_type: RedisModule_KeyType,
        module_type_get_type: RedisModule_ModuleTypeGetType,
        module_type_get_value: RedisModule_ModuleTypeGetValue,
        module_type_set_value: RedisModule_ModuleTypeSetValue,
        set_abs_expire: RedisModule_SetAbsExpire,
        delete_key: RedisModule_DeleteKey,
        replicate: RedisModule_Replicate,
        emit_aof: RedisModule_EmitAOF,
        create_string_from_long_long: RedisModule_CreateStringFromLongLong,
        free_string: RedisModule_FreeString,
        wrong_arity: RedisModule_WrongArity,
        signal_modified_key: RedisModule_SignalModifiedKey,
        notify_keyspace_event: RedisModule_NotifyKeyspaceEvent,
        digest_add_long_long: RedisModule_DigestAddLongLong,
        digest_add_string_buffer: RedisModule_DigestAddStringBuffer,
        digest_end_sequence: RedisModule_DigestEndSequence,
        is_keys_position_request: RedisModule_IsKeysPositionRequest,
        key_at_pos: RedisModule_KeyAtPos,
    };
    // A second OnLoad in one process (MODULE LOAD after an UNLOAD) finds
    // the same server and the same functions.
    let _ = API.set(api);
    Ok(())
}

/// The functions looked up at load. Commands and type callbacks only run
/// once OnLoad has succeeded, which needs `load` to have.
pub fn api() -> &'static Api {
    match API.get() {
        Some(api) => api,
        None => unreachable!("RedisModule functions are looked up in OnLoad"),
    }
}
