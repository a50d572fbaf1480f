"""The synchronous limiter, over ``redis.Redis`` or ``redis.cluster.RedisCluster``."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar, Union, cast

import redis
from redis.cluster import RedisCluster

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
from ._policy import Unavailable, logger
from ._transport import drive, plan, standalone_name

T = TypeVar("T")

SyncClient = Union["redis.Redis", "RedisCluster"]

# Threads that wait for Redis on behalf of callers, so that a call can give
# up after its timeout even when the client's own socket timeout is longer.
_WORKERS = 16


class CallTimeout(TimeoutError):
    """Redis did not answer within the limiter's timeout."""


class RateLimiter(LimiterBase):
    """Exact sliding-window limits on Redis: the RATELIMIT module where a
    server has it, the Lua twin where it does not (learned per server).

    ``timeout`` (seconds) bounds every call; when Redis fails or does not
    answer in time, ``fallback`` decides if given, otherwise the call fails
    closed (denied) or, with ``fail_open=True``, open (allowed). After a
    failure Redis is left alone for ``retry_after_failure`` seconds."""

    def __init__(
        self,
        client: SyncClient,
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
        self._executor: ThreadPoolExecutor | None = None
        self._executor_pid = 0
        self._executor_lock = threading.Lock()

    def check(
        self, key: str, limits: Limits, *, cost: int = 1, precision: int | None = None, block_ms: int | None = None
    ) -> Decision:
        """Decides a request and records it if every limit allows it. With
        ``block_ms``, a denial by the limits also blocks the key for that
        long: every call on it is denied until the block ends."""
        return self._decide("check", key, limits, cost, precision, block_ms)

    def peek(
        self, key: str, limits: Limits, *, cost: int = 1, precision: int | None = None, block_ms: int | None = None
    ) -> Decision:
        """Would ``check`` allow this request now? Records nothing, starts
        no block (``block_ms`` is accepted, so peek takes check's arguments)."""
        return self._decide("peek", key, limits, cost, precision, block_ms)

    def undo(self, key: str, cost: int = 1, *, decision: Decision | None = None) -> int:
        """Refunds the ``cost`` newest units of the key; returns how many
        were removed. Give the decision being refunded so that one taken by
        the fallback is refunded there (and one Redis never saw, nowhere)."""
        full = self._full_key(key)
        local = self._undo_locally([full], cost, decision)
        if local is not None:
            return local[0]
        outcome = self._call("undo", (full,), undo_args(cost), parse_count)
        if isinstance(outcome, Unavailable):
            return self.policy.undo_without_redis(full, cost)
        return outcome

    def unblock(self, key: str) -> bool:
        """Lifts the key's block, keeping its history (what it counts still
        counts); True if it was blocked. Raises RateLimitUnavailable when
        Redis cannot be asked."""
        full = self._full_key(key)
        outcome = self._call("unblock", (full,), [], parse_unblocked)
        if isinstance(outcome, Unavailable):
            return self.policy.unblock_without_redis(full, outcome)
        return outcome

    def check_all(
        self,
        keys: Mapping[str, Limits],
        *,
        cost: int = 1,
        precision: int | None = None,
        block_ms: int | None = None,
    ) -> MultiDecision:
        """Decides one request against several keys, each with its own
        limits (``{"{t:7}:user:42": Limit.per_minute(100), ...}``): allowed
        iff every key allows it, then recorded in every key, else in none.
        With ``block_ms``, the keys whose limits denied are blocked."""
        return self._decide_all("mcheck", keys, cost, precision, block_ms)

    def peek_all(
        self,
        keys: Mapping[str, Limits],
        *,
        cost: int = 1,
        precision: int | None = None,
        block_ms: int | None = None,
    ) -> MultiDecision:
        """Would ``check_all`` allow this request now? Records nothing."""
        return self._decide_all("mpeek", keys, cost, precision, block_ms)

    def undo_all(self, keys: Iterable[str], cost: int = 1, *, decision: Decision | None = None) -> dict[str, int]:
        """Refunds ``cost`` units in every key (the refund of a
        ``check_all``: pass the same mapping, or its keys); returns the
        units removed per key."""
        given = validate_keys(keys)
        full = self._full_keys(given)
        local = self._undo_locally(full, cost, decision)
        if local is not None:
            return dict(zip(given, local, strict=True))
        outcome = self._call("mundo", full, undo_args(cost), lambda reply: parse_counts(reply, given))
        return self._undone_all(given, full, cost, outcome)

    def close(self) -> None:
        """Stops the limiter's waiting threads (the Redis client stays open)."""
        with self._executor_lock:
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None

    def _decide(
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
        late = self._refund_if_charged("undo", (full,), call.cost) if operation == "check" else None
        outcome = self._call(operation, (full,), call.args(), parse_decision, late)
        return self._decided(operation == "check", full, call, outcome)

    def _decide_all(
        self,
        operation: Operation,
        keys: Mapping[str, Limits],
        cost: int,
        precision: int | None,
        block_ms: int | None,
    ) -> MultiDecision:
        multi, full = self._multi_call(keys, cost, precision, block_ms)
        late = self._refund_if_charged("mundo", full, cost) if operation == "mcheck" else None
        outcome = self._call(operation, full, multi.args(), lambda reply: parse_multi_decision(reply, multi.keys), late)
        return self._decided_all(operation == "mcheck", full, multi, outcome)

    def _call(
        self,
        operation: Operation,
        keys: Sequence[str],
        args: list[str],
        parse: Callable[[Any], T],
        late: Callable[[Future[Any]], None] | None = None,
    ) -> T | Unavailable:
        server = self._server_name(keys[0])
        skipped = self.policy.skip(server)
        if skipped is not None:
            return skipped
        try:
            value = parse(self._within_timeout(lambda: self._round_trip(operation, keys, args), late))
        except Exception as error:
            return self._unavailable(server, operation, keys, error)
        self.policy.succeeded(server)
        return value

    def _round_trip(self, operation: Operation, keys: Sequence[str], args: list[str]) -> Any:
        steps = plan(self.policy, self.script, self._server_for(keys[0]), operation, keys, args)
        send: Callable[..., Any] = self.client.execute_command
        return drive(steps, lambda command: send(*command))

    def _server_for(self, key: str) -> str:
        if isinstance(self.client, RedisCluster):
            node_of = cast("Callable[[str], Any]", self.client.get_node_from_key)
            return str(node_of(key).name)
        return standalone_name(self.client.connection_pool.connection_kwargs)

    def _refund_if_charged(self, refund: Operation, keys: Sequence[str], cost: int) -> Callable[[Future[Any]], None]:
        """For a check given up on: redis-py may still send it (its retries
        go on in the worker thread) and Redis then records a request that
        was answered by the failure policy. Such a charge is refunded (UNDO,
        or MUNDO for a check over several keys)."""

        def late(future: Future[Any]) -> None:
            if future.cancelled() or future.exception() is not None:
                return
            try:
                # Both replies start with CHECK's four numbers.
                if not parse_decision(list(future.result())[:4]).allowed:
                    return
                self._round_trip(refund, keys, undo_args(cost))
            except Exception as error:
                logger.error("rate-limit check on %s ran after its timeout; its refund failed: %s", list(keys), error)
                return
            logger.warning("rate-limit check on %s ran after its timeout; its charge was refunded", list(keys))

        return late

    def _within_timeout(self, work: Callable[[], T], late: Callable[[Future[Any]], None] | None = None) -> T:
        if self.timeout is None:
            return work()
        future = self._pool().submit(work)
        try:
            return future.result(self.timeout)
        except FutureTimeout:
            # The round trip goes on in its thread until the client's own
            # timeouts end it; the caller does not wait for it, and `late`
            # gets what it finally did.
            if not future.cancel() and late is not None:
                future.add_done_callback(late)
            raise CallTimeout(f"no answer from Redis within {self.timeout * 1000:g} ms") from None

    def _pool(self) -> ThreadPoolExecutor:
        # Threads do not survive fork: a forked worker process gets its own.
        with self._executor_lock:
            if self._executor is None or self._executor_pid != os.getpid():
                self._executor = ThreadPoolExecutor(_WORKERS, thread_name_prefix="ratelimit")
                self._executor_pid = os.getpid()
            return self._executor
