"""The contract's corpus, run against this package's own engine.

``contract/corpus.jsonl`` is written from the reference model (the
repository's ``core/src/reference.rs`` and ``core/src/contract.rs``, ``make corpus``;
its format is ``contract/README.md``). Every engine replays it in its own
test runner; here the engine is the package's in-process fallback
(``Fallback``, share 1) and its argument validators (``Limit``,
``GcraLimit``, ``make_call``, ``make_multi_call``, ``make_gcra_call``,
``validate_key``, ``validate_keys``, ``validate_undo_cost``): what decides,
and what refuses bad input before Redis, when Redis does not answer. One
test per case, named by the case.

Python's integers are exact and its bounds are the module's (``max`` and
``COST`` up to 2^63 - 1), so the package follows the module's answers
(``reply``/``error`` and ``state``); the ``twin_*`` fields (Lua's doubles)
are ignored.

Each case runs on a fresh ``Fallback`` whose injected clock reads the
case's ``epoch`` plus the step's ``at`` (which may step back). Each step's
words are translated into the calls an application makes:

- CHECK and PEEK: ``make_call([Limit(window, max), ...], cost, precision,
  block_ms)`` and ``validate_key``, then ``Fallback.check`` or ``peek``;
- MCHECK and MPEEK: ``make_multi_call({key: [Limit, ...], ...}, cost,
  precision, block_ms)``, then ``Fallback.decide(keys, calls, record)``;
- UNDO: ``validate_key`` and ``validate_undo_cost``, then
  ``Fallback.undo``; MUNDO: ``validate_keys`` and ``validate_undo_cost``,
  then ``Fallback.undo`` on each key (as the clients do without Redis);
- UNBLOCK: ``validate_key``, then ``Fallback.unblock``;
- CHARGE: ``make_charge_call([Limit(window, max), ...], cost,
  precision)`` and ``validate_key``, then ``Fallback.charge``; MCHARGE:
  ``make_multi_charge_call({key: [Limit, ...], ...}, cost, precision)``,
  then ``Fallback.charge_all`` (a settlement has no block: ``BLOCK`` is an
  unknown option to both, as to the module);
- GCRA: ``make_gcra_call(GcraLimit(max_burst, count, period_ms), tokens)``
  (with ``CHARGE`` or ``REFUND``, ``settle="charge"`` or ``"refund"``)
  and ``validate_key``, then ``Fallback.gcra_answer``, whose ``reply(ms)``
  gives the module's five integers in the step's units (``MS``: ms rounded
  up; else redis-cell's seconds), the function the public API's
  ``GcraDecision`` (and a settlement's ``Settlement``, ``gcra_settle``) is
  made from; a charge past 9000000000000000 units raises the module's
  error. The period word becomes ``period_ms`` when
  it is written as the module reads seconds (digits, an optional fraction
  whose digits past the milliseconds are zeros); ``TOKENS n`` and ``MS``
  in any case.

Words the API's types cannot express are the server's parsing, not the
package's: a number not written as Redis writes an integer (a sign ``+``,
a leading zero, an exponent, a NUL, letters, an empty word), the server's
arity check, a window without its max, a key's pairs or keys cut short,
an unknown option name, an option without its value or given twice,
GCRA's ``CHARGE`` and ``REFUND`` together (``settle`` is one), a key
given twice to MCHECK/MPEEK (a mapping holds each key once), a period
not written as the module reads seconds (a sign ``+``, a leading zero or
dot, an exponent, a fraction finer than a millisecond). A negative
integer is expressible (``Limit(-1, 5)``, ``GcraLimit(-1, 1, 1000)``), so
its step is checked. For a
step that is not expressible the test asserts that the corpus answers an
error, and counts it (the counts are printed at the end of the run).

For every other step:

- the validators raise ``RateLimitInputError`` iff the corpus answers an
  ``ERR`` error (the texts are not compared: the package words its own
  messages, naming its own parameters);
- a call on a key of the other type (a token bucket named by a
  sliding-window operation, or the reverse) raises ``RateLimitReplyError``
  from the fallback with the corpus's text exactly (the server's
  ``WRONGTYPE``), changing no key; so does a charge that would make a key
  hold more than 2^63 - 1 (the module's text, naming the key for
  MCHARGE);
- otherwise the fallback's answer equals the corpus's reply exactly: all
  four fields of CHECK/PEEK/MCHECK/MPEEK and of CHARGE/MCHARGE (waits and
  resets included; MCHARGE's keys over, 1-based in the corpus, 0-based in
  ``Settlement.over_positions``), the
  positions of the keys that denied (1-based in the corpus, 0-based in
  ``Answer.denied``), the units UNDO and MUNDO removed, UNBLOCK's 1 or 0,
  all five fields of GCRA.

After every step (errors and steps not expressible included), for each key
the step names, what the fallback holds (``Fallback._held``, read on its
clock) equals the corpus's ``state``: every entry (time and cost, oldest
first, including those no window counts any more but the log keeps until
its next record, as the module's does), ``window``, ``blocked_until`` and
``expires``, or for a token bucket ``bucket`` (the last charge's time, its
period and the units held) and ``expires``; and a key the corpus says is ``null`` is one the fallback does
not hold, or holds past its expiry (forgotten by its next call).

What the fallback cannot show: the model drops every key whose expiry
its clock has passed at every command, one it refuses included; a call
the validators (or the server's parsing) refuse never reaches the
fallback, so that clock reading expires nothing there. Only a clock that
then steps back below such a key's expiry, before any call reaches the
fallback, could tell them apart (no case does; in use, the fallback's
clock is monotonic). The state of a key the fallback holds past its
expiry reads as absent, as the module's does.

What the corpus does not reach, and other tests do (test_core.py): a
``share`` below 1, the ``max_keys`` cap, ``per_key_remaining``, and
``unblock(key, reset=True)``, a bucket scaled to a share. A full log
(``ratelimit.max-entries``) and a key of a type neither limit writes need
a server's keyspace; the corpus has neither.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from redis_exact_ratelimit import (
    Decision,
    Fallback,
    GcraLimit,
    Limit,
    RateLimitInputError,
    RateLimitReplyError,
    Settlement,
)
from redis_exact_ratelimit._core import (
    GcraSettle,
    make_call,
    make_charge_call,
    make_gcra_call,
    make_multi_call,
    make_multi_charge_call,
    validate_key,
    validate_keys,
    validate_undo_cost,
)
from redis_exact_ratelimit._fallback import _HeldBucket

CORPUS = Path(__file__).resolve().parent / "../../../contract/corpus.jsonl"


def load_cases() -> list[dict[str, Any]]:
    with CORPUS.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


CASES = load_cases()

# The server's arity check (the module's command table, core/src/args.rs):
# negative, at least that many words with the name; otherwise exactly.
ARITY = {
    "ratelimit.check": -4,
    "ratelimit.peek": -4,
    "ratelimit.undo": -2,
    "ratelimit.unblock": 2,
    "ratelimit.mcheck": -6,
    "ratelimit.mpeek": -6,
    "ratelimit.mundo": -3,
    "ratelimit.gcra": -5,
    "ratelimit.charge": -4,
    "ratelimit.mcharge": -6,
}
LIMIT_OPTIONS = ("COST", "PRECISION", "BLOCK")
# A settlement has no block: BLOCK is an unknown option to CHARGE and MCHARGE.
CHARGE_OPTIONS = ("COST", "PRECISION")
# An integer as Redis writes one: an optional '-', no '+', no leading zero,
# ASCII digits only (Python's int() would also take ' 7', '1_0' and '٣').
INTEGER = re.compile(r"-?(?:0|[1-9][0-9]*)")
# Seconds as the module reads a period (core/src/args/gcra.rs): an integer,
# then optionally a dot and digits (a '-' kept expressible, as for integers).
PERIOD = re.compile(r"(-?)(0|[1-9][0-9]*)(?:\.([0-9]+))?")


class NotExpressible(Exception):
    """The words say something the package's API cannot: the server's
    parsing refuses them (``reason`` says which rule)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


Run = Callable[[Fallback], object]
"""A translated step: validates as the package does (raising
``RateLimitInputError``), asks the fallback, and returns its answer in the
corpus's reply shape."""


def integer(word: str) -> int:
    if not INTEGER.fullmatch(word) or word == "-0":
        raise NotExpressible("a number not written as Redis writes an integer")
    return int(word)


def starts_like_a_number(word: str) -> bool:
    """The module's test for "another window follows" (not an option name)."""
    return word[:1] in set("0123456789-")


def options(words: list[str], names: tuple[str, ...]) -> dict[str, int]:
    """Named options, any case, each once, each with an integer value."""
    given: dict[str, int] = {}
    at = 0
    while at < len(words):
        name = words[at].upper()
        if name not in names:
            raise NotExpressible("an unknown option")
        if name in given:
            raise NotExpressible("an option given twice")
        if at + 1 >= len(words):
            raise NotExpressible("an option without its value")
        given[name] = integer(words[at + 1])
        at += 2
    return given


@dataclass(frozen=True)
class Request:
    """A CHECK's or PEEK's numbers, as the API takes them (unvalidated)."""

    pairs: list[tuple[int, int]]
    cost: int
    precision: int | None
    block_ms: int | None

    def limits(self) -> list[Limit]:
        return [Limit(window, most) for window, most in self.pairs]


def request(pairs: list[tuple[int, int]], rest: list[str], names: tuple[str, ...] = LIMIT_OPTIONS) -> Request:
    given = options(rest, names)
    return Request(pairs, given.get("COST", 1), given.get("PRECISION"), given.get("BLOCK"))


def decision_reply(decision: Decision) -> list[int]:
    assert decision.source == "fallback"
    return [int(decision.allowed), decision.remaining, decision.retry_after_ms, decision.reset_after_ms]


def settlement_reply(settlement: Settlement, multi: bool) -> list[Any]:
    assert settlement.source == "fallback"
    reply: list[Any] = [
        settlement.over,
        settlement.remaining,
        settlement.retry_after_ms,
        settlement.reset_after_ms,
    ]
    if multi:
        reply.append([position + 1 for position in settlement.over_positions])
    return reply


def pairs_and_rest(words: list[str]) -> tuple[list[tuple[int, int]], list[str]]:
    """key window max [window max ...] [options]: the first pair, then more
    while the next word starts like a number (as the module reads them)."""
    rest = words[2:]
    pairs: list[tuple[int, int]] = []
    at = 0
    while at < len(rest) and (at == 0 or starts_like_a_number(rest[at])):
        if at + 1 >= len(rest):
            raise NotExpressible("a window without its max")
        pairs.append((integer(rest[at]), integer(rest[at + 1])))
        at += 2
    return pairs, rest[at:]


def charge_call(words: list[str]) -> Run:
    """CHARGE key window max [window max ...] [COST n] [PRECISION p]."""
    key = words[1]
    pairs, rest = pairs_and_rest(words)
    numbers = request(pairs, rest, CHARGE_OPTIONS)

    def run(fallback: Fallback) -> object:
        call = make_charge_call(numbers.limits(), numbers.cost, numbers.precision)
        validate_key(key)
        return settlement_reply(fallback.charge(key, call), multi=False)

    return run


def limit_call(words: list[str], record: bool) -> Run:
    """CHECK|PEEK key window max [window max ...] [options]."""
    key = words[1]
    pairs, rest = pairs_and_rest(words)
    numbers = request(pairs, rest)

    def run(fallback: Fallback) -> object:
        call = make_call(numbers.limits(), numbers.cost, numbers.precision, numbers.block_ms)
        validate_key(key)
        return decision_reply(fallback.check(key, call) if record else fallback.peek(key, call))

    return run


def keys_of(words: list[str]) -> tuple[list[str], list[str]]:
    """numkeys key [key ...], and the words after the keys."""
    count = integer(words[1])
    if count < 0:
        raise NotExpressible("a negative count of keys")
    if len(words) < 2 + count:
        raise NotExpressible("fewer keys than numkeys")
    return words[2 : 2 + count], words[2 + count :]


def multi_call(words: list[str], record: bool, charge: bool = False) -> Run:
    """MCHECK|MPEEK|MCHARGE numkeys key [key ...] npairs window max [...] [...] [options]."""
    keys, rest = keys_of(words)
    if len(set(keys)) != len(keys):
        raise NotExpressible("a key given twice (a mapping holds each key once)")
    pairs: dict[str, list[tuple[int, int]]] = {}
    for key in keys:
        if not rest:
            raise NotExpressible("a key without its pairs")
        count = integer(rest[0])
        if count < 0 or len(rest) < 1 + 2 * count:
            raise NotExpressible("fewer pairs than npairs")
        numbers = rest[1 : 1 + 2 * count]
        pairs[key] = [(integer(numbers[i]), integer(numbers[i + 1])) for i in range(0, len(numbers), 2)]
        rest = rest[1 + 2 * count :]
    shared = request([], rest, CHARGE_OPTIONS if charge else LIMIT_OPTIONS)

    def run(fallback: Fallback) -> object:
        keyed = {key: [Limit(window, most) for window, most in limits] for key, limits in pairs.items()}
        if charge:
            charges = make_multi_charge_call(keyed, shared.cost, shared.precision)
            return settlement_reply(fallback.charge_all(charges.keys, charges.calls), multi=True)
        multi = make_multi_call(keyed, shared.cost, shared.precision, shared.block_ms)
        answer = fallback.decide(multi.keys, multi.calls, record)
        return [*decision_reply(answer.decision), [position + 1 for position in answer.denied]]

    return run


def undo(words: list[str]) -> Run:
    key = words[1]
    cost = options(words[2:], ("COST",)).get("COST", 1)

    def run(fallback: Fallback) -> object:
        validate_key(key)
        return fallback.undo(key, validate_undo_cost(cost))

    return run


def multi_undo(words: list[str]) -> Run:
    keys, rest = keys_of(words)
    cost = options(rest, ("COST",)).get("COST", 1)

    def run(fallback: Fallback) -> object:
        given = validate_keys(keys)
        validate_undo_cost(cost)
        return fallback.undo_all(given, cost)

    return run


def period_ms(word: str) -> int:
    """The period word in whole milliseconds, or NotExpressible."""
    match = PERIOD.fullmatch(word)
    if match is None:
        raise NotExpressible("a period not written as the module reads seconds")
    sign, whole, fraction = match.group(1), match.group(2), match.group(3) or ""
    if fraction[3:].strip("0"):
        raise NotExpressible("a period finer than a millisecond")
    ms = int(whole) * 1000 + int((fraction + "000")[:3])
    return -ms if sign else ms


def gcra(words: list[str]) -> Run:
    """GCRA key max_burst count period [TOKENS n] [MS] [CHARGE] [REFUND]:
    the options in any case, each once. A request is
    ``Fallback.gcra_answer`` of ``make_gcra_call(limit, tokens)``; CHARGE
    and REFUND are ``make_gcra_call(limit, tokens, settle="charge")`` (or
    ``"refund"``), the call ``Fallback.gcra_settle`` answers, read here in
    the step's units."""
    key, rest = words[1], words[5:]
    tokens, ms, seen = 1, False, set()
    at = 0
    while at < len(rest):
        name = rest[at].upper()
        if name not in ("TOKENS", "MS", "CHARGE", "REFUND"):
            raise NotExpressible("an unknown option")
        if name in seen:
            raise NotExpressible("an option given twice")
        seen.add(name)
        if name != "TOKENS":
            ms, at = ms or name == "MS", at + 1
            continue
        if at + 1 >= len(rest):
            raise NotExpressible("an option without its value")
        tokens, at = integer(rest[at + 1]), at + 2
    if {"CHARGE", "REFUND"} <= seen:
        raise NotExpressible("CHARGE and REFUND together (settle takes one)")
    settle: GcraSettle | None = "charge" if "CHARGE" in seen else "refund" if "REFUND" in seen else None
    max_burst, count, period = integer(words[2]), integer(words[3]), period_ms(words[4])

    def run(fallback: Fallback) -> object:
        call = make_gcra_call(GcraLimit(max_burst, count, period), tokens, settle)
        validate_key(key)
        return fallback.gcra_answer(key, call).reply(ms)

    return run


def unblock(words: list[str]) -> Run:
    key = words[1]

    def run(fallback: Fallback) -> object:
        return int(fallback.unblock(validate_key(key)))

    return run


def translate(words: list[str]) -> Run:
    """The step's words as the package's calls, or NotExpressible."""
    command = words[0].lower()
    arity = ARITY[command]
    if (len(words) < -arity) if arity < 0 else (len(words) != arity):
        raise NotExpressible("the server's arity check")
    if command in ("ratelimit.check", "ratelimit.peek"):
        return limit_call(words, command == "ratelimit.check")
    if command in ("ratelimit.mcheck", "ratelimit.mpeek"):
        return multi_call(words, command == "ratelimit.mcheck")
    if command == "ratelimit.undo":
        return undo(words)
    if command == "ratelimit.mundo":
        return multi_undo(words)
    if command == "ratelimit.gcra":
        return gcra(words)
    if command == "ratelimit.charge":
        return charge_call(words)
    if command == "ratelimit.mcharge":
        return multi_call(words, record=True, charge=True)
    return unblock(words)


def relative(at: int, epoch: int) -> int:
    return at - epoch if at else 0


def held_state(fallback: Fallback, key: str, epoch: int) -> dict[str, Any] | None:
    """What the fallback holds for ``key``, in the corpus's state shape."""
    held = fallback._held(key)
    if held is None:
        return None
    if isinstance(held, _HeldBucket):
        return {"bucket": [held.at - epoch, held.period, held.level], "expires": held.expires - epoch}
    return {
        "blocked_until": relative(held.blocked_until, epoch),
        "entries": [[at - epoch, cost] for at, cost in held.entries],
        "expires": held.expires - epoch,
        "window": held.window,
    }


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_corpus_case(case: dict[str, Any], corpus_tally: Counter[str]) -> None:
    epoch: int = case["epoch"]
    clock = Clock(epoch)
    fallback = Fallback(clock=clock)
    name = case["name"]
    corpus_tally["cases"] += 1
    for index, step in enumerate(case["steps"]):
        where = f"{name} step {index}: {step['call']!r}"
        clock.now = epoch + step["at"]
        # Counted over every step, and apart over the GCRA and the CHARGE/MCHARGE steps.
        command = step["call"][0].lower()
        kinds: tuple[str, ...] = ("",)
        if command == "ratelimit.gcra":
            kinds = ("", "gcra ")
        elif command in ("ratelimit.charge", "ratelimit.mcharge"):
            kinds = ("", "charge ")

        def count(what: str, kinds: tuple[str, ...] = kinds) -> None:
            for kind in kinds:
                corpus_tally[kind + what] += 1

        count("steps")
        try:
            run = translate(step["call"])
        except NotExpressible as refused:
            assert "error" in step, f"{where}: not expressible ({refused.reason}), but the corpus replies {step}"
            count("not expressible")
            count(f"not expressible: {refused.reason}")
        else:
            try:
                got = run(fallback)
            except RateLimitInputError as error:
                assert step.get("error", "").startswith("ERR "), (
                    f"{where}: the validators refused it ({error}), the corpus replies {step}"
                )
                count("refused by the validators")
            except RateLimitReplyError as error:
                assert str(error) == step.get("error"), f"{where}: the fallback raised {error!r}, the corpus {step}"
                count("raised as the server error")
            else:
                assert "error" not in step, f"{where}: the corpus says {step['error']!r}, the package answered {got}"
                assert got == step["reply"], f"{where}: the fallback answered {got}, the corpus {step['reply']}"
                count("answered")
        for key, expected in step["state"].items():
            assert held_state(fallback, key, epoch) == expected, f"{where}: key {key!r}"
