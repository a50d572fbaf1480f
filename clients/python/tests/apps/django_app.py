"""A one-file Django project limited by the package's middleware, as its
settings would configure it (REDIS_RATELIMIT): /ok answers, /boom fails
(refunded); /tokens and /stream (streamed) report the tokens they used
(``?tokens=``) for ``settle`` (under gunicorn: with DJANGO_SETTLE set).
Served by gunicorn (``application``, REDIS_URL from the environment), or
configured by the tests for Django's test client."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import django
from django.conf import settings
from django.core.wsgi import get_wsgi_application
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.urls import path

from redis_exact_ratelimit import Limit


def user(request: HttpRequest) -> str | None:
    return request.headers.get("X-User")


def ok(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok\n")


def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("the view failed")


def tokens(request: HttpRequest) -> HttpResponse:
    request.META["app.tokens"] = int(request.GET["tokens"])
    return HttpResponse("counted\n")


def stream(request: HttpRequest) -> StreamingHttpResponse:
    def chunks() -> Iterator[bytes]:
        yield b"one "
        yield b"two\n"
        request.META["app.tokens"] = int(request.GET["tokens"])  # settled after the last chunk

    return StreamingHttpResponse(chunks(), content_type="text/plain")


def used_tokens(request: HttpRequest) -> int | None:
    """The settle function: what the view stored (None: the estimate stands)."""
    value = request.META.get("app.tokens")
    return None if value is None else int(value)


# Token budgets: 100 a minute, 20 reserved a request, the actual settled.
BUDGET_SETTINGS: dict[str, Any] = {"limits": Limit.per_minute(100), "cost": 20, "settle": used_tokens}

urlpatterns = [path("ok", ok), path("boom", boom), path("tokens", tokens), path("stream", stream)]


def ratelimit_settings(redis_url: str, **options: Any) -> dict[str, Any]:
    return {"url": redis_url, "limits": Limit.per_minute(10), "key": user, "name": "django", **options}


def configure(redis_url: str, **options: Any) -> None:
    settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["127.0.0.1", "testserver"],
        ROOT_URLCONF=__name__,
        SECRET_KEY="tests only",
        MIDDLEWARE=["redis_exact_ratelimit.django.RateLimitMiddleware"],
        REDIS_RATELIMIT=ratelimit_settings(redis_url, **options),
    )
    django.setup()


if "REDIS_URL" in os.environ:
    configure(os.environ["REDIS_URL"], **(BUDGET_SETTINGS if os.environ.get("DJANGO_SETTLE") else {}))
    application = get_wsgi_application()
