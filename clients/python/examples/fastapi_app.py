"""README's FastAPI example: every request limited to 10 a minute per client address.
Run: REDIS_URL=redis://localhost:6379 uvicorn fastapi_app:app"""

# README:begin
import os

import redis.asyncio as redis
from fastapi import FastAPI

from redis_exact_ratelimit import AsyncRateLimiter, Limit
from redis_exact_ratelimit.asgi import RateLimitMiddleware

app = FastAPI()
limiter = AsyncRateLimiter(redis.Redis.from_url(os.environ["REDIS_URL"]))
app.add_middleware(RateLimitMiddleware, limiter=limiter, limits=Limit.per_minute(10))
# README:end


@app.get("/")
async def hello() -> dict[str, str]:
    return {"hello": "world"}
