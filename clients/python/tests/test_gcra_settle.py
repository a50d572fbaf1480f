"""Token budgets over a token bucket (issue 27): ``reserve(key,
GcraLimit(...), estimate=...)`` and ``settle``, sent as RATELIMIT.GCRA's
CHARGE or REFUND, and ``gcra_charge``/``gcra_refund`` themselves. On the
module and the twin, RESP2 and RESP3, sync and asyncio; the changed rule
(a debt persists: a lowered burst no longer caps a bucket at full); in
the fallback; Redis down during a settlement; the ASGI middleware's
``gcra=`` with ``settle=``; the twin answering as the module does."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterable
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from redis.backoff import NoBackoff
from redis.retry import Retry
from servers import Server

from redis_exact_ratelimit import (
    AsyncRateLimiter,
    Fallback,
    GcraLimit,
    RateLimiter,
    RateLimitInputError,
    RateLimitReplyError,
    RateLimitSettled,
    RateLimitUnavailable,
)
from redis_exact_ratelimit._core import MAX_EXACT, MAX_PERIOD_MS, Script, make_gcra_call
from redis_exact_ratelimit._metrics import Outcome
from redis_exact_ratelimit._transport import ErrorCause
from redis_exact_ratelimit.asgi import RateLimitMiddleware as ASGIRateLimit
from redis_exact_ratelimit.asgi import state_value
from redis_exact_ratelimit.wsgi import RateLimitMiddleware as WSGIRateLimit
from redis_exact_ratelimit.wsgi import environ_value

# 1 token a second, in bursts of 4: a token is 1000 units, draining 1 a ms.
PER_SECOND = GcraLimit(3, 1, 1000)
# 1 token a minute, in bursts of 10: nothing drains within a test.
PER_MINUTE = GcraLimit(9, 1, 60_000)

# The twin embedded in this build: GCRA's CHARGE and REFUND land in it on
# the branch that writes them (twin/ratelimit.lua); until then its tests
# are skipped.
TWIN_SETTLES_GCRA = "CHARGE and REFUND" in Script.load().text


def needs_gcra_settle(server: Server) -> None:
    if not server.module and not TWIN_SETTLES_GCRA:
        pytest.skip("the embedded script twin has no GCRA CHARGE/REFUND yet")


class Counting:
    """Metrics that count errors and round trips by operation."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.trips: list[str] = []

    def decision(self, policy: str, outcome: Outcome) -> None:
        pass

    def error(self, cause: ErrorCause) -> None:
        self.errors.append(cause)

    def round_trip(self, operation: str, seconds: float) -> None:
        self.trips.append(operation)


class Elapsed:
    """Milliseconds since it was made: what may have drained meanwhile."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000) + 1


@pytest.mark.parametrize("protocol", [2, 3])
def test_reserve_then_settle_more_and_less(server: Server, key: str, protocol: int) -> None:
    """More than the estimate is a CHARGE past full (a debt that drains at
    the rate, limiting requests until it has); less is a REFUND."""
    needs_gcra_settle(server)
    limiter = RateLimiter(server.client(protocol=protocol))
    elapsed = Elapsed()
    first = limiter.reserve(key, PER_SECOND, estimate=2)
    assert first.decision.allowed and first.decision.remaining == 2 and first.decision.burst == 4
    assert first.keys == (key,) and first.estimate == 2 and first.gcra == PER_SECOND and not first.settled
    more = limiter.settle(first, 7)
    e = elapsed.ms()
    # 7 tokens in a bucket of 4: 3 over; one more fits once 4 have drained.
    assert (more.source, more.charged, more.refunded, more.over, more.remaining) == ("redis", 5, 0, 3, 0)
    assert more.over_keys == (key,)
    assert 4000 - e <= more.retry_after_ms <= 4000
    assert more.reset_after_ms is not None and 7000 - e <= more.reset_after_ms <= 7000
    assert first.settled
    with pytest.raises(RateLimitSettled):
        limiter.settle(first, 7)
    limited = limiter.gcra(key, PER_SECOND)
    assert not limited.allowed and limited.remaining == 0
    assert 4000 - elapsed.ms() <= limited.retry_after_ms <= 4000
    # Less than the estimate: a refund of the difference.
    other = f"{key}:less"
    second = limiter.reserve(other, PER_SECOND, estimate=3)
    less = limiter.settle(second, 1)
    assert (less.source, less.refunded, less.charged, less.over, less.remaining) == ("redis", 2, 0, 0, 3)
    assert less.retry_after_ms == 0 and less.over_keys == ()
    assert less.reset_after_ms is not None and less.reset_after_ms <= 1000
    # All of it back: the bucket is empty, and its key goes.
    all_back = limiter.settle(limiter.reserve(f"{key}:zero", PER_SECOND, estimate=4), 0)
    assert (all_back.refunded, all_back.remaining, all_back.reset_after_ms) == (4, 4, 0)
    assert server.client().exists(f"{key}:zero") == 0


def test_settle_the_estimate_or_a_denied_reservation_sends_nothing(server: Server, key: str) -> None:
    needs_gcra_settle(server)
    limiter = RateLimiter(server.client())
    exact = limiter.settle(limiter.reserve(key, PER_MINUTE, estimate=6), 6)
    assert (exact.source, exact.charged, exact.refunded) == (None, 0, 0)
    assert exact.keys == (key,)
    denied = limiter.reserve(key, PER_MINUTE, estimate=5)
    assert not denied.decision.allowed and denied.decision.remaining == 4
    nothing = limiter.settle(denied, 50)
    assert nothing.source is None and nothing.charged == 0 and nothing.over == 0
    with pytest.raises(RateLimitSettled):
        limiter.settle(denied, 50)
    assert limiter.gcra(key, PER_MINUTE, tokens=0).remaining == 4


def test_gcra_charge_and_refund(server: Server, key: str) -> None:
    """The settlements themselves: a charge past full, a refund of more
    than is held (the key goes), a refund on no key, TOKENS 0, a charge
    past the exact bound refused whole."""
    needs_gcra_settle(server)
    client = server.client()
    limiter = RateLimiter(client)
    charged = limiter.gcra_charge(key, PER_MINUTE, tokens=13)
    assert (charged.source, charged.charged, charged.over, charged.remaining, charged.over_keys) == (
        "redis",
        13,
        3,
        0,
        (key,),
    )
    assert charged.reset_after_ms == 13 * 60_000 and 4 * 60_000 - 100 <= charged.retry_after_ms <= 4 * 60_000
    peek = limiter.gcra_charge(key, PER_MINUTE, tokens=0)
    assert (peek.charged, peek.over, peek.remaining) == (0, 3, 0)
    refunded = limiter.gcra_refund(key, PER_MINUTE, tokens=5)
    assert (refunded.refunded, refunded.over, refunded.remaining, refunded.retry_after_ms) == (5, 0, 2, 0)
    emptied = limiter.gcra_refund(key, PER_MINUTE, tokens=100)
    assert (emptied.over, emptied.remaining, emptied.reset_after_ms) == (0, 10, 0)
    assert client.exists(key) == 0
    missing = limiter.gcra_refund(f"{key}:none", PER_MINUTE, tokens=3)
    assert (missing.source, missing.remaining, missing.reset_after_ms) == ("redis", 10, 0)
    assert client.exists(f"{key}:none") == 0
    widest = GcraLimit(0, 1, MAX_PERIOD_MS)
    with pytest.raises(RateLimitReplyError, match="token-milliseconds"):
        limiter.gcra_charge(f"{key}:wide", widest, tokens=MAX_EXACT // MAX_PERIOD_MS + 1)
    assert client.exists(f"{key}:wide") == 0
    with pytest.raises(RateLimitInputError, match="tokens must be an integer"):
        limiter.gcra_charge(key, PER_MINUTE, tokens=-1)
    with pytest.raises(RateLimitInputError, match="actual must be an integer from 0 to 9000000000000000"):
        limiter.settle(limiter.reserve(f"{key}:x", PER_MINUTE, estimate=1), MAX_EXACT + 2)
    with pytest.raises(RateLimitInputError, match="no precision, block_ms or per_key_remaining"):
        limiter.reserve(key, PER_MINUTE, estimate=1, block_ms=10)  # type: ignore[call-overload]


def test_a_lowered_burst_no_longer_caps_a_bucket_at_full(server: Server, key: str) -> None:
    """The changed rule: the tokens a bucket holds persist under a smaller
    burst (limited until they drain under it), in Redis as in the fallback."""
    needs_gcra_settle(server)
    limiter = RateLimiter(server.client())
    assert limiter.gcra(key, PER_MINUTE, tokens=8).remaining == 2
    smaller = GcraLimit(1, 1, 60_000)
    limited = limiter.gcra(key, smaller)
    # 8 tokens held, a bucket of 2: one more fits once 7 have drained.
    assert not limited.allowed and limited.remaining == 0
    assert 7 * 60_000 - 100 <= limited.retry_after_ms <= 7 * 60_000
    clock = [1_000_000]
    fallback = Fallback(clock=lambda: clock[0])
    fallback.gcra("k", make_gcra_call(PER_MINUTE, 8))
    local = fallback.gcra("k", make_gcra_call(smaller, 1))
    assert (local.allowed, local.remaining, local.retry_after_ms) == (False, 0, 7 * 60_000)


def test_a_bucket_key_is_wrongtype_to_a_window_and_may_be_settled_again(server: Server, key: str) -> None:
    """The call's own error is raised, and the reservation stays unsettled."""
    needs_gcra_settle(server)
    limiter = RateLimiter(server.client())
    reservation = limiter.reserve(key, PER_MINUTE, estimate=1)
    client = server.client()
    client.delete(key)
    client.set(key, "a string")
    with pytest.raises(RateLimitReplyError, match="WRONGTYPE"):
        limiter.settle(reservation, 5)
    assert not reservation.settled
    client.delete(key)
    assert limiter.settle(reservation, 5).charged == 4


@pytest.mark.parametrize("protocol", [2, 3])
def test_asyncio_reserve_and_settle(server: Server, key: str, protocol: int) -> None:
    needs_gcra_settle(server)

    async def main() -> None:
        client = aioredis.Redis(host="127.0.0.1", port=server.port, protocol=protocol)
        try:
            limiter = AsyncRateLimiter(client)
            reservation = await limiter.reserve(key, PER_MINUTE, estimate=8)
            assert reservation.decision.allowed and reservation.decision.remaining == 2
            settled = await limiter.settle(reservation, 13)
            assert (settled.source, settled.charged, settled.over, settled.remaining) == ("redis", 5, 3, 0)
            with pytest.raises(RateLimitSettled):
                await limiter.settle(reservation, 13)
            back = await limiter.settle(await limiter.reserve(f"{key}:b", PER_MINUTE, estimate=6), 2)
            assert (back.refunded, back.remaining) == (4, 8)
            assert (await limiter.gcra_refund(key, PER_MINUTE, tokens=10)).remaining == 7
            assert (await limiter.gcra_charge(key, PER_MINUTE, tokens=9)).over == 2
        finally:
            await client.aclose()

    asyncio.run(main())


# -- the fallback ------------------------------------------------------------


def test_a_reservation_the_fallback_decided_is_settled_there() -> None:
    clock = [1_000_000]
    fallback = Fallback(share=0.5, clock=lambda: clock[0])
    limiter = RateLimiter(redis.Redis(host="127.0.0.1", port=1), fallback=fallback, timeout=0.5)
    # A share of 0.5: a bucket of 5, 1 token every 2 minutes.
    reservation = limiter.reserve("k", PER_MINUTE, estimate=2)
    assert reservation.decision.source == "fallback" and reservation.decision.remaining == 3
    settled = limiter.settle(reservation, 9)
    assert (settled.source, settled.charged, settled.over, settled.remaining) == ("fallback", 7, 4, 0)
    assert settled.keys == ("k",) and settled.over_keys == ("k",)
    assert (settled.retry_after_ms, settled.reset_after_ms) == (5 * 60_000, 9 * 60_000)
    again = limiter.reserve("k", PER_MINUTE, estimate=1)
    assert not again.decision.allowed
    assert limiter.settle(again, 0).source is None
    refund = limiter.settle(limiter.reserve("r", PER_MINUTE, estimate=5), 1)
    assert (refund.source, refund.refunded, refund.remaining) == ("fallback", 4, 4)
    assert fallback.gcra("r", make_gcra_call(PER_MINUTE, 0)).remaining == 4


def test_a_failure_policy_reservation_is_settled_nowhere() -> None:
    limiter = RateLimiter(redis.Redis(host="127.0.0.1", port=1), fail_open=True, timeout=0.5)
    reservation = limiter.reserve("k", PER_MINUTE, estimate=3)
    assert reservation.decision.source == "fail_open" and reservation.decision.allowed
    settled = limiter.settle(reservation, 500)
    assert settled.source is None and settled.error is None and settled.charged == 0


# -- Redis down during a settlement ------------------------------------------


def test_a_settlement_is_retried_then_logged_and_raised(
    own_server: Server, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Counting()
    client = own_server.client(retry=Retry(NoBackoff(), 0))
    limiter = RateLimiter(client, settle_retry=0.6, metrics=metrics)
    reservation = limiter.reserve(key, PER_MINUTE, estimate=2)
    assert reservation.decision.source == "redis"
    own_server.stop()
    caplog.set_level(logging.INFO, "redis_exact_ratelimit")
    started = time.monotonic()
    with pytest.raises(RateLimitUnavailable, match=r"unavailable \(ECONNREFUSED\).* was not recorded"):
        limiter.settle(reservation, 9)
    took = time.monotonic() - started
    assert 0.55 <= took < 3
    attempts = metrics.trips.count("gcra") - 1  # the reservation's own
    assert attempts >= 3, metrics.trips
    assert metrics.errors.count("connection") == attempts
    lost = [(r.levelname, r.getMessage()) for r in caplog.records if "could not reach Redis" in r.getMessage()]
    assert lost == [
        (
            "ERROR",
            f"redis-ratelimit: a settlement on {key} (charge of 7 units) could not reach Redis within 600 ms"
            " (ECONNREFUSED); it was not recorded",
        )
    ]
    with pytest.raises(RateLimitSettled):
        limiter.settle(reservation, 9)


# -- ASGI: gcra= with settle= ------------------------------------------------


def bucket_app(limiter: AsyncRateLimiter, name: str) -> FastAPI:
    app = FastAPI()
    app.add_middleware(
        ASGIRateLimit,
        limiter=limiter,
        gcra=PER_MINUTE,
        key=lambda scope: "caller",
        name=name,
        cost=3,
        settle=state_value("tokens"),
    )

    @app.get("/used")
    async def used(request: Request) -> dict[str, str]:
        request.state.tokens = int(request.query_params["tokens"])
        return {"ok": "yes"}

    @app.get("/fails")
    async def fails() -> dict[str, str]:
        raise RuntimeError("the handler failed")

    return app


def test_asgi_settles_a_token_bucket(server: Server) -> None:
    """The estimate (cost) reserved in the bucket before the app runs,
    the actual settled after the response; a handler that raises gives
    the whole reservation back."""
    needs_gcra_settle(server)
    name = f"t{uuid.uuid4().hex}"

    async def main() -> None:
        client = aioredis.Redis(host="127.0.0.1", port=server.port)
        limiter = AsyncRateLimiter(client)
        transport = httpx.ASGITransport(app=bucket_app(limiter, name), raise_app_exceptions=False)
        bucket = f"{name}:caller"
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                response = await http.get("/used", params={"tokens": "7"})
                assert response.status_code == 200
                # The bucket as the reservation of 3 left it.
                assert response.headers["ratelimit"] == f'"{name}";r=7;t=180'
                assert (await limiter.gcra(bucket, PER_MINUTE, tokens=0)).remaining == 3
                response = await http.get("/fails")
                assert response.status_code == 500
                assert (await limiter.gcra(bucket, PER_MINUTE, tokens=0)).remaining == 3
                response = await http.get("/used", params={"tokens": "1"})
                assert response.headers["ratelimit"] == f'"{name}";r=0;t=600'
                assert (await limiter.gcra(bucket, PER_MINUTE, tokens=0)).remaining == 2
                response = await http.get("/used", params={"tokens": "0"})
                assert response.status_code == 429
        finally:
            await client.aclose()

    asyncio.run(main())


def test_wsgi_settles_a_token_bucket_once_the_body_is_closed(server: Server) -> None:
    needs_gcra_settle(server)
    name = f"t{uuid.uuid4().hex}"
    limiter = RateLimiter(server.client())

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body() -> Iterable[bytes]:
            yield b"one"
            environ["app.tokens"] = 1

        return body()

    middleware = WSGIRateLimit(
        app, limiter=limiter, gcra=PER_MINUTE, name=name, cost=4, settle=environ_value("app.tokens")
    )
    environ: dict[str, Any] = {"REMOTE_ADDR": "10.0.0.1", "REQUEST_METHOD": "GET", "PATH_INFO": "/"}
    body = middleware(environ, lambda status, headers, exc_info=None: None)  # type: ignore[arg-type]
    key = f"{name}:10.0.0.1"
    assert b"".join(body) == b"one"
    assert limiter.gcra(key, PER_MINUTE, tokens=0).remaining == 6  # not settled before close
    body.close()  # type: ignore[attr-defined]
    assert limiter.gcra(key, PER_MINUTE, tokens=0).remaining == 9


# -- the twin settles as the module does --------------------------------------


def test_the_twin_settles_a_bucket_as_the_module(module_server: Server, twin_server: Server) -> None:
    """One sequence of reservations, settlements, charges and refunds on
    a server with the module and on one without: the same answers, call
    by call (waits within the ms the two servers' calls lie apart)."""
    needs_gcra_settle(twin_server)
    run = uuid.uuid4().hex
    answers: list[list[Any]] = []
    waits: list[list[int]] = []
    for server in (module_server, twin_server):
        limiter = RateLimiter(server.client())
        seen: list[Any] = []
        waited: list[int] = []
        for estimate, actual in ((4, 2), (3, 9), (1, 1), (2, 0), (1, 30)):
            reservation = limiter.reserve(run, PER_MINUTE, estimate=estimate)
            settled = limiter.settle(reservation, actual)
            seen.append((reservation.decision.allowed, reservation.decision.remaining))
            seen.append((settled.source, settled.charged, settled.refunded, settled.over, settled.remaining))
            waited += [settled.retry_after_ms, settled.reset_after_ms or 0]
        smaller = limiter.gcra(run, GcraLimit(1, 1, 60_000))
        seen.append((smaller.allowed, smaller.remaining))
        waited.append(smaller.retry_after_ms)
        for settle in (limiter.gcra_charge, limiter.gcra_refund, limiter.gcra_refund):
            done = settle(run, GcraLimit(2, 1, 30_000), 6)
            seen.append((done.charged, done.refunded, done.over, done.remaining))
            waited += [done.retry_after_ms, done.reset_after_ms or 0]
        seen.append(server.client().exists(run))
        answers.append(seen)
        waits.append(waited)
        assert limiter.backend == ("module" if server.module else "twin")
    assert answers[0] == answers[1]
    assert all(abs(m - t) <= 1000 for m, t in zip(*waits, strict=True)), waits
