//! What a server says about a command (COMMAND DOCS), read as Redis's
//! own documentation writes it, and values of replies read by shape.

use crate::commands::run;
use redis::{ConnectionLike, Value};
use std::collections::HashMap;

/// COMMAND DOCS of the command `name`, by field.
pub fn command_docs(con: &mut impl ConnectionLike, name: &str) -> HashMap<String, Value> {
    let reply: Value = run(con, &["COMMAND", "DOCS", name]);
    let all = fields(&reply);
    fields(&all[&name.to_lowercase()])
}

/// A RESP2 flat [k1, v1, k2, v2...] or a RESP3 map, as a map by name.
pub fn fields(value: &Value) -> HashMap<String, Value> {
    match value {
        Value::Array(items) => items
            .chunks(2)
            .map(|pair| (text(&pair[0]), pair[1].clone()))
            .collect(),
        Value::Map(pairs) => pairs.iter().map(|(k, v)| (text(k), v.clone())).collect(),
        other => panic!("not a map: {other:?}"),
    }
}

pub fn text(value: &Value) -> String {
    match value {
        Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::VerbatimString { text, .. } => text.clone(),
        Value::Int(n) => n.to_string(),
        other => panic!("not text: {other:?}"),
    }
}

pub fn items(value: &Value) -> Vec<Value> {
    match value {
        Value::Array(items) | Value::Set(items) => items.clone(),
        other => panic!("not an array: {other:?}"),
    }
}

/// `RATELIMIT.CHECK key window max [window max ...] [COST n]`, from
/// COMMAND DOCS, written the way Redis's own documentation writes it.
pub fn synopsis(name: &str, docs: &HashMap<String, Value>) -> String {
    format!("{name} {}", arguments(&docs["arguments"]))
}

fn arguments(list: &Value) -> String {
    let words: Vec<String> = items(list)
        .iter()
        .map(|arg| {
            let arg = fields(arg);
            let mut word = match arg.get("arguments") {
                Some(block) => arguments(block),
                None => text(&arg["name"]),
            };
            if let Some(token) = arg.get("token") {
                // A flag is its token alone.
                word = match text(&arg["type"]).as_str() {
                    "pure-token" => text(token),
                    _ => format!("{} {word}", text(token)),
                };
            }
            let flag = |name: &str| {
                arg.get("flags")
                    .is_some_and(|flags| items(flags).iter().any(|f| text(f) == name))
            };
            if flag("multiple") {
                word = format!("{word} [{word} ...]");
            }
            if flag("optional") {
                word = format!("[{word}]");
            }
            word
        })
        .collect();
    words.join(" ")
}
