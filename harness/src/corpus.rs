//! contract/corpus.jsonl, the contract as the reference model wrote it
//! (format: contract/README.md), read for the engines' tests: each case's
//! calls, the module's and the twin's answers, and the states after.

use crate::repository::root;
use serde_json::Value;
use std::collections::BTreeMap;

/// An answer as an engine gives it, in the shape of its command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Error(String),
    /// UNDO's and UNBLOCK's.
    Integer(i64),
    /// MUNDO's, one per key.
    Integers(Vec<i64>),
    /// CHECK's and PEEK's: allowed, remaining, retry_after_ms, reset_after_ms.
    Decision([i64; 4]),
    /// MCHECK's and MPEEK's: the 4 integers and the 1-based positions of
    /// the keys that denied.
    Joint([i64; 4], Vec<i64>),
    /// GCRA's: limited, max_burst + 1, remaining, retry_after (-1: none),
    /// reset_after.
    Bucket([i64; 5]),
}

impl Reply {
    /// The waits a reply carries (retry_after_ms, reset_after_ms), which a
    /// real server's clock moves.
    pub fn waits(&self) -> Option<[i64; 2]> {
        match self {
            Reply::Decision(f) | Reply::Joint(f, _) => Some([f[2], f[3]]),
            Reply::Bucket(f) => Some([f[3], f[4]]),
            _ => None,
        }
    }

    /// The reply with its waits replaced.
    pub fn with_waits(&self, waits: [i64; 2]) -> Reply {
        let set = |f: &[i64; 4]| [f[0], f[1], waits[0], waits[1]];
        match self {
            Reply::Decision(f) => Reply::Decision(set(f)),
            Reply::Joint(f, denied) => Reply::Joint(set(f), denied.clone()),
            Reply::Bucket(f) => Reply::Bucket([f[0], f[1], f[2], waits[0], waits[1]]),
            other => other.clone(),
        }
    }
}

/// A key after a call (times relative to the case's epoch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyState {
    /// (time, cost), oldest first, as the log stores them.
    pub entries: Vec<(i64, u64)>,
    /// The longest window the log keeps (0 when it holds no entry).
    pub window: u64,
    /// When its block ends, 0 for none.
    pub blocked_until: i64,
    /// The last moment the key exists.
    pub expires: i64,
}

/// A token bucket after a call (times relative to the case's epoch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketState {
    /// The last charge's time, its period (ms) and the level it left, in
    /// `1 / period` tokens.
    pub at: i64,
    pub period: u64,
    pub level: u64,
    /// The last moment the key exists.
    pub expires: i64,
}

/// What a key holds: a sliding window's log or a token bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Held {
    Log(KeyState),
    Bucket(BucketState),
}

impl Held {
    /// The last moment the key exists.
    pub fn expires(&self) -> i64 {
        match self {
            Held::Log(log) => log.expires,
            Held::Bucket(bucket) => bucket.expires,
        }
    }
}

pub struct Step {
    /// The clock at the call, relative to the epoch.
    pub at: i64,
    /// The command's words.
    pub call: Vec<String>,
    /// The module's answer (and every engine's that counts exactly).
    pub reply: Reply,
    /// The twin's (and every engine's that counts in doubles).
    pub twin_reply: Reply,
    /// Each key the call names: its state after, or None if it does not
    /// exist.
    pub state: BTreeMap<String, Option<Held>>,
    pub twin_state: BTreeMap<String, Option<Held>>,
}

pub struct Case {
    pub name: String,
    /// A real server can replay it on its own clock.
    pub pinned: bool,
    /// The clock's origin, Unix ms.
    pub epoch: i64,
    pub steps: Vec<Step>,
}

/// Every case of contract/corpus.jsonl, in order.
pub fn corpus() -> Vec<Case> {
    let path = root().join("contract/corpus.jsonl");
    let text = std::fs::read_to_string(&path).expect("contract/corpus.jsonl");
    text.lines()
        .enumerate()
        .map(|(n, line)| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("contract/corpus.jsonl:{}: {e}", n + 1));
            case(&value)
        })
        .collect()
}

fn case(value: &Value) -> Case {
    Case {
        name: text(&value["name"]),
        pinned: value["pinned"].as_bool().expect("pinned"),
        epoch: integer(&value["epoch"]),
        steps: array(&value["steps"]).iter().map(step).collect(),
    }
}

fn step(value: &Value) -> Step {
    let call: Vec<String> = array(&value["call"]).iter().map(text).collect();
    let reply = answer(&call, value, "");
    let twin_reply = match value.get("twin_reply").or(value.get("twin_error")) {
        Some(_) => answer(&call, value, "twin_"),
        None => reply.clone(),
    };
    let state = states(&value["state"]);
    let twin_state = match value.get("twin_state") {
        Some(twin) => states(twin),
        None => state.clone(),
    };
    Step {
        at: integer(&value["at"]),
        call,
        reply,
        twin_reply,
        state,
        twin_state,
    }
}

/// The answer under `prefix` ("" for the module's, "twin_" for the
/// twin's), in the shape of the call's command.
fn answer(call: &[String], value: &Value, prefix: &str) -> Reply {
    if let Some(error) = value.get(format!("{prefix}error")) {
        return Reply::Error(text(error));
    }
    let reply = &value[format!("{prefix}reply")];
    let integers = |v: &Value| array(v).iter().map(integer).collect::<Vec<i64>>();
    let four = |v: &Value| -> [i64; 4] {
        let fields: Vec<i64> = array(v)[..4].iter().map(integer).collect();
        fields.try_into().expect("a decision's 4 integers")
    };
    match call[0].to_ascii_lowercase().as_str() {
        "ratelimit.check" | "ratelimit.peek" => Reply::Decision(four(reply)),
        "ratelimit.mcheck" | "ratelimit.mpeek" => Reply::Joint(four(reply), integers(&reply[4])),
        "ratelimit.mundo" => Reply::Integers(integers(reply)),
        "ratelimit.gcra" => {
            Reply::Bucket(integers(reply).try_into().expect("a bucket's 5 integers"))
        }
        _ => Reply::Integer(integer(reply)),
    }
}

fn states(value: &Value) -> BTreeMap<String, Option<Held>> {
    let object = value.as_object().expect("a state object");
    object
        .iter()
        .map(|(key, state)| {
            if let Some(bucket) = state.get("bucket") {
                let held = Held::Bucket(BucketState {
                    at: integer(&bucket[0]),
                    period: integer(&bucket[1]) as u64,
                    level: integer(&bucket[2]) as u64,
                    expires: integer(&state["expires"]),
                });
                return (key.clone(), Some(held));
            }
            let state = (!state.is_null()).then(|| KeyState {
                entries: array(&state["entries"])
                    .iter()
                    .map(|e| (integer(&e[0]), integer(&e[1]) as u64))
                    .collect(),
                window: integer(&state["window"]) as u64,
                blocked_until: integer(&state["blocked_until"]),
                expires: integer(&state["expires"]),
            });
            (key.clone(), state.map(Held::Log))
        })
        .collect()
}

fn text(value: &Value) -> String {
    value.as_str().expect("a string").to_string()
}

fn integer(value: &Value) -> i64 {
    value
        .as_i64()
        .unwrap_or_else(|| panic!("an integer up to 2^63 - 1, not {value}"))
}

fn array(value: &Value) -> &Vec<Value> {
    value.as_array().expect("an array")
}
