// What the middleware says and counts: with several keys, RateLimit names
// the key that binds (each key's own remaining, read in the same
// MULTI/EXEC as the decision), on the module and on the twin, with ioredis
// and node-redis; shadow mode decides and records but never refuses,
// logging and counting what it would have refused.
import assert from "node:assert/strict";
import { once } from "node:events";
import { after, before, describe, test } from "node:test";
import express from "express";
import { expressRateLimit, RateLimiter } from "redis-ratelimit";
import { cli, clients, listen, recorder, startServer } from "./servers.mjs";

const servers = {};
before(async () => {
  [servers.module, servers.twin] = await Promise.all([startServer(), startServer({ module: false })]);
});
after(() => Promise.all(Object.values(servers).map((server) => server.stop())));

/** A metrics sink that keeps what it is told. */
function counted() {
  const seen = { decisions: [], errors: [], roundTrips: [] };
  return {
    seen,
    metrics: {
      decision: (policy, outcome) => seen.decisions.push(`${policy} ${outcome}`),
      error: (cause) => seen.errors.push(cause),
      roundTrip: (operation, seconds) => {
        assert.ok(seconds >= 0 && seconds < 5, `${operation} took ${seconds} s`);
        seen.roundTrips.push(operation);
      },
    },
  };
}

async function get(url, user) {
  const response = await fetch(url, { headers: { "x-user": user } });
  await response.text();
  return { status: response.status, ratelimit: response.headers.get("ratelimit"), retryAfter: response.headers.get("retry-after") };
}

const factories = await clients();
const BUILDS = ["ioredis 6 (RESP3 default)", "node-redis 6 RESP2"];
for (const build of BUILDS) {
  for (const backend of ["module", "twin"]) {
    describe(`${build} on the ${backend}`, () => {
      test("several keys: RateLimit names the key with the least remaining (the first on a tie); RateLimit-Policy lists every key", async (t) => {
        const { client, close } = await factories[build](servers[backend].port);
        t.after(close);
        const log = recorder();
        const { seen, metrics } = counted();
        const limiter = new RateLimiter(client, { logger: log.logger, metrics, prefix: `binding:${build}:` });
        const app = express();
        app.use(
          expressRateLimit(limiter, {
            name: "api",
            keys: (req) => [
              { name: "user", key: `{t}:user:${req.get("x-user")}`, limits: { windowMs: 60_000, max: 3 } },
              { name: "tenant", key: "{t}:tenant", limits: { windowMs: 60_000, max: 4 } },
            ],
          }),
        );
        app.get("/", (_req, res) => res.send("ok"));
        const url = await listen(t, app);
        assert.deepEqual(await get(url, "bob"), { status: 200, ratelimit: '"user";r=2;t=60', retryAfter: null }, "user 2, tenant 3");
        assert.deepEqual(await get(url, "alice"), { status: 200, ratelimit: '"user";r=2;t=60', retryAfter: null }, "a tie: the first");
        if (backend === "twin") {
          // The decision and its PEEKs go in one MULTI/EXEC by EVALSHA: after a NOSCRIPT, once more by EVAL.
          await cli(servers.twin.port, "SCRIPT", "FLUSH");
        }
        assert.deepEqual(await get(url, "alice"), { status: 200, ratelimit: '"user";r=1;t=60', retryAfter: null }, "a tie: the first");
        // Bob is allowed with his quota at 1 and the tenant at 0: the tenant binds.
        assert.deepEqual(await get(url, "bob"), { status: 200, ratelimit: '"tenant";r=0;t=60', retryAfter: null });
        const refused = await get(url, "bob");
        assert.equal(refused.status, 429);
        assert.match(refused.ratelimit, /^"tenant";r=0;t=\d+$/);
        assert.deepEqual(seen.decisions, ["user allowed", "user allowed", "user allowed", "tenant allowed", "tenant denied"]);
        assert.deepEqual(seen.errors, []);
        assert.ok(seen.roundTrips.every((operation) => operation === "mcheck"));
        assert.equal(limiter.backend, backend);
      });

      test("an outage met inside the MULTI/EXEC (OOM) takes the failure policy, named by the server's own text", async (t) => {
        const { client, close } = await factories[build](servers[backend].port);
        t.after(close);
        const log = recorder();
        const limiter = new RateLimiter(client, { logger: log.logger, prefix: `oom:${build}:` });
        const keys = [
          { key: "{o}:user", limits: { windowMs: 60_000, max: 5 } },
          { key: "{o}:tenant", limits: { windowMs: 60_000, max: 5 } },
        ];
        assert.equal((await limiter.checkAll(keys, { perKeyRemaining: true })).source, "redis");
        await cli(servers[backend].port, "CONFIG", "SET", "maxmemory", "1");
        t.after(() => cli(servers[backend].port, "CONFIG", "SET", "maxmemory", "0"));
        assert.equal((await limiter.checkAll(keys, { perKeyRemaining: true })).source, "failClosed");
        assert.match(
          log.lines.at(-1).message,
          /is unavailable \(OOM command not allowed when used memory > 'maxmemory'\.\); failing closed/,
        );
      });
    });
  }
}

test("shadow mode: decided and recorded, never refused, no rate-limit headers; each would-be refusal logged and counted", async (t) => {
  const { client, close } = await factories["ioredis 6 (RESP3 default)"](servers.module.port);
  t.after(close);
  const log = recorder();
  const { seen, metrics } = counted();
  const limiter = new RateLimiter(client, { logger: log.logger, metrics });
  const limits = { windowMs: 60_000, max: 2 };
  const app = express();
  app.use(expressRateLimit(limiter, { name: "trial", limits, key: (req) => req.get("x-user"), shadow: true }));
  app.get("/", (_req, res) => res.send("ok"));
  const url = await listen(t, app);
  const answers = [];
  for (let i = 0; i < 4; i++) answers.push(await get(url, "eve"));
  assert.deepEqual(answers, Array(4).fill({ status: 200, ratelimit: null, retryAfter: null }));
  assert.equal((await limiter.peek("trial:eve", limits)).remaining, 0, "the allowed requests were recorded");
  const warnings = log.lines.filter((line) => line.level === "warn");
  assert.equal(warnings.length, 2);
  for (const line of warnings) {
    assert.match(line.message, /^redis-ratelimit: shadow mode: trial would have denied this request \(retry after \d+ ms\)$/);
    const ms = Number(line.message.match(/after (\d+) ms/)[1]);
    assert.ok(ms > 59_000 && ms <= 60_000, `retry after ${ms}`);
  }
  assert.deepEqual(seen.decisions, ["trial allowed", "trial allowed", "trial shadow_denied", "trial shadow_denied"]);
});

test("the decisions counted while Redis is unreachable: fail_closed, fail_open, fallback_allowed and fallback_denied; errors by cause", async (t) => {
  const gone = await startServer();
  const { client, close } = await factories["ioredis 6 (RESP3 default)"](gone.port);
  client.on("error", () => {});
  t.after(close);
  /** An app limited under `options`, made while Redis answers (as an app starts). */
  const app = async (options) => {
    const { seen, metrics } = counted();
    const limiter = new RateLimiter(client, { logger: recorder().logger, metrics, timeoutMs: 100, ...options });
    const served = express();
    served.use(expressRateLimit(limiter, { name: "down", limits: { windowMs: 60_000, max: 1 }, key: () => "k" }));
    served.get("/", (_req, res) => res.send("ok"));
    const url = await listen(t, served);
    const statuses = async () => [(await get(url, "x")).status, (await get(url, "x")).status];
    return { seen, statuses };
  };
  const [closed, open, fallback] = await Promise.all([app({}), app({ failOpen: true }), app({ fallback: { share: 1 } })]);
  await gone.stop();
  // Once the client has met the stopped server (else a call races its noticing the close).
  await once(client, "error");
  assert.deepEqual(await closed.statuses(), [503, 503]);
  assert.deepEqual(closed.seen.decisions, ["down fail_closed", "down fail_closed"]);
  // One round trip tried, then skipped while Redis is marked down.
  assert.deepEqual(closed.seen.errors, ["connection"]);
  assert.deepEqual(await open.statuses(), [200, 200]);
  assert.deepEqual(open.seen.decisions, ["down fail_open", "down fail_open"]);
  assert.deepEqual(await fallback.statuses(), [200, 429]);
  assert.deepEqual(fallback.seen.decisions, ["down fallback_allowed", "down fallback_denied"]);
});
