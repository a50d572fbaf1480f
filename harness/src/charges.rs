//! Keys written by settlements (RATELIMIT.CHARGE and MCHARGE, issue 27),
//! for the tests that hold replicas and reloads to the master's exact
//! state: over a limit, several windows, PRECISION, a blocked key, several
//! keys at once, and a key whose newest entry lies ahead of the clock.

use crate::commands::run;
use crate::logs::fixture_payload;
use crate::payloads::restore;
use redis::{Connection, Value};

/// Writes the keys `charged:*` (all of one hash tag) by CHARGE and
/// MCHARGE; returns their names.
pub fn every_charge_shape(con: &mut Connection) -> Vec<String> {
    let keys: Vec<String> = ["over", "windows", "cells", "blocked", "a", "b", "ahead"]
        .iter()
        .map(|k| format!("{{charged}}:{k}"))
        .collect();
    let key = |i: usize| keys[i].as_str();
    run::<Vec<i64>>(
        con,
        &["RATELIMIT.CHECK", key(0), "600000", "100", "COST", "60"],
    );
    run::<Vec<i64>>(
        con,
        &["RATELIMIT.CHARGE", key(0), "600000", "100", "COST", "70"],
    );
    for _ in 0..20 {
        run::<Vec<i64>>(
            con,
            &[
                "RATELIMIT.CHARGE",
                key(1),
                "1000",
                "5",
                "600000",
                "50",
                "COST",
                "3",
            ],
        );
        run::<Vec<i64>>(
            con,
            &[
                "RATELIMIT.CHARGE",
                key(2),
                "600000",
                "10",
                "PRECISION",
                "100",
            ],
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    run::<Vec<i64>>(con, &["RATELIMIT.CHECK", key(3), "600000", "1"]);
    run::<Vec<i64>>(
        con,
        &["RATELIMIT.CHECK", key(3), "600000", "1", "BLOCK", "3600000"],
    );
    run::<Vec<i64>>(
        con,
        &["RATELIMIT.CHARGE", key(3), "600000", "1", "COST", "5"],
    );
    // A key whose newest entry is in the year 2200 (release 0.2.0's
    // fixture): it records at that time, the others at the clock, from
    // one MRECORD.
    restore(con, key(6), &fixture_payload("v2", "mixed")).expect("RESTORE");
    for cost in ["1", "7", "2"] {
        run::<Value>(
            con,
            &[
                "RATELIMIT.MCHARGE",
                "3",
                key(4),
                key(5),
                key(6),
                "1",
                "600000",
                "5",
                "2",
                "1000",
                "2",
                "600000",
                "9",
                "1",
                "600000",
                "3",
                "COST",
                cost,
            ],
        );
    }
    keys
}
