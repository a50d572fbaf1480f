"""What every middleware shares: the verdict on one request (decided once,
for the sync and the async skins alike), the IETF fields of
draft-ietf-httpapi-ratelimit-headers-11, shadow mode, the decisions'
metrics, the refund, and the default answers. The framework skins (asgi,
wsgi, fastapi, flask, django) only read requests and write responses."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from ._core import (
    Decision,
    GcraDecision,
    GcraLimit,
    Limit,
    Limits,
    MultiDecision,
    RateLimitReplyError,
    RateLimitSettled,
    RateLimitUnavailable,
    Reservation,
    make_call,
    make_gcra_call,
    policy_names,
    seconds_ceil,
    validate_block_ms,
)
from ._metrics import Metrics, Outcome
from ._policy import logger

if TYPE_CHECKING:
    from .asyncio import AsyncRateLimiter
    from .client import RateLimiter

R = TypeVar("R")
T = TypeVar("T")

Reason = Literal["limited", "unavailable"]

# The same text in the Node package (docs: "Shadow mode").
_SHADOW_DENIED = "redis-ratelimit: shadow mode: %s would have denied this request (retry after %d ms)"
# A settle function that failed, or answered something else than a cost.
_SETTLE_FUNCTION = "redis-ratelimit: the settle function for %s failed (%s); its estimate of %d units stands"
# A settlement Redis refused (an older module, WRONGTYPE ...): the response is gone already.
_SETTLE_REFUSED = "redis-ratelimit: the settlement of a request on %s was refused (%s)"

ActualResult = int | None
"""What a ``settle`` function returns: the request's actual cost, or None
(the estimate stands)."""


@dataclass(frozen=True)
class Verdict:
    """The decision on one request, as a middleware uses it and as a 429
    (or 503) hook receives it.

    ``reason`` is ``"limited"`` (over a limit: 429, or allowed) or
    ``"unavailable"`` (Redis unreachable and failing closed: 503);
    ``headers`` are the fields the default answer sets; ``keys`` the keys
    checked (one, or several with a ``keys`` function: then ``decision``
    is a :class:`MultiDecision` that names the keys that denied; with a
    ``gcra`` limit, a :class:`GcraDecision`); ``cost`` the request's cost
    (a token bucket's tokens); ``policy`` the name of the policy that
    binds (the one ``RateLimit`` names)."""

    passed: bool
    reason: Reason
    decision: Decision | GcraDecision
    keys: tuple[str, ...]
    cost: int
    headers: dict[str, str] = field(default_factory=dict)
    policy: str = "default"
    # With a settle function: the reservation of ``cost`` units, settled
    # with the actual cost once the response has finished.
    reservation: Reservation[Decision | GcraDecision] | None = None

    @property
    def key(self) -> str:
        """The key checked (the first, with several)."""
        return self.keys[0]

    @property
    def status(self) -> int:
        """The status of a refusal: 429 when limited, 503 when unavailable."""
        return 429 if self.reason == "limited" else 503

    @property
    def body(self) -> bytes:
        return b"Too Many Requests\n" if self.reason == "limited" else b"Rate limiter unavailable\n"


def as_list(limits: Limits) -> list[Limit]:
    return [limits] if isinstance(limits, Limit) else list(limits)


Named = list[list[tuple[str, Limit]]]
"""Each key's limits (in key order), each with its policy name."""


def named_policies(limits: Sequence[Sequence[Limit]], name: str) -> Named:
    """The policy names of RateLimit-Policy. One key: its limit is
    ``name`` (several: ``<name>-<seconds>s``). Several keys: each key's
    ``<name>-<position>`` (1-based; ``-<seconds>s`` added when a key has
    several limits). A limit's own ``name`` wins."""
    if len(limits) == 1:
        return [list(zip(policy_names(limits[0], name), limits[0], strict=True))]
    named: Named = []
    for position, own in enumerate(limits, start=1):
        names = [f"{name}-{position}"] if len(own) == 1 else policy_names(own, f"{name}-{position}")
        named.append([(limit.name or names[i], limit) for i, limit in enumerate(own)])
    return named


def binding_position(decision: Decision) -> int:
    """The key whose policy binds: the first that denied; when allowed,
    the one with the least remaining (ties: the first given), when the
    decision tells each key's."""
    if not isinstance(decision, MultiDecision):
        return 0
    if decision.denied_positions:
        return decision.denied_positions[0]
    remaining = decision.per_key_remaining
    return remaining.index(min(remaining)) if remaining else 0


def rate_limit_headers(named: Named, decision: Decision) -> dict[str, str]:
    """RateLimit-Policy lists every limit of every key; RateLimit reports
    the least remaining (what the module answers) under the binding
    policy's name, with t the seconds until capacity returns: all of it
    when allowed, enough for this request when refused. Retry-After on
    refusals."""
    policy = ", ".join(
        f'"{name}";q={limit.max};w={seconds_ceil(limit.window_ms)}' for own in named for name, limit in own
    )
    shown = named[binding_position(decision)][0][0]
    wait_ms = decision.reset_after_ms if decision.allowed else decision.retry_after_ms
    headers = {
        "RateLimit-Policy": policy,
        "RateLimit": f'"{shown}";r={decision.remaining};t={seconds_ceil(wait_ms)}',
    }
    if not decision.allowed:
        headers["Retry-After"] = str(max(1, seconds_ceil(decision.retry_after_ms)))
    return headers


def gcra_headers(name: str, limit: GcraLimit, decision: GcraDecision) -> dict[str, str]:
    """A token bucket's fields: RateLimit-Policy with the bucket (q) and
    the seconds a full bucket takes to refill (w); RateLimit with the
    tokens remaining and the seconds until the bucket is empty (t);
    Retry-After on a refusal, unless the request can never fit."""
    refill = -(-limit.burst * limit.period_ms // (limit.count * 1000))
    headers = {
        "RateLimit-Policy": f'"{name}";q={limit.burst};w={refill}',
        "RateLimit": f'"{name}";r={decision.remaining};t={seconds_ceil(decision.reset_after_ms)}',
    }
    if not decision.allowed and decision.retry_after_ms >= 0:
        headers["Retry-After"] = str(max(1, seconds_ceil(decision.retry_after_ms)))
    return headers


def outcome_of(decision: Decision | GcraDecision, shadow: bool) -> Outcome:
    if decision.source in ("fail_open", "fail_closed"):
        return decision.source
    if not decision.allowed and shadow:
        return "shadow_denied"
    if decision.source == "fallback":
        return "fallback_allowed" if decision.allowed else "fallback_denied"
    return "allowed" if decision.allowed else "denied"


def server_error(status: int) -> bool:
    """The default refund rule: the request failed on our side."""
    return status >= 500


KeysResult = Mapping[str, Limits] | None
"""What a ``keys`` function returns: each key (its part after
``<name>:``) with its own limits, all decided together; None skips."""


def check_subjects(limits: object, key: object, keys: object, gcra: object = None) -> None:
    """A route limits one key (``limits``, and ``key`` or the client
    address), several (``keys``, which gives each key its limits), or one
    key with a token bucket (``gcra``, and ``key`` or the client address)."""
    if keys is None and limits is None and gcra is None:
        raise ValueError(
            "give limits (one key: the client address, or key=), keys= (several keys) or gcra= (a token bucket)"
        )
    if keys is not None and (limits is not None or key is not None):
        raise ValueError("keys= gives every key its own limits: give it without limits and key")
    if gcra is not None and (limits is not None or keys is not None):
        raise ValueError("gcra= is a token bucket on one key: give it without limits and keys")


@dataclass(frozen=True)
class Route:
    """One middleware's or route's settings, shared by every skin.

    ``limits`` (fixed, or chosen per request) for one key, or ``keys``
    (a function of the request returning several keys, each with its
    limits, decided together), ``name`` (namespaces the keys,
    ``<name>:<key>``, and names the policy), ``cost`` (units per request),
    ``refund_when`` (refund when the response has this status; default:
    status >= 500; a handler that raises is refunded too), ``block_ms``
    (a denial blocks the keys whose limits denied, for that long),
    ``shadow`` (decide and record as usual, never deny: no 429, no
    RateLimit fields; what would have been denied is logged and counted),
    ``gcra`` (instead of ``limits``: a token bucket on the key, charged
    ``cost`` tokens a request; no block, and no refund unless settled),
    ``settle`` (a function of the request giving its actual cost once the
    response has finished: ``cost`` is then the estimate reserved before
    it, and the difference is settled, refunded or charged; on a token
    bucket, by RATELIMIT.GCRA's REFUND or CHARGE)."""

    limits: Limits | Callable[..., Limits | None] | None
    name: str = "default"
    cost: int | Callable[..., int] = 1
    refund_when: Callable[[int], bool] = server_error
    keys: Callable[..., KeysResult | Awaitable[KeysResult]] | None = None
    block_ms: int | None = None
    shadow: bool = False
    gcra: GcraLimit | None = None
    settle: Callable[..., ActualResult | Awaitable[ActualResult]] | None = None

    def __post_init__(self) -> None:
        if self.settle is not None and not callable(self.settle):
            raise ValueError(f"settle is a function of the request giving its actual cost, got {self.settle!r}")
        # Fails at start-up, not on the first request.
        if self.limits is not None and not callable(self.limits):
            make_call(self.limits, self.cost if isinstance(self.cost, int) else 1)
        validate_block_ms(self.block_ms)
        if self.gcra is not None:
            make_gcra_call(self.gcra, self.cost if isinstance(self.cost, int) else 1)
            if self.block_ms is not None:
                raise ValueError("gcra= is a token bucket, which has no block: give it without block_ms")
            if self.refund_when is not server_error and self.settle is None:
                raise ValueError(
                    "gcra= is a token bucket, refunded only by a settlement: give refund_when with settle, or neither"
                )

    def limits_for(self, request: object) -> list[Limit] | None:
        chosen = self.limits(request) if callable(self.limits) else self.limits
        return None if chosen is None else as_list(chosen)

    def cost_for(self, request: object) -> int:
        return self.cost(request) if callable(self.cost) else self.cost

    def key_for(self, ident: str) -> str:
        return f"{self.name}:{ident}"

    def keys_for(self, keyed: Mapping[str, Limits]) -> dict[str, list[Limit]]:
        """The keys a ``keys`` function returned, namespaced, with their limits."""
        return {self.key_for(ident): as_list(limits) for ident, limits in keyed.items()}

    def verdict(
        self, decision: Decision, checked: Mapping[str, Sequence[Limit]], cost: int, metrics: Metrics
    ) -> Verdict:
        """The verdict on the keys ``checked`` (each with its limits),
        counted under its binding policy."""
        keys = tuple(checked)
        named = named_policies(list(checked.values()), self.name)
        policy = named[binding_position(decision)][0][0]
        return self._verdict(decision, keys, cost, policy, lambda: rate_limit_headers(named, decision), metrics)

    def gcra_verdict(self, decision: GcraDecision, key: str, cost: int, metrics: Metrics) -> Verdict:
        """The verdict on a token-bucket request (``gcra``)."""
        assert self.gcra is not None
        limit, policy = self.gcra, self.gcra.name or self.name
        return self._verdict(decision, (key,), cost, policy, lambda: gcra_headers(policy, limit, decision), metrics)

    def _verdict(
        self,
        decision: Decision | GcraDecision,
        keys: tuple[str, ...],
        cost: int,
        policy: str,
        headers_of: Callable[[], dict[str, str]],
        metrics: Metrics,
    ) -> Verdict:
        outcome = outcome_of(decision, self.shadow)
        metrics.decision(policy, outcome)
        if self.shadow:
            if outcome == "shadow_denied":
                logger.warning(_SHADOW_DENIED, policy, decision.retry_after_ms)
            return Verdict(True, "limited", decision, keys, cost, {}, policy)
        if decision.source == "fail_closed":
            retry = str(max(1, seconds_ceil(decision.retry_after_ms)))
            return Verdict(False, "unavailable", decision, keys, cost, {"Retry-After": retry}, policy)
        # Failing open serves without claiming a quota nobody counted.
        headers = {} if decision.source == "fail_open" else headers_of()
        return Verdict(decision.allowed, "limited", decision, keys, cost, headers, policy)


Judging = Generator[Any, Any, T]
"""Middleware work written once for the sync and the async skins: it
yields what a function of the request or the limiter returned (a value,
or under ASGI perhaps an awaitable) and receives it settled."""


def judging(
    limiter: RateLimiter | AsyncRateLimiter, route: Route, key: Callable[[R], Any], request: R
) -> Judging[Verdict | None]:
    """Decides one request (an ASGI scope, a WSGI environ, or a framework's
    request object that the key functions read); None when it is not
    limited. Several keys ask for each key's remaining, so the headers and
    the metrics can name the policy that binds."""
    if route.keys is not None:
        keyed = yield route.keys(request)
        if keyed is None:
            return None
        if not isinstance(keyed, Mapping):
            raise TypeError(f"a keys function returns a mapping of key to limits, got {keyed!r}")
        checked = route.keys_for(keyed)
        cost = route.cost_for(request)
        several = len(checked) > 1
        if route.settle is not None:
            multi = yield limiter.reserve(checked, estimate=cost, block_ms=route.block_ms, per_key_remaining=several)
            return replace(route.verdict(multi.decision, checked, cost, limiter.metrics), reservation=multi)
        decision = yield limiter.check_all(checked, cost=cost, block_ms=route.block_ms, per_key_remaining=several)
        return route.verdict(decision, checked, cost, limiter.metrics)
    if route.gcra is not None:
        ident = yield key(request)
        if ident is None:
            return None
        full = route.key_for(ident)
        tokens = route.cost_for(request)
        if route.settle is not None:
            reserved = yield limiter.reserve(full, route.gcra, estimate=tokens)
            return replace(route.gcra_verdict(reserved.decision, full, tokens, limiter.metrics), reservation=reserved)
        bucket = yield limiter.gcra(full, route.gcra, tokens)
        return route.gcra_verdict(bucket, full, tokens, limiter.metrics)
    limits = route.limits_for(request)
    if limits is None:
        return None
    ident = yield key(request)
    if ident is None:
        return None
    full = route.key_for(ident)
    cost = route.cost_for(request)
    if route.settle is not None:
        reserved = yield limiter.reserve(full, limits, estimate=cost, block_ms=route.block_ms)
        return replace(route.verdict(reserved.decision, {full: limits}, cost, limiter.metrics), reservation=reserved)
    one = yield limiter.check(full, limits, cost=cost, block_ms=route.block_ms)
    return route.verdict(one, {full: limits}, cost, limiter.metrics)


def refunding(limiter: RateLimiter | AsyncRateLimiter, verdict: Verdict) -> Judging[None]:
    """Refunds an allowed request in every key it was charged to (a token
    bucket only by settling its reservation at 0). An error about the call (its check met none, so
    it is all but impossible here) is not raised: it would hide the
    response or the handler's own error; an outage is logged by the
    limiter."""
    if not verdict.decision.allowed:
        return
    if verdict.reservation is not None:
        # A reservation is refunded whole by its settlement at 0.
        yield from _settled(limiter, verdict, 0)
        return
    if isinstance(verdict.decision, GcraDecision):
        return
    try:
        if isinstance(verdict.decision, MultiDecision):
            yield limiter.undo_all(verdict.keys, verdict.cost, decision=verdict.decision)
        else:
            yield limiter.undo(verdict.key, verdict.cost, decision=verdict.decision)
    except RateLimitReplyError:
        pass


def settling(limiter: RateLimiter | AsyncRateLimiter, route: Route, verdict: Verdict, request: object) -> Judging[None]:
    """Settles a reserved request once its response has finished: the
    actual cost from the route's ``settle`` function (None, or a function
    that fails: the estimate stands, logged in the second case). Nothing
    is raised: the response is gone already; an error is logged."""
    reservation = verdict.reservation
    if reservation is None or reservation.settled or route.settle is None:
        return
    actual = reservation.estimate
    try:
        given = yield route.settle(request)
        if given is not None:
            if isinstance(given, bool) or not isinstance(given, int) or given < 0:
                raise TypeError(f"it returned {given!r}, not a cost (an integer, at least 0) or None")
            actual = given
    except Exception as error:
        logger.error(_SETTLE_FUNCTION, ", ".join(verdict.keys), f"{type(error).__name__}: {error}", actual)
    yield from _settled(limiter, verdict, actual)


def _settled(limiter: RateLimiter | AsyncRateLimiter, verdict: Verdict, actual: int) -> Judging[None]:
    reservation = verdict.reservation
    if reservation is None or reservation.settled:
        return
    try:
        yield limiter.settle(reservation, actual)
    except (RateLimitSettled, RateLimitUnavailable):
        # Unavailable: the limiter logged it (settle_lost) with its amount.
        pass
    except RateLimitReplyError as error:
        logger.error(_SETTLE_REFUSED, ", ".join(verdict.keys), error)


def settle(work: Judging[T]) -> T:
    """Runs middleware work where nothing may be awaited (WSGI, Django)."""
    try:
        value = next(work)
        while True:
            if inspect.isawaitable(value):
                if inspect.iscoroutine(value):
                    value.close()
                raise TypeError("an async function of the request needs the ASGI middleware or FastAPI's dependency")
            value = work.send(value)
    except StopIteration as stop:
        result: T = stop.value
        return result


async def settle_async(work: Judging[T]) -> T:
    """Runs middleware work under ASGI: awaits what needs it."""
    try:
        value = next(work)
        while True:
            try:
                settled = await value if inspect.isawaitable(value) else value
            except Exception as error:
                value = work.throw(error)
            else:
                value = work.send(settled)
    except StopIteration as stop:
        result: T = stop.value
        return result
