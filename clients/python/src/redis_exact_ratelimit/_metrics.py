"""What the limiter and the middleware report to a metrics backend (see
:mod:`redis_exact_ratelimit.prometheus`); nothing unless one is given."""

from __future__ import annotations

from typing import Literal, Protocol

from ._core import Operation
from ._transport import ErrorCause

Outcome = Literal[
    "allowed", "denied", "shadow_denied", "fallback_allowed", "fallback_denied", "fail_open", "fail_closed"
]
"""How a request was decided (``ratelimit_decisions_total{outcome}``)."""


class Metrics(Protocol):
    def decision(self, policy: str, outcome: Outcome) -> None:
        """One request decided by a middleware, under its binding policy."""

    def error(self, cause: ErrorCause) -> None:
        """One error met on a Redis call."""

    def round_trip(self, operation: Operation, seconds: float) -> None:
        """One Redis round trip, answered or failed."""


class NoMetrics:
    """The default: reports go nowhere."""

    def decision(self, policy: str, outcome: Outcome) -> None:
        pass

    def error(self, cause: ErrorCause) -> None:
        pass

    def round_trip(self, operation: Operation, seconds: float) -> None:
        pass
