"""Real HTTP requests: FastAPI served by uvicorn, Flask served by Werkzeug's
threaded server, each app in its own process, on a server with the module
and on one without."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest
from conftest import App, scrape, serve_asgi, serve_wsgi
from servers import Server

from redis_exact_ratelimit import Limit, RateLimiter

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


def bind_sequence(app: App) -> list[httpx.Response]:
    """Alice twice, Bob once, Alice again, one tenant of 3 a minute, each
    user 3 a minute (apps' /bind/*)."""
    tenant = uuid.uuid4().hex

    def get(user: str) -> httpx.Response:
        return httpx.get(f"{app.url}/bind/ok", headers={"X-User": user, "X-Tenant": tenant})

    return [get("alice"), get("alice"), get("bob"), get("alice")]


def test_several_keys_name_the_policy_that_binds(full_app: App) -> None:
    """RateLimit names the key with the least remaining (ties: the first
    given), or the first that denied: Bob is allowed with the tenant at 0
    and his own quota at 2, and is told about the tenant."""
    responses = bind_sequence(full_app)
    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    assert [r.headers["RateLimit"].split(";")[:2] for r in responses] == [
        ['"user"', "r=2"],  # user 2, tenant 2: a tie, the first given
        ['"user"', "r=1"],
        ['"tenant"', "r=0"],  # Bob: user 2, tenant 0
        ['"tenant"', "r=0"],  # Alice: user 1, denied by the tenant
    ]
    assert all(r.headers["RateLimit-Policy"] == '"user";q=3;w=60, "tenant";q=3;w=60' for r in responses)


SHADOW_LINE = re.compile(
    r"^redis-ratelimit: shadow mode: shadow would have denied this request \(retry after \d+ ms\)$"
)


def shadow_sequence(app: App) -> tuple[str, list[httpx.Response]]:
    user = uuid.uuid4().hex
    with httpx.Client(base_url=app.url, headers={"X-User": user}) as http:
        return user, [http.get("/shadow/ok") for _ in range(5)]


def test_shadow_mode_records_but_never_denies(full_app: App, server: Server) -> None:
    """2 a minute in shadow mode: every request passes, none carries a
    RateLimit field or Retry-After; the 3 that would have been denied are
    logged, once each; the 2 allowed are recorded in Redis as usual."""
    user, responses = shadow_sequence(full_app)
    assert [r.status_code for r in responses] == [200] * 5
    fields = {"ratelimit", "ratelimit-policy", "retry-after"}
    assert not any(fields & {name.lower() for name in r.headers} for r in responses)
    lines = [line for line in full_app.output().splitlines() if "shadow mode" in line]
    assert len(lines) == 3 and all(SHADOW_LINE.match(line) for line in lines), lines
    assert not RateLimiter(server.client()).peek(f"shadow:{user}", Limit.per_minute(2)).allowed


def test_metrics_are_scraped_over_http(full_app: App) -> None:
    """Decisions by binding policy and outcome, errors by cause (none
    here, each shown at 0), the Redis round trips by operation; no key in
    any label."""
    bind_sequence(full_app)
    _, _ = shadow_sequence(full_app)
    metrics = scrape(full_app)

    def decisions(policy: str, outcome: str) -> float:
        return metrics.get(("ratelimit_decisions_total", (("outcome", outcome), ("policy", policy))), 0)

    assert (decisions("user", "allowed"), decisions("tenant", "allowed"), decisions("tenant", "denied")) == (2, 1, 1)
    assert (decisions("shadow", "allowed"), decisions("shadow", "shadow_denied")) == (2, 3)
    errors = {labels: value for (name, labels), value in metrics.items() if name == "ratelimit_errors_total"}
    assert len(errors) == 10 and set(errors.values()) == {0}
    count = "ratelimit_redis_duration_seconds_count"
    assert metrics[(count, (("operation", "mcheck"),))] == 4
    assert metrics[(count, (("operation", "check"),))] == 5
    labels = {value for (_, pairs), _ in metrics.items() for _, value in pairs}
    assert not any("alice" in value or "bob" in value for value in labels)


# The per-route token bucket of each framework: FastAPI's dependency, Flask's decorator.
PER_ROUTE_BUCKET = {"fastapi": "/gdep", "flask": "/gdec"}


def assert_bucket_fields(responses: list[httpx.Response], name: str, burst: int) -> None:
    """A bucket of ``burst`` tokens at 1 a minute, one token a request: r
    counts down, t is the minutes until the bucket is empty; the refusal
    carries Retry-After, the minute until a token has drained."""
    statuses = [r.status_code for r in responses]
    assert statuses == [200] * burst + [429] * (len(responses) - burst), statuses
    for i, response in enumerate(responses):
        assert response.headers["RateLimit-Policy"] == f'"{name}";q={burst};w={60 * burst}'
        fields = RATELIMIT.match(response.headers["RateLimit"])
        assert fields is not None and fields["name"] == name, response.headers["RateLimit"]
        used = min(i + 1, burst)
        assert int(fields["r"]) == burst - used and 60 * used - 1 <= int(fields["t"]) <= 60 * used
        if i < burst:
            assert "Retry-After" not in response.headers
        else:
            assert 59 <= int(response.headers["Retry-After"]) <= 60


def test_token_bucket_in_the_middleware_and_per_route(framework: str, full_app: App) -> None:
    """gcra=: 4 tokens at 1 a minute in the middleware, 2 per route (the
    policy named by the limit); X-Tokens feeds TOKENS: 0 asks, more than
    the bucket is refused without Retry-After; a failed handler is not
    refunded (a token bucket has none). Counted under the policy's name,
    the round trips as "gcra"."""
    with httpx.Client(base_url=full_app.url, headers={"X-User": uuid.uuid4().hex}) as http:
        assert_bucket_fields([http.get("/gmw/ok") for _ in range(6)], "gmw", 4)
        assert_bucket_fields([http.get(PER_ROUTE_BUCKET[framework]) for _ in range(3)], "bucket", 2)
    with httpx.Client(base_url=full_app.url, headers={"X-User": uuid.uuid4().hex}) as http:
        never = http.get("/gmw/ok", headers={"X-Tokens": "5"})
        assert never.status_code == 429 and "Retry-After" not in never.headers
        assert never.headers["RateLimit"] == '"gmw";r=4;t=0'
        asked = http.get("/gmw/ok", headers={"X-Tokens": "0"})
        assert asked.status_code == 200 and asked.headers["RateLimit"] == '"gmw";r=4;t=0'
        assert http.get("/gmw/boom", headers={"Connection": "close"}).status_code == 500
        weighed = http.get("/gmw/ok", headers={"X-Tokens": "2"})
        assert weighed.status_code == 200 and weighed.headers["RateLimit"].startswith('"gmw";r=1;')
        never = http.get(PER_ROUTE_BUCKET[framework], headers={"X-Tokens": "3"})
        assert never.status_code == 429 and "Retry-After" not in never.headers
    metrics = scrape(full_app)

    def decisions(policy: str, outcome: str) -> float:
        return metrics.get(("ratelimit_decisions_total", (("outcome", outcome), ("policy", policy))), 0)

    assert (decisions("gmw", "allowed"), decisions("gmw", "denied")) == (7, 3)
    assert (decisions("bucket", "allowed"), decisions("bucket", "denied")) == (2, 2)
    assert metrics[("ratelimit_redis_duration_seconds_count", (("operation", "gcra"),))] == 14
