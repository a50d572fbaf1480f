"""A FastAPI dependency for per-route limits:

    @app.get("/search", dependencies=[Depends(RateLimit(limiter, Limit.per_minute(10)))])

Sets the IETF RateLimit fields on the route's response, raises a 429 (503
when Redis is unreachable and failing closed) with Retry-After, and
refunds the request when the endpoint raises (an HTTPException only when
``refund_when`` says so for its status)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import HTTPException, Request, Response

from ._core import GcraLimit, Limits
from ._http import KeysResult, Route, Verdict, check_subjects, server_error
from .asgi import judge, refund
from .asyncio import AsyncRateLimiter

KeyFunction = Callable[[Request], str | Awaitable[str | None] | None]

KeysFunction = Callable[[Request], KeysResult | Awaitable[KeysResult]]
"""Several keys, each with its limits, decided together (see
``redis_exact_ratelimit.asgi.KeysFunction``); None skips the request."""

LimitedHook = Callable[[Request, Verdict], Exception]
"""Makes the exception raised for a refusal (default: HTTPException with
the verdict's status and headers); the verdict's headers are added to an
HTTPException unless it sets them itself."""


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


class RateLimit:
    """A dependency: ``Depends(RateLimit(limiter, limits, ...))`` (or
    ``RateLimit(limiter, gcra=GcraLimit(...))``). The options are the
    middleware's (``redis_exact_ratelimit.asgi``); the key
    function receives the Starlette ``Request``."""

    def __init__(
        self,
        limiter: AsyncRateLimiter,
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
    ) -> None:
        check_subjects(limits, key, keys, gcra)
        self.limiter = limiter
        self.route = Route(limits, name, cost, refund_when, keys, block_ms, shadow, gcra)
        self.key = key or client_address
        self.on_limited = on_limited

    async def __call__(self, request: Request, response: Response) -> AsyncIterator[Verdict | None]:
        verdict = await judge(self.limiter, self.route, self.key, request)
        if verdict is None:
            yield None
            return
        if not verdict.passed:
            if self.on_limited is not None:
                error = self.on_limited(request, verdict)
                if isinstance(error, HTTPException):
                    error.headers = {**verdict.headers, **(error.headers or {})}
                raise error
            raise HTTPException(verdict.status, verdict.body.decode().strip(), headers=verdict.headers)
        response.headers.update(verdict.headers)
        try:
            yield verdict
        except HTTPException as error:
            if self.route.refund_when(error.status_code):
                await refund(self.limiter, verdict)
            raise
        except Exception:
            await refund(self.limiter, verdict)
            raise
