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
    MAX_EXACT,
    MAX_MAX,
    Backend,
    Decision,
    Delete,
    GcraDecision,
    GcraLimit,
    GcraSettle,
    Limits,
    MultiDecision,
    Op,
    Operation,
    RateLimitInputError,
    RateLimitReplyError,
    RateLimitUnavailable,
    Reservation,
    Script,
    Settlement,
    gcra_decision,
    gcra_settlement,
    make_call,
    make_charge_call,
    make_gcra_call,
    make_multi_call,
    make_multi_charge_call,
    parse_count,
    parse_counts,
    parse_decision,
    parse_gcra_reply,
    parse_gcra_settlement,
    parse_multi_decision,
    parse_remaining,
    parse_settlement,
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
_SETTLE_LOST = (
    "redis-ratelimit: a settlement on %s (%s of %s units) could not reach Redis within %s ms (%s); it was not recorded"
)
_SETTLE_FALLBACK = (
    "redis-ratelimit: a settlement on %s (%s of %s units) could not reach Redis within %s ms (%s);"
    " it was recorded in this process's fallback only"
)

# Waits between a settlement's attempts: doubling from the first, at most the last.
SETTLE_BACKOFF = (0.05, 1.0)


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
    # A settlement's: tried again on an outage, with backoff, for this
    # many seconds (each attempt bounded by what is left of them).
    retry_for: float | None = None

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
        settle_retry: float = 5.0,
    ) -> None:
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be above 0 seconds (or None: the client's own), got {timeout!r}")
        if isinstance(settle_retry, bool) or not isinstance(settle_retry, (int, float)) or settle_retry < 0:
            raise ValueError(f"settle_retry must be at least 0 seconds, got {settle_retry!r}")
        self.settle_retry = float(settle_retry)
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

    def _reserving(
        self,
        key: str | Mapping[str, Limits],
        limits: Limits | GcraLimit | None,
        estimate: int,
        precision: int | None,
        block_ms: int | None,
        per_key_remaining: bool,
    ) -> Steps[Reservation[Decision | GcraDecision]]:
        """CHECK (one key) or MCHECK (a mapping of keys to limits) of
        ``estimate`` units, or GCRA of ``estimate`` tokens (one key and its
        GcraLimit), kept with what its settlement needs."""
        if isinstance(limits, GcraLimit):
            if not isinstance(key, str):
                raise RateLimitInputError(f"a token bucket is reserved on one key, got {key!r}")
            if precision is not None or block_ms is not None or per_key_remaining:
                raise RateLimitInputError("a token bucket takes no precision, block_ms or per_key_remaining")
            bucket: GcraDecision = yield from self._gcra_deciding(key, limits, estimate)
            return Reservation(bucket, estimate, {key: ()}, None, False, gcra=limits)
        if isinstance(key, Mapping):
            if limits is not None:
                raise RateLimitInputError("give several keys as a mapping of key to limits, without limits")
            # Validated as the settlement's charge will be, before anything is sent.
            charges = make_multi_charge_call(key, 1, precision)
            multi: Decision = yield from self._deciding_all(
                "mcheck", key, estimate, precision, block_ms, per_key_remaining
            )
            kept = {name: call.limits for name, call in zip(charges.keys, charges.calls, strict=True)}
            return Reservation(multi, estimate, kept, precision, True)
        if limits is None:
            raise RateLimitInputError(f"give the limits of key {key!r}")
        charge = make_charge_call(limits, 1, precision)
        one = yield from self._deciding("check", key, limits, estimate, precision, block_ms)
        return Reservation(one, estimate, {validate_key(key): charge.limits}, precision, False)

    def _settling(self, reservation: Reservation[Decision | GcraDecision], actual: int) -> Steps[Settlement]:
        """The settlement of a reservation: UNDO (MUNDO) of what it did
        not use, CHARGE (MCHARGE) of what it used beyond, nothing when it
        used exactly the estimate or was not allowed (or allowed by the
        failure policy, which counted nothing). On a token bucket, GCRA
        with ``REFUND`` or ``CHARGE`` of the difference."""
        if not isinstance(reservation, Reservation):
            raise RateLimitInputError(f"settle takes the Reservation that reserve returned, got {reservation!r}")
        _require_actual(actual, MAX_MAX if reservation.gcra is None else MAX_EXACT)
        reservation.claim()
        try:
            decision, keys = reservation.decision, reservation.keys
            diff = actual - reservation.estimate
            if diff == 0 or not decision.allowed or decision.source in ("fail_open", "fail_closed"):
                return Settlement(None, keys=keys)
            if isinstance(decision, GcraDecision):
                limit = reservation.gcra
                assert limit is not None
                how: GcraSettle = "charge" if diff > 0 else "refund"
                return (yield from self._gcra_settling(keys[0], limit, abs(diff), how, decision))
            if diff > 0:
                limits, precision, multi = reservation.limits, reservation.precision, reservation.multi
                return (yield from self._charging(limits, diff, precision, decision, multi))
            return (yield from self._refunding(keys, -diff, decision))
        except RateLimitReplyError:
            # The call's own error: nothing was recorded, it may be settled again.
            reservation.release()
            raise

    def _charging(
        self,
        keyed: Mapping[str, Limits],
        cost: int,
        precision: int | None,
        decision: Decision | None,
        multi: bool,
    ) -> Steps[Settlement]:
        """CHARGE (one key) or MCHARGE, never denied; tried again for
        ``settle_retry`` seconds while Redis is unreachable, then logged
        with its amount. A reservation decided by the fallback is settled
        there; one Redis never saw (the failure policy's), nowhere."""
        if multi:
            charges = make_multi_charge_call(keyed, cost, precision)
            given, calls = charges.keys, charges.calls
            args = charges.args()
        else:
            [(key, limits)] = keyed.items()
            call = make_charge_call(limits, cost, precision)
            given, calls, args = (validate_key(key),), (call,), call.args()
        full = self._full_keys(given) if multi else (self._full_key(given[0]),)
        if decision is not None and decision.source != "redis":
            fallback = self.policy.fallback
            if decision.source == "fallback" and fallback is not None:
                done = fallback.charge_all(full, calls, multi=multi)
                return replace(done, keys=given)
            return Settlement(None, keys=given)
        op = Op("mcharge" if multi else "charge", full, tuple(args))
        parse = _first(lambda reply: parse_settlement(reply, given, cost))
        outcome = yield RoundTrip((op,), parse, retry_for=self.settle_retry)
        if isinstance(outcome, Unavailable):
            return self._unsettled(
                full, "charge", cost, given, outcome, lambda fallback: fallback.charge_all(full, calls, multi=multi)
            )
        settled: Settlement = outcome
        return settled

    def _gcra_settling(
        self, key: str, limit: GcraLimit, tokens: int, how: GcraSettle, decision: GcraDecision | None
    ) -> Steps[Settlement]:
        """RATELIMIT.GCRA with ``CHARGE`` or ``REFUND``, never limited;
        tried again for ``settle_retry`` seconds while Redis is
        unreachable, then logged with its amount. A reservation decided by
        the fallback is settled there; one Redis never saw (the failure
        policy's), nowhere."""
        full = self._full_key(key)
        call = make_gcra_call(limit, tokens, how)
        given = (key,)
        if decision is not None and decision.source != "redis":
            fallback = self.policy.fallback
            if decision.source == "fallback" and fallback is not None:
                return replace(fallback.gcra_settle(full, call), keys=given)
            return Settlement(None, keys=given)
        op = Op("gcra", (full,), tuple(call.args()))
        parse = _first(lambda reply: gcra_settlement(parse_gcra_settlement(reply), "redis", key, tokens, how))
        outcome = yield RoundTrip((op,), parse, retry_for=self.settle_retry)
        if isinstance(outcome, Unavailable):
            return self._unsettled(
                (full,), how, tokens, given, outcome, lambda fallback: fallback.gcra_settle(full, call)
            )
        settled: Settlement = outcome
        return settled

    def _refunding(self, keys: tuple[str, ...], cost: int, decision: Decision) -> Steps[Settlement]:
        """A settlement's refund: UNDO (MUNDO over several keys), retried
        as a charge is; ``refunded`` is the least any key gave back."""
        multi = isinstance(decision, MultiDecision)
        full = self._full_keys(keys) if multi else (self._full_key(keys[0]),)
        local = self._undo_locally(full, cost, decision)
        if local is not None:
            return Settlement("fallback", refunded=min(local), keys=keys)
        if multi:
            trip = RoundTrip(
                (Op("mundo", full, undo_args(cost)),),
                _first(lambda reply: min(parse_counts(reply, keys).values())),
                retry_for=self.settle_retry,
            )
        else:
            trip = RoundTrip((Op("undo", full, undo_args(cost)),), _first(parse_count), retry_for=self.settle_retry)
        outcome = yield trip
        if isinstance(outcome, Unavailable):
            return self._unsettled(
                full,
                "refund",
                cost,
                keys,
                outcome,
                lambda fallback: Settlement("fallback", refunded=min(fallback.undo_all(full, cost))),
            )
        return Settlement("redis", refunded=outcome, keys=keys)

    def _unsettled(
        self,
        full: Sequence[str],
        action: GcraSettle,
        units: int,
        keys: tuple[str, ...],
        why: Unavailable,
        record: Callable[[Fallback], Settlement],
    ) -> Settlement:
        """A settlement Redis did not answer within ``settle_retry``
        (contract/transport.json: settle_lost, settle_fallback): with a
        fallback, recorded there and logged as such; otherwise logged
        with its amount (never a stack) and raised as RateLimitUnavailable."""
        names = ", ".join(full)
        # Strings, as every detail of a contract line (no handler formats an object).
        amount, ms = str(units), str(round(self.settle_retry * 1000))
        fallback = self.policy.fallback
        if fallback is not None:
            done = record(fallback)
            logger.warning(_SETTLE_FALLBACK, names, action, amount, ms, why.cause)
            return replace(done, keys=keys, error=why.error)
        logger.error(_SETTLE_LOST, names, action, amount, ms, why.cause)
        server = self._server_name(full[0])
        raise RateLimitUnavailable(
            f"Redis at {server} is unavailable ({why.cause}); the settlement on {names}"
            f" ({action} of {units} units) was not recorded"
        ) from why.error

    def _retry_delay(self, attempt: int, deadline: float, now: float) -> float | None:
        """The wait before a settlement's next attempt, or None: its time is up."""
        left = deadline - now
        if left <= 0:
            return None
        first, most = SETTLE_BACKOFF
        return min(first * 2.0 ** min(attempt, 16), most, left)

    def _attempt_timeout(self, deadline: float, now: float) -> float | None:
        """A settlement's attempt waits for what is left of its time (at
        least the limiter's timeout): one that Redis may yet answer is not
        sent again, which could count it twice."""
        if self.timeout is None:
            return None
        return max(self.timeout, deadline - now)

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


def _require_actual(actual: object, most: int) -> int:
    if isinstance(actual, bool) or not isinstance(actual, int) or not 0 <= actual <= most:
        raise RateLimitInputError(f"actual must be an integer from 0 to {most}, got {actual!r}")
    return actual


def run(steps: Steps[T], round_trip: Callable[[RoundTrip[Any]], Any]) -> T:
    """Runs an operation with a blocking round trip."""
    try:
        trip = next(steps)
        while True:
            try:
                outcome = round_trip(trip)
            except Exception as error:
                # Raised where the operation waits (a settlement unclaims itself).
                trip = steps.throw(error)
            else:
                trip = steps.send(outcome)
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
