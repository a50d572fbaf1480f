"""How one operation reaches a server, written once for the sync and the
asyncio clients: a generator yields the commands to send and receives
their replies (or their errors, thrown in), so the module-or-twin choice
and the NOSCRIPT retry exist in one place. Also: which errors are an
outage (the failure policy applies) and which are about the call itself,
and the cause of each, as logged and counted."""

from __future__ import annotations

import errno
import re
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from redis import exceptions as rx

from ._core import (
    FIRST_OPERATIONS,
    Delete,
    Op,
    Script,
    UnexpectedReply,
    is_missing_module,
    module_command,
    twin_arguments,
)
from ._policy import Policy


@dataclass(frozen=True)
class Transaction:
    """Commands sent in one MULTI/EXEC to the server of ``key``; the reply
    is the list of theirs."""

    commands: tuple[list[str], ...]
    key: str


Command = list[str] | Transaction
Plan = Generator[Command, Any, list[Any]]


def plan(policy: Policy, script: Script, server: str, steps: Sequence[Op | Delete]) -> Plan:
    """The replies to ``steps`` (one, or several in one MULTI/EXEC; the
    first is a RATELIMIT operation): on the module where the server has it,
    on the twin where it does not (learned from the server's "unknown
    command" answer), EVALSHA first and EVAL when the server answers
    NOSCRIPT (which also caches the script)."""
    first = steps[0]
    assert isinstance(first, Op)
    if policy.backend_of(server) == "module":
        try:
            replies = yield from _send([_module(step) for step in steps], first.keys[0])
        except rx.RedisError as error:
            if not is_missing_module(error):
                raise
            if first.operation not in FIRST_OPERATIONS:
                yield from _refuse_an_older_module(policy, server, first.keys[0], error)
            policy.learned(server, "twin")
        else:
            policy.learned(server, "module")
            policy.answered(server)
            return replies
    replies = yield from _on_the_twin(script, steps, first.keys[0])
    policy.answered(server)
    return replies


def _on_the_twin(script: Script, steps: Sequence[Op | Delete], key: str) -> Plan:
    if any(isinstance(step, Delete) for step in steps):
        # In a MULTI/EXEC, NOSCRIPT comes after the DEL has run: EVAL, which
        # needs no cache, keeps the first reply ("was it blocked") true.
        return (yield from _send([_twin(script, step, cached=False) for step in steps], key))
    try:
        return (yield from _send([_twin(script, step, cached=True) for step in steps], key))
    except rx.NoScriptError:
        # EVAL caches the script again: the rest of a MULTI/EXEC, run after
        # it, finds it there.
        return (yield from _send([_twin(script, step, cached=i > 0) for i, step in enumerate(steps)], key))


def _module(step: Op | Delete) -> list[str]:
    return ["DEL", step.key] if isinstance(step, Delete) else module_command(step)


def _twin(script: Script, step: Op | Delete, *, cached: bool) -> list[str]:
    if isinstance(step, Delete):
        return ["DEL", step.key]
    return ["EVALSHA", script.sha1, *twin_arguments(step)] if cached else ["EVAL", script.text, *twin_arguments(step)]


def _send(commands: list[list[str]], key: str) -> Plan:
    if len(commands) == 1:
        return [(yield commands[0])]
    return list((yield Transaction(tuple(commands), key)))


def _refuse_an_older_module(policy: Policy, server: str, key: str, unknown: rx.RedisError) -> Plan:
    """A command added to the module later (MCHECK, UNBLOCK) is unknown to
    an older module too: RATELIMIT.PEEK tells the two apart (it reads
    nothing but the key's type). Taking an older module for none would send
    the server's keys to the twin, which cannot read them."""
    try:
        yield ["RATELIMIT.PEEK", key, "1", "1"]
    except rx.RedisError as error:
        if is_missing_module(error):
            return []
    policy.learned(server, "module")
    policy.answered(server)
    raise rx.ResponseError(f"the server's RATELIMIT module is older than this call needs: {server_text(unknown)}")


def drive(steps: Plan, send: Callable[[Command], Any]) -> list[Any]:
    """Runs a plan with a blocking send."""
    try:
        command = next(steps)
        while True:
            try:
                reply = send(command)
            except Exception as error:
                command = steps.throw(error)
            else:
                command = steps.send(reply)
    except StopIteration as stop:
        replies: list[Any] = stop.value
        return replies


# The error codes redis-py strips from the replies it has a class for.
_CODES: tuple[tuple[type[rx.RedisError], str], ...] = (
    (rx.NoPermissionError, "NOPERM"),
    (rx.OutOfMemoryError, "OOM"),
    (rx.BusyLoadingError, "LOADING"),
    (rx.ReadOnlyError, "READONLY"),
    (rx.TryAgainError, "TRYAGAIN"),
    (rx.ClusterDownError, "CLUSTERDOWN"),
    (rx.MasterDownError, "MASTERDOWN"),
    (rx.MovedError, "MOVED"),
    (rx.AskError, "ASK"),
)

ErrorCause = Literal[
    "timeout", "connection", "noperm", "busy", "oom", "loading", "readonly", "cluster", "reply", "other"
]
"""What an error counts as (``ratelimit_errors_total{cause}``)."""

# Error replies that say the server is not well right now, or will not let
# this user run what the package needs: the failure policy applies. Any
# other error reply (WRONGTYPE, a full log, a script error) is about the
# call and is raised to the caller.
_OUTAGES: dict[str, ErrorCause] = {
    "BUSY": "busy",
    "NOPERM": "noperm",
    "OOM": "oom",
    "LOADING": "loading",
    "READONLY": "readonly",
    "CLUSTERDOWN": "cluster",
    "TRYAGAIN": "cluster",
    "MASTERDOWN": "cluster",
    "MOVED": "cluster",
    "ASK": "cluster",
}

# How servers answer a script whose user may not run a command it calls
# (TIME, or a key outside the user's patterns), with a doubled "ERR ": a
# NOPERM in all but name (Redis 7.0, then Redis 7.2+ and Valkey).
_SCRIPT_NOPERM = ("ERR The user executing the script can't run", "ERR ACL failure in script:")

# What Redis appends to an error met inside a script (Valkey names no sha).
_SCRIPT_SUFFIX = re.compile(r" script: (?:[0-9a-f]{40}, )?on @user_script:\d+\.$")


@dataclass(frozen=True)
class Cause:
    """An error's kind and its text as logged: the server's own error
    reply, the errno name of a failed connection (ECONNREFUSED), or the
    timeout."""

    kind: ErrorCause
    text: str


def server_text(error: BaseException) -> str:
    """An error reply as the server sent it. redis-py strips the code of
    the replies it has a class for (NOPERM, OOM ...) and prefixes an error
    met in a MULTI/EXEC with the command; Redis wraps an error met inside a
    script as "ERR <error> script: <sha>, on @user_script:<line>." (and
    redis-py strips that "ERR ")."""
    text = str(error).rpartition(" of pipeline caused error: ")[2]
    code = next((code for kind, code in _CODES if isinstance(error, kind)), None)
    if code is not None and not text.startswith(code + " "):
        text = f"{code} {text}"
    return _SCRIPT_SUFFIX.sub("", text)


def cause_of(error: BaseException) -> Cause:
    # A timeout is an OSError too: asked first.
    if isinstance(error, (TimeoutError, rx.TimeoutError)):
        return Cause("timeout", f"timeout: {error}")
    if isinstance(error, (rx.ConnectionError, OSError)):
        return Cause("connection", _errno_name(error) or str(error))
    if isinstance(error, rx.ResponseError):
        text = server_text(error)
        kind = "noperm" if text.startswith(_SCRIPT_NOPERM) else _OUTAGES.get(text.split(" ", 1)[0], "reply")
        return Cause(kind, text)
    if isinstance(error, UnexpectedReply):
        return Cause("reply", str(error))
    if isinstance(error, rx.RedisClusterException):
        return Cause("cluster", str(error))
    return Cause("other", f"{type(error).__name__}: {error}")


def is_call_error(error: BaseException) -> bool:
    """An error reply about the call itself, raised to the caller."""
    return isinstance(error, rx.ResponseError) and cause_of(error).kind == "reply"


def _errno_name(error: BaseException | None) -> str | None:
    """ECONNREFUSED and the like, from the OSError behind redis-py's own."""
    while error is not None:
        code = getattr(error, "errno", None)
        if isinstance(code, int) and code in errno.errorcode:
            return errno.errorcode[code]
        error = error.__cause__ or error.__context__
    return None


def standalone_name(kwargs: dict[str, Any]) -> str:
    """host:port (or the socket path) of a standalone client's pool."""
    if kwargs.get("path"):
        return str(kwargs["path"])
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
