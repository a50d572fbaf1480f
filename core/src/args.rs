//! Command arguments: bytes in, typed calls or a clear error out.
//!
//! Pure functions over a command's whole argv (`args[0]` is its name), so
//! every malformed call can be tested and fuzzed without a server. Each
//! parse returns the key and the typed call together, with the argument
//! strings replication reuses, so no handler reads argv by position.

use crate::limiter::{Limit, Record, Request, RequestError, MAX_BLOCK, MAX_KEYS, MAX_LIMITS};
use crate::log::{Millis, MAX_COST, MAX_WINDOW, TIMES};
use crate::state::LATEST_BLOCK_END;
use std::num::NonZeroU64;

mod gcra;
pub use gcra::*;

/// A named option and what its value is called, as errors and COMMAND
/// DOCS both show it (empty for a flag, which takes none).
pub struct OptionName {
    pub token: &'static str,
    pub value: &'static str,
}

pub const COST: OptionName = OptionName {
    token: "COST",
    value: "n",
};
pub const PRECISION: OptionName = OptionName {
    token: "PRECISION",
    value: "p",
};
pub const BLOCK: OptionName = OptionName {
    token: "BLOCK",
    value: "ms",
};

/// The options CHECK, PEEK, MCHECK and MPEEK take, in the order errors
/// name them.
const LIMIT_OPTIONS: [&OptionName; 3] = [&COST, &PRECISION, &BLOCK];

/// Each client command's arity in the server's command table (negative:
/// at least that many words, the name included): the server refuses a call
/// of the wrong arity before the module reads a word.
pub const CHECK_ARITY: i32 = -4;
pub const PEEK_ARITY: i32 = -4;
pub const UNDO_ARITY: i32 = -2;
pub const MCHECK_ARITY: i32 = -6;
pub const MPEEK_ARITY: i32 = -6;
pub const MUNDO_ARITY: i32 = -3;
pub const UNBLOCK_ARITY: i32 = 2;
pub const GCRA_ARITY: i32 = -5;

/// Whether `words` (the name included) meet `arity`, as the server checks.
pub fn meets_arity(words: usize, arity: i32) -> bool {
    match arity {
        0.. => words == arity as usize,
        _ => words >= arity.unsigned_abs() as usize,
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum ArgError {
    /// Answered with Redis's standard wrong-arity error.
    WrongArity,
    /// The text of an error reply, without the `ERR ` prefix.
    Invalid(String),
}

/// `RATELIMIT.CHECK|PEEK key window max [window max ...] [COST n]
/// [PRECISION p] [BLOCK ms]` (PEEK validates BLOCK and ignores it).
#[derive(Debug)]
pub struct LimitCall<'a, A> {
    pub key: &'a A,
    pub request: Request,
    /// The longest window's argument, and COST's and PRECISION's values
    /// where given: what the replicated RECORD is built from.
    pub longest_window: &'a A,
    pub cost: Option<&'a A>,
    pub precision: Option<&'a A>,
}

/// `RATELIMIT.UNDO key [COST n]`.
#[derive(Debug)]
pub struct UndoCall<'a, A> {
    pub key: &'a A,
    pub units: NonZeroU64,
}

/// `RATELIMIT.RECORD key at window cost [precision]`, the replicated form
/// of an allowed CHECK (without `precision`, as release 0.1.0 wrote it: 1).
#[derive(Debug)]
pub struct RecordCall<'a, A> {
    pub key: &'a A,
    pub record: Record,
}

pub fn parse_limit_call<A: AsRef<[u8]>>(args: &[A]) -> Result<LimitCall<'_, A>, ArgError> {
    let [_, key, rest @ ..] = args else {
        return Err(ArgError::WrongArity);
    };
    if rest.len() < 2 {
        return Err(ArgError::WrongArity);
    }
    let mut limits = [Limit {
        window: NonZeroU64::MIN,
        max: NonZeroU64::MIN,
    }; MAX_LIMITS];
    let mut count = 0;
    let mut longest_window = &rest[0];
    let mut at = 0;
    // The first pair is required; more follow while the next word is a
    // number rather than an option name.
    while at < rest.len() && (at == 0 || starts_like_a_number(&rest[at])) {
        let limit = parse_limit(&rest[at], rest.get(at + 1))?;
        if limits[..count].iter().all(|l| l.window < limit.window) {
            longest_window = &rest[at];
        }
        let slot = limits
            .get_mut(count)
            .ok_or_else(|| request_error(RequestError::TooManyLimits))?;
        *slot = limit;
        count += 1;
        at += 2;
    }
    let limits = &limits[..count];
    let [cost, precision, block] = parse_options(&rest[at..], LIMIT_OPTIONS)?;
    let request = build_request(limits, cost, precision, parse_block(block)?)?;
    Ok(LimitCall {
        key,
        request,
        longest_window,
        cost,
        precision,
    })
}

/// One `window max` pair; `max` is `None` when the words ran out.
fn parse_limit<A: AsRef<[u8]>>(window_arg: &A, max: Option<&A>) -> Result<Limit, ArgError> {
    let window = parse_window(window_arg)?;
    let max = max.ok_or_else(|| {
        invalid(format!(
            "syntax error: window {} has no max",
            String::from_utf8_lossy(window_arg.as_ref())
        ))
    })?;
    let max = positive(max).ok_or_else(|| request_error(RequestError::MaxOutOfRange(0)))?;
    Ok(Limit { window, max })
}

/// BLOCK's value, if given.
fn parse_block<A: AsRef<[u8]>>(block: Option<&A>) -> Result<Option<NonZeroU64>, ArgError> {
    block
        .map(|v| {
            positive_up_to(v, MAX_BLOCK).ok_or_else(|| {
                invalid(format!(
                    "BLOCK must be an integer from 1 to {MAX_BLOCK} (milliseconds)"
                ))
            })
        })
        .transpose()
}

/// The request of `limits` with COST's and PRECISION's values, if given,
/// and BLOCK's checked value.
fn build_request<A: AsRef<[u8]>>(
    limits: &[Limit],
    cost: Option<&A>,
    precision: Option<&A>,
    block: Option<NonZeroU64>,
) -> Result<Request, ArgError> {
    let cost = cost.map_or(Ok(NonZeroU64::MIN), |v| positive(v).ok_or_else(cost_error))?;
    let precision = precision.map_or(Ok(NonZeroU64::MIN), |v| {
        positive_up_to(v, MAX_WINDOW).ok_or_else(|| precision_error(limits))
    })?;
    let request = Request::new(limits, cost, precision).map_err(|e| match e {
        RequestError::PrecisionAboveWindow { .. } => precision_error(limits),
        other => request_error(other),
    })?;
    match block {
        Some(ms) => request.with_block(ms).map_err(request_error),
        None => Ok(request),
    }
}

/// `RATELIMIT.MCHECK|MPEEK numkeys key [key ...] npairs window max [window
/// max ...] [npairs window max ...] [COST n] [PRECISION p] [BLOCK ms]`:
/// each key's call, in key order, as CHECK on that key alone would parse
/// it (the options apply to every key).
#[derive(Debug)]
pub struct MultiCall<'a, A> {
    /// `numkeys` as given, which the replicated MRECORD reuses.
    pub numkeys: &'a A,
    pub calls: Vec<LimitCall<'a, A>>,
}

/// `RATELIMIT.MUNDO numkeys key [key ...] [COST n]`.
#[derive(Debug)]
pub struct MultiUndoCall<'a, A> {
    pub keys: &'a [A],
    pub units: NonZeroU64,
}

pub fn parse_multi_call<A: AsRef<[u8]>>(args: &[A]) -> Result<MultiCall<'_, A>, ArgError> {
    let (keys, mut rest) = parse_keys(args)?;
    let [_, numkeys, ..] = args else {
        return Err(ArgError::WrongArity);
    };
    let mut pairs = Vec::with_capacity(keys.len());
    for (position, _) in keys.iter().enumerate() {
        let [npairs, after @ ..] = rest else {
            return Err(ArgError::WrongArity);
        };
        let npairs = positive_up_to(npairs, MAX_LIMITS as u64).ok_or_else(|| {
            invalid(format!(
                "npairs of key {} must be an integer from 1 to {MAX_LIMITS}",
                position + 1
            ))
        })?;
        let words = 2 * npairs.get() as usize;
        let Some(words) = after.get(..words) else {
            return Err(ArgError::WrongArity);
        };
        pairs.push(words);
        rest = &after[words.len()..];
    }
    let [cost, precision, block] = parse_options(rest, LIMIT_OPTIONS)?;
    let block = parse_block(block)?;
    let mut calls = Vec::with_capacity(keys.len());
    for (key, words) in keys.iter().zip(pairs) {
        let call = key_call(key, words, cost, precision, block).map_err(|error| match error {
            ArgError::Invalid(text) => invalid(about_key(key, &text)),
            other => other,
        })?;
        calls.push(call);
    }
    Ok(MultiCall { numkeys, calls })
}

/// One key's part of a multi-key call: its `window max` words, and the
/// options every key shares.
fn key_call<'a, A: AsRef<[u8]>>(
    key: &'a A,
    words: &'a [A],
    cost: Option<&'a A>,
    precision: Option<&'a A>,
    block: Option<NonZeroU64>,
) -> Result<LimitCall<'a, A>, ArgError> {
    let mut limits = Vec::with_capacity(words.len() / 2);
    let mut longest_window = &words[0];
    for pair in words.chunks_exact(2) {
        let limit = parse_limit(&pair[0], pair.get(1))?;
        if limits.iter().all(|l: &Limit| l.window < limit.window) {
            longest_window = &pair[0];
        }
        limits.push(limit);
    }
    Ok(LimitCall {
        key,
        request: build_request(&limits, cost, precision, block)?,
        longest_window,
        cost,
        precision,
    })
}

/// An error about one key of a multi-key call, saying which: of up to 16
/// keys, "COST 3 is above max 2" alone leaves the caller guessing.
pub fn about_key<A: AsRef<[u8]>>(key: &A, text: &str) -> String {
    format!("key '{}': {text}", String::from_utf8_lossy(key.as_ref()))
}

pub fn parse_multi_undo<A: AsRef<[u8]>>(args: &[A]) -> Result<MultiUndoCall<'_, A>, ArgError> {
    let (keys, options) = parse_keys(args)?;
    let [cost] = parse_options(options, [&COST])?;
    Ok(MultiUndoCall {
        keys,
        units: cost.map_or(Ok(NonZeroU64::MIN), |v| positive(v).ok_or_else(cost_error))?,
    })
}

/// Where `numkeys key [key ...]` puts its keys in argv, as far as the
/// words go (none if `numkeys` is not a count the command takes): what the
/// server asks before running the command, whose errors come after.
pub fn key_positions<A: AsRef<[u8]>>(args: &[A]) -> std::ops::Range<usize> {
    let count = args
        .get(1)
        .and_then(|numkeys| positive_up_to(numkeys, MAX_KEYS as u64))
        .map_or(0, |n| n.get() as usize);
    2..(2 + count).min(args.len())
}

/// `numkeys key [key ...]` after the command's name: the keys, each at
/// most once, and the words after them.
fn parse_keys<A: AsRef<[u8]>>(args: &[A]) -> Result<(&[A], &[A]), ArgError> {
    let [_, numkeys, rest @ ..] = args else {
        return Err(ArgError::WrongArity);
    };
    let numkeys = positive_up_to(numkeys, MAX_KEYS as u64)
        .ok_or_else(|| invalid(format!("numkeys must be an integer from 1 to {MAX_KEYS}")))?;
    let Some(keys) = rest.get(..numkeys.get() as usize) else {
        return Err(ArgError::WrongArity);
    };
    for (position, key) in keys.iter().enumerate() {
        if keys[..position].iter().any(|k| k.as_ref() == key.as_ref()) {
            return Err(invalid(format!(
                "key '{}' is given more than once",
                String::from_utf8_lossy(key.as_ref())
            )));
        }
    }
    Ok((keys, &rest[keys.len()..]))
}

pub fn parse_undo<A: AsRef<[u8]>>(args: &[A]) -> Result<UndoCall<'_, A>, ArgError> {
    let [_, key, options @ ..] = args else {
        return Err(ArgError::WrongArity);
    };
    let [cost] = parse_options(options, [&COST])?;
    Ok(UndoCall {
        key,
        units: cost.map_or(Ok(NonZeroU64::MIN), |v| positive(v).ok_or_else(cost_error))?,
    })
}

/// `RATELIMIT.WIDEN key window`, the replicated form of a denied CHECK
/// that named a longer window than the key's log kept.
#[derive(Debug)]
pub struct WidenCall<'a, A> {
    pub key: &'a A,
    pub window: NonZeroU64,
}

pub fn parse_widen<A: AsRef<[u8]>>(args: &[A]) -> Result<WidenCall<'_, A>, ArgError> {
    let [_, key, window] = args else {
        return Err(ArgError::WrongArity);
    };
    Ok(WidenCall {
        key,
        window: parse_window(window)?,
    })
}

/// `RATELIMIT.UNBLOCK key`.
#[derive(Debug)]
pub struct UnblockCall<'a, A> {
    pub key: &'a A,
}

pub fn parse_unblock<A: AsRef<[u8]>>(args: &[A]) -> Result<UnblockCall<'_, A>, ArgError> {
    let [_, key] = args else {
        return Err(ArgError::WrongArity);
    };
    Ok(UnblockCall { key })
}

/// `RATELIMIT.BLOCKUNTIL key until`, the replicated form of a denial that
/// started a block (`until`: when it ends, on the master's clock) or of an
/// UNBLOCK that lifted one (`until` 0).
#[derive(Debug)]
pub struct BlockUntilCall<'a, A> {
    pub key: &'a A,
    /// `None` lifts the block.
    pub until: Option<Millis>,
}

pub fn parse_block_until<A: AsRef<[u8]>>(args: &[A]) -> Result<BlockUntilCall<'_, A>, ArgError> {
    let [_, key, until] = args else {
        return Err(ArgError::WrongArity);
    };
    let until = parse_integer(until.as_ref())
        .filter(|until| (0..=LATEST_BLOCK_END).contains(until))
        .ok_or_else(|| {
            invalid(format!(
                "until must be 0 or a time in unix milliseconds up to {LATEST_BLOCK_END}"
            ))
        })?;
    Ok(BlockUntilCall {
        key,
        until: (until != 0).then_some(until),
    })
}

pub fn parse_record<A: AsRef<[u8]>>(args: &[A]) -> Result<RecordCall<'_, A>, ArgError> {
    let (key, at, window, cost, precision) = match args {
        [_, key, at, window, cost] => (key, at, window, cost, None),
        [_, key, at, window, cost, precision] => (key, at, window, cost, Some(precision)),
        _ => return Err(ArgError::WrongArity),
    };
    Ok(RecordCall {
        key,
        record: Record {
            at: parse_at(at)?,
            window: parse_window(window)?,
            cost: positive(cost).ok_or_else(cost_error)?,
            precision: precision.map_or(Ok(NonZeroU64::MIN), parse_precision)?,
        },
    })
}

/// `RATELIMIT.MRECORD numkeys key [key ...] at cost precision window
/// [window ...]`, the replicated form of an allowed MCHECK: one record per
/// key, in key order, each under its own window (its call's longest), all
/// at `at` (each key's own time is `at`, or its newest entry's if later,
/// as for RECORD).
#[derive(Debug)]
pub struct MultiRecordCall<'a, A> {
    pub keys: &'a [A],
    pub records: Vec<Record>,
}

pub fn parse_multi_record<A: AsRef<[u8]>>(args: &[A]) -> Result<MultiRecordCall<'_, A>, ArgError> {
    let (keys, rest) = parse_keys(args)?;
    let [at, cost, precision, windows @ ..] = rest else {
        return Err(ArgError::WrongArity);
    };
    if windows.len() != keys.len() {
        return Err(ArgError::WrongArity);
    }
    let (at, cost, precision) = (
        parse_at(at)?,
        positive(cost).ok_or_else(cost_error)?,
        parse_precision(precision)?,
    );
    let records = windows
        .iter()
        .map(|window| {
            Ok(Record {
                at,
                window: parse_window(window)?,
                cost,
                precision,
            })
        })
        .collect::<Result<_, ArgError>>()?;
    Ok(MultiRecordCall { keys, records })
}

fn parse_at<A: AsRef<[u8]>>(at: &A) -> Result<Millis, ArgError> {
    parse_integer(at.as_ref())
        .filter(|at| TIMES.contains(at))
        .ok_or_else(|| invalid("at must be a positive time in unix milliseconds".into()))
}

fn parse_precision<A: AsRef<[u8]>>(precision: &A) -> Result<NonZeroU64, ArgError> {
    positive_up_to(precision, MAX_WINDOW).ok_or_else(|| {
        invalid(format!(
            "precision must be an integer from 1 to {MAX_WINDOW}"
        ))
    })
}

fn starts_like_a_number<A: AsRef<[u8]>>(arg: &A) -> bool {
    matches!(arg.as_ref().first(), Some(b'0'..=b'9' | b'-'))
}

/// Named options, each followed by its value (a flag, whose `value` is
/// empty, by none) and given at most once, in any order and any case;
/// their values (a flag's own word) in the order of `names`.
fn parse_options<'a, A: AsRef<[u8]>, const N: usize>(
    words: &'a [A],
    names: [&OptionName; N],
) -> Result<[Option<&'a A>; N], ArgError> {
    let mut values = [None; N];
    let mut words = words.iter();
    while let Some(word_arg) = words.next() {
        let word = word_arg.as_ref();
        let Some(slot) = names
            .iter()
            .position(|name| word.eq_ignore_ascii_case(name.token.as_bytes()))
        else {
            let known: Vec<String> = names
                .iter()
                .map(|name| {
                    format!("{} {}", name.token, name.value)
                        .trim_end()
                        .to_string()
                })
                .collect();
            return Err(invalid(format!(
                "unknown option '{}' (the options are {})",
                String::from_utf8_lossy(word),
                in_words(&known)
            )));
        };
        let token = names[slot].token;
        // A flag (no value) stands for itself.
        let value = match names[slot].value {
            "" => Some(word_arg),
            _ => words.next(),
        }
        .ok_or_else(|| invalid(format!("syntax error: {token} needs a value")))?;
        if values[slot].replace(value).is_some() {
            return Err(invalid(format!("{token} given more than once")));
        }
    }
    Ok(values)
}

/// "A", "A and B", "A, B and C".
fn in_words(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [only] => only.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

fn request_error(error: RequestError) -> ArgError {
    invalid(match error {
        RequestError::NoLimit => "a window and a max are required".into(),
        RequestError::TooManyLimits => format!("at most {MAX_LIMITS} window/max pairs"),
        RequestError::WindowOutOfRange(_) => window_range(),
        RequestError::MaxOutOfRange(_) => format!("max must be an integer from 1 to {MAX_COST}"),
        RequestError::WindowTwice(window) => format!("window {window} is given twice"),
        RequestError::CostAboveMax { cost, max } => {
            format!("COST {cost} is above max {max}: such a request could never be allowed")
        }
        RequestError::PrecisionAboveWindow { precision, window } => {
            format!("PRECISION {precision} is above the shortest window {window}")
        }
        RequestError::BlockOutOfRange(_) => {
            format!("BLOCK must be an integer from 1 to {MAX_BLOCK} (milliseconds)")
        }
    })
}

fn precision_error(limits: &[Limit]) -> ArgError {
    let shortest = limits
        .iter()
        .map(|l| l.window.get())
        .min()
        .unwrap_or(MAX_WINDOW);
    invalid(format!(
        "PRECISION must be an integer from 1 to {shortest} (the shortest window)"
    ))
}

fn window_range() -> String {
    format!("window must be an integer from 1 to {MAX_WINDOW} (milliseconds)")
}

fn parse_window<A: AsRef<[u8]>>(window: &A) -> Result<NonZeroU64, ArgError> {
    positive_up_to(window, MAX_WINDOW).ok_or_else(|| invalid(window_range()))
}

fn cost_error() -> ArgError {
    invalid("COST must be a positive integer".into())
}

fn invalid(text: String) -> ArgError {
    ArgError::Invalid(text)
}

fn positive<A: AsRef<[u8]>>(arg: &A) -> Option<NonZeroU64> {
    positive_up_to(arg, MAX_COST)
}

fn positive_up_to<A: AsRef<[u8]>>(arg: &A, high: u64) -> Option<NonZeroU64> {
    parse_integer(arg.as_ref())
        .and_then(|n| u64::try_from(n).ok())
        .filter(|&n| n <= high)
        .and_then(NonZeroU64::new)
}

/// A decimal i64 the way Redis writes one: an optional '-', then digits
/// with no leading zero, no '+', no spaces.
fn parse_integer(bytes: &[u8]) -> Option<i64> {
    let (negative, digits) = match bytes.strip_prefix(b"-") {
        Some(digits) => (true, digits),
        None => (false, bytes),
    };
    match digits {
        [b'0'] if !negative => return Some(0),
        [b'1'..=b'9', ..] => {}
        _ => return None,
    }
    // Accumulate negatively so that i64::MIN fits.
    let mut value: i64 = 0;
    for &byte in digits {
        let digit = i64::from(byte.wrapping_sub(b'0'));
        if digit > 9 {
            return None;
        }
        value = value.checked_mul(10)?.checked_sub(digit)?;
    }
    if negative {
        Some(value)
    } else {
        value.checked_neg()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<&[u8]> {
        line.split(' ').map(str::as_bytes).collect()
    }

    fn check(line: &str) -> Result<Request, ArgError> {
        parse_limit_call(&args(line)).map(|call| call.request)
    }

    fn error(line: &str) -> String {
        match check(line) {
            Err(ArgError::Invalid(text)) => text,
            other => panic!("{line}: expected an error, got {other:?}"),
        }
    }

    #[test]
    fn integers_are_read_strictly() {
        for good in [
            "0",
            "7",
            "-7",
            "9223372036854775807",
            "-9223372036854775808",
        ] {
            assert!(parse_integer(good.as_bytes()).is_some(), "{good}");
        }
        for bad in [
            "",
            "-",
            "+7",
            "07",
            "-0",
            "1.5",
            " 7",
            "7 ",
            "1e3",
            "9223372036854775808",
        ] {
            assert_eq!(parse_integer(bad.as_bytes()), None, "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn integers_round_trip(n: i64, text in "-?[0-9]{0,21}") {
            proptest::prop_assert_eq!(parse_integer(n.to_string().as_bytes()), Some(n));
            if let Some(value) = parse_integer(text.as_bytes()) {
                proptest::prop_assert_eq!(value.to_string(), text);
            }
        }
    }

    #[test]
    fn a_call_with_its_replicated_arguments() {
        let words = args("RATELIMIT.CHECK k 1000 10 3600000 1000 cost 5 PRECISION 100");
        let call = parse_limit_call(&words).unwrap();
        assert_eq!(call.key, &b"k".as_slice());
        assert_eq!(call.longest_window, &b"3600000".as_slice());
        assert_eq!(call.cost, Some(&b"5".as_slice()));
        assert_eq!(call.precision, Some(&b"100".as_slice()));
        let r = call.request;
        assert_eq!(r.limits().len(), 2);
        assert_eq!((r.cost().get(), r.precision().get()), (5, 100));
        let words = args("C k 60000 5");
        let plain = parse_limit_call(&words).unwrap();
        assert_eq!((plain.cost, plain.precision), (None, None));
        assert_eq!(plain.request.cost().get(), 1);
    }

    #[test]
    fn token_budgets_fit_without_any_setting() {
        let r = check("C tokens:acme 60000 10000000 COST 2500").unwrap();
        assert_eq!(r.longest().max.get(), 10_000_000);
        assert!(check("C k 1000 9223372036854775807 COST 9223372036854775807").is_ok());
    }

    #[test]
    fn each_bad_argument_is_named() {
        assert_eq!(
            error("C k 0 5"),
            "window must be an integer from 1 to 31536000000 (milliseconds)"
        );
        assert!(error("C k 31536000001 5").starts_with("window must"));
        assert!(error("C k abc 5").starts_with("window must"));
        assert_eq!(
            error("C k 10 0"),
            "max must be an integer from 1 to 9223372036854775807"
        );
        assert!(error("C k 10 -1").starts_with("max must"));
        assert_eq!(error("C k 10 5 COST 0"), "COST must be a positive integer");
        assert_eq!(
            error("C k 10 5 COST 1.5"),
            "COST must be a positive integer"
        );
        assert_eq!(
            error("C k 10 5 COST 6"),
            "COST 6 is above max 5: such a request could never be allowed"
        );
        assert_eq!(
            error("C k 10 50 100 5 COST 6"),
            "COST 6 is above max 5: such a request could never be allowed"
        );
        assert_eq!(error("C k 10 5 COST"), "syntax error: COST needs a value");
        assert_eq!(error("C k 10 5 COST 1 COST 1"), "COST given more than once");
        assert_eq!(
            error("C k 10 5 WEIGHT 1"),
            "unknown option 'WEIGHT' (the options are COST n, PRECISION p and BLOCK ms)"
        );
        assert_eq!(error("C k 10 5 20"), "syntax error: window 20 has no max");
        assert_eq!(error("C k 10 5 10 6"), "window 10 is given twice");
        assert_eq!(
            error("C k 10 5 100 50 PRECISION 11"),
            "PRECISION must be an integer from 1 to 10 (the shortest window)"
        );
        assert!(error("C k 10 5 PRECISION 0").starts_with("PRECISION must"));
        let pairs = |n: u64| {
            let limits: Vec<String> = (1..=n).map(|w| format!("{w} 5")).collect();
            format!("C k {}", limits.join(" "))
        };
        assert_eq!(check(&pairs(8)).map(|r| r.limits().len()), Ok(8));
        assert_eq!(error(&pairs(9)), "at most 8 window/max pairs");
        assert_eq!(check("C k 10"), Err(ArgError::WrongArity));
        assert_eq!(check("C k"), Err(ArgError::WrongArity));
    }

    #[test]
    fn block_takes_a_duration_once() {
        let blocked = check("C login:alice 900000 5 BLOCK 3600000").unwrap();
        assert_eq!(blocked.block().map(NonZeroU64::get), Some(3_600_000));
        assert_eq!(check("C k 10 5").unwrap().block(), None);
        assert_eq!(
            check("C k 10 5 block 31536000000 COST 2")
                .unwrap()
                .block()
                .map(NonZeroU64::get),
            Some(MAX_BLOCK)
        );
        let range = "BLOCK must be an integer from 1 to 31536000000 (milliseconds)";
        for bad in ["0", "-1", "31536000001", "1.5", "x"] {
            assert_eq!(error(&format!("C k 10 5 BLOCK {bad}")), range);
        }
        assert_eq!(error("C k 10 5 BLOCK"), "syntax error: BLOCK needs a value");
        assert_eq!(
            error("C k 10 5 BLOCK 1 BLOCK 1"),
            "BLOCK given more than once"
        );
        assert_eq!(
            parse_undo(&args("U k BLOCK 5")).map(|_| ()),
            Err(invalid(
                "unknown option 'BLOCK' (the options are COST n)".into()
            ))
        );
    }

    #[test]
    fn undo_and_record() {
        let undo = |line| parse_undo(&args(line)).map(|call| call.units.get());
        assert_eq!(undo("U k"), Ok(1));
        assert_eq!(undo("U k COST 3"), Ok(3));
        assert_eq!(
            undo("U k PRECISION 3"),
            Err(invalid(
                "unknown option 'PRECISION' (the options are COST n)".into()
            ))
        );
        assert_eq!(
            parse_undo(&args("U")).map(|_| ()),
            Err(ArgError::WrongArity)
        );
        let record = |line| parse_record(&args(line)).map(|call| call.record);
        let legacy = record("R k 1700000000000 1000 2").unwrap();
        assert_eq!(
            (
                legacy.at,
                legacy.window.get(),
                legacy.cost.get(),
                legacy.precision.get()
            ),
            (1_700_000_000_000, 1000, 2, 1)
        );
        assert_eq!(
            record("R k 1700000000000 1000 2 100")
                .unwrap()
                .precision
                .get(),
            100
        );
        assert_eq!(record("R k 1 2").map(|_| ()), Err(ArgError::WrongArity));
        assert!(record("R k -5 1000 2").is_err());
    }

    #[test]
    fn unblock_and_block_until() {
        assert!(parse_unblock(&args("UNBLOCK k")).is_ok());
        assert_eq!(
            parse_unblock(&args("UNBLOCK k x")).map(|_| ()),
            Err(ArgError::WrongArity)
        );
        let until = |line: &str| parse_block_until(&args(line)).map(|call| call.until);
        assert_eq!(until("B k 1700000000000"), Ok(Some(1_700_000_000_000)));
        assert_eq!(until("B k 0"), Ok(None));
        for bad in ["-1", "x", "9223372036854775807"] {
            assert!(until(&format!("B k {bad}")).is_err(), "{bad}");
        }
        assert_eq!(until("B k"), Err(ArgError::WrongArity));
    }

    #[test]
    fn a_multi_record_is_one_record_per_key() {
        let words = args("MR 2 a b 1700000000000 3 10 1000 60000");
        let call = parse_multi_record(&words).unwrap();
        assert_eq!(call.keys.len(), 2);
        let windows: Vec<u64> = call.records.iter().map(|r| r.window.get()).collect();
        assert_eq!(windows, [1000, 60_000]);
        assert!(call
            .records
            .iter()
            .all(|r| (r.at, r.cost.get(), r.precision.get()) == (1_700_000_000_000, 3, 10)));
        for bad in ["MR 2 a b 1 1 1 1000", "MR 1 a 1 1 1", "MR 1 a 1 1 1 5 6"] {
            assert_eq!(
                parse_multi_record(&args(bad)).map(|_| ()),
                Err(ArgError::WrongArity),
                "{bad}"
            );
        }
        assert!(parse_multi_record(&args("MR 1 a 0 1 1 5")).is_err());
        assert!(parse_multi_record(&args("MR 2 a a 1 1 1 5 5")).is_err());
    }

    fn multi_error(line: &str) -> ArgError {
        match parse_multi_call(&args(line)) {
            Err(e) => e,
            Ok(call) => panic!("{line}: expected an error, got {call:?}"),
        }
    }

    #[test]
    fn a_multi_key_call_is_each_key_s_call() {
        let words =
            args("M 3 user ip tenant 2 1000 5 60000 50 1 60000 100 1 1000 9 cost 2 PRECISION 10");
        let call = parse_multi_call(&words).unwrap();
        let keys: Vec<&[u8]> = call.calls.iter().map(|c| *c.key).collect();
        assert_eq!(keys, [b"user".as_slice(), b"ip", b"tenant"]);
        let longest: Vec<&[u8]> = call.calls.iter().map(|c| *c.longest_window).collect();
        assert_eq!(longest, [b"60000".as_slice(), b"60000", b"1000"]);
        assert_eq!(call.calls[0].request.limits().len(), 2);
        for c in &call.calls {
            assert_eq!(
                (c.request.cost().get(), c.request.precision().get()),
                (2, 10)
            );
            assert_eq!(c.cost, Some(&b"2".as_slice()));
        }
        let most = format!(
            "M 16 {} {}",
            (0..16)
                .map(|k| format!("k{k}"))
                .collect::<Vec<_>>()
                .join(" "),
            vec!["8 1 9 2 9 3 9 4 9 5 9 6 9 7 9 8 9"; 16].join(" ")
        );
        let most_words = args(&most);
        let most = parse_multi_call(&most_words).unwrap();
        assert_eq!(most.calls.len(), 16);
        assert!(most.calls.iter().all(|c| c.request.limits().len() == 8));
        assert_eq!(key_positions(&args("M 3 a b c 1 10 1")), 2..5);
        assert_eq!(key_positions(&args("M 3 a")), 2..3);
        assert!(key_positions(&args("M 17 a")).is_empty());
        let undo_words = args("U 2 a b COST 3");
        let undo = parse_multi_undo(&undo_words).unwrap();
        assert_eq!((undo.keys.len(), undo.units.get()), (2, 3));
    }

    #[test]
    fn each_bad_multi_key_argument_is_named() {
        let invalid = |text: &str| ArgError::Invalid(text.into());
        assert_eq!(multi_error("M"), ArgError::WrongArity);
        assert_eq!(multi_error("M 2 a"), ArgError::WrongArity);
        assert_eq!(multi_error("M 1 a 2 10 5"), ArgError::WrongArity);
        assert_eq!(multi_error("M 2 a b 1 10 5"), ArgError::WrongArity);
        for bad in ["0", "17", "x", "-1"] {
            assert_eq!(
                multi_error(&format!("M {bad} a 1 10 5")),
                invalid("numkeys must be an integer from 1 to 16")
            );
        }
        assert_eq!(
            multi_error("M 2 a b 1 10 5 9 10 5"),
            invalid("npairs of key 2 must be an integer from 1 to 8")
        );
        assert_eq!(
            multi_error("M 2 a a 1 10 5 1 10 5"),
            invalid("key 'a' is given more than once")
        );
        assert_eq!(
            multi_error("M 2 a b 1 10 5 1 10 2 COST 3"),
            invalid("key 'b': COST 3 is above max 2: such a request could never be allowed")
        );
        assert_eq!(
            multi_error("M 1 a 2 10 5 10 6"),
            invalid("key 'a': window 10 is given twice")
        );
        assert_eq!(
            multi_error("M 2 a b 1 100 5 1 10 5 PRECISION 50"),
            invalid("key 'b': PRECISION must be an integer from 1 to 10 (the shortest window)")
        );
        assert_eq!(
            multi_error("M 1 a 1 10 5 BLOCK 0"),
            invalid("BLOCK must be an integer from 1 to 31536000000 (milliseconds)")
        );
        assert_eq!(
            multi_error("M 1 a 1 10 5 WAIT 5"),
            invalid("unknown option 'WAIT' (the options are COST n, PRECISION p and BLOCK ms)")
        );
        let words = args("M 2 a b 1 10 5 1 20 5 BLOCK 60000");
        let blocked = parse_multi_call(&words).unwrap();
        assert!(blocked
            .calls
            .iter()
            .all(|c| c.request.block().map(NonZeroU64::get) == Some(60_000)));
        assert_eq!(
            parse_multi_undo(&args("U 1 a PRECISION 1")).map(|_| ()),
            Err(invalid(
                "unknown option 'PRECISION' (the options are COST n)"
            ))
        );
    }
}
