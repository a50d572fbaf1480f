"""The twin answers as the module does: one sequence of calls, made on a
server with the module and on one without, call by call; and the same
error texts for bad input sent raw (the client refuses it before Redis).
The sliding window and the token bucket (GCRA) alike."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis
from servers import Server

from redis_exact_ratelimit import Decision, GcraDecision, GcraLimit, Limit, Limits, RateLimiter

# The calls on one server are made some ms apart, more on a loaded machine
# (a CI runner: 66 ms seen), and the pair's times differ by that. Far below
# any window here, so a wrong window or wait still shows.
TIME_SLACK_MS = 1000

SEQUENCE: list[tuple[str, dict[str, Any]]] = [
    ("peek", {"limits": [Limit(1000, 3), Limit(60_000, 5)]}),
    *[("check", {"limits": [Limit(1000, 3), Limit(60_000, 5)]})] * 4,
    ("check", {"limits": Limit(60_000, 5), "cost": 2}),
    ("undo", {"cost": 2}),
    ("check", {"limits": Limit(60_000, 5), "cost": 3}),
    ("peek", {"limits": Limit(60_000, 5)}),
    ("undo", {"cost": 10}),
    ("check", {"limits": [Limit(10_000, 100), Limit(3_600_000, 1000)], "cost": 40, "precision": 500}),
    ("check", {"limits": [Limit(10_000, 100), Limit(3_600_000, 1000)], "cost": 61}),
    ("peek", {"limits": Limit(120_000, 1000), "cost": 900}),
    ("undo", {}),
]


def run(limiter: RateLimiter, key: str, operation: str, args: dict[str, Any]) -> Decision | int:
    if operation == "undo":
        return limiter.undo(key, args.get("cost", 1))
    method = limiter.check if operation == "check" else limiter.peek
    return method(key, args["limits"], cost=args.get("cost", 1), precision=args.get("precision"))


def same(a: Decision | int, b: Decision | int) -> bool:
    if isinstance(a, int) or isinstance(b, int):
        return a == b
    return (
        (a.allowed, a.remaining) == (b.allowed, b.remaining)
        and abs(a.retry_after_ms - b.retry_after_ms) <= TIME_SLACK_MS
        and abs(a.reset_after_ms - b.reset_after_ms) <= TIME_SLACK_MS
    )


def test_same_answers_call_by_call(module_server: Server, twin_server: Server) -> None:
    module = RateLimiter(module_server.client())
    twin = RateLimiter(twin_server.client())
    key = f"equal:{uuid.uuid4().hex}"
    for operation, args in SEQUENCE:
        from_module = run(module, key, operation, args)
        from_twin = run(twin, key, operation, args)
        assert same(from_module, from_twin), (operation, args, from_module, from_twin)
    assert (module.backend, twin.backend) == ("module", "twin")


BAD_CALLS = [
    ["check", "0", "5"],
    ["check", "1000", "0"],
    ["check", "1000"],
    ["check", "1000", "5", "1000", "6"],
    ["check", *[str(n) for i in range(1, 10) for n in (i * 1000, 5)]],
    ["check", "1000", "5", "COST", "0"],
    ["check", "1000", "5", "COST", "6"],
    ["check", "1000", "5", "PRECISION", "1001"],
    ["check", "1000", "5", "COST"],
    ["check", "1000", "5", "COST", "1", "COST", "1"],
    ["check", "1000", "5", "X", "1"],
    ["peek", "+1000", "5"],
    ["undo", "COST", "-1"],
]


@pytest.mark.parametrize("call", BAD_CALLS, ids=[" ".join(c)[:40] for c in BAD_CALLS])
def test_same_error_texts(module_server: Server, twin_server: Server, call: list[str]) -> None:
    operation, *args = call
    key = f"errors:{uuid.uuid4().hex}"
    with pytest.raises(redis.ResponseError) as from_module:
        module_server.client().execute_command(f"RATELIMIT.{operation.upper()}", key, *args)  # type: ignore[no-untyped-call]
    script = RateLimiter(twin_server.client()).script
    with pytest.raises(redis.ResponseError) as from_twin:
        twin_server.client().eval(script.text, 1, key, operation, *args)
    assert str(from_twin.value) == str(from_module.value)
    # Bad input changes nothing.
    assert twin_server.client().exists(key) == 0 and module_server.client().exists(key) == 0


def test_same_answers_over_several_keys(module_server: Server, twin_server: Server) -> None:
    module = RateLimiter(module_server.client())
    twin = RateLimiter(twin_server.client())
    run = uuid.uuid4().hex
    keyed: dict[str, Limits] = {
        f"{{{run}}}:a": [Limit(1000, 3), Limit(60_000, 5)],
        f"{{{run}}}:b": Limit(60_000, 4),
        f"{{{run}}}:c": Limit(10_000, 100),
    }
    for cost in (1, 2, 1, 1, 3, 1):
        pair = [limiter.check_all(keyed, cost=cost) for limiter in (module, twin)]
        assert same(*pair) and pair[0].denied_positions == pair[1].denied_positions, pair
        peeks = [limiter.peek_all(keyed) for limiter in (module, twin)]
        assert same(*peeks) and peeks[0].denied_keys == peeks[1].denied_keys, peeks
    assert module.undo_all(keyed, 2) == twin.undo_all(keyed, 2)


GCRA_SEQUENCE: list[tuple[GcraLimit, int]] = [
    (GcraLimit(4, 10, 1000), 0),
    *[(GcraLimit(4, 10, 1000), 1)] * 6,
    (GcraLimit(4, 10, 1000), 3),
    (GcraLimit(4, 10, 1000), 9),
    (GcraLimit(9, 10, 1000), 2),
    (GcraLimit(1, 10, 1000), 1),
    (GcraLimit(9, 3, 500), 1),
    (GcraLimit(9, 1000, 60_000), 4),
    (GcraLimit(15, 30, 60_000), 0),
]


def same_bucket(a: GcraDecision, b: GcraDecision) -> bool:
    return (
        (a.allowed, a.burst, a.remaining) == (b.allowed, b.burst, b.remaining)
        and (a.retry_after_ms == -1) == (b.retry_after_ms == -1)
        and abs(a.retry_after_ms - b.retry_after_ms) <= TIME_SLACK_MS
        and abs(a.reset_after_ms - b.reset_after_ms) <= TIME_SLACK_MS
    )


def test_same_token_bucket_answers_call_by_call(module_server: Server, twin_server: Server) -> None:
    """Limits changed between calls (burst, rate, period), TOKENS 0, more
    tokens than the bucket: the twin's answer is the module's."""
    module = RateLimiter(module_server.client())
    twin = RateLimiter(twin_server.client())
    key = f"equal-gcra:{uuid.uuid4().hex}"
    for limit, tokens in GCRA_SEQUENCE:
        pair = [limiter.gcra(key, limit, tokens) for limiter in (module, twin)]
        assert same_bucket(*pair), (limit, tokens, pair)
    assert [answer.backend for answer in pair] == ["module", "twin"]


BAD_GCRA_CALLS = [
    ["1", "1"],
    ["-1", "1", "1"],
    ["1", "0", "1"],
    ["1", "1", "0.0001"],
    ["1", "1", "1e3"],
    ["4499999999999999", "1", "2"],
    ["1", "1", "1", "TOKENS"],
    ["1", "1", "1", "TOKENS", "-1"],
    ["1", "1", "1", "MS", "MS"],
    ["1", "1", "1", "COST", "1"],
]


@pytest.mark.parametrize("call", BAD_GCRA_CALLS, ids=[" ".join(c)[:40] for c in BAD_GCRA_CALLS])
def test_same_token_bucket_error_texts(module_server: Server, twin_server: Server, call: list[str]) -> None:
    key = f"errors-gcra:{uuid.uuid4().hex}"
    with pytest.raises(redis.ResponseError) as from_module:
        module_server.client().execute_command("RATELIMIT.GCRA", key, *call)  # type: ignore[no-untyped-call]
    script = RateLimiter(twin_server.client()).script
    with pytest.raises(redis.ResponseError) as from_twin:
        twin_server.client().eval(script.text, 1, key, "gcra", *call)
    assert str(from_twin.value) == str(from_module.value)
    assert twin_server.client().exists(key) == 0 and module_server.client().exists(key) == 0
