"""Redis paused, stopped and restarted: the failure policy the user chose,
within the timeout, every failure logged with its cause, and recovery."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from conftest import scrape, serve_asgi, serve_wsgi
from redis.backoff import NoBackoff
from redis.retry import Retry
from servers import Server
from test_http import RATELIMIT

from redis_exact_ratelimit import AsyncRateLimiter, Decision, Fallback, Limit, RateLimiter, RateLimitUnavailable

TIMEOUT = 0.2
# Slack for a loaded 2-core machine: the point is "no hang", not speed.
SLACK = 1.5


def failures_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_paused_redis_fails_closed_within_the_timeout(own_server: Server, caplog: pytest.LogCaptureFixture) -> None:
    limiter = RateLimiter(own_server.client(), timeout=TIMEOUT, retry_after_failure=0.3)
    assert limiter.check("k", Limit.per_minute(5)).source == "redis"
    own_server.pause()
    try:
        started = time.monotonic()
        decision = limiter.check("k", Limit.per_minute(5))
        elapsed = time.monotonic() - started
        assert (decision.allowed, decision.source) == (False, "fail_closed")
        assert elapsed < TIMEOUT + SLACK and decision.retry_after_ms > 0
        assert decision.error is not None and str(decision.error) == "no answer within 200 ms"
        # Meanwhile Redis is left alone: no second wait.
        started = time.monotonic()
        assert limiter.check("k", Limit.per_minute(5)).source == "fail_closed"
        assert time.monotonic() - started < TIMEOUT
    finally:
        own_server.resume()
    server = f"127.0.0.1:{own_server.port}"
    assert failures_logged(caplog) == [
        f"redis-ratelimit: Redis at {server} is unavailable (timeout: no answer within 200 ms);"
        " failing closed (denying every request) until it answers"
    ]


def test_stopped_redis_fails_open(own_server: Server, caplog: pytest.LogCaptureFixture) -> None:
    client = own_server.client(retry=Retry(NoBackoff(), 0))
    limiter = RateLimiter(client, timeout=TIMEOUT, fail_open=True, retry_after_failure=0)
    own_server.stop()
    for _ in range(3):
        started = time.monotonic()
        decision = limiter.check("k", Limit.per_minute(5))
        assert (decision.allowed, decision.source, decision.remaining) == (True, "fail_open", 4)
        assert time.monotonic() - started < TIMEOUT + SLACK
    # retry_after_failure=0: every call tries Redis; the outage is logged once.
    assert failures_logged(caplog) == [
        f"redis-ratelimit: Redis at 127.0.0.1:{own_server.port} is unavailable (ECONNREFUSED);"
        " failing open (allowing every request) until it answers"
    ]


@pytest.mark.parametrize("own_server", ["module", "twin"], indirect=True)
def test_fallback_holds_its_share_and_redis_recovers(own_server: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="redis_exact_ratelimit")
    limiter = RateLimiter(
        # Without redis-py's own retries: a call the limiter gave up on is
        # otherwise retried in the background and may count after recovery.
        own_server.client(socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)),
        timeout=TIMEOUT,
        fallback=Fallback(share=0.5),
        retry_after_failure=0.3,
    )
    assert limiter.check("k", Limit.per_minute(10)).source == "redis"
    own_server.stop()
    answers = [limiter.check("k", Limit.per_minute(10)) for _ in range(20)]
    assert {a.source for a in answers} == {"fallback"}
    assert sum(a.allowed for a in answers) == 5
    # A refund of a fallback decision goes to the fallback.
    assert limiter.undo("k", decision=answers[0]) == 1
    assert limiter.check("k", Limit.per_minute(10)).allowed
    assert any(
        "deciding in this process (fallback, share 0.5) until it answers" in line for line in failures_logged(caplog)
    )

    own_server.start()  # the same port, empty
    time.sleep(0.35)
    recovered = limiter.check("k", Limit.per_minute(10))
    assert (recovered.source, recovered.allowed, recovered.remaining) == ("redis", True, 9)
    assert any(f"Redis at 127.0.0.1:{own_server.port} answers again;" in r.getMessage() for r in caplog.records)
    assert limiter.fallback is not None and len(limiter.fallback) == 0


def test_asyncio_fails_closed_within_the_timeout_and_recovers(own_server: Server) -> None:
    async def run() -> None:
        client = aioredis.Redis(host="127.0.0.1", port=own_server.port)
        limiter = AsyncRateLimiter(client, timeout=TIMEOUT, retry_after_failure=0.2)
        assert (await limiter.check("k", Limit.per_minute(5))).source == "redis"
        own_server.pause()
        try:
            started = time.monotonic()
            decision = await limiter.check("k", Limit.per_minute(5))
            assert (decision.allowed, decision.source) == (False, "fail_closed")
            assert time.monotonic() - started < TIMEOUT + SLACK
        finally:
            own_server.resume()
        await asyncio.sleep(0.25)
        # The timed-out command's connection was closed; a new one answers.
        decision = await limiter.check("k", Limit.per_minute(5))
        assert decision.source == "redis" and decision.allowed
        await client.aclose()

    asyncio.run(run())


@pytest.mark.parametrize("serve", [serve_asgi, serve_wsgi], ids=["fastapi", "flask"])
def test_http_while_redis_is_stopped(serve: object, own_server: Server) -> None:
    target = "fastapi_full:app" if serve is serve_asgi else "flask_full:app"
    closed = serve(target, own_server.port, LIMITER_TIMEOUT="0.2")  # type: ignore[operator]
    shared = serve(target, own_server.port, LIMITER_TIMEOUT="0.2", FALLBACK_SHARE="0.5")  # type: ignore[operator]
    try:
        own_server.stop()
        user = {"X-User": uuid.uuid4().hex}
        for path in ("/mw/ok", "/gmw/ok"):
            refused = httpx.get(closed.url + path, headers=user, timeout=10)
            assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
            assert "RateLimit" not in refused.headers
        with httpx.Client(base_url=shared.url, headers=user, timeout=10) as http:
            statuses = [http.get("/mw/ok").status_code for _ in range(12)]
            # The token bucket (4 tokens, 1 a minute) at half share: 2 tokens.
            buckets = [http.get("/gmw/ok") for _ in range(4)]
        assert statuses == [200] * 5 + [429] * 7
        assert [r.status_code for r in buckets] == [200, 200, 429, 429]
        fields = [RATELIMIT.fullmatch(r.headers["RateLimit"]) for r in buckets]
        shown = [(m["name"], int(m["r"]), int(m["t"])) for m in fields if m is not None]
        expected = [("gmw", 1, 60), ("gmw", 0, 120), ("gmw", 0, 120), ("gmw", 0, 120)]
        # t within a second of it: the fallback's clock runs between requests.
        assert [(name, r) for name, r, _ in shown] == [(name, r) for name, r, _ in expected]
        assert all(t - 1 <= got <= t for (_, _, got), (_, _, t) in zip(shown, expected, strict=True)), shown
        assert 59 <= int(buckets[2].headers["Retry-After"]) <= 60
        assert buckets[0].headers["RateLimit-Policy"] == '"gmw";q=4;w=240'
        # Counted by outcome, and the refused connections by cause.
        closed_metrics, shared_metrics = scrape(closed), scrape(shared)
    finally:
        closed.stop()
        shared.stop()
    assert "failing closed (denying every request) until it answers" in closed.output()
    decisions = "ratelimit_decisions_total"
    assert closed_metrics[(decisions, (("outcome", "fail_closed"), ("policy", "mw")))] == 1
    assert shared_metrics[(decisions, (("outcome", "fallback_allowed"), ("policy", "mw")))] == 5
    assert shared_metrics[(decisions, (("outcome", "fallback_denied"), ("policy", "mw")))] == 7
    assert closed_metrics[(decisions, (("outcome", "fail_closed"), ("policy", "gmw")))] == 1
    assert shared_metrics[(decisions, (("outcome", "fallback_allowed"), ("policy", "gmw")))] == 2
    assert shared_metrics[(decisions, (("outcome", "fallback_denied"), ("policy", "gmw")))] == 2
    assert closed_metrics[("ratelimit_errors_total", (("cause", "connection"),))] >= 1


@pytest.mark.parametrize("several", [False, True], ids=["check", "check_all"])
def test_a_check_that_lands_after_its_timeout_is_refunded(
    own_server: Server, caplog: pytest.LogCaptureFixture, several: bool
) -> None:
    """The README's client (redis-py's default retries): a check given up on
    while Redis is down is retried by redis-py in the background and runs
    once Redis is back. The request was refused, so the charge is refunded
    (with MUNDO in every key, for check_all)."""
    limiter = RateLimiter(own_server.client(), timeout=0.1, retry_after_failure=0)
    limit = Limit.per_minute(10)
    keyed = {"{late}:a": limit, "{late}:b": limit}

    def check() -> Decision:
        return limiter.check_all(keyed) if several else limiter.check("{late}:a", limit)

    assert limiter.peek("{late}:a", limit).source == "redis"
    own_server.stop()
    assert [check().source for _ in range(3)] == ["fail_closed"] * 3
    own_server.start()
    command = "cmdstat_ratelimit.mcheck" if several else "cmdstat_ratelimit.check"
    remaining = None
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        # Each late check lands, then its refund: wait for both.
        decision = limiter.peek_all(keyed)
        landed = own_server.client().info("commandstats").get(command, {}).get("calls", 0)
        remaining = decision.remaining if decision.source == "redis" else None
        if landed == 3 and remaining == 10:
            break
        time.sleep(0.1)
    assert (landed, remaining) == (3, 10)
    assert sum("refunded" in r.getMessage() for r in caplog.records) == 3


@pytest.mark.parametrize("own_server", ["module", "twin"], indirect=True)
def test_a_server_out_of_memory_takes_the_failure_policy(own_server: Server) -> None:
    """OOM (maxmemory reached, noeviction) is an outage on both backends:
    the module answers "OOM ...", the twin's script "ERR OOM ... script: ..."."""
    limiter = RateLimiter(own_server.client())
    assert limiter.check("oom", Limit.per_minute(5)).source == "redis"
    own_server.client().config_set("maxmemory", 1)
    decision = limiter.check("oom", Limit.per_minute(5))
    assert decision.source == "fail_closed"
    assert "command not allowed when used memory" in str(decision.error)


@pytest.mark.parametrize("own_server", ["module", "twin"], indirect=True)
def test_several_keys_take_the_same_failure_policy(own_server: Server, caplog: pytest.LogCaptureFixture) -> None:
    """check_all with Redis stopped: the fallback decides all or nothing
    over the keys and refunds there; without one, the policy answers, and
    an unblock, which no policy can answer, raises."""
    keyed: dict[str, Limit] = {"{t}:user": Limit.per_minute(4), "{t}:ip": Limit.per_minute(10)}
    client = own_server.client(socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    shared = RateLimiter(client, timeout=TIMEOUT, fallback=Fallback(share=0.5), retry_after_failure=30)
    closed = RateLimiter(client, timeout=TIMEOUT, retry_after_failure=30)
    opened = RateLimiter(client, timeout=TIMEOUT, fail_open=True, retry_after_failure=30)
    assert shared.check_all(keyed).source == "redis"
    own_server.stop()
    answers = [shared.check_all(keyed) for _ in range(3)]
    assert [(a.source, a.allowed, a.denied_keys) for a in answers] == [
        ("fallback", True, ()),
        ("fallback", True, ()),
        ("fallback", False, ("{t}:user",)),
    ]
    # The denial charged the IP nothing in the fallback: 5 - 2 left.
    assert shared.peek("{t}:ip", keyed["{t}:ip"]).remaining == 3
    assert shared.undo_all(keyed, decision=answers[0]) == {"{t}:user": 1, "{t}:ip": 1}
    refused = closed.check_all(keyed)
    assert (refused.source, refused.allowed, refused.denied_keys, refused.keys) == (
        "fail_closed",
        False,
        (),
        tuple(keyed),
    )
    assert refused.error is not None
    allowed = opened.check_all(keyed, cost=2)
    assert (allowed.source, allowed.allowed, allowed.remaining) == ("fail_open", True, 2)
    with pytest.raises(RateLimitUnavailable, match=r"\(ECONNREFUSED\); the block on key '\{t\}:user' was not lifted"):
        closed.unblock("{t}:user")
    # One line per limiter, each naming what decides meanwhile.
    assert [line.rpartition("; ")[2] for line in failures_logged(caplog)] == [
        "deciding in this process (fallback, share 0.5) until it answers",
        "failing closed (denying every request) until it answers",
        "failing open (allowing every request) until it answers",
    ]


@pytest.mark.parametrize("several", [False, True], ids=["check", "check_all"])
@pytest.mark.parametrize("mode", ["sync", "asyncio"])
def test_a_check_a_hung_server_answers_late_is_refunded(
    own_server: Server, caplog: pytest.LogCaptureFixture, mode: str, several: bool
) -> None:
    """A hung server (SIGSTOP) has received the check when the limiter
    gives up on it and answers by its policy; resumed, the server records
    it. The limiter refunds it (UNDO, or MUNDO in every key) and says so
    once, in the sync and the asyncio client alike."""
    limit = Limit.per_minute(10)
    keyed = {"{hung}:a": limit, "{hung}:b": limit}
    stats = own_server.client()
    command = "cmdstat_ratelimit.mcheck" if several else "cmdstat_ratelimit.check"

    def settled() -> bool:
        landed = stats.info("commandstats").get(command, {}).get("calls", 0)
        return bool(landed == 1 and any("refunded" in r.getMessage() for r in caplog.records))

    async def run() -> None:
        sync = RateLimiter(own_server.client(), timeout=TIMEOUT, retry_after_failure=0)
        client = aioredis.Redis(host="127.0.0.1", port=own_server.port)
        limiter = sync if mode == "sync" else AsyncRateLimiter(client, timeout=TIMEOUT, retry_after_failure=0)

        async def call(value: Any) -> Any:
            return await value if inspect.isawaitable(value) else value

        assert (await call(limiter.peek_all(keyed))).source == "redis"
        own_server.pause()
        try:
            decision = await call(limiter.check_all(keyed) if several else limiter.check("{hung}:a", limit))
            assert decision.source == "fail_closed"
        finally:
            own_server.resume()
        deadline = time.monotonic() + 15
        while not settled() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        after = await call(limiter.peek_all(keyed))
        assert (after.source, after.remaining) == ("redis", 10)
        await client.aclose()

    asyncio.run(run())
    keys = "{hung}:a, {hung}:b" if several else "{hung}:a"
    refunds = [(r.levelname, r.getMessage()) for r in caplog.records if "after its timeout" in r.getMessage()]
    assert refunds == [
        ("WARNING", f"redis-ratelimit: a check on {keys} was answered after its timeout; its charge was refunded")
    ]
    assert stats.info("commandstats").get(command, {}).get("calls", 0) == 1
