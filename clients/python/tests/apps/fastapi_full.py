"""A FastAPI app with every feature the tests drive: the middleware on
/mw/*, the dependency on /dep/*, a failing route of each, a hook, the
middleware over several keys (user, IP, tenant) on /multi/* and (user,
tenant) on /bind/*, shadow mode on /shadow/*, a token bucket in the
middleware on /gmw/* and in the dependency on /gdep, and metrics on
/metrics."""

from __future__ import annotations

import os

import redis.asyncio as redis
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from prometheus_client import make_asgi_app
from settings import BUCKET, REGISTRY, ROUTE_BUCKET, limiter_options, redis_options, user_and_tenant, user_then_ip

from redis_exact_ratelimit import AsyncRateLimiter, Limit, Limits, Verdict
from redis_exact_ratelimit.asgi import RateLimitMiddleware, Scope, header_key
from redis_exact_ratelimit.fastapi import RateLimit

limiter = AsyncRateLimiter(
    redis.Redis.from_url(os.environ["REDIS_URL"], **redis_options(asyncio=True)), **limiter_options()
)
TEN = Limit.per_minute(10)


def middleware_limits(scope: Scope) -> Limit | None:
    return TEN if str(scope["path"]).startswith("/mw/") else None


def hooked_middleware_limits(scope: Scope) -> Limit | None:
    return Limit.per_minute(2) if str(scope["path"]).startswith("/mwhook/") else None


def slow_down_response(scope: Scope, verdict: Verdict) -> JSONResponse:
    return JSONResponse({"error": "slow down", "retry_after_ms": verdict.decision.retry_after_ms}, verdict.status)


def user_ip_tenant(scope: Scope) -> dict[str, Limits] | None:
    """Three keys on the tenant's hash tag, each with its own limit."""
    if not str(scope["path"]).startswith("/multi/"):
        return None
    headers = {bytes(name).decode("latin-1"): bytes(value).decode("latin-1") for name, value in scope["headers"]}
    tenant = "{" + headers["x-tenant"] + "}"
    return {
        f"{tenant}:user:{headers['x-user']}": Limit.per_minute(3, name="user"),
        f"{tenant}:ip:{headers['x-ip']}": Limit.per_minute(5, name="ip"),
        f"{tenant}:all": Limit.per_minute(100, name="tenant"),
    }


def user(request: Request) -> str | None:
    return request.headers.get("x-user")


def slow_down(request: Request, verdict: Verdict) -> Exception:
    return HTTPException(verdict.status, {"error": "slow down", "retry_after_ms": verdict.decision.retry_after_ms})


def bound_keys(scope: Scope) -> dict[str, Limits] | None:
    if not str(scope["path"]).startswith("/bind/"):
        return None
    headers = {bytes(name).decode("latin-1"): bytes(value).decode("latin-1") for name, value in scope["headers"]}
    return user_and_tenant(headers["x-user"], headers["x-tenant"])


def shadow_limits(scope: Scope) -> Limit | None:
    return Limit.per_minute(2) if str(scope["path"]).startswith("/shadow/") else None


def bucket_user(scope: Scope) -> str | None:
    """The token bucket's key on /gmw/*: the user (other paths: not limited)."""
    return header_key("x-user")(scope) if str(scope["path"]).startswith("/gmw/") else None


def scope_tokens(scope: Scope) -> int:
    return int(header_key("x-tokens")(scope) or 1)


def request_tokens(request: Request) -> int:
    return int(request.headers.get("x-tokens", 1))


app = FastAPI()
app.mount("/metrics", make_asgi_app(REGISTRY))
app.add_middleware(RateLimitMiddleware, limiter=limiter, limits=middleware_limits, key=header_key("x-user"), name="mw")
app.add_middleware(RateLimitMiddleware, limiter=limiter, keys=bound_keys, name="bind")
app.add_middleware(
    RateLimitMiddleware, limiter=limiter, limits=shadow_limits, key=header_key("x-user"), name="shadow", shadow=True
)
app.add_middleware(
    RateLimitMiddleware,
    limiter=limiter,
    limits=hooked_middleware_limits,
    key=header_key("x-user"),
    name="mwhook",
    on_limited=slow_down_response,
)
app.add_middleware(RateLimitMiddleware, limiter=limiter, keys=user_ip_tenant, name="multi")
app.add_middleware(RateLimitMiddleware, limiter=limiter, gcra=BUCKET, key=bucket_user, name="gmw", cost=scope_tokens)
per_user_bucket = RateLimit(limiter, gcra=ROUTE_BUCKET, key=user, name="gdep", cost=request_tokens)
per_user = RateLimit(limiter, TEN, key=user, name="dep")


def user_and_ip_of(request: Request) -> dict[str, Limits]:
    return user_then_ip(request.headers["x-user"], request.headers["x-ip"])


user_and_ip = RateLimit(limiter, keys=user_and_ip_of, name="depmulti")
locking = RateLimit(limiter, Limit.per_minute(2), key=user, name="lock", block_ms=3_600_000)
hooked = RateLimit(limiter, Limit.per_minute(2), key=user, name="hooked", on_limited=slow_down)


@app.get("/mw/ok")
async def mw_ok() -> dict[str, str]:
    return {"ok": "mw"}


@app.get("/mw/boom")
async def mw_boom() -> dict[str, str]:
    raise RuntimeError("the handler failed")


@app.get("/mwhook/ok")
async def mwhook_ok() -> dict[str, str]:
    return {"ok": "mwhook"}


@app.get("/dep/ok", dependencies=[Depends(per_user)])
async def dep_ok() -> dict[str, str]:
    return {"ok": "dep"}


@app.get("/dep/boom", dependencies=[Depends(per_user)])
async def dep_boom() -> dict[str, str]:
    raise RuntimeError("the handler failed")


@app.get("/hooked", dependencies=[Depends(hooked)])
async def hooked_route() -> dict[str, str]:
    return {"ok": "hooked"}


@app.get("/multi/ok")
async def multi_ok() -> dict[str, str]:
    return {"ok": "multi"}


@app.get("/multi/boom")
async def multi_boom() -> dict[str, str]:
    raise RuntimeError("the handler failed")


@app.get("/depmulti", dependencies=[Depends(user_and_ip)])
async def depmulti() -> dict[str, str]:
    return {"ok": "depmulti"}


@app.get("/lock", dependencies=[Depends(locking)])
async def lock() -> dict[str, str]:
    return {"ok": "lock"}


@app.get("/bind/ok")
async def bind_ok() -> dict[str, str]:
    return {"ok": "bind"}


@app.get("/shadow/ok")
async def shadow_ok() -> dict[str, str]:
    return {"ok": "shadow"}


@app.get("/gmw/ok")
async def gmw_ok() -> dict[str, str]:
    return {"ok": "gmw"}


@app.get("/gmw/boom")
async def gmw_boom() -> dict[str, str]:
    raise RuntimeError("the handler failed")


@app.get("/gdep", dependencies=[Depends(per_user_bucket)])
async def gdep() -> dict[str, str]:
    return {"ok": "gdep"}


@app.get("/backend")
async def backend() -> dict[str, str | None]:
    return {"backend": limiter.backend}
