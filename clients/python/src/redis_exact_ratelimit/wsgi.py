"""WSGI middleware (Flask, any WSGI app): one CHECK per request (one MCHECK
over several keys with ``keys=``, one GCRA with a token bucket, ``gcra=``),
the IETF RateLimit fields, 429 with
Retry-After (503 when Redis is unreachable and failing closed), a refund
when the app raises or answers with a refunded status, a hook for the
refusal, and shadow mode. With ``settle=``, token budgets: ``cost`` is
reserved before the app runs, and the actual cost settled once the
response's body has been closed. (Django has its own middleware:
:mod:`redis_exact_ratelimit.django`.)

    app.wsgi_app = RateLimitMiddleware(app.wsgi_app, limiter=limiter, limits=Limit.per_minute(10))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from ._core import GcraLimit, Limits
from ._http import (
    ActualResult,
    KeysResult,
    Route,
    Verdict,
    check_subjects,
    judging,
    refunding,
    server_error,
    settle,
    settling,
)
from .client import RateLimiter

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse as StartResponse
    from _typeshed.wsgi import WSGIApplication as WSGIApplication
    from _typeshed.wsgi import WSGIEnvironment as WSGIEnvironment
else:
    StartResponse = WSGIApplication = WSGIEnvironment = Any

R = TypeVar("R")

KeyFunction = Callable[["WSGIEnvironment"], "str | None"]
"""Who is limited, from the request's WSGI environ; None skips the request."""

KeysFunction = Callable[["WSGIEnvironment"], KeysResult]
"""Several keys, each with its limits, from the request's WSGI environ
(``{"{t:7}:user:42": Limit.per_minute(100), "{t:7}:ip:10.0.0.1": ...}``),
decided together; None skips the request."""

SettleFunction = Callable[["WSGIEnvironment"], ActualResult]
"""The request's actual cost, read once the response's body has been
closed: an integer, or None to keep the estimate. ``environ_value("app.tokens")``
reads what the app stored as ``environ["app.tokens"]`` (in Flask,
``request.environ["app.tokens"] = n``)."""

LimitedHook = Callable[["WSGIEnvironment", Verdict], "WSGIApplication"]
"""Makes the refusal: returns a WSGI app (a Flask or Werkzeug Response is
one). The verdict's headers are added to it unless it sets them itself."""


def client_address(environ: WSGIEnvironment) -> str | None:
    """The default key: the peer's address (behind a proxy, pass a key
    function that reads the header your proxy sets)."""
    address = environ.get("REMOTE_ADDR")
    return str(address) if address else None


def environ_value(name: str) -> SettleFunction:
    """A settle function reading what the app stored in the request's
    environ under ``name`` (None, the estimate stands, if nothing)."""

    def actual(environ: WSGIEnvironment) -> ActualResult:
        value = environ.get(name)
        return None if value is None else int(value)

    return actual


def header_key(name: str) -> KeyFunction:
    """A key function reading one request header (e.g. ``X-API-Key``);
    requests without it are not limited."""
    variable = "HTTP_" + name.upper().replace("-", "_")

    def key(environ: WSGIEnvironment) -> str | None:
        value = environ.get(variable)
        return str(value) if value else None

    return key


class RateLimitMiddleware:
    def __init__(
        self,
        app: WSGIApplication,
        *,
        limiter: RateLimiter,
        limits: Limits | Callable[[WSGIEnvironment], Limits | None] | None = None,
        key: KeyFunction | None = None,
        keys: KeysFunction | None = None,
        name: str = "default",
        cost: int | Callable[[WSGIEnvironment], int] = 1,
        refund_when: Callable[[int], bool] = server_error,
        block_ms: int | None = None,
        shadow: bool = False,
        on_limited: LimitedHook | None = None,
        gcra: GcraLimit | None = None,
        settle: SettleFunction | None = None,
    ) -> None:
        check_subjects(limits, key, keys, gcra)
        self.app = app
        self.limiter = limiter
        self.route = Route(limits, name, cost, refund_when, keys, block_ms, shadow, gcra, settle)
        self.key = key or client_address
        self.on_limited = on_limited

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        verdict = judge(self.limiter, self.route, self.key, environ)
        if verdict is None:
            return self.app(environ, start_response)
        if not verdict.passed:
            refusal = self.on_limited(environ, verdict) if self.on_limited else _plain(verdict)
            return refusal(environ, _adding_headers(start_response, verdict.headers))
        return self._serve(verdict, environ, start_response)

    def _serve(self, verdict: Verdict, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        once = Finish(self.limiter, verdict, self.route, environ)
        add_headers = _adding_headers(start_response, verdict.headers)

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], object]:
            # Refunded before the client sees the status, so its next
            # request finds the quota already restored.
            if self.route.refund_when(int(status.split(" ", 1)[0])):
                once()
            return add_headers(status, headers, exc_info)

        try:
            body = self.app(environ, start)
        except Exception:
            # Failed on our side: the client should not pay for it.
            once()
            raise
        return _Body(body, once)


def judge(limiter: RateLimiter, route: Route, key: Callable[[R], str | None], request: R) -> Verdict | None:
    """Decides one request (a WSGI environ, or a framework's request object
    that the key functions read); None when it is not limited."""
    return settle(judging(limiter, route, key, request))


def refund(limiter: RateLimiter, verdict: Verdict) -> None:
    settle(refunding(limiter, verdict))


class Finish:
    """Refunds one request at most once, or (a reservation) settles it:
    for the WSGI middleware, the Flask decorator and Django's middleware.
    ``request`` is what the route's settle function reads (a WSGI environ,
    a Flask ``Request``, a Django ``HttpRequest``)."""

    def __init__(self, limiter: RateLimiter, verdict: Verdict, route: Route, request: object) -> None:
        self._limiter = limiter
        self._verdict = verdict
        self._route = route
        self._request = request
        self._done = False

    def __call__(self) -> None:
        if not self._done:
            self._done = True
            refund(self._limiter, self._verdict)

    @property
    def reserved(self) -> bool:
        return self._verdict.reservation is not None

    def settle(self) -> None:
        """The response has finished (its body closed): a reservation is
        settled with the actual cost (a request that was refunded is not)."""
        if not self._done and self._verdict.reservation is not None:
            self._done = True
            settle(settling(self._limiter, self._route, self._verdict, self._request))


class _Body:
    """The app's body, passed through; refunded if sending it fails."""

    def __init__(self, body: Iterable[bytes], refund_once: Finish) -> None:
        self._body = body
        self._refund_once = refund_once

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._body
        except Exception:
            # Failed mid-response: a reservation is settled with what was
            # spent until then (as the settle function tells); else refunded.
            if self._refund_once.reserved:
                self._refund_once.settle()
            else:
                self._refund_once()
            raise

    def close(self) -> None:
        close = getattr(self._body, "close", None)
        try:
            if close is not None:
                close()
        finally:
            self._refund_once.settle()


def _adding_headers(start_response: StartResponse, headers: dict[str, str]) -> StartResponse:
    def start(status: str, response_headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], object]:
        present = {name.lower() for name, _ in response_headers}
        extra = [(name, value) for name, value in headers.items() if name.lower() not in present]
        return start_response(status, [*response_headers, *extra], exc_info)

    return start


def _plain(verdict: Verdict) -> WSGIApplication:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        reason = "Too Many Requests" if verdict.status == 429 else "Service Unavailable"
        start_response(f"{verdict.status} {reason}", [("Content-Type", "text/plain; charset=utf-8")])
        return [verdict.body]

    return app
