"""A Flask app with every feature the tests drive: the WSGI middleware on
/mw/*, the decorator on /dec/*, a failing route of each, a hook, the
middleware over several keys (user, IP, tenant) on /multi/* and (user,
tenant) on /bind/*, shadow mode on /shadow/*, a token bucket in the
middleware on /gmw/* and in the decorator on /gdec, the decorator
settling a streamed response's tokens on /decstream, and metrics on
/metrics."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import redis
from flask import Flask, Request, jsonify, request
from flask.typing import ResponseReturnValue
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from settings import BUCKET, REGISTRY, ROUTE_BUCKET, limiter_options, redis_options, user_and_tenant, user_then_ip
from werkzeug.wrappers import Response

from redis_exact_ratelimit import Limit, Limits, RateLimiter, Verdict
from redis_exact_ratelimit.flask import rate_limit
from redis_exact_ratelimit.wsgi import RateLimitMiddleware, WSGIEnvironment, header_key

limiter = RateLimiter(redis.Redis.from_url(os.environ["REDIS_URL"], **redis_options()), **limiter_options())
TEN = Limit.per_minute(10)


def middleware_limits(environ: WSGIEnvironment) -> Limit | None:
    return TEN if str(environ["PATH_INFO"]).startswith("/mw/") else None


def hooked_middleware_limits(environ: WSGIEnvironment) -> Limit | None:
    return Limit.per_minute(2) if str(environ["PATH_INFO"]).startswith("/mwhook/") else None


def slow_down_response(environ: WSGIEnvironment, verdict: Verdict) -> Response:
    body = json.dumps({"error": "slow down", "retry_after_ms": verdict.decision.retry_after_ms})
    return Response(body, verdict.status, mimetype="application/json")


def user_ip_tenant(environ: WSGIEnvironment) -> dict[str, Limits] | None:
    """Three keys on the tenant's hash tag, each with its own limit."""
    if not str(environ["PATH_INFO"]).startswith("/multi/"):
        return None
    tenant = "{" + environ["HTTP_X_TENANT"] + "}"
    return {
        f"{tenant}:user:{environ['HTTP_X_USER']}": Limit.per_minute(3, name="user"),
        f"{tenant}:ip:{environ['HTTP_X_IP']}": Limit.per_minute(5, name="ip"),
        f"{tenant}:all": Limit.per_minute(100, name="tenant"),
    }


def user(request: Request) -> str | None:
    return request.headers.get("X-User")


def slow_down(verdict: Verdict) -> ResponseReturnValue:
    return jsonify(error="slow down", retry_after_ms=verdict.decision.retry_after_ms), verdict.status


def bound_keys(environ: WSGIEnvironment) -> dict[str, Limits] | None:
    if not str(environ["PATH_INFO"]).startswith("/bind/"):
        return None
    return user_and_tenant(environ["HTTP_X_USER"], environ["HTTP_X_TENANT"])


def shadow_limits(environ: WSGIEnvironment) -> Limit | None:
    return Limit.per_minute(2) if str(environ["PATH_INFO"]).startswith("/shadow/") else None


def bucket_user(environ: WSGIEnvironment) -> str | None:
    """The token bucket's key on /gmw/*: the user (other paths: not limited)."""
    return environ.get("HTTP_X_USER") if str(environ["PATH_INFO"]).startswith("/gmw/") else None


def environ_tokens(environ: WSGIEnvironment) -> int:
    return int(environ.get("HTTP_X_TOKENS", 1))


def request_tokens(request: Request) -> int:
    return int(request.headers.get("X-Tokens", 1))


app = Flask(__name__)
by_user = header_key("X-User")
app.wsgi_app = RateLimitMiddleware(app.wsgi_app, limiter=limiter, keys=bound_keys, name="bind")  # type: ignore[method-assign]
app.wsgi_app = RateLimitMiddleware(  # type: ignore[method-assign]
    app.wsgi_app, limiter=limiter, limits=shadow_limits, key=by_user, name="shadow", shadow=True
)
app.wsgi_app = RateLimitMiddleware(app.wsgi_app, limiter=limiter, limits=middleware_limits, key=by_user, name="mw")  # type: ignore[method-assign]
app.wsgi_app = RateLimitMiddleware(app.wsgi_app, limiter=limiter, keys=user_ip_tenant, name="multi")  # type: ignore[method-assign]
app.wsgi_app = RateLimitMiddleware(  # type: ignore[method-assign]
    app.wsgi_app, limiter=limiter, gcra=BUCKET, key=bucket_user, name="gmw", cost=environ_tokens
)
app.wsgi_app = RateLimitMiddleware(  # type: ignore[method-assign]
    app.wsgi_app,
    limiter=limiter,
    limits=hooked_middleware_limits,
    key=by_user,
    name="mwhook",
    on_limited=slow_down_response,
)


@app.get("/mwhook/ok")
def mwhook_ok() -> ResponseReturnValue:
    return {"ok": "mwhook"}


@app.get("/mw/ok")
def mw_ok() -> ResponseReturnValue:
    return {"ok": "mw"}


@app.get("/mw/boom")
def mw_boom() -> ResponseReturnValue:
    raise RuntimeError("the handler failed")


@app.get("/multi/ok")
def multi_ok() -> ResponseReturnValue:
    return {"ok": "multi"}


@app.get("/multi/boom")
def multi_boom() -> ResponseReturnValue:
    raise RuntimeError("the handler failed")


def user_and_ip_of(request: Request) -> dict[str, Limits]:
    return user_then_ip(request.headers["X-User"], request.headers["X-IP"])


@app.get("/decmulti")
@rate_limit(limiter, keys=user_and_ip_of, name="decmulti")
def decmulti() -> ResponseReturnValue:
    return {"ok": "decmulti"}


@app.get("/lock")
@rate_limit(limiter, Limit.per_minute(2), key=user, name="lock", block_ms=3_600_000)
def lock() -> ResponseReturnValue:
    return {"ok": "lock"}


@app.get("/dec/ok")
@rate_limit(limiter, TEN, key=user, name="dec")
def dec_ok() -> ResponseReturnValue:
    return {"ok": "dec"}


@app.get("/dec/boom")
@rate_limit(limiter, TEN, key=user, name="dec")
def dec_boom() -> ResponseReturnValue:
    raise RuntimeError("the handler failed")


@app.get("/hooked")
@rate_limit(limiter, Limit.per_minute(2), key=user, name="hooked", on_limited=slow_down)
def hooked() -> ResponseReturnValue:
    return {"ok": "hooked"}


@app.get("/bind/ok")
def bind_ok() -> ResponseReturnValue:
    return {"ok": "bind"}


@app.get("/shadow/ok")
def shadow_ok() -> ResponseReturnValue:
    return {"ok": "shadow"}


@app.get("/gmw/ok")
def gmw_ok() -> ResponseReturnValue:
    return {"ok": "gmw"}


@app.get("/gmw/boom")
def gmw_boom() -> ResponseReturnValue:
    raise RuntimeError("the handler failed")


@app.get("/gdec")
@rate_limit(limiter, gcra=ROUTE_BUCKET, key=user, name="gdec", cost=request_tokens)
def gdec() -> ResponseReturnValue:
    return {"ok": "gdec"}


def used_tokens(req: Request) -> int | None:
    """The settle function: what the view stored (None: the estimate stands)."""
    value = req.environ.get("app.tokens")
    return None if value is None else int(value)


@app.get("/decstream")
@rate_limit(limiter, Limit.per_minute(100), key=user, name="decstream", cost=20, settle=used_tokens)
def decstream() -> ResponseReturnValue:
    tokens, environ = int(request.args["tokens"]), request.environ

    def chunks() -> Iterator[str]:
        yield "one "
        yield "two\n"
        environ["app.tokens"] = tokens  # settled once the server closes the response

    return Response(chunks(), mimetype="text/plain")


@app.get("/metrics")
def metrics() -> ResponseReturnValue:
    return generate_latest(REGISTRY), 200, {"Content-Type": CONTENT_TYPE_LATEST}


@app.get("/backend")
def backend() -> ResponseReturnValue:
    return {"backend": limiter.backend}
