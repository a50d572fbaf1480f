"""The limiter options the test apps read from their environment, so one
app file serves every scenario (module or twin, failure policies)."""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry

from redis_exact_ratelimit import Fallback, GcraLimit, Limit, Limits
from redis_exact_ratelimit.prometheus import PrometheusMetrics

# The app's metrics, served at /metrics.
REGISTRY = CollectorRegistry()

# The token bucket of both apps' middleware (/gmw/*): 4 tokens, 1 a minute.
BUCKET = GcraLimit(3, 1, 60_000)
# Per route (FastAPI's dependency, Flask's decorator): 2 tokens, 1 a
# minute, the policy named by the limit.
ROUTE_BUCKET = GcraLimit(1, 1, 60_000, name="bucket")


def limiter_options() -> dict[str, Any]:
    share = os.environ.get("FALLBACK_SHARE")
    return {
        "timeout": float(os.environ.get("LIMITER_TIMEOUT", "1.0")),
        "fail_open": os.environ.get("FAIL_OPEN") == "1",
        "fallback": Fallback(float(share)) if share else None,
        "retry_after_failure": float(os.environ.get("RETRY_AFTER_FAILURE", "0.5")),
        "metrics": PrometheusMetrics(REGISTRY),
    }


def redis_options(*, asyncio: bool = False) -> dict[str, Any]:
    """A client that fails fast while Redis is away (the limiter's timeout
    bounds each call anyway): one immediate retry, which opens again a
    connection the server closed."""
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    retry = AsyncRetry(NoBackoff(), 1) if asyncio else Retry(NoBackoff(), 1)
    return {"socket_connect_timeout": 0.5, "socket_timeout": 1.0, "retry": retry}


def user_then_ip(user: str, ip: str) -> dict[str, Limits]:
    """The per-route several-keys limit of both apps: the user (2 a minute)
    and the address (4 a minute)."""
    return {f"user:{user}": Limit.per_minute(2, name="user"), f"ip:{ip}": Limit.per_minute(4, name="ip")}


def user_and_tenant(user: str, tenant: str) -> dict[str, Limits]:
    """The several-keys limit whose binding policy the headers name: each
    user 3 a minute, the tenant 3 a minute."""
    tag = "{" + tenant + "}"
    return {
        f"{tag}:user:{user}": Limit.per_minute(3, name="user"),
        f"{tag}:tenant": Limit.per_minute(3, name="tenant"),
    }
