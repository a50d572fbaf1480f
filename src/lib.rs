//! redis-ratelimit: exact sliding-window rate limiting as a Redis module.
//!
//! The pure core is its own crate (core/, `ratelimit_core`): what is
//! stored, decided and parsed, and the reference model. This crate is the
//! Redis skin over it (`module`), which uses the core's modules under
//! their own names.
#![warn(clippy::undocumented_unsafe_blocks)]

pub use ratelimit_core::{args, gcra, limiter, log, state};

// The skin needs Redis's allocator and API, which unit tests do not have.
#[cfg(not(test))]
mod module;
