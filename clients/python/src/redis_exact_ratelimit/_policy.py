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

from ._core import Backend, Call, Decision, RateLimitUnavailable
from ._fallback import Fallback

logger = logging.getLogger("redis_exact_ratelimit")

Failure = Literal["closed", "open"]

BackendSummary = Literal["module", "twin", "mixed"] | None


@dataclass(frozen=True)
class Unavailable:
    """Redis gave no usable answer (``error``), or was skipped after a
    recent failure (``error`` None); it is tried again in ``retry_in_ms``."""

    error: BaseException | None
    retry_in_ms: int


class Policy:
    """The backend learned for each server, and the failure policy.

    After a failure, that server is left alone for ``retry_interval``
    seconds (the decisions for its keys come from the fallback or the
    policy meanwhile, without waiting for another timeout); the first call
    after that tries it again, and its success ends its outage. On a
    cluster, keys on the other masters keep being decided in Redis."""

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
        self._down_until: dict[str, float] = {}

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
        """Records what a server answered with; logs the first time only."""
        with self._lock:
            if self._backends.get(server) == backend:
                return
            before = self._backends.get(server)
            self._backends[server] = backend
        if backend == "twin":
            logger.warning(
                "server %s has no RATELIMIT module (it answered 'unknown command'); using the Lua script twin there%s",
                server,
                "" if before is None else " from now on",
            )
        else:
            logger.info("server %s has the RATELIMIT module; using it", server)

    # -- outage --------------------------------------------------------------

    def skip(self, server: str) -> Unavailable | None:
        """Unavailable while a recent failure says the server is not worth
        a call yet; None when it is to be asked."""
        with self._lock:
            until = self._down_until.get(server)
            now = self._clock()
        if until is None or now >= until:
            return None
        return Unavailable(None, int((until - now) * 1000))

    def succeeded(self, server: str) -> None:
        with self._lock:
            was_down = self._down_until.pop(server, None) is not None
            none_down = not self._down_until
        if was_down:
            logger.warning("Redis at %s answers again; rate limits are decided there again", server)
            # The fallback's logs are forgotten once no server needs them.
            if none_down and self.fallback is not None:
                self.fallback.clear()

    def failed(self, server: str, operation: str, subject: str, error: BaseException) -> Unavailable:
        with self._lock:
            first = server not in self._down_until
            self._down_until[server] = self._clock() + self.retry_interval
        logger.error(
            "rate-limit %s on %s failed at %s: %s: %s; %s%s",
            operation,
            subject,
            server,
            type(error).__name__,
            error or "no answer",
            self._what_now(),
            f" (Redis at {server} left alone for {self.retry_interval:g} s)" if first else "",
        )
        return Unavailable(error, int(self.retry_interval * 1000))

    def _what_now(self) -> str:
        if self.fallback is not None:
            return f"deciding in process (share {self.fallback.share:g} of each limit)"
        return "failing open (allowing)" if self.failure == "open" else "failing closed (denying)"

    # -- decisions without Redis -------------------------------------------

    def decide_without_redis(
        self, record: bool, keys: Sequence[str], calls: Sequence[Call], why: Unavailable
    ) -> tuple[Decision, tuple[int, ...]]:
        """A CHECK (record) or PEEK over one or several keys, and the
        positions of the keys that denied (none unless the fallback decided)."""
        if self.fallback is not None:
            decision, denied = self.fallback.decide(keys, calls, record)
            return replace(decision, error=why.error), denied
        if self.failure == "open":
            remaining = min(call.smallest_max for call in calls) - calls[0].cost
            return Decision(True, remaining, 0, 0, "fail_open", why.error), ()
        return Decision(False, 0, max(why.retry_in_ms, 1), 0, "fail_closed", why.error), ()

    def undo_without_redis(self, key: str, cost: int) -> int:
        return self.fallback.undo(key, cost) if self.fallback is not None else 0

    def unblock_without_redis(self, key: str, why: Unavailable) -> bool:
        """Lifts the fallback's block, if any; Redis's stays, so the caller
        is told: an unblock is an operator's action, not a decision."""
        if self.fallback is not None:
            self.fallback.unblock(key)
        message = f"Redis is unavailable; the block on key {key!r} was not lifted there"
        raise RateLimitUnavailable(message) from why.error
