"""The limiter options the test apps read from their environment, so one
app file serves every scenario (module or twin, failure policies)."""

from __future__ import annotations

import os
from typing import Any

from redis_exact_ratelimit import Fallback


def limiter_options() -> dict[str, Any]:
    share = os.environ.get("FALLBACK_SHARE")
    return {
        "timeout": float(os.environ.get("LIMITER_TIMEOUT", "1.0")),
        "fail_open": os.environ.get("FAIL_OPEN") == "1",
        "fallback": Fallback(float(share)) if share else None,
        "retry_after_failure": float(os.environ.get("RETRY_AFTER_FAILURE", "0.5")),
    }


def redis_options() -> dict[str, Any]:
    """A client that fails fast while Redis is away (the limiter's timeout
    bounds each call anyway)."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return {"socket_connect_timeout": 0.5, "socket_timeout": 1.0, "retry": Retry(NoBackoff(), 0)}
