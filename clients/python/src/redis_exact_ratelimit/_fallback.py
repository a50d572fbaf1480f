"""The in-process limiter used while Redis is unreachable: the module's rules
over a dict, exact within one process, each limit scaled to this process's
share, holding at most ``max_keys`` keys (the least recently used goes).
Pure apart from the clock, which is injected. A key holds a sliding-window
log or a token bucket (GCRA), as in Redis two types: an operation of one
on a key of the other raises the server's WRONGTYPE.

The rules are the reference model's (the repository's core/src/reference.rs: a
key's log, its window, its block, and when the key expires), step for
step, and tests/test_corpus.py holds them to contract/corpus.jsonl:

- A key's time never runs backwards: a call reads ``now`` as the clock, or
  the key's newest entry's time if later.
- Its log keeps the longest window any CHECK on it named (allowed, or
  denied while it holds entries), and drops what that window no longer
  counts only when it records (so a limit with a longer window, named
  later, still counts what the log kept; PEEK and a denial change no
  entry).
- A key expires, as in Redis, once the clock passes the expiry its last
  write set: its newest entry's time plus its window, or its block's end
  if later. A refund keeps the expiry (a blocked key it empties lives
  until its block ends; an unblocked one goes at once), and UNBLOCK sets
  the log's own (a key with nothing live left goes).

The token bucket is the module's (core/src/gcra.rs), in integers: a key
stores its last charge's time, that charge's period and the tokens it held
then in units of ``1 / period`` of a token; it drains ``count`` units a
millisecond, so every step is exact and a wait is an exact ``units /
count`` ms until a reply rounds it (``GcraAnswer.reply``). A charge sets
the key to expire when its bucket is empty again. What a bucket holds
persists under a smaller burst (no cap at a full bucket: limited until it
drains under); CHARGE adds tokens even past full and REFUND takes them
back, at most all of them (a bucket left empty goes), as the model's
(core/src/reference/gcra.rs) settlements do.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from ._core import (
    MAX_EXACT,
    MAX_MAX,
    Call,
    Decision,
    GcraCall,
    GcraDecision,
    Limit,
    RateLimitReplyError,
    Settlement,
    gcra_decision,
    gcra_settlement,
)

# Expired keys are swept once per this many calls (a call drops the expired
# keys it names itself).
_SWEEP_EVERY = 1024

DEFAULT_MAX_KEYS = 10_000

# The server's answer to an operation on a key of the other type.
WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"

# CHARGE's refusal of what a count cannot hold (the module's text).
_OVERFLOW = (
    f"this key would hold more than {MAX_MAX} units of cost (2^63 - 1, the most a count can be): nothing was recorded"
)

# A token bucket's CHARGE refused (the module's text).
_GCRA_OVERFLOW = (
    f"ERR this key would hold more than {MAX_EXACT} token-milliseconds (its tokens times the period in"
    " milliseconds, the most a bucket holds exactly): nothing was charged"
)

# The latest time a bucket holds (core/src/gcra.rs LATEST): 2^42 - 1 ms.
_LATEST = (1 << 42) - 1


def _monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


@dataclass
class _Entry:
    at: int
    cost: int


@dataclass
class _Log:
    """One key: its entries (oldest first), the longest window its log
    keeps (0 while it holds no entry), when its block ends (0 for none) and
    when it expires (the key exists while the clock is at most that), all
    absolute times on the fallback's clock."""

    entries: deque[_Entry] = field(default_factory=deque)
    window_ms: int = 0
    blocked_until: int = 0
    expires: int = 0

    def now(self, clock: int) -> int:
        """The key's time: never earlier than its newest entry."""
        return max(clock, self.entries[-1].at) if self.entries else clock

    def exists(self) -> bool:
        return bool(self.entries) or self.blocked_until != 0

    def own_expiry(self) -> int:
        """What a write sets: the newest entry's time plus the window, or the
        block's end, whichever is later."""
        log_end = self.entries[-1].at + self.window_ms if self.entries else 0
        return max(log_end, self.blocked_until)


@dataclass
class _Bucket:
    """A token bucket: its last charge's time, that charge's period (ms)
    and the units it held then (``1 / period`` tokens, at least 1), and
    when the key expires (absolute times on the fallback's clock)."""

    at: int
    period: int
    level: int
    expires: int


@dataclass(frozen=True)
class GcraAnswer:
    """The token bucket's decision before units (core/src/gcra.rs
    ``Decision``): waits are exact, ``units / count`` ms; ``retry_units``
    is None when allowed or when the request can never fit."""

    limited: bool
    burst: int
    remaining: int
    retry_units: int | None
    reset_units: int
    count: int
    # A settlement's (CHARGE, REFUND): the whole tokens held past full,
    # first in its reply; None for a request.
    over: int | None = None

    def reply(self, ms: bool) -> list[int]:
        """The module's five integers: ``[limited, max_burst + 1,
        remaining, retry_after (-1 if allowed or never), reset_after]``,
        or a settlement's ``[over, max_burst + 1, remaining, retry_after
        (-1 if a token fits now), reset_after]``, the waits in
        milliseconds rounded up (``MS``), or else in redis-cell's seconds
        (the whole milliseconds rounded up to seconds)."""

        def wait(units: int) -> int:
            if ms:
                return -(-units // self.count)
            return -(-(units // self.count) // 1000)

        retry = -1 if self.retry_units is None else wait(self.retry_units)
        first = int(self.limited) if self.over is None else self.over
        return [first, self.burst, self.remaining, retry, wait(self.reset_units)]

    def decision(self) -> GcraDecision:
        """As the public API answers (waits in ms), decided here."""
        return gcra_decision(self.reply(ms=True), "fallback")


@dataclass(frozen=True)
class Answer:
    """The fallback's answer over one or several keys: the decision, the
    positions of the keys that denied, and each key's own remaining."""

    decision: Decision
    denied: tuple[int, ...]
    per_key_remaining: tuple[int, ...]


@dataclass(frozen=True)
class _HeldBucket:
    """What the fallback holds for a token-bucket key (for the contract's
    test): the bucket and the key's expiry, absolute times on its clock."""

    at: int
    period: int
    level: int
    expires: int


@dataclass(frozen=True)
class _Held:
    """What the fallback holds for a key (for the contract's test):
    entries as (time, cost), oldest first, and the log's window, block end
    and expiry, as absolute times on its clock."""

    entries: tuple[tuple[int, int], ...]
    window: int
    blocked_until: int
    expires: int


@dataclass
class _Key:
    """One key of a call: its log (a new one, not held yet, for a key the
    fallback does not hold), whether the call changed it, and its answer."""

    name: str
    call: Call
    log: _Log
    maxes: list[int]
    changed: bool = False


class Fallback:
    """Decides locally while Redis is unreachable.

    ``share`` is this process's part of every limit (for N equal app
    processes, 1/N): a limit of ``max`` admits ``floor(max * share)`` units
    per window in this process, at least 1, so the processes together stay
    near the limit without talking to each other. Exact within the process;
    what it admitted (and any block it started) is not known to Redis once
    Redis is back.

    ``max_keys`` bounds its memory: past that many keys, the least recently
    used key is forgotten (its count and its block, or its bucket).

    Token buckets (``gcra``) are scaled the same way: a bucket of ``max(1,
    floor(burst * share))`` tokens refilled at ``max(1, floor(count *
    share))`` per period."""

    def __init__(
        self, share: float = 1.0, *, max_keys: int = DEFAULT_MAX_KEYS, clock: Callable[[], int] = _monotonic_ms
    ) -> None:
        if not 0.0 < share <= 1.0:
            raise ValueError(f"share must be above 0 and at most 1, got {share!r}")
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise ValueError(f"max_keys must be an integer of at least 1, got {max_keys!r}")
        self.share = share
        # The share as an exact fraction: max * share is computed in
        # integers, exact for every max up to 2^63 - 1 (a float product is
        # not above 2^53).
        self._share_ratio = share.as_integer_ratio()
        self.max_keys = max_keys
        self._clock = clock
        self._keys: OrderedDict[str, _Log | _Bucket] = OrderedDict()
        # (expires, key) of every write, soonest first: a key is dropped once
        # the clock passes its expiry (an entry whose key has since moved on
        # is skipped).
        self._expiries: list[tuple[int, str]] = []
        self._calls = 0
        self._lock = threading.Lock()

    def scaled(self, limit: Limit) -> int:
        return self._share_of(limit.max)

    def _share_of(self, number: int) -> int:
        numerator, denominator = self._share_ratio
        return max(1, number * numerator // denominator)

    def gcra(self, key: str, call: GcraCall) -> GcraDecision:
        """RATELIMIT.GCRA: decides a request of ``call.tokens`` tokens (0
        asks without charging) against the key's bucket, scaled to the
        share, and charges it if allowed."""
        if call.settle is not None:
            raise ValueError("a settlement is gcra_settle's")
        return self.gcra_answer(key, call).decision()

    def gcra_settle(self, key: str, call: GcraCall) -> Settlement:
        """RATELIMIT.GCRA ... CHARGE or REFUND (``call.settle``): charges
        ``call.tokens`` whatever the bucket holds, even past full (a debt
        that drains at the rate), or takes them back (at most what it
        holds; a bucket left empty goes), under the limit scaled to the
        share; never limited. Raises the module's error for a charge that
        would make the bucket hold more than 9000000000000000 units."""
        if call.settle is None:
            raise ValueError("a request is gcra's")
        reply = self.gcra_answer(key, call).reply(ms=True)
        return gcra_settlement(reply, "fallback", key, call.tokens, call.settle)

    def gcra_answer(self, key: str, call: GcraCall) -> GcraAnswer:
        """As ``gcra``, with the waits exact (``GcraAnswer.reply`` gives
        them in either of the module's units); with ``call.settle``, the
        settlement's (``gcra_settle``). Raises the module's error for a
        charge that would make the bucket hold more than MAX_EXACT units,
        changing nothing."""
        limit = call.limit
        burst, count, period = self._share_of(limit.burst), self._share_of(limit.count), limit.period_ms
        with self._lock:
            clock = self._tick()
            held = self._live(key, clock)
            if isinstance(held, _Log):
                raise RateLimitReplyError(WRONGTYPE)
            if held is not None:
                self._keys.move_to_end(key)  # the most recently used
            # Time never runs backwards for a key: a clock behind its last
            # charge reads as that charge's time.
            now = min(max(clock, 1), _LATEST)
            level = 0
            if held is not None:
                now = max(now, held.at)
                level = _level_at(held, now, count, period)
            capacity = burst * period
            if call.settle == "charge":
                after = level + call.tokens * period
                if after > MAX_EXACT:
                    raise RateLimitReplyError(_GCRA_OVERFLOW)
                if call.tokens > 0:
                    self._store_bucket(key, now, period, after, count)
                return _settled(after, burst, count, period)
            if call.settle == "refund":
                if held is None:
                    return _settled(0, burst, count, period)
                after = max(0, level - call.tokens * period)
                if call.tokens > 0 and after == 0:
                    del self._keys[key]
                elif call.tokens > 0:
                    self._store_bucket(key, now, period, after, count)
                return _settled(after, burst, count, period)
            # More tokens than a full bucket never fit; an over-full bucket
            # (a settled debt, a smaller burst) has no room.
            need = call.tokens * period if call.tokens <= burst else None
            if need is None or level + need > capacity:
                retry = None if need is None else level + need - capacity
                return GcraAnswer(True, burst, max(0, capacity - level) // period, retry, level, count)
            after = level + need
            if need > 0:
                self._store_bucket(key, now, period, after, count)
            return GcraAnswer(False, burst, (capacity - after) // period, None, after, count)

    def _store_bucket(self, key: str, now: int, period: int, level: int, count: int) -> None:
        """A charge's write: the bucket, expiring when it is empty again."""
        expires = now + -(-level // count)
        self._keys[key] = _Bucket(now, period, level, expires)
        self._keys.move_to_end(key)
        self._expire_at(key, expires)
        self._forget_beyond_the_cap()

    def check(self, key: str, call: Call) -> Decision:
        return self.decide([key], [call], record=True).decision

    def peek(self, key: str, call: Call) -> Decision:
        return self.decide([key], [call], record=False).decision

    def decide(self, keys: Sequence[str], calls: Sequence[Call], record: bool) -> Answer:
        """One request against every key, all or nothing, as MCHECK (record)
        or MPEEK: every key is peeked; if every key allows and ``record``,
        every key records it; if any denies and ``record``, every key
        registers its longest window, and a key whose own limits denied is
        blocked for ``block_ms`` (if not blocked already)."""
        with self._lock:
            clock = self._tick()
            standing = [self._key(key, call, clock) for key, call in zip(keys, calls, strict=True)]
            peeks = [self._peek(one, clock) for one in standing]
            denied = tuple(i for i, peek in enumerate(peeks) if not peek.allowed)
            answers = peeks
            if record:
                answers = [
                    self._check(one, clock) if not denied or not peek.allowed else self._register(one, peek)
                    for one, peek in zip(standing, peeks, strict=True)
                ]
                for one in standing:
                    self._store(one)
                self._forget_beyond_the_cap()
        decision = Decision(
            not denied,
            min(answer.remaining for answer in answers),
            max(answer.retry_after_ms for answer in answers) if denied else 0,
            max(answer.reset_after_ms for answer in answers),
            "fallback",
        )
        return Answer(decision, denied, tuple(answer.remaining for answer in answers))

    def charge(self, key: str, call: Call) -> Settlement:
        """CHARGE: records ``call.cost`` whatever the limits (and a block)
        say, and measures the key against them (scaled to the share)."""
        return self.charge_all([key], [call], multi=False)

    def charge_all(self, keys: Sequence[str], calls: Sequence[Call], *, multi: bool = True) -> Settlement:
        """MCHARGE: CHARGE on every key with its own call. Every key's type,
        then every key's overflow (what it would hold above 2^63 - 1), is
        checked before any is charged: an error changes no key, and names
        the key when ``multi``, as the module's does."""
        with self._lock:
            clock = self._tick()
            standing = [self._key(key, call, clock) for key, call in zip(keys, calls, strict=True)]
            for one in standing:
                if _overflows(one.log, clock, one.call):
                    named = f"key {one.name!r}: " if multi else ""
                    raise RateLimitReplyError(f"ERR {named}{_OVERFLOW}")
            each = [self._charge(one, clock) for one in standing]
            for one in standing:
                self._store(one)
            self._forget_beyond_the_cap()
        return Settlement(
            "fallback",
            calls[0].cost,
            0,
            max(s.over for s in each),
            min(s.remaining or 0 for s in each),
            max(s.retry_after_ms for s in each),
            max(s.reset_after_ms or 0 for s in each),
            keys=tuple(keys),
            over_positions=tuple(i for i, s in enumerate(each) if s.over > 0),
        )

    def _charge(self, key: _Key, clock: int) -> Settlement:
        """The model's charge on one key: recorded as an allowed CHECK
        records (an ended block goes, a block in force stays), then
        measured: how far over, the room left, when a request of cost 1
        fits again, when the longest window empties."""
        log, call = key.log, key.call
        now = log.now(clock)
        _record(log, now, call.longest_window, call.cost, call.precision or 1)
        if log.blocked_until <= now:
            log.blocked_until = 0
        key.changed = True
        used = [_used(log.entries, now, limit.window_ms) for limit in call.limits]
        over = max(max(0, u - m) for u, m in zip(used, key.maxes, strict=True))
        remaining = max(0, min(m - u for u, m in zip(used, key.maxes, strict=True)))
        retry = _retry_after(log.entries, now, replace(call, cost=1), key.maxes)
        reset = _reset(log.entries, now, call.longest_window)
        return Settlement("fallback", call.cost, 0, over, remaining, retry, reset)

    def undo(self, key: str, cost: int) -> int:
        """Refunds the ``cost`` newest units (fewer if the key holds fewer);
        the block stays, and so does the key's expiry, but a key left with
        no entry goes unless a block in force keeps it until it ends."""
        return self.undo_all([key], cost)[0]

    def undo_all(self, keys: Sequence[str], cost: int) -> list[int]:
        """MUNDO: ``undo`` in every key, or (a key holding a token bucket)
        in none."""
        with self._lock:
            clock = self._tick()
            logs = [self._log(key, clock) for key in keys]
            return [self._undo(key, log, cost, clock) for key, log in zip(keys, logs, strict=True)]

    def _undo(self, key: str, log: _Log | None, cost: int, clock: int) -> int:
        if log is None:
            return 0
        removed = _refund(log, cost)
        kept = bool(log.entries) or log.now(clock) < log.blocked_until
        if not kept:
            del self._keys[key]
        elif not log.entries and removed > 0:
            log.expires = log.blocked_until
            self._expire_at(key, log.blocked_until)
        return removed

    def unblock(self, key: str, *, reset: bool = False) -> bool:
        """Lifts the key's block, keeping what it counts unless ``reset``
        (then the key is forgotten); True if it was blocked. A key lifted
        expires with its log, at once if nothing in it is live."""
        with self._lock:
            clock = self._tick()
            log = self._log(key, clock)
            if log is not None and reset:
                del self._keys[key]
            if log is None:
                return False
            now = log.now(clock)
            if not now < log.blocked_until:
                return False
            if reset:
                return True
            log.blocked_until = 0
            expires = log.own_expiry()
            if log.entries and expires > now:
                log.expires = expires
                self._expire_at(key, expires)
            else:
                del self._keys[key]
            return True

    def clear(self) -> None:
        """Forgets everything (Redis is back and decides again)."""
        with self._lock:
            self._keys.clear()
            self._expiries.clear()

    def __len__(self) -> int:
        return len(self._keys)

    def _held(self, key: str) -> _Held | _HeldBucket | None:
        """What the fallback holds for ``key`` at its clock's reading: None
        when it holds nothing, or only a key past its expiry (which its next
        call forgets)."""
        with self._lock:
            log = self._keys.get(key)
            if log is None or self._clock() > log.expires:
                return None
            if isinstance(log, _Bucket):
                return _HeldBucket(log.at, log.period, log.level, log.expires)
            entries = tuple((entry.at, entry.cost) for entry in log.entries)
            return _Held(entries, log.window_ms if entries else 0, log.blocked_until, log.expires)

    # -- one key of a call ----------------------------------------------------

    def _key(self, name: str, call: Call, clock: int) -> _Key:
        log = self._log(name, clock)
        if log is not None:
            self._keys.move_to_end(name)  # the most recently used
        return _Key(name, call, log if log is not None else _Log(), [self.scaled(limit) for limit in call.limits])

    def _peek(self, key: _Key, clock: int) -> Decision:
        """PEEK: a blocked key is denied; otherwise its limits decide."""
        now = key.log.now(clock)
        if now < key.log.blocked_until:
            return _blocked(key, now)
        return _limits(key, now)

    def _check(self, key: _Key, clock: int) -> Decision:
        """CHECK: a denial registers the longest window and, with
        ``block_ms``, blocks a key that is not blocked yet; an allowed call
        records (and a block that has ended is cleared)."""
        log, now = key.log, key.log.now(clock)
        standing = self._peek(key, clock)
        if not standing.allowed:
            self._register(key, standing)
            if key.call.block_ms is not None and not now < log.blocked_until:
                log.blocked_until = now + key.call.block_ms
                key.changed = True
                return _blocked(key, now)
            return standing
        _record(log, now, key.call.longest_window, key.call.cost, key.call.precision or 1)
        log.blocked_until = 0  # allowed: not blocked, so any block has ended
        key.changed = True
        allowed = _limits(key, now)
        return Decision(True, allowed.remaining, 0, allowed.reset_after_ms, "fallback")

    def _register(self, key: _Key, answer: Decision) -> Decision:
        """A denied call's longest window, kept by a log that holds entries
        (a key with none has no log to keep it)."""
        log = key.log
        if log.entries and key.call.longest_window > log.window_ms:
            log.window_ms = key.call.longest_window
            key.changed = True
        return answer

    def _store(self, key: _Key) -> None:
        """Keeps a key the call changed, with the expiry its write sets; a key
        that holds nothing is not kept."""
        if not key.changed:
            return
        if key.log.exists():
            self._keys[key.name] = key.log
            key.log.expires = key.log.own_expiry()
            self._expire_at(key.name, key.log.expires)
        else:
            self._keys.pop(key.name, None)

    # -- expiry and the cap ---------------------------------------------------

    def _expire_at(self, name: str, expires: int) -> None:
        """Notes the key's expiry (already set on what it holds)."""
        heapq.heappush(self._expiries, (expires, name))
        # Entries of keys since rewritten or gone pile up: rebuilt from the
        # keys held when they outnumber them.
        if len(self._expiries) > 2 * len(self._keys) + 64:
            self._expiries = [(held.expires, key) for key, held in self._keys.items()]
            heapq.heapify(self._expiries)

    def _tick(self) -> int:
        """The clock for one call; now and then, the keys it finds expired are
        swept, so idle keys do not pile up."""
        clock = self._clock()
        self._calls += 1
        if self._calls % _SWEEP_EVERY == 0:
            self._expire(clock)
        return clock

    def _live(self, name: str, clock: int) -> _Log | _Bucket | None:
        """What the key holds if it exists at ``clock``: one past its expiry
        is dropped when a call names it, as a server expires a key on access
        (the model's rule: if the clock steps back before that, it is there
        again; the fallback's monotonic clock never does)."""
        held = self._keys.get(name)
        if held is not None and clock > held.expires:
            del self._keys[name]
            return None
        return held

    def _log(self, name: str, clock: int) -> _Log | None:
        """The key's log, for a sliding-window operation: WRONGTYPE if the
        key holds a token bucket."""
        held = self._live(name, clock)
        if isinstance(held, _Bucket):
            raise RateLimitReplyError(WRONGTYPE)
        return held

    def _expire(self, clock: int) -> None:
        """Drops every key whose expiry the clock has passed."""
        while self._expiries and self._expiries[0][0] < clock:
            _, name = heapq.heappop(self._expiries)
            held = self._keys.get(name)
            if held is not None and held.expires < clock:
                del self._keys[name]

    def _forget_beyond_the_cap(self) -> None:
        # After the call's writes, so a call over several keys never loses
        # one of its own keys midway.
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)


def _level_at(bucket: _Bucket, now: int, count: int, period: int) -> int:
    """The units ``bucket`` holds at ``now`` under a limit of ``count``
    tokens per ``period`` ms: what it held after its last charge, even
    above a full bucket (a settled debt persists; a smaller burst leaves
    it over full), less what drained since. Under the same period, the
    same units; under another, its tokens (a partly drained one counted
    whole), at most the ``MAX_EXACT // period`` whole tokens a bucket of
    this period holds exactly, in units of this period."""
    if bucket.period == period:
        held = bucket.level
    else:
        tokens = -(-bucket.level // bucket.period)
        held = min(tokens, MAX_EXACT // period) * period
    return max(0, held - (now - bucket.at) * count)


def _settled(level: int, burst: int, count: int, period: int) -> GcraAnswer:
    """A settlement's answer: the bucket holding ``level`` units after it
    (core/src/gcra.rs ``Settlement::of``): the whole tokens held past full
    (rounded up), the whole tokens of room, the wait until one token fits
    (None: one fits now), the wait until empty."""
    capacity = burst * period
    token = level + period
    retry = token - capacity if token > capacity else None
    over = -(-max(0, level - capacity) // period)
    return GcraAnswer(False, burst, max(0, capacity - level) // period, retry, level, count, over)


def _limits(key: _Key, now: int) -> Decision:
    """What the key's limits alone say at ``now``."""
    entries, call = key.log.entries, key.call
    used = [_used(entries, now, limit.window_ms) for limit in call.limits]
    allowed = all(u + call.cost <= m for u, m in zip(used, key.maxes, strict=True))
    remaining = max(0, min(m - u for u, m in zip(used, key.maxes, strict=True)))
    wait = 0 if allowed else _retry_after(entries, now, call, key.maxes)
    return Decision(allowed, remaining, wait, _reset(entries, now, call.longest_window), "fallback")


def _blocked(key: _Key, now: int) -> Decision:
    """A blocked key's answer: denied, nothing remaining, waits at least
    until the block ends."""
    limits = _limits(key, now)
    rest = key.log.blocked_until - now
    return Decision(False, 0, max(rest, limits.retry_after_ms), max(rest, limits.reset_after_ms), "fallback")


def _overflows(log: _Log, clock: int, call: Call) -> bool:
    """CHARGE's refusal: the cost the log would keep after it (every entry
    inside the longer of its window and the call's longest, and the
    charge) above 2^63 - 1."""
    now = log.now(clock)
    window = max(log.window_ms, call.longest_window)
    kept = sum(entry.cost for entry in log.entries if entry.at > now - window)
    return kept + call.cost > MAX_MAX


def _used(entries: deque[_Entry], now: int, window_ms: int) -> int:
    total = 0
    for entry in reversed(entries):
        if entry.at <= now - window_ms:
            break
        total += entry.cost
    return total


def _record(log: _Log, now: int, window_ms: int, cost: int, precision: int) -> None:
    """As the module's log: the window grows, what expired under it goes, and
    the units join the newest entry when it lies in the same precision cell
    (moving it to now, so they count at most p - 1 ms longer, never
    shorter) and the sum fits in 2^63 - 1, else become a new entry."""
    log.window_ms = max(log.window_ms, window_ms)
    while log.entries and log.entries[0].at <= now - log.window_ms:
        log.entries.popleft()
    newest = log.entries[-1] if log.entries else None
    if newest is not None and newest.at // precision == now // precision and newest.cost + cost <= MAX_MAX:
        newest.at = now
        newest.cost += cost
    else:
        log.entries.append(_Entry(now, cost))


def _refund(log: _Log, units: int) -> int:
    """The module's refund: units leave from the newest entries."""
    removed = 0
    while log.entries and removed < units:
        newest = log.entries[-1]
        take = min(newest.cost, units - removed)
        newest.cost -= take
        removed += take
        if newest.cost == 0:
            log.entries.pop()
    # What is left of the newest entry shares a millisecond with the one
    # before only while their costs could not share an entry.
    if len(log.entries) >= 2:
        previous, newest = log.entries[-2], log.entries[-1]
        if previous.at == newest.at and previous.cost + newest.cost <= MAX_MAX:
            log.entries.pop()
            previous.cost += newest.cost
    if not log.entries:
        log.window_ms = 0  # an emptied log keeps no window
    return removed


def _retry_after(entries: deque[_Entry], now: int, call: Call, maxes: list[int]) -> int:
    """The exact wait after which this request passes every limit: for each
    limit, the moment enough of its oldest entries have left its window."""
    if call.cost > min(maxes):
        # This process's share can never hold the request: the longest wait
        # a limit names.
        return call.longest_window
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


def _reset(entries: deque[_Entry], now: int, longest_window: int) -> int:
    """The wait until the call's longest window holds nothing of this key."""
    if not entries:
        return 0
    return max(0, entries[-1].at + longest_window - now)
