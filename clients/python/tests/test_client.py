"""The sync and asyncio clients on a server with the module and on one
without (the twin), in RESP2 and RESP3."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
import redis
import redis.asyncio as aioredis
from servers import Server

from redis_exact_ratelimit import AsyncRateLimiter, Decision, Limit, RateLimiter, RateLimitReplyError
from redis_exact_ratelimit._transport import server_text

EXPECTED_BACKEND = {True: "module", False: "twin"}


@pytest.mark.parametrize("protocol", [2, 3])
def test_check_peek_undo(server: Server, key: str, protocol: int) -> None:
    limiter = RateLimiter(server.client(protocol=protocol))
    answers = [limiter.check(key, Limit.per_minute(3)) for _ in range(5)]
    assert [a.allowed for a in answers] == [True, True, True, False, False]
    assert [a.remaining for a in answers] == [2, 1, 0, 0, 0]
    assert answers[0].retry_after_ms == 0 and 59_000 < answers[3].retry_after_ms <= 60_000
    assert all(a.source == "redis" for a in answers)
    assert limiter.backend == EXPECTED_BACKEND[server.module]
    peek = limiter.peek(key, Limit.per_minute(3))
    assert (peek.allowed, peek.remaining) == (False, 0)
    assert limiter.undo(key, 2) == 2
    assert limiter.peek(key, Limit.per_minute(3)).remaining == 2


@pytest.mark.parametrize("protocol", [2, 3])
def test_clients_that_decode_responses(server: Server, key: str, protocol: int) -> None:
    limiter = RateLimiter(server.client(protocol=protocol, decode_responses=True))
    answers = [limiter.check(key, Limit.per_minute(2)) for _ in range(3)]
    assert [(a.allowed, a.remaining) for a in answers] == [(True, 1), (True, 0), (False, 0)]
    assert limiter.undo(key) == 1


def test_several_limits_cost_and_precision(server: Server, key: str) -> None:
    limiter = RateLimiter(server.client())
    limits = [Limit(1000, 10), Limit(3_600_000, 12)]
    assert limiter.check(key, limits, cost=6, precision=100).remaining == 4
    denied = limiter.check(key, limits, cost=5)
    assert not denied.allowed and 0 < denied.retry_after_ms <= 1000
    assert limiter.check(key, limits, cost=4).remaining == 0
    assert limiter.undo(key, 3) == 3


def test_backend_is_learned_and_logged_once(server: Server, key: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="redis_exact_ratelimit")
    limiter = RateLimiter(server.client())
    for _ in range(5):
        limiter.check(key, Limit.per_minute(100))
    backend = EXPECTED_BACKEND[server.module]
    said = [r for r in caplog.records if "RATELIMIT module" in r.getMessage()]
    assert len(said) == 1 and str(server.port) in said[0].getMessage()
    assert (said[0].levelname == "WARNING") == (backend == "twin")
    assert dict(limiter.backends) == {f"127.0.0.1:{server.port}": backend}


def test_twin_survives_script_flush(twin_server: Server, key: str) -> None:
    limiter = RateLimiter(twin_server.client())
    assert limiter.check(key, Limit.per_minute(2)).allowed
    twin_server.client().script_flush()
    # EVALSHA answers NOSCRIPT; the limiter sends EVAL, which caches it again.
    assert limiter.check(key, Limit.per_minute(2)).remaining == 0
    assert twin_server.client().script_exists(limiter.script.sha1) == [True]


def test_a_key_of_another_type_is_raised(server: Server, key: str) -> None:
    server.client().rpush(key, "x")
    limiter = RateLimiter(server.client())
    with pytest.raises(RateLimitReplyError, match="WRONGTYPE"):
        limiter.check(key, Limit.per_minute(2))
    # The call's own error is no outage: Redis is still asked next time.
    assert limiter.policy.skip(f"127.0.0.1:{server.port}") is None


def test_prefix(server: Server, key: str) -> None:
    limiter = RateLimiter(server.client(), prefix="rl:")
    limiter.check(key, Limit.per_minute(2))
    assert server.client().exists(f"rl:{key}") == 1


@pytest.mark.parametrize("protocol", [2, 3])
def test_asyncio_client(server: Server, key: str, protocol: int) -> None:
    async def run() -> None:
        client = aioredis.Redis(host="127.0.0.1", port=server.port, protocol=protocol)
        limiter = AsyncRateLimiter(client)
        answers = await asyncio.gather(*(limiter.check(key, Limit.per_minute(7)) for _ in range(20)))
        assert sum(a.allowed for a in answers) == 7
        assert sorted(a.remaining for a in answers if a.allowed) == list(range(7))
        assert limiter.backend == EXPECTED_BACKEND[server.module]
        assert (await limiter.peek(key, Limit.per_minute(7))).remaining == 0
        assert await limiter.undo(key, 7) == 7
        assert (await limiter.check(key, Limit.per_minute(7), cost=7)).allowed
        await client.aclose()

    asyncio.run(run())


def test_the_two_backends_refuse_each_others_keys(module_server: Server, key: str) -> None:
    """Documented: a key written by the twin is another type for the module."""
    twin = RateLimiter(module_server.client())
    twin.policy.learned(f"127.0.0.1:{module_server.port}", "twin")
    twin.check(key, Limit.per_minute(2))
    with pytest.raises(RateLimitReplyError, match="WRONGTYPE"):
        RateLimiter(module_server.client()).check(key, Limit.per_minute(2))


@pytest.mark.parametrize("protocol", [2, 3])
def test_noperm_takes_the_failure_policy_and_is_never_taken_for_a_missing_module(protocol: int, key: str) -> None:
    """Only "unknown command" means no module: an ACL refusal of RATELIMIT.*
    is an outage for this user (the policy answers, logged once), and never
    switches the server to the twin."""
    server = Server(module=True)
    try:
        server.client().acl_setuser("default", enabled=True, nopass=True, commands=["-ratelimit.peek"])
        sync = RateLimiter(server.client(protocol=protocol), fail_open=True, retry_after_failure=0)
        refused = sync.peek(key, Limit.per_minute(2))
        assert refused.source == "fail_open" and "no permissions" in str(refused.error)
        assert sync.check(key, Limit.per_minute(2)).source == "redis"
        assert sync.backend == "module"

        async def run() -> None:
            client = aioredis.Redis(host="127.0.0.1", port=server.port, protocol=protocol)
            limiter = AsyncRateLimiter(client, fail_open=True, retry_after_failure=0)
            assert (await limiter.peek(key, Limit.per_minute(2))).source == "fail_open"
            assert (await limiter.check(key, Limit.per_minute(2))).source == "redis"
            assert limiter.backend == "module"
            await client.aclose()

        asyncio.run(run())
    finally:
        server.remove()


@pytest.mark.parametrize("mode", ["sync", "asyncio"])
def test_a_user_without_time_takes_the_policy_with_one_line(
    twin_server: Server, key: str, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    """The twin reads the server's clock: a user without TIME gets the
    failure policy and one log line with the server's refusal (the twin's
    own NOPERM naming TIME and the ACL fix, once twin/ratelimit.lua gives
    it; the server's ACL error until then), never an error per request."""
    user = f"notime-{uuid.uuid4().hex[:8]}"
    with twin_server.client() as admin:
        admin.execute_command("ACL", "SETUSER", user, "on", ">secret", "~*", "&*", "+@all", "-time")
        admin.script_load(RateLimiter(admin).script.text)
    options = {"host": "127.0.0.1", "port": twin_server.port, "username": user, "password": "secret"}
    with redis.Redis(**options) as probe, pytest.raises(redis.ResponseError) as refused:  # type: ignore[arg-type]
        probe.evalsha(RateLimiter(probe).script.sha1, 1, key, "check", "60000", "5")
    refusal = server_text(refused.value)

    async def run() -> list[Decision]:
        if mode == "sync":
            sync = RateLimiter(redis.Redis(**options), fail_open=True, retry_after_failure=0)  # type: ignore[arg-type]
            return [sync.check(key, Limit.per_minute(5)) for _ in range(3)]
        client = aioredis.Redis(**options)  # type: ignore[arg-type]
        limiter = AsyncRateLimiter(client, fail_open=True, retry_after_failure=0)
        answers = [await limiter.check(key, Limit.per_minute(5)) for _ in range(3)]
        await client.aclose()
        return answers

    assert [a.source for a in asyncio.run(run())] == ["fail_open"] * 3
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "ERROR",
            f"redis-ratelimit: Redis at 127.0.0.1:{twin_server.port} is unavailable ({refusal});"
            " failing open (allowing every request) until it answers",
        )
    ]
    if refusal.startswith("NOPERM"):
        assert "TIME" in refusal and "+time" in refusal
