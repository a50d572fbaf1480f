//! README.md's redis-rs snippet, run by `make test` (tests/examples.rs):
//!   redis_rs PORT [2|3]   (RESP version; redis-rs speaks 2 by default)

// README:begin
fn limit(con: &mut redis::Connection, user_id: &str) -> redis::RedisResult<(bool, u64)> {
    let (allowed, _remaining, retry_after_ms, _reset_after_ms): (bool, u64, u64, u64) =
        redis::cmd("RATELIMIT.CHECK")
            .arg(format!("api:{user_id}"))
            .arg(60_000)
            .arg(3)
            .query(con)?;
    Ok((allowed, retry_after_ms))
}
// README:end

// README:begin
/// A request passes only if the user, the IP and the tenant all allow it;
/// a denial charges none of them and names the keys that denied.
fn limit_all(
    con: &mut redis::Connection,
    tenant: &str,
    user_id: &str,
    ip: &str,
) -> redis::RedisResult<(bool, u64, Vec<&'static str>)> {
    let keys = [
        format!("{{t:{tenant}}}:user:{user_id}"),
        format!("{{t:{tenant}}}:ip:{ip}"),
        format!("{{t:{tenant}}}:all"),
    ];
    // [allowed, remaining, retry_after_ms, reset_after_ms, [denied positions]]
    let reply: (bool, u64, u64, u64, Vec<usize>) = redis::cmd("RATELIMIT.MCHECK")
        .arg(keys.len())
        .arg(&keys)
        .arg(&[1, 60_000, 2]) // each user: 2 a minute
        .arg(&[1, 60_000, 3]) // each IP: 3 a minute
        .arg(&[1, 60_000, 100]) // the tenant: 100 a minute
        .query(con)?;
    let (allowed, _remaining, retry_after_ms, _reset_after_ms, denied) = reply;
    let names = ["user", "ip", "tenant"];
    let denied = denied
        .iter()
        .filter_map(|i| names.get(i.wrapping_sub(1)).copied())
        .collect();
    Ok((allowed, retry_after_ms, denied))
}
// README:end

fn main() -> redis::RedisResult<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let port = args.first().map_or("6379", String::as_str);
    let protocol = args.get(1).map_or("default", String::as_str);
    let query = match protocol {
        "3" => "?protocol=resp3",
        _ => "",
    };
    let mut con =
        redis::Client::open(format!("redis://127.0.0.1:{port}/{query}"))?.get_connection()?;
    let user = format!("redis-rs-{protocol}-{}", std::process::id());
    let results: Vec<(bool, u64)> = (0..10)
        .map(|_| limit(&mut con, &user))
        .collect::<redis::RedisResult<_>>()?;
    let denied: Vec<u64> = results.iter().filter(|r| !r.0).map(|r| r.1).collect();
    if results.iter().filter(|r| r.0).count() != 3 || denied.len() != 7 || denied.contains(&0) {
        eprintln!(
            "redis-rs RESP{protocol}: expected 3 allowed and 7 denied with a wait, got {results:?}"
        );
        std::process::exit(1);
    }
    println!(
        "redis-rs RESP{protocol}: 3 of 10 allowed; denied ones wait {} ms",
        denied[0]
    );
    all_or_nothing(&mut con, &user)
}

/// As examples/node/ten-calls.mjs's allOrNothing: the user's third call is
/// denied by the user alone and charges no other key.
fn all_or_nothing(con: &mut redis::Connection, tenant: &str) -> redis::RedisResult<()> {
    let seen: Vec<(bool, u64, Vec<&str>)> = ["u1", "u1", "u1", "u2", "u3"]
        .iter()
        .map(|user| limit_all(con, tenant, user, "10.0.0.1"))
        .collect::<redis::RedisResult<_>>()?;
    let outcomes: Vec<String> = seen
        .iter()
        .map(|(allowed, _, by)| match allowed {
            true => "allowed".to_string(),
            false => format!("denied by {}", by.join("+")),
        })
        .collect();
    let expected = [
        "allowed",
        "allowed",
        "denied by user",
        "allowed",
        "denied by ip",
    ];
    if outcomes != expected || seen[2].1 == 0 || seen[4].1 == 0 {
        eprintln!("redis-rs: expected {expected:?}, got {seen:?}");
        std::process::exit(1);
    }
    println!("redis-rs: MCHECK {}", outcomes.join(", "));
    Ok(())
}
