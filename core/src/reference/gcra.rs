//! GCRA the way redis-cell writes it (a theoretical arrival time, an
//! emission interval, a delay variation tolerance), over exact fractions,
//! with this module's rule for a changed limit written as a conversion of
//! that time; and a driver that runs the same calls against it and the core
//! (`crate::gcra`), with the key expiring as Redis would expire it.

use crate::args::GcraOp;
use crate::gcra::{self, Bucket, Limit, Units, Write, MAX_EXACT};
use crate::log::Millis;
use std::cmp::Ordering;

/// A fraction, always in lowest terms with a positive denominator.
#[derive(Clone, Copy, Debug)]
struct Ratio {
    num: i128,
    den: i128,
}

fn gcd(a: i128, b: i128) -> i128 {
    if b == 0 {
        a.abs()
    } else {
        gcd(b, a % b)
    }
}

impl Ratio {
    fn new(num: i128, den: i128) -> Ratio {
        let g = gcd(num, den).max(1) * den.signum();
        Ratio {
            num: num / g,
            den: den / g,
        }
    }

    fn int(n: i128) -> Ratio {
        Ratio::new(n, 1)
    }

    fn add(self, o: Ratio) -> Ratio {
        Ratio::new(self.num * o.den + o.num * self.den, self.den * o.den)
    }

    fn sub(self, o: Ratio) -> Ratio {
        self.add(Ratio::new(-o.num, o.den))
    }

    fn mul(self, o: Ratio) -> Ratio {
        Ratio::new(self.num * o.num, self.den * o.den)
    }

    fn div(self, o: Ratio) -> Ratio {
        Ratio::new(self.num * o.den, self.den * o.num)
    }

    fn floor(self) -> i128 {
        self.num.div_euclid(self.den)
    }

    fn ceil(self) -> i128 {
        -Ratio::new(-self.num, self.den).floor()
    }

    /// Towards zero, as Rust's `as i64` on a float.
    fn trunc(self) -> i128 {
        self.num / self.den
    }

    fn cmp(self, o: Ratio) -> Ordering {
        (self.num * o.den).cmp(&(o.num * self.den))
    }

    fn max(self, o: Ratio) -> Ratio {
        if self.cmp(o) == Ordering::Less {
            o
        } else {
            self
        }
    }
}

/// One call: the clock moves by `tick` ms first; then `tokens` under
/// `max_burst count period` (period in ms), requested, charged or refunded.
#[derive(Clone, Copy, Debug)]
pub struct GcraCall {
    pub tick: i64,
    pub max_burst: u64,
    pub count: u64,
    pub period: u64,
    pub tokens: u64,
    pub op: GcraOp,
}

/// The last charge: its theoretical arrival time, when it was made, and
/// its limit's emission interval and period.
#[derive(Clone, Copy, Debug)]
struct Charged {
    tat: Ratio,
    at: Millis,
    interval: Ratio,
    period: u64,
}

#[derive(Clone, Default)]
pub struct Model {
    charged: Option<Charged>,
    /// When the key expires: Redis removes it once the clock is past this.
    expires_at: Millis,
}

/// redis-cell's reply in each unit (a settlement's, for CHARGE and
/// REFUND), and whether the call stored a bucket or deleted the key.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    replies: [[i64; 5]; 3],
    stored: bool,
    deleted: bool,
}

const UNITS: [Units; 3] = [Units::CellSeconds, Units::Seconds, Units::Milliseconds];

impl Model {
    /// The call's answer, or `None` for a charge refused whole (the bucket
    /// would hold more than MAX_EXACT units).
    fn call(&mut self, clock: Millis, c: &GcraCall) -> Option<Answer> {
        if clock > self.expires_at {
            self.charged = None;
        }
        let now = self.charged.map_or(clock, |k| clock.max(k.at));
        let interval = Ratio::new(i128::from(c.period), i128::from(c.count));
        let burst = i128::from(c.max_burst) + 1;
        let tolerance = interval.mul(Ratio::int(burst));
        let now_r = Ratio::int(i128::from(now));
        let tat = match self.charged {
            None => now_r,
            Some(k) => {
                // The tokens held at the charge, even above this call's
                // burst: under another period counted whole, and at most
                // what a bucket of this period holds exactly; the time
                // they take to drain at this call's rate, from the charge.
                let mut held = k.tat.sub(Ratio::int(i128::from(k.at))).div(k.interval);
                if k.period != c.period {
                    let most = i128::from(MAX_EXACT / c.period);
                    held = Ratio::int(held.ceil().min(most));
                }
                Ratio::int(i128::from(k.at)).add(held.mul(interval))
            }
        };
        if c.op != GcraOp::Request {
            return self.settle(now, tat, interval, tolerance, c);
        }
        let increment = interval.mul(Ratio::int(i128::from(c.tokens)));
        let new_tat = tat.max(now_r).add(increment);
        let diff = now_r.sub(new_tat.sub(tolerance));
        let (limited, retry_after, ttl) = if diff.cmp(Ratio::int(0)) == Ordering::Less {
            let retry = (increment.cmp(tolerance) != Ordering::Greater)
                .then(|| Ratio::new(-diff.num, diff.den));
            // redis-cell's `tat - now` goes negative when an emptied
            // bucket's key outlives its TAT; a bucket never holds less
            // than nothing here.
            (true, retry, tat.max(now_r).sub(now_r))
        } else {
            (false, None, new_tat.sub(now_r))
        };
        let stored = !limited && c.tokens > 0;
        if stored {
            self.store(new_tat, now, interval, c.period);
        }
        let next = tolerance.sub(ttl);
        let remaining = if next.cmp(Ratio::new(-interval.num, interval.den)) == Ordering::Greater {
            next.div(interval).trunc().max(0)
        } else {
            0
        };
        let replies = UNITS.map(|units| {
            [
                i64::from(limited),
                burst as i64,
                remaining as i64,
                retry_after.map_or(-1, |wait| in_units(wait, units)),
                in_units(ttl, units),
            ]
        });
        Some(Answer {
            replies,
            stored,
            deleted: false,
        })
    }

    fn store(&mut self, tat: Ratio, at: Millis, interval: Ratio, period: u64) {
        self.charged = Some(Charged {
            tat,
            at,
            interval,
            period,
        });
        self.expires_at = tat.ceil() as Millis;
    }

    /// CHARGE and REFUND, as the issue states them: a charge moves the
    /// theoretical arrival time later by the tokens' emission intervals
    /// whatever it is (refused if the bucket would then hold more than
    /// MAX_EXACT units); a refund moves it earlier, never before now, and
    /// a key whose time comes back to now holds nothing and goes. TOKENS
    /// 0, and a refund on no key, change nothing. The reply reads the
    /// bucket after: the tokens above its size (rounded up), the whole
    /// tokens below it, the wait until one more token fits, until empty.
    fn settle(
        &mut self,
        now: Millis,
        tat: Ratio,
        interval: Ratio,
        tolerance: Ratio,
        c: &GcraCall,
    ) -> Option<Answer> {
        let now_r = Ratio::int(i128::from(now));
        let increment = interval.mul(Ratio::int(i128::from(c.tokens)));
        let start = tat.max(now_r);
        let (new_tat, write) = match c.op {
            GcraOp::Charge => {
                let new_tat = start.add(increment);
                let units = new_tat
                    .sub(now_r)
                    .div(interval)
                    .mul(Ratio::int(i128::from(c.period)));
                if units.cmp(Ratio::int(i128::from(MAX_EXACT))) == Ordering::Greater {
                    return None;
                }
                (new_tat, c.tokens > 0)
            }
            _ => {
                let new_tat = start.sub(increment).max(now_r);
                (new_tat, c.tokens > 0 && self.charged.is_some())
            }
        };
        let mut answer = Answer {
            replies: [[0; 5]; 3],
            stored: false,
            deleted: false,
        };
        if write {
            if new_tat.cmp(now_r) == Ordering::Equal {
                self.charged = None;
                answer.deleted = true;
            } else {
                self.store(new_tat, now, interval, c.period);
                answer.stored = true;
            }
        }
        let ttl = new_tat.sub(now_r);
        let zero = Ratio::int(0);
        let over = ttl.sub(tolerance).div(interval).ceil().max(0);
        let remaining = tolerance.sub(ttl).max(zero).div(interval).floor();
        let retry = ttl.add(interval).sub(tolerance);
        let retry = (retry.cmp(zero) == Ordering::Greater).then_some(retry);
        answer.replies = UNITS.map(|units| {
            [
                over as i64,
                (c.max_burst + 1) as i64,
                remaining as i64,
                retry.map_or(-1, |wait| in_units(wait, units)),
                in_units(ttl, units),
            ]
        });
        Some(answer)
    }

    /// A call at `clock` of `tokens` under `limit` (its period in ms),
    /// requested, charged or refunded (`op`), the reply in `units`: the
    /// five integers, or `None` for a charge refused whole.
    pub fn answer(
        &mut self,
        clock: Millis,
        limit: &Limit,
        tokens: u64,
        op: GcraOp,
        units: Units,
    ) -> Option<[i64; 5]> {
        let call = GcraCall {
            tick: 0,
            max_burst: limit.burst() - 1,
            count: limit.count(),
            period: limit.period(),
            tokens,
            op,
        };
        let answer = self.call(clock, &call)?;
        let at = UNITS.iter().position(|&u| u == units).unwrap_or(0);
        Some(answer.replies[at])
    }

    /// The key at `clock`, if it exists: its last charge's time, period and
    /// level (as the core stores them), and when it expires.
    pub fn held(&self, clock: Millis) -> Option<(Millis, u64, u64, Millis)> {
        let (at, period, level) = self.bucket().filter(|_| clock <= self.expires_at)?;
        Some((at, period, u64::try_from(level).ok()?, self.expires_at))
    }

    /// The bucket the core should hold: the same charge, its level being
    /// the tokens held then in `1 / period` tokens.
    fn bucket(&self) -> Option<(Millis, u64, i128)> {
        self.charged.map(|k| {
            let tokens = k.tat.sub(Ratio::int(i128::from(k.at))).div(k.interval);
            let level = tokens.mul(Ratio::int(i128::from(k.period)));
            assert_eq!(level.den, 1, "a level is a whole number of units: {k:?}");
            (k.at, k.period, level.num)
        })
    }
}

/// A wait in ms as each reply gives it, written as redis-cell and Redis
/// round: redis-cell takes the whole seconds and adds one if the
/// sub-second part holds a whole millisecond; Redis rounds seconds up.
fn in_units(wait: Ratio, units: Units) -> i64 {
    let ms = Ratio::int(1000);
    let value = match units {
        Units::CellSeconds => {
            let seconds = wait.div(ms).trunc();
            let subsec_ms = wait.sub(Ratio::int(seconds * 1000)).trunc();
            seconds + i128::from(subsec_ms > 0)
        }
        Units::Seconds => wait.div(ms).ceil(),
        Units::Milliseconds => wait.ceil(),
    };
    value as i64
}

/// Runs `calls` on the model and on the core from one clock, the core's
/// key expiring as Redis expires it; the first difference, if any.
pub fn compare(calls: &[GcraCall]) -> Result<(), String> {
    let mut model = Model::default();
    let mut key: Option<(Bucket, Millis)> = None;
    let mut clock: Millis = 1_700_000_000_000;
    for (i, c) in calls.iter().enumerate() {
        clock += c.tick;
        let Ok(limit) = Limit::new(c.max_burst, c.count, c.period) else {
            return Err(format!("call {i}: the test drew an invalid limit {c:?}"));
        };
        if key.is_some_and(|(_, expires_at)| clock > expires_at) {
            key = None;
        }
        let stored = key.as_ref().map(|(b, _)| b);
        let (core, write) = match c.op {
            GcraOp::Request => {
                let verdict = gcra::decide(stored, clock, &limit, c.tokens);
                let d = verdict.decision;
                let answer = Answer {
                    replies: UNITS.map(|units| d.reply(units)),
                    stored: verdict.charge.is_some(),
                    deleted: false,
                };
                (Some(answer), verdict.charge.map(Write::Store))
            }
            op => {
                let settled = match op {
                    GcraOp::Charge => gcra::charge(stored, clock, &limit, c.tokens).ok(),
                    _ => Some(gcra::refund(stored, clock, &limit, c.tokens)),
                };
                let answer = settled.map(|s| Answer {
                    replies: UNITS.map(|units| s.settlement.reply(units)),
                    stored: matches!(s.write, Some(Write::Store(_))),
                    deleted: s.write == Some(Write::Delete),
                });
                (answer, settled.and_then(|s| s.write))
            }
        };
        let expected = model.call(clock, c);
        if core != expected {
            return Err(format!(
                "call {i} {c:?} at {clock}: core {core:?}, model {expected:?}"
            ));
        }
        match write {
            Some(Write::Store(charge)) => {
                key = Some((charge.bucket, charge.expires_at));
                let b = charge.bucket;
                let stored = (b.at(), b.period(), i128::from(b.level()));
                if model.bucket() != Some(stored) || model.expires_at != charge.expires_at {
                    return Err(format!(
                        "call {i} {c:?}: core stored {b:?} until {}, model {:?} until {}",
                        charge.expires_at,
                        model.bucket(),
                        model.expires_at
                    ));
                }
            }
            Some(Write::Delete) => key = None,
            None => {}
        }
    }
    Ok(())
}
