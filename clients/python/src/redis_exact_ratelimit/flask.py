"""A Flask decorator for per-route limits:

    @app.get("/search")
    @rate_limit(limiter, Limit.per_minute(10))
    def search(): ...

Sets the IETF RateLimit fields on the route's response, answers 429 (503
when Redis is unreachable and failing closed) with Retry-After, and
refunds the request when the view raises or its response has a refunded
status (default: 500 and above). With ``settle=``, token budgets: ``cost``
is reserved before the view runs, and the actual cost settled once the
response has been closed (after a streamed body's last chunk too)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

from flask import Request, Response, make_response, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from ._core import GcraLimit, Limits
from ._http import ActualResult, KeysResult, Route, Verdict, check_subjects, server_error
from .client import RateLimiter
from .wsgi import Finish, judge

View = TypeVar("View", bound=Callable[..., ResponseReturnValue])

KeyFunction = Callable[[Request], "str | None"]

KeysFunction = Callable[[Request], KeysResult]
"""Several keys, each with its limits, decided together; None skips the request."""

SettleFunction = Callable[[Request], ActualResult]
"""The request's actual cost, read once the response has been closed (the
request context is gone by then: read the ``Request`` given, e.g. what the
view stored as ``request.environ["app.tokens"]``); None keeps the estimate."""

LimitedHook = Callable[[Verdict], ResponseReturnValue]
"""Makes the refusal (default: a plain-text 429 or 503); the verdict's
headers are added unless it sets them itself."""


def client_address(req: Request) -> str | None:
    return req.remote_addr


def rate_limit(
    limiter: RateLimiter,
    limits: Limits | Callable[[Request], Limits | None] | None = None,
    *,
    key: KeyFunction | None = None,
    keys: KeysFunction | None = None,
    name: str = "default",
    cost: int | Callable[[Request], int] = 1,
    refund_when: Callable[[int], bool] = server_error,
    block_ms: int | None = None,
    shadow: bool = False,
    on_limited: LimitedHook | None = None,
    gcra: GcraLimit | None = None,
    settle: SettleFunction | None = None,
) -> Callable[[View], View]:
    check_subjects(limits, key, keys, gcra)
    route = Route(limits, name, cost, refund_when, keys, block_ms, shadow, gcra, settle)
    by_key = key or client_address

    def decorate(view: View) -> View:
        @functools.wraps(view)
        def limited_view(*args: Any, **kwargs: Any) -> Response:
            current = cast(Request, request._get_current_object())  # type: ignore[attr-defined]
            verdict = judge(limiter, route, by_key, current)
            if verdict is None:
                return make_response(view(*args, **kwargs))
            if not verdict.passed:
                refusal = on_limited(verdict) if on_limited else (verdict.body, verdict.status)
                return _with_headers(make_response(refusal), verdict)
            once = Finish(limiter, verdict, route, current)
            try:
                response = make_response(view(*args, **kwargs))
            except HTTPException as error:
                if route.refund_when(error.code or 500):
                    once()
                once.settle()
                raise
            except Exception:
                # Failed on our side: the client should not pay for it.
                once()
                raise
            if route.refund_when(response.status_code):
                once()
            elif once.reserved:
                # Settled when the server closes the response (a streamed
                # body: after its last chunk).
                response.call_on_close(once.settle)
            return _with_headers(response, verdict)

        return cast(View, limited_view)

    return decorate


def _with_headers(response: Response, verdict: Verdict) -> Response:
    for name, value in verdict.headers.items():
        response.headers.setdefault(name, value)
    return response
