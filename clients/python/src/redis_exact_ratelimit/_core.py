"""The pure part: limits, their validation, the arguments of RATELIMIT.* and
of the script twin, and the reading of replies. No I/O here."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Generic, Literal, TypeVar

MAX_WINDOW_MS = 31_536_000_000
MAX_MAX = 2**63 - 1
MAX_PAIRS = 8
MAX_KEYS = 16
MAX_BLOCK_MS = 31_536_000_000
# The token bucket's bounds (docs/gcra.md, core/src/gcra.rs): every count,
# token count and capacity (max_burst + 1) x period_ms at most MAX_EXACT
# (below 2^53, exact in a double, the twin's numbers), periods up to 90 days.
MAX_EXACT = 9_000_000_000_000_000
MAX_PERIOD_MS = 7_776_000_000

Backend = Literal["module", "twin"]
"""Where a decision was taken when Redis answered."""

Source = Literal["redis", "fallback", "fail_open", "fail_closed"]
"""Where a decision came from: Redis (through the module or the twin), the
in-process fallback, or the failure policy without any limiter."""

Operation = Literal["check", "peek", "undo", "mcheck", "mpeek", "mundo", "unblock", "gcra", "charge", "mcharge"]

# The operations whose keys come as `numkeys key [key ...]` in the module.
MULTI_KEY: frozenset[Operation] = frozenset(("mcheck", "mpeek", "mundo", "mcharge"))
# The operations every version of the module has: an "unknown command"
# answer to any other (MCHECK, UNBLOCK, GCRA ...) may come from an older
# module, not a missing one.
FIRST_OPERATIONS: frozenset[Operation] = frozenset(("check", "peek", "undo"))


class RateLimitInputError(ValueError):
    """Bad limits or options, refused before anything is sent to Redis."""


@dataclass(frozen=True)
class Limit:
    """At most ``max`` units of cost in any ``window_ms`` milliseconds.

    ``name`` is the policy's name in the ``RateLimit-Policy`` header
    (default: the middleware's name, ``"default"``, when a route has one
    limit, ``"<name>-<seconds>s"`` when it has several)."""

    window_ms: int
    max: int
    name: str | None = None

    def __post_init__(self) -> None:
        _require_int(self.window_ms, "window_ms", 1, MAX_WINDOW_MS)
        _require_int(self.max, "max", 1, MAX_MAX)

    @classmethod
    def per_second(cls, max: int, name: str | None = None) -> Limit:
        return cls(1_000, max, name)

    @classmethod
    def per_minute(cls, max: int, name: str | None = None) -> Limit:
        return cls(60_000, max, name)

    @classmethod
    def per_hour(cls, max: int, name: str | None = None) -> Limit:
        return cls(3_600_000, max, name)

    @classmethod
    def per_day(cls, max: int, name: str | None = None) -> Limit:
        return cls(86_400_000, max, name)


Limits = Limit | Sequence[Limit]


@dataclass(frozen=True)
class GcraLimit:
    """A token bucket (GCRA): ``count`` tokens per ``period_ms``
    milliseconds sustained, in bursts of up to ``max_burst + 1``.

    ``name`` is the policy's name in the ``RateLimit-Policy`` header
    (default: the middleware's name). Bounds (the module's): ``max_burst``
    0 to 8999999999999999, ``count`` 1 to 9000000000000000, ``period_ms``
    1 to 7776000000 (90 days), and ``(max_burst + 1) * period_ms`` at most
    9000000000000000."""

    max_burst: int
    count: int
    period_ms: int
    name: str | None = None

    def __post_init__(self) -> None:
        _require_int(self.max_burst, "max_burst", 0, MAX_EXACT - 1)
        _require_int(self.count, "count", 1, MAX_EXACT)
        _require_int(self.period_ms, "period_ms", 1, MAX_PERIOD_MS)
        if self.burst * self.period_ms > MAX_EXACT:
            raise RateLimitInputError(
                f"(max_burst + 1) * period_ms must be at most {MAX_EXACT}, got {self.burst} * {self.period_ms}:"
                " lower max_burst or period_ms"
            )

    @property
    def burst(self) -> int:
        """``max_burst + 1``: the most tokens one burst may take."""
        return self.max_burst + 1

    @property
    def period_seconds(self) -> str:
        """The period as the module reads it: seconds in whole milliseconds
        (``60``, ``0.5``, ``1.25``, ``0.001``)."""
        return period_word(self.period_ms)


@dataclass(frozen=True)
class Decision:
    """One answer: the module's four numbers, plus where it came from.

    ``remaining`` is the least, over the limits, of max minus the cost in
    its window after this call; ``retry_after_ms`` is 0 if allowed, else the
    exact wait after which the same request would pass; ``reset_after_ms``
    is the wait until the call's longest window holds nothing of this key.
    With ``source`` ``"fail_open"`` or ``"fail_closed"`` no limiter decided
    (Redis failed and no fallback was configured): failing open answers
    ``remaining`` as the smallest max less the cost, failing closed answers
    ``remaining=0`` and ``retry_after_ms`` the time before Redis is tried
    again; ``error`` holds the cause when this call met it."""

    allowed: bool
    remaining: int
    retry_after_ms: int
    reset_after_ms: int
    source: Source
    error: BaseException | None = None


@dataclass(frozen=True)
class MultiDecision(Decision):
    """The answer to a check over several keys: a :class:`Decision` over all
    of them (``remaining`` the least, ``retry_after_ms`` the wait until
    every key allows, ``reset_after_ms`` the longest), plus the keys as
    given (``keys``, in order) and those that denied, by their limits or
    by a block: ``denied_positions`` (0-based, into ``keys``) and
    ``denied_keys``. Both are empty when allowed, and when no limiter
    decided (``source`` ``"fail_open"`` or ``"fail_closed"``).

    ``per_key_remaining`` is each key's own remaining, in key order, when
    the call asked for it (``check_all(..., per_key_remaining=True)``, as
    the middleware does for its headers); empty otherwise."""

    keys: tuple[str, ...] = ()
    denied_positions: tuple[int, ...] = ()
    per_key_remaining: tuple[int, ...] = ()

    @property
    def denied_keys(self) -> tuple[str, ...]:
        return tuple(self.keys[position] for position in self.denied_positions)


SettlementSource = Literal["redis", "fallback"]


@dataclass(frozen=True)
class Settlement:
    """What a settlement (``charge``, ``charge_all``, ``settle``,
    ``gcra_charge``, ``gcra_refund``) did.

    ``source`` is where it was recorded: ``"redis"``, ``"fallback"`` (the
    reservation was decided there, and is settled there; or Redis could
    not be reached within the limiter's ``settle_retry`` seconds and the
    limiter has a fallback: then ``error`` holds the cause, and the
    settlement was logged with its amount), or None when nothing was to
    be settled (the actual equals the estimate, a denied reservation, one
    the failure policy answered). Without a fallback, a settlement Redis
    could not be reached for raises ``RateLimitUnavailable``.

    ``charged`` is the units charged (a CHARGE of actual - estimate when
    the request cost more), ``refunded`` the units an UNDO removed (when it
    cost less; fewer than asked if the window had already dropped some).
    After a charge ``over`` is the most, over the limits (and the keys),
    that a window holds past its max (0: none over), ``remaining`` the
    least room left, ``retry_after_ms`` the wait until a request of cost 1
    fits again, ``reset_after_ms`` until the longest window holds nothing;
    ``over_positions`` (0-based into ``keys``) and ``over_keys`` the keys
    now over a limit. Without a charge ``remaining`` and
    ``reset_after_ms`` are None (nothing was measured) and ``over`` 0.

    On a token bucket (GCRA ``CHARGE`` or ``REFUND``) ``charged`` or
    ``refunded`` is the tokens settled (a refund takes back at most what
    the bucket holds), and both are measured: ``over`` the whole tokens
    the bucket holds past full (rounded up), ``remaining`` the whole
    tokens a request could take now, ``retry_after_ms`` the wait until a
    request of 1 token fits (0: one fits now), ``reset_after_ms`` until
    the bucket is empty."""

    source: SettlementSource | None
    charged: int = 0
    refunded: int = 0
    over: int = 0
    remaining: int | None = None
    retry_after_ms: int = 0
    reset_after_ms: int | None = None
    error: BaseException | None = None
    keys: tuple[str, ...] = ()
    over_positions: tuple[int, ...] = ()

    @property
    def over_keys(self) -> tuple[str, ...]:
        return tuple(self.keys[position] for position in self.over_positions)


D = TypeVar("D", bound="Decision | GcraDecision", covariant=True)


class RateLimitSettled(RuntimeError):
    """A reservation was settled already: each is settled once."""


class Reservation(Generic[D]):
    """A request's cost reserved before it runs (``reserve``): its
    ``decision`` (a :class:`Decision`, a :class:`MultiDecision` over
    several keys, or a :class:`GcraDecision` on a token bucket) as
    ``check``, ``check_all`` or ``gcra`` answers, ``estimate`` units (or
    tokens) reserved if allowed, the ``keys`` as given. Pass it to
    ``settle`` with the actual cost once it is known, once.

    ``limits`` are each key's sliding-window limits (empty on a token
    bucket), ``gcra`` the bucket's limit (None on a sliding window)."""

    def __init__(
        self,
        decision: D,
        estimate: int,
        limits: Mapping[str, tuple[Limit, ...]],
        precision: int | None,
        multi: bool,
        gcra: GcraLimit | None = None,
    ) -> None:
        self.decision = decision
        self.estimate = estimate
        self.limits = dict(limits)
        self.precision = precision
        self.multi = multi
        self.gcra = gcra
        self._settled = False
        self._lock = threading.Lock()

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.limits)

    @property
    def settled(self) -> bool:
        return self._settled

    def claim(self) -> None:
        """Marks it settled, or raises if it was."""
        with self._lock:
            if self._settled:
                raise RateLimitSettled(f"this reservation on {', '.join(map(repr, self.keys))} was settled already")
            self._settled = True

    def release(self) -> None:
        """Unsettled again: its settlement was refused before anything was recorded."""
        with self._lock:
            self._settled = False

    def __repr__(self) -> str:
        state = "settled" if self._settled else "unsettled"
        return f"Reservation(keys={self.keys!r}, estimate={self.estimate}, decision={self.decision!r}, {state})"


@dataclass(frozen=True)
class GcraDecision:
    """The token bucket's answer (``RATELIMIT.GCRA``), with the module's
    meanings: ``burst`` is ``max_burst + 1``; ``remaining`` the whole
    tokens a request could still take now (after this one, if allowed);
    ``retry_after_ms`` 0 when allowed, -1 when the request can never fit
    (more tokens than the bucket holds), else the wait in ms (rounded up)
    after which this same request fits; ``reset_after_ms`` the wait until
    the bucket is empty again (rounded up).

    ``backend`` is ``"module"`` or ``"twin"`` when Redis decided, None
    otherwise; ``source`` and ``error`` are :class:`Decision`'s (with
    ``"fail_open"`` the request is allowed and ``remaining`` is the
    bucket less the tokens; with ``"fail_closed"`` it is refused with
    ``retry_after_ms`` the time before Redis is tried again)."""

    allowed: bool
    burst: int
    remaining: int
    retry_after_ms: int
    reset_after_ms: int
    backend: Backend | None
    source: Source = "redis"
    error: BaseException | None = None


GcraSettle = Literal["charge", "refund"]
"""A token bucket's settlement: ``CHARGE`` (tokens added whatever the
bucket holds, even past full: a debt that drains at the rate) or
``REFUND`` (tokens taken back, at most what it holds)."""


@dataclass(frozen=True)
class GcraCall:
    """A validated RATELIMIT.GCRA: the limit and the request's tokens (0
    asks without charging); with ``settle``, a settlement of that many
    tokens (``CHARGE`` or ``REFUND``), never limited."""

    limit: GcraLimit
    tokens: int
    settle: GcraSettle | None = None

    def args(self) -> list[str]:
        """The module's arguments after the key (also the twin's); the
        waits always in milliseconds (``MS``)."""
        limit = self.limit
        args = [str(limit.max_burst), str(limit.count), limit.period_seconds]
        if self.tokens != 1:
            args += ["TOKENS", str(self.tokens)]
        if self.settle is not None:
            args.append(self.settle.upper())
        return [*args, "MS"]


@dataclass(frozen=True)
class Call:
    """A validated CHECK or PEEK: the limits in order, cost, precision and
    the block a denial starts."""

    limits: tuple[Limit, ...]
    cost: int
    precision: int | None
    block_ms: int | None = None

    @property
    def smallest_max(self) -> int:
        return min(limit.max for limit in self.limits)

    @property
    def longest_window(self) -> int:
        return max(limit.window_ms for limit in self.limits)

    def args(self) -> list[str]:
        """The module's arguments after the key (also the twin's)."""
        return [*self.pairs(), *self.options()]

    def pairs(self) -> list[str]:
        return [str(number) for limit in self.limits for number in (limit.window_ms, limit.max)]

    def options(self) -> list[str]:
        options: list[str] = []
        if self.cost != 1:
            options += ["COST", str(self.cost)]
        if self.precision is not None:
            options += ["PRECISION", str(self.precision)]
        if self.block_ms is not None:
            options += ["BLOCK", str(self.block_ms)]
        return options


@dataclass(frozen=True)
class MultiCall:
    """A validated MCHECK or MPEEK: the keys (as given, without the
    limiter's prefix) and each key's call; cost, precision and block are
    the same in every call."""

    keys: tuple[str, ...]
    calls: tuple[Call, ...]

    def args(self) -> list[str]:
        """The module's arguments after its keys (also the twin's): each
        key's pair count and pairs, then the shared options."""
        args: list[str] = []
        for call in self.calls:
            args += [str(len(call.limits)), *call.pairs()]
        return args + self.calls[0].options()


def _require_int(value: object, what: str, low: int, high: int) -> int:
    # bool is an int to Python, never a count here.
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise RateLimitInputError(f"{what} must be an integer from {low} to {high}, got {value!r}")
    return value


def make_call(limits: Limits, cost: int = 1, precision: int | None = None, block_ms: int | None = None) -> Call:
    """Validates as the module does (docs/commands.md, "Errors"), so bad input fails
    here with a clear message and never reaches Redis."""
    listed = (limits,) if isinstance(limits, Limit) else tuple(limits)
    if not 1 <= len(listed) <= MAX_PAIRS:
        raise RateLimitInputError(f"give 1 to {MAX_PAIRS} limits, got {len(listed)}")
    seen: set[int] = set()
    for limit in listed:
        if not isinstance(limit, Limit):
            raise RateLimitInputError(f"limits must be Limit objects, got {limit!r}")
        if limit.window_ms in seen:
            raise RateLimitInputError(f"window {limit.window_ms} is given twice")
        seen.add(limit.window_ms)
    call = Call(listed, 1, None)
    _require_int(cost, "cost", 1, call.smallest_max)
    if precision is not None:
        _require_int(precision, "precision", 1, min(seen))
    return Call(listed, cost, precision, validate_block_ms(block_ms))


def make_charge_call(limits: Limits, cost: int = 1, precision: int | None = None) -> Call:
    """Validates a CHARGE as the module does: the limits and precision as
    CHECK's, a cost of 1 to 2^63 - 1 whatever the limits (a settlement may
    be above any max), no block."""
    call = make_call(limits, 1, precision)
    return Call(call.limits, validate_charge_cost(cost), call.precision)


def validate_charge_cost(cost: object) -> int:
    return _require_int(cost, "cost", 1, MAX_MAX)


def make_multi_charge_call(keyed: Mapping[str, Limits], cost: int = 1, precision: int | None = None) -> MultiCall:
    """An MCHARGE: several keys, each with its own limits, one cost and
    precision; an error about one key's limits names the key."""
    if not isinstance(keyed, Mapping):
        raise RateLimitInputError(f"give the keys as a mapping of key to limits, got {keyed!r}")
    keys = validate_keys(keyed)
    validate_charge_cost(cost)
    calls: list[Call] = []
    for key in keys:
        try:
            calls.append(make_charge_call(keyed[key], cost, precision))
        except RateLimitInputError as error:
            raise RateLimitInputError(f"key {key!r}: {error}") from None
    return MultiCall(keys, tuple(calls))


def make_gcra_call(limit: GcraLimit, tokens: int = 1, settle: GcraSettle | None = None) -> GcraCall:
    """Validates a token-bucket request (or, with ``settle``, a CHARGE or
    REFUND) as the module does. More tokens than the bucket holds is no
    error: such a request is answered limited, with ``retry_after_ms``
    -1; a charge may take a bucket past full (its tokens times the period
    in ms at most 9000000000000000, which only the bucket's state tells:
    the server refuses it)."""
    if not isinstance(limit, GcraLimit):
        raise RateLimitInputError(f"limit must be a GcraLimit, got {limit!r}")
    if settle not in (None, "charge", "refund"):
        raise RateLimitInputError(f"settle must be 'charge', 'refund' or None, got {settle!r}")
    return GcraCall(limit, validate_tokens(tokens), settle)


def validate_tokens(tokens: object) -> int:
    return _require_int(tokens, "tokens", 0, MAX_EXACT)


def period_word(period_ms: int) -> str:
    """Milliseconds as the module's period: whole seconds, or seconds and
    the fraction's digits without trailing zeros."""
    seconds, ms = divmod(period_ms, 1000)
    return str(seconds) if ms == 0 else f"{seconds}.{ms:03d}".rstrip("0")


def make_multi_call(
    keyed: Mapping[str, Limits], cost: int = 1, precision: int | None = None, block_ms: int | None = None
) -> MultiCall:
    """Several keys, each with its own limits, in the mapping's order. An
    error about one key's limits names the key, as the module's does."""
    if not isinstance(keyed, Mapping):
        raise RateLimitInputError(f"give the keys as a mapping of key to limits, got {keyed!r}")
    keys = validate_keys(keyed)
    calls: list[Call] = []
    for key in keys:
        try:
            calls.append(make_call(keyed[key], cost, precision, block_ms))
        except RateLimitInputError as error:
            raise RateLimitInputError(f"key {key!r}: {error}") from None
    return MultiCall(keys, tuple(calls))


def validate_key(key: object) -> str:
    """Any string, the empty one included: every string is a Redis key, and
    the module takes each (contract/corpus.jsonl calls MCHECK and MUNDO on
    the key "")."""
    if not isinstance(key, str):
        raise RateLimitInputError(f"key must be a string, got {key!r}")
    return key


def validate_keys(keys: Iterable[object]) -> tuple[str, ...]:
    """1 to 16 distinct keys, as the module's multi-key commands take."""
    if isinstance(keys, (str, bytes)):
        raise RateLimitInputError(f"give several keys (a mapping or a list), not one string: {keys!r}")
    listed = tuple(validate_key(key) for key in keys)
    if not 1 <= len(listed) <= MAX_KEYS:
        raise RateLimitInputError(f"give 1 to {MAX_KEYS} keys, got {len(listed)}")
    if len(set(listed)) != len(listed):
        twice = next(key for key in listed if listed.count(key) > 1)
        raise RateLimitInputError(f"key {twice!r} is given more than once")
    return listed


def validate_block_ms(block_ms: object) -> int | None:
    return None if block_ms is None else _require_int(block_ms, "block_ms", 1, MAX_BLOCK_MS)


def validate_undo_cost(cost: object) -> int:
    return _require_int(cost, "cost", 1, MAX_MAX)


def policy_names(limits: Sequence[Limit], name: str) -> list[str]:
    """Each limit's name in the RateLimit-Policy header."""
    if len(limits) == 1:
        return [limits[0].name or name]
    return [limit.name or f"{name}-{seconds_ceil(limit.window_ms)}s" for limit in limits]


def seconds_ceil(ms: int) -> int:
    """Milliseconds to whole seconds, rounded up: a client told to wait
    that long never comes back too early."""
    return -(-max(ms, 0) // 1000)


@dataclass(frozen=True)
class Op:
    """One RATELIMIT operation on its keys (as sent, prefixed), with its
    arguments after the keys (the same for the module and the twin)."""

    operation: Operation
    keys: tuple[str, ...]
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Delete:
    """DEL of a key: sent as it is to the module and to the twin."""

    key: str


def module_command(op: Op) -> list[str]:
    """The module's command: the multi-key ones take `numkeys key [key ...]`."""
    head = [str(len(op.keys)), *op.keys] if op.operation in MULTI_KEY else list(op.keys)
    return [f"RATELIMIT.{op.operation.upper()}", *head, *op.args]


def twin_arguments(op: Op) -> list[str]:
    """EVALSHA's arguments after the sha: `numkeys key [key ...] op args`."""
    return [str(len(op.keys)), *op.keys, op.operation, *op.args]


def _as_int(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, str) and value.removeprefix("-").isdigit():
        return int(value)
    return None


class UnexpectedReply(Exception):
    """Redis answered something that is not the module's reply. Treated as
    a failure: a reply read as something else must never count as allowed."""


def parse_decision(reply: object) -> Decision:
    """Reads [allowed, remaining, retry_after_ms, reset_after_ms] (the same
    array in RESP2 and RESP3)."""
    if isinstance(reply, (list, tuple)) and len(reply) == 4:
        fields = [_as_int(field) for field in reply]
        allowed, remaining, retry, reset = fields
        if allowed in (0, 1) and remaining is not None and retry is not None and reset is not None:
            return Decision(allowed == 1, remaining, retry, reset, "redis")
    raise UnexpectedReply(f"unexpected reply to a rate-limit call: {reply!r}")


def parse_gcra_reply(reply: object) -> tuple[int, int, int, int, int]:
    """Reads RATELIMIT.GCRA's [limited, max_burst + 1, remaining,
    retry_after (-1 if allowed or never), reset_after] (the same array in
    RESP2 and RESP3)."""
    if isinstance(reply, (list, tuple)) and len(reply) == 5:
        numbers = [number for number in map(_as_int, reply) if number is not None]
        if len(numbers) == 5:
            limited, burst, remaining, retry, reset = numbers
            # Allowed: retry -1; limited: -1 (never fits) or a wait.
            waits = retry == -1 or (limited == 1 and retry >= 0)
            if limited in (0, 1) and burst >= 1 and remaining >= 0 and reset >= 0 and waits:
                return limited, burst, remaining, retry, reset
    raise UnexpectedReply(f"unexpected reply to a token-bucket call: {reply!r}")


def parse_gcra_settlement(reply: object) -> tuple[int, int, int, int, int]:
    """Reads a token bucket's settlement (``CHARGE``, ``REFUND``): [over,
    max_burst + 1, remaining, retry_after (-1 if a token fits now),
    reset_after] (the same array in RESP2 and RESP3)."""
    if isinstance(reply, (list, tuple)) and len(reply) == 5:
        numbers = [number for number in map(_as_int, reply) if number is not None]
        if len(numbers) == 5:
            over, burst, remaining, retry, reset = numbers
            # Over: no room; room: no wait for one token.
            shaped = (over == 0 or remaining == 0) and (retry == -1) == (remaining > 0)
            if over >= 0 and burst >= 1 and remaining >= 0 and retry >= -1 and reset >= 0 and shaped:
                return over, burst, remaining, retry, reset
    raise UnexpectedReply(f"unexpected reply to a token-bucket settlement: {reply!r}")


def gcra_settlement(
    reply: Sequence[int], source: SettlementSource, key: str, tokens: int, how: GcraSettle
) -> Settlement:
    """A Settlement from a token bucket's settlement reply (waits in ms):
    ``charged`` or ``refunded`` the tokens settled, ``over`` the whole
    tokens held past a full bucket (rounded up), ``retry_after_ms`` the
    wait until a request of 1 token fits (0: one fits now)."""
    over, _, remaining, retry, reset = reply
    charged, refunded = (tokens, 0) if how == "charge" else (0, tokens)
    return Settlement(
        source,
        charged,
        refunded,
        over,
        remaining,
        max(retry, 0),
        reset,
        keys=(key,),
        over_positions=(0,) if over > 0 else (),
    )


def gcra_decision(reply: Sequence[int], source: Source = "redis", backend: Backend | None = None) -> GcraDecision:
    """A GcraDecision from the module's five integers with waits in ms:
    ``retry_after_ms`` 0 when allowed (the module's -1), -1 when limited
    and the request can never fit."""
    limited, burst, remaining, retry, reset = reply
    allowed = limited == 0
    return GcraDecision(allowed, burst, remaining, 0 if allowed else retry, reset, backend, source)


def parse_multi_decision(reply: object, keys: tuple[str, ...]) -> MultiDecision:
    """Reads [allowed, remaining, retry_after_ms, reset_after_ms, denied],
    denied the 1-based positions of the keys that denied (empty iff
    allowed); the positions become 0-based."""
    if isinstance(reply, (list, tuple)) and len(reply) == 5 and isinstance(reply[4], (list, tuple)):
        first = parse_decision(reply[:4])
        positions = [p for p in map(_as_int, reply[4]) if p is not None and 1 <= p <= len(keys)]
        if len(positions) == len(reply[4]) and first.allowed == (not positions):
            return MultiDecision(
                first.allowed,
                first.remaining,
                first.retry_after_ms,
                first.reset_after_ms,
                "redis",
                keys=keys,
                denied_positions=tuple(p - 1 for p in positions),
            )
    raise UnexpectedReply(f"unexpected reply to a multi-key rate-limit call: {reply!r}")


def parse_settlement(reply: object, keys: tuple[str, ...], charged: int) -> Settlement:
    """Reads CHARGE's [over, remaining, retry_after_ms, reset_after_ms]
    (one key, not multi) or MCHARGE's, with ``over_keys`` (1-based
    positions) fifth, as 0-based positions (the same arrays in RESP2 and
    RESP3)."""
    multi = isinstance(reply, (list, tuple)) and len(reply) == 5
    if isinstance(reply, (list, tuple)) and (multi or len(reply) == 4):
        numbers = [n for n in map(_as_int, reply[:4]) if n is not None and n >= 0]
        listed = reply[4] if multi else None
        positions = [p for p in map(_as_int, listed or ()) if p is not None and 1 <= p <= len(keys)]
        shaped = not multi or (isinstance(listed, (list, tuple)) and len(positions) == len(listed))
        if len(numbers) == 4 and shaped:
            over, remaining, retry, reset = numbers
            found = tuple(p - 1 for p in positions) if multi else ((0,) if over > 0 else ())
            if (over > 0) == bool(found):
                return Settlement("redis", charged, 0, over, remaining, retry, reset, keys=keys, over_positions=found)
    raise UnexpectedReply(f"unexpected reply to a charge: {reply!r}")


def parse_remaining(reply: object) -> int:
    """A PEEK's remaining: the key's own, as it stands."""
    return parse_decision(reply).remaining


def parse_count(reply: object) -> int:
    count = _as_int(reply)
    if count is None:
        raise UnexpectedReply(f"unexpected reply to an undo: {reply!r}")
    return count


def parse_counts(reply: object, keys: tuple[str, ...]) -> dict[str, int]:
    """MUNDO's units removed per key, in key order, keyed by the keys as given."""
    if isinstance(reply, (list, tuple)):
        counts = [count for count in map(_as_int, reply) if count is not None and count >= 0]
        if len(counts) == len(reply) == len(keys):
            return dict(zip(keys, counts, strict=True))
    raise UnexpectedReply(f"unexpected reply to a multi-key undo: {reply!r}")


def parse_unblocked(reply: object) -> bool:
    lifted = _as_int(reply)
    if lifted not in (0, 1):
        raise UnexpectedReply(f"unexpected reply to an unblock: {reply!r}")
    return lifted == 1


def is_missing_module(error: BaseException) -> bool:
    """The server's own answer that RATELIMIT.* does not exist (Redis and
    Valkey say "unknown command"), or redis-py's cluster client refusing a
    command that the cluster's COMMAND list lacks."""
    text = str(error).lower()
    return "unknown command" in text or "command doesn't exist in redis commands" in text


class RateLimitReplyError(Exception):
    """Redis answered that the call itself is wrong (WRONGTYPE, a full log,
    an ACL refusal): raised, never turned into a policy decision."""


class RateLimitUnavailable(ConnectionError):
    """Redis could not be asked (the cause is chained), for an operation no
    failure policy can answer: lifting a block, or a settlement without a
    fallback."""


@dataclass(frozen=True)
class Script:
    """The twin in its script form: the EVAL text is ratelimit.lua without
    its first line (`#!lua name=ratelimit`, which only FUNCTION LOAD reads)."""

    text: str
    sha1: str

    @classmethod
    def load(cls) -> Script:
        source = resources.files(__package__).joinpath("ratelimit.lua").read_text(encoding="utf-8")
        first, _, rest = source.partition("\n")
        if not first.startswith("#!lua"):
            raise RuntimeError(f"ratelimit.lua does not start with its #!lua line: {first!r}")
        return cls(rest, hashlib.sha1(rest.encode("utf-8")).hexdigest())


def undo_args(cost: int) -> tuple[str, ...]:
    return () if cost == 1 else ("COST", str(cost))
