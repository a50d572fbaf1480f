"""README's Flask example: every request limited to 10 a minute per client address.
Run (from the repository's root): REDIS_URL=redis://localhost:6379 flask --app clients/python/examples/flask_app run"""

# README:begin
import os

import redis
from flask import Flask

from redis_exact_ratelimit import Limit, RateLimiter
from redis_exact_ratelimit.wsgi import RateLimitMiddleware

app = Flask(__name__)
limiter = RateLimiter(redis.Redis.from_url(os.environ["REDIS_URL"]))
app.wsgi_app = RateLimitMiddleware(app.wsgi_app, limiter=limiter, limits=Limit.per_minute(10))  # type: ignore[method-assign]


@app.get("/")
def hello() -> dict[str, str]:
    return {"hello": "world"}


# README:end
