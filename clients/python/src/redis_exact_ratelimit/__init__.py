"""Exact sliding-window rate limiting on Redis and Valkey, and a token
bucket (GCRA).

Decides in Redis with the redis-ratelimit module (RATELIMIT.CHECK, PEEK,
UNDO, MCHECK ..., GCRA; CHARGE for token budgets: reserve, then settle)
where a server has it, and with its Lua twin where it does not, learned
per server from the server's own answer. Sync and asyncio, standalone and
cluster; an explicit failure policy; middleware in
:mod:`redis_exact_ratelimit.asgi` (FastAPI: also
:mod:`redis_exact_ratelimit.fastapi`), :mod:`redis_exact_ratelimit.wsgi`
(Flask: also :mod:`redis_exact_ratelimit.flask`) and
:mod:`redis_exact_ratelimit.django`; Prometheus metrics in
:mod:`redis_exact_ratelimit.prometheus`."""

from ._core import (
    Decision,
    GcraDecision,
    GcraLimit,
    Limit,
    Limits,
    MultiDecision,
    RateLimitInputError,
    RateLimitReplyError,
    RateLimitSettled,
    RateLimitUnavailable,
    Reservation,
    Settlement,
    Source,
)
from ._fallback import Fallback
from ._http import Verdict
from .asyncio import AsyncRateLimiter
from .client import CallTimeout, RateLimiter

__all__ = [
    "AsyncRateLimiter",
    "CallTimeout",
    "Decision",
    "Fallback",
    "GcraDecision",
    "GcraLimit",
    "Limit",
    "Limits",
    "MultiDecision",
    "RateLimitInputError",
    "RateLimitReplyError",
    "RateLimitSettled",
    "RateLimitUnavailable",
    "RateLimiter",
    "Reservation",
    "Settlement",
    "Source",
    "Verdict",
]
