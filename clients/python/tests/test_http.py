"""Real HTTP requests: FastAPI served by uvicorn, Flask served by Werkzeug's
threaded server, each app in its own process, on a server with the module
and on one without."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest
from conftest import App, serve_asgi, serve_wsgi
from servers import Server

Serve = Callable[..., App]
SERVERS: dict[str, Serve] = {"fastapi": serve_asgi, "flask": serve_wsgi}
README_APPS = {"fastapi": "fastapi_app:app", "flask": "flask_app:app"}
FULL_APPS = {"fastapi": "fastapi_full:app", "flask": "flask_full:app"}
# The per-route form of each framework: FastAPI's dependency, Flask's decorator.
PER_ROUTE = {"fastapi": "/dep", "flask": "/dec"}
PER_ROUTE_SEVERAL_KEYS = {"fastapi": "/depmulti", "flask": "/decmulti"}

RATELIMIT = re.compile(r'^"(?P<name>[^"]+)";r=(?P<r>\d+);t=(?P<t>\d+)$')


@pytest.fixture(params=["fastapi", "flask"])
def framework(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def full_app(framework: str, server: Server) -> Iterator[App]:
    app = SERVERS[framework](FULL_APPS[framework], server.port)
    yield app
    app.stop()


def assert_thirty_at_ten(responses: list[httpx.Response], name: str) -> None:
    """Exactly 10 x 200 then 20 x 429, with consistent IETF fields."""
    statuses = [r.status_code for r in responses]
    assert statuses == [200] * 10 + [429] * 20, statuses
    for i, response in enumerate(responses):
        assert response.headers["RateLimit-Policy"] == f'"{name}";q=10;w=60'
        fields = RATELIMIT.match(response.headers["RateLimit"])
        assert fields is not None and fields["name"] == name, response.headers["RateLimit"]
        if i < 10:
            assert int(fields["r"]) == 9 - i and 55 <= int(fields["t"]) <= 60
            assert "Retry-After" not in response.headers
        else:
            retry = int(response.headers["Retry-After"])
            assert int(fields["r"]) == 0 and 1 <= retry <= 60 and int(fields["t"]) == retry


def test_readme_apps_thirty_requests_at_ten(framework: str, server: Server) -> None:
    # The README apps key by client address: start from an empty server.
    server.client().flushall()
    app = SERVERS[framework](README_APPS[framework], server.port)
    try:
        with httpx.Client(base_url=app.url) as http:
            responses = [http.get("/") for _ in range(30)]
    finally:
        app.stop()
    assert_thirty_at_ten(responses, "default")
    assert responses[0].json() == {"hello": "world"}


def test_middleware_and_per_route_refund_a_failed_handler(framework: str, full_app: App) -> None:
    user = uuid.uuid4().hex
    with httpx.Client(base_url=full_app.url, headers={"X-User": user}) as http:
        assert http.get("/backend").status_code == 200
        for prefix, name in (("/mw", "mw"), (PER_ROUTE[framework], PER_ROUTE[framework][1:])):
            # Five failures cost nothing: all ten requests of the quota remain.
            # (uvicorn closes a connection whose app raised: one each.)
            close = {"Connection": "close"}
            failures = [http.get(f"{prefix}/boom", headers=close).status_code for _ in range(5)]
            assert failures == [500] * 5
            assert_thirty_at_ten([http.get(f"{prefix}/ok") for _ in range(30)], name)


@pytest.mark.parametrize(("path", "name"), [("/hooked", "hooked"), ("/mwhook/ok", "mwhook")])
def test_the_refusal_hook(full_app: App, path: str, name: str) -> None:
    """Per route (FastAPI dependency, Flask decorator) and in the middleware."""
    with httpx.Client(base_url=full_app.url, headers={"X-User": uuid.uuid4().hex}) as http:
        responses = [http.get(path) for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 429]
    body = responses[2].json()
    # FastAPI's HTTPException wraps the detail; the other answers do not.
    body = body.get("detail", body)
    assert body["error"] == "slow down" and body["retry_after_ms"] > 0
    assert responses[2].headers["RateLimit"].startswith(f'"{name}";r=0;')
    assert int(responses[2].headers["Retry-After"]) >= 1


def test_backend_is_visible(full_app: App, server: Server) -> None:
    with httpx.Client(base_url=full_app.url, headers={"X-User": uuid.uuid4().hex}) as http:
        http.get("/mw/ok")
        http.get("/mw/ok")
        assert http.get("/backend").json() == {"backend": "module" if server.module else "twin"}
    twin_said = full_app.output().count("using the Lua script twin")
    assert twin_said == (0 if server.module else 1)


def test_django_behind_the_wsgi_middleware(server: Server) -> None:
    app = serve_wsgi("django_app:application", server.port)
    try:
        with httpx.Client(base_url=app.url, headers={"X-User": uuid.uuid4().hex}) as http:
            assert [http.get("/boom").status_code for _ in range(5)] == [500] * 5
            assert_thirty_at_ten([http.get("/ok") for _ in range(30)], "django")
    finally:
        app.stop()


def test_middleware_over_several_keys(full_app: App) -> None:
    """User (3 a minute), IP (5) and tenant (100) decided together: a
    denial by one key charges none, names the key that denied in RateLimit,
    and carries the combined Retry-After; a failed handler is refunded in
    every key."""
    tenant = uuid.uuid4().hex

    def get(path: str, user: str, ip: str) -> httpx.Response:
        headers = {"X-Tenant": tenant, "X-User": user, "X-IP": ip, "Connection": "close"}
        return httpx.get(f"{full_app.url}{path}", headers=headers)

    assert [get("/multi/boom", "alice", "10.0.0.1").status_code for _ in range(4)] == [500] * 4
    alice = [get("/multi/ok", "alice", "10.0.0.1") for _ in range(4)]
    assert [r.status_code for r in alice] == [200, 200, 200, 429]
    policy = '"user";q=3;w=60, "ip";q=5;w=60, "tenant";q=100;w=60'
    assert all(r.headers["RateLimit-Policy"] == policy for r in alice)
    assert [r.headers["RateLimit"].split(";")[:2] for r in alice] == [
        ['"user"', "r=2"],
        ['"user"', "r=1"],
        ['"user"', "r=0"],
        ['"user"', "r=0"],
    ]
    assert 55 <= int(alice[3].headers["Retry-After"]) <= 60
    # Bob shares Alice's address, which has 2 left: the denial names the IP
    # and charges Bob nothing, as Alice's denial charged the IP nothing.
    bob = [get("/multi/ok", "bob", "10.0.0.1") for _ in range(3)]
    assert [r.status_code for r in bob] == [200, 200, 429]
    assert bob[2].headers["RateLimit"].startswith('"ip";r=0;') and int(bob[2].headers["Retry-After"]) >= 55
    assert [get("/multi/ok", "bob", "10.0.0.2").status_code for _ in range(2)] == [200, 429]


def test_per_route_over_several_keys(framework: str, full_app: App) -> None:
    """FastAPI's dependency and Flask's decorator with keys=: the user (2)
    and the address (4); a denial names its key and charges no key."""
    run = uuid.uuid4().hex
    path = PER_ROUTE_SEVERAL_KEYS[framework]
    with httpx.Client(base_url=full_app.url) as http:

        def get(user: str) -> httpx.Response:
            return http.get(path, headers={"X-User": f"{run}-{user}", "X-IP": run})

        alice = [get("alice") for _ in range(3)]
        others = [get(user) for user in ("bob", "carol", "dave")]
    assert [r.status_code for r in alice + others] == [200, 200, 429, 200, 200, 429]
    assert alice[2].headers["RateLimit"].startswith('"user";r=0;')
    # Alice's refusal charged the address nothing: two more users pass.
    assert others[2].headers["RateLimit"].startswith('"ip";r=0;')
    assert alice[0].headers["RateLimit-Policy"] == '"user";q=2;w=60, "ip";q=4;w=60'
    assert all(55 <= int(r.headers["Retry-After"]) <= 60 for r in (alice[2], others[2]))
