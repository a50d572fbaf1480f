"""What every middleware shares: the verdict on one request, the IETF fields
of draft-ietf-httpapi-ratelimit-headers-11, and the default answers. The
framework skins (asgi, wsgi, fastapi, flask) only read requests and write
responses."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from ._core import Decision, Limit, Limits, make_call, policy_names, seconds_ceil

Reason = Literal["limited", "unavailable"]


@dataclass(frozen=True)
class Verdict:
    """The decision on one request, as a middleware uses it and as a 429
    (or 503) hook receives it.

    ``reason`` is ``"limited"`` (over a limit: 429, or allowed) or
    ``"unavailable"`` (Redis unreachable and failing closed: 503);
    ``headers`` are the fields the default answer sets."""

    passed: bool
    reason: Reason
    decision: Decision
    key: str
    cost: int
    headers: dict[str, str] = field(default_factory=dict)

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
    policy = ", ".join(
        f'"{names[i]}";q={limit.max};w={seconds_ceil(limit.window_ms)}' for i, limit in enumerate(limits)
    )
    wait_ms = decision.reset_after_ms if decision.allowed else decision.retry_after_ms
    headers = {
        "RateLimit-Policy": policy,
        "RateLimit": f'"{names[0]}";r={decision.remaining};t={seconds_ceil(wait_ms)}',
    }
    if not decision.allowed:
        headers["Retry-After"] = str(max(1, seconds_ceil(decision.retry_after_ms)))
    return headers


def verdict_of(decision: Decision, limits: Sequence[Limit], name: str, key: str, cost: int) -> Verdict:
    if decision.source == "fail_closed":
        retry = str(max(1, seconds_ceil(decision.retry_after_ms)))
        return Verdict(False, "unavailable", decision, key, cost, {"Retry-After": retry})
    # Failing open serves without claiming a quota nobody counted.
    headers = {} if decision.source == "fail_open" else rate_limit_headers(limits, name, decision)
    return Verdict(decision.allowed, "limited", decision, key, cost, headers)


def server_error(status: int) -> bool:
    """The default refund rule: the request failed on our side."""
    return status >= 500


@dataclass(frozen=True)
class Route:
    """One middleware's or route's settings, shared by every skin.

    ``limits`` (fixed, or chosen per request), ``key`` (who is limited:
    user id, API key, address; None skips the request), ``name``
    (namespaces the keys, ``<name>:<key>``, and names the policy), ``cost``
    (units per request), ``refund_when`` (refund when the response has this
    status; default: status >= 500; a handler that raises is refunded
    too)."""

    limits: Limits | Callable[..., Limits | None]
    name: str = "default"
    cost: int | Callable[..., int] = 1
    refund_when: Callable[[int], bool] = server_error

    def __post_init__(self) -> None:
        if not callable(self.limits):
            # Fails at start-up, not on the first request.
            make_call(self.limits, self.cost if isinstance(self.cost, int) else 1)

    def limits_for(self, request: object) -> list[Limit] | None:
        chosen = self.limits(request) if callable(self.limits) else self.limits
        return None if chosen is None else as_list(chosen)

    def cost_for(self, request: object) -> int:
        return self.cost(request) if callable(self.cost) else self.cost

    def key_for(self, ident: str) -> str:
        return f"{self.name}:{ident}"
