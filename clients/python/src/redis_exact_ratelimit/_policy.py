"""What the sync and asyncio clients share besides I/O: which backend a
server has, whether Redis is failing, and what a failure turns into.
Everything here is logged through the ``redis_exact_ratelimit`` logger."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from ._core import Backend, Call, Decision, GcraCall, GcraDecision, RateLimitUnavailable
from ._fallback import Answer, Fallback

logger = logging.getLogger("redis_exact_ratelimit")

# The texts of contract/transport.json ("logs", "policy_texts"), the same in
# the Node package. Their details are strings, never an error object, so no
# handler prints a stack.
_MODULE = "redis-ratelimit: %s has the RATELIMIT module; using it"
_TWIN = "redis-ratelimit: %s has no RATELIMIT module; using the Lua script twin"
_DOWN = "redis-ratelimit: Redis at %s is unavailable (%s); %s until it answers"
_UP = "redis-ratelimit: Redis at %s answers again; decisions are made there again"
_FAILING_CLOSED = "failing closed (denying every request)"
_FAILING_OPEN = "failing open (allowing every request)"
_FALLBACK = "deciding in this process (fallback, share {share:g})"

Failure = Literal["closed", "open"]

BackendSummary = Literal["module", "twin", "mixed"] | None


@dataclass(frozen=True)
class Unavailable:
    """Redis gave no usable answer (``error``), or was skipped after a
    recent failure (``error`` None); ``cause`` is the outage's, as logged;
    it is tried again in ``retry_in_ms``."""

    error: BaseException | None
    cause: str
    retry_in_ms: int


@dataclass
class _Outage:
    cause: str
    retry_at: float


class Policy:
    """The backend learned for each server, and the failure policy.

    After a failure, that server is left alone for ``retry_interval``
    seconds (the decisions for its keys come from the fallback or the
    policy meanwhile, without waiting for another timeout); the first call
    after that tries it again, and its success ends its outage. On a
    cluster, keys on the other masters keep being decided in Redis. Each
    change is logged once: a backend learned, a server down, back up."""

    def __init__(
        self,
        failure: Failure,
        fallback: Fallback | None,
        retry_interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure not in ("closed", "open"):
            raise ValueError(f"failure must be 'closed' or 'open', got {failure!r}")
        if retry_interval < 0:
            raise ValueError(f"retry_interval must be at least 0, got {retry_interval!r}")
        self.failure: Failure = failure
        self.fallback = fallback
        self.retry_interval = retry_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._backends: dict[str, Backend] = {}
        self._announced: dict[str, Backend] = {}
        self._outages: dict[str, _Outage] = {}

    # -- backend per server ------------------------------------------------

    def backend_of(self, server: str) -> Backend:
        return self._backends.get(server, "module")

    def backends(self) -> dict[str, Backend]:
        with self._lock:
            return dict(self._backends)

    def backend(self) -> BackendSummary:
        kinds = set(self.backends().values())
        if len(kinds) > 1:
            return "mixed"
        return kinds.pop() if kinds else None

    def learned(self, server: str, backend: Backend) -> None:
        """Records which backend a server has (the module, until it answers
        "unknown command")."""
        with self._lock:
            self._backends[server] = backend

    def answered(self, server: str) -> None:
        """The server's backend gave an answer: logged the first time (so a
        twin that the server refuses to run is never announced as in use)."""
        with self._lock:
            backend = self._backends[server]
            if self._announced.get(server) == backend:
                return
            self._announced[server] = backend
        if backend == "twin":
            logger.warning(_TWIN, server)
        else:
            logger.info(_MODULE, server)

    # -- outage --------------------------------------------------------------

    def skip(self, server: str) -> Unavailable | None:
        """Unavailable while a recent failure says the server is not worth
        a call yet; None when it is to be asked."""
        with self._lock:
            outage = self._outages.get(server)
            now = self._clock()
        if outage is None or now >= outage.retry_at:
            return None
        return Unavailable(None, outage.cause, int((outage.retry_at - now) * 1000))

    def succeeded(self, server: str) -> None:
        with self._lock:
            was_down = self._outages.pop(server, None) is not None
            none_down = not self._outages
        if was_down:
            logger.warning(_UP, server)
            # The fallback's logs are forgotten once no server needs them.
            if none_down and self.fallback is not None:
                self.fallback.clear()

    def failed(self, server: str, cause: str, error: BaseException) -> Unavailable:
        """A failure of a server: logged when it was answering until now
        (not again while it stays down, whatever the cause)."""
        with self._lock:
            first = server not in self._outages
            self._outages[server] = _Outage(cause, self._clock() + self.retry_interval)
        if first:
            logger.error(_DOWN, server, cause, self.what_now())
        return Unavailable(error, cause, int(self.retry_interval * 1000))

    def what_now(self) -> str:
        """What decides while Redis is unavailable, as logged."""
        if self.fallback is not None:
            return _FALLBACK.format(share=self.fallback.share)
        return _FAILING_OPEN if self.failure == "open" else _FAILING_CLOSED

    # -- decisions without Redis -------------------------------------------

    def decide_without_redis(
        self, record: bool, keys: Sequence[str], calls: Sequence[Call], why: Unavailable
    ) -> Answer:
        """A CHECK (record) or PEEK over one or several keys, with the
        positions of the keys that denied and each key's remaining (none
        unless the fallback decided)."""
        if self.fallback is not None:
            answer = self.fallback.decide(keys, calls, record)
            return replace(answer, decision=replace(answer.decision, error=why.error))
        if self.failure == "open":
            remaining = min(call.smallest_max for call in calls) - calls[0].cost
            return Answer(Decision(True, remaining, 0, 0, "fail_open", why.error), (), ())
        return Answer(Decision(False, 0, max(why.retry_in_ms, 1), 0, "fail_closed", why.error), (), ())

    def gcra_without_redis(self, key: str, call: GcraCall, why: Unavailable) -> GcraDecision:
        """A token-bucket request: the fallback's bucket, or the policy's
        answer (failing open: allowed, the bucket less the tokens left)."""
        if self.fallback is not None:
            return replace(self.fallback.gcra(key, call), error=why.error)
        burst = call.limit.burst
        if self.failure == "open":
            return GcraDecision(True, burst, max(0, burst - call.tokens), 0, 0, None, "fail_open", why.error)
        return GcraDecision(False, burst, 0, max(why.retry_in_ms, 1), 0, None, "fail_closed", why.error)

    def undo_without_redis(self, key: str, cost: int) -> int:
        return self.fallback.undo(key, cost) if self.fallback is not None else 0

    def undo_all_without_redis(self, keys: Sequence[str], cost: int) -> list[int]:
        return self.fallback.undo_all(keys, cost) if self.fallback is not None else [0 for _ in keys]

    def unblock_without_redis(self, server: str, key: str, reset: bool, why: Unavailable) -> bool:
        """Lifts the fallback's block, if any (and with ``reset`` forgets its
        count); Redis's stays, so the caller is told: an unblock is an
        operator's action, not a decision."""
        if self.fallback is not None:
            self.fallback.unblock(key, reset=reset)
        message = f"Redis at {server} is unavailable ({why.cause}); the block on key {key!r} was not lifted there"
        raise RateLimitUnavailable(message) from why.error
