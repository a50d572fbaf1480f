"""BLOCK: a denial by the limits starts a penalty (block_ms) during which
every call on the key is denied; unblock lifts it and keeps the history.
On a server with the module and on one without (the twin), sync and
asyncio, RESP2 and RESP3."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid

import httpx
import pytest
import redis.asyncio as aioredis
from conftest import EXAMPLES, app_env, serve_asgi, serve_wsgi
from servers import Server

from redis_exact_ratelimit import AsyncRateLimiter, Limit, Limits, RateLimiter

FIFTEEN_MINUTES = 15 * 60_000
HOUR = 3_600_000
LOGIN = Limit(FIFTEEN_MINUTES, 5)
# Slack for the ms between a call and the next on a loaded machine.
SLACK_MS = 1000


@pytest.mark.parametrize("protocol", [2, 3])
def test_a_lockout_holds_counts_down_and_unblock_keeps_the_history(server: Server, key: str, protocol: int) -> None:
    """5 failures in 15 minutes, then an hour's lockout."""
    limiter = RateLimiter(server.client(protocol=protocol))
    assert [limiter.check(key, LOGIN, block_ms=HOUR).allowed for _ in range(5)] == [True] * 5
    locked = limiter.check(key, LOGIN, block_ms=HOUR)
    assert (locked.allowed, locked.remaining) == (False, 0)
    assert HOUR - SLACK_MS < locked.retry_after_ms <= HOUR
    assert locked.reset_after_ms == locked.retry_after_ms
    time.sleep(1.1)
    # Denied again, the block counting down, neither extended nor restarted;
    # also without BLOCK and under a limit that would allow.
    again = limiter.check(key, LOGIN, block_ms=HOUR)
    assert not again.allowed and again.retry_after_ms <= locked.retry_after_ms - 1000
    generous = limiter.check(key, Limit(FIFTEEN_MINUTES, 100))
    assert not generous.allowed and generous.retry_after_ms > FIFTEEN_MINUTES
    assert not limiter.peek(key, Limit(FIFTEEN_MINUTES, 100)).allowed
    assert limiter.unblock(key) is True
    assert limiter.unblock(key) is False
    # Lifted, the five failures still count: denied by the limit alone, for
    # at most its window, and the generous limit allows.
    after = limiter.peek(key, LOGIN)
    assert not after.allowed and 0 < after.retry_after_ms <= FIFTEEN_MINUTES
    assert limiter.check(key, Limit(FIFTEEN_MINUTES, 100)).remaining == 94
    assert limiter.undo(key, 6) == 6
    assert limiter.peek(key, LOGIN).remaining == 5


def test_a_refund_keeps_the_block_and_the_key_lives_as_long(server: Server, key: str) -> None:
    limiter = RateLimiter(server.client())
    assert limiter.check(key, Limit(1000, 1), block_ms=HOUR).allowed
    assert not limiter.check(key, Limit(1000, 1), block_ms=HOUR).allowed
    assert limiter.undo(key) == 1
    # The log is empty, the block stays, and so does the key.
    held = limiter.peek(key, Limit(1000, 1))
    assert not held.allowed and HOUR - SLACK_MS < held.retry_after_ms <= HOUR
    assert HOUR - SLACK_MS < server.client().pttl(key) <= HOUR
    assert limiter.unblock(key) is True
    assert server.client().exists(key) == 0


def test_peek_takes_block_ms_and_starts_nothing(server: Server, key: str) -> None:
    limiter = RateLimiter(server.client())
    assert limiter.check(key, Limit.per_minute(1)).allowed
    assert not limiter.peek(key, Limit.per_minute(1), block_ms=HOUR).allowed
    assert limiter.check(key, Limit.per_minute(2)).allowed
    assert limiter.unblock(key) is False


def test_several_keys_block_only_the_keys_whose_limits_denied(server: Server) -> None:
    limiter = RateLimiter(server.client())
    tag = f"{{{uuid.uuid4().hex}}}"
    user, ip = f"{tag}:user:42", f"{tag}:ip:10.0.0.1"
    keyed: dict[str, Limits] = {user: Limit.per_minute(2), ip: Limit.per_minute(10)}
    assert [limiter.check_all(keyed, block_ms=HOUR).allowed for _ in range(2)] == [True, True]
    denied = limiter.check_all(keyed, block_ms=HOUR)
    assert (denied.allowed, denied.denied_keys) == (False, (user,))
    assert HOUR - SLACK_MS < denied.retry_after_ms <= HOUR
    # The IP allowed: it is neither charged nor blocked.
    assert limiter.peek(ip, Limit.per_minute(10)).remaining == 8
    assert limiter.unblock(ip) is False
    # A blocked key denies in a multi-key call even under limits that allow.
    generous: dict[str, Limits] = {user: Limit.per_minute(100), ip: Limit.per_minute(100)}
    blocked = limiter.check_all(generous)
    assert (blocked.allowed, blocked.denied_positions) == (False, (0,))
    assert HOUR - SLACK_MS < blocked.retry_after_ms <= HOUR
    assert limiter.unblock(user) is True
    assert limiter.check_all(generous).remaining == 97


@pytest.mark.parametrize("protocol", [2, 3])
def test_asyncio_block_and_unblock(server: Server, key: str, protocol: int) -> None:
    async def run() -> None:
        client = aioredis.Redis(host="127.0.0.1", port=server.port, protocol=protocol)
        limiter = AsyncRateLimiter(client)
        answers = [await limiter.check(key, LOGIN, block_ms=HOUR) for _ in range(8)]
        assert [a.allowed for a in answers] == [True] * 5 + [False] * 3
        assert all(HOUR - SLACK_MS < a.retry_after_ms <= HOUR for a in answers[5:])
        assert await limiter.unblock(key) is True
        assert (await limiter.peek(key, LOGIN)).retry_after_ms <= FIFTEEN_MINUTES
        tag = f"{{{uuid.uuid4().hex}}}"
        keyed: dict[str, Limits] = {f"{tag}:a": Limit.per_minute(1), f"{tag}:b": Limit.per_minute(1)}
        assert (await limiter.check_all(keyed, block_ms=HOUR)).allowed
        both = await limiter.check_all(keyed, block_ms=HOUR)
        assert both.denied_positions == (0, 1) and both.retry_after_ms > HOUR - SLACK_MS
        assert (await limiter.peek_all(keyed)).denied_positions == (0, 1)
        await client.aclose()

    asyncio.run(run())


def test_readme_login_lockout(server: Server) -> None:
    """The README's complete program, over HTTP: 5 failed logins, then
    locked out for an hour: the 6th attempt and any after it get 429 with
    Retry-After, the right password too. Its admin command lifts the
    lockout and forgets the failures, so the right password gets in."""
    server.client().delete("login:alice")
    app = serve_wsgi("login_lockout:app", server.port)

    def unlock() -> str:
        command = [sys.executable, "-m", "flask", "--app", "login_lockout", "unlock", "alice"]
        done = subprocess.run(command, cwd=EXAMPLES, env=app_env(server.port), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout

    try:
        with httpx.Client(base_url=app.url) as http:

            def login(password: str) -> httpx.Response:
                return http.post("/login", data={"username": "alice", "password": password})

            failures = [login("wrong") for _ in range(5)]
            assert [r.status_code for r in failures] == [401] * 5
            assert [r.headers["RateLimit"].split(";")[1] for r in failures] == ["r=4", "r=3", "r=2", "r=1", "r=0"]
            locked = [login("wrong"), login("wonderland")]
            assert [r.status_code for r in locked] == [429, 429]
            assert all(3599 <= int(r.headers["Retry-After"]) <= 3600 for r in locked)
            assert locked[1].headers["RateLimit"] == f'"login";r=0;t={locked[1].headers["Retry-After"]}'
            assert unlock() == "alice: lockout lifted; failures forgotten\n"
            # Only failures count: successes are refunded.
            assert [login("wonderland").status_code for _ in range(7)] == [200] * 7
            assert login("wrong").headers["RateLimit"].split(";")[1] == "r=4"
            assert unlock() == "alice: was not locked out; failures forgotten\n"
    finally:
        app.stop()


@pytest.mark.parametrize("framework", ["fastapi", "flask"])
def test_per_route_block_in_both_frameworks(framework: str, server: Server) -> None:
    """2 a minute, then blocked for an hour: the refusals carry the block's
    Retry-After, counting down."""
    serve = serve_asgi if framework == "fastapi" else serve_wsgi
    app = serve(f"{framework}_full:app", server.port)
    try:
        with httpx.Client(base_url=app.url, headers={"X-User": uuid.uuid4().hex}) as http:
            first = [http.get("/lock") for _ in range(3)]
            time.sleep(1.1)
            later = http.get("/lock")
    finally:
        app.stop()
    assert [r.status_code for r in [*first, later]] == [200, 200, 429, 429]
    assert 3599 <= int(first[2].headers["Retry-After"]) <= 3600
    assert int(later.headers["Retry-After"]) < int(first[2].headers["Retry-After"])
    assert later.headers["RateLimit"] == f'"lock";r=0;t={later.headers["Retry-After"]}'


def exec_calls(server: Server) -> int:
    return int(server.client().info("commandstats").get("cmdstat_exec", {}).get("calls", 0))


@pytest.mark.parametrize("protocol", [2, 3])
def test_unblock_with_reset_lifts_the_lockout_and_forgets_the_failures(server: Server, key: str, protocol: int) -> None:
    """The admin call: one MULTI/EXEC of UNBLOCK and DEL. The answer is
    still "was it blocked"; the key is gone, so the next login starts over."""
    limiter = RateLimiter(server.client(protocol=protocol))
    assert [limiter.check(key, LOGIN, block_ms=HOUR).allowed for _ in range(6)] == [True] * 5 + [False]
    before = exec_calls(server)
    assert limiter.unblock(key, reset=True) is True
    assert exec_calls(server) == before + 1
    assert server.client().exists(key) == 0
    assert limiter.check(key, LOGIN, block_ms=HOUR).remaining == 4
    # Not blocked: False, and the history goes all the same.
    assert limiter.unblock(key, reset=True) is False
    assert server.client().exists(key) == 0


def test_unblock_with_reset_on_the_twin_after_script_flush(twin_server: Server, key: str) -> None:
    """The DEL runs in the same MULTI/EXEC whatever the script cache says,
    so the twin's reset is sent with EVAL: the answer stays true."""
    limiter = RateLimiter(twin_server.client())
    assert [limiter.check(key, Limit.per_minute(1), block_ms=HOUR).allowed for _ in range(2)] == [True, False]
    twin_server.client().script_flush()
    assert limiter.unblock(key, reset=True) is True
    assert twin_server.client().exists(key) == 0


@pytest.mark.parametrize("protocol", [2, 3])
def test_asyncio_unblock_with_reset(server: Server, key: str, protocol: int) -> None:
    async def run() -> None:
        client = aioredis.Redis(host="127.0.0.1", port=server.port, protocol=protocol)
        limiter = AsyncRateLimiter(client)
        assert [(await limiter.check(key, LOGIN, block_ms=HOUR)).allowed for _ in range(6)] == [True] * 5 + [False]
        assert await limiter.unblock(key, reset=True) is True
        assert await client.exists(key) == 0
        assert (await limiter.check(key, LOGIN)).remaining == 4
        await client.aclose()

    asyncio.run(run())
