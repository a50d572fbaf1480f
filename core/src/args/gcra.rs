//! The token bucket's arguments, in each of its three spellings, and its
//! replicated form.

use super::{invalid, parse_integer, parse_options, ArgError, OptionName};
use crate::gcra::{Bucket, Limit, LimitError, Units, LATEST, MAX_EXACT, MAX_PERIOD};
use crate::log::Millis;

pub const TOKENS: OptionName = OptionName {
    token: "TOKENS",
    value: "n",
};

/// The flag that gives waits in milliseconds.
pub const MS: OptionName = OptionName {
    token: "MS",
    value: "",
};

/// The flag that charges the tokens whatever the bucket holds (a
/// settlement, issue 27).
pub const CHARGE: OptionName = OptionName {
    token: "CHARGE",
    value: "",
};

/// The flag that takes tokens back from what the bucket holds.
pub const REFUND: OptionName = OptionName {
    token: "REFUND",
    value: "",
};

/// What a charge past [`MAX_EXACT`] answers: the bucket cannot hold it
/// exactly.
pub const GCRA_OVERFLOW: &str = "this key would hold more than 9000000000000000 token-milliseconds (its tokens times the period in milliseconds, the most a bucket holds exactly): nothing was charged";

const _: () = assert!(MAX_EXACT == 9_000_000_000_000_000);

/// What a RATELIMIT.GCRA call does with its tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GcraOp {
    /// Decides a request, and charges it if allowed.
    Request,
    /// `CHARGE`: charges them whatever the bucket holds, never limited.
    Charge,
    /// `REFUND`: takes them back, at most what the bucket holds.
    Refund,
}

/// How a GCRA call is spelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GcraSyntax {
    /// `RATELIMIT.GCRA key max_burst count period [TOKENS n] [MS]`:
    /// redis-cell's reply, or waits in milliseconds with `MS`.
    Module,
    /// `CL.THROTTLE key max_burst count period [quantity]`, redis-cell's
    /// command: its reply and rounding.
    Cell,
    /// `GCRA key max_burst tokens_per_period period [TOKENS n]`, Redis's
    /// held-out command: waits in seconds rounded up, as it rounds them.
    Redis,
}

impl GcraSyntax {
    /// What the third argument is called.
    fn count_name(self) -> &'static str {
        match self {
            GcraSyntax::Redis => "tokens_per_period",
            GcraSyntax::Module | GcraSyntax::Cell => "count",
        }
    }
}

/// A GCRA call: `tokens` (0 asks without charging) under `limit`,
/// requested, charged or refunded (`op`; only `RATELIMIT.GCRA` has the
/// last two), the reply's waits in `units`.
#[derive(Debug)]
pub struct GcraCall<'a, A> {
    pub key: &'a A,
    pub limit: Limit,
    pub tokens: u64,
    pub op: GcraOp,
    pub units: Units,
}

pub fn parse_gcra<A: AsRef<[u8]>>(
    args: &[A],
    syntax: GcraSyntax,
) -> Result<GcraCall<'_, A>, ArgError> {
    let [_, key, max_burst, count, period, rest @ ..] = args else {
        return Err(ArgError::WrongArity);
    };
    let (tokens, units, op) = match syntax {
        GcraSyntax::Cell => match rest {
            [] => (None, Units::CellSeconds, GcraOp::Request),
            [quantity] => (
                Some(("quantity", quantity)),
                Units::CellSeconds,
                GcraOp::Request,
            ),
            _ => return Err(ArgError::WrongArity),
        },
        GcraSyntax::Redis => {
            let [tokens] = parse_options(rest, [&TOKENS])?;
            (
                tokens.map(|n| ("TOKENS", n)),
                Units::Seconds,
                GcraOp::Request,
            )
        }
        GcraSyntax::Module => {
            let [tokens, ms, charge, refund] =
                parse_options(rest, [&TOKENS, &MS, &CHARGE, &REFUND])?;
            let units = match ms {
                Some(_) => Units::Milliseconds,
                None => Units::CellSeconds,
            };
            let op = match (charge, refund) {
                (None, None) => GcraOp::Request,
                (Some(_), None) => GcraOp::Charge,
                (None, Some(_)) => GcraOp::Refund,
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        "CHARGE and REFUND cannot both be given: a call charges or refunds".into(),
                    ))
                }
            };
            (tokens.map(|n| ("TOKENS", n)), units, op)
        }
    };
    let limit = parse_limit(max_burst, count, period, syntax)?;
    let tokens = match tokens {
        Some((name, n)) => up_to_exact(n, 0).ok_or_else(|| {
            invalid(format!(
                "{name} must be an integer from 0 to {MAX_EXACT} (0 asks without charging)"
            ))
        })?,
        None => 1,
    };
    Ok(GcraCall {
        key,
        limit,
        tokens,
        op,
        units,
    })
}

fn parse_limit<A: AsRef<[u8]>>(
    max_burst: &A,
    count: &A,
    period: &A,
    syntax: GcraSyntax,
) -> Result<Limit, ArgError> {
    let max_burst = up_to_exact(max_burst, 0)
        .filter(|&b| b < MAX_EXACT)
        .ok_or_else(|| {
            invalid(format!(
                "max_burst must be an integer from 0 to {}",
                MAX_EXACT - 1
            ))
        })?;
    let count_error = || {
        invalid(format!(
            "{} must be an integer from 1 to {MAX_EXACT}",
            syntax.count_name()
        ))
    };
    let count = up_to_exact(count, 1).ok_or_else(count_error)?;
    let period = parse_period(period.as_ref()).ok_or_else(period_error)?;
    Limit::new(max_burst, count, period).map_err(|error| match error {
        LimitError::Count => count_error(),
        LimitError::Period => period_error(),
        LimitError::Capacity => invalid(format!(
            "max_burst + 1 times the period in milliseconds is above {MAX_EXACT}: \
             lower max_burst or the period"
        )),
    })
}

fn period_error() -> ArgError {
    invalid(format!(
        "period must be a number of seconds from 0.001 to {} (90 days), in whole milliseconds",
        MAX_PERIOD / 1000
    ))
}

/// An integer from `low` to [`MAX_EXACT`].
fn up_to_exact<A: AsRef<[u8]>>(arg: &A, low: u64) -> Option<u64> {
    parse_integer(arg.as_ref())
        .and_then(|n| u64::try_from(n).ok())
        .filter(|n| (low..=MAX_EXACT).contains(n))
}

/// Seconds written as Redis writes a number (digits, no sign, no leading
/// zero, no exponent), with at most three significant decimals: the
/// period in whole milliseconds, from 1 to [`MAX_PERIOD`].
fn parse_period(bytes: &[u8]) -> Option<u64> {
    let (whole, fraction) = match bytes.iter().position(|&b| b == b'.') {
        Some(dot) => (&bytes[..dot], Some(&bytes[dot + 1..])),
        None => (bytes, None),
    };
    let seconds = u64::try_from(parse_integer(whole)?).ok()?;
    let mut ms = 0;
    if let Some(fraction) = fraction {
        if fraction.is_empty() || !fraction.iter().all(u8::is_ascii_digit) {
            return None;
        }
        // Digits past the milliseconds must be zeros.
        if fraction.iter().skip(3).any(|&d| d != b'0') {
            return None;
        }
        for position in 0..3 {
            let digit = fraction.get(position).map_or(0, |d| u64::from(d - b'0'));
            ms = ms * 10 + digit;
        }
    }
    let period = seconds.checked_mul(1000)?.checked_add(ms)?;
    (1..=MAX_PERIOD).contains(&period).then_some(period)
}

/// A drop-in name for the token bucket, registered when the module is
/// loaded with `aliases` naming it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alias {
    /// redis-cell's `CL.THROTTLE`.
    CellThrottle,
    /// Redis's held-out `GCRA`.
    Gcra,
}

impl Alias {
    pub const ALL: [Alias; 2] = [Alias::CellThrottle, Alias::Gcra];

    /// The command's name, in lower case as Redis names commands.
    pub fn name(self) -> &'static str {
        match self {
            Alias::CellThrottle => "cl.throttle",
            Alias::Gcra => "gcra",
        }
    }

    pub fn syntax(self) -> GcraSyntax {
        match self {
            Alias::CellThrottle => GcraSyntax::Cell,
            Alias::Gcra => GcraSyntax::Redis,
        }
    }
}

/// The `aliases` setting: names separated by commas or spaces, in any
/// case, each at most once in the result; empty for none.
pub fn parse_aliases(text: &str) -> Result<Vec<Alias>, String> {
    let mut aliases = Vec::new();
    for word in text.split([',', ' ']).filter(|w| !w.is_empty()) {
        let alias = Alias::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(word))
            .ok_or_else(|| {
                format!("unknown alias '{word}' in aliases (the aliases are CL.THROTTLE and GCRA)")
            })?;
        if !aliases.contains(&alias) {
            aliases.push(alias);
        }
    }
    Ok(aliases)
}

/// `RATELIMIT.GCRASET key at period level expires_at`, the replicated form
/// of an allowed GCRA call: the master's bucket as stored (`at`, `period`
/// and `level` as [`Bucket`] keeps them) and the key's absolute expiry (0
/// for none, as an AOF rewrite writes it before Redis's own PEXPIREAT).
#[derive(Debug)]
pub struct GcraSetCall<'a, A> {
    pub key: &'a A,
    pub bucket: Bucket,
    pub expires_at: Option<Millis>,
}

pub fn parse_gcra_set<A: AsRef<[u8]>>(args: &[A]) -> Result<GcraSetCall<'_, A>, ArgError> {
    let [_, key, at, period, level, expires_at] = args else {
        return Err(ArgError::WrongArity);
    };
    let number = |arg: &A| parse_integer(arg.as_ref());
    let bucket = match (number(at), number(period), number(level)) {
        (Some(at), Some(period), Some(level)) if period >= 0 && level >= 0 => {
            Bucket::new(at, period as u64, level as u64).map_err(|e| invalid(e.describe().into()))
        }
        _ => Err(invalid("at, period and level must be integers".into())),
    }?;
    let expires_at = number(expires_at)
        .filter(|&t| t == 0 || (bucket.at() < t && t <= LATEST + MAX_EXACT as Millis))
        .ok_or_else(|| {
            invalid("expires_at must be 0 or a time after at, in unix milliseconds".into())
        })?;
    Ok(GcraSetCall {
        key,
        bucket,
        expires_at: (expires_at != 0).then_some(expires_at),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<&[u8]> {
        line.split(' ').map(str::as_bytes).collect()
    }

    fn parse(line: &str, syntax: GcraSyntax) -> Result<(Limit, u64, Units), ArgError> {
        parse_gcra(&words(line), syntax).map(|c| (c.limit, c.tokens, c.units))
    }

    fn error(line: &str, syntax: GcraSyntax) -> String {
        match parse(line, syntax) {
            Err(ArgError::Invalid(text)) => text,
            other => panic!("{line}: expected an error, got {other:?}"),
        }
    }

    fn limit(max_burst: u64, count: u64, period: u64) -> Limit {
        Limit::new(max_burst, count, period).expect("a valid limit")
    }

    #[test]
    fn three_spellings_of_one_call() {
        use GcraSyntax::*;
        let minute = limit(15, 30, 60_000);
        assert_eq!(
            parse("G k 15 30 60", Module),
            Ok((minute, 1, Units::CellSeconds))
        );
        assert_eq!(
            parse("G k 15 30 60 ms tokens 3", Module),
            Ok((minute, 3, Units::Milliseconds))
        );
        assert_eq!(
            parse("CL k 15 30 60 0", Cell),
            Ok((minute, 0, Units::CellSeconds))
        );
        assert_eq!(
            parse("CL k 15 30 60", Cell),
            Ok((minute, 1, Units::CellSeconds))
        );
        assert_eq!(
            parse("GCRA k 15 30 60.000 TOKENS 2", Redis),
            Ok((minute, 2, Units::Seconds))
        );
        assert_eq!(parse("CL k 15 30 60 1 2", Cell), Err(ArgError::WrongArity));
        let op = |line: &str| parse_gcra(&words(line), Module).map(|c| (c.tokens, c.op, c.units));
        assert_eq!(
            op("G k 15 30 60 TOKENS 5 CHARGE"),
            Ok((5, GcraOp::Charge, Units::CellSeconds))
        );
        assert_eq!(
            op("G k 15 30 60 refund ms TOKENS 2"),
            Ok((2, GcraOp::Refund, Units::Milliseconds))
        );
        assert_eq!(
            op("G k 15 30 60 Charge"),
            Ok((1, GcraOp::Charge, Units::CellSeconds))
        );
        assert_eq!(
            op("G k 15 30 60"),
            Ok((1, GcraOp::Request, Units::CellSeconds))
        );
        assert_eq!(parse("G k 15 30", Module), Err(ArgError::WrongArity));
    }

    #[test]
    fn periods_are_seconds_in_whole_milliseconds() {
        for (text, ms) in [
            ("60", 60_000),
            ("0.5", 500),
            ("0.001", 1),
            ("1.25", 1250),
            ("0.0010", 1),
            ("7776000", MAX_PERIOD),
        ] {
            assert_eq!(parse_period(text.as_bytes()), Some(ms), "{text}");
        }
        for bad in [
            "",
            "0",
            "0.0",
            "0.0001",
            "1.0005",
            ".5",
            "5.",
            "-1",
            "+1",
            "1e3",
            "01",
            " 1",
            "1.5x",
            "7776000.001",
            "99999999999999999999",
        ] {
            assert_eq!(parse_period(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn each_bad_argument_is_named() {
        use GcraSyntax::*;
        let period = "period must be a number of seconds from 0.001 to 7776000 (90 days), in whole milliseconds";
        assert_eq!(error("G k 1 1 0.0001", Module), period);
        assert_eq!(error("G k 1 1 x", Module), period);
        assert_eq!(
            error("G k -1 1 1", Module),
            "max_burst must be an integer from 0 to 8999999999999999"
        );
        assert_eq!(
            error("G k 1 0 1", Module),
            "count must be an integer from 1 to 9000000000000000"
        );
        assert_eq!(
            error("GCRA k 1 0 1", Redis),
            "tokens_per_period must be an integer from 1 to 9000000000000000"
        );
        assert_eq!(
            error("G k 9000000000000 1 1", Module),
            "max_burst + 1 times the period in milliseconds is above 9000000000000000: lower max_burst or the period"
        );
        assert_eq!(
            error("G k 1 1 1 TOKENS -1", Module),
            "TOKENS must be an integer from 0 to 9000000000000000 (0 asks without charging)"
        );
        assert_eq!(
            error("CL k 1 1 1 x", Cell),
            "quantity must be an integer from 0 to 9000000000000000 (0 asks without charging)"
        );
        assert_eq!(
            error("G k 1 1 1 TOKENS", Module),
            "syntax error: TOKENS needs a value"
        );
        assert_eq!(error("G k 1 1 1 MS MS", Module), "MS given more than once");
        assert_eq!(
            error("G k 1 1 1 COST 1", Module),
            "unknown option 'COST' (the options are TOKENS n, MS, CHARGE and REFUND)"
        );
        assert_eq!(
            error("G k 1 1 1 TOKENS 2 CHARGE refund", Module),
            "CHARGE and REFUND cannot both be given: a call charges or refunds"
        );
        assert_eq!(
            error("G k 1 1 1 CHARGE CHARGE", Module),
            "CHARGE given more than once"
        );
        assert_eq!(
            error("GCRA k 1 1 1 CHARGE", Redis),
            "unknown option 'CHARGE' (the options are TOKENS n)"
        );
        assert_eq!(
            parse("CL k 1 1 1 1 CHARGE", Cell),
            Err(ArgError::WrongArity)
        );
        assert_eq!(
            error("GCRA k 1 1 1 MS", Redis),
            "unknown option 'MS' (the options are TOKENS n)"
        );
    }

    #[test]
    fn aliases_are_named_in_any_case_and_separator() {
        use Alias::*;
        assert_eq!(parse_aliases(""), Ok(vec![]));
        assert_eq!(parse_aliases("CL.THROTTLE"), Ok(vec![CellThrottle]));
        assert_eq!(
            parse_aliases("gcra,cl.throttle"),
            Ok(vec![Gcra, CellThrottle])
        );
        assert_eq!(parse_aliases(" GCRA  gcra "), Ok(vec![Gcra]));
        assert_eq!(
            parse_aliases("gcra,throttle"),
            Err(
                "unknown alias 'throttle' in aliases (the aliases are CL.THROTTLE and GCRA)".into()
            )
        );
    }

    #[test]
    fn the_replicated_form_holds_a_bucket_the_module_could_store() {
        let set = |line: &str| {
            parse_gcra_set(&words(line)).map(|c| {
                let b = c.bucket;
                (b.at(), b.period(), b.level(), c.expires_at)
            })
        };
        assert_eq!(
            set("S k 1700000000000 60000 60000 1700000002000"),
            Ok((1_700_000_000_000, 60_000, 60_000, Some(1_700_000_002_000)))
        );
        assert_eq!(
            set("S k 1700000000000 60000 60000 0"),
            Ok((1_700_000_000_000, 60_000, 60_000, None))
        );
        for bad in [
            "S k 0 60000 1 0",
            "S k 1700000000000 0 1 0",
            "S k 1700000000000 60000 0 0",
            "S k 1700000000000 60000 -1 0",
            "S k 1700000000000 60000 1 1700000000000",
            "S k 1700000000000 60000 1 -5",
            "S k x 60000 1 0",
        ] {
            assert!(set(bad).is_err(), "{bad}");
        }
        assert_eq!(set("S k 1 1 1"), Err(ArgError::WrongArity));
    }
}
