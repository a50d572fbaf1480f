//! redis-ratelimit's pure core, with no Redis in it: `log` (how a key's
//! timestamps are stored), `state` (the log and a key's block together),
//! `limiter` (what is decided), `gcra` (the token bucket beside it),
//! `args` (what a command's arguments mean), and `reference` (the model
//! written the slow, obvious way: the contract every engine is held to,
//! which `contract` writes out as contract/corpus.jsonl). The module's
//! Redis skin (the top crate) and the tests of the twin build on it.
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod args;
#[cfg(test)]
mod contract;
pub mod gcra;
pub mod limiter;
pub mod log;
pub mod reference;
pub mod state;

/// `make test` runs the unit and property tests under the `checked`
/// profile so that a wrap or a broken `debug_assert!` fails them rather
/// than passing silently: this fails if they ever run without both.
#[cfg(test)]
mod checked_profile {
    #[test]
    fn arithmetic_and_assertions_are_checked() {
        if !cfg!(debug_assertions) {
            panic!("run the core's tests with `cargo test --profile checked -p ratelimit-core`");
        }
        let max = std::hint::black_box(u64::MAX);
        let wrapped = std::panic::catch_unwind(|| max + 1);
        assert!(wrapped.is_err(), "u64::MAX + 1 did not panic: {wrapped:?}");
    }
}
