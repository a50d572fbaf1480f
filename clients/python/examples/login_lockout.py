"""README's login lockout: 5 failed logins for a username in 15 minutes,
then that username is locked out for an hour.
Run: REDIS_URL=redis://localhost:6379 flask --app login_lockout run"""

# README:begin
import hmac
import os

import redis
from flask import Flask, Request, request
from flask.typing import ResponseReturnValue

from redis_exact_ratelimit import Limit, RateLimiter
from redis_exact_ratelimit.flask import rate_limit

app = Flask(__name__)
limiter = RateLimiter(redis.Redis.from_url(os.environ["REDIS_URL"]))


def username(req: Request) -> str | None:
    return req.form.get("username")


@app.post("/login")
@rate_limit(
    limiter,
    Limit(15 * 60_000, 5),  # 5 failed logins in 15 minutes,
    block_ms=60 * 60_000,  # then locked out for an hour
    key=username,
    name="login",
    refund_when=lambda status: status != 401,  # only failures count
)
def login() -> ResponseReturnValue:
    if password_is_right(request.form["username"], request.form["password"]):
        return {"welcome": request.form["username"]}
    return {"error": "wrong username or password"}, 401


# README:end


USERS = {"alice": "wonderland"}  # the example's user store


def password_is_right(name: str, password: str) -> bool:
    return hmac.compare_digest(USERS.get(name, ""), password)
