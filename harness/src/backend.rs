//! The two implementations of one contract: the module's RATELIMIT.CHECK,
//! PEEK and UNDO, and the script twin (twin/ratelimit.lua) in each way a
//! user calls it. Tests write contract calls as the module's words
//! (`["RATELIMIT.CHECK", key, ...]`); a [`Caller`] sends them in its
//! backend's form, so one test source runs against every backend.

use crate::commands::{command, error_line};
use crate::repository::root;
use crate::server::Server;
use redis::{Connection, ConnectionLike, FromRedisValue};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The loaded module's commands.
    Module,
    /// The twin loaded with FUNCTION LOAD, called with FCALL (FCALL_RO
    /// for PEEK), on a server without the module.
    Function,
    /// The twin as a plain script, called with EVALSHA (EVALSHA_RO for
    /// PEEK), on a server without the module.
    Script,
    /// The function form loaded and called by an ACL user that has only
    /// data and scripting commands (no MODULE, CONFIG or DEBUG), as on a
    /// managed service.
    Restricted,
}

/// Every backend, the module first.
pub const BACKENDS: [Backend; 4] = [
    Backend::Module,
    Backend::Function,
    Backend::Script,
    Backend::Restricted,
];

/// The twin's backends.
pub const TWINS: [Backend; 3] = [Backend::Function, Backend::Script, Backend::Restricted];

/// The restricted backend's user: data and scripting commands only.
const USER: &str = "app";
const PASSWORD: &str = "app-secret";
const USER_RULES: &[&str] = &[
    "on",
    ">app-secret",
    "~*",
    "&*",
    "-@all",
    "+@read",
    "+@write",
    "+@scripting",
    "+@connection",
    "+@transaction",
    // The server's clock, which the twin reads (TIME is in no data category).
    "+time",
    "-@admin",
    "-@dangerous",
];

/// twin/ratelimit.lua as FUNCTION LOAD takes it.
pub fn twin_library() -> String {
    std::fs::read_to_string(root().join("twin/ratelimit.lua")).expect("twin/ratelimit.lua")
}

/// The EVAL form: the same file without its first (`#!lua`) line.
pub fn twin_script() -> String {
    let library = twin_library();
    let (_, script) = library.split_once('\n').expect("a first line");
    script.to_string()
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Module => "module",
            Backend::Function => "twin via FCALL",
            Backend::Script => "twin via EVALSHA",
            Backend::Restricted => "twin as a restricted ACL user",
        }
    }

    pub fn is_twin(self) -> bool {
        self != Backend::Module
    }

    /// A server for this backend (with the module, or with nothing
    /// loaded), with these extra `--option value` words, and the twin
    /// loaded the way this backend calls it.
    pub fn start(self, extra: &[&str]) -> (Server, Caller) {
        let server = match self {
            Backend::Module => Server::start(extra),
            _ => Server::start_without_module(extra),
        };
        let caller = self.prepare(&server);
        (server, caller)
    }

    /// Makes a running server ready for this backend (a user, the
    /// library, the script) and returns how to call it there.
    pub fn prepare(self, server: &Server) -> Caller {
        let mut admin = server.connect();
        let url = match self {
            Backend::Restricted => {
                let mut words = vec!["ACL", "SETUSER", USER];
                words.extend(USER_RULES);
                command(&words)
                    .query::<()>(&mut admin)
                    .expect("ACL SETUSER");
                format!("redis://{USER}:{PASSWORD}@127.0.0.1:{}/", server.port)
            }
            _ => server.url(),
        };
        let mut caller = Caller {
            backend: self,
            url,
            sha: String::new(),
        };
        let mut con = caller.connect();
        match self {
            Backend::Module => {}
            Backend::Function | Backend::Restricted => caller.load_library(&mut con),
            Backend::Script => {
                caller.sha = redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(twin_script())
                    .query(&mut con)
                    .expect("SCRIPT LOAD");
            }
        }
        caller
    }
}

/// Sends contract calls in one backend's form, on connections made as
/// that backend's user.
#[derive(Clone, Debug)]
pub struct Caller {
    pub backend: Backend,
    url: String,
    /// The script's SHA1, for the script form.
    sha: String,
}

impl Caller {
    /// A caller that only builds commands, with no connection of its own:
    /// the module's, or the function form's (the script form's SHA1
    /// comes from `Backend::prepare`).
    pub fn of(backend: Backend) -> Caller {
        Caller {
            backend,
            url: String::new(),
            sha: String::new(),
        }
    }

    /// A connection as this backend's user.
    pub fn connect(&self) -> Connection {
        redis::Client::open(self.url.as_str())
            .and_then(|client| client.get_connection())
            .unwrap_or_else(|e| panic!("{}: cannot connect: {e}", self.backend.name()))
    }

    /// (Re)loads the function library on `con`'s server.
    pub fn load_library(&self, con: &mut impl ConnectionLike) {
        let name: String = redis::cmd("FUNCTION")
            .arg("LOAD")
            .arg("REPLACE")
            .arg(twin_library())
            .query(con)
            .expect("FUNCTION LOAD");
        assert_eq!(name, "ratelimit");
    }

    /// `words` as this backend sends them: a contract call
    /// (`RATELIMIT.CHECK|PEEK|UNDO key ...`) in the backend's form, any
    /// other command as it is.
    pub fn command(&self, words: &[&str]) -> redis::Cmd {
        let operation = match words[0].to_ascii_uppercase().as_str() {
            "RATELIMIT.CHECK" => "check",
            "RATELIMIT.PEEK" => "peek",
            "RATELIMIT.UNDO" => "undo",
            _ => return command(words),
        };
        let (keys, args) = match words.get(1) {
            Some(key) => (vec![*key], &words[2..]),
            None => (vec![], &words[1..]),
        };
        let numkeys = keys.len().to_string();
        let mut form: Vec<&str> = match self.backend {
            Backend::Module => return command(words),
            Backend::Function | Backend::Restricted => match operation {
                "peek" => vec!["FCALL_RO", "ratelimit_peek"],
                "check" => vec!["FCALL", "ratelimit_check"],
                _ => vec!["FCALL", "ratelimit_undo"],
            },
            Backend::Script => {
                let eval = if operation == "peek" {
                    "EVALSHA_RO"
                } else {
                    "EVALSHA"
                };
                vec![eval, &self.sha]
            }
        };
        form.push(&numkeys);
        form.extend(keys);
        if self.backend == Backend::Script {
            form.push(operation);
        }
        form.extend(args);
        command(&form)
    }

    /// Runs a call that must succeed.
    pub fn run<T: FromRedisValue>(&self, con: &mut impl ConnectionLike, words: &[&str]) -> T {
        self.command(words)
            .query(con)
            .unwrap_or_else(|e| panic!("{}: {words:?} failed: {e}", self.backend.name()))
    }

    /// Runs a call that must fail, and returns its error line as sent.
    pub fn error(&self, con: &mut impl ConnectionLike, words: &[&str]) -> String {
        let reply = self.command(words).query::<redis::Value>(con);
        error_line(reply, &format!("{}: {words:?}", self.backend.name()))
    }

    /// `RATELIMIT.CHECK key window max`.
    pub fn check(
        &self,
        con: &mut impl ConnectionLike,
        key: &str,
        window: u64,
        max: u64,
    ) -> Vec<i64> {
        self.run(
            con,
            &[
                "RATELIMIT.CHECK",
                key,
                &window.to_string(),
                &max.to_string(),
            ],
        )
    }

    /// `RATELIMIT.PEEK key window max`.
    pub fn peek(
        &self,
        con: &mut impl ConnectionLike,
        key: &str,
        window: u64,
        max: u64,
    ) -> Vec<i64> {
        self.run(
            con,
            &["RATELIMIT.PEEK", key, &window.to_string(), &max.to_string()],
        )
    }
}
