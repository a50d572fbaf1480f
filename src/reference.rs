//! The limiter's rule written the slow, obvious way over a plain list of
//! timestamps, and a driver that runs the same calls against it and the
//! real core. Used by the property tests and the differential fuzz target.

use crate::limiter::{self, Decision, Request};
use crate::log::{Millis, TimeLog};
use std::num::NonZeroU64;

#[derive(Default)]
pub struct Model {
    times: Vec<Millis>,
}

/// A limit as plain numbers: (window, max, cost).
type Limit = (u64, u64, u64);

impl Model {
    fn now(&self, clock: Millis) -> Millis {
        self.times.iter().copied().fold(clock, Millis::max)
    }

    fn used_at(&self, now: Millis, window: u64) -> u64 {
        let live = |t: &&Millis| now - (window as i64) < **t && **t <= now;
        self.times.iter().filter(live).count() as u64
    }

    fn fits_at(&self, now: Millis, (window, max, cost): Limit) -> bool {
        self.used_at(now, window) + cost <= max
    }

    /// The smallest wait after which the request fits, trying each ms.
    fn retry_after(&self, now: Millis, limit: Limit) -> u64 {
        (0..=limit.0)
            .find(|&d| self.fits_at(now + d as i64, limit))
            .unwrap_or(u64::MAX)
    }

    fn reset_after(&self, now: Millis, window: u64) -> u64 {
        (0..=window)
            .find(|&d| self.used_at(now + d as i64, window) == 0)
            .unwrap_or(u64::MAX)
    }

    pub fn peek(&self, clock: Millis, limit: Limit) -> Decision {
        let now = self.now(clock);
        Decision {
            allowed: self.fits_at(now, limit),
            remaining: limit.1.saturating_sub(self.used_at(now, limit.0)),
            retry_after_ms: self.retry_after(now, limit),
            reset_after_ms: self.reset_after(now, limit.0),
        }
    }

    pub fn check(&mut self, clock: Millis, limit: Limit) -> Decision {
        let now = self.now(clock);
        let standing = self.peek(clock, limit);
        if !standing.allowed {
            return standing;
        }
        self.times.retain(|&t| t > now - limit.0 as i64);
        self.times
            .extend(std::iter::repeat_n(now, limit.2 as usize));
        Decision {
            allowed: true,
            remaining: limit.1 - self.used_at(now, limit.0),
            retry_after_ms: 0,
            reset_after_ms: self.reset_after(now, limit.0),
        }
    }

    pub fn undo(&mut self, n: u64) -> u64 {
        let removed = n.min(self.times.len() as u64);
        self.times.truncate(self.times.len() - removed as usize);
        removed
    }
}

/// One call. A request (CHECK, or PEEK when `check` is false) first moves
/// the clock by `tick` (negative: a step back).
#[derive(Clone, Debug)]
pub enum Call {
    Request {
        check: bool,
        tick: i64,
        window: u64,
        max: u64,
        cost: u64,
    },
    Undo(u64),
}

/// Runs `calls` against the core and the model from the same start and
/// describes the first difference. Calls whose numbers no command could
/// pass (zero, or a cost above max) are skipped.
pub fn compare(calls: &[Call]) -> Result<(), String> {
    let mut log = TimeLog::default();
    let mut model = Model::default();
    let mut clock: Millis = 1_000;
    for (index, call) in calls.iter().enumerate() {
        match *call {
            Call::Request {
                check,
                tick,
                window,
                max,
                cost,
            } => {
                clock += tick;
                let Some(request) = request(window, max, cost) else {
                    continue;
                };
                let stored = Some(&log).filter(|l| !l.is_empty());
                let limit = (window, max, cost);
                let (core, expected) = if check {
                    let verdict = limiter::decide(stored, clock, &request);
                    if verdict.decision.allowed {
                        limiter::record(&mut log, verdict.at, request.window(), request.cost());
                    }
                    (verdict.decision, model.check(clock, limit))
                } else {
                    (
                        limiter::peek(stored, clock, &request),
                        model.peek(clock, limit),
                    )
                };
                if core != expected {
                    return Err(format!(
                        "call {index} {call:?}: core {core:?}, model {expected:?}"
                    ));
                }
            }
            Call::Undo(n) => {
                let Some(n) = NonZeroU64::new(n) else {
                    continue;
                };
                let (got, want) = (limiter::refund(&mut log, n), model.undo(n.get()));
                if got != want {
                    return Err(format!(
                        "call {index} {call:?}: refunded {got}, model {want}"
                    ));
                }
            }
        }
        if !log.iter().eq(model.times.iter().copied()) {
            return Err(format!("call {index} {call:?}: logs differ"));
        }
    }
    Ok(())
}

fn request(window: u64, max: u64, cost: u64) -> Option<Request> {
    Request::new(
        NonZeroU64::new(window)?,
        NonZeroU64::new(max)?,
        NonZeroU64::new(cost)?,
    )
}
