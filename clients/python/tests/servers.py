"""Real servers for the tests: redis-server (or valkey-server) on free
127.0.0.1 ports, with or without the module, alone or as a 3-master
cluster; each stopped by its PID, also when a test fails.

RATELIMIT_SERVER names the binary (default: redis-server on PATH),
RATELIMIT_MODULE the module (default: /work/artifacts/libredis_ratelimit.so,
or target/release/libredis_ratelimit.so of the repository)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import redis

REPO = Path(__file__).resolve().parents[3]


def server_binary() -> str:
    binary = os.environ.get("RATELIMIT_SERVER") or shutil.which("redis-server") or "redis-server"
    return binary


def module_path() -> str:
    explicit = os.environ.get("RATELIMIT_MODULE")
    if explicit:
        return explicit
    for candidate in (REPO / "target/release/libredis_ratelimit.so", Path("/work/artifacts/libredis_ratelimit.so")):
        if candidate.is_file():
            return str(candidate)
    raise RuntimeError("no module: set RATELIMIT_MODULE or build it (cargo build --release)")


def free_port() -> int:
    """A port free on 127.0.0.1, and its cluster bus port (+10000) too."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def stop_process(process: subprocess.Popen[bytes], *, group: bool = False) -> None:
    """SIGTERM to exactly this PID (or, with ``group``, to the process group
    it leads, started with start_new_session), SIGKILL if it lingers."""

    def signal_it(number: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(process.pid, number)
            else:
                process.send_signal(number)

    if process.poll() is None or group:
        signal_it(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            signal_it(signal.SIGKILL)
            process.wait()


class Server:
    """One server process; ``stop`` kills exactly this PID."""

    def __init__(
        self, *, module: bool, cluster: bool = False, port: int | None = None, extra: tuple[str, ...] = ()
    ) -> None:
        self.module = module
        self.cluster = cluster
        self.extra = extra
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix=f"ratelimit-py-{self.port}-")
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        args = [
            server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            self.dir,
            "--save",
            "",
            "--appendonly",
            "no",
            "--logfile",
            "server.log",
        ]
        if self.module:
            args += ["--loadmodule", module_path()]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        args += self.extra
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        self._wait_until_up()

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + 10
        probe = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        try:
            while True:
                try:
                    probe.ping()
                    return
                except redis.ConnectionError:
                    if self.process is not None and self.process.poll() is not None:
                        raise RuntimeError(f"server on {self.port} exited: {self.log()}") from None
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"server on {self.port} did not start: {self.log()}") from None
                    time.sleep(0.02)
        finally:
            probe.close()

    def log(self) -> str:
        path = Path(self.dir) / "server.log"
        return path.read_text()[-2000:] if path.exists() else "(no log)"

    def client(self, **options: object) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, **options)  # type: ignore[arg-type]

    def pause(self) -> None:
        """SIGSTOP: the server holds its connections and answers nothing."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)  # a paused server cannot exit
        stop_process(self.process)
        self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Cluster:
    """Three masters with --cluster-enabled yes, made one cluster with
    redis-cli --cluster create."""

    def __init__(self, *, module: bool, extra: tuple[str, ...] = ()) -> None:
        self.nodes: list[Server] = []
        try:
            for _ in range(3):
                self.nodes.append(Server(module=module, cluster=True, extra=extra))
            self._create()
        except BaseException:
            self.remove()
            raise

    def _create(self) -> None:
        cli = shutil.which("redis-cli") or shutil.which("valkey-cli")
        if cli is None:
            raise RuntimeError("redis-cli is needed to create the cluster")
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        for node in self.nodes:
            with node.client(decode_responses=True) as client:
                while client.cluster("info")["cluster_state"] != "ok":
                    if time.monotonic() > deadline:
                        raise RuntimeError("the cluster did not reach state ok")
                    time.sleep(0.1)

    @property
    def port(self) -> int:
        return self.nodes[0].port

    def error_counts(self) -> dict[str, int]:
        """INFO errorstats summed over the nodes: errorstat_MOVED etc."""
        totals: dict[str, int] = {}
        for node in self.nodes:
            with node.client() as client:
                for name, stats in client.info("errorstats").items():
                    totals[name] = totals.get(name, 0) + int(stats["count"])
        return totals

    def command_calls(self) -> dict[str, int]:
        """INFO commandstats summed over the nodes: calls, refused ones
        included (a CROSSSLOT is a rejected call)."""
        totals: dict[str, int] = {}
        for node in self.nodes:
            with node.client() as client:
                for name, stats in client.info("commandstats").items():
                    calls = int(stats["calls"]) + int(stats.get("rejected_calls", 0))
                    totals[name] = totals.get(name, 0) + calls
        return totals

    def remove(self) -> None:
        for node in self.nodes:
            node.remove()


Answer = Callable[[list[str]], "bytes | None"]
"""A stub's answer to one command (RESP bytes), or None never to answer."""


class Stub:
    """A RESP2 server in a thread, for what a real server cannot be made to
    answer (an older module, a twin's reply that has not landed yet) and for
    a server that reads and never answers. Records every command; closes
    every connection on ``close``, which ends any call still waiting."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.received: list[list[str]] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._connections: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return  # closed
            self._connections.append(connection)
            thread = threading.Thread(target=self._serve, args=(connection,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, connection: socket.socket) -> None:
        stream = connection.makefile("rb")
        try:
            while True:
                command = _read_command(stream)
                if command is None:
                    return
                self.received.append(command)
                reply = b"+OK\r\n" if command[0].upper() == "CLIENT" else self.answer(command)
                if reply is not None:
                    connection.sendall(reply)
        except OSError:
            return

    def close(self) -> None:
        # shutdown, not close alone, wakes the thread blocked in accept().
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for connection in self._connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()
        for thread in self._threads:
            thread.join(5)


def _read_command(stream: BinaryIO) -> list[str] | None:
    """One RESP array of bulk strings, as clients send commands."""
    header = stream.readline()
    if not header:
        return None
    command = []
    for _ in range(int(header[1:])):
        length = int(stream.readline()[1:])
        command.append(stream.read(length + 2)[:-2].decode())
    return command


def resp(value: int | str | list[Any]) -> bytes:
    """A RESP2 reply: an integer, an error (a str, e.g. "ERR ...") or an array."""
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, str):
        return f"-{value}\r\n".encode()
    return b"*%d\r\n" % len(value) + b"".join(resp(item) for item in value)
