//! The client code the documentation shows, run against a real server: each
//! client's example in each protocol it speaks, and the HTTP example with
//! real requests. README.md quotes each example
//! word for word (between the `README:begin` and `README:end` markers),
//! and its Token budgets section the Node package's proxy example.
//! `make test` installs the Node and Python packages they need.

use harness::{root, Server};
use std::path::{Path, PathBuf};
use std::process::Command;

fn examples() -> PathBuf {
    root().join("examples")
}

/// Runs an example and fails with its output unless it succeeds.
fn succeeds(program: impl AsRef<std::ffi::OsStr>, args: &[&str], env: &[(&str, String)]) {
    let mut command = Command::new(&program);
    command.args(args).current_dir(examples());
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e} (run `make test`)", program.as_ref()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{:?} {args:?} failed:\n{text}",
        program.as_ref()
    );
    eprint!("{text}");
}

#[test]
fn every_client_enforces_the_limit_in_each_protocol() {
    let server = Server::start(&[]);
    let port = server.port.to_string();
    let python = root().join(".venv/bin/python3");
    let redis_rs = root().join("target/release/examples/redis_rs");
    // No protocol argument: the client's own default.
    for protocol in [None, Some("2"), Some("3")] {
        let args = |script: &'static str| -> Vec<&str> {
            [script, port.as_str()]
                .into_iter()
                .chain(protocol)
                .collect()
        };
        succeeds("node", &args("node/ioredis.mjs"), &[]);
        succeeds("node", &args("node/node-redis.mjs"), &[]);
        succeeds(&python, &args("python/redis_py.py"), &[]);
        let rust: Vec<&str> = [port.as_str()].into_iter().chain(protocol).collect();
        succeeds(&redis_rs, &rust, &[]);
    }
}

#[test]
fn the_http_example_limits_with_ratelimit_fields() {
    let server = Server::start(&[]);
    let port = ("RATELIMIT_PORT", server.port.to_string());
    succeeds("node", &["--test", "node/http.test.mjs"], &[port]);
}

/// The marked part of each example, as README.md must quote it.
fn quoted_parts(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).expect("example");
    let mut parts = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in text.lines() {
        if line
            .trim_start()
            .trim_start_matches(['/', '#', ' '])
            .starts_with("README:begin")
        {
            current = Some(Vec::new());
        } else if line
            .trim_start()
            .trim_start_matches(['/', '#', ' '])
            .starts_with("README:end")
        {
            parts.extend(current.take().map(|lines| dedent(&lines)));
        } else if let Some(lines) = current.as_mut() {
            lines.push(line);
        }
    }
    parts
}

fn dedent(lines: &[&str]) -> String {
    let indent = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let kept: Vec<&str> = lines
        .iter()
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect();
    kept.join("\n")
}

#[test]
fn readme_quotes_every_example() {
    let readme = harness::documentation();
    let files = [
        "node/ioredis.mjs",
        "node/node-redis.mjs",
        "python/redis_py.py",
        "redis_rs.rs",
        "node/http-server.mjs",
        "node/cluster.mjs",
    ];
    for file in files {
        let parts = quoted_parts(&examples().join(file));
        assert!(
            !parts.is_empty(),
            "{file} marks nothing for the documentation"
        );
        for part in parts {
            assert!(
                readme.contains(&part),
                "the documentation does not quote {file}:\n{part}"
            );
        }
    }
}

/// README.md's "Token budgets" shows the Node package's token-budget
/// example (which the package's tests run as a program over HTTP) word for
/// word: its code block is a part of that file.
#[test]
fn the_token_budgets_section_quotes_the_proxy_example() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let section = readme
        .split("\n## Token budgets\n")
        .nth(1)
        .expect("README.md has a Token budgets section");
    let quoted = section
        .split("```js\n")
        .nth(1)
        .and_then(|block| block.split("\n```").next())
        .expect("the section quotes JavaScript");
    let example = root().join("clients/node/examples/token-budget.mjs");
    let example = std::fs::read_to_string(&example).expect("the example");
    assert!(
        quoted.lines().count() >= 10 && quoted.contains("settle:") && quoted.contains("cost:"),
        "the quote shows the reservation and the settlement:\n{quoted}"
    );
    assert!(
        example.contains(quoted),
        "README.md's Token budgets does not quote clients/node/examples/token-budget.mjs:\n{quoted}"
    );
}
