"""What the package adds to a raw RATELIMIT.CHECK (and MCHECK), per call,
on one server started here (module and twin), and a 3-key check_all
against three checks: python bench/overhead.py [CALLS]."""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redis
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from servers import Server

from redis_exact_ratelimit import AsyncRateLimiter, Limit, RateLimiter

CALLS = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
LIMIT = Limit(60_000, 10**12)
THREE = {"{t}:user": LIMIT, "{t}:ip": LIMIT, "{t}:all": LIMIT}


def per_call_us(run: Callable[[int], object]) -> float:
    """Median of 3 runs of CALLS calls, in microseconds per call."""
    times = []
    for _ in range(3):
        started = time.perf_counter()
        run(CALLS)
        times.append((time.perf_counter() - started) / CALLS * 1e6)
    return statistics.median(times)


def measure(server: Server) -> dict[str, float]:
    client = redis.Redis(port=server.port)
    rows: dict[str, float] = {}
    if server.module:
        rows["raw execute_command"] = per_call_us(
            lambda n: [client.execute_command("RATELIMIT.CHECK", "raw", 60000, 10**12) for _ in range(n)]
        )
    inline = RateLimiter(client, timeout=None)
    rows["RateLimiter, timeout=None"] = per_call_us(lambda n: [inline.check("k1", LIMIT) for _ in range(n)])
    bounded = RateLimiter(client, timeout=0.25)
    rows["RateLimiter, timeout=0.25 (worker thread)"] = per_call_us(
        lambda n: [bounded.check("k2", LIMIT) for _ in range(n)]
    )

    if server.module:
        raw_three = ["RATELIMIT.MCHECK", 3, "{r}:user", "{r}:ip", "{r}:all", *[1, 60000, 10**12] * 3]
        rows["raw execute_command MCHECK, 3 keys"] = per_call_us(
            lambda n: [client.execute_command(*raw_three) for _ in range(n)]
        )
    rows["RateLimiter.check_all, 3 keys, timeout=0.25"] = per_call_us(
        lambda n: [bounded.check_all(THREE) for _ in range(n)]
    )
    rows["3 x RateLimiter.check, timeout=0.25"] = per_call_us(
        lambda n: [bounded.check(key, LIMIT) for _ in range(n) for key in THREE]
    )

    async def raw_async(n: int) -> None:
        connection = aioredis.Redis(port=server.port)
        for _ in range(n):
            await connection.execute_command("RATELIMIT.CHECK", "raw-async", 60000, 10**12)  # type: ignore[no-untyped-call]

    if server.module:
        rows["raw redis.asyncio execute_command"] = per_call_us(lambda n: asyncio.run(raw_async(n)))

    async def sequential(n: int) -> None:
        limiter = AsyncRateLimiter(aioredis.Redis(port=server.port), timeout=0.25)
        for _ in range(n):
            await limiter.check("k3", LIMIT)

    rows["AsyncRateLimiter, timeout=0.25"] = per_call_us(lambda n: asyncio.run(sequential(n)))
    return rows


def main() -> None:
    for module in (True, False):
        server = Server(module=module)
        try:
            for name, us in measure(server).items():
                print(f"{'module' if module else 'twin':6} | {name:44} | {us:7.1f} µs/call")
        finally:
            server.remove()


if __name__ == "__main__":
    main()
