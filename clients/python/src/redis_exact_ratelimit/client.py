"""The synchronous limiter, over ``redis.Redis`` or ``redis.cluster.RedisCluster``."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar, Union, cast, overload

import redis
from redis.cluster import RedisCluster

from ._base import LimiterBase, RoundTrip, Steps, run
from ._core import Decision, GcraDecision, GcraLimit, Limits, MultiDecision, Reservation, Settlement
from ._fallback import Fallback
from ._metrics import Metrics
from ._policy import Unavailable
from ._transport import Command, Transaction, drive, plan, standalone_name

T = TypeVar("T")

SyncClient = Union["redis.Redis", "RedisCluster"]

# Threads that wait for Redis on behalf of callers, so that a call can give
# up after its timeout even when the client's own socket timeout is longer.
_WORKERS = 16


class CallTimeout(TimeoutError):
    """Redis did not answer within the limiter's timeout."""

    def __init__(self, timeout: float) -> None:
        super().__init__(f"no answer within {timeout * 1000:g} ms")


class RateLimiter(LimiterBase):
    """Exact sliding-window limits on Redis: the RATELIMIT module where a
    server has it, the Lua twin where it does not (learned per server).

    ``timeout`` (seconds) bounds every call; when Redis fails or does not
    answer in time, ``fallback`` decides if given, otherwise the call fails
    closed (denied) or, with ``fail_open=True``, open (allowed). After a
    failure Redis is left alone for ``retry_after_failure`` seconds.
    ``metrics`` (e.g. ``PrometheusMetrics(registry)``) counts decisions,
    errors and round trips. A settlement (``settle``, ``charge``,
    ``charge_all``) that cannot reach Redis is tried again, with backoff,
    for ``settle_retry`` seconds, then logged with its amount and raised
    as ``RateLimitUnavailable`` (with a ``fallback``: recorded there)."""

    def __init__(
        self,
        client: SyncClient,
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
        self._executor: ThreadPoolExecutor | None = None
        self._executor_pid = 0
        self._executor_lock = threading.Lock()

    def check(
        self, key: str, limits: Limits, *, cost: int = 1, precision: int | None = None, block_ms: int | None = None
    ) -> Decision:
        """Decides a request and records it if every limit allows it. With
        ``block_ms``, a denial by the limits also blocks the key for that
        long: every call on it is denied until the block ends."""
        return self._run(self._deciding("check", key, limits, cost, precision, block_ms))

    def peek(
        self, key: str, limits: Limits, *, cost: int = 1, precision: int | None = None, block_ms: int | None = None
    ) -> Decision:
        """Would ``check`` allow this request now? Records nothing, starts
        no block (``block_ms`` is accepted, so peek takes check's arguments)."""
        return self._run(self._deciding("peek", key, limits, cost, precision, block_ms))

    def gcra(self, key: str, limit: GcraLimit, tokens: int = 1) -> GcraDecision:
        """Decides a request of ``tokens`` tokens against the key's token
        bucket (GCRA: ``limit.count`` per ``limit.period_ms`` in bursts of
        ``limit.max_burst + 1``) and charges it if allowed; ``tokens=0``
        asks without charging. More tokens than the bucket holds are
        refused with ``retry_after_ms`` -1. A token bucket has no refund
        and no block, and a key holds one kind of limit: a sliding-window
        call on it (or this on a sliding-window key) raises WRONGTYPE."""
        return self._run(self._gcra_deciding(key, limit, tokens))

    def undo(self, key: str, cost: int = 1, *, decision: Decision | None = None) -> int:
        """Refunds the ``cost`` newest units of the key; returns how many
        were removed. Give the decision being refunded so that one taken by
        the fallback is refunded there (and one Redis never saw, nowhere)."""
        return self._run(self._undoing(key, cost, decision))

    def unblock(self, key: str, *, reset: bool = False) -> bool:
        """Lifts the key's block; True if it was blocked. The key's history
        stays (what it counts still counts) unless ``reset``, which deletes
        the key with the block, in one MULTI/EXEC. Raises
        RateLimitUnavailable when Redis cannot be asked."""
        return self._run(self._unblocking(key, reset))

    def check_all(
        self,
        keys: Mapping[str, Limits],
        *,
        cost: int = 1,
        precision: int | None = None,
        block_ms: int | None = None,
        per_key_remaining: bool = False,
    ) -> MultiDecision:
        """Decides one request against several keys, each with its own
        limits (``{"{t:7}:user:42": Limit.per_minute(100), ...}``): allowed
        iff every key allows it, then recorded in every key, else in none.
        With ``block_ms``, the keys whose limits denied are blocked. With
        ``per_key_remaining``, the answer also has each key's own remaining
        (one PEEK per key, in the same MULTI/EXEC)."""
        return self._run(self._deciding_all("mcheck", keys, cost, precision, block_ms, per_key_remaining))

    def peek_all(
        self,
        keys: Mapping[str, Limits],
        *,
        cost: int = 1,
        precision: int | None = None,
        block_ms: int | None = None,
        per_key_remaining: bool = False,
    ) -> MultiDecision:
        """Would ``check_all`` allow this request now? Records nothing."""
        return self._run(self._deciding_all("mpeek", keys, cost, precision, block_ms, per_key_remaining))

    def undo_all(self, keys: Iterable[str], cost: int = 1, *, decision: Decision | None = None) -> dict[str, int]:
        """Refunds ``cost`` units in every key (the refund of a
        ``check_all``: pass the same mapping, or its keys); returns the
        units removed per key."""
        return self._run(self._undoing_all(keys, cost, decision))

    @overload
    def reserve(self, key: str, limits: GcraLimit, *, estimate: int) -> Reservation[GcraDecision]: ...

    @overload
    def reserve(
        self, key: str, limits: Limits, *, estimate: int, precision: int | None = None, block_ms: int | None = None
    ) -> Reservation[Decision]: ...

    @overload
    def reserve(
        self,
        key: Mapping[str, Limits],
        limits: None = None,
        *,
        estimate: int,
        precision: int | None = None,
        block_ms: int | None = None,
        per_key_remaining: bool = False,
    ) -> Reservation[MultiDecision]: ...

    def reserve(
        self,
        key: str | Mapping[str, Limits],
        limits: Limits | GcraLimit | None = None,
        *,
        estimate: int,
        precision: int | None = None,
        block_ms: int | None = None,
        per_key_remaining: bool = False,
    ) -> Reservation[Decision | GcraDecision]:
        """Reserves ``estimate`` units for a request whose cost is known
        only after it ran: ``check`` (one key and its limits) or
        ``check_all`` (a mapping of keys to their limits) with ``cost=estimate``,
        or ``gcra`` (one key and its ``GcraLimit``) with ``tokens=estimate``.
        ``reservation.decision`` is that answer; settle it with the actual
        cost once known (``settle``)."""
        return self._run(self._reserving(key, limits, estimate, precision, block_ms, per_key_remaining))

    def settle(self, reservation: Reservation[Decision | GcraDecision], actual: int) -> Settlement:
        """Settles a reservation with the request's actual cost: refunds
        (UNDO) what it did not use, charges (CHARGE, never denied) what it
        used beyond, with the same limits; on a token bucket, RATELIMIT.GCRA
        with REFUND or CHARGE of the difference. Nothing for a reservation that
        was not allowed. A reservation is settled once: again raises
        ``RateLimitSettled``. Blocks while Redis is retried (``settle_retry``);
        if it still cannot be reached, raises ``RateLimitUnavailable`` (with
        a ``fallback``: the settlement is recorded there, ``source``
        ``"fallback"``)."""
        return self._run(self._settling(reservation, actual))

    def gcra_charge(self, key: str, limit: GcraLimit, tokens: int = 1) -> Settlement:
        """RATELIMIT.GCRA ... CHARGE: adds ``tokens`` to the key's token
        bucket whatever it holds, even past full (a debt that drains at
        the rate: requests are limited until it has drained enough);
        never limited. Tells how the bucket stands after it (``over``,
        ``remaining``, ``retry_after_ms``, ``reset_after_ms``). Raises
        ``RateLimitReplyError`` for a charge that would make the bucket
        hold more than 9000000000000000 token-milliseconds (nothing is
        charged). Retried as a settlement is (``settle_retry``)."""
        return self._run(self._gcra_settling(key, limit, tokens, "charge", None))

    def gcra_refund(self, key: str, limit: GcraLimit, tokens: int = 1) -> Settlement:
        """RATELIMIT.GCRA ... REFUND: takes ``tokens`` back from the key's
        token bucket, at most what it holds (a bucket left empty is
        deleted; a missing key stays missing); tells how it stands after."""
        return self._run(self._gcra_settling(key, limit, tokens, "refund", None))

    def charge(self, key: str, limits: Limits, *, cost: int = 1, precision: int | None = None) -> Settlement:
        """RATELIMIT.CHARGE: records ``cost`` units (1 to 2^63 - 1, above
        any max too) whatever the limits say, never denied, and tells how
        the key stands against them (``over``, ``remaining``, ``retry_after_ms``)."""
        return self._run(self._charging({key: limits}, cost, precision, None, False))

    def charge_all(self, keys: Mapping[str, Limits], *, cost: int = 1, precision: int | None = None) -> Settlement:
        """RATELIMIT.MCHARGE: ``charge`` on every key with its own limits,
        in one call; ``over_keys`` are the keys now over a limit."""
        return self._run(self._charging(keys, cost, precision, None, True))

    def close(self) -> None:
        """Stops the limiter's waiting threads (the Redis client stays open)."""
        with self._executor_lock:
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None

    def _run(self, steps: Steps[T]) -> T:
        return run(steps, self._call)

    def _call(self, trip: RoundTrip[T]) -> T | Unavailable:
        server = self._server_name(trip.op.keys[0])
        if trip.retry_for is not None:
            return self._settle_call(server, trip, trip.retry_for)
        skipped = self.policy.skip(server)
        if skipped is not None:
            return skipped
        return self._attempt(server, trip, self.timeout)

    def _attempt(self, server: str, trip: RoundTrip[T], timeout: float | None) -> T | Unavailable:
        started = time.perf_counter()
        try:
            replies = self._within_timeout(trip, timeout)
        except Exception as error:
            return self._failed(server, trip, started, error)
        return self._answered(server, trip, started, replies)

    def _settle_call(self, server: str, trip: RoundTrip[T], retry_for: float) -> T | Unavailable:
        """A settlement: sent even while the server is thought down, and
        tried again with backoff until ``retry_for`` seconds have passed."""
        deadline = time.monotonic() + retry_for
        attempt = 0
        while True:
            outcome = self._attempt(server, trip, self._attempt_timeout(deadline, time.monotonic()))
            if not isinstance(outcome, Unavailable):
                return outcome
            delay = self._retry_delay(attempt, deadline, time.monotonic())
            if delay is None:
                return outcome
            time.sleep(delay)
            attempt += 1

    def _round_trip(self, trip: RoundTrip[Any]) -> list[Any]:
        steps = plan(self.policy, self.script, self._server_for(trip.op.keys[0]), trip.steps)
        return drive(steps, self._send)

    def _send(self, command: Command) -> Any:
        send: Callable[..., Any] = self.client.execute_command
        if not isinstance(command, Transaction):
            return send(*command)
        pipe = self.client.pipeline(transaction=True)
        for one in command.commands:
            pipe.execute_command(*one)
        return pipe.execute()

    def _server_for(self, key: str) -> str:
        if isinstance(self.client, RedisCluster):
            node_of = cast("Callable[[str], Any]", self.client.get_node_from_key)
            return str(node_of(key).name)
        return standalone_name(self.client.connection_pool.connection_kwargs)

    def _refund_when_answered(self, trip: RoundTrip[Any]) -> Callable[[Future[list[Any]]], None]:
        """For a check given up on: redis-py may still send it (its retries
        go on in the worker thread) and Redis then records a request that
        was answered by the failure policy. Such a charge is refunded."""

        def late(future: Future[list[Any]]) -> None:
            if future.cancelled() or future.exception() is not None:
                return
            refund = self._late_refund(trip, future.result())
            if refund is None:
                return
            try:
                self._round_trip(refund)
            except Exception as error:
                self._late_refunded(trip, error)
            else:
                self._late_refunded(trip, None)

        return late

    def _within_timeout(self, trip: RoundTrip[Any], timeout: float | None) -> list[Any]:
        if timeout is None:
            return self._round_trip(trip)
        future = self._pool().submit(self._round_trip, trip)
        try:
            return future.result(timeout)
        except FutureTimeout:
            # The round trip goes on in its thread until the client's own
            # timeouts end it; the caller does not wait for it, and a check
            # it records is refunded.
            if not future.cancel() and trip.refund is not None:
                future.add_done_callback(self._refund_when_answered(trip))
            raise CallTimeout(timeout) from None

    def _pool(self) -> ThreadPoolExecutor:
        # Threads do not survive fork: a forked worker process gets its own.
        with self._executor_lock:
            if self._executor is None or self._executor_pid != os.getpid():
                self._executor = ThreadPoolExecutor(_WORKERS, thread_name_prefix="ratelimit")
                self._executor_pid = os.getpid()
            return self._executor
