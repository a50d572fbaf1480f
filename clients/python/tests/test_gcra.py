"""The token bucket (RATELIMIT.GCRA) through the package: the sync and
asyncio clients on a server with the module and on one without (the twin,
by EVALSHA), in RESP2 and RESP3; its types against the sliding window's;
an older module; and Redis stopped under each failure policy."""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry
from servers import Server, Stub, resp

from redis_exact_ratelimit import (
    AsyncRateLimiter,
    Fallback,
    GcraDecision,
    GcraLimit,
    Limit,
    RateLimiter,
    RateLimitInputError,
    RateLimitReplyError,
)

EXPECTED_BACKEND = {True: "module", False: "twin"}
# The issue's example: `15 30 60`, 30 a minute in bursts of 16.
PER_MINUTE = GcraLimit(15, 30, 60_000)
WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"


class Elapsed:
    """Milliseconds since the first call: what a wait may have drained."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000) + 1


def assert_the_issues_example(answers: list[GcraDecision], elapsed_ms: int, backend: str) -> None:
    """16 allowed, remaining 15..0, then limited with a retry of 2000 ms
    (less what drained meanwhile: 30 a minute drain a token every 2 s)."""
    assert [a.allowed for a in answers] == [True] * 16 + [False] * 4
    assert [a.remaining for a in answers] == [*range(15, -1, -1), 0, 0, 0, 0]
    assert {a.burst for a in answers} == {16}
    assert all(a.retry_after_ms == 0 for a in answers[:16])
    assert all(2000 - elapsed_ms <= a.retry_after_ms <= 2000 for a in answers[16:]), answers[16:]
    for k, answer in enumerate(answers[:16], start=1):
        assert 2000 * k - elapsed_ms <= answer.reset_after_ms <= 2000 * k
    assert all(32_000 - elapsed_ms <= a.reset_after_ms <= 32_000 for a in answers[16:])
    assert {(a.source, a.backend, a.error) for a in answers} == {("redis", backend, None)}


@pytest.mark.parametrize("protocol", [2, 3])
def test_the_issues_example(server: Server, key: str, protocol: int) -> None:
    limiter = RateLimiter(server.client(protocol=protocol))
    elapsed = Elapsed()
    answers = [limiter.gcra(key, PER_MINUTE) for _ in range(20)]
    assert_the_issues_example(answers, elapsed.ms(), EXPECTED_BACKEND[server.module])
    assert limiter.backend == EXPECTED_BACKEND[server.module]
    # The key expires when its bucket is empty again: 32 s.
    assert 30_000 < server.client().pttl(key) <= 32_000


@pytest.mark.parametrize("protocol", [2, 3])
def test_the_issues_example_asyncio(server: Server, key: str, protocol: int) -> None:
    async def run() -> None:
        client = aioredis.Redis(host="127.0.0.1", port=server.port, protocol=protocol)
        limiter = AsyncRateLimiter(client)
        elapsed = Elapsed()
        answers = [await limiter.gcra(key, PER_MINUTE) for _ in range(20)]
        assert_the_issues_example(answers, elapsed.ms(), EXPECTED_BACKEND[server.module])
        # At once: of 20 more on a fresh key, exactly 16 pass.
        concurrent = await asyncio.gather(*(limiter.gcra(key + ":at-once", PER_MINUTE) for _ in range(20)))
        assert sum(a.allowed for a in concurrent) == 16
        assert sorted(a.remaining for a in concurrent if a.allowed) == list(range(16))
        await client.aclose()

    asyncio.run(run())


@pytest.mark.parametrize("protocol", [2, 3])
def test_zero_tokens_ask_and_charge_nothing(server: Server, key: str, protocol: int) -> None:
    limiter = RateLimiter(server.client(protocol=protocol))
    fresh = limiter.gcra(key, PER_MINUTE, tokens=0)
    assert (fresh.allowed, fresh.burst, fresh.remaining, fresh.retry_after_ms, fresh.reset_after_ms) == (
        True,
        16,
        16,
        0,
        0,
    )
    assert server.client().exists(key) == 0
    assert limiter.gcra(key, PER_MINUTE, tokens=3).remaining == 13
    asked = limiter.gcra(key, PER_MINUTE, 0)
    assert (asked.allowed, asked.remaining) == (True, 13) and 5000 < asked.reset_after_ms <= 6000
    assert limiter.gcra(key, PER_MINUTE, tokens=13).remaining == 0
    # An empty bucket still answers a question of 0 tokens: it fits.
    assert limiter.gcra(key, PER_MINUTE, tokens=0).allowed


@pytest.mark.parametrize("protocol", [2, 3])
def test_more_tokens_than_the_bucket_never_fit(server: Server, key: str, protocol: int) -> None:
    """Not an input error: answered limited with retry -1, nothing stored."""
    limiter = RateLimiter(server.client(protocol=protocol))
    small = GcraLimit(2, 1, 60_000)
    never = limiter.gcra(key, small, tokens=4)
    assert (never.allowed, never.burst, never.remaining, never.retry_after_ms, never.reset_after_ms) == (
        False,
        3,
        3,
        -1,
        0,
    )
    assert server.client().exists(key) == 0
    assert limiter.gcra(key, small, tokens=3).allowed
    assert limiter.gcra(key, small, tokens=4).retry_after_ms == -1
    waiting = limiter.gcra(key, small, tokens=1)
    assert not waiting.allowed and 59_000 < waiting.retry_after_ms <= 60_000


def test_a_changed_limit_decides_under_its_own_parameters(server: Server, key: str) -> None:
    """1 a minute in bursts of 5, used up; a larger burst admits at once;
    a smaller one no longer caps the bucket at full: the six tokens held
    stay (limited until five have drained: 5 minutes); another period
    counts the tokens held; a faster rate drains them at once."""
    limiter = RateLimiter(server.client())
    slow = GcraLimit(4, 1, 60_000)
    assert [limiter.gcra(key, slow).allowed for _ in range(6)] == [True] * 5 + [False]
    wider = limiter.gcra(key, GcraLimit(9, 1, 60_000))
    assert (wider.allowed, wider.burst, wider.remaining) == (True, 10, 4)
    smaller = limiter.gcra(key, GcraLimit(1, 1, 60_000))
    assert (smaller.allowed, smaller.remaining) == (False, 0)
    assert 299_000 < smaller.retry_after_ms <= 300_000 and 359_000 < smaller.reset_after_ms <= 360_000
    # Six tokens held, in units of a 30 s period: 6 of a bucket of 8.
    halved = limiter.gcra(key, GcraLimit(7, 1, 30_000), tokens=0)
    assert (halved.allowed, halved.remaining) == (True, 2) and 179_000 < halved.reset_after_ms <= 180_000
    time.sleep(0.02)
    fast = limiter.gcra(key, GcraLimit(4, 60_000, 60_000))
    assert (fast.allowed, fast.remaining) == (True, 4)


def test_the_two_kinds_of_limit_are_two_types(server: Server, key: str) -> None:
    """A key holds a sliding-window log or a token bucket: each call on
    the other's raises the server's WRONGTYPE, and changes nothing."""
    limiter = RateLimiter(server.client())
    window, bucket = key + ":window", key + ":bucket"
    assert limiter.check(window, Limit.per_minute(5)).allowed
    with pytest.raises(RateLimitReplyError, match="^" + WRONGTYPE):
        limiter.gcra(window, PER_MINUTE)
    assert limiter.gcra(bucket, PER_MINUTE).allowed
    with pytest.raises(RateLimitReplyError, match="^" + WRONGTYPE):
        limiter.check(bucket, Limit.per_minute(5))
    with pytest.raises(RateLimitReplyError, match="^" + WRONGTYPE):
        limiter.undo(bucket)
    assert limiter.peek(window, Limit.per_minute(5)).remaining == 4
    assert limiter.gcra(bucket, PER_MINUTE, tokens=0).remaining == 15
    # A call's own error is no outage.
    assert limiter.policy.skip(f"127.0.0.1:{server.port}") is None


def test_bad_limits_and_tokens_are_refused_before_redis() -> None:
    """Nothing is sent: the limiter's client points at no server."""
    limiter = RateLimiter(redis.Redis(host="127.0.0.1", port=1))
    with pytest.raises(RateLimitInputError, match="tokens must be an integer from 0 to 9000000000000000, got -1"):
        limiter.gcra("k", PER_MINUTE, tokens=-1)
    with pytest.raises(RateLimitInputError, match="limit must be a GcraLimit"):
        limiter.gcra("k", Limit.per_minute(5))  # type: ignore[arg-type]
    with pytest.raises(RateLimitInputError, match="count must be an integer from 1"):
        GcraLimit(1, 0, 1000)


def test_an_older_module_is_told_apart() -> None:
    """A module without RATELIMIT.GCRA (0.3) answers "unknown command" to
    it, and RATELIMIT.PEEK: the call is refused, the server stays on the
    module (the twin's buckets would be another type there)."""

    def older(command: list[str]) -> bytes:
        if command[0] == "RATELIMIT.GCRA":
            return resp("ERR unknown command 'RATELIMIT.GCRA', with args beginning with: 'k' '15' ")
        return resp([1, 5, 0, 0])

    stub = Stub(older)
    try:
        limiter = RateLimiter(redis.Redis(host="127.0.0.1", port=stub.port, protocol=2))
        with pytest.raises(RateLimitReplyError, match="RATELIMIT module is older than this call needs"):
            limiter.gcra("k", PER_MINUTE)
        assert limiter.backend == "module"
        sent = [command for command in stub.received if command[0] != "CLIENT"]
        assert [command[0] for command in sent] == ["RATELIMIT.GCRA", "RATELIMIT.PEEK"]
        assert sent[0][1:] == ["k", "15", "30", "60", "MS"]
    finally:
        stub.close()


# -- Redis stopped: each failure policy ---------------------------------------

POLICIES = ["fallback", "fail_open", "fail_closed"]


def limiter_for(server: Server, policy: str, mode: str) -> RateLimiter | AsyncRateLimiter:
    """A limiter that fails fast, under ``policy``; the fallback holds half
    of every limit."""
    options: dict[str, Any] = {"timeout": 0.2, "retry_after_failure": 30, "fail_open": policy == "fail_open"}
    if policy == "fallback":
        # A clock that stands still: the waits below are exact.
        options["fallback"] = Fallback(share=0.5, clock=lambda: 1_000_000)
    if mode == "sync":
        return RateLimiter(server.client(socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)), **options)
    retry = AsyncRetry(NoBackoff(), 0)
    client = aioredis.Redis(host="127.0.0.1", port=server.port, socket_connect_timeout=0.5, retry=retry)
    return AsyncRateLimiter(client, **options)


async def settled(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


@pytest.mark.parametrize("mode", ["sync", "asyncio"])
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("own_server", ["module", "twin"], indirect=True)
def test_redis_stopped_under_each_policy(own_server: Server, policy: str, mode: str) -> None:
    """A bucket of 4 at 1 a minute: the fallback holds half of it (2), by
    the core's integer rules; failing open allows; failing closed refuses
    with the wait before Redis is tried again."""
    limit = GcraLimit(3, 1, 60_000)

    async def run() -> tuple[list[GcraDecision], GcraDecision]:
        limiter = limiter_for(own_server, policy, mode)
        assert (await settled(limiter.gcra("warm", limit, tokens=0))).source == "redis"
        own_server.stop()
        answers = [await settled(limiter.gcra("k", limit)) for _ in range(3)]
        never = await settled(limiter.gcra("k", limit, tokens=5))
        if policy == "fallback":
            # One keyspace in the fallback too: a sliding window on the bucket.
            with pytest.raises(RateLimitReplyError, match="^" + WRONGTYPE):
                await settled(limiter.check("k", Limit.per_minute(5)))
        if isinstance(limiter, AsyncRateLimiter):
            await limiter.client.aclose()
        return answers, never

    answers, never = asyncio.run(run())
    if policy == "fallback":
        shown = [(a.allowed, a.burst, a.remaining, a.retry_after_ms, a.reset_after_ms) for a in answers]
        assert shown == [(True, 2, 1, 0, 60_000), (True, 2, 0, 0, 120_000), (False, 2, 0, 60_000, 120_000)]
        assert (never.allowed, never.remaining, never.retry_after_ms) == (False, 0, -1)
    elif policy == "fail_open":
        assert [(a.allowed, a.burst, a.remaining) for a in answers] == [(True, 4, 3)] * 3
        assert (never.allowed, never.remaining) == (True, 0)
    else:
        assert [(a.allowed, a.burst, a.remaining) for a in answers] == [(False, 4, 0)] * 3
        assert all(25_000 < a.retry_after_ms <= 30_000 for a in answers)
    assert {(a.source, a.backend) for a in [*answers, never]} == {(policy, None)}
    assert answers[0].error is not None
