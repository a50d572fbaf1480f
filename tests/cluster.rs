//! Redis Cluster: routing, hash tags, per-key exactness, resharding a live
//! log, failover, and reads on replicas, on a real 6-node cluster (3
//! masters, 3 replicas) started and stopped by the test. Blocks (`BLOCK
//! ms`) move with their key through MIGRATE, atomic slot migration and a
//! failover, and token buckets through MIGRATE and atomic slot migration
//! (module only). One MCHECK over hash-tagged keys charges every
//! key or none on their master and its replica, with the module and the
//! twin; keys of different slots get CROSSSLOT. CHARGE and MCHARGE route
//! by their keys like CHECK and MCHECK, and replicas hold what they
//! charged (module only).

use harness::{check, digest, peek, run, wait_for_replica, Backend, Caller, Server};
use redis::cluster::ClusterClient;
use redis::Connection;
use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// The window every limiter in these tests uses.
const WINDOW: u64 = 600_000;

struct Node {
    id: String,
    port: u16,
    master: Option<String>,
}

struct Cluster {
    servers: Vec<Server>,
}

impl Cluster {
    /// Six nodes with the module.
    fn start() -> Cluster {
        Cluster::start_nodes(Server::start)
    }

    /// Six nodes with nothing loaded, for the script twin.
    fn start_without_module() -> Cluster {
        Cluster::start_nodes(Server::start_without_module)
    }

    fn start_nodes(launch: fn(&[&str]) -> Server) -> Cluster {
        // The bus port would default to port + 10000, past 65535 for a
        // fifth of the ephemeral range, so each node gets a free one.
        let servers: Vec<Server> = (0..6)
            .map(|_| {
                let bus = harness::free_port().to_string();
                launch(&[
                    "--cluster-port",
                    &bus,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "3000",
                ])
            })
            .collect();
        let addresses: Vec<String> = servers
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli (apt package redis-tools)");
        assert!(
            created.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        let cluster = Cluster { servers };
        cluster.wait_until_stable();
        cluster
    }

    fn connect(&self, port: u16) -> Connection {
        let server = self
            .servers
            .iter()
            .find(|s| s.port == port)
            .expect("a node on that port");
        server.connect()
    }

    /// Every node sees the cluster ok with 3 masters and 3 replicas, and
    /// every master has its replica connected, so WAIT and failover work.
    fn wait_until_stable(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = self.servers.iter().all(|s| {
                let mut con = s.connect();
                let info: String = run(&mut con, &["CLUSTER", "INFO"]);
                let replication: String = run(&mut con, &["INFO", "replication"]);
                let nodes: String = run(&mut con, &["CLUSTER", "NODES"]);
                let replicas = nodes.lines().filter(|l| l.contains("slave")).count();
                replicas == 3
                    && !nodes.contains("fail")
                    && info.contains("cluster_state:ok")
                    && info.contains("cluster_known_nodes:6")
                    && (replication.contains("role:slave")
                        && replication.contains("master_link_status:up")
                        || replication.contains("connected_slaves:1"))
            });
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster did not settle");
            sleep(Duration::from_millis(100));
        }
    }

    fn nodes(&self) -> Vec<Node> {
        let mut con = self.servers[0].connect();
        let text: String = run(&mut con, &["CLUSTER", "NODES"]);
        text.lines()
            .map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                let port = fields[1]
                    .split(['@', ':'])
                    .nth(1)
                    .and_then(|p| p.parse().ok())
                    .expect("port");
                Node {
                    id: fields[0].to_string(),
                    port,
                    master: (fields[3] != "-").then(|| fields[3].to_string()),
                }
            })
            .collect()
    }

    fn masters(&self) -> Vec<Node> {
        self.nodes()
            .into_iter()
            .filter(|n| n.master.is_none())
            .collect()
    }

    fn replica_of(&self, master: &Node) -> Node {
        self.nodes()
            .into_iter()
            .find(|n| n.master.as_deref() == Some(master.id.as_str()))
            .expect("a replica")
    }

    fn slot(&self, key: &str) -> i64 {
        run(&mut self.servers[0].connect(), &["CLUSTER", "KEYSLOT", key])
    }

    fn owner(&self, key: &str) -> Node {
        let slot = self.slot(key);
        let mut con = self.servers[0].connect();
        let slots: redis::Value = run(&mut con, &["CLUSTER", "SLOTS"]);
        let redis::Value::Array(ranges) = slots else {
            panic!("CLUSTER SLOTS: {slots:?}")
        };
        for range in ranges {
            let redis::Value::Array(parts) = range else {
                continue;
            };
            let (redis::Value::Int(low), redis::Value::Int(high), redis::Value::Array(master)) =
                (&parts[0], &parts[1], &parts[2])
            else {
                continue;
            };
            if (*low..=*high).contains(&slot) {
                let redis::Value::Int(port) = master[1] else {
                    panic!("port")
                };
                return self
                    .masters()
                    .into_iter()
                    .find(|m| i64::from(m.port) == port)
                    .expect("owner");
            }
        }
        panic!("no owner for slot {slot}");
    }

    fn client(&self) -> redis::cluster::ClusterConnection {
        let urls: Vec<String> = self.servers.iter().map(|s| s.url()).collect();
        ClusterClient::new(urls)
            .expect("cluster client")
            .get_connection()
            .expect("cluster connection")
    }
}

/// The penalty every blocked key in these tests carries.
const BLOCK: &str = "3600000";

/// Blocks `key` (one allowed CHECK, then a denied one with BLOCK); returns
/// when the block ends.
fn block_a_key(con: &mut impl redis::ConnectionLike, key: &str) -> i64 {
    for _ in 0..2 {
        run::<Vec<i64>>(con, &["RATELIMIT.CHECK", key, "60000", "1", "BLOCK", BLOCK]);
    }
    run(con, &["PEXPIRETIME", key])
}

/// `key` on `con`'s node holds the digest `before` (its block's end
/// included), expires about `ends`, and is still blocked, denying what its
/// limits alone would allow.
fn assert_still_blocked(con: &mut Connection, key: &str, before: &str, ends: i64, what: &str) {
    assert_eq!(
        digest(con, key),
        before,
        "{what}: {key} moved byte for byte"
    );
    // The block's end is in the value (the digest); the key's expiry
    // travels as a relative TTL with MIGRATE, so it may move by a few ms.
    let ends_now: i64 = run(con, &["PEXPIRETIME", key]);
    assert!(
        (ends_now - ends).abs() < 1_000,
        "{what}: the key expires with its block: {ends_now} {ends}"
    );
    let reply: Vec<i64> = run(con, &["RATELIMIT.PEEK", key, "10", "100"]);
    assert_eq!(reply[..2], [0, 0], "{what}: {key} still blocked: {reply:?}");
}

/// Charges a token bucket (its own type); returns its DUMP payload and
/// expiry.
fn charge_a_bucket(con: &mut impl redis::ConnectionLike, key: &str) -> (Vec<u8>, i64) {
    run::<Vec<i64>>(
        con,
        &["RATELIMIT.GCRA", key, "15", "30", "60", "TOKENS", "3"],
    );
    (run(con, &["DUMP", key]), run(con, &["PEXPIRETIME", key]))
}

/// `key` on `con`'s node holds the bucket `before` byte for byte, and
/// expires when it did (up to the ms a relative TTL loses on the way).
fn assert_bucket_moved(con: &mut Connection, key: &str, before: &(Vec<u8>, i64), what: &str) {
    let dump: Vec<u8> = run(con, &["DUMP", key]);
    assert_eq!(
        dump, before.0,
        "{what}: the bucket {key} moved byte for byte"
    );
    let expires: i64 = run(con, &["PEXPIRETIME", key]);
    assert!(
        (expires - before.1).abs() < 1_000,
        "{what}: {expires} {}",
        before.1
    );
}

/// A key per master, so tests touch all three.
fn key_on_each_master(cluster: &Cluster, prefix: &str) -> Vec<(String, Node)> {
    let mut found: HashMap<u16, (String, Node)> = HashMap::new();
    for i in 0.. {
        let key = format!("{prefix}:{i}");
        let owner = cluster.owner(&key);
        found.entry(owner.port).or_insert((key, owner));
        if found.len() == 3 {
            break;
        }
    }
    found.into_values().collect()
}

#[test]
fn the_cluster_keeps_every_promise() {
    let cluster = Cluster::start();
    routing_and_hash_tags(&cluster);
    exact_per_key_under_concurrency(&cluster);
    resharding_moves_a_live_log(&cluster);
    replicas_answer_peek_like_their_master(&cluster);
    node_clients_reach_the_owner_in_one_trip(&cluster);
    atomic_slot_migration_moves_a_live_log(&cluster);
    several_keys_in_one_slot(&cluster, &Backend::Module.prepare(&cluster.servers[0]), "m");
    charges_route_and_replicate(&cluster);
    failover_continues_the_same_logs(&cluster);
}

/// One MCHECK over a user, an IP and a tenant that share a hash tag, on
/// their master: a denial by one key charges no key, the replica holds
/// every key's value as the master does, and keys of different slots get
/// CROSSSLOT. `caller` is the module or a form of the twin.
fn several_keys_in_one_slot(cluster: &Cluster, caller: &Caller, tag: &str) {
    let name = caller.backend.name();
    let keys = [
        format!("{{{tag}:t7}}:user:42"),
        format!("{{{tag}:t7}}:ip:10.0.0.1"),
        format!("{{{tag}:t7}}:all"),
    ];
    let mut words = vec!["RATELIMIT.MCHECK", "3"];
    words.extend(keys.iter().map(String::as_str));
    // 2 a minute per user, 3 per IP, 100 for the tenant.
    words.extend(["1", "60000", "2", "1", "60000", "3", "1", "60000", "100"]);
    let owner = cluster.owner(&keys[0]);
    let mut con = cluster.connect(owner.port);
    for _ in 0..2 {
        let (allowed, ..): (i64, i64, i64, i64, Vec<i64>) = caller.run(&mut con, &words);
        assert_eq!(allowed, 1, "{name}: under every limit");
    }
    let others = |con: &mut Connection| [digest(con, &keys[1]), digest(con, &keys[2])];
    let before = others(&mut con);
    let (allowed, remaining, retry, _, denied): (i64, i64, i64, i64, Vec<i64>) =
        caller.run(&mut con, &words);
    assert_eq!(
        (allowed, remaining, denied),
        (0, 0, vec![1]),
        "{name}: the user's third call is denied by the user alone"
    );
    assert!(retry > 0, "{name}: a denial says how long to wait");
    assert_eq!(
        others(&mut con),
        before,
        "{name}: the IP and tenant were not charged"
    );
    let mut replica = cluster.connect(cluster.replica_of(&owner).port);
    wait_for_replica(&mut con, &mut replica);
    for key in &keys {
        assert_eq!(
            digest(&mut replica, key),
            digest(&mut con, key),
            "{name}: {key} on the replica"
        );
    }
    let (a, b) = (format!("{{{tag}:a}}:x"), format!("{{{tag}:b}}:x"));
    assert_ne!(cluster.slot(&a), cluster.slot(&b));
    let refused = caller.error(
        &mut con,
        &[
            "RATELIMIT.MCHECK",
            "2",
            &a,
            &b,
            "1",
            "60000",
            "5",
            "1",
            "60000",
            "5",
        ],
    );
    assert!(refused.starts_with("CROSSSLOT"), "{name}: {refused}");
}

/// CHARGE from a cluster client reaches each key's master; MCHARGE over
/// keys of one slot charges them all on their master, whose replica then
/// holds the same values; keys of different slots get CROSSSLOT.
fn charges_route_and_replicate(cluster: &Cluster) {
    let mut client = cluster.client();
    for i in 0..100 {
        let key = format!("settle:{i}");
        let reply: Vec<i64> = redis::cmd("RATELIMIT.CHARGE")
            .arg(&key)
            .arg(WINDOW)
            .arg(5)
            .arg("COST")
            .arg(7)
            .query(&mut client)
            .expect("CHARGE through the cluster client");
        assert_eq!(reply[..2], [2, 0], "{key}: over by 2");
        assert_eq!(peek(&mut client, &key, WINDOW, 10)[..2], [1, 3], "{key}");
    }
    let keys = ["{c:t7}:user:42", "{c:t7}:ip:10.0.0.1", "{c:t7}:all"];
    let mut words = vec!["RATELIMIT.MCHARGE", "3"];
    words.extend(keys);
    words.extend(["1", "60000", "2", "1", "60000", "3", "1", "60000", "100"]);
    words.extend(["COST", "3"]);
    let owner = cluster.owner(keys[0]);
    let mut con = cluster.connect(owner.port);
    let (over, remaining, _, _, named): (i64, i64, i64, i64, Vec<i64>) = run(&mut con, &words);
    assert_eq!((over, remaining, named), (1, 0, vec![1]));
    let mut replica = cluster.connect(cluster.replica_of(&owner).port);
    wait_for_replica(&mut con, &mut replica);
    for key in keys {
        assert_eq!(
            digest(&mut replica, key),
            digest(&mut con, key),
            "{key} on the replica"
        );
    }
    let (a, b) = ("{c:a}:x", "{c:b}:x");
    assert_ne!(cluster.slot(a), cluster.slot(b));
    let refused = harness::error(
        &mut con,
        &[
            "RATELIMIT.MCHARGE",
            "2",
            a,
            b,
            "1",
            "60000",
            "5",
            "1",
            "60000",
            "5",
        ],
    );
    assert!(refused.starts_with("CROSSSLOT"), "{refused}");
}

/// The master that serves `key` (the others answer MOVED).
fn owner_of(cluster: &Cluster, key: &str) -> Node {
    cluster
        .nodes()
        .into_iter()
        .filter(|node| node.master.is_none())
        .find(|node| {
            redis::cmd("RATELIMIT.PEEK")
                .arg(key)
                .arg(WINDOW)
                .arg(10)
                .query::<Vec<i64>>(&mut cluster.connect(node.port))
                .is_ok()
        })
        .expect("a master serves the key")
}

/// Moves `slot` from `from` to `to` by atomic slot migration, Valkey 9's
/// (`CLUSTER MIGRATESLOTS` on the source) or Redis 8.4's (`CLUSTER
/// MIGRATION IMPORT` on the destination), and waits until `to` serves it;
/// false if this server has neither.
fn migrate_slot(cluster: &Cluster, slot: i64, from: &Node, to: &Node, key: &str) -> bool {
    let slot = slot.to_string();
    let valkey: redis::RedisResult<redis::Value> = redis::cmd("CLUSTER")
        .arg(&["MIGRATESLOTS", "SLOTSRANGE", &slot, &slot, "NODE", &to.id][..])
        .query(&mut cluster.connect(from.port));
    let started = valkey.or_else(|e| {
        assert!(unknown(&e), "MIGRATESLOTS refused: {e}");
        redis::cmd("CLUSTER")
            .arg(&["MIGRATION", "IMPORT", &slot, &slot][..])
            .query::<redis::Value>(&mut cluster.connect(to.port))
    });
    if let Err(e) = &started {
        assert!(unknown(e), "MIGRATION IMPORT refused: {e}");
        return false;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while owner_of(cluster, key).id != to.id {
        assert!(Instant::now() < deadline, "slot {slot} did not move");
        sleep(Duration::from_millis(20));
    }
    true
}

fn unknown(error: &redis::RedisError) -> bool {
    error
        .to_string()
        .to_lowercase()
        .contains("unknown subcommand")
}

/// Atomic slot migration (Valkey 9, Redis 8.4+), with the module loaded:
/// a live log moves with an equal digest and answers the same; moved back
/// while clients keep calling CHECK, no admission is lost or doubled.
fn atomic_slot_migration_moves_a_live_log(cluster: &Cluster) {
    let key = "{asm}:limiter";
    let mut client = cluster.client();
    for _ in 0..3 {
        assert_eq!(check(&mut client, key, WINDOW, 10)[0], 1);
    }
    let blocked = "{asm}:login";
    let ends = block_a_key(&mut client, blocked);
    let bucket = "{asm}:bucket";
    let charged = charge_a_bucket(&mut client, bucket);
    let slot: i64 = run(
        &mut cluster.connect(owner_of(cluster, key).port),
        &["CLUSTER", "KEYSLOT", key],
    );
    let source = owner_of(cluster, key);
    let target = cluster
        .nodes()
        .into_iter()
        .find(|node| node.master.is_none() && node.id != source.id)
        .expect("another master");
    let before = digest(&mut cluster.connect(source.port), key);
    let peek_before = peek(&mut cluster.connect(source.port), key, WINDOW, 10);
    let blocked_digest = digest(&mut cluster.connect(source.port), blocked);
    if !migrate_slot(cluster, slot, &source, &target, key) {
        eprintln!("skipped: this server has no atomic slot migration");
        return;
    }
    let mut on_target = cluster.connect(target.port);
    assert_eq!(
        digest(&mut on_target, key),
        before,
        "the log moved byte for byte"
    );
    assert_eq!(peek(&mut on_target, key, WINDOW, 10)[..3], peek_before[..3]);
    assert_still_blocked(
        &mut on_target,
        blocked,
        &blocked_digest,
        ends,
        "atomic slot migration",
    );
    assert_bucket_moved(&mut on_target, bucket, &charged, "atomic slot migration");
    // Back to the source while two clients keep calling CHECK under a
    // limit they cannot reach (the cluster client follows MOVED and ASK):
    // every call they saw allowed must be recorded exactly once.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let stop = Arc::clone(&stop);
            let mut client = cluster.client();
            std::thread::spawn(move || {
                let mut allowed = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let reply: redis::RedisResult<Vec<i64>> = redis::cmd("RATELIMIT.CHECK")
                        .arg(key)
                        .arg(WINDOW)
                        .arg(RUNNING_MAX)
                        .query(&mut client);
                    allowed += reply.map_or(0, |r| r[0]);
                    sleep(Duration::from_millis(1));
                }
                allowed
            })
        })
        .collect();
    sleep(Duration::from_millis(50));
    assert!(migrate_slot(cluster, slot, &target, &source, key));
    sleep(Duration::from_millis(50));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let during: i64 = callers.into_iter().map(|c| c.join().expect("caller")).sum();
    let after = peek(&mut cluster.connect(source.port), key, WINDOW, RUNNING_MAX);
    assert_eq!(
        after[1],
        RUNNING_MAX as i64 - 3 - during,
        "{during} admitted around the move"
    );
    eprintln!("atomic slot migration: a live log moved and back, {during} CHECKs admitted around the second move, each recorded once");
}

/// A limit the callers around a migration never reach.
const RUNNING_MAX: u64 = 1_000_000;

/// MOVED replies the masters have sent so far.
fn moved_so_far(cluster: &Cluster) -> u64 {
    cluster
        .nodes()
        .iter()
        .filter(|node| node.master.is_none())
        .map(|node| {
            let stats: String = run(&mut cluster.connect(node.port), &["INFO", "errorstats"]);
            stats
                .lines()
                .find_map(|line| line.strip_prefix("errorstat_MOVED:count="))
                .and_then(|count| count.trim().parse().ok())
                .unwrap_or(0)
        })
        .sum()
}

/// README.md's cluster snippets for ioredis and node-redis (in
/// examples/node/cluster.mjs): 400 CHECKs on 100 keys each, exact per key,
/// and not one MOVED, where ioredis's plain `call` is redirected.
fn node_clients_reach_the_owner_in_one_trip(cluster: &Cluster) {
    let seed = cluster
        .nodes()
        .iter()
        .find(|node| node.master.is_none())
        .map(|node| node.port.to_string())
        .expect("a master");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/node/cluster.mjs");
    for client in ["ioredis-plain", "ioredis", "node-redis"] {
        let before = moved_so_far(cluster);
        let output = Command::new("node")
            .args([script, &seed, client])
            .output()
            .expect("node (make test installs the examples' packages)");
        assert!(
            output.status.success(),
            "{client}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let moved = moved_so_far(cluster) - before;
        eprintln!("{client}: {moved} MOVED in 400 CHECKs");
        if client == "ioredis-plain" {
            assert!(moved > 100, "plain ioredis: {moved} MOVED");
        } else {
            assert_eq!(moved, 0, "{client} was redirected");
        }
    }
}

fn routing_and_hash_tags(cluster: &Cluster) {
    let mut con = cluster.client();
    for i in 0..1000 {
        let key = format!("route:{i}");
        assert_eq!(check(&mut con, &key, WINDOW, 5)[..2], [1, 4], "{key}");
        assert_eq!(peek(&mut con, &key, WINDOW, 5)[..2], [1, 4], "{key}");
        if i % 10 == 0 {
            let refunded: i64 = redis::cmd("RATELIMIT.UNDO")
                .arg(&key)
                .query(&mut con)
                .expect("UNDO");
            assert_eq!(refunded, 1);
        }
    }
    let mut total = 0;
    for master in cluster.masters() {
        let keys: i64 = run(&mut cluster.connect(master.port), &["DBSIZE"]);
        assert!(keys > 200, "master {} holds only {keys} keys", master.port);
        total += keys;
    }
    assert_eq!(total, 900, "refunded-to-empty keys are deleted");

    assert_eq!(
        cluster.slot("{user:42}:api"),
        cluster.slot("{user:42}:login")
    );
    check(&mut con, "{user:42}:api", WINDOW, 5);
    check(&mut con, "{user:42}:login", WINDOW, 5);
    let owner = cluster.owner("{user:42}:api");
    let mut direct = cluster.connect(owner.port);
    let both: i64 = run(&mut direct, &["EXISTS", "{user:42}:api", "{user:42}:login"]);
    assert_eq!(both, 2, "hash-tagged keys live together");

    let elsewhere = cluster
        .masters()
        .into_iter()
        .find(|m| m.port != owner.port)
        .expect("another master");
    let moved = harness::error(
        &mut cluster.connect(elsewhere.port),
        &["RATELIMIT.CHECK", "{user:42}:api", "600000", "5"],
    );
    assert!(moved.starts_with("MOVED"), "{moved}");
}

fn exact_per_key_under_concurrency(cluster: &Cluster) {
    let keys = key_on_each_master(cluster, "exact");
    let urls: Arc<Vec<String>> = Arc::new(cluster.servers.iter().map(|s| s.url()).collect());
    let workers: Vec<_> = (0..9)
        .map(|t| {
            let key = keys[t % 3].0.clone();
            let urls = Arc::clone(&urls);
            std::thread::spawn(move || {
                let mut con = ClusterClient::new(urls.to_vec())
                    .and_then(|c| c.get_connection())
                    .expect("cluster connection");
                let admitted = (0..40)
                    .filter(|_| check(&mut con, &key, WINDOW, 50)[0] == 1)
                    .count();
                (key, admitted)
            })
        })
        .collect();
    let mut per_key: HashMap<String, usize> = HashMap::new();
    for worker in workers {
        let (key, admitted) = worker.join().expect("client");
        *per_key.entry(key).or_default() += admitted;
    }
    assert_eq!(per_key.len(), 3);
    for (key, admitted) in per_key {
        assert_eq!(admitted, 50, "{key}: 120 calls, max 50");
    }
}

fn resharding_moves_a_live_log(cluster: &Cluster) {
    let mut con = cluster.client();
    let key = "reshard:live";
    for _ in 0..7 {
        check(&mut con, key, WINDOW, 10);
    }
    let blocked = "{reshard:live}:login";
    let ends = block_a_key(&mut con, blocked);
    let bucket = "{reshard:live}:bucket";
    let charged = charge_a_bucket(&mut con, bucket);
    let from = cluster.owner(key);
    let to = cluster
        .masters()
        .into_iter()
        .find(|m| m.port != from.port)
        .expect("another master");
    let slot = cluster.slot(key).to_string();
    let before_digest = digest(&mut cluster.connect(from.port), key);
    let before = peek(&mut cluster.connect(from.port), key, WINDOW, 10);
    let blocked_digest = digest(&mut cluster.connect(from.port), blocked);

    let (mut source, mut target) = (cluster.connect(from.port), cluster.connect(to.port));
    run::<()>(
        &mut target,
        &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from.id],
    );
    run::<()>(
        &mut source,
        &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to.id],
    );
    let keys: Vec<String> = run(&mut source, &["CLUSTER", "GETKEYSINSLOT", &slot, "100"]);
    assert!([key, blocked, bucket]
        .iter()
        .all(|k| keys.contains(&k.to_string())));
    let mut migrate = redis::cmd("MIGRATE");
    migrate
        .arg("127.0.0.1")
        .arg(to.port)
        .arg("")
        .arg(0)
        .arg(5000)
        .arg("KEYS")
        .arg(&keys);
    migrate.query::<()>(&mut source).expect("MIGRATE");
    for master in cluster.masters() {
        run::<()>(
            &mut cluster.connect(master.port),
            &["CLUSTER", "SETSLOT", &slot, "NODE", &to.id],
        );
    }

    let mut target = cluster.connect(to.port);
    assert_eq!(
        digest(&mut target, key),
        before_digest,
        "the log moved byte for byte"
    );
    assert_still_blocked(&mut target, blocked, &blocked_digest, ends, "MIGRATE");
    assert_bucket_moved(&mut target, bucket, &charged, "MIGRATE");
    let after = peek(&mut target, key, WINDOW, 10);
    assert_eq!(after[..2], before[..2], "allowed, remaining");
    assert!(
        after[3] <= before[3] && after[3] > 0,
        "reset_after {after:?} {before:?}"
    );
    let mut con = cluster.client();
    assert_eq!(
        check(&mut con, key, WINDOW, 10)[..2],
        [1, 2],
        "limiting continues on the new owner"
    );
}

fn replicas_answer_peek_like_their_master(cluster: &Cluster) {
    let mut con = cluster.client();
    for (key, master) in key_on_each_master(cluster, "read") {
        for _ in 0..3 {
            check(&mut con, &key, WINDOW, 10);
        }
        let mut on_master = cluster.connect(master.port);
        let mut on_replica = cluster.connect(cluster.replica_of(&master).port);
        wait_for_replica(&mut on_master, &mut on_replica);
        run::<()>(&mut on_replica, &["READONLY"]);
        let (m, r) = (
            peek(&mut on_master, &key, WINDOW, 10),
            peek(&mut on_replica, &key, WINDOW, 10),
        );
        assert_eq!(m[..3], r[..3], "{key}");
        assert_eq!(r[..2], [1, 7]);
    }
}

fn failover_continues_the_same_logs(cluster: &Cluster) {
    let mut con = cluster.client();
    let key = "failover:live";
    for i in 0..6 {
        check(&mut con, key, WINDOW, 10);
        if i == 3 {
            let _: i64 = redis::cmd("RATELIMIT.UNDO")
                .arg(key)
                .query(&mut con)
                .expect("UNDO");
        }
    }
    let blocked = "{failover:live}:login";
    let ends = block_a_key(&mut con, blocked);
    let master = cluster.owner(key);
    let mut old = cluster.connect(master.port);
    let replica = cluster.replica_of(&master);
    let mut promoted = cluster.connect(replica.port);
    wait_for_replica(&mut old, &mut promoted);
    let before_digest = digest(&mut old, key);
    let blocked_digest = digest(&mut old, blocked);
    let before = peek(&mut old, key, WINDOW, 10);
    run::<()>(&mut promoted, &["CLUSTER", "FAILOVER"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let role: redis::Value = run(&mut promoted, &["ROLE"]);
        if matches!(&role, redis::Value::Array(parts) if parts.first() == Some(&redis::Value::BulkString(b"master".to_vec())))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replica was not promoted: {role:?}"
        );
        sleep(Duration::from_millis(100));
    }
    assert_eq!(
        digest(&mut promoted, key),
        before_digest,
        "nothing reset or double-counted"
    );
    assert_still_blocked(&mut promoted, blocked, &blocked_digest, ends, "failover");
    let after = peek(&mut promoted, key, WINDOW, 10);
    assert_eq!(after[..2], before[..2]);
    assert_eq!(after[..2], [1, 5]);
    cluster.wait_until_stable();
    let mut con = cluster.client();
    assert_eq!(
        check(&mut con, key, WINDOW, 10)[..2],
        [1, 4],
        "the promoted master limits on"
    );
}

/// The script twin on a cluster without the module: loaded on every
/// master (replicas get it by replication), one key per call, so each
/// call goes to the key's owner like the module's, in both forms; exact
/// per key under concurrent clients; replicas hold the same bytes and
/// answer PEEK.
#[test]
fn the_twin_runs_on_the_cluster_like_the_module() {
    let cluster = Cluster::start_without_module();
    let masters = cluster.masters();
    let function = Backend::Function.prepare(&cluster.servers[0]);
    let script = Backend::Script.prepare(&cluster.servers[0]);
    // Functions replicate; the script cache is each node's own.
    for master in &masters {
        function.load_library(&mut cluster.connect(master.port));
    }
    for server in &cluster.servers {
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(harness::twin_script())
            .query(&mut server.connect())
            .expect("SCRIPT LOAD");
        assert!(!sha.is_empty());
    }
    for (twin, prefix) in [(&function, "fcall"), (&script, "evalsha")] {
        for (key, owner) in key_on_each_master(&cluster, &format!("twin:{prefix}")) {
            let key = key.as_str();
            let mut client = cluster.client();
            let replies: Vec<Vec<i64>> = (0..8)
                .map(|_| twin.check(&mut client, key, WINDOW, 5))
                .collect();
            let allowed: i64 = replies.iter().map(|r| r[0]).sum();
            assert_eq!(allowed, 5, "{}: {key}: {replies:?}", twin.backend.name());
            let mut on_owner = cluster.connect(owner.port);
            let bytes: Vec<u8> = run(&mut on_owner, &["GET", key]);
            assert!(
                bytes.starts_with(b"rl\x04"),
                "the twin's value on its owner"
            );
            let other = masters
                .iter()
                .find(|m| m.id != owner.id)
                .expect("another master");
            let moved = twin.error(
                &mut cluster.connect(other.port),
                &["RATELIMIT.CHECK", key, "600000", "5"],
            );
            assert!(moved.starts_with("MOVED"), "{moved}");
            let replica = cluster.replica_of(&owner);
            let mut on_replica = cluster.connect(replica.port);
            wait_for_replica(&mut on_owner, &mut on_replica);
            run::<()>(&mut on_replica, &["READONLY"]);
            let replicated: Vec<u8> = run(&mut on_replica, &["GET", key]);
            assert_eq!(replicated, bytes);
            let peek: Vec<i64> = twin.run(&mut on_replica, &["RATELIMIT.PEEK", key, "600000", "5"]);
            assert_eq!(peek[..2], [0, 0], "the replica answers PEEK");
        }
    }
    // Concurrent clients on one key through the cluster client.
    let key = "twin:concurrent";
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let mut client = cluster.client();
            let twin = function.clone();
            std::thread::spawn(move || {
                (0..50)
                    .map(|_| twin.check(&mut client, key, WINDOW, 60)[0])
                    .sum::<i64>()
            })
        })
        .collect();
    let allowed: i64 = callers.into_iter().map(|c| c.join().expect("caller")).sum();
    assert_eq!(allowed, 60, "exactly max admitted out of 200");
    several_keys_in_one_slot(&cluster, &function, "f");
    several_keys_in_one_slot(&cluster, &script, "s");
}
