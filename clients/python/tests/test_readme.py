"""The package README, as a new user reads it: its install and quick start
commands run as written in a copy of the repository's files (as a fresh
clone has them), every Python block passes mypy --strict as it stands, and
the blocks that show an example are that example, word for word."""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import EXAMPLES, HERE, App, app_env
from servers import REPO, Server, free_port

PACKAGE = EXAMPLES.parent
README = (PACKAGE / "README.md").read_text()


def section(title: str) -> str:
    """The text under a level-2 heading, up to the next one."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert match is not None, f"the README has no section '{title}'"
    return match.group(1)


def blocks(language: str, text: str = README) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", text, re.M | re.S)


def quoted(name: str) -> str:
    source = (EXAMPLES / name).read_text()
    match = re.search(r"# README:begin\n(.*?)\n*# README:end\n", source, re.S)
    assert match is not None, f"{name} has no README:begin/end markers"
    return match.group(1) + "\n"


@pytest.mark.parametrize("name", ["fastapi_app.py", "flask_app.py", "login_lockout.py"])
def test_the_readme_quotes_the_examples(name: str) -> None:
    assert quoted(name) in blocks("python")


def test_the_quick_start_app_is_at_most_ten_lines_of_code() -> None:
    (app,) = blocks("python", section("Quick start: FastAPI"))
    assert app == quoted("fastapi_app.py")
    code = [line for line in app.splitlines() if line.strip() and not line.startswith(("import ", "from "))]
    assert len(code) <= 10, code


def test_every_python_block_passes_mypy_strict(tmp_path: Path) -> None:
    """Each block is a program of its own: it imports and defines all it uses."""
    snippets = blocks("python")
    assert len(snippets) >= 10
    files = []
    for number, snippet in enumerate(snippets, start=1):
        path = tmp_path / f"readme_block_{number}.py"
        path.write_text(snippet)
        files.append(str(path))
    # The package's mypy settings (strict; Django ships no types); the
    # cache of make lint, run from the same directory.
    command = [sys.executable, "-m", "mypy", "--strict", "--config-file", str(PACKAGE / "pyproject.toml"), *files]
    checked = subprocess.run(command, cwd=HERE, capture_output=True, text=True, timeout=600)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def copy_of_the_repository(target: Path) -> Path:
    """The repository's files as a clone has them (tracked, and new ones
    not ignored: the tests also run before a commit)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def substitute(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"the README's command has {text.count(old)} times {old!r}"
    return text.replace(old, new)


def test_install_and_quick_start_as_written(tmp_path: Path, twin_server: Server) -> None:
    """From the root of a copy of the repository, one shell: the Install
    block (a venv, pip install, pip wheel), then the FastAPI quick start
    (its dependencies, then uvicorn serving the example), on a server
    without the module, as managed Redis is. Only the Redis URL and the
    HTTP port are the test's own."""
    # The example limits by client address: this test's requests only.
    twin_server.client().delete("default:127.0.0.1")
    root = copy_of_the_repository(tmp_path / "clone")
    (install,) = blocks("sh", section("Install"))
    (quick_start,) = blocks("sh", section("Quick start: FastAPI"))
    port = free_port()
    quick_start = substitute(quick_start, "redis://localhost:6379", f"redis://127.0.0.1:{twin_server.port}")
    quick_start = substitute(quick_start, "--port 8000", f"--port {port}")
    env = {name: value for name, value in os.environ.items() if name not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    script = f"set -e\ncd {root}\n{install}{quick_start}"
    app = App(["bash", "-c", script], port, env, wait=300)
    try:
        with httpx.Client(base_url=app.url) as http:
            responses = [http.get("/") for _ in range(11)]
    finally:
        app.stop()
    assert [r.status_code for r in responses] == [200] * 10 + [429]
    assert responses[0].json() == {"hello": "world"}
    assert responses[10].headers["RateLimit"].startswith('"default";r=0;t=')
    assert 55 <= int(responses[10].headers["Retry-After"]) <= 60
    # The installed package and the wheel, each with the twin built in.
    version = importlib.metadata.version("redis-exact-ratelimit")
    assert sorted(path.name for path in (root / "dist").glob("redis_exact_ratelimit-*.whl")) == [
        f"redis_exact_ratelimit-{version}-py3-none-any.whl"
    ]
    probe = "import redis_exact_ratelimit._base as b; print(len(b._script().sha1))"
    imported = subprocess.run([root / ".venv/bin/python", "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    assert imported.stdout == "40\n", imported.stderr


def test_the_token_bucket_section_as_written(tmp_path: Path, server: Server) -> None:
    """The GCRA section's client block, run on a test server (only its
    port substituted): the issue's example as the text after it says; its
    FastAPI block served by uvicorn answers a burst with the 429 shown."""
    text = section("Token bucket (GCRA)")
    client_block, app_block = blocks("python", text)
    namespace: dict[str, Any] = {}
    exec(substitute(client_block, "port=6379", f"port={server.port}"), namespace)
    user = uuid.uuid4().int % 10**9
    started = time.monotonic()
    answers = [namespace["may_upload"](user) for _ in range(20)]
    elapsed_ms = int((time.monotonic() - started) * 1000) + 1
    assert [(allowed, remaining) for allowed, remaining, _ in answers] == [
        *((True, left) for left in range(15, -1, -1)),
        *[(False, 0)] * 4,
    ]
    assert all(2000 - elapsed_ms <= wait <= 2000 for _, _, wait in answers[16:])
    assert namespace["may_upload"](user + 1, 17) == (False, 16, -1)

    (app_dir := tmp_path / "app").mkdir()
    (app_dir / "gcra_app.py").write_text(app_block)
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "--app-dir", str(app_dir), "gcra_app:app", "--port", str(port)]
    app = App([*command, "--log-level", "warning"], port, app_env(server.port))
    server.client().delete("api:127.0.0.1")

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=app.url) as http:
            return await asyncio.gather(*(http.get("/") for _ in range(40)))

    try:
        responses = asyncio.run(burst())
    finally:
        app.stop()
    assert sum(r.status_code == 200 for r in responses) >= 20
    (shown,) = re.findall(r"^```\n(HTTP/1\.1 .*?)^```$", text, re.M | re.S)
    status, *fields = shown.strip().splitlines()
    refused = [r for r in responses if r.status_code == 429]
    assert refused and status == "HTTP/1.1 429 Too Many Requests"
    for response in refused:
        assert [f"{name}: {response.headers[name]}" for name, _ in (f.split(": ", 1) for f in fields)] == fields
