"""The Django middleware (redis_exact_ratelimit.django), configured from
settings (a sliding window or a token bucket; token budgets with settle):
with Django's test client in this process, and under gunicorn (two worker
processes sharing the limit through Redis)."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import APPS, App, app_env, eventually
from django.core.exceptions import ImproperlyConfigured
from django.test import Client, override_settings
from servers import Server, free_port

from redis_exact_ratelimit import GcraLimit, Limit, RateLimiter

sys.path.insert(0, str(APPS))
import django_app

if "REDIS_URL" not in os.environ:
    # Each test points REDIS_RATELIMIT at its own server.
    django_app.configure("redis://127.0.0.1:1")


@pytest.fixture
def client(server: Server) -> Iterator[Any]:
    """Django's test client over the middleware with REDIS_RATELIMIT's
    options (as the test's own settings give them)."""

    def make(**options: Any) -> Client:
        url = f"redis://127.0.0.1:{server.port}"
        override = override_settings(REDIS_RATELIMIT=django_app.ratelimit_settings(url, **options))
        override.enable()
        overrides.append(override)
        return Client(raise_request_exception=False, headers={"X-User": uuid.uuid4().hex})

    overrides: list[Any] = []
    yield make
    for override in reversed(overrides):
        override.disable()


def test_limits_refunds_and_headers(client: Any) -> None:
    http = client()
    assert [http.get("/boom").status_code for _ in range(3)] == [500] * 3
    responses = [http.get("/ok") for _ in range(12)]
    assert [r.status_code for r in responses] == [200] * 10 + [429] * 2
    assert responses[0].headers["RateLimit-Policy"] == '"django";q=10;w=60'
    assert responses[0].headers["RateLimit"].startswith('"django";r=9;t=')
    assert 55 <= int(responses[10].headers["Retry-After"]) <= 60
    assert responses[10].content == b"Too Many Requests\n"


def test_shadow_mode_and_a_refusal_hook(client: Any) -> None:
    shadow = client(shadow=True)
    assert [shadow.get("/ok").status_code for _ in range(12)] == [200] * 12
    assert "RateLimit" not in shadow.get("/ok").headers

    def teapot(request: Any, verdict: Any) -> Any:
        from django.http import HttpResponse

        return HttpResponse(f"wait {verdict.decision.retry_after_ms} ms", status=418)

    hooked = client(limits=Limit.per_minute(1), on_limited=teapot)
    assert hooked.get("/ok").status_code == 200
    refused = hooked.get("/ok")
    assert refused.status_code == 418 and refused.content.startswith(b"wait ")
    assert refused.headers["RateLimit"].startswith('"django";r=0;')


def test_several_keys_from_settings(client: Any) -> None:
    """keys= in settings: the user and the address together, the binding
    policy named."""

    def user_and_address(request: Any) -> dict[str, Limit]:
        return {
            f"user:{request.headers['X-User']}": Limit.per_minute(3, name="user"),
            f"ip:{uuid.uuid4().hex if request.GET.get('fresh') else 'shared'}": Limit.per_minute(2, name="ip"),
        }

    http = client(limits=None, key=None, keys=user_and_address)
    fresh = http.get("/ok", {"fresh": "1"})
    assert fresh.status_code == 200 and fresh.headers["RateLimit"].startswith('"ip";r=1;')
    assert [http.get("/ok").status_code for _ in range(3)] == [200, 200, 429]


def test_a_token_bucket_from_settings(client: Any) -> None:
    """gcra= in settings instead of limits: 2 tokens at 1 a minute, its
    fields, 429 with Retry-After; a failed view is not refunded; a request
    of more tokens than the bucket is refused without Retry-After; shadow
    mode passes everything and sends no field."""
    http = client(limits=None, gcra=GcraLimit(1, 1, 60_000))
    responses = [http.get("/ok"), http.get("/boom"), http.get("/ok")]
    assert [r.status_code for r in responses] == [200, 500, 429]
    assert all(r.headers["RateLimit-Policy"] == '"django";q=2;w=120' for r in responses)
    assert responses[0].headers["RateLimit"] == '"django";r=1;t=60'
    assert responses[2].headers["RateLimit"] in ('"django";r=0;t=120', '"django";r=0;t=119')
    assert 59 <= int(responses[2].headers["Retry-After"]) <= 60
    weighed = client(limits=None, gcra=GcraLimit(1, 1, 60_000, name="bucket"), cost=3)
    never = weighed.get("/ok")
    assert never.status_code == 429 and "Retry-After" not in never.headers
    assert never.headers["RateLimit"] == '"bucket";r=2;t=0'
    shadow = client(limits=None, gcra=GcraLimit(0, 1, 60_000), shadow=True)
    assert [shadow.get("/ok").status_code for _ in range(3)] == [200] * 3
    assert "RateLimit" not in shadow.get("/ok").headers


def test_settle_from_settings(client: Any, server: Server) -> None:
    """settle in settings (token budgets): cost reserved before the view,
    the actual settled when Django closes the response; a streamed one
    after its last chunk; a view that reports nothing keeps the estimate;
    a failed view gives the reservation back."""
    http = client(**django_app.BUDGET_SETTINGS)
    limiter = RateLimiter(server.client())
    key = f"django:{http.defaults['HTTP_X_USER']}"

    def remaining() -> int:
        return limiter.peek(key, Limit.per_minute(100)).remaining

    streamed = http.get("/stream", {"tokens": "7"})
    assert streamed.status_code == 200 and streamed.headers["RateLimit"].startswith('"django";r=80;')
    assert remaining() == 80  # reserved, not settled before the stream ends
    assert b"".join(streamed.streaming_content) == b"one two\n"
    assert remaining() == 93
    assert http.get("/tokens", {"tokens": "3"}).status_code == 200
    assert remaining() == 90
    assert http.get("/ok").status_code == 200
    assert remaining() == 70
    assert http.get("/boom").status_code == 500
    assert remaining() == 70
    bucket = client(limits=None, gcra=GcraLimit(9, 1, 60_000), cost=4, settle=django_app.used_tokens)
    assert bucket.get("/tokens", {"tokens": "1"}).headers["RateLimit"].startswith('"django";r=6;')
    assert bucket.get("/tokens", {"tokens": "1"}).headers["RateLimit"].startswith('"django";r=5;')


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (None, "set REDIS_RATELIMIT"),
        ({"url": "redis://x", "limits": Limit.per_minute(1), "limit": 3}, r"unknown options \['limit'\]"),
        ({"limits": Limit.per_minute(1)}, "one of url"),
        ({"url": "redis://x"}, "give limits"),
        ({"url": "redis://x", "limits": Limit.per_minute(1), "gcra": GcraLimit(1, 1, 1000)}, "gcra= is a token"),
        ({"url": "redis://x", "limits": Limit.per_minute(1), "settle": 3}, "settle is a function"),
    ],
)
def test_bad_settings_are_refused_at_start(settings: Any, message: str) -> None:
    from redis_exact_ratelimit.django import RateLimitMiddleware

    with override_settings(REDIS_RATELIMIT=settings), pytest.raises((ImproperlyConfigured, ValueError), match=message):
        RateLimitMiddleware(lambda request: None)  # type: ignore[arg-type, return-value]


def test_under_gunicorn(server: Server) -> None:
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "2"]
    app = App([*command, "django_app:application"], port, app_env(server.port))
    try:
        with httpx.Client(base_url=app.url, headers={"X-User": uuid.uuid4().hex}) as http:
            assert [http.get("/boom").status_code for _ in range(5)] == [500] * 5
            responses = [http.get("/ok") for _ in range(30)]
    finally:
        app.stop()
    assert [r.status_code for r in responses] == [200] * 10 + [429] * 20
    assert all(r.headers["RateLimit-Policy"] == '"django";q=10;w=60' for r in responses)
    assert int(responses[10].headers["Retry-After"]) >= 55


def test_settle_under_gunicorn(server: Server) -> None:
    """settle under a real server: a streamed response is settled once
    gunicorn has sent it and closed it."""
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "2"]
    app = App([*command, "django_app:application"], port, app_env(server.port, DJANGO_SETTLE="1"))
    user = uuid.uuid4().hex
    limiter = RateLimiter(server.client())
    try:
        with httpx.Client(base_url=app.url, headers={"X-User": user}) as http:
            streamed = http.get("/stream", params={"tokens": "7"})
            assert streamed.status_code == 200 and streamed.text == "one two\n"
            assert streamed.headers["RateLimit"].startswith('"django";r=80;')
            assert eventually(lambda: limiter.peek(f"django:{user}", Limit.per_minute(100)).remaining == 93)
            assert http.get("/boom").status_code == 500
            assert http.get("/tokens", params={"tokens": "30"}).headers["RateLimit"].startswith('"django";r=73;')
            assert eventually(lambda: limiter.peek(f"django:{user}", Limit.per_minute(100)).remaining == 63)
    finally:
        app.stop()
