"""The pure parts: validation, arguments, replies, headers, and what the
contract's corpus does not reach of the fallback (its share, its cap on
keys, per-key remaining, a reset), for the sliding window and the token
bucket. The fallback's and the validators'
answers are held to the corpus by test_corpus.py."""

from __future__ import annotations

import pytest
import redis
from redis import exceptions as rx
from redis.exceptions import ResponseError

from redis_exact_ratelimit import (
    CallTimeout,
    Decision,
    Fallback,
    GcraDecision,
    GcraLimit,
    Limit,
    MultiDecision,
    RateLimiter,
    RateLimitInputError,
    RateLimitReplyError,
)
from redis_exact_ratelimit._core import (
    Op,
    Script,
    UnexpectedReply,
    gcra_decision,
    make_call,
    make_gcra_call,
    make_multi_call,
    module_command,
    parse_count,
    parse_counts,
    parse_decision,
    parse_gcra_reply,
    parse_multi_decision,
    parse_unblocked,
    twin_arguments,
    validate_keys,
)
from redis_exact_ratelimit._http import (
    Route,
    gcra_headers,
    named_policies,
    rate_limit_headers,
    refunding,
    settle,
)
from redis_exact_ratelimit._metrics import NoMetrics
from redis_exact_ratelimit._policy import Policy
from redis_exact_ratelimit._transport import Command, cause_of, drive, is_call_error, plan, server_text
from redis_exact_ratelimit.wsgi import RateLimitMiddleware


def test_arguments_are_the_modules() -> None:
    call = make_call([Limit(1000, 10), Limit(3_600_000, 1000)], cost=3, precision=100)
    assert call.args() == ["1000", "10", "3600000", "1000", "COST", "3", "PRECISION", "100"]
    assert make_call(Limit.per_minute(5)).args() == ["60000", "5"]


def test_block_and_several_keys_in_the_modules_arguments() -> None:
    assert make_call(Limit.per_minute(5), block_ms=3_600_000).args() == ["60000", "5", "BLOCK", "3600000"]
    multi = make_multi_call(
        {"a": Limit(1000, 10), "b": [Limit(1000, 5), Limit(60_000, 50)]}, cost=2, precision=10, block_ms=500
    )
    assert multi.keys == ("a", "b")
    pairs = ["1", "1000", "10", "2", "1000", "5", "60000", "50"]
    assert multi.args() == [*pairs, "COST", "2", "PRECISION", "10", "BLOCK", "500"]
    assert module_command(Op("mcheck", ("a", "b"), ("x",))) == ["RATELIMIT.MCHECK", "2", "a", "b", "x"]
    assert module_command(Op("check", ("a",), ("x",))) == ["RATELIMIT.CHECK", "a", "x"]
    assert module_command(Op("unblock", ("a",))) == ["RATELIMIT.UNBLOCK", "a"]
    assert twin_arguments(Op("mundo", ("a", "b"), ("COST", "2"))) == ["2", "a", "b", "mundo", "COST", "2"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: make_call(Limit(1000, 5), block_ms=0), "block_ms must be an integer from 1 to 31536000000, got 0"),
        (lambda: make_call(Limit(1000, 5), block_ms=31_536_000_001), "block_ms must be an integer from 1 to"),
        (lambda: make_multi_call({}), "give 1 to 16 keys, got 0"),
        (lambda: make_multi_call({str(i): Limit(1000, 1) for i in range(17)}), "give 1 to 16 keys, got 17"),
        (lambda: make_multi_call({"a": Limit(1000, 5), "b": Limit(1000, 2)}, cost=3), "key 'b': cost must be"),
        (lambda: make_multi_call({"a": [Limit(10, 5)]}, precision=11), "key 'a': precision must be an integer from 1"),
        (lambda: make_multi_call({"a": []}), "key 'a': give 1 to 8 limits, got 0"),
        (lambda: make_multi_call({b"k": Limit(1000, 5)}), "key must be a string, got b'k'"),  # type: ignore[dict-item]
        (lambda: make_multi_call([("a", Limit(1000, 5))]), "give the keys as a mapping of key to limits"),  # type: ignore[arg-type]
        (lambda: validate_keys(["a", "b", "a"]), "key 'a' is given more than once"),
        (lambda: validate_keys("ab"), "give several keys"),
    ],
)
def test_bad_block_or_keys_are_refused_before_redis(make: object, message: str) -> None:
    with pytest.raises(RateLimitInputError, match=message.replace("(", r"\(")):
        make()  # type: ignore[operator]


def test_multi_key_replies() -> None:
    keys = ("u", "ip", "t")
    denied = parse_multi_decision([0, 0, 1500, 60000, [2, 3]], keys)
    assert (denied.allowed, denied.retry_after_ms, denied.denied_positions) == (False, 1500, (1, 2))
    assert denied.denied_keys == ("ip", "t") and denied.keys == keys
    allowed = parse_multi_decision([b"1", b"4", b"0", b"60000", []], keys)
    assert allowed == MultiDecision(True, 4, 0, 60000, "redis", keys=keys)
    # Inconsistent or foreign replies are never read as allowed.
    for reply in ([1, 0, 0, 0, [1]], [0, 0, 1, 1, []], [0, 0, 1, 1, [4]], [0, 0, 1, 1, [0]], [1, 0, 0, 0], None):
        with pytest.raises(UnexpectedReply):
            parse_multi_decision(reply, keys)
    assert parse_counts([1, b"0", 2], keys) == {"u": 1, "ip": 0, "t": 2}
    for counts in ([1, 0], [1, 0, -1], 3):
        with pytest.raises(UnexpectedReply):
            parse_counts(counts, keys)
    assert (parse_unblocked(1), parse_unblocked(b"0")) == (True, False)
    with pytest.raises(UnexpectedReply):
        parse_unblocked(2)


def test_ietf_headers_for_several_keys_name_the_policy_that_binds() -> None:
    limits = [[Limit.per_minute(100, name="user")], [Limit.per_minute(300)], [Limit(1000, 10), Limit(60_000, 50)]]
    named = named_policies(limits, "api")
    denied = MultiDecision(False, 0, 1500, 60000, "redis", keys=("a", "b", "c"), denied_positions=(1, 2))
    headers = rate_limit_headers(named, denied)
    policies = '"user";q=100;w=60, "api-2";q=300;w=60, "api-3-1s";q=10;w=1, "api-3-60s";q=50;w=60'
    assert headers == {"RateLimit-Policy": policies, "RateLimit": '"api-2";r=0;t=2', "Retry-After": "2"}
    # Allowed: the key with the least remaining binds (ties: the first).
    allowed = MultiDecision(True, 0, 0, 60000, "redis", keys=("a", "b", "c"), per_key_remaining=(2, 0, 0))
    assert rate_limit_headers(named, allowed)["RateLimit"] == '"api-2";r=0;t=60'
    unknown = MultiDecision(True, 7, 0, 60000, "redis", keys=("a", "b", "c"))
    assert rate_limit_headers(named, unknown)["RateLimit"] == '"user";r=7;t=60'


def test_a_route_takes_limits_or_keys() -> None:
    limiter = RateLimiter(redis.Redis(port=1))  # never called

    def several(environ: object) -> dict[str, Limit]:
        return {"a": Limit.per_minute(1)}

    with pytest.raises(ValueError, match="give limits"):
        RateLimitMiddleware(lambda environ, start: [], limiter=limiter)
    with pytest.raises(ValueError, match="keys= gives every key its own limits"):
        RateLimitMiddleware(lambda environ, start: [], limiter=limiter, limits=Limit.per_minute(1), keys=several)
    with pytest.raises(ValueError, match="keys= gives every key its own limits"):
        RateLimitMiddleware(lambda environ, start: [], limiter=limiter, key=lambda environ: "k", keys=several)
    with pytest.raises(RateLimitInputError, match="block_ms must be an integer"):
        RateLimitMiddleware(lambda environ, start: [], limiter=limiter, keys=several, block_ms=0)


def test_an_older_module_is_not_taken_for_a_missing_one() -> None:
    """MCHECK unknown but PEEK known: an older module. The call is refused
    and the server is not switched to the twin, whose keys the module's
    could not read."""
    policy = Policy("closed", None, 1.0)
    sent: list[str] = []

    def older(command: Command) -> object:
        assert isinstance(command, list)
        sent.append(command[0])
        if command[0] == "RATELIMIT.MCHECK":
            raise ResponseError("unknown command 'RATELIMIT.MCHECK', with args beginning with: '1'")
        return [1, 1, 0, 0]

    mcheck = [Op("mcheck", ("a",), ("1", "1000", "1"))]
    with pytest.raises(ResponseError, match="RATELIMIT module is older than this call needs"):
        drive(plan(policy, Script.load(), "s", mcheck), older)
    assert sent == ["RATELIMIT.MCHECK", "RATELIMIT.PEEK"] and policy.backend() == "module"
    policy = Policy("closed", None, 1.0)

    def without_module(command: Command) -> object:
        assert isinstance(command, list)
        if command[0].startswith("RATELIMIT."):
            raise ResponseError(f"unknown command '{command[0]}'")
        return "from the twin"

    assert drive(plan(policy, Script.load(), "s", mcheck), without_module) == ["from the twin"]
    assert policy.backend_of("s") == "twin"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Limit(0, 5), "window_ms must be an integer from 1 to 31536000000, got 0"),
        (lambda: Limit(1000, 0), "max must be an integer from 1 to 9223372036854775807, got 0"),
        (lambda: Limit(1000, True), "max must be an integer"),
        (lambda: make_call([]), "give 1 to 8 limits, got 0"),
        (lambda: make_call([Limit(i + 1, 1) for i in range(9)]), "give 1 to 8 limits, got 9"),
        (lambda: make_call([Limit(1000, 1), Limit(1000, 2)]), "window 1000 is given twice"),
        (lambda: make_call(Limit(1000, 5), cost=6), "cost must be an integer from 1 to 5, got 6"),
        (lambda: make_call(Limit(1000, 5), precision=1001), "precision must be an integer from 1 to 1000"),
    ],
)
def test_bad_input_is_refused_before_redis(make: object, message: str) -> None:
    with pytest.raises(RateLimitInputError, match=message.replace("(", r"\(")):
        make()  # type: ignore[operator]


def test_replies_in_resp2_and_resp3_shapes() -> None:
    assert parse_decision([1, 4, 0, 60000]) == Decision(True, 4, 0, 60000, "redis")
    assert parse_decision([b"0", b"0", b"15", b"60000"]).retry_after_ms == 15
    assert parse_count(b"3") == 3
    # A reply read as something else must never count as allowed.
    for reply in ({"allowed": 1}, [1, 2, 3], ["allowed", 1, 0, 0], [2, 0, 0, 0], None, b"OK"):
        with pytest.raises(UnexpectedReply):
            parse_decision(reply)


def test_the_script_is_the_file_without_its_first_line() -> None:
    script = Script.load()
    assert not script.text.startswith("#!lua")
    assert "register_function" in script.text and len(script.sha1) == 40


def test_ietf_headers_for_one_limit() -> None:
    named = named_policies([[Limit.per_minute(10)]], "default")
    allowed = Decision(True, 9, 0, 60000, "redis")
    assert rate_limit_headers(named, allowed) == {
        "RateLimit-Policy": '"default";q=10;w=60',
        "RateLimit": '"default";r=9;t=60',
    }
    headers = rate_limit_headers(named, Decision(False, 0, 1500, 59000, "redis"))
    assert headers["RateLimit"] == '"default";r=0;t=2' and headers["Retry-After"] == "2"


def test_ietf_headers_for_several_limits() -> None:
    named = named_policies([[Limit(1000, 10), Limit(3_600_000, 1000, name="hourly")]], "api")
    headers = rate_limit_headers(named, Decision(True, 9, 0, 3_600_000, "redis"))
    assert headers["RateLimit-Policy"] == '"api-1s";q=10;w=1, "hourly";q=1000;w=3600'
    assert headers["RateLimit"] == '"api-1s";r=9;t=3600'


def test_verdicts_of_the_failure_policy() -> None:
    route, one = Route(Limit(1000, 1)), {"k": [Limit(1000, 1)]}
    closed = route.verdict(Decision(False, 0, 800, 0, "fail_closed"), one, 1, NoMetrics())
    assert (closed.passed, closed.status, closed.headers) == (False, 503, {"Retry-After": "1"})
    opened = route.verdict(Decision(True, 0, 0, 0, "fail_open"), one, 1, NoMetrics())
    assert opened.passed and opened.headers == {}


def test_shadow_verdicts_never_deny_and_send_no_fields() -> None:
    route, one = Route(Limit(1000, 1), shadow=True), {"k": [Limit(1000, 1)]}
    for decision in (Decision(False, 0, 800, 900, "redis"), Decision(False, 0, 800, 0, "fail_closed")):
        verdict = route.verdict(decision, one, 1, NoMetrics())
        assert (verdict.passed, verdict.headers, verdict.policy) == (True, {}, "default")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


def test_fallback_is_exact_within_its_share() -> None:
    clock = Clock()
    fallback = Fallback(share=0.5, clock=clock)
    call = make_call(Limit(1000, 10))
    answers = [fallback.check("k", call) for _ in range(8)]
    assert [a.allowed for a in answers] == [True] * 5 + [False] * 3
    assert [a.remaining for a in answers[:5]] == [4, 3, 2, 1, 0]
    assert answers[5].retry_after_ms == 1000 and answers[5].source == "fallback"
    clock.now += 999
    assert not fallback.check("k", call).allowed
    clock.now += 1
    assert fallback.check("k", call).allowed


def test_fallback_several_limits_cost_undo_and_peek() -> None:
    clock = Clock()
    fallback = Fallback(clock=clock)
    call = make_call([Limit(1000, 4), Limit(10_000, 6)], cost=2)
    assert fallback.check("k", call).allowed
    clock.now += 500
    assert fallback.check("k", call).remaining == 0
    denied = fallback.check("k", call)
    assert not denied.allowed and denied.retry_after_ms == 500
    clock.now += 600
    # The short window has room again, the long one (6) holds 4 + 2.
    assert fallback.check("k", call).allowed
    assert not fallback.check("k", call).allowed
    assert fallback.undo("k", 3) == 3
    peek = fallback.peek("k", make_call([Limit(1000, 4), Limit(10_000, 6)]))
    assert (peek.allowed, peek.remaining) == (True, 3)
    assert fallback.undo("k", 100) == 3 and len(fallback) == 0


def test_fallback_several_keys_all_or_nothing_and_blocks() -> None:
    clock = Clock()
    fallback = Fallback(clock=clock)
    calls = [make_call(Limit(1000, 2), block_ms=5000), make_call(Limit(1000, 5), block_ms=5000)]
    keys = ["user", "ip"]
    assert [fallback.decide(keys, calls, record=True).decision.allowed for _ in range(2)] == [True, True]
    answer = fallback.decide(keys, calls, record=True)
    denied, positions = answer.decision, answer.denied
    assert (denied.allowed, positions, denied.remaining, denied.retry_after_ms) == (False, (0,), 0, 5000)
    assert answer.per_key_remaining == (0, 3)
    # The denial charged neither key, and blocked only the key whose limit denied.
    assert fallback.peek("ip", calls[1]).remaining == 3
    assert fallback.check("ip", calls[1]).allowed
    clock.now += 2000
    # The limit alone would allow again; the block holds, counting down.
    held = fallback.check("user", calls[0])
    assert (held.allowed, held.retry_after_ms, held.reset_after_ms) == (False, 3000, 3000)
    assert fallback.decide(keys, calls, record=False).denied == (0,)
    assert fallback.unblock("user") and not fallback.unblock("user")
    assert fallback.check("user", calls[0]).allowed
    # A reset forgets the key: its block and what it counts. ("ip" is gone
    # too: its newest entry left its 1 s window, so it expired, as in Redis.)
    assert [fallback.check("user", calls[0]).allowed for _ in range(2)] == [True, False]
    assert fallback.unblock("user", reset=True) and len(fallback) == 0
    assert fallback.peek("user", calls[0]).remaining == 2


def test_fallback_share_and_cap_are_validated() -> None:
    with pytest.raises(ValueError, match="share"):
        Fallback(share=0)
    with pytest.raises(ValueError, match="max_keys must be an integer of at least 1"):
        Fallback(max_keys=0)


def test_fallback_keeps_precision_cells_as_the_module() -> None:
    """Limit(1000, 2) with precision 1000, calls at t = 10000, 10999, 11000:
    the second joins the first's cell and moves it to 10999, so at 11000
    both still count and the third is denied (the module, the twin and
    Node's fallback agree; without precision it is allowed)."""
    for precision, third in ((1000, False), (None, True)):
        clock = Clock()
        fallback = Fallback(clock=clock)
        call = make_call(Limit(1000, 2), precision=precision)
        answers = []
        for at in (10_000, 10_999, 11_000):
            clock.now = at
            answers.append(fallback.check("k", call).allowed)
        assert answers == [True, True, third], precision


def test_fallback_forgets_the_least_recently_used_key_past_its_cap() -> None:
    clock = Clock()
    fallback = Fallback(max_keys=3, clock=clock)
    call = make_call(Limit.per_minute(1))
    for key in ("a", "b", "c"):
        assert fallback.check(key, call).allowed
    assert not fallback.peek("a", call).allowed  # "a" is now the most recently used
    assert fallback.check("d", call).allowed
    assert len(fallback) == 3
    # "b" was dropped (its request forgotten): allowed again; "a" was kept.
    assert fallback.peek("b", call).allowed and not fallback.peek("a", call).allowed
    several = fallback.decide(["e", "f", "g", "h"], [call] * 4, record=True)
    assert several.decision.allowed and len(fallback) == 3


def test_causes_are_named_as_the_server_words_them() -> None:
    """The cause logged and counted: the server's own reply (its code put
    back where redis-py strips it, a script's wrapping taken off), the
    failed connection's errno name, or the timeout."""
    refused = rx.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")
    refused.__context__ = ConnectionRefusedError(111, "Connection refused")
    script = " script: d4a064b4de38ff5dd6141bd1edb5022b3e77faae, on @user_script:1123."
    busy = "BUSY Redis is busy running a script. You can only call SCRIPT KILL or FUNCTION KILL."
    oom = "OOM command not allowed when used memory > 'maxmemory'."
    no_time_70 = "ERR The user executing the script can't run this command or subcommand"
    no_time = "ERR ACL failure in script: User u has no permissions to run the 'time' command"
    cases: list[tuple[BaseException, str, str]] = [
        (CallTimeout(0.25), "timeout", "timeout: no answer within 250 ms"),
        (refused, "connection", "ECONNREFUSED"),
        (rx.NoPermissionError("User u has no permissions to run the 'evalsha' command"), "noperm", ""),
        (rx.ResponseError(oom + script), "oom", oom),
        (rx.ResponseError(busy), "busy", busy),
        (rx.ResponseError(no_time_70 + script), "noperm", no_time_70),
        (rx.ResponseError(no_time + script), "noperm", no_time),
        (rx.ReadOnlyError("You can't write against a read only replica."), "readonly", ""),
        (rx.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), "reply", ""),
        (ValueError("odd"), "other", "ValueError: odd"),
    ]
    for error, kind, text in cases:
        cause = cause_of(error)
        assert cause.kind == kind and is_call_error(error) == (kind == "reply"), error
        assert cause.text == (text or server_text(error)), cause
    assert cause_of(cases[2][0]).text == "NOPERM User u has no permissions to run the 'evalsha' command"
    assert cause_of(cases[7][0]).text == "READONLY You can't write against a read only replica."


# -- the token bucket (GCRA) ----------------------------------------------------


def test_gcra_arguments_are_the_modules() -> None:
    assert make_gcra_call(GcraLimit(15, 30, 60_000)).args() == ["15", "30", "60", "MS"]
    assert make_gcra_call(GcraLimit(0, 1, 1), tokens=0).args() == ["0", "1", "0.001", "TOKENS", "0", "MS"]
    words = [GcraLimit(0, 1, ms).period_seconds for ms in (500, 1250, 1000, 10, 7_776_000_000, 60_001)]
    assert words == ["0.5", "1.25", "1", "0.01", "7776000", "60.001"]
    op = Op("gcra", ("k",), tuple(make_gcra_call(GcraLimit(15, 30, 60_000), 3).args()))
    assert module_command(op) == ["RATELIMIT.GCRA", "k", "15", "30", "60", "TOKENS", "3", "MS"]
    assert twin_arguments(op) == ["1", "k", "gcra", "15", "30", "60", "TOKENS", "3", "MS"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: GcraLimit(-1, 1, 1000), "max_burst must be an integer from 0 to 8999999999999999, got -1"),
        (lambda: GcraLimit(9_000_000_000_000_000, 1, 1), "max_burst must be an integer from 0 to 8999999999999999"),
        (lambda: GcraLimit(0, 0, 1000), "count must be an integer from 1 to 9000000000000000, got 0"),
        (lambda: GcraLimit(0, 9_000_000_000_000_001, 1000), "count must be an integer from 1 to 9000000000000000"),
        (lambda: GcraLimit(0, 1, 0), "period_ms must be an integer from 1 to 7776000000, got 0"),
        (lambda: GcraLimit(0, 1, 7_776_000_001), "period_ms must be an integer from 1 to 7776000000"),
        (lambda: GcraLimit(0, 1, 1000.0), "period_ms must be an integer"),  # type: ignore[arg-type]
        (lambda: GcraLimit(True, 1, 1000), "max_burst must be an integer"),
        (lambda: GcraLimit(4_499_999_999_999_999, 1, 3), r"\(max_burst \+ 1\) \* period_ms must be at most"),
        (lambda: make_gcra_call(GcraLimit(0, 1, 1), tokens=-1), "tokens must be an integer from 0 to"),
        (lambda: make_gcra_call(GcraLimit(0, 1, 1), tokens=9_000_000_000_000_001), "tokens must be an integer"),
        (lambda: make_gcra_call(Limit(1000, 1)), "limit must be a GcraLimit"),  # type: ignore[arg-type]
    ],
)
def test_bad_gcra_input_is_refused_before_redis(make: object, message: str) -> None:
    with pytest.raises(RateLimitInputError, match=message):
        make()  # type: ignore[operator]


def test_gcra_bounds_reach_the_modules() -> None:
    assert GcraLimit(8_999_999_999_999_999, 9_000_000_000_000_000, 1).burst == 9_000_000_000_000_000
    assert GcraLimit(1156, 1, 7_776_000_000).burst == 1157
    assert GcraLimit(4_499_999_999_999_999, 1, 2).burst * 2 == 9_000_000_000_000_000
    # More tokens than the bucket holds is a request, answered limited.
    assert make_gcra_call(GcraLimit(0, 1, 1), tokens=9_000_000_000_000_000).tokens == 9_000_000_000_000_000


def test_gcra_replies_in_resp2_and_resp3_shapes() -> None:
    assert parse_gcra_reply([0, 16, 15, -1, 2000]) == (0, 16, 15, -1, 2000)
    assert parse_gcra_reply((b"1", b"16", b"0", b"2000", b"32000")) == (1, 16, 0, 2000, 32000)
    allowed = gcra_decision((0, 16, 15, -1, 2000), "redis", "module")
    assert allowed == GcraDecision(True, 16, 15, 0, 2000, "module", "redis")
    never = gcra_decision((1, 3, 3, -1, 0))
    assert (never.allowed, never.retry_after_ms) == (False, -1)
    for bad in ([0, 16, 15, 5, 2000], [2, 16, 15, -1, 0], [0, 16, 15, -1], [0, 0, 0, -1, 0], [1, 16, -1, 5, 0], "OK"):
        with pytest.raises(UnexpectedReply):
            parse_gcra_reply(bad)


def test_ietf_headers_for_a_token_bucket() -> None:
    """The issue's bucket: 16 tokens, 30 a minute (a full bucket refills in
    32 s); t is the wait until the bucket is empty; Retry-After on a
    refusal, none for a request that can never fit."""
    limit = GcraLimit(15, 30, 60_000)
    allowed = GcraDecision(True, 16, 15, 0, 2000, "module")
    assert gcra_headers("api", limit, allowed) == {"RateLimit-Policy": '"api";q=16;w=32', "RateLimit": '"api";r=15;t=2'}
    refused = gcra_headers("api", limit, GcraDecision(False, 16, 0, 1999, 31_999, "module"))
    assert refused["RateLimit"] == '"api";r=0;t=32' and refused["Retry-After"] == "2"
    never = gcra_headers("api", limit, GcraDecision(False, 16, 16, -1, 0, "module"))
    assert "Retry-After" not in never and never["RateLimit"] == '"api";r=16;t=0'
    # w rounds up: 3 tokens at 2 a second refill in 1.5 s.
    assert gcra_headers("x", GcraLimit(2, 2, 1000), allowed)["RateLimit-Policy"] == '"x";q=3;w=2'


def test_a_route_takes_a_token_bucket_alone() -> None:
    limiter = RateLimiter(redis.Redis())
    bucket = GcraLimit(1, 1, 1000)
    for options, message in [
        ({"limits": Limit(1000, 1), "gcra": bucket}, "gcra= is a token bucket on one key"),
        ({"keys": lambda environ: None, "gcra": bucket}, "gcra= is a token bucket on one key"),
        ({"gcra": bucket, "block_ms": 1000}, "which has no block"),
        ({"gcra": bucket, "refund_when": lambda status: True}, "refunded only by a settlement"),
    ]:
        with pytest.raises(ValueError, match=message):
            RateLimitMiddleware(lambda environ, start: [], limiter=limiter, **options)  # type: ignore[arg-type]
    with pytest.raises(RateLimitInputError, match="tokens must be an integer"):
        RateLimitMiddleware(lambda environ, start: [], limiter=limiter, gcra=bucket, cost=-1)
    with pytest.raises(RateLimitInputError, match="limit must be a GcraLimit"):
        RateLimitMiddleware(lambda environ, start: [], limiter=limiter, gcra=Limit(1000, 1))  # type: ignore[arg-type]
    route = RateLimitMiddleware(lambda environ, start: [], limiter=limiter, gcra=bucket, cost=0).route
    assert route.gcra == bucket and route.limits is None
    # Settled, a bucket takes refund_when (the reservation is settled at 0).
    settled = RateLimitMiddleware(
        lambda environ, start: [],
        limiter=limiter,
        gcra=bucket,
        settle=lambda environ: 2,
        refund_when=lambda status: status == 503,
    ).route
    assert settled.settle is not None and settled.gcra == bucket


def test_token_bucket_verdicts() -> None:
    """Named by the limit or the middleware; 429 with Retry-After, or
    without it for a request that never fits; the failure policy's
    answers; shadow mode sends nothing and never denies; never refunded."""
    limit = GcraLimit(15, 30, 60_000)
    route = Route(None, name="api", gcra=limit)
    denied = route.gcra_verdict(GcraDecision(False, 16, 0, 1500, 31_000, "twin"), "api:k", 1, NoMetrics())
    assert (denied.passed, denied.status, denied.policy, denied.keys, denied.headers["Retry-After"]) == (
        False,
        429,
        "api",
        ("api:k",),
        "2",
    )
    never = route.gcra_verdict(GcraDecision(False, 16, 16, -1, 0, "twin"), "api:k", 20, NoMetrics())
    assert (never.passed, never.status, "Retry-After" in never.headers, never.cost) == (False, 429, False, 20)
    named = Route(None, name="api", gcra=GcraLimit(15, 30, 60_000, name="bucket"))
    allowed = named.gcra_verdict(GcraDecision(True, 16, 15, 0, 2000, "module"), "api:k", 1, NoMetrics())
    assert allowed.headers["RateLimit"] == '"bucket";r=15;t=2' and allowed.policy == "bucket"
    closed = route.gcra_verdict(GcraDecision(False, 16, 0, 800, 0, None, "fail_closed"), "k", 1, NoMetrics())
    assert (closed.passed, closed.status, closed.headers) == (False, 503, {"Retry-After": "1"})
    opened = route.gcra_verdict(GcraDecision(True, 16, 15, 0, 0, None, "fail_open"), "k", 1, NoMetrics())
    assert opened.passed and opened.headers == {}
    shadow = Route(None, shadow=True, gcra=limit)
    quiet = shadow.gcra_verdict(GcraDecision(False, 16, 0, 1500, 31_000, "module"), "k", 1, NoMetrics())
    assert (quiet.passed, quiet.headers, quiet.policy) == (True, {}, "default")
    # A token bucket has no refund: nothing is sent, allowed or not.
    assert settle(refunding(RateLimiter(redis.Redis(port=1)), allowed)) is None


def test_fallback_token_bucket_is_the_cores_within_its_share() -> None:
    """The issue's bucket at half share: 8 tokens, 15 a minute (one every
    4 s), the waits exact in either unit."""
    clock = Clock()
    fallback = Fallback(share=0.5, clock=clock)
    call = make_gcra_call(GcraLimit(15, 30, 60_000))
    answers = [fallback.gcra("k", call) for _ in range(10)]
    assert [a.allowed for a in answers] == [True] * 8 + [False] * 2
    assert [a.remaining for a in answers] == [7, 6, 5, 4, 3, 2, 1, 0, 0, 0]
    assert [a.reset_after_ms for a in answers[:8]] == [4000 * k for k in range(1, 9)]
    assert (answers[8].burst, answers[8].retry_after_ms, answers[8].source) == (8, 4000, "fallback")
    clock.now += 1
    # 4 s less 1 ms is 3999 ms; redis-cell's seconds round the whole ms up.
    waiting = fallback.gcra_answer("k", call)
    assert waiting.reply(ms=True) == [1, 8, 0, 3999, 31_999] and waiting.reply(ms=False) == [1, 8, 0, 4, 32]
    clock.now += 3999
    assert fallback.gcra("k", call).allowed
    # 3 a second: a third of a second is 333.33 ms, rounded up to 334.
    thirds, fallback = make_gcra_call(GcraLimit(0, 3, 1000)), Fallback(clock=clock)
    assert fallback.gcra("t", thirds).reset_after_ms == 334
    assert fallback.gcra_answer("t", thirds).reply(ms=True) == [1, 1, 0, 334, 334]


def test_fallback_token_bucket_tokens_expiry_and_a_clock_step_back() -> None:
    clock = Clock()
    fallback = Fallback(clock=clock)
    call = make_gcra_call(GcraLimit(4, 1, 1000), tokens=3)
    assert fallback.gcra("k", make_gcra_call(GcraLimit(4, 1, 1000), 0)).remaining == 5 and len(fallback) == 0
    assert fallback.gcra("k", call).reset_after_ms == 3000
    never = fallback.gcra("k", make_gcra_call(GcraLimit(4, 1, 1000), 6))
    assert (never.allowed, never.remaining, never.retry_after_ms) == (False, 2, -1)
    clock.now -= 5000  # reads as the last charge's time: frees nothing
    assert fallback.gcra("k", make_gcra_call(GcraLimit(4, 1, 1000), 0)).remaining == 2
    clock.now += 5000 + 3000
    assert len(fallback) == 1
    clock.now += 1  # past the key's expiry: gone when a call names it
    assert fallback.gcra("k", make_gcra_call(GcraLimit(4, 1, 1000), 0)).remaining == 5 and len(fallback) == 0


def test_fallback_holds_one_keyspace_for_both_kinds() -> None:
    """WRONGTYPE both ways, as the server's; an error over several keys
    changes none; the cap counts buckets and logs together."""
    clock = Clock()
    fallback = Fallback(max_keys=2, clock=clock)
    window, bucket = make_call(Limit.per_minute(5)), make_gcra_call(GcraLimit(1, 1, 60_000))
    assert fallback.check("w", window).allowed and fallback.gcra("g", bucket).allowed
    wrongtype = "^WRONGTYPE Operation against a key holding the wrong kind of value$"
    for call in (
        lambda: fallback.gcra("w", bucket),
        lambda: fallback.check("g", window),
        lambda: fallback.peek("g", window),
        lambda: fallback.undo("g", 1),
        lambda: fallback.unblock("g"),
        lambda: fallback.decide(["w", "g"], [window, window], record=True),
        lambda: fallback.undo_all(["w", "g"], 1),
    ):
        with pytest.raises(RateLimitReplyError, match=wrongtype):
            call()
    assert fallback.peek("w", window).remaining == 4
    assert fallback.gcra("g", make_gcra_call(GcraLimit(1, 1, 60_000), 0)).remaining == 1
    assert fallback.gcra("h", bucket).allowed and len(fallback) == 2
    # "w" was the least recently used: forgotten.
    assert fallback.peek("w", window).remaining == 5
