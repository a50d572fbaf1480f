//! Files of the repository the tests hold the server to.

use std::path::{Path, PathBuf};

/// The repository's top directory.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("harness/ sits in the repository")
        .to_path_buf()
}

/// README.md, whose examples, error table and support table are checked
/// against a real server.
pub fn readme() -> String {
    std::fs::read_to_string(root().join("README.md")).expect("README.md")
}
