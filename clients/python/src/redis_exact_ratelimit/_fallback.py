"""The in-process limiter used while Redis is unreachable: the module's rules
(README "Commands" and this round's decisions) over a dict, exact within
one process, each limit scaled to this process's share, holding at most
``max_keys`` keys (the least recently used goes). Pure apart from the
clock, which is injected."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ._core import Call, Decision, Limit

# Expired keys are swept once per this many calls, so idle keys do not pile up.
_SWEEP_EVERY = 1024

DEFAULT_MAX_KEYS = 10_000


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
    # As in the module: an absolute time on this clock, 0 for none.
    blocked_until: int = 0

    def newest(self) -> int:
        return self.entries[-1].at if self.entries else 0

    def prune(self, now: int) -> None:
        while self.entries and self.entries[0].at <= now - self.window_ms:
            self.entries.popleft()

    def idle(self, now: int) -> bool:
        """Nothing counted and no block: the key can be forgotten."""
        return self.newest() <= now - self.window_ms and self.blocked_until <= now


@dataclass(frozen=True)
class Answer:
    """The fallback's answer over one or several keys: the decision, the
    positions of the keys that denied, and each key's own remaining."""

    decision: Decision
    denied: tuple[int, ...]
    per_key_remaining: tuple[int, ...]


@dataclass
class _Standing:
    """One key of a call as it stands before anything is recorded."""

    key: str
    call: Call
    now: int
    log: _Log | None
    maxes: list[int]
    used: list[int]
    limits_allow: bool
    limits_wait: int

    @property
    def blocked_until(self) -> int:
        return self.log.blocked_until if self.log is not None else 0

    @property
    def blocked(self) -> bool:
        return self.now < self.blocked_until

    @property
    def allows(self) -> bool:
        return self.limits_allow and not self.blocked


class Fallback:
    """Decides locally while Redis is unreachable.

    ``share`` is this process's part of every limit (for N equal app
    processes, 1/N): a limit of ``max`` admits ``floor(max * share)`` units
    per window in this process, at least 1, so the processes together stay
    near the limit without talking to each other. Exact within the process;
    what it admitted (and any block it started) is not known to Redis once
    Redis is back.

    ``max_keys`` bounds its memory: past that many keys, the least recently
    used key is forgotten (its count and its block)."""

    def __init__(
        self, share: float = 1.0, *, max_keys: int = DEFAULT_MAX_KEYS, clock: Callable[[], int] = _monotonic_ms
    ) -> None:
        if not 0.0 < share <= 1.0:
            raise ValueError(f"share must be above 0 and at most 1, got {share!r}")
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise ValueError(f"max_keys must be an integer of at least 1, got {max_keys!r}")
        self.share = share
        self.max_keys = max_keys
        self._clock = clock
        self._logs: OrderedDict[str, _Log] = OrderedDict()
        self._lock = threading.Lock()
        self._calls = 0

    def scaled(self, limit: Limit) -> int:
        return max(1, int(limit.max * self.share))

    def check(self, key: str, call: Call) -> Decision:
        return self.decide([key], [call], record=True).decision

    def peek(self, key: str, call: Call) -> Decision:
        return self.decide([key], [call], record=False).decision

    def decide(self, keys: Sequence[str], calls: Sequence[Call], record: bool) -> Answer:
        """One request against every key, all or nothing, as MCHECK (record)
        or MPEEK."""
        with self._lock:
            self._sweep_now_and_then()
            standings = [self._standing(key, call) for key, call in zip(keys, calls, strict=True)]
            denied = tuple(i for i, standing in enumerate(standings) if not standing.allows)
            allowed = not denied
            if record:
                for standing in standings:
                    self._commit(standing, allowed)
            self._forget_beyond_the_cap()
            answers = [_answer(standing, allowed) for standing in standings]
        decision = Decision(
            allowed,
            min(answer.remaining for answer in answers),
            max(answer.retry_after_ms for answer in answers),
            max(answer.reset_after_ms for answer in answers),
            "fallback",
        )
        return Answer(decision, denied, tuple(answer.remaining for answer in answers))

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
            if log is not None and not log.entries and log.blocked_until <= self._clock():
                del self._logs[key]
            return removed

    def unblock(self, key: str, *, reset: bool = False) -> bool:
        """Lifts the key's block, keeping what it counts unless ``reset``
        (then the key is forgotten); True if it was blocked."""
        with self._lock:
            log = self._logs.pop(key, None) if reset else self._logs.get(key)
            if log is None or log.blocked_until <= max(self._clock(), log.newest()):
                return False
            log.blocked_until = 0
            return True

    def clear(self) -> None:
        """Forgets everything (Redis is back and decides again)."""
        with self._lock:
            self._logs.clear()

    def __len__(self) -> int:
        return len(self._logs)

    def _standing(self, key: str, call: Call) -> _Standing:
        log = self._logs.get(key)
        if log is not None:
            self._logs.move_to_end(key)  # the most recently used
        # Time never runs backwards for a key, as in the module.
        now = max(self._clock(), log.newest() if log else 0)
        if log is not None:
            log.prune(now)
        entries = log.entries if log is not None else deque()
        maxes = [self.scaled(limit) for limit in call.limits]
        used = [_used(entries, now, limit.window_ms) for limit in call.limits]
        if call.cost > min(maxes):
            # This process's share can never hold the request.
            return _Standing(key, call, now, log, maxes, used, False, call.longest_window)
        allows = all(u + call.cost <= m for u, m in zip(used, maxes, strict=True))
        wait = 0 if allows else _retry_after(entries, now, call, maxes)
        return _Standing(key, call, now, log, maxes, used, allows, wait)

    def _commit(self, standing: _Standing, allowed: bool) -> None:
        """A CHECK registers its longest window, allowed or denied; records
        when allowed; starts a block on a key its own limits denied."""
        log = standing.log = self._register(standing.key, standing.log, standing.call.longest_window)
        if allowed:
            _record(log, standing.now, standing.call.cost, standing.call.precision or 1)
            standing.used = [u + standing.call.cost for u in standing.used]
            log.blocked_until = 0  # any earlier block has ended
        elif standing.call.block_ms is not None and not standing.limits_allow and not standing.blocked:
            log.blocked_until = standing.now + standing.call.block_ms

    def _register(self, key: str, log: _Log | None, window_ms: int) -> _Log:
        if log is None:
            log = self._logs[key] = _Log(window_ms)
        log.window_ms = max(log.window_ms, window_ms)
        return log

    def _forget_beyond_the_cap(self) -> None:
        # After the call's commits, so a call over several keys never loses
        # one of its own keys midway.
        while len(self._logs) > self.max_keys:
            self._logs.popitem(last=False)

    def _sweep_now_and_then(self) -> None:
        self._calls += 1
        if self._calls % _SWEEP_EVERY:
            return
        now = self._clock()
        for key in [k for k, log in self._logs.items() if log.idle(now)]:
            del self._logs[key]


def _answer(standing: _Standing, allowed: bool) -> Decision:
    """One key's part of the reply, after the commit."""
    entries = standing.log.entries if standing.log is not None else deque()
    reset = _reset(entries, standing.now, standing.call)
    if standing.blocked:
        rest = standing.blocked_until - standing.now
        return Decision(False, 0, max(rest, standing.limits_wait), max(rest, reset), "fallback")
    remaining = max(0, min(m - u for u, m in zip(standing.used, standing.maxes, strict=True)))
    return Decision(allowed, remaining, 0 if allowed else standing.limits_wait, reset, "fallback")


def _used(entries: deque[_Entry], now: int, window_ms: int) -> int:
    total = 0
    for entry in reversed(entries):
        if entry.at <= now - window_ms:
            break
        total += entry.cost
    return total


def _record(log: _Log, now: int, cost: int, precision: int) -> None:
    """As the module: the units join the newest entry when it lies in the
    same precision cell (moving it to now, so they count at most p - 1 ms
    longer, never shorter), else become a new entry."""
    newest = log.entries[-1] if log.entries else None
    if newest is not None and newest.at // precision == now // precision:
        newest.at = now
        newest.cost += cost
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
