"""The README's ACL user, applied as written: as that user the package runs
everything (module and twin, one key and several, a lockout's reset, a
token bucket, sync and asyncio), and the user cannot replace or flush what runs."""

from __future__ import annotations

import asyncio
import re

import pytest
import redis
import redis.asyncio as aioredis
from conftest import EXAMPLES
from servers import Server

from redis_exact_ratelimit import AsyncRateLimiter, GcraLimit, Limit, Limits, RateLimiter

README = (EXAMPLES.parent / "README.md").read_text()
RULES = re.findall(r"^ACL SETUSER (app .*)$", README, re.M)


def needs_module_names(server: Server) -> bool:
    """Redis 7.0 gives module commands no ACL category."""
    with server.client() as admin:
        info = admin.info("server")
    return server.module and "valkey_version" not in info and str(info["redis_version"]).startswith("7.0.")


def as_the_readme_user(server: Server) -> dict[str, object]:
    assert len(RULES) == 2
    with server.client() as admin:
        for rule in RULES[: 2 if needs_module_names(server) else 1]:
            admin.execute_command("ACL", "SETUSER", *rule.split())
    return {"host": "127.0.0.1", "port": server.port, "username": "app", "password": "secret"}


def test_the_readme_user_runs_everything(server: Server) -> None:
    options = as_the_readme_user(server)
    limiter = RateLimiter(redis.Redis(**options), prefix="rl:")  # type: ignore[arg-type]
    keyed: dict[str, Limits] = {"{acl}:user": Limit.per_minute(2), "{acl}:ip": Limit.per_minute(5)}
    assert [limiter.check("{acl}:user", Limit.per_minute(1), block_ms=60_000).allowed for _ in range(2)] == [
        True,
        False,
    ]
    assert limiter.unblock("{acl}:user", reset=True) is True
    assert limiter.peek("{acl}:user", Limit.per_minute(1)).remaining == 1
    decision = limiter.check_all(keyed, per_key_remaining=True)
    assert (decision.source, decision.per_key_remaining) == ("redis", (1, 4))
    assert limiter.undo_all(keyed) == {"{acl}:user": 1, "{acl}:ip": 1}
    bucket = limiter.gcra("{acl}:bucket", GcraLimit(1, 1, 60_000), tokens=2)
    assert (bucket.source, bucket.remaining) == ("redis", 0)
    assert limiter.backend == ("module" if server.module else "twin")

    async def run() -> None:
        client = aioredis.Redis(**options)  # type: ignore[arg-type]
        alimiter = AsyncRateLimiter(client, prefix="rl:")
        assert (await alimiter.check_all(keyed)).source == "redis"
        assert await alimiter.unblock("{acl}:ip", reset=True) is False
        assert not (await alimiter.gcra("{acl}:bucket", GcraLimit(1, 1, 60_000))).allowed
        await client.aclose()

    asyncio.run(run())


@pytest.mark.parametrize(
    "command",
    [
        ["FUNCTION", "LOAD", "REPLACE", "#!lua name=ratelimit\nredis.register_function('f', function() end)"],
        ["FUNCTION", "DELETE", "ratelimit"],
        ["FUNCTION", "FLUSH"],
        ["SCRIPT", "FLUSH"],
        ["SET", "other:key", "1"],
    ],
)
def test_the_readme_user_cannot_replace_what_runs(server: Server, command: list[str]) -> None:
    with redis.Redis(**as_the_readme_user(server)) as user, pytest.raises(redis.exceptions.NoPermissionError):  # type: ignore[arg-type]
        user.execute_command(*command)
