"""Django middleware, configured from settings:

    MIDDLEWARE = [..., "redis_exact_ratelimit.django.RateLimitMiddleware"]
    REDIS_RATELIMIT = {"url": "redis://localhost:6379", "limits": Limit.per_minute(100)}

One CHECK per request (one MCHECK over several keys with ``keys``, one
GCRA with a token bucket, ``gcra``), the
IETF RateLimit fields, 429 with Retry-After (503 when Redis is unreachable
and failing closed), a refund when the response has a refunded status (a
view that raises answers 500 by then: refunded by default), a hook for the
refusal, and shadow mode. With ``settle``, token budgets: ``cost`` is
reserved before the view runs, and the actual cost settled once Django
closes the response (a ``StreamingHttpResponse``: after its last chunk).
Key, cost and settle functions receive the ``HttpRequest``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import redis
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse

from ._http import ActualResult, Route, Verdict, check_subjects
from .client import RateLimiter
from .wsgi import Finish, judge

# The options of REDIS_RATELIMIT: where Redis is, then the middleware's
# (as in redis_exact_ratelimit.wsgi), then the limiter's.
_REDIS = ("url", "client")
_ROUTE = ("limits", "key", "keys", "name", "cost", "refund_when", "block_ms", "shadow", "gcra", "settle")
_HOOK = ("on_limited",)
_LIMITER = ("prefix", "timeout", "fail_open", "fallback", "retry_after_failure", "metrics")

SettleFunction = Callable[[HttpRequest], ActualResult]
"""The request's actual cost, read once the response has been closed: an
integer, or None to keep the estimate (e.g. what the view, or its
streamed body, stored as ``request.META["app.tokens"]``)."""

LimitedHook = Callable[[HttpRequest, Verdict], HttpResponse]
"""Makes the refusal (default: a plain-text 429 or 503); the verdict's
headers are added unless it sets them itself."""


def client_address(request: HttpRequest) -> str | None:
    """The default key: the peer's address (behind a proxy, give a key
    function that reads the header your proxy sets)."""
    address = request.META.get("REMOTE_ADDR")
    return str(address) if address else None


class RateLimitMiddleware:
    """Limits every request as ``settings.REDIS_RATELIMIT`` says: ``url``
    (or ``client``, a ``redis.Redis`` or ``RedisCluster``); ``limits`` and
    ``key``, or ``keys``, or ``gcra`` (a token bucket) and ``key``; and any option of the WSGI middleware (``name``,
    ``cost``, ``refund_when``, ``block_ms``, ``shadow``, ``on_limited``,
    ``settle``: a :data:`SettleFunction`)
    or of the limiter (``prefix``, ``timeout``, ``fail_open``,
    ``fallback``, ``retry_after_failure``, ``metrics``)."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        config = _settings()
        route = {name: config[name] for name in _ROUTE if name in config}
        check_subjects(route.get("limits"), route.get("key"), route.get("keys"), route.get("gcra"))
        self.key = route.pop("key", None) or client_address
        self.route = Route(route.pop("limits", None), **route)
        self.on_limited: LimitedHook | None = config.get("on_limited")
        options = {name: config[name] for name in _LIMITER if name in config}
        self.limiter = RateLimiter(_client(config), **options)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        verdict = judge(self.limiter, self.route, self.key, request)
        if verdict is None:
            return self.get_response(request)
        if not verdict.passed:
            refusal = self.on_limited(request, verdict) if self.on_limited else _plain(verdict)
            return _with_headers(refusal, verdict)
        once = Finish(self.limiter, verdict, self.route, request)
        response = self.get_response(request)
        if self.route.refund_when(response.status_code):
            once()
        elif once.reserved:
            # Run by response.close(), which the server calls once the
            # response is sent (a streamed one: after its last chunk), as
            # Django's handler closes the request; the request_finished
            # signal would not say which request finished.
            response._resource_closers.append(once.settle)  # type: ignore[attr-defined]
        return _with_headers(response, verdict)


def _settings() -> Mapping[str, Any]:
    config = getattr(settings, "REDIS_RATELIMIT", None)
    if not isinstance(config, Mapping):
        raise ImproperlyConfigured('set REDIS_RATELIMIT = {"url": ..., "limits": ...} in your settings')
    known = (*_REDIS, *_ROUTE, *_HOOK, *_LIMITER)
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise ImproperlyConfigured(f"REDIS_RATELIMIT has unknown options {unknown}; it takes {', '.join(known)}")
    if ("url" in config) == ("client" in config):
        raise ImproperlyConfigured("REDIS_RATELIMIT takes one of url (a redis:// URL) and client (a redis.Redis)")
    return config


def _client(config: Mapping[str, Any]) -> Any:
    return config["client"] if "client" in config else redis.Redis.from_url(config["url"])


def _plain(verdict: Verdict) -> HttpResponse:
    return HttpResponse(verdict.body, status=verdict.status, content_type="text/plain; charset=utf-8")


def _with_headers(response: HttpResponse, verdict: Verdict) -> HttpResponse:
    for name, value in verdict.headers.items():
        response.headers.setdefault(name, value)
    return response
