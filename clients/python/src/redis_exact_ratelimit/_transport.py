"""How one operation reaches a server, written once for the sync and the
asyncio clients: a generator yields the commands to send and receives
their replies (or their errors, thrown in), so the module-or-twin choice
and the NOSCRIPT retry exist in one place. Also: which errors are an
outage (the failure policy applies) and which are about the call itself."""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import Any

from redis import exceptions as rx

from ._core import FIRST_OPERATIONS, Operation, Script, is_missing_module, module_command, twin_arguments
from ._policy import Policy

Plan = Generator[list[str], Any, Any]


def plan(
    policy: Policy, script: Script, server: str, operation: Operation, keys: Sequence[str], args: list[str]
) -> Plan:
    """The module where the server has it, the twin where it does not
    (learned from the server's "unknown command" answer), EVALSHA first and
    EVAL when the server answers NOSCRIPT (which also caches the script)."""
    if policy.backend_of(server) == "module":
        try:
            reply = yield module_command(operation, keys, args)
        except rx.RedisError as error:
            if not is_missing_module(error):
                raise
            if operation not in FIRST_OPERATIONS:
                yield from _refuse_an_older_module(keys[0], error)
            policy.learned(server, "twin")
        else:
            policy.learned(server, "module")
            return reply
    tail = twin_arguments(operation, keys, args)
    try:
        return (yield ["EVALSHA", script.sha1, *tail])
    except rx.NoScriptError:
        return (yield ["EVAL", script.text, *tail])


def _refuse_an_older_module(key: str, unknown: rx.RedisError) -> Plan:
    """A command added to the module later (MCHECK, UNBLOCK) is unknown to
    an older module too: RATELIMIT.PEEK tells the two apart (it reads
    nothing but the key's type). Taking an older module for none would send
    the server's keys to the twin, which cannot read them."""
    try:
        yield ["RATELIMIT.PEEK", key, "1", "1"]
    except rx.RedisError as error:
        if is_missing_module(error):
            return
    raise rx.ResponseError(f"the server's RATELIMIT module is older than this call needs: {unknown}")


def drive(steps: Plan, send: Callable[[list[str]], Any]) -> Any:
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
        return stop.value


# Error replies that say the server is not well right now: the failure
# policy applies. Any other error reply (WRONGTYPE, a full log, NOPERM, a
# script error) is about the call and is raised to the caller.
_OUTAGE_REPLIES = (
    rx.BusyLoadingError,
    rx.ReadOnlyError,
    rx.OutOfMemoryError,
    rx.TryAgainError,
    rx.ClusterDownError,
    rx.MasterDownError,
    rx.MovedError,
    rx.AskError,
)


# The same answers without a class of their own: "BUSY Redis is busy
# running a script", and any of them met inside the twin's script, which
# Redis wraps as "ERR OOM ... script: ..." (redis-py strips the "ERR ").
_OUTAGE_PREFIXES = ("BUSY ", "OOM ", "LOADING ", "READONLY ", "CLUSTERDOWN ", "TRYAGAIN ", "MASTERDOWN ")


def is_call_error(error: BaseException) -> bool:
    if not isinstance(error, rx.ResponseError) or isinstance(error, _OUTAGE_REPLIES):
        return False
    return not str(error).startswith(_OUTAGE_PREFIXES)


def standalone_name(kwargs: dict[str, Any]) -> str:
    """host:port (or the socket path) of a standalone client's pool."""
    if kwargs.get("path"):
        return str(kwargs["path"])
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
