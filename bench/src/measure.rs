//! What the server says about itself, and small statistics.

use redis::Connection;
use std::collections::HashMap;

/// Calls and server CPU per command, keyed by lower-case command name.
pub fn command_stats(con: &mut Connection) -> HashMap<String, (u64, u64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(con)
        .expect("INFO");
    info.lines()
        .filter_map(|line| {
            let (name, fields) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |wanted: &str| {
                fields.split(',').find_map(|f| {
                    let (k, v) = f.split_once('=')?;
                    (k == wanted).then(|| v.parse::<u64>().ok()).flatten()
                })
            };
            Some((name.to_lowercase(), (field("calls")?, field("usec")?)))
        })
        .collect()
}

/// Server CPU in µs per `per` calls, summed over `commands`.
pub fn usec_per<S: AsRef<str>>(
    stats: &HashMap<String, (u64, u64)>,
    commands: &[S],
    per: u64,
) -> f64 {
    let usec: u64 = commands
        .iter()
        .filter_map(|c| stats.get(c.as_ref()))
        .map(|s| s.1)
        .sum();
    usec as f64 / per.max(1) as f64
}

pub fn calls(stats: &HashMap<String, (u64, u64)>, command: &str) -> u64 {
    stats.get(command).map_or(0, |s| s.0)
}

pub fn reset(con: &mut Connection) {
    redis::cmd("FLUSHALL").query::<()>(con).expect("FLUSHALL");
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query::<()>(con)
        .expect("RESETSTAT");
}

pub fn used_memory(con: &mut Connection) -> i64 {
    harness::info_field(con, "memory", "used_memory").expect("used_memory in INFO")
}

/// Median, minimum and maximum.
#[derive(Clone, Copy, Debug, Default)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Spread {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let Some(&min) = sorted.first() else {
            return Spread::default();
        };
        Spread {
            median: sorted[sorted.len() / 2],
            min,
            max: sorted[sorted.len() - 1],
        }
    }

    /// `12.3 (11.9–12.8)`.
    pub fn show(&self, decimals: usize) -> String {
        format!(
            "{:.d$} ({:.d$}–{:.d$})",
            self.median,
            self.min,
            self.max,
            d = decimals
        )
    }
}

/// The value at quantile `q` of unsorted samples.
pub fn quantile(samples: &mut [f64], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_by(f64::total_cmp);
    let index = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[index]
}
