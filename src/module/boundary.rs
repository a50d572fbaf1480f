//! The FFI boundary: raw Redis callbacks in, Rust handlers out, and no
//! panic crossing back into Redis (it would abort the server).

use crate::args::ArgError;
use crate::module::api::api;
use redis_module::{raw, Context};
use std::os::raw::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// One command argument as Redis passed it. `repr(transparent)` lets argv
/// be read as `&[Arg]` in place: no copy, no retain, no allocation.
#[repr(transparent)]
pub struct Arg(*mut raw::RedisModuleString);

impl Arg {
    pub fn as_ptr(&self) -> *mut raw::RedisModuleString {
        self.0
    }
}

impl AsRef<[u8]> for Arg {
    fn as_ref(&self) -> &[u8] {
        let mut len = 0;
        let ptr = raw::string_ptr_len(self.0, &mut len);
        // SAFETY: Redis keeps argv alive for the whole command call.
        unsafe { std::slice::from_raw_parts(ptr.cast(), len) }
    }
}

/// Why a command failed, answered as an error reply.
#[derive(Debug)]
pub enum CommandError {
    WrongArity,
    WrongType,
    Invalid(String),
}

impl From<ArgError> for CommandError {
    fn from(error: ArgError) -> Self {
        match error {
            ArgError::WrongArity => CommandError::WrongArity,
            ArgError::Invalid(text) => CommandError::Invalid(text),
        }
    }
}

pub type Handler = fn(&Context, &[Arg]) -> Result<(), CommandError>;

const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
const PANICKED: &str =
    "ERR ratelimit: internal error, the command was aborted (see the server log)";

/// Runs `handler` as the body of a Redis command: the handler replies on
/// success, and an error or a panic becomes an error reply here.
pub fn run_command(
    ctx: *mut raw::RedisModuleCtx,
    argv: *mut *mut raw::RedisModuleString,
    argc: c_int,
    handler: Handler,
) -> c_int {
    let context = Context::new(ctx);
    let args: &[Arg] = match usize::try_from(argc) {
        // SAFETY: Redis passes argc valid pointers; Arg is repr(transparent).
        Ok(len) if !argv.is_null() => unsafe { std::slice::from_raw_parts(argv.cast(), len) },
        _ => &[],
    };
    match catch_unwind(AssertUnwindSafe(|| handler(&context, args))) {
        Ok(Ok(())) => {}
        Ok(Err(CommandError::WrongArity)) => {
            // SAFETY: a plain call on the live context.
            unsafe { (api().wrong_arity)(ctx) };
        }
        Ok(Err(CommandError::WrongType)) => {
            context.reply_error_string(WRONGTYPE);
        }
        Ok(Err(CommandError::Invalid(text))) => {
            context.reply_error_string(&format!("ERR {text}"));
        }
        Err(_) => {
            context.reply_error_string(PANICKED);
        }
    }
    raw::Status::Ok as c_int
}

/// Runs a data type callback, giving `fallback` if it panics.
pub fn guard<T>(fallback: T, callback: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(callback)).unwrap_or(fallback)
}
