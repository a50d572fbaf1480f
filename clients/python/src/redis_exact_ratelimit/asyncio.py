"""The asyncio limiter, over ``redis.asyncio.Redis`` or ``redis.asyncio.cluster.RedisCluster``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar, Union

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from ._base import LimiterBase
from ._core import (
    Decision,
    Limits,
    MultiDecision,
    Operation,
    make_call,
    parse_count,
    parse_counts,
    parse_decision,
    parse_multi_decision,
    parse_unblocked,
    undo_args,
    validate_keys,
)
from ._fallback import Fallback
from ._policy import Unavailable
from ._transport import Plan, plan, standalone_name
from .client import CallTimeout

T = TypeVar("T")

AsyncClient = Union["aioredis.Redis", "RedisCluster"]


class AsyncRateLimiter(LimiterBase):
    """The asyncio twin of :class:`redis_exact_ratelimit.RateLimiter`: same
    options, same answers, awaitable."""

    def __init__(
        self,
        client: AsyncClient,
        *,
        prefix: str = "",
        timeout: float | None = 0.25,
        fail_open: bool = False,
        fallback: Fallback | None = None,
        retry_after_failure: float = 1.0,
    ) -> None:
        super().__init__(
            prefix=prefix,
            timeout=timeout,
            fail_open=fail_open,
            fallback=fallback,
            retry_after_failure=retry_after_failure,
            cluster=isinstance(client, RedisCluster),
        )
        self.client = client

    async def check(
        self, key: str, limits: Limits, *, cost: int = 1, precision: int | None = None, block_ms: int | None = None
    ) -> Decision:
        """Decides a request and records it if every limit allows it (see
        :meth:`RateLimiter.check`)."""
        return await self._decide("check", key, limits, cost, precision, block_ms)

    async def peek(
        self, key: str, limits: Limits, *, cost: int = 1, precision: int | None = None, block_ms: int | None = None
    ) -> Decision:
        """Would ``check`` allow this request now? Records nothing."""
        return await self._decide("peek", key, limits, cost, precision, block_ms)

    async def undo(self, key: str, cost: int = 1, *, decision: Decision | None = None) -> int:
        """Refunds the ``cost`` newest units of the key; returns how many
        were removed (see :meth:`RateLimiter.undo`)."""
        full = self._full_key(key)
        local = self._undo_locally([full], cost, decision)
        if local is not None:
            return local[0]
        outcome = await self._call("undo", (full,), undo_args(cost), parse_count)
        if isinstance(outcome, Unavailable):
            return self.policy.undo_without_redis(full, cost)
        return outcome

    async def unblock(self, key: str) -> bool:
        """Lifts the key's block, keeping its history (see :meth:`RateLimiter.unblock`)."""
        full = self._full_key(key)
        outcome = await self._call("unblock", (full,), [], parse_unblocked)
        if isinstance(outcome, Unavailable):
            return self.policy.unblock_without_redis(full, outcome)
        return outcome

    async def check_all(
        self,
        keys: Mapping[str, Limits],
        *,
        cost: int = 1,
        precision: int | None = None,
        block_ms: int | None = None,
    ) -> MultiDecision:
        """One request against several keys, all or nothing (see :meth:`RateLimiter.check_all`)."""
        return await self._decide_all("mcheck", keys, cost, precision, block_ms)

    async def peek_all(
        self,
        keys: Mapping[str, Limits],
        *,
        cost: int = 1,
        precision: int | None = None,
        block_ms: int | None = None,
    ) -> MultiDecision:
        """Would ``check_all`` allow this request now? Records nothing."""
        return await self._decide_all("mpeek", keys, cost, precision, block_ms)

    async def undo_all(self, keys: Iterable[str], cost: int = 1, *, decision: Decision | None = None) -> dict[str, int]:
        """Refunds ``cost`` units in every key (see :meth:`RateLimiter.undo_all`)."""
        given = validate_keys(keys)
        full = self._full_keys(given)
        local = self._undo_locally(full, cost, decision)
        if local is not None:
            return dict(zip(given, local, strict=True))
        outcome = await self._call("mundo", full, undo_args(cost), lambda reply: parse_counts(reply, given))
        return self._undone_all(given, full, cost, outcome)

    async def _decide(
        self,
        operation: Operation,
        key: str,
        limits: Limits,
        cost: int,
        precision: int | None,
        block_ms: int | None,
    ) -> Decision:
        full = self._full_key(key)
        call = make_call(limits, cost, precision, block_ms)
        outcome = await self._call(operation, (full,), call.args(), parse_decision)
        return self._decided(operation == "check", full, call, outcome)

    async def _decide_all(
        self,
        operation: Operation,
        keys: Mapping[str, Limits],
        cost: int,
        precision: int | None,
        block_ms: int | None,
    ) -> MultiDecision:
        multi, full = self._multi_call(keys, cost, precision, block_ms)
        outcome = await self._call(operation, full, multi.args(), lambda reply: parse_multi_decision(reply, multi.keys))
        return self._decided_all(operation == "mcheck", full, multi, outcome)

    async def _call(
        self, operation: Operation, keys: Sequence[str], args: list[str], parse: Callable[[Any], T]
    ) -> T | Unavailable:
        server = self._server_name(keys[0])
        skipped = self.policy.skip(server)
        if skipped is not None:
            return skipped
        try:
            value = parse(await self._within_timeout(self._round_trip(operation, keys, args)))
        except Exception as error:
            return self._unavailable(server, operation, keys, error)
        self.policy.succeeded(server)
        return value

    async def _round_trip(self, operation: Operation, keys: Sequence[str], args: list[str]) -> Any:
        if isinstance(self.client, RedisCluster):
            # Learns the slot map on first use (a no-op after), so the
            # key's server can be named before the command is sent.
            await self.client.initialize()
        steps = plan(self.policy, self.script, self._server_for(keys[0]), operation, keys, args)
        return await _drive(steps, self.client.execute_command)

    def _server_for(self, key: str) -> str:
        if isinstance(self.client, RedisCluster):
            node = self.client.get_node_from_key(key)
            if node is None:
                raise ConnectionError(f"the cluster has no node for key {key!r} yet")
            return str(node.name)
        return standalone_name(self.client.connection_pool.connection_kwargs)

    async def _within_timeout(self, work: Any) -> Any:
        if self.timeout is None:
            return await work
        try:
            # Cancelling a redis.asyncio command closes its connection, so
            # a late reply cannot be read as the next command's.
            return await asyncio.wait_for(work, self.timeout)
        except asyncio.TimeoutError:
            raise CallTimeout(f"no answer from Redis within {self.timeout * 1000:g} ms") from None


async def _drive(steps: Plan, send: Callable[..., Any]) -> Any:
    """Runs a plan (see _transport.plan) with an awaitable send."""
    try:
        command = next(steps)
        while True:
            try:
                reply = await send(*command)
            except Exception as error:
                command = steps.throw(error)
            else:
                command = steps.send(reply)
    except StopIteration as stop:
        return stop.value
