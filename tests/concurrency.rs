//! Many clients at once on one key: exactly `max` are admitted per window.

use harness::{check, Server};
use std::sync::Arc;

#[test]
fn concurrent_clients_are_admitted_exactly_max_times() {
    let server = Arc::new(Server::start(&[]));
    const THREADS: usize = 16;
    const CALLS: usize = 60;
    const MAX: u64 = 100;
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let server = Arc::clone(&server);
            std::thread::spawn(move || {
                let mut con = server.connect();
                (0..CALLS)
                    .filter(|_| check(&mut con, "shared", 600_000, MAX)[0] == 1)
                    .count()
            })
        })
        .collect();
    let admitted: usize = handles
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .sum();
    assert_eq!(
        admitted as u64,
        MAX,
        "{} calls in one window",
        THREADS * CALLS
    );
}

#[test]
fn concurrent_costs_never_exceed_max() {
    let server = Arc::new(Server::start(&[]));
    let handles: Vec<_> = (0..8u64)
        .map(|t| {
            let server = Arc::clone(&server);
            std::thread::spawn(move || {
                let mut con = server.connect();
                let cost = 1 + t % 3;
                (0..40)
                    .filter(|_| {
                        let reply: Vec<i64> = harness::run(
                            &mut con,
                            &[
                                "RATELIMIT.CHECK",
                                "costly",
                                "600000",
                                "100",
                                "COST",
                                &cost.to_string(),
                            ],
                        );
                        reply[0] == 1
                    })
                    .count() as u64
                    * cost
            })
        })
        .collect();
    let admitted: u64 = handles
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .sum();
    // Cost-1 clients keep calling after the others stop fitting, so the
    // window ends up exactly full.
    assert_eq!(admitted, 100);
}
