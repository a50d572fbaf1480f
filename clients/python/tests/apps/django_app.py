"""A one-file Django project limited by the package's middleware, as its
settings would configure it (REDIS_RATELIMIT): /ok answers, /boom fails
(refunded). Served by gunicorn (``application``, REDIS_URL from the
environment), or configured by the tests for Django's test client."""

from __future__ import annotations

import os
from typing import Any

import django
from django.conf import settings
from django.core.wsgi import get_wsgi_application
from django.http import HttpRequest, HttpResponse
from django.urls import path

from redis_exact_ratelimit import Limit


def user(request: HttpRequest) -> str | None:
    return request.headers.get("X-User")


def ok(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok\n")


def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("the view failed")


urlpatterns = [path("ok", ok), path("boom", boom)]


def ratelimit_settings(redis_url: str, **options: Any) -> dict[str, Any]:
    return {"url": redis_url, "limits": Limit.per_minute(10), "key": user, "name": "django", **options}


def configure(redis_url: str) -> None:
    settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["127.0.0.1", "testserver"],
        ROOT_URLCONF=__name__,
        SECRET_KEY="tests only",
        MIDDLEWARE=["redis_exact_ratelimit.django.RateLimitMiddleware"],
        REDIS_RATELIMIT=ratelimit_settings(redis_url),
    )
    django.setup()


if "REDIS_URL" in os.environ:
    configure(os.environ["REDIS_URL"])
    application = get_wsgi_application()
