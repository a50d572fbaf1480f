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
    Ok(())
}
