"""What the sync and asyncio limiters share: options, validation, the
backend summary, every operation (written once, as a generator that yields
its Redis round trip and receives the outcome, which each client drives
with its own I/O), and turning an error into an outage or a raised error."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from redis.crc import key_slot

from ._core import (
    Backend,
    Decision,
    Delete,
    GcraDecision,
    GcraLimit,
    Limits,
    MultiDecision,
    Op,
    Operation,
    RateLimitInputError,
    RateLimitReplyError,
    Script,
    gcra_decision,
    make_call,
    make_gcra_call,
    make_multi_call,
    parse_count,
    parse_counts,
    parse_decision,
    parse_gcra_reply,
    parse_multi_decision,
    parse_remaining,
    parse_unblocked,
    undo_args,
    validate_key,
    validate_keys,
    validate_undo_cost,
)
from ._fallback import Answer, Fallback
from ._metrics import Metrics, NoMetrics
from ._policy import BackendSummary, Policy, Unavailable, logger
from ._transport import cause_of, is_call_error, server_text

T = TypeVar("T")

_SCRIPT: Script | None = None

# contract/transport.json, "logs": the same texts in the Node package.
_LATE_REFUND = "redis-ratelimit: a check on %s was answered after its timeout; its charge was refunded"
_LATE_REFUND_FAILED = "redis-ratelimit: a check on %s was answered after its timeout; its refund failed (%s)"


def _script() -> Script:
    # Read once per process, on first use: importing the package does no I/O.
    global _SCRIPT
    if _SCRIPT is None:
        _SCRIPT = Script.load()
    return _SCRIPT


@dataclass(frozen=True)
class RoundTrip(Generic[T]):
    """One round trip to the server of ``steps[0]``'s keys: one operation,
    or several sent in one MULTI/EXEC; ``parse`` reads their replies.
    ``refund`` is the refund of a check, sent if the check is answered
    after its timeout and was allowed there."""

    steps: tuple[Op | Delete, ...]
    parse: Callable[[list[Any]], T]
    refund: Op | None = None

    @property
    def op(self) -> Op:
        first = self.steps[0]
        assert isinstance(first, Op)
        return first


Steps = Generator[RoundTrip[Any], Any, T]
"""An operation: yields its round trip, receives its outcome (the parsed
reply, or Unavailable), returns the answer."""


class LimiterBase:
    def __init__(
        self,
        *,
        prefix: str,
        timeout: float | None,
        fail_open: bool,
        fallback: Fallback | None,
        retry_after_failure: float,
        metrics: Metrics | None,
        cluster: bool,
    ) -> None:
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be above 0 seconds (or None: the client's own), got {timeout!r}")
        self.prefix = prefix
        self.timeout = timeout
        self.policy = Policy("open" if fail_open else "closed", fallback, retry_after_failure)
        self.metrics: Metrics = metrics or NoMetrics()
        self.script = _script()
        self._cluster = cluster

    @property
    def backend(self) -> BackendSummary:
        """``"module"`` or ``"twin"`` when every server seen so far agrees,
        ``"mixed"`` when cluster nodes differ, None before the first answer."""
        return self.policy.backend()

    @property
    def backends(self) -> Mapping[str, Backend]:
        """The backend learned for each server (``host:port``)."""
        return self.policy.backends()

    @property
    def fallback(self) -> Fallback | None:
        return self.policy.fallback

    # -- the operations, written once ------------------------------------------

    def _deciding(
        self, operation: Operation, key: str, limits: Limits, cost: int, precision: int | None, block_ms: int | None
    ) -> Steps[Decision]:
        """CHECK (recorded) or PEEK on one key."""
        full = self._full_key(key)
        call = make_call(limits, cost, precision, block_ms)
        record = operation == "check"
        op = Op(operation, (full,), tuple(call.args()))
        refund = Op("undo", (full,), undo_args(call.cost)) if record else None
        outcome = yield RoundTrip((op,), _first(parse_decision), refund)
        if isinstance(outcome, Unavailable):
            return self.policy.decide_without_redis(record, [full], [call], outcome).decision
        decision: Decision = outcome
        return decision

    def _deciding_all(
        self,
        operation: Operation,
        keys: Mapping[str, Limits],
        cost: int,
        precision: int | None,
        block_ms: int | None,
        per_key_remaining: bool,
    ) -> Steps[MultiDecision]:
        """MCHECK (recorded) or MPEEK over several keys; with
        ``per_key_remaining``, a PEEK of each key in the same MULTI/EXEC
        tells each key's own remaining after the call."""
        multi = make_multi_call(keys, cost, precision, block_ms)
        full = self._full_keys(multi.keys)
        record = operation == "mcheck"
        op = Op(operation, full, tuple(multi.args()))
        peeks = [Op("peek", (key,), tuple(call.pairs())) for key, call in zip(full, multi.calls, strict=True)]
        steps: tuple[Op, ...] = (op, *peeks) if per_key_remaining else (op,)

        def parse(replies: list[Any]) -> MultiDecision:
            decision = parse_multi_decision(replies[0], multi.keys)
            return replace(decision, per_key_remaining=tuple(map(parse_remaining, replies[1:])))

        refund = Op("mundo", full, undo_args(cost)) if record else None
        outcome = yield RoundTrip(steps, parse, refund)
        if isinstance(outcome, Unavailable):
            answer = self.policy.decide_without_redis(record, full, multi.calls, outcome)
            return _as_multi(answer, multi.keys, per_key_remaining)
        decision: MultiDecision = outcome
        return decision

    def _gcra_deciding(self, key: str, limit: GcraLimit, tokens: int) -> Steps[GcraDecision]:
        """RATELIMIT.GCRA on one key, waits in ms. No refund: a token
        bucket has none (a charge answered after its timeout stays)."""
        full = self._full_key(key)
        call = make_gcra_call(limit, tokens)
        outcome = yield RoundTrip((Op("gcra", (full,), tuple(call.args())),), _first(parse_gcra_reply))
        if isinstance(outcome, Unavailable):
            return self.policy.gcra_without_redis(full, call, outcome)
        # The server's backend, learned by this round trip.
        return gcra_decision(outcome, "redis", self.policy.backend_of(self._server_name(full)))

    def _undoing(self, key: str, cost: int, decision: Decision | None) -> Steps[int]:
        full = self._full_key(key)
        local = self._undo_locally([full], cost, decision)
        if local is not None:
            return local[0]
        outcome = yield RoundTrip((Op("undo", (full,), undo_args(cost)),), _first(parse_count))
        if isinstance(outcome, Unavailable):
            return self.policy.undo_without_redis(full, cost)
        removed: int = outcome
        return removed

    def _undoing_all(self, keys: Iterable[str], cost: int, decision: Decision | None) -> Steps[dict[str, int]]:
        given = validate_keys(keys)
        full = self._full_keys(given)
        local = self._undo_locally(full, cost, decision)
        if local is not None:
            return dict(zip(given, local, strict=True))
        outcome = yield RoundTrip(
            (Op("mundo", full, undo_args(cost)),), _first(lambda reply: parse_counts(reply, given))
        )
        if isinstance(outcome, Unavailable):
            return dict(zip(given, self.policy.undo_all_without_redis(full, cost), strict=True))
        removed: dict[str, int] = outcome
        return removed

    def _unblocking(self, key: str, reset: bool) -> Steps[bool]:
        """UNBLOCK; with ``reset``, and DEL of the key in the same
        MULTI/EXEC (the key is the log and the block together)."""
        full = self._full_key(key)
        op = Op("unblock", (full,))
        outcome = yield RoundTrip((op, Delete(full)) if reset else (op,), _first(parse_unblocked))
        if isinstance(outcome, Unavailable):
            return self.policy.unblock_without_redis(self._server_name(full), full, reset, outcome)
        lifted: bool = outcome
        return lifted

    # -- one round trip, around its I/O ----------------------------------------

    def _answered(self, server: str, trip: RoundTrip[T], started: float, replies: list[Any]) -> T | Unavailable:
        """The outcome of a round trip the server answered."""
        try:
            value = trip.parse(replies)
        except Exception as error:
            # A reply that is not the module's is never read as allowed.
            return self._failed(server, trip, started, error)
        self.metrics.round_trip(trip.op.operation, time.perf_counter() - started)
        self.policy.succeeded(server)
        return value

    def _failed(self, server: str, trip: RoundTrip[Any], started: float, error: Exception) -> Unavailable:
        """An error from a round trip: raised if it is about the call (and
        not logged: the caller has it), otherwise an outage that the
        failure policy answers."""
        self.metrics.round_trip(trip.op.operation, time.perf_counter() - started)
        cause = cause_of(error)
        self.metrics.error(cause.kind)
        if is_call_error(error):
            raise RateLimitReplyError(server_text(error)) from error
        return self.policy.failed(server, cause.text, error)

    def _late_refund(self, trip: RoundTrip[Any], replies: list[Any]) -> RoundTrip[Any] | None:
        """For a check given up on and answered later: its refund if Redis
        allowed (and so recorded) it, since the caller had the policy's
        answer."""
        # CHECK's and MCHECK's replies both start with the same four numbers.
        if trip.refund is None or not parse_decision(list(replies[0])[:4]).allowed:
            return None
        return RoundTrip((trip.refund,), _first(parse_count))

    def _late_refunded(self, trip: RoundTrip[Any], error: BaseException | None) -> None:
        keys = ", ".join(trip.op.keys)
        if error is None:
            logger.warning(_LATE_REFUND, keys)
        else:
            logger.error(_LATE_REFUND_FAILED, keys, cause_of(error).text)

    # -- keys and servers --------------------------------------------------------

    def _server_for(self, key: str) -> str:
        """The ``host:port`` of the server that owns the key."""
        raise NotImplementedError

    def _server_name(self, key: str) -> str:
        """The key's server for the outage state, without I/O: a cluster
        whose slot map is not known yet is one name."""
        try:
            return self._server_for(key)
        except Exception:
            return "cluster"

    def _full_key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def _full_keys(self, keys: Sequence[str]) -> tuple[str, ...]:
        """The keys of one multi-key call (validated already), prefixed; on
        a cluster they must share a hash slot, which is told here rather
        than as the server's CROSSSLOT or redis-py's routing error."""
        full = tuple(self.prefix + key for key in keys)
        if self._cluster:
            slots = [key_slot(key.encode()) for key in full]
            if len(set(slots)) > 1:
                other = next(i for i, slot in enumerate(slots) if slot != slots[0])
                raise RateLimitInputError(
                    f"on a cluster, the keys of one call must share a hash slot: {full[0]!r} is in slot {slots[0]},"
                    f" {full[other]!r} in slot {slots[other]}; give them one hash tag,"
                    " such as '{tenant:7}:user:42' and '{tenant:7}:ip:10.0.0.1'"
                )
        return full

    def _undo_locally(self, keys: Sequence[str], cost: int, decision: Decision | None) -> list[int] | None:
        """The refund of a decision Redis never saw, or None to ask Redis."""
        validate_undo_cost(cost)
        if decision is None or decision.source == "redis":
            return None
        if decision.source == "fallback":
            return self.policy.undo_all_without_redis(keys, cost)
        return [0 for _ in keys]


def run(steps: Steps[T], round_trip: Callable[[RoundTrip[Any]], Any]) -> T:
    """Runs an operation with a blocking round trip."""
    try:
        trip = next(steps)
        while True:
            trip = steps.send(round_trip(trip))
    except StopIteration as stop:
        answer: T = stop.value
        return answer


def _first(parse: Callable[[Any], T]) -> Callable[[list[Any]], T]:
    """Reads the reply of a round trip of one operation."""
    return lambda replies: parse(replies[0])


def _as_multi(answer: Answer, keys: tuple[str, ...], per_key_remaining: bool) -> MultiDecision:
    """A decision taken without Redis, over the keys as given."""
    decision = answer.decision
    return MultiDecision(
        decision.allowed,
        decision.remaining,
        decision.retry_after_ms,
        decision.reset_after_ms,
        decision.source,
        decision.error,
        keys=keys,
        denied_positions=answer.denied,
        per_key_remaining=answer.per_key_remaining if per_key_remaining else (),
    )
