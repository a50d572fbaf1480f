"""A user's code, type-checked with mypy --strict against the installed
wheel (make lint): every public name used as the README shows it. Not run."""

from __future__ import annotations

import redis
import redis.asyncio as aioredis
from fastapi import Depends, FastAPI, Request
from flask import Flask
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from redis_exact_ratelimit import (
    AsyncRateLimiter,
    CallTimeout,
    Decision,
    Fallback,
    Limit,
    RateLimiter,
    RateLimitInputError,
    RateLimitReplyError,
    Source,
    Verdict,
)
from redis_exact_ratelimit.asgi import RateLimitMiddleware as ASGIRateLimit
from redis_exact_ratelimit.asgi import Scope, header_key
from redis_exact_ratelimit.fastapi import RateLimit
from redis_exact_ratelimit.flask import rate_limit
from redis_exact_ratelimit.wsgi import RateLimitMiddleware as WSGIRateLimit


def sync_usage() -> tuple[bool, int, int, int]:
    limiter = RateLimiter(redis.Redis(), timeout=0.1, fallback=Fallback(share=0.25))
    decision: Decision = limiter.check("user:42", [Limit(1000, 10), Limit.per_hour(1000)], cost=2, precision=10)
    source: Source = decision.source
    assert source in ("redis", "fallback", "fail_open", "fail_closed")
    refunded: int = limiter.undo("user:42", 2, decision=decision)
    peeked = limiter.peek("user:42", Limit.per_second(10))
    print(refunded, limiter.backend, dict(limiter.backends))
    return peeked.allowed, peeked.remaining, peeked.retry_after_ms, peeked.reset_after_ms


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

    return app
