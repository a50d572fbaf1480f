//! A real server with the freshly built module: `redis-server` (or the
//! binary in `RATELIMIT_SERVER`) on a free loopback port and a fresh
//! directory, stopped when dropped, even if a test fails.

use crate::commands::run;
use crate::info::wait_for_background_saves;
use redis::{Connection, Value};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

pub fn module_path() -> PathBuf {
    if let Some(path) = std::env::var_os("RATELIMIT_MODULE") {
        return path.into();
    }
    // The workspace's target/ is above this crate's directory or in it.
    let built = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|dir| dir.join("target/release/libredis_ratelimit.so"))
        .find(|path| path.exists());
    built.expect(
        "libredis_ratelimit.so is missing: run `make test`, or `cargo build --release` first",
    )
}

pub fn server_binary() -> String {
    std::env::var("RATELIMIT_SERVER").unwrap_or_else(|_| "redis-server".into())
}

/// A command that runs the server, such as valgrind: `RATELIMIT_WRAPPER`
/// split on spaces (`make memcheck` sets it).
fn wrapper() -> Option<Vec<String>> {
    let words: Vec<String> = std::env::var("RATELIMIT_WRAPPER")
        .ok()?
        .split_whitespace()
        .map(String::from)
        .collect();
    (!words.is_empty()).then_some(words)
}

pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    listener.local_addr().expect("bound").port()
}

fn fresh_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ratelimit-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}

/// The options every test server gets: loopback only, no persistence
/// unless a test asks, DEBUG and MODULE allowed, replicas sync at once;
/// and the module with `module_args`.
fn server_args(module_args: &[&str], extra: &[&str]) -> Vec<String> {
    let mut args = plain_args(&[]);
    args.push("--loadmodule".into());
    args.push(module_path().display().to_string());
    args.extend(module_args.iter().map(|s| s.to_string()));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// The same options without the module, as on a managed service.
fn plain_args(extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--enable-debug-command",
        "local",
        "--enable-module-command",
        "local",
        "--repl-diskless-sync-delay",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

pub struct Server {
    pub port: u16,
    pub dir: PathBuf,
    args: Vec<String>,
    config_file: Option<PathBuf>,
    child: Option<Child>,
    /// The command the server runs under, if any (`RATELIMIT_WRAPPER`'s
    /// words unless `start_under` gave its own).
    wrapper: Option<Vec<String>>,
}

impl Server {
    /// A server with the module and these extra `--option value` words.
    pub fn start(extra: &[&str]) -> Server {
        Server::start_with_module_args(&[], extra)
    }

    pub fn start_with_module_args(module_args: &[&str], extra: &[&str]) -> Server {
        Server::launch_new(None, server_args(module_args, extra))
    }

    /// A server with nothing loaded (the script twin's kind of server).
    pub fn start_without_module(extra: &[&str]) -> Server {
        Server::launch_new(None, plain_args(extra))
    }

    /// A server with the module run under `wrapper` (such as valgrind's
    /// callgrind, for a benchmark's instruction counts).
    pub fn start_under(wrapper: &[&str], extra: &[&str]) -> Server {
        let wrapper = wrapper.iter().map(|w| w.to_string()).collect();
        Server::launch(None, server_args(&[], extra), Some(wrapper))
    }

    /// The log of a server with the module and `module_args` that must
    /// refuse to start (it fails the test if it starts).
    pub fn refused_start(module_args: &[&str]) -> String {
        let mut server = Server::new(None, server_args(module_args, &[]), wrapper());
        loop {
            match server.spawn() {
                Ok(()) => panic!("the server started with {module_args:?}"),
                // Another test's server took the port first: try another.
                Err(log) if log.contains("already in use") => server.port = free_port(),
                Err(log) => return log,
            }
        }
    }

    /// The server's process id (the wrapper's, under one).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// A server started from a config file holding `config` (so that
    /// CONFIG REWRITE has a file to write), plus the usual options.
    pub fn start_with_config(config: &str) -> Server {
        Server::launch_new(Some(config.to_string()), server_args(&[], &[]))
    }

    fn launch_new(config: Option<String>, args: Vec<String>) -> Server {
        Server::launch(config, args, wrapper())
    }

    fn launch(config: Option<String>, args: Vec<String>, wrapper: Option<Vec<String>>) -> Server {
        let mut server = Server::new(config, args, wrapper);
        // A free port can be taken by another test's server between our
        // look and its bind; then try another.
        for _ in 0..4 {
            if server.spawn().is_ok() {
                return server;
            }
            server.port = free_port();
        }
        server
            .spawn()
            .unwrap_or_else(|log| panic!("server did not start:\n{log}"));
        server
    }

    /// A server not yet started, in a fresh directory.
    fn new(config: Option<String>, args: Vec<String>, wrapper: Option<Vec<String>>) -> Server {
        let dir = fresh_dir();
        let config_file = config.map(|text| {
            let file = dir.join("redis.conf");
            std::fs::write(&file, text).expect("a config file");
            file
        });
        Server {
            port: free_port(),
            dir,
            args,
            config_file,
            child: None,
            wrapper,
        }
    }

    /// Starts the server on its port, or returns its log if it exited.
    fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::File::create(self.dir.join("server.log")).expect("a log file");
        let mut command = match &self.wrapper {
            Some(words) => {
                let mut command = Command::new(&words[0]);
                command.args(&words[1..]).arg(server_binary());
                command
            }
            None => Command::new(server_binary()),
        };
        if let Some(file) = &self.config_file {
            command.arg(file);
        }
        // Started in its own directory, where a wrapper's files land too.
        let child = command
            .current_dir(&self.dir)
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.args)
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", server_binary()));
        self.child = Some(child);
        self.wait_until_ready()
    }

    /// Ready when our own process (not another test's server that got the
    /// port first) answers PING, which it does once its data is loaded.
    fn wait_until_ready(&mut self) -> Result<(), String> {
        let pid = self.child.as_ref().map_or(0, Child::id);
        let patience = if self.wrapper.is_some() { 120 } else { 20 };
        let deadline = Instant::now() + Duration::from_secs(patience);
        loop {
            if let Ok(mut con) = self.try_connect() {
                // PING fails while the server still loads its data.
                let pong: redis::RedisResult<String> = redis::cmd("PING").query(&mut con);
                let info: redis::RedisResult<String> =
                    redis::cmd("INFO").arg("server").query(&mut con);
                if pong.is_ok() && info.is_ok_and(|i| i.contains(&format!("process_id:{pid}\r"))) {
                    return Ok(());
                }
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!("server exited with {status}:\n{}", self.log()));
            }
            assert!(
                Instant::now() < deadline,
                "server never answered PING:\n{}",
                self.log()
            );
            sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    fn try_connect(&self) -> redis::RedisResult<Connection> {
        redis::Client::open(self.url())?.get_connection_with_timeout(Duration::from_secs(5))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn connect(&self) -> Connection {
        self.try_connect().expect("a connection to the test server")
    }

    /// A connection for SUBSCRIBE whose reads give up after 5 s, so a
    /// missing message fails the test instead of hanging it.
    pub fn subscriber(&self) -> Connection {
        let con = self.connect();
        con.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("a read timeout");
        con
    }

    /// Stops the server as Redis would on `SHUTDOWN` (saving if `save`),
    /// then starts it again on the same port and directory.
    pub fn restart(&mut self, save: bool) {
        let mut con = self.connect();
        let _: redis::RedisResult<Value> = redis::cmd("SHUTDOWN")
            .arg(if save { "SAVE" } else { "NOSAVE" })
            .query(&mut con);
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        self.relaunch();
    }

    /// Stops the server with SHUTDOWN NOSAVE and waits for it to exit, so
    /// that it (and a wrapper such as valgrind) finishes its work.
    pub fn stop(&mut self) {
        let mut con = self.connect();
        let _: redis::RedisResult<Value> = redis::cmd("SHUTDOWN").arg("NOSAVE").query(&mut con);
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// Stops the server with SIGKILL: nothing is saved at exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory.
    pub fn relaunch(&mut self) {
        self.spawn()
            .unwrap_or_else(|log| panic!("server did not restart:\n{log}"));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("server log kept in {}", self.dir.display());
        }
    }
}

/// The commands of a server's incremental AOF files, each as its words,
/// in order.
pub fn aof_commands(server: &Server) -> Vec<Vec<String>> {
    let mut text = Vec::new();
    let dir = server.dir.join("appendonlydir");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("an AOF directory")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.to_string_lossy().ends_with(".incr.aof"))
        .collect();
    files.sort();
    for file in files {
        text.extend(std::fs::read(file).expect("an AOF file"));
    }
    let text = String::from_utf8_lossy(&text);
    let mut lines = text.split("\r\n");
    let mut commands = Vec::new();
    while let Some(line) = lines.next() {
        let Some(count) = line.strip_prefix('*').and_then(|n| n.parse::<usize>().ok()) else {
            continue;
        };
        let words = (0..count)
            .filter_map(|_| {
                lines.next();
                lines.next().map(str::to_string)
            })
            .collect();
        commands.push(words);
    }
    commands
}

/// `commands` as an AOF holds them (RESP arrays of bulk strings).
pub fn aof_text(commands: &[Vec<String>]) -> String {
    let mut text = String::new();
    for words in commands {
        text += &format!("*{}\r\n", words.len());
        for word in words {
            text += &format!("${}\r\n{word}\r\n", word.len());
        }
    }
    text
}

/// Reloads `server` every way it persists, asserting after each that
/// `state` reads as before: DEBUG RELOAD, a restart from its RDB, one from
/// its AOF, and one from a rewritten AOF (so the server runs with
/// `appendfsync always`; with no RDB preamble, the rewrite goes through
/// the module's AOF callbacks). Returns what `state` read.
pub fn assert_survives_every_reload<T: PartialEq + std::fmt::Debug>(
    server: &mut Server,
    state: impl Fn(&mut Connection) -> T,
) -> T {
    let before = state(&mut server.connect());
    run::<String>(&mut server.connect(), &["DEBUG", "RELOAD"]);
    assert_eq!(state(&mut server.connect()), before, "DEBUG RELOAD");
    server.restart(true);
    assert_eq!(
        state(&mut server.connect()),
        before,
        "a restart from the RDB"
    );
    server.kill();
    server.relaunch();
    assert_eq!(
        state(&mut server.connect()),
        before,
        "a restart from the AOF"
    );
    let mut con = server.connect();
    run::<String>(&mut con, &["BGREWRITEAOF"]);
    wait_for_background_saves(&mut con);
    server.kill();
    server.relaunch();
    assert_eq!(
        state(&mut server.connect()),
        before,
        "a restart from a rewritten AOF"
    );
    before
}
