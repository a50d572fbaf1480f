"""Prometheus metrics (``pip install "redis-exact-ratelimit[prometheus]"``):

    from prometheus_client import REGISTRY
    limiter = AsyncRateLimiter(client, metrics=PrometheusMetrics(REGISTRY))

- ``ratelimit_decisions_total{policy, outcome}``: requests decided by the
  middleware, by the binding policy's name (as in ``RateLimit``) and the
  outcome (``allowed``, ``denied``, ``shadow_denied``, ``fallback_allowed``,
  ``fallback_denied``, ``fail_open``, ``fail_closed``);
- ``ratelimit_errors_total{cause}``: errors met on Redis calls
  (``timeout``, ``connection``, ``noperm``, ``busy``, ``oom``, ``loading``,
  ``readonly``, ``cluster``, ``reply``, ``other``);
- ``ratelimit_redis_duration_seconds{operation}``: each Redis round trip
  (``check``, ``peek``, ``undo``, ``mcheck``, ``mpeek``, ``mundo``,
  ``unblock``, ``gcra``, ``charge``, ``mcharge``), answered or failed.

No label holds a key: the series stay as few as the policies."""

from __future__ import annotations

from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Histogram

from ._core import Operation
from ._metrics import Outcome
from ._transport import ErrorCause

# A round trip to Redis takes from a tenth of a millisecond (same host)
# to the limiter's timeout (250 ms by default).
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class PrometheusMetrics:
    """The package's metrics, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._decisions = Counter(
            "ratelimit_decisions",
            "Requests decided by the rate-limit middleware, by binding policy and outcome.",
            ["policy", "outcome"],
            registry=registry,
        )
        self._errors = Counter(
            "ratelimit_errors", "Errors met on Redis calls by the rate limiter, by cause.", ["cause"], registry=registry
        )
        self._durations = Histogram(
            "ratelimit_redis_duration_seconds",
            "Redis round trips of the rate limiter, by operation.",
            ["operation"],
            buckets=BUCKETS,
            registry=registry,
        )
        # Every cause shows from the start, so a rate over it starts at 0.
        for cause in get_args(ErrorCause):
            self._errors.labels(cause)

    def decision(self, policy: str, outcome: Outcome) -> None:
        self._decisions.labels(policy, outcome).inc()

    def error(self, cause: ErrorCause) -> None:
        self._errors.labels(cause).inc()

    def round_trip(self, operation: Operation, seconds: float) -> None:
        self._durations.labels(operation).observe(seconds)
