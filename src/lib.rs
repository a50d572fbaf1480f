//! redis-ratelimit: exact sliding-window rate limiting as a Redis module.
//!
//! The pure core: `log` (how a key's timestamps are stored), `state` (the
//! log and a key's block together), `limiter`
//! (what is decided), `gcra` (the token bucket beside it) and `args` (what
//! a command's arguments mean). The Redis skin over it lives in `module`.
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod args;
#[cfg(test)]
mod contract;
pub mod gcra;
pub mod limiter;
pub mod log;
pub mod reference;
pub mod state;

// The skin needs Redis's allocator and API, which unit tests and the fuzz
// targets do not have.
#[cfg(not(any(test, feature = "fuzzing")))]
mod module;

/// `make test` runs the unit and property tests under the `checked`
/// profile so that a wrap or a broken `debug_assert!` fails them rather
/// than passing silently: this fails if they ever run without both.
#[cfg(test)]
mod checked_profile {
    #[test]
    fn arithmetic_and_assertions_are_checked() {
        if !cfg!(debug_assertions) {
            panic!("run the core's tests with `cargo test --profile checked --lib`");
        }
        let max = std::hint::black_box(u64::MAX);
        let wrapped = std::panic::catch_unwind(|| max + 1);
        assert!(wrapped.is_err(), "u64::MAX + 1 did not panic: {wrapped:?}");
    }
}
