"""The asyncio limiter, over ``redis.asyncio.Redis`` or ``redis.asyncio.cluster.RedisCluster``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, Union, overload

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from ._base import LimiterBase, RoundTrip, Steps
from ._core import Decision, GcraDecision, GcraLimit, Limits, MultiDecision, Reservation, Settlement
from ._fallback import Fallback
from ._metrics import Metrics
from ._policy import Unavailable
from ._transport import Command, Plan, Transaction, plan, standalone_name
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
        metrics: Metrics | None = None,
        settle_retry: float = 5.0,
    ) -> None:
        super().__init__(
            prefix=prefix,
            timeout=timeout,
            fail_open=fail_open,
            fallback=fallback,
            retry_after_failure=retry_after_failure,
            metrics=metrics,
            cluster=isinstance(client, RedisCluster),
            settle_retry=settle_retry,
        )
        self.client = client
        # Late refunds under way: the event loop keeps only weak references.
        self._refunds: set[asyncio.Task[None]] = set()

    async def check(
        self, key: str, limits: Limits, *, cost: int = 1, precision: int | None = None, block_ms: int | None = None
    ) -> Decision:
        """Decides a request and records it if every limit allows it (see
        :meth:`RateLimiter.check`)."""
        return await self._run(self._deciding("check", key, limits, cost, precision, block_ms))

    async def peek(
        self, key: str, limits: Limits, *, cost: int = 1, precision: int | None = None, block_ms: int | None = None
    ) -> Decision:
        """Would ``check`` allow this request now? Records nothing."""
        return await self._run(self._deciding("peek", key, limits, cost, precision, block_ms))

    async def gcra(self, key: str, limit: GcraLimit, tokens: int = 1) -> GcraDecision:
        """Decides a request of ``tokens`` tokens against the key's token
        bucket and charges it if allowed (see :meth:`RateLimiter.gcra`)."""
        return await self._run(self._gcra_deciding(key, limit, tokens))

    async def undo(self, key: str, cost: int = 1, *, decision: Decision | None = None) -> int:
        """Refunds the ``cost`` newest units of the key; returns how many
        were removed (see :meth:`RateLimiter.undo`)."""
        return await self._run(self._undoing(key, cost, decision))

    async def unblock(self, key: str, *, reset: bool = False) -> bool:
        """Lifts the key's block; with ``reset`` also deletes the key (see
        :meth:`RateLimiter.unblock`)."""
        return await self._run(self._unblocking(key, reset))

    async def check_all(
        self,
        keys: Mapping[str, Limits],
        *,
        cost: int = 1,
        precision: int | None = None,
        block_ms: int | None = None,
        per_key_remaining: bool = False,
    ) -> MultiDecision:
        """One request against several keys, all or nothing (see :meth:`RateLimiter.check_all`)."""
        return await self._run(self._deciding_all("mcheck", keys, cost, precision, block_ms, per_key_remaining))

    async def peek_all(
        self,
        keys: Mapping[str, Limits],
        *,
        cost: int = 1,
        precision: int | None = None,
        block_ms: int | None = None,
        per_key_remaining: bool = False,
    ) -> MultiDecision:
        """Would ``check_all`` allow this request now? Records nothing."""
        return await self._run(self._deciding_all("mpeek", keys, cost, precision, block_ms, per_key_remaining))

    async def undo_all(self, keys: Iterable[str], cost: int = 1, *, decision: Decision | None = None) -> dict[str, int]:
        """Refunds ``cost`` units in every key (see :meth:`RateLimiter.undo_all`)."""
        return await self._run(self._undoing_all(keys, cost, decision))

    @overload
    async def reserve(self, key: str, limits: GcraLimit, *, estimate: int) -> Reservation[GcraDecision]: ...

    @overload
    async def reserve(
        self, key: str, limits: Limits, *, estimate: int, precision: int | None = None, block_ms: int | None = None
    ) -> Reservation[Decision]: ...

    @overload
    async def reserve(
        self,
        key: Mapping[str, Limits],
        limits: None = None,
        *,
        estimate: int,
        precision: int | None = None,
        block_ms: int | None = None,
        per_key_remaining: bool = False,
    ) -> Reservation[MultiDecision]: ...

    async def reserve(
        self,
        key: str | Mapping[str, Limits],
        limits: Limits | GcraLimit | None = None,
        *,
        estimate: int,
        precision: int | None = None,
        block_ms: int | None = None,
        per_key_remaining: bool = False,
    ) -> Reservation[Decision | GcraDecision]:
        """Reserves ``estimate`` units (see :meth:`RateLimiter.reserve`)."""
        return await self._run(self._reserving(key, limits, estimate, precision, block_ms, per_key_remaining))

    async def settle(self, reservation: Reservation[Decision | GcraDecision], actual: int) -> Settlement:
        """Settles a reservation with the actual cost (see :meth:`RateLimiter.settle`)."""
        return await self._run(self._settling(reservation, actual))

    async def gcra_charge(self, key: str, limit: GcraLimit, tokens: int = 1) -> Settlement:
        """Charges a token bucket (see :meth:`RateLimiter.gcra_charge`)."""
        return await self._run(self._gcra_settling(key, limit, tokens, "charge", None))

    async def gcra_refund(self, key: str, limit: GcraLimit, tokens: int = 1) -> Settlement:
        """Refunds a token bucket (see :meth:`RateLimiter.gcra_refund`)."""
        return await self._run(self._gcra_settling(key, limit, tokens, "refund", None))

    async def charge(self, key: str, limits: Limits, *, cost: int = 1, precision: int | None = None) -> Settlement:
        """RATELIMIT.CHARGE, never denied (see :meth:`RateLimiter.charge`)."""
        return await self._run(self._charging({key: limits}, cost, precision, None, False))

    async def charge_all(
        self, keys: Mapping[str, Limits], *, cost: int = 1, precision: int | None = None
    ) -> Settlement:
        """RATELIMIT.MCHARGE (see :meth:`RateLimiter.charge_all`)."""
        return await self._run(self._charging(keys, cost, precision, None, True))

    async def _run(self, steps: Steps[T]) -> T:
        """Runs an operation (see _base.run) with an awaited round trip."""
        try:
            trip = next(steps)
            while True:
                try:
                    outcome = await self._call(trip)
                except Exception as error:
                    # Raised where the operation waits (a settlement unclaims itself).
                    trip = steps.throw(error)
                else:
                    trip = steps.send(outcome)
        except StopIteration as stop:
            answer: T = stop.value
            return answer

    async def _call(self, trip: RoundTrip[T]) -> T | Unavailable:
        server = self._server_name(trip.op.keys[0])
        if trip.retry_for is not None:
            return await self._settle_call(server, trip, trip.retry_for)
        skipped = self.policy.skip(server)
        if skipped is not None:
            return skipped
        return await self._attempt(server, trip, self.timeout)

    async def _attempt(self, server: str, trip: RoundTrip[T], timeout: float | None) -> T | Unavailable:
        started = time.perf_counter()
        try:
            replies = await self._within_timeout(trip, timeout)
        except Exception as error:
            return self._failed(server, trip, started, error)
        return self._answered(server, trip, started, replies)

    async def _settle_call(self, server: str, trip: RoundTrip[T], retry_for: float) -> T | Unavailable:
        """A settlement: sent even while the server is thought down, and
        tried again with backoff until ``retry_for`` seconds have passed."""
        deadline = time.monotonic() + retry_for
        attempt = 0
        while True:
            outcome = await self._attempt(server, trip, self._attempt_timeout(deadline, time.monotonic()))
            if not isinstance(outcome, Unavailable):
                return outcome
            delay = self._retry_delay(attempt, deadline, time.monotonic())
            if delay is None:
                return outcome
            await asyncio.sleep(delay)
            attempt += 1

    async def _round_trip(self, trip: RoundTrip[Any]) -> list[Any]:
        if isinstance(self.client, RedisCluster):
            # Learns the slot map on first use (a no-op after), so the
            # key's server can be named before the command is sent.
            await self.client.initialize()
        steps = plan(self.policy, self.script, self._server_for(trip.op.keys[0]), trip.steps)
        return await _drive(steps, self._send)

    async def _send(self, command: Command) -> Any:
        if not isinstance(command, Transaction):
            return await self.client.execute_command(*command)
        if isinstance(self.client, RedisCluster):
            return await _on_one_node(self.client, command)
        pipe = self.client.pipeline(transaction=True)
        for one in command.commands:
            pipe.execute_command(*one)
        return await pipe.execute()

    def _server_for(self, key: str) -> str:
        if isinstance(self.client, RedisCluster):
            node = self.client.get_node_from_key(key)
            if node is None:
                raise ConnectionError(f"the cluster has no node for key {key!r} yet")
            return str(node.name)
        return standalone_name(self.client.connection_pool.connection_kwargs)

    async def _within_timeout(self, trip: RoundTrip[Any], timeout: float | None) -> list[Any]:
        if timeout is None:
            return await self._round_trip(trip)
        work = asyncio.ensure_future(self._round_trip(trip))
        try:
            done, _ = await asyncio.wait({work}, timeout=timeout)
        except asyncio.CancelledError:
            work.cancel()
            raise
        if work in done:
            return work.result()
        if trip.refund is None:
            # Cancelling a redis.asyncio command closes its connection, so
            # a late reply cannot be read as the next command's.
            work.cancel()
        else:
            # A check may count in Redis even so (a hung server answers it
            # once it resumes): it is awaited, and refunded if it did.
            refund = asyncio.ensure_future(self._refund_when_answered(work, trip, timeout))
            self._refunds.add(refund)
            refund.add_done_callback(self._refunds.discard)
        raise CallTimeout(timeout)

    async def _refund_when_answered(
        self, work: asyncio.Future[list[Any]], trip: RoundTrip[Any], timeout: float
    ) -> None:
        try:
            replies = await work
        except Exception:
            return
        refund = self._late_refund(trip, replies)
        if refund is None:
            return
        try:
            await asyncio.wait_for(self._round_trip(refund), timeout)
        except Exception as error:
            self._late_refunded(trip, CallTimeout(timeout) if isinstance(error, asyncio.TimeoutError) else error)
        else:
            self._late_refunded(trip, None)


async def _drive(steps: Plan, send: Callable[[Command], Any]) -> list[Any]:
    """Runs a plan (see _transport.plan) with an awaitable send."""
    try:
        command = next(steps)
        while True:
            try:
                reply = await send(command)
            except Exception as error:
                command = steps.throw(error)
            else:
                command = steps.send(reply)
    except StopIteration as stop:
        replies: list[Any] = stop.value
        return replies


async def _on_one_node(client: RedisCluster, transaction: Transaction) -> list[Any]:
    """MULTI/EXEC on the master of the transaction's key, over one of its
    connections. (redis-py's asyncio cluster pipeline queues a transaction's
    commands from another event loop, which the connections refuse.)"""
    node = client.get_node_from_key(transaction.key)
    if node is None:
        raise ConnectionError(f"the cluster has no node for key {transaction.key!r} yet")
    connection = node.acquire_connection()
    try:
        await connection.send_packed_command(connection.pack_commands([["MULTI"], *transaction.commands, ["EXEC"]]))
        # MULTI's OK and each command's QUEUED, or the error that aborts it.
        queued = [await _read(connection) for _ in range(len(transaction.commands) + 1)]
        replies = await _read(connection)
    except BaseException:
        # Replies may be left unread: the connection is not reused.
        await connection.disconnect()
        raise
    finally:
        node.release(connection)
    # As redis-py's own transactions: the first error, a queued command's
    # (unknown command) before EXEC's EXECABORT or a command's in EXEC.
    answered = [replies] if isinstance(replies, Exception) else list(replies)
    errors = [reply for reply in [*queued, *answered] if isinstance(reply, Exception)]
    if errors:
        raise errors[0]
    return answered


async def _read(connection: Any) -> Any:
    """One reply; an error reply is returned, not raised, so every reply of
    the transaction is read."""
    try:
        return await connection.read_response()
    except ResponseError as error:
        return error
