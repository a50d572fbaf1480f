"""Several keys in one decision (check_all, peek_all, undo_all) on a server
with the module (MCHECK, MPEEK, MUNDO) and on one without (the twin's
mcheck, mpeek, mundo), sync and asyncio, RESP2 and RESP3."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis
from servers import Server

from redis_exact_ratelimit import (
    AsyncRateLimiter,
    Limit,
    Limits,
    MultiDecision,
    RateLimiter,
    RateLimitInputError,
    RateLimitReplyError,
)

EXPECTED_BACKEND = {True: "module", False: "twin"}


def subjects() -> dict[str, Limits]:
    """A user, an IP and a tenant, on one hash tag, each with its own limits."""
    tenant = f"{{tenant:{uuid.uuid4().hex[:12]}}}"
    return {
        f"{tenant}:user:42": Limit.per_minute(3),
        f"{tenant}:ip:10.0.0.1": [Limit.per_second(50), Limit.per_minute(5)],
        f"{tenant}:all": Limit.per_minute(10),
    }


def standing(limiter: RateLimiter, keyed: dict[str, Limits]) -> list[int]:
    """What each key has left, peeked alone."""
    return [limiter.peek(key, limits).remaining for key, limits in keyed.items()]


@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize("full", [0, 1, 2])
def test_a_denial_by_any_one_key_charges_no_key(server: Server, protocol: int, full: int) -> None:
    """Whichever of user, IP and tenant is full, the call is denied, says
    which key denied, and changes what no key counts."""
    limiter = RateLimiter(server.client(protocol=protocol))
    keyed = subjects()
    key = list(keyed)[full]
    while limiter.check(key, keyed[key]).allowed:
        pass
    before = standing(limiter, keyed)
    denied = limiter.check_all(keyed)
    assert isinstance(denied, MultiDecision) and denied.source == "redis"
    assert (denied.allowed, denied.remaining) == (False, 0)
    assert (denied.denied_positions, denied.denied_keys) == ((full,), (key,))
    assert 59_000 < denied.retry_after_ms <= 60_000 and denied.keys == tuple(keyed)
    assert standing(limiter, keyed) == before
    assert limiter.backend == EXPECTED_BACKEND[server.module]


@pytest.mark.parametrize("protocol", [2, 3])
def test_allowed_charges_every_key_and_undo_all_refunds_it(server: Server, protocol: int) -> None:
    limiter = RateLimiter(server.client(protocol=protocol, decode_responses=protocol == 3))
    keyed = subjects()
    first = limiter.check_all(keyed, cost=2)
    # The least over the keys: the user's 3 less 2.
    assert (first.allowed, first.remaining, first.retry_after_ms, first.reset_after_ms) == (True, 1, 0, 60_000)
    assert first.denied_positions == () and first.denied_keys == ()
    assert standing(limiter, keyed) == [1, 3, 8]
    peeked = limiter.peek_all(keyed, cost=2)
    assert (peeked.allowed, peeked.denied_keys) == (False, (next(iter(keyed)),))
    assert standing(limiter, keyed) == [1, 3, 8]
    # The refund of a failed handler, in one call: the mapping's keys.
    assert limiter.undo_all(keyed, 2, decision=first) == dict.fromkeys(keyed, 2)
    assert standing(limiter, keyed) == [3, 5, 10]
    assert limiter.undo_all(list(keyed)) == dict.fromkeys(keyed, 0)


def test_several_denying_keys_and_the_combined_wait(server: Server) -> None:
    limiter = RateLimiter(server.client())
    run = uuid.uuid4().hex
    keyed: dict[str, Limits] = {f"{run}:a": Limit(10_000, 1), f"{run}:b": Limit(60_000, 1), f"{run}:c": Limit(5000, 9)}
    assert limiter.check_all(keyed).allowed
    denied = limiter.check_all(keyed)
    assert denied.denied_positions == (0, 1) and denied.denied_keys == (f"{run}:a", f"{run}:b")
    # The wait until every key allows: the longest of the denying keys'.
    assert 59_000 < denied.retry_after_ms <= 60_000 and 59_000 < denied.reset_after_ms <= 60_000
    assert denied.remaining == 0


def test_an_error_on_one_key_changes_no_key(server: Server) -> None:
    limiter = RateLimiter(server.client())
    keyed = subjects()
    other = list(keyed)[1]
    server.client().rpush(other, "x")
    with pytest.raises(RateLimitReplyError, match="WRONGTYPE"):
        limiter.check_all(keyed)
    first, _, last = keyed
    assert [limiter.peek(key, keyed[key]).remaining for key in (first, last)] == [3, 10]
    assert server.client().exists(first, last) == 0


def test_prefix_applies_to_every_key(server: Server) -> None:
    limiter = RateLimiter(server.client(), prefix="rl:")
    keyed = subjects()
    decision = limiter.check_all(keyed)
    assert decision.keys == tuple(keyed)
    assert server.client().exists(*(f"rl:{key}" for key in keyed)) == 3
    assert limiter.undo_all(keyed) == dict.fromkeys(keyed, 1)


def test_bad_keys_are_refused_before_redis(server: Server) -> None:
    limiter = RateLimiter(server.client())
    with pytest.raises(RateLimitInputError, match="key 'b': cost must be an integer from 1 to 2"):
        limiter.check_all({"a": Limit.per_minute(5), "b": Limit.per_minute(2)}, cost=3)
    with pytest.raises(RateLimitInputError, match="give 1 to 16 keys, got 17"):
        limiter.check_all({f"k{i}": Limit.per_minute(5) for i in range(17)})
    with pytest.raises(RateLimitInputError, match="'a' is given more than once"):
        limiter.undo_all(["a", "a"])
    assert server.client().exists("a", "b") == 0


@pytest.mark.parametrize("protocol", [2, 3])
def test_asyncio_several_keys(server: Server, protocol: int) -> None:
    async def run() -> None:
        client = aioredis.Redis(host="127.0.0.1", port=server.port, protocol=protocol)
        limiter = AsyncRateLimiter(client)
        keyed = subjects()
        answers = await asyncio.gather(*(limiter.check_all(keyed) for _ in range(8)))
        # The user's 3 a minute binds; every denial names the user's key.
        assert sum(a.allowed for a in answers) == 3
        user = next(iter(keyed))
        assert {a.denied_keys for a in answers if not a.allowed} == {(user,)}
        assert limiter.backend == EXPECTED_BACKEND[server.module]
        peeked = await limiter.peek_all(keyed)
        assert (peeked.allowed, peeked.denied_positions) == (False, (0,))
        assert await limiter.undo_all(keyed, 3) == dict.fromkeys(keyed, 3)
        assert (await limiter.check_all(keyed, cost=3)).allowed
        await client.aclose()

    asyncio.run(run())
