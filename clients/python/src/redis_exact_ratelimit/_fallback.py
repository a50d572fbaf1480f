"""The in-process limiter used while Redis is unreachable: the module's rules
(README "Commands" and this round's decisions) over a dict, exact within
one process, each limit scaled to this process's share. Pure apart from
the clock, which is injected."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ._core import Call, Decision, Limit

# Expired keys are swept once per this many calls, so idle keys do not pile up.
_SWEEP_EVERY = 1024


def _monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


@dataclass
class _Entry:
    at: int
    cost: int


@dataclass
class _Log:
    window_ms: int
    entries: deque[_Entry] = field(default_factory=deque)

    def newest(self) -> int:
        return self.entries[-1].at if self.entries else 0

    def prune(self, now: int) -> None:
        while self.entries and self.entries[0].at <= now - self.window_ms:
            self.entries.popleft()


class Fallback:
    """Decides locally while Redis is unreachable.

    ``share`` is this process's part of every limit (for N equal app
    processes, 1/N): a limit of ``max`` admits ``floor(max * share)`` units
    per window in this process, at least 1, so the processes together stay
    near the limit without talking to each other. Exact within the process;
    what it admitted is not known to Redis once Redis is back."""

    def __init__(self, share: float = 1.0, clock: Callable[[], int] = _monotonic_ms) -> None:
        if not 0.0 < share <= 1.0:
            raise ValueError(f"share must be above 0 and at most 1, got {share!r}")
        self.share = share
        self._clock = clock
        self._logs: dict[str, _Log] = {}
        self._lock = threading.Lock()
        self._calls = 0

    def scaled(self, limit: Limit) -> int:
        return max(1, int(limit.max * self.share))

    def check(self, key: str, call: Call) -> Decision:
        return self._decide(key, call, record=True)

    def peek(self, key: str, call: Call) -> Decision:
        return self._decide(key, call, record=False)

    def undo(self, key: str, cost: int) -> int:
        with self._lock:
            log = self._logs.get(key)
            removed = 0
            while log is not None and log.entries and removed < cost:
                newest = log.entries[-1]
                take = min(newest.cost, cost - removed)
                newest.cost -= take
                removed += take
                if newest.cost == 0:
                    log.entries.pop()
            if log is not None and not log.entries:
                del self._logs[key]
            return removed

    def clear(self) -> None:
        """Forgets everything (Redis is back and decides again)."""
        with self._lock:
            self._logs.clear()

    def __len__(self) -> int:
        return len(self._logs)

    def _decide(self, key: str, call: Call, record: bool) -> Decision:
        with self._lock:
            self._sweep_now_and_then()
            log = self._logs.get(key)
            # Time never runs backwards for a key, as in the module.
            now = max(self._clock(), log.newest() if log else 0)
            if log is not None:
                log.prune(now)
            entries = log.entries if log is not None else deque()
            maxes = [self.scaled(limit) for limit in call.limits]
            used = [_used(entries, now, limit.window_ms) for limit in call.limits]
            if call.cost > min(maxes):
                # This process's share can never hold the request.
                return Decision(False, 0, call.longest_window, _reset(entries, now, call), "fallback")
            allowed = all(u + call.cost <= m for u, m in zip(used, maxes, strict=True))
            if record:
                log = self._register(key, log, call.longest_window)
                if allowed:
                    _record(log, now, call.cost)
                    used = [u + call.cost for u in used]
            remaining = max(0, min(m - u for u, m in zip(used, maxes, strict=True)))
            retry = 0 if allowed else _retry_after(entries, now, call, maxes)
            entries = log.entries if log is not None else entries
            return Decision(allowed, remaining, retry, _reset(entries, now, call), "fallback")

    def _register(self, key: str, log: _Log | None, window_ms: int) -> _Log:
        """A CHECK registers its longest window, allowed or denied."""
        if log is None:
            log = self._logs[key] = _Log(window_ms)
        log.window_ms = max(log.window_ms, window_ms)
        return log

    def _sweep_now_and_then(self) -> None:
        self._calls += 1
        if self._calls % _SWEEP_EVERY:
            return
        now = self._clock()
        for key in [k for k, log in self._logs.items() if log.newest() <= now - log.window_ms]:
            del self._logs[key]


def _used(entries: deque[_Entry], now: int, window_ms: int) -> int:
    total = 0
    for entry in reversed(entries):
        if entry.at <= now - window_ms:
            break
        total += entry.cost
    return total


def _record(log: _Log, now: int, cost: int) -> None:
    if log.entries and log.entries[-1].at == now:
        log.entries[-1].cost += cost
    else:
        log.entries.append(_Entry(now, cost))


def _retry_after(entries: deque[_Entry], now: int, call: Call, maxes: list[int]) -> int:
    """The exact wait after which this request passes every limit: for each
    limit, the moment enough of its oldest entries have left its window."""
    wait = 0
    for limit, most in zip(call.limits, maxes, strict=True):
        inside = [e for e in entries if e.at > now - limit.window_ms]
        excess = sum(e.cost for e in inside) + call.cost - most
        for entry in inside:
            if excess <= 0:
                break
            excess -= entry.cost
            wait = max(wait, entry.at + limit.window_ms - now)
    return wait


def _reset(entries: deque[_Entry], now: int, call: Call) -> int:
    if not entries:
        return 0
    return max(0, entries[-1].at + call.longest_window - now)
