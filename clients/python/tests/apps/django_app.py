"""A one-file Django project behind the WSGI middleware, as its wsgi.py
would wrap it: /ok answers, /boom fails (refunded)."""

from __future__ import annotations

import os

import django
import redis
from django.conf import settings
from django.core.wsgi import get_wsgi_application
from django.http import HttpRequest, HttpResponse
from django.urls import path
from settings import limiter_options, redis_options

from redis_exact_ratelimit import Limit, RateLimiter
from redis_exact_ratelimit.wsgi import RateLimitMiddleware, header_key

settings.configure(DEBUG=False, ALLOWED_HOSTS=["127.0.0.1"], ROOT_URLCONF=__name__, SECRET_KEY="tests only")
django.setup()


def ok(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok\n")


def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("the view failed")


urlpatterns = [path("ok", ok), path("boom", boom)]

limiter = RateLimiter(redis.Redis.from_url(os.environ["REDIS_URL"], **redis_options()), **limiter_options())
application = RateLimitMiddleware(
    get_wsgi_application(), limiter=limiter, limits=Limit.per_minute(10), key=header_key("X-User"), name="django"
)
