"""A user's code, type-checked with mypy --strict against the installed
wheel (make lint): every public name used as the README shows it. Not run."""

from __future__ import annotations

from collections.abc import Callable

import redis
import redis.asyncio as aioredis
from django.http import HttpRequest, HttpResponse
from fastapi import Depends, FastAPI, Request
from flask import Flask
from flask import Request as FlaskRequest
from prometheus_client import CollectorRegistry
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from redis_exact_ratelimit import (
    AsyncRateLimiter,
    CallTimeout,
    Decision,
    Fallback,
    GcraDecision,
    GcraLimit,
    Limit,
    Limits,
    MultiDecision,
    RateLimiter,
    RateLimitInputError,
    RateLimitReplyError,
    RateLimitSettled,
    RateLimitUnavailable,
    Reservation,
    Settlement,
    Source,
    Verdict,
)
from redis_exact_ratelimit.asgi import RateLimitMiddleware as ASGIRateLimit
from redis_exact_ratelimit.asgi import Scope, header_key, state_value
from redis_exact_ratelimit.django import RateLimitMiddleware as DjangoRateLimit
from redis_exact_ratelimit.django import SettleFunction as DjangoSettle
from redis_exact_ratelimit.fastapi import RateLimit
from redis_exact_ratelimit.flask import rate_limit
from redis_exact_ratelimit.prometheus import PrometheusMetrics
from redis_exact_ratelimit.wsgi import RateLimitMiddleware as WSGIRateLimit
from redis_exact_ratelimit.wsgi import environ_value


def sync_usage() -> tuple[bool, int, int, int]:
    limiter = RateLimiter(redis.Redis(), timeout=0.1, fallback=Fallback(share=0.25))
    decision: Decision = limiter.check("user:42", [Limit(1000, 10), Limit.per_hour(1000)], cost=2, precision=10)
    source: Source = decision.source
    assert source in ("redis", "fallback", "fail_open", "fail_closed")
    refunded: int = limiter.undo("user:42", 2, decision=decision)
    peeked = limiter.peek("user:42", Limit.per_second(10))
    print(refunded, limiter.backend, dict(limiter.backends))
    return peeked.allowed, peeked.remaining, peeked.retry_after_ms, peeked.reset_after_ms


def several_keys_usage(user_id: int, ip: str) -> tuple[str, ...]:
    limiter = RateLimiter(redis.Redis())
    subjects: dict[str, Limits] = {
        f"{{tenant:7}}:user:{user_id}": Limit.per_minute(100),
        f"{{tenant:7}}:ip:{ip}": [Limit.per_second(10), Limit.per_minute(300)],
    }
    decision: MultiDecision = limiter.check_all(subjects, cost=1, block_ms=60_000)
    if decision.allowed:
        refunded: dict[str, int] = limiter.undo_all(subjects, decision=decision)
        print(refunded, limiter.peek_all(subjects).remaining)
    return decision.denied_keys + tuple(str(p) for p in decision.denied_positions)


def block_usage(username: str) -> bool:
    limiter = RateLimiter(redis.Redis())
    decision: Decision = limiter.check(f"login:{username}", Limit(15 * 60_000, 5), block_ms=3_600_000)
    try:
        lifted: bool = limiter.unblock(f"login:{username}")
    except RateLimitUnavailable:
        lifted = False
    return decision.allowed or lifted


async def async_several_keys_usage() -> bool:
    limiter = AsyncRateLimiter(aioredis.Redis())
    subjects = {"{t:7}:user:42": Limit.per_minute(100), "{t:7}:all": Limit.per_minute(5000)}
    decision = await limiter.check_all(subjects, block_ms=1000)
    await limiter.peek_all(subjects)
    await limiter.undo_all(list(subjects), 1)
    return decision.allowed and await limiter.unblock("{t:7}:user:42")


def cluster_usage() -> bool:
    limiter = RateLimiter(RedisCluster(host="127.0.0.1", port=30001), fail_open=True)
    try:
        return limiter.check("user:42", Limit.per_minute(5)).allowed
    except (RateLimitInputError, RateLimitReplyError, CallTimeout):
        return False


async def async_usage() -> int:
    limiter = AsyncRateLimiter(aioredis.Redis(), retry_after_failure=2.0)
    cluster = AsyncRateLimiter(AsyncRedisCluster(host="127.0.0.1", port=30001))
    first = await limiter.check("user:42", Limit.per_minute(5))
    second = await cluster.peek("user:42", Limit.per_minute(5))
    return first.remaining + second.remaining + await limiter.undo("user:42")


def fastapi_usage() -> FastAPI:
    limiter = AsyncRateLimiter(aioredis.Redis())

    def by_api_key(request: Request) -> str | None:
        return request.headers.get("x-api-key")

    def per_path(scope: Scope) -> Limit | None:
        return None if scope["path"] == "/health" else Limit.per_minute(100)

    app = FastAPI()
    app.add_middleware(ASGIRateLimit, limiter=limiter, limits=per_path, key=header_key("x-api-key"))
    strict = RateLimit(limiter, Limit.per_minute(5), key=by_api_key, name="search")

    def user_and_ip(request: Request) -> dict[str, Limits] | None:
        user = request.headers.get("x-user")
        if user is None or request.client is None:
            return None
        return {f"user:{user}": Limit.per_minute(100, name="user"), f"ip:{request.client.host}": Limit.per_minute(300)}

    async def scope_keys(scope: Scope) -> dict[str, Limits]:
        return {"{t}:a": Limit.per_minute(1), "{t}:b": Limit.per_minute(2)}

    app.add_middleware(ASGIRateLimit, limiter=limiter, keys=scope_keys, name="multi", block_ms=60_000)
    both = RateLimit(limiter, keys=user_and_ip, name="both", block_ms=60_000)

    @app.get("/both", dependencies=[Depends(both)])
    async def both_route() -> dict[str, str]:
        return {}

    @app.get("/search", dependencies=[Depends(strict)])
    async def search() -> dict[str, str]:
        return {}

    return app


def flask_usage() -> Flask:
    limiter = RateLimiter(redis.Redis())

    def on_limited(verdict: Verdict) -> tuple[dict[str, int], int]:
        return {"retry_after_ms": verdict.decision.retry_after_ms}, verdict.status

    app = Flask(__name__)
    app.wsgi_app = WSGIRateLimit(app.wsgi_app, limiter=limiter, limits=Limit.per_minute(100))  # type: ignore[method-assign]

    @app.get("/search")
    @rate_limit(limiter, Limit.per_minute(5), on_limited=on_limited)
    def search() -> dict[str, str]:
        return {}

    @app.post("/login")
    @rate_limit(limiter, Limit(15 * 60_000, 5), key=lambda r: r.form.get("user"), block_ms=3_600_000)
    def login() -> dict[str, str]:
        return {}

    @app.get("/both")
    @rate_limit(limiter, keys=lambda r: {f"user:{r.headers.get('X-User')}": Limit.per_minute(10)}, name="both")
    def both() -> dict[str, str]:
        return {}

    return app


def lockout_usage(username: str) -> bool:
    limiter = RateLimiter(redis.Redis(), fallback=Fallback(share=0.5, max_keys=1000))
    return limiter.unblock(f"login:{username}", reset=True)


async def async_lockout_usage(username: str) -> bool:
    limiter = AsyncRateLimiter(aioredis.Redis())
    return await limiter.unblock(f"login:{username}", reset=True)


def per_key_usage() -> tuple[int, ...]:
    limiter = RateLimiter(redis.Redis())
    subjects: dict[str, Limits] = {"{t:7}:user:42": Limit.per_minute(100), "{t:7}:all": Limit.per_minute(5000)}
    return limiter.check_all(subjects, per_key_remaining=True).per_key_remaining


def shadow_and_metrics_usage() -> FastAPI:
    registry = CollectorRegistry()
    limiter = AsyncRateLimiter(aioredis.Redis(), metrics=PrometheusMetrics(registry))
    app = FastAPI()
    app.add_middleware(ASGIRateLimit, limiter=limiter, limits=Limit.per_minute(10), name="api", shadow=True)
    strict = RateLimit(limiter, Limit.per_minute(5), name="search", shadow=True)

    @app.get("/search", dependencies=[Depends(strict)])
    async def search() -> dict[str, str]:
        return {}

    return app


def flask_shadow_usage() -> Flask:
    limiter = RateLimiter(redis.Redis(), metrics=PrometheusMetrics(CollectorRegistry()))
    app = Flask(__name__)
    app.wsgi_app = WSGIRateLimit(app.wsgi_app, limiter=limiter, limits=Limit.per_minute(100), shadow=True)  # type: ignore[method-assign]

    @app.get("/search")
    @rate_limit(limiter, Limit.per_minute(5), shadow=True)
    def search() -> dict[str, str]:
        return {}

    return app


def django_usage(get_response: Callable[[HttpRequest], HttpResponse]) -> HttpResponse:
    middleware = DjangoRateLimit(get_response)  # configured by settings.REDIS_RATELIMIT
    return middleware(HttpRequest())


def gcra_usage() -> tuple[bool, int, int, int, int, str | None]:
    limiter = RateLimiter(redis.Redis(), fallback=Fallback(share=0.5))
    limit = GcraLimit(max_burst=15, count=30, period_ms=60_000, name="uploads")
    decision: GcraDecision = limiter.gcra("uploads:42", limit, tokens=3)
    asked = limiter.gcra("uploads:42", limit, 0)
    source: Source = decision.source
    print(limit.burst, limit.period_seconds, source, decision.error, asked.remaining)
    backend: str | None = decision.backend
    return (
        decision.allowed,
        decision.burst,
        decision.remaining,
        decision.retry_after_ms,
        decision.reset_after_ms,
        backend,
    )


async def async_gcra_usage() -> bool:
    limiter = AsyncRateLimiter(aioredis.Redis())
    return (await limiter.gcra("k", GcraLimit(0, 1, 1000))).allowed


def gcra_middleware_usage() -> tuple[FastAPI, Flask]:
    alimiter = AsyncRateLimiter(aioredis.Redis())
    api = FastAPI()
    api.add_middleware(ASGIRateLimit, limiter=alimiter, gcra=GcraLimit(19, 10, 1000), name="api", shadow=True)

    def tokens(request: Request) -> int:
        return int(request.headers.get("x-tokens", 1))

    bucket = RateLimit(alimiter, gcra=GcraLimit(1, 1, 60_000, name="bucket"), cost=tokens)

    @api.get("/upload", dependencies=[Depends(bucket)])
    async def upload() -> dict[str, str]:
        return {}

    limiter = RateLimiter(redis.Redis())
    app = Flask(__name__)
    app.wsgi_app = WSGIRateLimit(app.wsgi_app, limiter=limiter, gcra=GcraLimit(19, 10, 1000), cost=lambda e: 2)  # type: ignore[method-assign]

    def on_limited(verdict: Verdict) -> tuple[dict[str, int], int]:
        return {"retry_after_ms": verdict.decision.retry_after_ms}, verdict.status

    @app.get("/upload")
    @rate_limit(limiter, gcra=GcraLimit(1, 1, 60_000), on_limited=on_limited)
    def flask_upload() -> dict[str, str]:
        return {}

    return api, app


def token_budget_usage(prompt_tokens: int) -> tuple[int, int | None, tuple[str, ...], float | None]:
    limiter = RateLimiter(redis.Redis(), settle_retry=3.0)
    budget = Limit.per_minute(10_000, name="tokens")
    reservation: Reservation[Decision] = limiter.reserve("tokens:acme", budget, estimate=2000)
    if not reservation.decision.allowed:
        return 0, None, (), reservation.decision.retry_after_ms / 1000
    settled: Settlement = limiter.settle(reservation, prompt_tokens + 1500)
    try:
        limiter.settle(reservation, 1)
    except RateLimitSettled as twice:
        print(twice)
    several = limiter.reserve({"{acme}:user": budget, "{acme}:org": Limit.per_hour(500_000)}, estimate=100)
    denied: tuple[str, ...] = several.decision.denied_keys
    over = limiter.charge_all({"{acme}:user": budget}, cost=5).over_keys
    direct = limiter.charge("tokens:acme", budget, cost=50_000, precision=1000)
    return settled.over + direct.over, settled.remaining, denied + over, None


async def async_token_budget_usage() -> bool:
    limiter = AsyncRateLimiter(aioredis.Redis())
    reservation = await limiter.reserve("tokens:acme", Limit.per_minute(10_000), estimate=2000)
    settled = await limiter.settle(reservation, 1200)
    multi: Reservation[MultiDecision] = await limiter.reserve({"a": Limit.per_minute(5)}, estimate=1)
    await limiter.settle(multi, 3)
    charged = await limiter.charge("tokens:acme", Limit.per_minute(10_000), cost=1)
    return settled.source == "redis" and settled.error is None and charged.over == 0


def token_budget_middleware_usage() -> tuple[FastAPI, Flask]:
    alimiter = AsyncRateLimiter(aioredis.Redis())
    api = FastAPI()

    def estimate(scope: Scope) -> int:
        return 2000

    async def actual(scope: Scope) -> int | None:
        return state_value("tokens")(scope)

    api.add_middleware(
        ASGIRateLimit, limiter=alimiter, limits=Limit.per_minute(100_000), cost=estimate, settle=actual, name="llm"
    )
    api.add_middleware(ASGIRateLimit, limiter=alimiter, limits=Limit.per_minute(100_000), settle=state_value("t"))

    @api.post("/complete")
    async def complete(request: Request) -> dict[str, str]:
        request.state.tokens = 1234
        return {}

    limiter = RateLimiter(redis.Redis())
    app = Flask(__name__)
    app.wsgi_app = WSGIRateLimit(  # type: ignore[method-assign]
        app.wsgi_app, limiter=limiter, limits=Limit.per_minute(100_000), cost=500, settle=environ_value("app.tokens")
    )

    def used_tokens(req: FlaskRequest) -> int | None:
        tokens = req.environ.get("app.tokens")
        return None if tokens is None else int(tokens)

    def flask_estimate(req: FlaskRequest) -> int:
        return 2000

    @app.post("/complete")
    @rate_limit(limiter, Limit.per_minute(100_000), cost=flask_estimate, settle=used_tokens)
    def flask_complete() -> str:
        return "done"

    @app.post("/bucket")
    @rate_limit(limiter, gcra=GcraLimit(9, 1, 1000), cost=3, settle=lambda req: None)
    def flask_bucket() -> str:
        return "done"

    return api, app


def django_settle_usage() -> dict[str, object]:
    settle: DjangoSettle = lambda request: int(request.META.get("app.tokens", 0))  # noqa: E731
    return {"url": "redis://localhost:6379", "limits": Limit.per_minute(100_000), "cost": 2000, "settle": settle}


def gcra_budget_usage(used: int) -> tuple[int, int | None, bool]:
    """Token budgets over a token bucket: reserve, settle, charge, refund."""
    limiter = RateLimiter(redis.Redis())
    bucket = GcraLimit(max_burst=9_999, count=10_000, period_ms=60_000, name="tokens")
    reservation: Reservation[GcraDecision] = limiter.reserve("tokens:acme", bucket, estimate=2000)
    decision: GcraDecision = reservation.decision
    if not decision.allowed:
        return 0, None, False
    settled: Settlement = limiter.settle(reservation, used)
    charged: Settlement = limiter.gcra_charge("tokens:acme", bucket, tokens=500)
    refunded: Settlement = limiter.gcra_refund("tokens:acme", bucket, 100)
    again = limiter.reserve("tokens:acme", bucket, estimate=1)
    limit: GcraLimit | None = again.gcra
    return settled.over + charged.over, refunded.remaining, limit is not None and again.decision.burst == 10_000


async def async_gcra_budget_usage() -> bool:
    limiter = AsyncRateLimiter(aioredis.Redis())
    bucket = GcraLimit(19, 10, 1000)
    reservation = await limiter.reserve("k", bucket, estimate=5)
    settled = await limiter.settle(reservation, 8)
    await limiter.gcra_refund("k", bucket, tokens=2)
    charged = await limiter.gcra_charge("k", bucket)
    return reservation.decision.burst == 20 and settled.source == "redis" and charged.over >= 0


def gcra_budget_middleware_usage() -> tuple[FastAPI, Flask]:
    alimiter = AsyncRateLimiter(aioredis.Redis())
    api = FastAPI()
    api.add_middleware(
        ASGIRateLimit, limiter=alimiter, gcra=GcraLimit(9_999, 10_000, 60_000), cost=2000, settle=state_value("tokens")
    )
    limiter = RateLimiter(redis.Redis())
    app = Flask(__name__)
    app.wsgi_app = WSGIRateLimit(  # type: ignore[method-assign]
        app.wsgi_app, limiter=limiter, gcra=GcraLimit(9, 1, 1000), cost=3, settle=environ_value("app.tokens")
    )
    return api, app
