"""README's login lockout: 5 failed logins for a username in 15 minutes,
then that username is locked out for an hour; an operator lifts it.
Run (from the repository's root):
    REDIS_URL=redis://localhost:6379 flask --app clients/python/examples/login_lockout run
    REDIS_URL=redis://localhost:6379 flask --app clients/python/examples/login_lockout unlock alice"""

# README:begin
import hmac
import os

import click
import redis
from flask import Flask, Request, request
from flask.typing import ResponseReturnValue

from redis_exact_ratelimit import Limit, RateLimiter
from redis_exact_ratelimit.flask import rate_limit

app = Flask(__name__)
limiter = RateLimiter(redis.Redis.from_url(os.environ["REDIS_URL"]))
USERS = {"alice": "wonderland"}  # your user store


def password_is_right(username: str, password: str) -> bool:
    return hmac.compare_digest(USERS.get(username, ""), password)


def login_name(req: Request) -> str | None:
    return req.form.get("username")


@app.post("/login")
@rate_limit(
    limiter,
    Limit(15 * 60_000, 5),  # 5 failed logins in 15 minutes,
    block_ms=60 * 60_000,  # then locked out for an hour
    key=login_name,
    name="login",
    refund_when=lambda status: status != 401,  # only failures count
)
def login() -> ResponseReturnValue:
    if password_is_right(request.form["username"], request.form["password"]):
        return {"welcome": request.form["username"]}
    return {"error": "wrong username or password"}, 401


@app.cli.command("unlock")
@click.argument("username")
def unlock(username: str) -> None:
    """Lifts USERNAME's lockout and forgets the failures it counted."""
    lifted = limiter.unblock(f"login:{username}", reset=True)  # the decorator's keys are <name>:<key>
    print(f"{username}: {'lockout lifted' if lifted else 'was not locked out'}; failures forgotten")


# README:end
