"""ASGI middleware (Starlette, FastAPI, any ASGI app): one CHECK per HTTP
request (one MCHECK over several keys with ``keys=``, one GCRA with a token
bucket, ``gcra=``), the IETF RateLimit
fields, 429 with Retry-After (503 when Redis is unreachable and failing
closed), a refund when the app raises or answers with a refunded status, a
hook for the refusal, and shadow mode. With ``settle=``, token budgets:
``cost`` is reserved before the app runs, and the actual cost settled
once the response has finished (streamed ones included).

    app.add_middleware(RateLimitMiddleware, limiter=limiter, limits=Limit.per_minute(10))
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeVar

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
    settle_async,
    settling,
)
from .asyncio import AsyncRateLimiter

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

R = TypeVar("R")

KeyFunction = Callable[[Scope], str | Awaitable[str | None] | None]
"""Who is limited, from the request's ASGI scope; None skips the request."""

KeysFunction = Callable[[Scope], KeysResult | Awaitable[KeysResult]]
"""Several keys, each with its limits, from the request's ASGI scope
(``{"{t:7}:user:42": Limit.per_minute(100), "{t:7}:ip:10.0.0.1": ...}``),
decided together; None skips the request. May be async."""

SettleFunction = Callable[[Scope], ActualResult | Awaitable[ActualResult]]
"""The request's actual cost, read once its response has finished (the
last body sent, or the client gone): an integer, or None to keep the
estimate. May be async. ``state_value("tokens")`` reads what the app set
as ``request.state.tokens`` (Starlette, FastAPI) or ``scope["state"]["tokens"]``."""

LimitedHook = Callable[[Scope, Verdict], ASGIApp | Awaitable[ASGIApp]]
"""Makes the refusal: returns an ASGI app (a Starlette Response is one).
The verdict's headers are added to it unless it sets them itself."""


def client_address(scope: Scope) -> str | None:
    """The default key: the peer's address (behind a proxy, pass a key
    function that reads the header your proxy sets)."""
    client = scope.get("client")
    return str(client[0]) if client else None


def header_key(name: str) -> Callable[[Scope], str | None]:
    """A key function reading one request header (e.g. ``x-api-key``);
    requests without it are not limited."""
    wanted = name.lower().encode("latin-1")

    def key(scope: Scope) -> str | None:
        for header, value in scope.get("headers", []):
            if header.lower() == wanted:
                return bytes(value).decode("latin-1")
        return None

    return key


def state_value(name: str) -> Callable[[Scope], ActualResult]:
    """A settle function reading what the app stored in the request's
    state under ``name``: ``request.state.<name> = n`` in a Starlette or
    FastAPI handler (or a streaming response's generator), or
    ``scope["state"][name] = n`` in any ASGI app. None (the estimate
    stands) when the app stored nothing."""

    def actual(scope: Scope) -> ActualResult:
        state = scope.get("state")
        value = state.get(name) if isinstance(state, MutableMapping) else None
        return None if value is None else int(value)

    return actual


# Settlements of requests cancelled mid-response, run apart from their
# cancelled task (the event loop keeps only weak references to tasks).
_SETTLING: set[asyncio.Task[None]] = set()


class RateLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        limiter: AsyncRateLimiter,
        limits: Limits | Callable[[Scope], Limits | None] | None = None,
        key: KeyFunction | None = None,
        keys: KeysFunction | None = None,
        name: str = "default",
        cost: int | Callable[[Scope], int] = 1,
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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        verdict = await judge(self.limiter, self.route, self.key, scope)
        if verdict is None:
            await self.app(scope, receive, send)
        elif not verdict.passed:
            await refuse(verdict, self.on_limited, scope, receive, send)
        else:
            await serve(self.app, self.limiter, self.route, verdict, scope, receive, send)


async def judge(
    limiter: AsyncRateLimiter,
    route: Route,
    key: Callable[[R], str | Awaitable[str | None] | None],
    request: R,
) -> Verdict | None:
    """Decides one request (an ASGI scope, or a framework's request object
    that the key functions read); None when it is not limited."""
    return await settle_async(judging(limiter, route, key, request))


async def refuse(verdict: Verdict, hook: LimitedHook | None, scope: Scope, receive: Receive, send: Send) -> None:
    app = await _maybe_await(hook(scope, verdict)) if hook else _plain(verdict)
    await app(scope, receive, _adding_headers(send, verdict.headers))


async def serve(
    app: ASGIApp, limiter: AsyncRateLimiter, route: Route, verdict: Verdict, scope: Scope, receive: Receive, send: Send
) -> None:
    done = started = False
    send_headers = _adding_headers(send, verdict.headers)
    reserved = verdict.reservation is not None
    if reserved:
        # One state for the app and the settle function, even where the
        # app's framework copies the scope.
        scope.setdefault("state", {})

    async def refund_once() -> None:
        nonlocal done
        if not done:
            done = True
            await refund(limiter, verdict)

    async def settle_once() -> None:
        nonlocal done
        if not done:
            done = True
            await settle_async(settling(limiter, route, verdict, scope))

    async def send_with_headers(message: Message) -> None:
        nonlocal started
        # Refunded before the client sees the status, so its next request
        # finds the quota already restored.
        if message["type"] == "http.response.start" and route.refund_when(int(message["status"])):
            await refund_once()
        started = started or message["type"] == "http.response.start"
        await send_headers(message)
        if reserved and message["type"] == "http.response.body" and not message.get("more_body", False):
            # The response has finished: its actual cost is known.
            await settle_once()

    try:
        await app(scope, receive, send_with_headers)
    except asyncio.CancelledError:
        # The client went away (or the server is stopping): what the
        # response cost so far is settled apart, as this task is cancelled.
        if reserved and not done:
            task = asyncio.ensure_future(settle_once())
            _SETTLING.add(task)
            task.add_done_callback(_SETTLING.discard)
        raise
    except Exception:
        if reserved and started:
            # Failed mid-response (a stream cut short, the client gone):
            # what was produced until then was spent, and is settled.
            await settle_once()
        else:
            # Failed on our side: the client should not pay for it.
            await refund_once()
        raise
    if reserved:
        # The app returned without finishing its response (the client left).
        await settle_once()


async def refund(limiter: AsyncRateLimiter, verdict: Verdict) -> None:
    await settle_async(refunding(limiter, verdict))


def _adding_headers(send: Send, headers: dict[str, str]) -> Send:
    extra = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start" and extra:
            present = {bytes(name).lower() for name, _ in message.get("headers", [])}
            message["headers"] = [*message.get("headers", []), *(h for h in extra if h[0] not in present)]
        await send(message)

    return wrapped


def _plain(verdict: Verdict) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": verdict.status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")],
            }
        )
        await send({"type": "http.response.body", "body": verdict.body})

    return app


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value
