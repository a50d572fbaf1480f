"""The transport corpus (contract/transport.json, shared with the Node
package): every scenario under every failure policy, with the sync and the
asyncio client, asserting the outcome and the log lines (level and text)
exactly. Real servers wherever the condition can be made real; a RESP stub
for an older module (no real server lacks MCHECK), for the twin's NOPERM
reply on TIME until the embedded twin gives it, and for a server that reads
and never answers."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry
from servers import REPO, Server, Stub, free_port, resp

from redis_exact_ratelimit import (
    AsyncRateLimiter,
    Decision,
    Fallback,
    Limit,
    RateLimiter,
    RateLimitReplyError,
    RateLimitUnavailable,
)
from redis_exact_ratelimit._base import _script
from redis_exact_ratelimit._core import make_call
from redis_exact_ratelimit._transport import server_text

CONTRACT = json.loads((REPO / "contract" / "transport.json").read_text())
SCENARIOS = {scenario["name"]: scenario for scenario in CONTRACT["scenarios"]}
POLICIES = list(CONTRACT["policies"])
LIMIT = Limit(60_000, 5)
NOPERM_TIME = SCENARIOS["noperm-time"]["logs"][0]["cause"]


@dataclass
class Stage:
    """Where one scenario runs, and what it expects beyond the contract."""

    port: int
    call: str = "check"
    # The outage's cause as the server words it (contract: its template).
    cause: str | None = None
    username: str | None = None
    timeout: float = 0.25
    retry_after_failure: float = 1.0
    # A settlement's retry time (settle-while-down), in seconds.
    settle_retry: float = 5.0
    prefix: str = field(default_factory=lambda: f"{uuid.uuid4().hex}:")
    # Runs between the call and the log check (reconnect, noscript ...).
    after: Callable[[Any], Any] | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"


# -- the servers --------------------------------------------------------------


@pytest.fixture(scope="module")
def scratch() -> Iterator[Server]:
    """A server with the module that scenarios may make busy, fill, or stop."""
    server = Server(module=True, extra=("--busy-reply-threshold", "100"))
    yield server
    server.remove()


def acl_user(server: Server, name: str, rule: str) -> str:
    with server.client() as admin:
        admin.execute_command("ACL", "SETUSER", name, "on", ">secret", "~*", "&*", "+@all", rule)
    return name


def server_error(server: Server, *command: str, username: str | None = None) -> str:
    """The server's own error text for a command, its code included."""
    with server.client(username=username, password="secret" if username else None) as probe:
        try:
            probe.execute_command(*command)
        except redis.ResponseError as error:
            return server_text(error)
    raise AssertionError(f"{command} did not fail")


@contextlib.contextmanager
def busy(server: Server) -> Iterator[str]:
    """A script that runs until killed, from a second connection; yields
    the BUSY text other clients get meanwhile."""
    runner = server.client()
    thread = threading.Thread(target=lambda: _run_forever(runner), daemon=True)
    thread.start()
    try:
        with server.client() as probe:
            while True:
                try:
                    probe.ping()
                except redis.ResponseError as error:
                    yield str(error)
                    break
                time.sleep(0.02)
    finally:
        with server.client() as killer, contextlib.suppress(redis.ResponseError):  # the script ended on its own
            killer.script_kill()
        thread.join(10)
        runner.close()


def _run_forever(client: redis.Redis) -> None:
    with contextlib.suppress(redis.ResponseError):
        client.eval("while true do end", 0)


def stage(name: str, request: pytest.FixtureRequest) -> Generator[Stage, None, None]:
    """Sets up one scenario (contract "setup"), and undoes it."""
    if name == "module":
        yield Stage(request.getfixturevalue("module_server").port)
    elif name == "no-module":
        yield Stage(request.getfixturevalue("twin_server").port)
    elif name == "older-module":
        yield from _older_module()
    elif name == "noscript":
        twin: Server = request.getfixturevalue("twin_server")
        with twin.client() as admin:
            admin.script_flush()
        before = _calls(twin)
        yield Stage(twin.port, after=lambda _: _calls(twin), notes={"before": before})
    elif name == "busy":
        scratch_server: Server = request.getfixturevalue("scratch")
        with busy(scratch_server) as text:
            yield Stage(scratch_server.port, cause=text)
    elif name == "noperm-time":
        yield from _noperm_time(request)
    elif name == "noperm-command":
        module: Server = request.getfixturevalue("module_server")
        user = acl_user(module, f"nocheck-{uuid.uuid4().hex[:8]}", "-ratelimit.check")
        cause = server_error(module, "RATELIMIT.CHECK", "k", "1", "1", username=user)
        assert cause.startswith("NOPERM ") and "ratelimit.check" in cause.lower(), cause
        yield Stage(module.port, cause=cause, username=user)
    elif name == "wrongtype":
        yield Stage(request.getfixturevalue("module_server").port, notes={"string": True})
    elif name == "oom":
        yield from _oom(request)
    elif name == "timeout":
        silent = Stub(lambda command: None)
        try:
            yield Stage(silent.port, cause="timeout: no answer within 250 ms")
        finally:
            silent.close()
    elif name in ("connection-refused", "unblock-while-down"):
        yield Stage(free_port(), call="unblock" if name == "unblock-while-down" else "check", cause="ECONNREFUSED")
    elif name == "settle-while-down":
        scratch_server = request.getfixturevalue("scratch")
        yield Stage(scratch_server.port, cause="ECONNREFUSED", settle_retry=0.3, notes={"server": scratch_server})
    elif name == "reconnect":
        scratch_server = request.getfixturevalue("scratch")
        yield Stage(
            scratch_server.port, cause="ECONNREFUSED", retry_after_failure=0.2, notes={"server": scratch_server}
        )
    else:
        raise AssertionError(f"contract/transport.json has a scenario this test does not know: {name}")


def _older_module() -> Iterator[Stage]:
    """A 0.1.x module: no MCHECK, while PEEK and CHECK answer."""

    def answer(command: list[str]) -> bytes:
        if command[0] == "RATELIMIT.MCHECK":
            return resp(f"ERR unknown command '{command[0]}', with args beginning with: '2'")
        return resp([1, 4, 0, 60_000])

    stub = Stub(answer)
    try:
        yield Stage(stub.port, call="check_all", after=lambda _: [c[0] for c in stub.received if c[0] != "CLIENT"])
    finally:
        stub.close()


def _noperm_time(request: pytest.FixtureRequest) -> Iterator[Stage]:
    if request.node.callspec.params["where"] == "server":
        twin: Server = request.getfixturevalue("twin_server")
        user = acl_user(twin, f"notime-{uuid.uuid4().hex[:8]}", "-time")
        refusal = server_error(twin, "EVAL", _script().text, "1", "k", "check", "60000", "5", username=user)
        if not refusal.startswith("NOPERM "):
            # The twin's own NOPERM is coming (twin/ratelimit.lua, this round);
            # until then the server's refusal: this variant runs once it lands.
            pytest.skip(f"the embedded twin does not answer NOPERM for TIME yet: {refusal}")
        yield Stage(twin.port, cause=NOPERM_TIME, username=user)
        return

    def answer(command: list[str]) -> bytes:
        if command[0].startswith("RATELIMIT."):
            return resp(f"ERR unknown command '{command[0]}', with args beginning with: 'k'")
        return resp(NOPERM_TIME)

    stub = Stub(answer)
    try:
        yield Stage(stub.port, cause=NOPERM_TIME)
    finally:
        stub.close()


def _oom(request: pytest.FixtureRequest) -> Iterator[Stage]:
    """maxmemory reached with noeviction: the module's command answers OOM,
    the twin's script wraps it ("... script: ..."), unwrapped as the cause."""
    where = request.node.callspec.params["where"]
    server: Server = request.getfixturevalue("scratch" if where == "module" else "twin_server")
    with server.client() as admin:
        admin.config_set("maxmemory", 1)
        try:
            yield Stage(server.port, cause=server_error(server, "SET", "oom-probe", "1"))
        finally:
            admin.config_set("maxmemory", 0)


def _calls(server: Server) -> dict[str, int]:
    with server.client() as admin:
        stats = admin.info("commandstats")
    return {name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("eval", "evalsha")}


# -- the corpus -----------------------------------------------------------------

# Scenarios run in more than one place: OOM on the module and in the twin's
# script; NOPERM on TIME from the stub and from a real server.
WHERE = {"oom": ["module", "twin"], "noperm-time": ["stub", "server"]}
CASES = [(name, where) for name in SCENARIOS for where in WHERE.get(name, ["-"])]


def make_limiter(stage: Stage, policy: str, mode: str) -> RateLimiter | AsyncRateLimiter:
    # The README's client: one immediate retry (a connection the server
    # closed is opened again), no backoff (a refused connection is told as
    # such at once, not as a timeout).
    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": stage.port,
        "protocol": 2,
        "retry": Retry(NoBackoff(), 1) if mode == "sync" else AsyncRetry(NoBackoff(), 1),
        "socket_connect_timeout": 1,
        "socket_timeout": 5,
    }
    if stage.username:
        options.update(username=stage.username, password="secret")
    limiter_options: dict[str, Any] = {
        "prefix": stage.prefix,
        "timeout": stage.timeout,
        "retry_after_failure": stage.retry_after_failure,
        "fail_open": policy == "fail_open",
        "fallback": Fallback(share=1.0) if policy == "fallback" else None,
        "settle_retry": stage.settle_retry,
    }
    if mode == "sync":
        return RateLimiter(redis.Redis(**options), **limiter_options)
    return AsyncRateLimiter(aioredis.Redis(**options), **limiter_options)


async def settled(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def expected_logs(scenario: dict[str, Any], stage: Stage, policy: str) -> list[tuple[str, str]]:
    texts = CONTRACT["logs"]
    what_now = CONTRACT["policy_texts"][policy].format(share="1")
    lines = []
    for event in scenario["logs"]:
        # An entry with "policies" applies under those only.
        if policy not in event.get("policies", POLICIES):
            continue
        log = texts[event["event"]]
        fields = {name: event[name] for name in ("action", "units", "ms") if name in event}
        if "keys" in event:
            # As late_refund's: the keys the limiter sent, its prefix included.
            fields["keys"] = ", ".join(stage.prefix + key for key in event["keys"].split(", "))
        cause = stage.cause if "cause" in event else None
        text = log["text"].format(server=stage.server, cause=cause, policy=what_now, **fields)
        lines.append((log["level"], text))
    return lines


def assert_outcome(outcome: str, decision: Decision, stage: Stage) -> None:
    fields = (decision.allowed, decision.remaining, decision.retry_after_ms, decision.reset_after_ms)
    expected = {
        "redis": ((True, 4, 0, 60_000), "redis"),
        "fail_closed": ((False, 0, int(stage.retry_after_failure * 1000), 0), "fail_closed"),
        "fail_open": ((True, 4, 0, 0), "fail_open"),
        "fallback": ((True, 4, 0, 60_000), "fallback"),
    }[outcome]
    assert (fields, decision.source) == expected


@pytest.mark.parametrize("mode", ["sync", "asyncio"])
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize(("name", "where"), CASES, ids=[f"{n}-{w}" if w != "-" else n for n, w in CASES])
def test_transport_corpus(
    name: str, where: str, policy: str, mode: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="redis_exact_ratelimit")
    scenario = SCENARIOS[name]
    setup = stage(name, request)
    current = next(setup)
    try:
        asyncio.run(run_scenario(scenario, current, policy, mode))
    finally:
        setup.close()
    logged = [(r.levelname.lower(), r.getMessage()) for r in caplog.records if r.name == "redis_exact_ratelimit"]
    assert logged == expected_logs(scenario, current, policy)
    # No stack in any detail: the arguments are strings.
    assert all(isinstance(arg, str) for r in caplog.records for arg in (r.args or ()))


async def run_scenario(scenario: dict[str, Any], stage: Stage, policy: str, mode: str) -> None:
    limiter = make_limiter(stage, policy, mode)
    outcome = scenario["outcome"][policy]
    try:
        if stage.notes.get("string"):
            await settled(limiter.client.set(limiter.prefix + "k", "hello"))
        if scenario["name"] == "reconnect":
            await reconnect(scenario, stage, policy, limiter)
        elif scenario["name"] == "settle-while-down":
            await settle_while_down(outcome, stage, limiter)
        elif outcome == "call_error":
            with pytest.raises(RateLimitReplyError, match=scenario["error_contains"]):
                if stage.call == "check_all":
                    await settled(limiter.check_all({"k1": LIMIT, "k2": LIMIT}))
                else:
                    await settled(limiter.check("k", LIMIT))
        elif outcome == "unavailable_error":
            with pytest.raises(RateLimitUnavailable, match=f"unavailable \\({stage.cause}\\)"):
                await settled(limiter.unblock("k"))
        else:
            assert_outcome(outcome, await settled(limiter.check("k", LIMIT)), stage)
        await after(scenario, stage, limiter)
    finally:
        if isinstance(limiter, AsyncRateLimiter):
            await limiter.client.aclose()
        else:
            limiter.client.close()


async def reconnect(scenario: dict[str, Any], stage: Stage, policy: str, limiter: Any) -> None:
    server: Server = stage.notes["server"]
    assert_outcome("redis", await settled(limiter.check("k", LIMIT)), stage)
    server.stop()
    try:
        down = await settled(limiter.check("k", LIMIT))
        assert_outcome(scenario["outcome_while_down"][policy], down, stage)
    finally:
        server.start()
    time.sleep(stage.retry_after_failure + 0.05)
    assert_outcome(scenario["outcome"][policy], await settled(limiter.check("k", LIMIT)), stage)


async def settle_while_down(outcome: str, stage: Stage, limiter: Any) -> None:
    """reserve(k, estimate 3) allowed by Redis, the server stopped, then
    settle(handle, 5): a charge of 2 units Redis does not answer."""
    server: Server = stage.notes["server"]
    reservation = await settled(limiter.reserve("k", LIMIT, estimate=3))
    assert (reservation.decision.allowed, reservation.decision.source) == (True, "redis")
    server.stop()
    try:
        started = time.monotonic()
        if outcome == "unavailable_error":
            with pytest.raises(RateLimitUnavailable, match=f"unavailable \\({stage.cause}\\)"):
                await settled(limiter.settle(reservation, 5))
        else:
            assert outcome == "fallback"
            settlement = await settled(limiter.settle(reservation, 5))
            assert (settlement.source, settlement.charged, settlement.keys) == ("fallback", 2, ("k",))
            # Recorded in the fallback: its window holds the 2 units.
            assert limiter.fallback.peek(stage.prefix + "k", make_call(LIMIT, 1, None, None)).remaining == 3
        # Retried for the settlement's retry time, not given up at once.
        assert time.monotonic() - started >= stage.settle_retry
        assert reservation.settled
    finally:
        server.start()


async def after(scenario: dict[str, Any], stage: Stage, limiter: Any) -> None:
    """The scenario's "after", where it has one."""
    if scenario["name"] == "older-module":
        # Still the module: a following check goes to RATELIMIT.CHECK.
        await settled(limiter.check("k", LIMIT))
        assert stage.after is not None
        assert stage.after(limiter) == ["RATELIMIT.MCHECK", "RATELIMIT.PEEK", "RATELIMIT.CHECK"]
    elif scenario["name"] == "noscript":
        # EVAL once (after NOSCRIPT), then EVALSHA again.
        await settled(limiter.check("k", LIMIT))
        assert stage.after is not None
        calls, before = stage.after(limiter), stage.notes["before"]
        assert calls["eval"] - before["eval"] == 1 and calls["evalsha"] - before["evalsha"] >= 1
