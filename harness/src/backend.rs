//! The two implementations of one contract: the module's RATELIMIT.CHECK,
//! PEEK, UNDO, UNBLOCK, MCHECK, MPEEK, MUNDO and GCRA, and the script twin
//! (twin/ratelimit.lua) in each way a user calls it. Tests write contract calls as the module's words
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
    /// The function form, loaded by an administrator, called by the
    /// least-privilege user of docs/twin.md (`USER_RULES`), as on a managed
    /// service.
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

/// The restricted backend's user, as docs/twin.md's least-privilege recipe
/// makes it: data commands (the module's among them), connection and
/// transaction commands, the commands that run scripts and functions,
/// SCRIPT LOAD and EXISTS, and TIME, which the twin reads; nothing
/// dangerous or administrative, and nothing that loads, replaces or
/// deletes a function library or empties the script cache.
pub const USER: &str = "app";
pub const PASSWORD: &str = "app-secret";
pub const USER_RULES: &[&str] = &[
    "on",
    ">app-secret",
    "resetkeys",
    "~*",
    "resetchannels",
    "-@all",
    "+@read",
    "+@write",
    "+@connection",
    "+@transaction",
    "-@dangerous",
    "-@admin",
    "-@scripting",
    "+eval",
    "+evalsha",
    "+eval_ro",
    "+evalsha_ro",
    "+fcall",
    "+fcall_ro",
    "+script|load",
    "+script|exists",
    "+time",
];

/// What the same user needs more where the module is loaded: its commands
/// by name (Redis 7.0 gives module commands no ACL category, so `+@write`
/// does not reach them there; a server without the module refuses these
/// names).
pub const MODULE_RULES: &[&str] = &[
    "+ratelimit.check",
    "+ratelimit.peek",
    "+ratelimit.undo",
    "+ratelimit.mcheck",
    "+ratelimit.mpeek",
    "+ratelimit.mundo",
    "+ratelimit.unblock",
    "+ratelimit.gcra",
    "+ratelimit.charge",
    "+ratelimit.mcharge",
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
            // An administrator loads the library, once; users call it.
            Backend::Function | Backend::Restricted => caller.load_library(&mut admin),
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

/// The twin's operations: the module's command names after `RATELIMIT.`
/// in lower case (the script form's operation; the function's name is
/// `ratelimit_<operation>`), whether each goes as FCALL_RO/EVALSHA_RO, and
/// whether its key is argument 1 (else `numkeys key [key ...]`).
const TWIN_OPERATIONS: [(&str, bool, bool); 10] = [
    ("check", false, true),
    ("peek", true, true),
    ("undo", false, true),
    ("unblock", false, true),
    ("mcheck", false, false),
    ("mpeek", true, false),
    ("mundo", false, false),
    // RATELIMIT.GCRA is a write even with TOKENS 0, as the module's.
    ("gcra", false, true),
    // CHARGE and MCHARGE always record: writes, as CHECK and MCHECK.
    ("charge", false, true),
    ("mcharge", false, false),
];

/// The twin's operation for a module command's name (any case), if the
/// twin has it.
fn twin_operation(command: &str) -> Option<(&'static str, bool, bool)> {
    let (prefix, name) = command.split_at_checked("RATELIMIT.".len())?;
    if !prefix.eq_ignore_ascii_case("RATELIMIT.") {
        return None;
    }
    TWIN_OPERATIONS
        .iter()
        .find(|(operation, _, _)| operation.eq_ignore_ascii_case(name))
        .copied()
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

    /// The script form's caller for a script loaded as `sha`.
    pub fn with_sha(mut self, sha: &str) -> Caller {
        self.sha = sha.to_string();
        self
    }

    /// A connection as this backend's user.
    pub fn connect(&self) -> Connection {
        redis::Client::open(self.url.as_str())
            .and_then(|client| client.get_connection())
            .unwrap_or_else(|e| panic!("{}: cannot connect: {e}", self.backend.name()))
    }

    /// A connection as this backend's user that speaks RESP3.
    pub fn connect_resp3(&self) -> Connection {
        let separator = if self.url.contains('?') { '&' } else { '?' };
        redis::Client::open(format!("{}{separator}protocol=resp3", self.url))
            .and_then(|client| client.get_connection())
            .unwrap_or_else(|e| panic!("{}: cannot connect with RESP3: {e}", self.backend.name()))
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
    /// (`RATELIMIT.CHECK|PEEK|UNDO|UNBLOCK|GCRA|CHARGE key ...`,
    /// `RATELIMIT.MCHECK|MPEEK|MUNDO|MCHARGE numkeys key ...`) in the backend's form, any other command as it is.
    /// The multi-key calls pass `numkeys` on as FCALL's and EVALSHA's own,
    /// with as many keys as the words hold.
    pub fn command(&self, words: &[&str]) -> redis::Cmd {
        let Some((operation, read_only, one_key)) = twin_operation(words[0]) else {
            return command(words);
        };
        let function = format!("ratelimit_{operation}");
        let (numkeys, keys, args) = match (one_key, words.get(1)) {
            (_, None) => ("0".to_string(), &words[1..1], &words[1..]),
            (true, Some(_)) => ("1".to_string(), &words[1..2], &words[2..]),
            (false, Some(numkeys)) => {
                let count = numkeys.parse::<usize>().unwrap_or(0);
                let end = (2 + count).min(words.len());
                (numkeys.to_string(), &words[2..end], &words[end..])
            }
        };
        let mut form: Vec<&str> = match self.backend {
            Backend::Module => return command(words),
            Backend::Function | Backend::Restricted => {
                let fcall = if read_only { "FCALL_RO" } else { "FCALL" };
                vec![fcall, &function]
            }
            Backend::Script => {
                let eval = if read_only { "EVALSHA_RO" } else { "EVALSHA" };
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
