"""What every middleware shares: the verdict on one request, the IETF fields
of draft-ietf-httpapi-ratelimit-headers-11, and the default answers. The
framework skins (asgi, wsgi, fastapi, flask) only read requests and write
responses."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from ._core import (
    Decision,
    Limit,
    Limits,
    MultiDecision,
    make_call,
    policy_names,
    seconds_ceil,
    validate_block_ms,
)

Reason = Literal["limited", "unavailable"]


@dataclass(frozen=True)
class Verdict:
    """The decision on one request, as a middleware uses it and as a 429
    (or 503) hook receives it.

    ``reason`` is ``"limited"`` (over a limit: 429, or allowed) or
    ``"unavailable"`` (Redis unreachable and failing closed: 503);
    ``headers`` are the fields the default answer sets; ``keys`` the keys
    checked (one, or several with a ``keys`` function: then ``decision``
    is a :class:`MultiDecision` that names the keys that denied)."""

    passed: bool
    reason: Reason
    decision: Decision
    keys: tuple[str, ...]
    cost: int
    headers: dict[str, str] = field(default_factory=dict)

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


def rate_limit_headers(limits: Sequence[Limit], name: str, decision: Decision) -> dict[str, str]:
    """RateLimit-Policy lists every limit; RateLimit reports the least
    remaining over them (what the module answers) under the first policy's
    name, with t the seconds until capacity returns: all of it when allowed,
    enough for this request when refused. Retry-After on refusals."""
    names = policy_names(limits, name)
    return _headers(list(zip(names, limits, strict=True)), names[0], decision)


def multi_key_headers(limits: Sequence[Sequence[Limit]], name: str, decision: Decision) -> dict[str, str]:
    """The fields for several keys (each with its limits, in key order):
    RateLimit-Policy lists every key's limits, named ``<name>-<position>``
    (1-based; ``-<seconds>s`` added when a key has several) unless a limit
    has a name; RateLimit reports the combined remaining under the name of
    the first key that denied (so a client sees which limit it hit), else
    of the first policy."""
    named: list[list[tuple[str, Limit]]] = []
    for position, own in enumerate(limits, start=1):
        names = [f"{name}-{position}"] if len(own) == 1 else policy_names(own, f"{name}-{position}")
        named.append([(limit.name or names[i], limit) for i, limit in enumerate(own)])
    denied = decision.denied_positions if isinstance(decision, MultiDecision) else ()
    shown = named[denied[0] if denied else 0][0][0]
    return _headers([pair for own in named for pair in own], shown, decision)


def _headers(named: Sequence[tuple[str, Limit]], shown: str, decision: Decision) -> dict[str, str]:
    policy = ", ".join(f'"{name}";q={limit.max};w={seconds_ceil(limit.window_ms)}' for name, limit in named)
    wait_ms = decision.reset_after_ms if decision.allowed else decision.retry_after_ms
    headers = {
        "RateLimit-Policy": policy,
        "RateLimit": f'"{shown}";r={decision.remaining};t={seconds_ceil(wait_ms)}',
    }
    if not decision.allowed:
        headers["Retry-After"] = str(max(1, seconds_ceil(decision.retry_after_ms)))
    return headers


def verdict_of(decision: Decision, checked: Mapping[str, Sequence[Limit]], name: str, cost: int) -> Verdict:
    """The verdict on the keys ``checked`` (each with its limits): one key
    gets rate_limit_headers, several multi_key_headers."""
    keys = tuple(checked)
    if decision.source == "fail_closed":
        retry = str(max(1, seconds_ceil(decision.retry_after_ms)))
        return Verdict(False, "unavailable", decision, keys, cost, {"Retry-After": retry})
    # Failing open serves without claiming a quota nobody counted.
    if decision.source == "fail_open":
        headers = {}
    elif isinstance(decision, MultiDecision):
        headers = multi_key_headers(list(checked.values()), name, decision)
    else:
        headers = rate_limit_headers(checked[keys[0]], name, decision)
    return Verdict(decision.allowed, "limited", decision, keys, cost, headers)


def server_error(status: int) -> bool:
    """The default refund rule: the request failed on our side."""
    return status >= 500


KeysResult = Mapping[str, Limits] | None
"""What a ``keys`` function returns: each key (its part after
``<name>:``) with its own limits, all decided together; None skips."""


def check_subjects(limits: object, key: object, keys: object) -> None:
    """A route limits one key (``limits``, and ``key`` or the client
    address) or several (``keys``, which gives each key its limits)."""
    if keys is None and limits is None:
        raise ValueError("give limits (one key: the client address, or key=) or keys= (several keys)")
    if keys is not None and (limits is not None or key is not None):
        raise ValueError("keys= gives every key its own limits: give it without limits and key")


@dataclass(frozen=True)
class Route:
    """One middleware's or route's settings, shared by every skin.

    ``limits`` (fixed, or chosen per request) for one key, or ``keys``
    (a function of the request returning several keys, each with its
    limits, decided together), ``name`` (namespaces the keys,
    ``<name>:<key>``, and names the policy), ``cost`` (units per request),
    ``refund_when`` (refund when the response has this status; default:
    status >= 500; a handler that raises is refunded too), ``block_ms``
    (a denial blocks the keys whose limits denied, for that long)."""

    limits: Limits | Callable[..., Limits | None] | None
    name: str = "default"
    cost: int | Callable[..., int] = 1
    refund_when: Callable[[int], bool] = server_error
    keys: Callable[..., KeysResult | Awaitable[KeysResult]] | None = None
    block_ms: int | None = None

    def __post_init__(self) -> None:
        # Fails at start-up, not on the first request.
        if self.limits is not None and not callable(self.limits):
            make_call(self.limits, self.cost if isinstance(self.cost, int) else 1)
        validate_block_ms(self.block_ms)

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
