//! Files of the repository the tests hold the server to.

use std::path::{Path, PathBuf};

/// The repository's top directory.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("harness/ sits in the repository")
        .to_path_buf()
}

/// The documentation: README.md and every page of docs/, one after the
/// other. Its examples, error tables and support table are checked against
/// a real server wherever a section lives.
pub fn documentation() -> String {
    let mut pages = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
        .iter()
        .map(|page| std::fs::read_to_string(page).expect("a page of the documentation"))
        .collect::<Vec<_>>()
        .join("\n")
}
