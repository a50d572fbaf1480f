"""README's FastAPI quick start: every request limited to 10 a minute per client address.
Run (from the repository's root):
    REDIS_URL=redis://localhost:6379 uvicorn --app-dir clients/python/examples fastapi_app:app"""

# README:begin
import os

import redis.asyncio as redis
from fastapi import FastAPI

from redis_exact_ratelimit import AsyncRateLimiter, Limit
from redis_exact_ratelimit.asgi import RateLimitMiddleware

app = FastAPI()
limiter = AsyncRateLimiter(redis.Redis.from_url(os.environ["REDIS_URL"]))
app.add_middleware(RateLimitMiddleware, limiter=limiter, limits=Limit.per_minute(10))


@app.get("/")
async def hello() -> dict[str, str]:
    return {"hello": "world"}


# README:end
