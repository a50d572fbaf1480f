"""Token budgets (issue 27): reserve an estimate, settle the actual cost.
On the module and the twin, RESP2 and RESP3, sync and asyncio; in the
fallback; Redis down during a settlement (retried, then logged with its
amount); an older module without CHARGE; the ASGI middleware settling a
streamed response after its last body, a cancelled one, a handler that
raises; the WSGI middleware and the Flask decorator settling once the
body is closed (Flask's test client, and Werkzeug's server)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from conftest import eventually, serve_wsgi
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from flask import Flask, abort, request
from flask import Request as FlaskRequest
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry
from servers import Server, Stub, resp
from werkzeug.wrappers import Response

from redis_exact_ratelimit import (
    AsyncRateLimiter,
    Fallback,
    Limit,
    Limits,
    RateLimiter,
    RateLimitInputError,
    RateLimitReplyError,
    RateLimitSettled,
    RateLimitUnavailable,
)
from redis_exact_ratelimit._core import Script, make_call
from redis_exact_ratelimit._metrics import Outcome
from redis_exact_ratelimit._transport import ErrorCause
from redis_exact_ratelimit.asgi import Message, Scope, state_value
from redis_exact_ratelimit.asgi import RateLimitMiddleware as ASGIRateLimit
from redis_exact_ratelimit.flask import rate_limit
from redis_exact_ratelimit.wsgi import RateLimitMiddleware as WSGIRateLimit
from redis_exact_ratelimit.wsgi import environ_value

BUDGET = Limit.per_minute(10_000)

# The twin embedded in this build: CHARGE lands in it on the branch that
# writes it (twin/ratelimit.lua); until then its tests are skipped.
TWIN_HAS_CHARGE = "mcharge" in Script.load().text


def needs_charge(server: Server) -> None:
    if not server.module and not TWIN_HAS_CHARGE:
        pytest.skip("the embedded script twin has no charge/mcharge operations yet")


async def call(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


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


@pytest.mark.parametrize("protocol", [2, 3])
def test_reserve_then_settle_less_and_more(server: Server, key: str, protocol: int) -> None:
    """The corpus's charge-settle, through the API: a refund of what was
    not used, a charge past the limit of what was, never denied."""
    needs_charge(server)
    limiter = RateLimiter(server.client(protocol=protocol))
    started = time.monotonic()
    first = limiter.reserve(key, BUDGET, estimate=4000)
    assert first.decision.allowed and first.decision.remaining == 6000
    assert first.keys == (key,) and first.estimate == 4000 and not first.settled
    less = limiter.settle(first, 3000)
    assert (less.source, less.refunded, less.charged, less.over, less.remaining) == ("redis", 1000, 0, 0, None)
    assert first.settled
    with pytest.raises(RateLimitSettled):
        limiter.settle(first, 3000)
    second = limiter.reserve(key, BUDGET, estimate=4000)
    assert second.decision.remaining == 3000
    more = limiter.settle(second, 9000)
    assert (more.source, more.charged, more.over, more.remaining) == ("redis", 5000, 2000, 0)
    assert more.over_keys == (key,)
    # The oldest entry leaves a window after it was recorded: less the
    # time since, which a loaded machine may stretch past a few ms.
    elapsed_ms = (time.monotonic() - started) * 1000
    assert 60_000 - elapsed_ms - 1 <= more.retry_after_ms <= 60_000
    denied = limiter.check(key, BUDGET)
    assert not denied.allowed
    assert limiter.peek(key, Limit.per_minute(20_000)).remaining == 20_000 - 12_000


def test_settle_the_estimate_or_a_denied_reservation_sends_nothing(server: Server, key: str) -> None:
    needs_charge(server)
    limiter = RateLimiter(server.client())
    exact = limiter.settle(limiter.reserve(key, Limit.per_minute(10), estimate=6), 6)
    assert (exact.source, exact.charged, exact.refunded) == (None, 0, 0)
    denied = limiter.reserve(key, Limit.per_minute(10), estimate=5)
    assert not denied.decision.allowed
    nothing = limiter.settle(denied, 50)
    assert nothing.source is None and nothing.charged == 0
    with pytest.raises(RateLimitSettled):
        limiter.settle(denied, 50)
    assert limiter.peek(key, Limit.per_minute(10)).remaining == 4


def test_reserve_all_and_charge(server: Server, key: str) -> None:
    """Several keys: MCHECK, then MCHARGE (the keys now over named) or
    MUNDO; charge and charge_all directly, above any max."""
    needs_charge(server)
    limiter = RateLimiter(server.client())
    user, tenant = f"{{{key}}}:user", f"{{{key}}}:tenant"
    subjects = {user: Limit.per_minute(5), tenant: Limit.per_minute(100)}
    reservation = limiter.reserve(subjects, estimate=3, per_key_remaining=True)
    assert reservation.decision.allowed and reservation.decision.per_key_remaining == (2, 97)
    settled = limiter.settle(reservation, 7)
    assert (settled.charged, settled.over, settled.remaining, settled.over_keys) == (4, 2, 0, (user,))
    refund = limiter.settle(limiter.reserve({tenant: Limit.per_minute(100)}, estimate=10), 4)
    assert refund.refunded == 6
    direct = limiter.charge(f"{key}:c", Limit.per_minute(5), cost=12)
    assert (direct.over, direct.remaining, direct.over_keys) == (7, 0, (f"{key}:c",))
    both = limiter.charge_all(subjects, cost=1)
    assert both.over_keys == (user,) and both.over == 3
    with pytest.raises(RateLimitInputError, match="actual must be an integer"):
        limiter.settle(limiter.reserve(f"{key}:x", BUDGET, estimate=1), -1)


@pytest.mark.parametrize("protocol", [2, 3])
def test_asyncio_reserve_and_settle(server: Server, key: str, protocol: int) -> None:
    needs_charge(server)

    async def main() -> None:
        client = aioredis.Redis(host="127.0.0.1", port=server.port, protocol=protocol)
        try:
            limiter = AsyncRateLimiter(client)
            reservation = await limiter.reserve(key, Limit(1000, 10), estimate=8)
            assert reservation.decision.remaining == 2
            settled = await limiter.settle(reservation, 13)
            assert (settled.charged, settled.over, settled.remaining) == (5, 3, 0)
            multi = await limiter.reserve({f"{{{key}}}:a": Limit(1000, 5)}, estimate=2)
            assert (await limiter.settle(multi, 0)).refunded == 2
            assert (await limiter.charge_all({f"{{{key}}}:a": Limit(1000, 5)}, cost=6)).over == 1
        finally:
            await client.aclose()

    asyncio.run(main())


def test_a_charge_on_a_bucket_is_wrongtype_and_may_be_settled_again(server: Server, key: str) -> None:
    """The call's own error is raised, and the reservation stays unsettled."""
    needs_charge(server)
    limiter = RateLimiter(server.client())
    reservation = limiter.reserve(key, BUDGET, estimate=1)
    client = server.client()
    client.delete(key)
    client.set(key, "a string")
    with pytest.raises(RateLimitReplyError, match="WRONGTYPE"):
        limiter.settle(reservation, 5)
    assert not reservation.settled
    client.delete(key)
    assert limiter.settle(reservation, 5).charged == 4


# -- the fallback ------------------------------------------------------------


def test_a_reservation_the_fallback_decided_is_settled_there() -> None:
    clock = [1_000_000]
    fallback = Fallback(share=0.5, clock=lambda: clock[0])
    limiter = RateLimiter(redis.Redis(host="127.0.0.1", port=1), fallback=fallback, timeout=0.5)
    reservation = limiter.reserve("k", Limit.per_minute(100), estimate=30)
    assert reservation.decision.source == "fallback" and reservation.decision.remaining == 20
    settled = limiter.settle(reservation, 70)
    assert (settled.source, settled.charged, settled.over, settled.remaining) == ("fallback", 40, 20, 0)
    assert settled.retry_after_ms == 60_000
    again = limiter.reserve("k", Limit.per_minute(100), estimate=1)
    assert not again.decision.allowed
    limiter.settle(again, 0)
    multi = limiter.reserve({"a": Limit.per_minute(100), "b": Limit.per_minute(10)}, estimate=5)
    refund = limiter.settle(multi, 1)
    assert (refund.source, refund.refunded) == ("fallback", 4)
    assert fallback.peek("b", make_call(Limit.per_minute(10))).remaining == 4


def test_a_failure_policy_reservation_is_settled_nowhere() -> None:
    limiter = RateLimiter(redis.Redis(host="127.0.0.1", port=1), fail_open=True, timeout=0.5)
    reservation = limiter.reserve("k", BUDGET, estimate=10)
    assert reservation.decision.source == "fail_open"
    settled = limiter.settle(reservation, 500)
    assert settled.source is None and settled.error is None


# -- Redis down during a settlement ------------------------------------------


def test_a_settlement_is_retried_then_logged_and_raised(
    own_server: Server, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Counting()
    # A client that fails fast (no retries of its own): each attempt is one.
    client = own_server.client(retry=Retry(NoBackoff(), 0))
    limiter = RateLimiter(client, settle_retry=0.6, metrics=metrics)
    reservation = limiter.reserve(key, BUDGET, estimate=100)
    assert reservation.decision.source == "redis"
    own_server.stop()
    caplog.set_level(logging.INFO, "redis_exact_ratelimit")
    started = time.monotonic()
    with pytest.raises(RateLimitUnavailable, match=r"unavailable \(ECONNREFUSED\).* was not recorded"):
        limiter.settle(reservation, 1600)
    took = time.monotonic() - started
    assert 0.55 <= took < 3
    attempts = [trip for trip in metrics.trips if trip == "charge"]
    assert len(attempts) >= 3, metrics.trips
    assert metrics.errors.count("connection") == len(attempts)
    lost = [(r.levelname, r.getMessage()) for r in caplog.records if "could not reach Redis" in r.getMessage()]
    assert lost == [
        (
            "ERROR",
            f"redis-ratelimit: a settlement on {key} (charge of 1500 units) could not reach Redis within 600 ms"
            " (ECONNREFUSED); it was not recorded",
        )
    ]
    with pytest.raises(RateLimitSettled):
        limiter.settle(reservation, 1600)


def test_a_settlement_reaches_redis_once_it_is_back(own_server: Server, key: str) -> None:
    """Redis stopped after the reservation and started again 0.5 s later:
    the settlement's retries reach it, and it records the refund."""
    needs_charge(own_server)
    limiter = RateLimiter(own_server.client(), settle_retry=10)
    limiter.reserve(key, BUDGET, estimate=100)
    reservation = limiter.reserve(key, BUDGET, estimate=100)
    own_server.stop()  # no persistence: the restarted server starts empty
    restart = threading.Timer(0.5, own_server.start)
    restart.start()
    try:
        settled = limiter.settle(reservation, 250)
    finally:
        restart.join()
    assert (settled.source, settled.charged) == ("redis", 150)
    assert limiter.peek(key, BUDGET).remaining == 10_000 - 150


@pytest.mark.parametrize("mode", ["sync", "asyncio"])
def test_with_a_fallback_a_lost_settlement_is_recorded_there(
    own_server: Server, key: str, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """contract/transport.json, settle_fallback: a settlement of a
    reservation Redis made (and a direct charge) that Redis does not
    answer is recorded in the fallback, logged once as such."""

    async def main() -> list[tuple[str | None, int, int]]:
        fallback = Fallback(share=1.0)
        if mode == "sync":
            sync = RateLimiter(own_server.client(retry=Retry(NoBackoff(), 1)), fallback=fallback, settle_retry=0.2)
            limiter: RateLimiter | AsyncRateLimiter = sync
        else:
            client = aioredis.Redis(host="127.0.0.1", port=own_server.port, retry=AsyncRetry(NoBackoff(), 1))
            limiter = AsyncRateLimiter(client, fallback=fallback, settle_retry=0.2)
        more = await call(limiter.reserve(key, BUDGET, estimate=100))
        less = await call(limiter.reserve(key, BUDGET, estimate=100))
        assert more.decision.source == less.decision.source == "redis"
        own_server.stop()
        done = [
            await call(limiter.settle(more, 1600)),
            await call(limiter.settle(less, 40)),
            await call(limiter.charge(key, BUDGET, cost=7)),
        ]
        # In the fallback's window: the charge of 1500, less the refund of 60, and 7.
        assert fallback.peek(key, make_call(BUDGET)).remaining == 10_000 - 1500 + 60 - 7
        return [(one.source, one.charged, one.refunded) for one in done]

    caplog.set_level(logging.INFO, "redis_exact_ratelimit")
    # The refund takes back units of the charge the fallback recorded just before.
    assert asyncio.run(main()) == [("fallback", 1500, 0), ("fallback", 0, 60), ("fallback", 7, 0)]
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if "could not reach Redis" in r.getMessage()]
    tail = "could not reach Redis within 200 ms (ECONNREFUSED); it was recorded in this process's fallback only"
    assert lines == [
        ("WARNING", f"redis-ratelimit: a settlement on {key} ({action}) {tail}")
        for action in ("charge of 1500 units", "refund of 60 units", "charge of 7 units")
    ]


def test_asgi_and_wsgi_take_a_lost_settlement_quietly(own_server: Server, caplog: pytest.LogCaptureFixture) -> None:
    """Redis stops while the response is sent: the settlement after it
    raises RateLimitUnavailable (failing closed), which the middleware
    takes: the response stands, and only settle_lost is logged."""
    name = f"t{uuid.uuid4().hex}"
    caplog.set_level(logging.INFO, "redis_exact_ratelimit")

    async def asgi_app(scope: Scope, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        scope["state"]["tokens"] = 30
        own_server.stop()
        await send({"type": "http.response.body", "body": b"done"})

    async def asgi() -> None:
        # One retry: the connection the server closed is opened again (refused).
        client = aioredis.Redis(host="127.0.0.1", port=own_server.port, retry=AsyncRetry(NoBackoff(), 1))
        limiter = AsyncRateLimiter(client, settle_retry=0.2)
        middleware = ASGIRateLimit(
            asgi_app, limiter=limiter, limits=BUDGET, name=name, cost=100, settle=state_value("tokens")
        )
        sent: list[Message] = []

        async def send(message: Message) -> None:
            sent.append(message)

        async def receive() -> Message:
            return {"type": "http.disconnect"}

        scope: Scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "client": ("10.0.0.9", 1)}
        await middleware(scope, receive, send)
        assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
        await client.aclose()

    asyncio.run(asgi())
    own_server.start()

    def wsgi_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body() -> Iterable[bytes]:
            yield b"done"
            environ["app.tokens"] = 7
            own_server.stop()

        return body()

    limiter = RateLimiter(own_server.client(retry=Retry(NoBackoff(), 1)), settle_retry=0.2)
    middleware = WSGIRateLimit(
        wsgi_app, limiter=limiter, limits=BUDGET, name=name, cost=20, settle=environ_value("app.tokens")
    )
    environ: dict[str, Any] = {"REMOTE_ADDR": "10.0.0.1", "REQUEST_METHOD": "GET", "PATH_INFO": "/"}
    body = middleware(environ, lambda status, headers, exc_info=None: None)  # type: ignore[arg-type]
    assert b"".join(body) == b"done"
    body.close()  # type: ignore[attr-defined]
    server = f"127.0.0.1:{own_server.port}"
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "redis_exact_ratelimit"]
    lines = [line for line in lines if "RATELIMIT module" not in line[1] and "answers again" not in line[1]]
    down = (
        f"redis-ratelimit: Redis at {server} is unavailable (ECONNREFUSED);"
        " failing closed (denying every request) until it answers"
    )
    lost = "could not reach Redis within 200 ms (ECONNREFUSED); it was not recorded"
    assert lines == [
        ("ERROR", down),
        ("ERROR", f"redis-ratelimit: a settlement on {name}:10.0.0.9 (refund of 70 units) {lost}"),
        ("ERROR", down),
        ("ERROR", f"redis-ratelimit: a settlement on {name}:10.0.0.1 (refund of 13 units) {lost}"),
    ]


def test_an_older_module_refuses_charge_and_stays_the_module() -> None:
    """A module without RATELIMIT.CHARGE (0.4) answers "unknown command"
    to it, and to nothing else: the settlement raises (the reservation
    stays unsettled), and the server is never switched to the twin."""

    def older(command: list[str]) -> bytes:
        if command[0] == "RATELIMIT.CHARGE":
            return resp("ERR unknown command 'RATELIMIT.CHARGE', with args beginning with: 'k' '60000' ")
        return resp([1, 5, 0, 0])

    stub = Stub(older)
    try:
        limiter = RateLimiter(redis.Redis(host="127.0.0.1", port=stub.port, protocol=2))
        reservation = limiter.reserve("k", Limit.per_minute(10), estimate=5)
        with pytest.raises(RateLimitReplyError, match="RATELIMIT module is older than this call needs"):
            limiter.settle(reservation, 8)
        assert not reservation.settled
        assert limiter.backend == "module"
        sent = [command[0] for command in stub.received if command[0] != "CLIENT"]
        assert sent == ["RATELIMIT.CHECK", "RATELIMIT.CHARGE", "RATELIMIT.PEEK"]
        assert stub.received[-2][1:] == ["k", "60000", "10", "COST", "3"]
    finally:
        stub.close()


# -- ASGI: a streamed response settled after its end --------------------------


def streaming_app(limiter: AsyncRateLimiter, name: str) -> FastAPI:
    app = FastAPI()
    app.add_middleware(
        ASGIRateLimit,
        limiter=limiter,
        limits=Limit.per_minute(1000),
        key=lambda scope: "caller",
        name=name,
        cost=100,
        settle=state_value("tokens"),
    )

    @app.get("/stream")
    async def stream(request: Request) -> StreamingResponse:
        async def tokens() -> AsyncIterator[bytes]:
            for chunk in range(5):
                yield f"chunk {chunk}\n".encode()
            request.state.tokens = 250  # known once the stream is done

        return StreamingResponse(tokens(), media_type="text/plain")

    @app.get("/plain")
    async def plain(request: Request) -> dict[str, str]:
        request.state.tokens = 40
        return {"ok": "yes"}

    @app.get("/fails")
    async def fails() -> dict[str, str]:
        raise RuntimeError("the handler failed")

    return app


def test_asgi_settles_a_streamed_response_after_its_end(server: Server) -> None:
    needs_charge(server)
    name = f"t{uuid.uuid4().hex}"

    async def main() -> None:
        client = aioredis.Redis(host="127.0.0.1", port=server.port)
        limiter = AsyncRateLimiter(client)
        app = streaming_app(limiter, name)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        used = Limit.per_minute(1000)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                response = await http.get("/stream")
                assert response.text == "".join(f"chunk {i}\n" for i in range(5))
                # The budget as it stood after the reservation of 100.
                assert response.headers["ratelimit"] == f'"{name}";r=900;t=60'
                assert (await limiter.peek(f"{name}:caller", used)).remaining == 750
                response = await http.get("/plain")
                assert response.headers["ratelimit"] == f'"{name}";r=650;t=60'
                assert (await limiter.peek(f"{name}:caller", used)).remaining == 710
                response = await http.get("/fails")
                assert response.status_code == 500
                assert (await limiter.peek(f"{name}:caller", used)).remaining == 710
        finally:
            await client.aclose()

    asyncio.run(main())


def test_asgi_settles_a_cancelled_response_with_what_it_spent(server: Server) -> None:
    """The client goes away mid-stream: the app's task is cancelled, and
    the settlement runs apart with what the app had counted so far."""
    needs_charge(server)
    name = f"t{uuid.uuid4().hex}"

    async def main() -> None:
        client = aioredis.Redis(host="127.0.0.1", port=server.port)
        limiter = AsyncRateLimiter(client)
        streaming = asyncio.Event()

        async def app(scope: Scope, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            scope["state"]["tokens"] = 30
            await send({"type": "http.response.body", "body": b"partial", "more_body": True})
            streaming.set()
            await asyncio.Event().wait()  # the rest never comes

        middleware = ASGIRateLimit(
            app, limiter=limiter, limits=Limit.per_minute(1000), name=name, cost=100, settle=state_value("tokens")
        )
        sent: list[Message] = []

        async def send(message: Message) -> None:
            sent.append(message)

        async def receive() -> Message:
            await asyncio.Event().wait()
            return {"type": "http.disconnect"}

        scope: Scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "client": ("10.0.0.9", 1)}
        task = asyncio.ensure_future(middleware(scope, receive, send))
        await asyncio.wait_for(streaming.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        key = f"{name}:10.0.0.9"
        for _ in range(100):
            if (await limiter.peek(key, Limit.per_minute(1000))).remaining == 970:
                break
            await asyncio.sleep(0.02)
        assert (await limiter.peek(key, Limit.per_minute(1000))).remaining == 970
        await client.aclose()

    asyncio.run(main())


# -- WSGI: settled once the body is closed -----------------------------------


def test_wsgi_settles_once_the_body_is_closed(server: Server) -> None:
    needs_charge(server)
    name = f"t{uuid.uuid4().hex}"
    limiter = RateLimiter(server.client())

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body() -> Iterable[bytes]:
            yield b"one "
            yield b"two"
            environ["app.tokens"] = 7

        return body()

    middleware = WSGIRateLimit(
        app,
        limiter=limiter,
        limits=Limit.per_minute(100),
        name=name,
        cost=20,
        settle=environ_value("app.tokens"),
    )
    statuses: list[str] = []
    environ: dict[str, Any] = {"REMOTE_ADDR": "10.0.0.1", "REQUEST_METHOD": "GET", "PATH_INFO": "/"}
    body = middleware(environ, lambda status, headers, exc_info=None: statuses.append(status))  # type: ignore[arg-type]
    key = f"{name}:10.0.0.1"
    assert b"".join(body) == b"one two"
    assert limiter.peek(key, Limit.per_minute(100)).remaining == 80  # not settled before close
    body.close()  # type: ignore[attr-defined]
    assert limiter.peek(key, Limit.per_minute(100)).remaining == 93


# -- Flask's decorator: settled once the response is closed --------------------


def test_the_flask_decorator_settles_when_the_response_closes(server: Server) -> None:
    """settle= on the decorator: cost reserved before the view, the actual
    settled when the response closes (a streamed one after its last
    chunk); a view that raises is refunded; an HTTP error the rule does not
    refund is settled at once (the estimate, when nothing was reported)."""
    name = f"t{uuid.uuid4().hex}"
    limiter = RateLimiter(server.client())
    app = Flask(__name__)

    def used(req: FlaskRequest) -> int | None:
        value = req.environ.get("app.tokens")
        return None if value is None else int(value)

    limited = rate_limit(limiter, Limit.per_minute(100), name=name, cost=20, settle=used)

    @app.get("/stream")
    @limited
    def stream() -> Response:
        environ = request.environ

        def chunks() -> Iterable[str]:
            yield "one "
            yield "two"
            environ["app.tokens"] = 7

        return Response(chunks(), mimetype="text/plain")

    @app.get("/counted")
    @limited
    def counted() -> str:
        request.environ["app.tokens"] = 3
        return "counted"

    @app.get("/boom")
    @limited
    def boom() -> str:
        raise RuntimeError("the view failed")

    @app.get("/missing")
    @limited
    def missing() -> str:
        abort(404)

    key = f"{name}:127.0.0.1"

    def remaining() -> int:
        return limiter.peek(key, Limit.per_minute(100)).remaining

    http = app.test_client()
    streamed = http.get("/stream")
    assert streamed.headers["RateLimit"].startswith(f'"{name}";r=80;')
    assert streamed.get_data() == b"one two"
    assert remaining() == 80  # not settled before the response closes
    streamed.close()
    assert remaining() == 93
    with http.get("/counted") as response:
        assert response.status_code == 200
    assert remaining() == 90
    with http.get("/boom") as response:
        assert response.status_code == 500
    assert remaining() == 90
    with http.get("/missing") as response:
        assert response.status_code == 404
    assert remaining() == 70


def test_the_flask_decorator_settles_under_a_real_server(server: Server) -> None:
    """The same under Werkzeug's threaded server (another process): a
    streamed response settled once the server has sent and closed it."""
    app = serve_wsgi("flask_full:app", server.port)
    user = uuid.uuid4().hex
    limiter = RateLimiter(server.client())
    try:
        with httpx.Client(base_url=app.url, headers={"X-User": user}) as http:
            streamed = http.get("/decstream", params={"tokens": "7"})
            assert streamed.status_code == 200 and streamed.text == "one two\n"
            assert streamed.headers["RateLimit"].startswith('"decstream";r=80;')
    finally:
        done = eventually(lambda: limiter.peek(f"decstream:{user}", Limit.per_minute(100)).remaining == 93)
        app.stop()
    assert done


# -- the twin settles as the module does --------------------------------------


def test_the_twin_settles_as_the_module(module_server: Server, twin_server: Server) -> None:
    """One sequence of reservations, settlements and charges on a server
    with the module and on one without: the same answers, call by call
    (waits within the ms the two servers' calls lie apart)."""
    needs_charge(twin_server)
    run = uuid.uuid4().hex
    one, a, b = f"{run}:one", f"{{{run}}}:a", f"{{{run}}}:b"
    keyed: dict[str, Limits] = {a: [Limit(1000, 5), Limit(60_000, 8)], b: Limit(60_000, 100)}
    answers: list[list[Any]] = []
    waits: list[list[int]] = []
    for server in (module_server, twin_server):
        limiter = RateLimiter(server.client())
        seen: list[Any] = []
        waited: list[int] = []
        for estimate, actual in ((4, 2), (3, 9), (1, 1), (2, 0)):
            reservation = limiter.reserve(one, [Limit(1000, 5), Limit(60_000, 10)], estimate=estimate)
            settled = limiter.settle(reservation, actual)
            seen.append((reservation.decision.allowed, reservation.decision.remaining))
            seen.append((settled.source, settled.charged, settled.refunded, settled.over, settled.remaining))
            waited.append(settled.retry_after_ms)
        multi = limiter.reserve(keyed, estimate=2)
        settled = limiter.settle(multi, 10)
        seen.append((settled.charged, settled.over, settled.remaining, settled.over_keys))
        waited.append(settled.retry_after_ms)
        charged = limiter.charge(one, Limit(60_000, 3), cost=20, precision=100)
        seen.append((charged.over, charged.remaining))
        waited += [charged.retry_after_ms, charged.reset_after_ms or 0]
        answers.append(seen)
        waits.append(waited)
        assert limiter.backend == ("module" if server.module else "twin")
    assert answers[0] == answers[1]
    assert all(abs(m - t) <= 1000 for m, t in zip(*waits, strict=True)), waits
