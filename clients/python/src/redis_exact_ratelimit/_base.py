"""What the sync and asyncio limiters share: options, validation, the
backend summary, and turning an error into an outage or a raised error."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from redis.crc import key_slot

from ._core import (
    Backend,
    Call,
    Decision,
    Limits,
    MultiCall,
    MultiDecision,
    RateLimitInputError,
    RateLimitReplyError,
    Script,
    make_multi_call,
    validate_key,
    validate_undo_cost,
)
from ._fallback import Fallback
from ._policy import BackendSummary, Policy, Unavailable, logger
from ._transport import is_call_error

_SCRIPT: Script | None = None


def _script() -> Script:
    # Read once per process, on first use: importing the package does no I/O.
    global _SCRIPT
    if _SCRIPT is None:
        _SCRIPT = Script.load()
    return _SCRIPT


class LimiterBase:
    def __init__(
        self,
        *,
        prefix: str,
        timeout: float | None,
        fail_open: bool,
        fallback: Fallback | None,
        retry_after_failure: float,
        cluster: bool,
    ) -> None:
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be above 0 seconds (or None: the client's own), got {timeout!r}")
        self.prefix = prefix
        self.timeout = timeout
        self.policy = Policy("open" if fail_open else "closed", fallback, retry_after_failure)
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

    def _multi_call(
        self, keys: Mapping[str, Limits], cost: int, precision: int | None, block_ms: int | None
    ) -> tuple[MultiCall, tuple[str, ...]]:
        """A validated multi-key call and its keys as sent."""
        multi = make_multi_call(keys, cost, precision, block_ms)
        return multi, self._full_keys(multi.keys)

    def _decided(self, record: bool, key: str, call: Call, outcome: Decision | Unavailable) -> Decision:
        """Redis's answer, or the fallback's or the policy's without it."""
        if isinstance(outcome, Unavailable):
            return self.policy.decide_without_redis(record, [key], [call], outcome)[0]
        return outcome

    def _decided_all(
        self, record: bool, keys: tuple[str, ...], multi: MultiCall, outcome: MultiDecision | Unavailable
    ) -> MultiDecision:
        if isinstance(outcome, Unavailable):
            decision, denied = self.policy.decide_without_redis(record, keys, multi.calls, outcome)
            return as_multi(decision, multi.keys, denied)
        return outcome

    def _undone_all(
        self, given: tuple[str, ...], keys: tuple[str, ...], cost: int, outcome: dict[str, int] | Unavailable
    ) -> dict[str, int]:
        if isinstance(outcome, Unavailable):
            return {key: self.policy.undo_without_redis(one, cost) for key, one in zip(given, keys, strict=True)}
        return outcome

    def _undo_locally(self, keys: Sequence[str], cost: int, decision: Decision | None) -> list[int] | None:
        """The refund of a decision Redis never saw, or None to ask Redis."""
        validate_undo_cost(cost)
        if decision is None or decision.source == "redis":
            return None
        if decision.source == "fallback":
            return [self.policy.undo_without_redis(key, cost) for key in keys]
        return [0 for _ in keys]

    def _unavailable(self, server: str, operation: str, keys: Sequence[str], error: Exception) -> Unavailable:
        """An error from a round trip: raised if it is about the call,
        otherwise an outage that the failure policy answers."""
        key = _label(keys)
        if is_call_error(error):
            logger.error("rate-limit %s on %s refused by Redis: %s", operation, key, error)
            raise RateLimitReplyError(str(error)) from error
        return self.policy.failed(server, operation, key, error)


def as_multi(decision: Decision, keys: tuple[str, ...], denied: tuple[int, ...]) -> MultiDecision:
    """A decision taken without Redis, over the keys as given."""
    return MultiDecision(
        decision.allowed,
        decision.remaining,
        decision.retry_after_ms,
        decision.reset_after_ms,
        decision.source,
        decision.error,
        keys=keys,
        denied_positions=denied,
    )


def _label(keys: Sequence[str]) -> str:
    return f"key {keys[0]!r}" if len(keys) == 1 else f"keys {list(keys)!r}"
