//! redis-ratelimit: exact sliding-window rate limiting as a Redis module.
//!
//! The pure core: `log` (how a key's timestamps are stored), `limiter`
//! (what is decided) and `args` (what a command's arguments mean). The
//! Redis skin over it lives in `module`.
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod args;
pub mod limiter;
pub mod log;
#[cfg(any(test, feature = "fuzzing"))]
pub mod reference;

// The skin needs Redis's allocator and API, which unit tests and the fuzz
// targets do not have.
#[cfg(not(any(test, feature = "fuzzing")))]
mod module;
