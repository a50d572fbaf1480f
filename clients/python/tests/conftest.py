"""Fixtures: one server with the module and one without for the whole run
(keys are unique per test), clusters, and HTTP apps served for real."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from servers import Cluster, Server, free_port, stop_process

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent / "examples"
APPS = HERE / "apps"

BACKENDS = ["module", "twin"]

# What test_corpus.py ran of contract/corpus.jsonl, printed after the run.
CORPUS_TALLY = pytest.StashKey[Counter[str]]()


@pytest.fixture(scope="session")
def corpus_tally(request: pytest.FixtureRequest) -> Counter[str]:
    return request.config.stash.setdefault(CORPUS_TALLY, Counter())


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    tally = config.stash.get(CORPUS_TALLY, None)
    if not tally:
        return
    write = terminalreporter.write_line
    titles = (
        ("", f"contract corpus: {tally['cases']} cases run, "),
        ("gcra ", "  of them RATELIMIT.GCRA: "),
        ("charge ", "  of them RATELIMIT.CHARGE and MCHARGE: "),
    )
    for kind, title in titles:
        write(
            f"{title}{tally[kind + 'steps']} steps: {tally[kind + 'answered']} answered by the fallback,"
            f" {tally[kind + 'refused by the validators']} refused by the validators,"
            f" {tally[kind + 'raised as the server error']} raised as the server's error (WRONGTYPE, a count overflow),"
            f" {tally[kind + 'not expressible']} not expressible in the API"
            " (the server's parsing; each an error in the corpus)"
        )
    for reason, count in sorted(tally.items()):
        if reason.startswith(("not expressible: ", "gcra not expressible: ", "charge not expressible: ")):
            write(f"  {count:4} {reason}")


@pytest.fixture(scope="session")
def module_server() -> Iterator[Server]:
    server = Server(module=True)
    yield server
    server.remove()


@pytest.fixture(scope="session")
def twin_server() -> Iterator[Server]:
    server = Server(module=False)
    yield server
    server.remove()


@pytest.fixture(params=BACKENDS)
def server(request: pytest.FixtureRequest) -> Server:
    """The module's server, then the twin's: a test runs on both."""
    return request.getfixturevalue(f"{request.param}_server")  # type: ignore[no-any-return]


@pytest.fixture
def own_server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """A server of the test's own, to stop and restart; with the module
    unless the test is parametrized with "twin"."""
    backend = getattr(request, "param", "module")
    server = Server(module=backend == "module")
    yield server
    server.remove()


@pytest.fixture
def key() -> str:
    return f"test:{uuid.uuid4().hex}"


class App:
    """An app served by a real HTTP server in its own process group."""

    def __init__(self, command: list[str], port: int, env: dict[str, str], wait: float = 20) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = Path(f"/tmp/ratelimit-py-app-{port}.log")
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=APPS, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            self._wait_until_up(wait)
        except BaseException:
            self.stop()
            raise

    def _wait_until_up(self, wait: float) -> None:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the app exited: {self.log.read_text()[-3000:]}")
            # A TCP connection, not a request: a request would count.
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"the app did not start: {self.log.read_text()[-3000:]}")

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        """Stops the app's own session (a shell's children with it)."""
        stop_process(self.process, group=True)


def eventually(condition: Callable[[], bool], seconds: float = 5) -> bool:
    """A server closes a response after sending it: waits for what runs then."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def scrape(app: App) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The app's /metrics, as {(sample name, labels): value}."""
    text = httpx.get(f"{app.url}/metrics", follow_redirects=True).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def app_env(redis_port: int, **settings: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(settings)
    env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}"
    env["PYTHONPATH"] = os.pathsep.join([str(APPS), str(EXAMPLES)])
    return env


def serve_asgi(target: str, redis_port: int, **settings: str) -> App:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(port)]
    return App([*command, "--log-level", "warning"], port, app_env(redis_port, **settings))


def serve_wsgi(target: str, redis_port: int, **settings: str) -> App:
    port = free_port()
    return App([sys.executable, str(APPS / "serve_wsgi.py"), target, str(port)], port, app_env(redis_port, **settings))


@pytest.fixture(scope="session")
def module_cluster() -> Iterator[Cluster]:
    cluster = Cluster(module=True)
    yield cluster
    cluster.remove()


@pytest.fixture(scope="session")
def twin_cluster() -> Iterator[Cluster]:
    cluster = Cluster(module=False)
    yield cluster
    cluster.remove()


@pytest.fixture(params=BACKENDS)
def cluster(request: pytest.FixtureRequest) -> Cluster:
    return request.getfixturevalue(f"{request.param}_cluster")  # type: ignore[no-any-return]
