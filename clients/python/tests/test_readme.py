"""README.md quotes the examples that the HTTP tests serve, word for word."""

from __future__ import annotations

import re

from conftest import EXAMPLES

README = (EXAMPLES.parent / "README.md").read_text()


def quoted(name: str) -> str:
    source = (EXAMPLES / name).read_text()
    match = re.search(r"# README:begin\n(.*?)# README:end\n", source, re.S)
    assert match is not None, f"{name} has no README:begin/end markers"
    # ruff puts two blank lines between a function and the end marker.
    return match.group(1).rstrip("\n") + "\n"


def test_readme_quotes_the_fastapi_example() -> None:
    assert f"```python\n{quoted('fastapi_app.py')}```" in README


def test_readme_quotes_the_flask_example() -> None:
    assert f"```python\n{quoted('flask_app.py')}```" in README


def test_readme_quotes_the_login_lockout() -> None:
    assert f"```python\n{quoted('login_lockout.py')}```" in README
