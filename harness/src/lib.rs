//! The harness redis-ratelimit's integration tests and benchmarks share:
//! a real server with the freshly built module or without it (`server.rs`),
//! the module and its script twin as backends of one contract
//! (`backend.rs`), the contract's corpus (`corpus.rs`), the twin run in-process under a test's clock
//! (`embedded.rs`), commands
//! sent to it (`commands.rs`), what it says about itself (`info.rs`,
//! and `docs.rs` for COMMAND DOCS), logs of every shape (`logs.rs`),
//! cheap randomness (`random.rs`), the repository's files the tests read
//! (`repository.rs`), and the twin's stored values read and written in
//! Rust (`twin_format.rs`).

mod backend;
mod charges;
mod commands;
pub mod corpus;
mod docs;
mod embedded;
mod info;
mod logs;
mod payloads;
mod random;
mod repository;
mod server;
pub mod twin_format;

pub use backend::*;
pub use charges::*;
pub use commands::*;
pub use corpus::Reply;
pub use docs::*;
pub use embedded::*;
pub use info::*;
pub use logs::*;
pub use payloads::*;
pub use random::Random;
pub use repository::*;
pub use server::*;

/// A test per backend for each contract test (one source for the module
/// and the twin, in any test file): `module::name`,
/// `twin_fcall::name`, `twin_evalsha::name`, `twin_restricted::name`.
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        $crate::on_every_backend!(@backend module, Module, [$($name),*]);
        $crate::on_every_backend!(@backend twin_fcall, Function, [$($name),*]);
        $crate::on_every_backend!(@backend twin_evalsha, Script, [$($name),*]);
        $crate::on_every_backend!(@backend twin_restricted, Restricted, [$($name),*]);
    };
    (@backend $module:ident, $backend:ident, [$($name:ident),*]) => {
        mod $module {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::Backend::$backend);
                }
            )*
        }
    };
}
