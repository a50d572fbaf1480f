//! A replica reaches the master's exact state (equal digests) through the
//! replicated RECORD commands (of CHECKs and of CHARGEs), and answers PEEK
//! itself; with the script
//! twin, through the writes the script made (effects replication).

use harness::{
    all_digests, all_dumps_and_expiries, all_values, check, every_charge_shape, every_log_shape,
    every_log_shape_by, run, wait_for_replica, Backend, Server,
};

fn replica_of(master: &Server) -> Server {
    Server::start(&["--replicaof", "127.0.0.1", &master.port.to_string()])
}

#[test]
fn a_replica_has_the_masters_exact_state() {
    let master = Server::start(&[]);
    let mut m = master.connect();
    // Keys before the replica attaches travel in the initial RDB sync.
    check(&mut m, "before", 600_000, 5);
    let replica = replica_of(&master);
    let mut r = replica.connect();
    wait_for_replica(&mut m, &mut r);
    every_log_shape(&mut m);
    wait_for_replica(&mut m, &mut r);
    let on_master = all_digests(&mut m);
    assert!(on_master.len() >= 14, "{on_master:?}");
    assert!(!on_master.iter().any(|(key, _)| key == "gone"));
    assert_eq!(all_digests(&mut r), on_master);
    let info: String = run(&mut r, &["INFO", "ratelimit"]);
    assert!(
        !info.contains("ratelimit_records_replayed:0\r"),
        "the replica applied RECORDs:\n{info}"
    );
    assert!(
        info.contains("ratelimit_checks:0\r"),
        "and decided nothing itself:\n{info}"
    );
}

#[test]
fn peek_runs_on_a_replica_and_agrees() {
    let master = Server::start(&[]);
    let replica = replica_of(&master);
    let (mut m, mut r) = (master.connect(), replica.connect());
    wait_for_replica(&mut m, &mut r);
    for _ in 0..4 {
        check(&mut m, "k", 600_000, 10);
    }
    wait_for_replica(&mut m, &mut r);
    let peek = ["RATELIMIT.PEEK", "k", "600000", "10"];
    let on_master: Vec<i64> = run(&mut m, &peek);
    let on_replica: Vec<i64> = run(&mut r, &peek);
    assert_eq!(on_master[..3], [1, 6, 0]);
    assert_eq!(on_replica[..3], on_master[..3]);
    let refused = harness::error(&mut r, &["RATELIMIT.CHECK", "k", "600000", "10"]);
    assert!(refused.starts_with("READONLY"), "{refused}");
}

/// Limits checked together, in MULTI/EXEC or from a script, replicate as
/// the RECORDs of what was allowed, like single calls.
#[test]
fn transactions_and_scripts_replicate_what_they_decided() {
    let master = Server::start(&[]);
    let replica = replica_of(&master);
    let (mut m, mut r) = (master.connect(), replica.connect());
    wait_for_replica(&mut m, &mut r);
    for _ in 0..3 {
        let (user, global): (Vec<i64>, Vec<i64>) = redis::pipe()
            .atomic()
            .cmd("RATELIMIT.CHECK")
            .arg("{api}:user:1")
            .arg(600_000)
            .arg(2)
            .cmd("RATELIMIT.CHECK")
            .arg("{api}:global")
            .arg(600_000)
            .arg(10)
            .query(&mut m)
            .expect("MULTI/EXEC");
        assert_eq!(global[0], 1);
        assert!(user[0] == 1 || user[1] == 0);
    }
    let script = r"
        local user = redis.call('RATELIMIT.CHECK', KEYS[1], 600000, 2)
        if user[1] == 0 then return user end
        return redis.call('RATELIMIT.CHECK', KEYS[2], 600000, 10)
    ";
    for _ in 0..3 {
        let reply: Vec<i64> = redis::cmd("EVAL")
            .arg(script)
            .arg(2)
            .arg("{api}:user:2")
            .arg("{api}:global")
            .query(&mut m)
            .expect("EVAL");
        assert_eq!(reply.len(), 4);
    }
    wait_for_replica(&mut m, &mut r);
    let on_master = all_digests(&mut m);
    assert_eq!(on_master.len(), 3);
    assert_eq!(all_digests(&mut r), on_master);
    let global: Vec<i64> = run(&mut r, &["RATELIMIT.PEEK", "{api}:global", "600000", "10"]);
    assert_eq!(
        global[1],
        10 - 3 - 2,
        "3 from MULTI, 2 from the script (user:2 allows 2)"
    );
}

/// The twin's writes replicate as they were made (SETRANGE, SET .. PXAT,
/// PEXPIREAT, DEL), so a replica without the module holds the master's
/// exact bytes and expiry, and answers FCALL_RO ratelimit_peek itself.
#[test]
fn a_replica_has_the_masters_exact_twin_state() {
    let (master, twin) = Backend::Function.start(&[]);
    let mut m = master.connect();
    twin.check(&mut m, "before", 600_000, 5);
    let replica =
        Server::start_without_module(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
    let mut r = replica.connect();
    wait_for_replica(&mut m, &mut r);
    every_log_shape_by(&twin, &mut m);
    wait_for_replica(&mut m, &mut r);
    let on_master = all_values(&mut m);
    assert!(on_master.len() >= 16, "{on_master:?}");
    assert!(on_master.iter().all(|(_, _, expires_at)| *expires_at > 0));
    assert_eq!(all_values(&mut r), on_master);
    // The library travelled too; the replica answers PEEK, refuses CHECK.
    let peek = ["RATELIMIT.PEEK", "user:1", "600000", "40"];
    let on_master: Vec<i64> = twin.run(&mut m, &peek);
    let on_replica: Vec<i64> = twin.run(&mut r, &peek);
    assert_eq!(on_replica[..3], on_master[..3]);
    let refused = twin.error(&mut r, &["RATELIMIT.CHECK", "user:1", "600000", "40"]);
    assert!(refused.starts_with("READONLY"), "{refused}");
}

/// Settlements (CHARGE, MCHARGE) replicate as the RECORDs and MRECORDs of
/// what the master recorded: the replica holds every charged key byte for
/// byte (DUMP) with the master's absolute expiry, over-limit keys, blocks
/// and a key ahead of the clock included, and decided nothing itself.
#[test]
fn a_replica_has_the_masters_exact_charged_keys() {
    let master = Server::start(&[]);
    let replica = replica_of(&master);
    let (mut m, mut r) = (master.connect(), replica.connect());
    wait_for_replica(&mut m, &mut r);
    let keys = every_charge_shape(&mut m);
    wait_for_replica(&mut m, &mut r);
    let on_master = all_dumps_and_expiries(&mut m);
    assert_eq!(on_master.len(), keys.len(), "{on_master:?}");
    assert_eq!(all_dumps_and_expiries(&mut r), on_master);
    let info: String = run(&mut r, &["INFO", "ratelimit"]);
    assert!(
        info.contains("ratelimit_charges:0\r"),
        "the replica charged nothing itself:\n{info}"
    );
}
