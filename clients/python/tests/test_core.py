"""The pure parts: validation, arguments, replies, headers, the fallback
(and the fallback held to the module's answers)."""

from __future__ import annotations

import random
import uuid

import pytest
from servers import Server

from redis_exact_ratelimit import Decision, Fallback, Limit, RateLimiter, RateLimitInputError
from redis_exact_ratelimit._core import Script, UnexpectedReply, make_call, parse_count, parse_decision
from redis_exact_ratelimit._http import rate_limit_headers, verdict_of


def test_arguments_are_the_modules() -> None:
    call = make_call([Limit(1000, 10), Limit(3_600_000, 1000)], cost=3, precision=100)
    assert call.args() == ["1000", "10", "3600000", "1000", "COST", "3", "PRECISION", "100"]
    assert make_call(Limit.per_minute(5)).args() == ["60000", "5"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Limit(0, 5), "window_ms must be an integer from 1 to 31536000000, got 0"),
        (lambda: Limit(1000, 0), "max must be an integer from 1 to 9223372036854775807, got 0"),
        (lambda: Limit(1000, True), "max must be an integer"),
        (lambda: make_call([]), "give 1 to 8 limits, got 0"),
        (lambda: make_call([Limit(i + 1, 1) for i in range(9)]), "give 1 to 8 limits, got 9"),
        (lambda: make_call([Limit(1000, 1), Limit(1000, 2)]), "window 1000 is given twice"),
        (lambda: make_call(Limit(1000, 5), cost=6), "cost must be an integer from 1 to 5, got 6"),
        (lambda: make_call(Limit(1000, 5), precision=1001), "precision must be an integer from 1 to 1000"),
    ],
)
def test_bad_input_is_refused_before_redis(make: object, message: str) -> None:
    with pytest.raises(RateLimitInputError, match=message.replace("(", r"\(")):
        make()  # type: ignore[operator]


def test_replies_in_resp2_and_resp3_shapes() -> None:
    assert parse_decision([1, 4, 0, 60000]) == Decision(True, 4, 0, 60000, "redis")
    assert parse_decision([b"0", b"0", b"15", b"60000"]).retry_after_ms == 15
    assert parse_count(b"3") == 3
    # A reply read as something else must never count as allowed.
    for reply in ({"allowed": 1}, [1, 2, 3], ["allowed", 1, 0, 0], [2, 0, 0, 0], None, b"OK"):
        with pytest.raises(UnexpectedReply):
            parse_decision(reply)


def test_the_script_is_the_file_without_its_first_line() -> None:
    script = Script.load()
    assert not script.text.startswith("#!lua")
    assert "register_function" in script.text and len(script.sha1) == 40


def test_ietf_headers_for_one_limit() -> None:
    allowed = Decision(True, 9, 0, 60000, "redis")
    assert rate_limit_headers([Limit.per_minute(10)], "default", allowed) == {
        "RateLimit-Policy": '"default";q=10;w=60',
        "RateLimit": '"default";r=9;t=60',
    }
    denied = Decision(False, 0, 1500, 59000, "redis")
    headers = rate_limit_headers([Limit.per_minute(10)], "default", denied)
    assert headers["RateLimit"] == '"default";r=0;t=2' and headers["Retry-After"] == "2"


def test_ietf_headers_for_several_limits() -> None:
    limits = [Limit(1000, 10), Limit(3_600_000, 1000, name="hourly")]
    headers = rate_limit_headers(limits, "api", Decision(True, 9, 0, 3_600_000, "redis"))
    assert headers["RateLimit-Policy"] == '"api-1s";q=10;w=1, "hourly";q=1000;w=3600'
    assert headers["RateLimit"] == '"api-1s";r=9;t=3600'


def test_verdicts_of_the_failure_policy() -> None:
    closed = verdict_of(Decision(False, 0, 800, 0, "fail_closed"), [Limit(1000, 1)], "default", "k", 1)
    assert (closed.passed, closed.status, closed.headers) == (False, 503, {"Retry-After": "1"})
    opened = verdict_of(Decision(True, 0, 0, 0, "fail_open"), [Limit(1000, 1)], "default", "k", 1)
    assert opened.passed and opened.headers == {}


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


def test_fallback_is_exact_within_its_share() -> None:
    clock = Clock()
    fallback = Fallback(share=0.5, clock=clock)
    call = make_call(Limit(1000, 10))
    answers = [fallback.check("k", call) for _ in range(8)]
    assert [a.allowed for a in answers] == [True] * 5 + [False] * 3
    assert [a.remaining for a in answers[:5]] == [4, 3, 2, 1, 0]
    assert answers[5].retry_after_ms == 1000 and answers[5].source == "fallback"
    clock.now += 999
    assert not fallback.check("k", call).allowed
    clock.now += 1
    assert fallback.check("k", call).allowed


def test_fallback_several_limits_cost_undo_and_peek() -> None:
    clock = Clock()
    fallback = Fallback(clock=clock)
    call = make_call([Limit(1000, 4), Limit(10_000, 6)], cost=2)
    assert fallback.check("k", call).allowed
    clock.now += 500
    assert fallback.check("k", call).remaining == 0
    denied = fallback.check("k", call)
    assert not denied.allowed and denied.retry_after_ms == 500
    clock.now += 600
    # The short window has room again, the long one (6) holds 4 + 2.
    assert fallback.check("k", call).allowed
    assert not fallback.check("k", call).allowed
    assert fallback.undo("k", 3) == 3
    peek = fallback.peek("k", make_call([Limit(1000, 4), Limit(10_000, 6)]))
    assert (peek.allowed, peek.remaining) == (True, 3)
    assert fallback.undo("k", 100) == 3 and len(fallback) == 0


def test_fallback_share_is_validated() -> None:
    with pytest.raises(ValueError, match="share"):
        Fallback(share=0)


def test_fallback_answers_as_the_module(module_server: Server) -> None:
    """300 seeded random CHECK/PEEK/UNDO calls (several limits, COST) on a
    few keys: the fallback (share 1) answers as the module. Windows are long,
    so the few ms between the two answers change nothing but the waits."""
    rng = random.Random(17)
    limiter = RateLimiter(module_server.client())
    fallback = Fallback()
    run = uuid.uuid4().hex
    windows, maxes = [60_000, 120_000, 300_000], [5, 10, 20]
    seen: set[tuple[str, bool]] = set()
    for step in range(300):
        key = f"random:{run}:{rng.randrange(3)}"
        operation = rng.choice(["check", "check", "check", "peek", "undo"])
        if operation == "undo":
            cost = rng.randint(1, 5)
            assert limiter.undo(key, cost) == fallback.undo(key, cost), step
            continue
        chosen = rng.sample(windows, rng.randint(1, 2))
        call = make_call([Limit(w, rng.choice(maxes)) for w in chosen], cost=rng.randint(1, 5))
        from_module = (limiter.check if operation == "check" else limiter.peek)(key, call.limits, cost=call.cost)
        local = (fallback.check if operation == "check" else fallback.peek)(key, call)
        assert (from_module.allowed, from_module.remaining) == (local.allowed, local.remaining), (step, call)
        assert abs(from_module.retry_after_ms - local.retry_after_ms) <= 100, (step, from_module, local)
        assert abs(from_module.reset_after_ms - local.reset_after_ms) <= 100, (step, from_module, local)
        seen.add((operation, local.allowed))
    # Both operations met both answers.
    assert seen == {("check", True), ("check", False), ("peek", True), ("peek", False)}
