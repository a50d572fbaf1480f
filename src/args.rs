//! Command arguments: bytes in, typed requests or a clear error out.
//!
//! Pure functions over `args[0]` (the command name), `args[1]` (the key)
//! and what follows, so every malformed call can be tested and fuzzed
//! without a server.

use crate::limiter::Request;
use crate::log::Millis;
use std::num::NonZeroU64;

/// The longest window a limit may have: 365 days.
pub const MAX_WINDOW_MS: u64 = 365 * 24 * 60 * 60 * 1000;

#[derive(Debug, PartialEq, Eq)]
pub enum ArgError {
    /// Answered with Redis's standard wrong-arity error.
    WrongArity,
    /// The text of an error reply, without the `ERR ` prefix.
    Invalid(String),
}

/// What a replica or the AOF replays for an allowed CHECK.
#[derive(Debug, PartialEq, Eq)]
pub struct Record {
    pub at: Millis,
    pub window: NonZeroU64,
    pub cost: NonZeroU64,
}

/// `RATELIMIT.CHECK|PEEK key window max [COST n]`, with `max` at most `cap`.
pub fn parse_request<A: AsRef<[u8]>>(args: &[A], cap: u64) -> Result<Request, ArgError> {
    let [_, _, window, max, options @ ..] = args else {
        return Err(ArgError::WrongArity);
    };
    let window = parse_window(window)?;
    let max = positive_up_to(max, cap).ok_or_else(|| {
        invalid(format!(
            "max must be an integer from 1 to {cap} (ratelimit.max-entries)"
        ))
    })?;
    let cost = parse_cost(options)?;
    Request::new(window, max, cost).ok_or_else(|| {
        invalid(format!(
            "COST {cost} is above max {max}: such a request could never be allowed"
        ))
    })
}

/// `RATELIMIT.UNDO key [COST n]`: how many entries to refund.
pub fn parse_refund<A: AsRef<[u8]>>(args: &[A]) -> Result<NonZeroU64, ArgError> {
    let [_, _, options @ ..] = args else {
        return Err(ArgError::WrongArity);
    };
    parse_cost(options)
}

/// `RATELIMIT.RECORD key at window cost`, the replicated form of CHECK.
pub fn parse_record<A: AsRef<[u8]>>(args: &[A]) -> Result<Record, ArgError> {
    let [_, _, at, window, cost] = args else {
        return Err(ArgError::WrongArity);
    };
    let at = positive_up_to(at, MAX_RECORD_TIME)
        .ok_or_else(|| invalid("at must be a positive time in unix milliseconds".into()))?;
    Ok(Record {
        at: at.get() as Millis,
        window: parse_window(window)?,
        cost: positive_up_to(cost, i64::MAX as u64).ok_or_else(cost_error)?,
    })
}

/// Far enough from i64::MAX that adding a window cannot overflow.
const MAX_RECORD_TIME: u64 = i64::MAX as u64 / 2;

fn parse_window<A: AsRef<[u8]>>(window: &A) -> Result<NonZeroU64, ArgError> {
    positive_up_to(window, MAX_WINDOW_MS).ok_or_else(|| {
        invalid(format!(
            "window must be an integer from 1 to {MAX_WINDOW_MS} (milliseconds)"
        ))
    })
}

/// The optional `COST n` (default 1), the only option there is.
fn parse_cost<A: AsRef<[u8]>>(options: &[A]) -> Result<NonZeroU64, ArgError> {
    let mut cost = None;
    for pair in options.chunks(2) {
        let name = pair[0].as_ref();
        if !name.eq_ignore_ascii_case(b"COST") {
            return Err(invalid(format!(
                "unknown option '{}' (the only option is COST n)",
                String::from_utf8_lossy(name)
            )));
        }
        let [_, value] = pair else {
            return Err(invalid("syntax error: COST needs a value".into()));
        };
        if cost.is_some() {
            return Err(invalid("COST given more than once".into()));
        }
        cost = Some(positive_up_to(value, i64::MAX as u64).ok_or_else(cost_error)?);
    }
    Ok(cost.unwrap_or(NonZeroU64::MIN))
}

fn cost_error() -> ArgError {
    invalid("COST must be a positive integer".into())
}

fn invalid(text: String) -> ArgError {
    ArgError::Invalid(text)
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
        parse_request(&args(line), 1000)
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
    fn a_request_with_and_without_cost() {
        let plain = check("RATELIMIT.CHECK k 60000 5").unwrap();
        assert_eq!((plain.window().get(), plain.cost().get()), (60000, 1));
        let costly = check("RATELIMIT.CHECK k 60000 5 cost 5").unwrap();
        assert_eq!(costly.cost().get(), 5);
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
            error("C k 10 1001"),
            "max must be an integer from 1 to 1000 (ratelimit.max-entries)"
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
        assert_eq!(error("C k 10 5 COST"), "syntax error: COST needs a value");
        assert_eq!(error("C k 10 5 COST 1 COST 1"), "COST given more than once");
        assert_eq!(
            error("C k 10 5 WEIGHT 1"),
            "unknown option 'WEIGHT' (the only option is COST n)"
        );
        assert_eq!(check("C k 10"), Err(ArgError::WrongArity));
    }

    #[test]
    fn undo_and_record() {
        assert_eq!(parse_refund(&args("U k")).unwrap().get(), 1);
        assert_eq!(parse_refund(&args("U k COST 3")).unwrap().get(), 3);
        assert_eq!(parse_refund(&args("U")), Err(ArgError::WrongArity));
        let record = parse_record(&args("R k 1700000000000 1000 2")).unwrap();
        assert_eq!(
            (record.at, record.window.get(), record.cost.get()),
            (1_700_000_000_000, 1000, 2)
        );
        assert_eq!(parse_record(&args("R k 1 2")), Err(ArgError::WrongArity));
        assert!(parse_record(&args("R k -5 1000 2")).is_err());
    }
}
