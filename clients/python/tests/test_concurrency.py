"""Two processes, each with many threads or tasks, on one key: together
they are admitted exactly the limit, on the module and on the twin."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
from servers import Server

WORKER = """
import asyncio, sys
from concurrent.futures import ThreadPoolExecutor
import redis, redis.asyncio as aioredis
from redis_exact_ratelimit import AsyncRateLimiter, Limit, RateLimiter

port, key, calls, mode = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
limit = Limit.per_minute(37)
if mode == "threads":
    limiter = RateLimiter(redis.Redis(port=port, max_connections=16), timeout=5)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: limiter.check(key, limit), range(calls)))
else:
    async def main():
        limiter = AsyncRateLimiter(aioredis.Redis(port=port), timeout=5)
        return await asyncio.gather(*(limiter.check(key, limit) for _ in range(calls)))
    answers = asyncio.run(main())
assert all(a.source == "redis" for a in answers), {a.source for a in answers}
print(sum(a.allowed for a in answers))
"""


@pytest.mark.parametrize("mode", ["threads", "asyncio"])
def test_two_processes_admit_exactly_the_limit(server: Server, mode: str) -> None:
    key = f"concurrent:{uuid.uuid4().hex}"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(server.port), key, "60", mode],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    admitted = []
    for worker in workers:
        out, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0
        admitted.append(int(out))
    assert sum(admitted) == 37, admitted
