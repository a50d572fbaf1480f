"""Redis Cluster (3 masters, created with redis-cli --cluster create), with
the module and without it (the twin), sync and asyncio: every call goes
to the key's master (no MOVED in INFO errorstats) and each key stays exact."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.exceptions import ResponseError
from servers import Cluster

from redis_exact_ratelimit import AsyncRateLimiter, Decision, GcraLimit, Limit, RateLimiter, RateLimitInputError

KEYS = 100
CALLS_PER_KEY = 4
LIMIT = Limit.per_minute(3)
HOUR = 3_600_000


def keys() -> list[str]:
    run = uuid.uuid4().hex[:8]
    return [f"cluster:{run}:{i}" for i in range(KEYS)]


def assert_exact(answers: dict[str, list[Decision]]) -> None:
    assert all(a.source == "redis" for per_key in answers.values() for a in per_key)
    admitted = {key: sum(a.allowed for a in per_key) for key, per_key in answers.items()}
    assert set(admitted.values()) == {3}, admitted


def test_sync_cluster_client(cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="redis_exact_ratelimit")
    client = RedisCluster(host="127.0.0.1", port=cluster.port)
    limiter = RateLimiter(client, timeout=5)
    moved_before = cluster.error_counts().get("errorstat_MOVED", 0)
    answers = {key: [limiter.check(key, LIMIT) for _ in range(CALLS_PER_KEY)] for key in keys()}
    moved = cluster.error_counts().get("errorstat_MOVED", 0) - moved_before
    print(f"\nsync cluster, {limiter.backend}: {KEYS * CALLS_PER_KEY} calls on {KEYS} keys, MOVED: {moved}")
    assert moved == 0
    assert_exact(answers)
    backend = "module" if cluster.nodes[0].module else "twin"
    assert limiter.backend == backend
    assert set(limiter.backends) == {f"127.0.0.1:{node.port}" for node in cluster.nodes}
    # Learned once per server, and said once per server.
    said = [r for r in caplog.records if "RATELIMIT module" in r.getMessage()]
    assert len(said) == 3
    # The count can fail: a call sent to a node that does not own the key is counted.
    owner = client.get_node_from_key("control")  # type: ignore[no-untyped-call]
    other = next(node for node in cluster.nodes if node.port != owner.port)
    with other.client() as wrong, pytest.raises(ResponseError):  # MOVED
        wrong.execute_command("EVALSHA", limiter.script.sha1, 1, "control", "peek", "1000", "1")
    assert cluster.error_counts().get("errorstat_MOVED", 0) - moved_before == 1
    client.close()


def test_asyncio_cluster_client(cluster: Cluster) -> None:
    async def run() -> dict[str, list[Decision]]:
        client = AsyncRedisCluster(host="127.0.0.1", port=cluster.port)
        # 100 first calls at once open a connection each per node: under a
        # loaded machine that took over 5 s. This test is about routing and
        # exactness, so it waits as long as a hang check needs.
        limiter = AsyncRateLimiter(client, timeout=60)

        async def calls(key: str) -> list[Decision]:
            return [await limiter.check(key, LIMIT) for _ in range(CALLS_PER_KEY)]

        chosen = keys()
        answers = dict(zip(chosen, await asyncio.gather(*(calls(key) for key in chosen)), strict=True))
        assert limiter.backend == ("module" if cluster.nodes[0].module else "twin")
        await client.aclose()
        return answers

    moved_before = cluster.error_counts().get("errorstat_MOVED", 0)
    answers = asyncio.run(run())
    moved = cluster.error_counts().get("errorstat_MOVED", 0) - moved_before
    print(f"\nasyncio cluster: {KEYS * CALLS_PER_KEY} calls on {KEYS} keys, MOVED: {moved}")
    assert moved == 0
    assert_exact(answers)


def test_a_stopped_master_fails_only_its_own_keys() -> None:
    """The outage state is per server: with one master down, its keys take
    the failure policy and the other masters' keys are still decided in Redis."""
    cluster = Cluster(module=True, extra=("--cluster-require-full-coverage", "no"))
    try:
        client = RedisCluster(host="127.0.0.1", port=cluster.port)
        limiter = RateLimiter(client, timeout=0.5, retry_after_failure=30)
        chosen = keys()[:30]
        owners = {key: client.get_node_from_key(key).port for key in chosen}  # type: ignore[no-untyped-call]
        down = cluster.nodes[0]
        assert down.port in owners.values() and len(set(owners.values())) == 3
        down.stop()
        sources = {key: limiter.check(key, LIMIT).source for key in chosen}
        for key, port in owners.items():
            assert sources[key] == ("fail_closed" if port == down.port else "redis"), (key, port, sources[key])
        client.close()
    finally:
        cluster.remove()


def tagged(count: int) -> list[dict[str, Limit]]:
    """User, IP and tenant keys under one hash tag per tenant: tenants
    spread over the masters, each call's keys on one."""
    run = uuid.uuid4().hex[:8]
    return [
        {
            f"{{tenant:{run}:{t}}}:user:42": Limit.per_minute(2),
            f"{{tenant:{run}:{t}}}:ip:10.0.0.1": Limit.per_minute(5),
            f"{{tenant:{run}:{t}}}:all": Limit.per_minute(100),
        }
        for t in range(count)
    ]


def limiter_calls(cluster: Cluster) -> dict[str, int]:
    calls = cluster.command_calls()
    return {name: count for name, count in calls.items() if name.startswith(("cmdstat_ratelimit", "cmdstat_eval"))}


def test_several_keys_on_a_cluster(cluster: Cluster) -> None:
    """Hash-tagged keys go to their master in one call (no MOVED); keys in
    different slots are refused before anything is sent."""
    client = RedisCluster(host="127.0.0.1", port=cluster.port)
    limiter = RateLimiter(client, timeout=5)
    tenants = tagged(12)
    assert len({client.get_node_from_key(next(iter(keyed))).port for keyed in tenants}) == 3  # type: ignore[no-untyped-call]
    moved_before = cluster.error_counts().get("errorstat_MOVED", 0)
    answers = [[limiter.check_all(keyed) for _ in range(3)] for keyed in tenants]
    assert cluster.error_counts().get("errorstat_MOVED", 0) == moved_before
    for keyed, per_tenant in zip(tenants, answers, strict=True):
        assert [a.allowed for a in per_tenant] == [True, True, False]
        assert per_tenant[2].denied_keys == (next(iter(keyed)),)
        assert limiter.undo_all(keyed) == dict.fromkeys(keyed, 1)
    assert limiter.backend == ("module" if cluster.nodes[0].module else "twin")
    sent_before = limiter_calls(cluster)
    apart = {"user:42": Limit.per_minute(2), "ip:10.0.0.1": Limit.per_minute(5)}
    with pytest.raises(RateLimitInputError, match=r"must share a hash slot.*one hash tag"):
        limiter.check_all(apart)
    with pytest.raises(RateLimitInputError, match="must share a hash slot"):
        limiter.undo_all(apart)
    assert limiter_calls(cluster) == sent_before
    client.close()


def test_several_keys_on_a_cluster_with_asyncio(cluster: Cluster) -> None:
    async def run() -> None:
        client = AsyncRedisCluster(host="127.0.0.1", port=cluster.port)
        limiter = AsyncRateLimiter(client, timeout=60)
        tenants = tagged(12)
        answers = await asyncio.gather(*(limiter.check_all(keyed) for keyed in tenants for _ in range(3)))
        assert sum(a.allowed for a in answers) == 2 * len(tenants)
        assert all(a.source == "redis" for a in answers)
        assert (await limiter.peek_all(tenants[0])).denied_positions == (0,)
        with pytest.raises(RateLimitInputError, match="must share a hash slot"):
            await limiter.peek_all({"user:42": Limit.per_minute(2), "ip:10.0.0.1": Limit.per_minute(5)})
        await client.aclose()

    asyncio.run(run())


def test_one_multi_exec_per_call_on_a_cluster(cluster: Cluster) -> None:
    """What goes in one MULTI/EXEC (check_all with each key's remaining;
    unblock with reset) goes to the keys' master, sync and asyncio."""
    tenants = tagged(6)
    client = RedisCluster(host="127.0.0.1", port=cluster.port)
    limiter = RateLimiter(client, timeout=5)
    moved_before = cluster.error_counts().get("errorstat_MOVED", 0)
    for keyed in tenants:
        assert limiter.check_all(keyed, per_key_remaining=True).per_key_remaining == (1, 4, 99)
        user = next(iter(keyed))
        assert [limiter.check(user, Limit.per_minute(2), block_ms=HOUR).allowed for _ in range(2)] == [True, False]
        assert limiter.unblock(user, reset=True) is True
        assert client.exists(user) == 0
    client.close()

    async def run() -> None:
        aclient = AsyncRedisCluster(host="127.0.0.1", port=cluster.port)
        alimiter = AsyncRateLimiter(aclient, timeout=60)
        for keyed in tenants:
            assert (await alimiter.check_all(keyed, per_key_remaining=True)).per_key_remaining == (1, 3, 98)
            assert await alimiter.unblock(next(iter(keyed)), reset=True) is False
        await aclient.aclose()

    asyncio.run(run())
    assert cluster.error_counts().get("errorstat_MOVED", 0) == moved_before


def test_token_buckets_on_a_cluster(cluster: Cluster) -> None:
    """RATELIMIT.GCRA (and the twin's gcra) go to the key's master, sync
    and asyncio: a bucket of 3 admits 3 of 4 on every key, no MOVED."""
    bucket = GcraLimit(2, 1, 60_000)
    moved_before = cluster.error_counts().get("errorstat_MOVED", 0)
    client = RedisCluster(host="127.0.0.1", port=cluster.port)
    limiter = RateLimiter(client, timeout=5)
    chosen = keys()[:30]
    admitted = {key: sum(limiter.gcra(key, bucket).allowed for _ in range(4)) for key in chosen}
    assert set(admitted.values()) == {3}
    assert limiter.backend == ("module" if cluster.nodes[0].module else "twin")
    client.close()

    async def run() -> set[int]:
        aclient = AsyncRedisCluster(host="127.0.0.1", port=cluster.port)
        alimiter = AsyncRateLimiter(aclient, timeout=60)
        answers = [[(await alimiter.gcra(key + ":a", bucket)).allowed for _ in range(4)] for key in chosen]
        await aclient.aclose()
        return {sum(per_key) for per_key in answers}

    assert asyncio.run(run()) == {3}
    assert cluster.error_counts().get("errorstat_MOVED", 0) == moved_before
