// The token bucket (limiter.gcra, RATELIMIT.GCRA) on real servers: with
// every client build (ioredis 5 and 6, node-redis 5 and 6, RESP2 and RESP3)
// on a server with the module and on one without (the script twin by
// EVALSHA); the fallback under each failure policy with the server
// stopped; and every middleware with its headers over real HTTP.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { after, before, describe, test } from "node:test";
import express from "express";
import { Redis } from "ioredis";
import { expressRateLimit, MemoryLimiter, RateLimiter, RateLimitInputError, RateLimitReplyError } from "redis-ratelimit";
import { FRAMEWORKS, startApp } from "./app.mjs";
import { cli, clients, listen, recorder, startServer } from "./servers.mjs";

const WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value";
/** The issue's example: `15 30 60`, 30 a minute in bursts of 16. */
const PER_MINUTE = { maxBurst: 15, count: 30, periodMs: 60_000 };

const servers = {};
/**
 * Whether each server's backend follows the settlement rule (GCRA ... CHARGE
 * and REFUND, a debt kept above a smaller burst): the twin does from the
 * merge of branch twingcra2; before it, it caps a bucket at a full one.
 */
const settles = {};
before(async () => {
  [servers.module, servers.twin] = await Promise.all([startServer(), startServer({ module: false })]);
  for (const backend of ["module", "twin"]) {
    const redis = new Redis({ host: "127.0.0.1", port: servers[backend].port });
    try {
      // A first call on a fresh server, on shared cores: given time.
      await new RateLimiter(redis, { logger: recorder().logger, timeoutMs: 5000 }).gcraCharge("{probe}", PER_MINUTE, { tokens: 0 });
      settles[backend] = true;
    } catch (error) {
      if (!/unknown option/.test(error.message)) throw error;
      settles[backend] = false;
    } finally {
      redis.disconnect();
    }
  }
});
const OLD_TWIN =
  "the script twin on this branch caps a bucket at a full one and has no CHARGE/REFUND yet (branch twingcra2): run after the merge";
after(() => Promise.all(Object.values(servers).map((server) => server.stop())));

/** `calls` run one after another; resolves their answers and the milliseconds they took (the slack for waits). */
async function timed(calls) {
  const started = Date.now();
  const answers = [];
  for (const call of calls) answers.push(await call());
  return { answers, elapsed: Date.now() - started + 1 };
}

/** A wait answered `elapsed` ms or less after the moment it is exact for is at most that much shorter. */
function assertWait(actual, exact, elapsed, what) {
  assert.ok(actual <= exact && actual >= exact - elapsed, `${what}: ${actual} ms, expected ${exact} - [0, ${elapsed}]`);
}

/** The issue's example, 20 calls at once: 16 allowed (remaining 15..0), then limited with a wait of 2000 ms. */
async function issueExample(limiter, key) {
  const { answers, elapsed } = await timed(Array.from({ length: 20 }, () => () => limiter.gcra(key, PER_MINUTE)));
  for (const [i, answer] of answers.slice(0, 16).entries()) {
    assert.equal(answer.allowed, true, `call ${i + 1}`);
    assert.equal(answer.burst, 16);
    assert.equal(answer.remaining, 15 - i);
    assert.equal(answer.retryAfterMs, 0);
    assertWait(answer.resetAfterMs, 2000 * (i + 1), elapsed, `reset of call ${i + 1}`);
  }
  for (const [i, answer] of answers.slice(16).entries()) {
    assert.equal(answer.allowed, false, `call ${i + 17}`);
    assert.deepEqual([answer.burst, answer.remaining], [16, 0]);
    assertWait(answer.retryAfterMs, 2000, elapsed, `retry of call ${i + 17}`);
    assertWait(answer.resetAfterMs, 32_000, elapsed, `reset of call ${i + 17}`);
  }
  return answers;
}

const factories = await clients();
for (const [build, open] of Object.entries(factories)) {
  for (const backend of ["module", "twin"]) {
    describe(`${build} on the ${backend}`, () => {
      let client;
      let close;
      let limiter;
      before(async () => {
        ({ client, close } = await open(servers[backend].port));
        limiter = new RateLimiter(client, { logger: recorder().logger, prefix: `gcra:${build}:` });
      });
      after(() => close());

      test("the issue's example: 15 30 60 twenty times at once", async () => {
        const answers = await issueExample(limiter, "issue");
        assert.ok(answers.every((answer) => answer.source === "redis"));
        assert.equal(limiter.backend, backend);
        const ttl = Number(await cli(servers[backend].port, "PTTL", `gcra:${build}:issue`));
        assert.ok(ttl > 30_000 && ttl <= 32_000, `the key expires when its bucket is empty: PTTL ${ttl}`);
      });

      test("TOKENS 0 asks without charging or creating the key; more tokens than the bucket never fit (retry -1)", async () => {
        const limit = { maxBurst: 4, count: 10, periodMs: 1000 };
        assert.deepEqual(await limiter.gcra("ask", limit, { tokens: 0 }), {
          allowed: true,
          burst: 5,
          remaining: 5,
          retryAfterMs: 0,
          resetAfterMs: 0,
          source: "redis",
        });
        assert.equal((await cli(servers[backend].port, "EXISTS", `gcra:${build}:ask`)).trim(), "0");
        const { answers, elapsed } = await timed([
          () => limiter.gcra("ask", { ...limit, periodMs: 60_000, count: 1 }, { tokens: 3 }),
          () => limiter.gcra("ask", { ...limit, periodMs: 60_000, count: 1 }, { tokens: 0 }),
          () => limiter.gcra("ask", { ...limit, periodMs: 60_000, count: 1 }, { tokens: 6 }),
          () => limiter.gcra("ask", { ...limit, periodMs: 60_000, count: 1 }, { tokens: 3 }),
        ]);
        const [charged, asked, never, limited] = answers;
        assert.deepEqual([charged.allowed, charged.remaining], [true, 2]);
        assert.deepEqual([asked.allowed, asked.remaining, asked.retryAfterMs], [true, 2, 0]);
        assertWait(asked.resetAfterMs, 180_000, elapsed, "a question's reset");
        assert.deepEqual([never.allowed, never.burst, never.remaining, never.retryAfterMs], [false, 5, 2, -1]);
        assert.deepEqual([limited.allowed, limited.remaining], [false, 2]);
        assertWait(limited.retryAfterMs, 60_000, elapsed, "three tokens wait for one to drain");
      });

      test("a changed limit keeps the tokens held, even above a smaller burst, drained at the call's rate", async (t) => {
        if (!settles[backend]) return t.skip(OLD_TWIN);
        // contract/corpus.jsonl's gcra-changed-limit, at once.
        const { answers, elapsed } = await timed([
          () => limiter.gcra("changed", { maxBurst: 9, count: 10, periodMs: 60_000 }, { tokens: 8 }),
          () => limiter.gcra("changed", { maxBurst: 9, count: 20, periodMs: 60_000 }),
          () => limiter.gcra("changed", { maxBurst: 9, count: 10, periodMs: 30_000 }),
          () => limiter.gcra("changed", { maxBurst: 3, count: 10, periodMs: 60_000 }),
        ]);
        assert.deepEqual(
          answers.map((a) => [a.allowed, a.burst, a.remaining]),
          [
            [true, 10, 2],
            [true, 10, 1],
            [true, 10, 0],
            [false, 4, 0],
          ],
        );
        for (const [i, reset] of [48_000, 27_000, 30_000, 60_000].entries())
          assertWait(answers[i].resetAfterMs, reset, elapsed, `reset ${i}`);
        assertWait(answers[3].retryAfterMs, 42_000, elapsed, "a smaller burst leaves the key over full: it drains under first");
      });

      test("fractional periods go as the module reads them (1.25 s, 0.001 s)", async () => {
        const { answers, elapsed } = await timed([
          () => limiter.gcra("fraction", { maxBurst: 0, count: 1, periodMs: 1250 }),
          () => limiter.gcra("fraction", { maxBurst: 0, count: 1, periodMs: 1250 }),
        ]);
        assertWait(answers[0].resetAfterMs, 1250, elapsed, "one token of 1.25 s");
        assert.equal(answers[1].allowed, false);
        assertWait(answers[1].retryAfterMs, 1250, elapsed, "the next one");
        const fast = await limiter.gcra("fast", { maxBurst: 2, count: 3000, periodMs: 1 }, { tokens: 3 });
        assert.deepEqual([fast.allowed, fast.burst, fast.remaining, fast.resetAfterMs], [true, 3, 0, 1]);
      });

      test("a key of the other kind is WRONGTYPE, both ways: an error, never a policy", async () => {
        await limiter.check("window", { windowMs: 60_000, max: 5 });
        await assert.rejects(
          limiter.gcra("window", PER_MINUTE),
          (error) => error instanceof RateLimitReplyError && error.message === WRONGTYPE,
        );
        await limiter.gcra("bucket", PER_MINUTE);
        await assert.rejects(limiter.check("bucket", { windowMs: 60_000, max: 5 }), (error) => error instanceof RateLimitReplyError);
        await assert.rejects(limiter.gcra("x", { ...PER_MINUTE, maxBurst: -1 }), RateLimitInputError);
      });
    });
  }
}

test("the module and the twin answer the same sequence alike (waits within the time it took)", async (t) => {
  if (!settles.twin) return t.skip(OLD_TWIN);
  const { client: moduleClient, close: closeModule } = await factories["ioredis 6 (RESP3 default)"](servers.module.port);
  const { client: twinClient, close: closeTwin } = await factories["node-redis 6 RESP2"](servers.twin.port);
  try {
    const run = (limiter) =>
      timed(
        [
          [{ maxBurst: 5, count: 7, periodMs: 3_000 }, 2],
          [{ maxBurst: 5, count: 7, periodMs: 3_000 }, 3],
          [{ maxBurst: 5, count: 7, periodMs: 3_000 }, 0],
          [{ maxBurst: 5, count: 7, periodMs: 3_000 }, 2],
          [{ maxBurst: 2, count: 7, periodMs: 3_000 }, 1],
          [{ maxBurst: 8, count: 1, periodMs: 250 }, 4],
          [{ maxBurst: 8, count: 1, periodMs: 250 }, 9],
          [{ maxBurst: 8, count: 1, periodMs: 250 }, 10],
        ].map(
          ([limit, tokens]) =>
            () =>
              limiter.gcra("same", limit, { tokens }),
        ),
      );
    const module = await run(new RateLimiter(moduleClient, { logger: recorder().logger, prefix: "same:" }));
    const twin = await run(new RateLimiter(twinClient, { logger: recorder().logger, prefix: "same:" }));
    const slack = module.elapsed + twin.elapsed;
    for (const [i, expected] of module.answers.entries()) {
      const answer = twin.answers[i];
      assert.deepEqual(
        [answer.allowed, answer.burst, answer.remaining],
        [expected.allowed, expected.burst, expected.remaining],
        `answer ${i}`,
      );
      assert.ok(Math.abs(answer.retryAfterMs - expected.retryAfterMs) <= slack, `retry ${i}`);
      assert.ok(Math.abs(answer.resetAfterMs - expected.resetAfterMs) <= slack, `reset ${i}`);
    }
  } finally {
    await Promise.all([closeModule(), closeTwin()]);
  }
});

describe("Redis stopped: each failure policy", () => {
  let gone;
  let redis;
  const limiters = {};
  before(async () => {
    gone = await startServer();
    redis = new Redis({ host: "127.0.0.1", port: gone.port, maxRetriesPerRequest: 0, enableOfflineQueue: false });
    redis.on("error", () => {});
    await once(redis, "ready");
    const logger = recorder().logger;
    limiters.closed = new RateLimiter(redis, { logger, timeoutMs: 100 });
    limiters.open = new RateLimiter(redis, { logger, timeoutMs: 100, failOpen: true });
    limiters.fallback = new RateLimiter(redis, { logger, timeoutMs: 100, fallback: { share: 1 } });
    limiters.half = new RateLimiter(redis, { logger, timeoutMs: 100, fallback: { share: 0.5 } });
    for (const limiter of Object.values(limiters)) assert.equal((await limiter.gcra("before", PER_MINUTE)).source, "redis");
    await gone.stop();
    await once(redis, "error");
  });
  after(() => redis.disconnect());

  test("fail closed: denied, with the retry interval as the wait", async () => {
    assert.deepEqual(await limiters.closed.gcra("k", PER_MINUTE), {
      allowed: false,
      burst: 16,
      remaining: 0,
      retryAfterMs: 1000,
      resetAfterMs: 0,
      source: "failClosed",
    });
  });

  test("fail open: allowed, claiming the bucket's size less the request's tokens", async () => {
    assert.deepEqual(await limiters.open.gcra("k", PER_MINUTE, { tokens: 4 }), {
      allowed: true,
      burst: 16,
      remaining: 12,
      retryAfterMs: 0,
      resetAfterMs: 0,
      source: "failOpen",
    });
  });

  test("the fallback, share 1: the core's exact rules in this process", async () => {
    const answers = await issueExample(limiters.fallback, "k");
    assert.ok(answers.every((answer) => answer.source === "fallback"));
    const never = await limiters.fallback.gcra("k", PER_MINUTE, { tokens: 17 });
    assert.deepEqual([never.allowed, never.retryAfterMs, never.source], [false, -1, "fallback"]);
    // One keyspace: a sliding-window key there is WRONGTYPE to GCRA, as on a server.
    await limiters.fallback.check("window", { windowMs: 60_000, max: 5 });
    await assert.rejects(
      limiters.fallback.gcra("window", PER_MINUTE),
      (error) => error instanceof RateLimitReplyError && error.message === WRONGTYPE,
    );
    await assert.rejects(limiters.fallback.check("k", { windowMs: 60_000, max: 5 }), RateLimitReplyError);
  });

  test("the fallback, share 0.5: burst and count halved (bursts of 8, 15 a minute)", async () => {
    const answers = [];
    for (let i = 0; i < 9; i++) answers.push(await limiters.half.gcra("k", PER_MINUTE));
    assert.deepEqual(
      answers.map((a) => [a.allowed, a.burst, a.remaining]),
      [...Array.from({ length: 8 }, (_, i) => [true, 8, 7 - i]), [false, 8, 0]],
    );
    assert.ok(answers[8].retryAfterMs > 3900 && answers[8].retryAfterMs <= 4000, `one token of 15 a minute: ${answers[8].retryAfterMs}`);
  });
});

test("MemoryLimiter.gcra on an injected clock: the issue's example exactly, and the key gone when its bucket is empty", () => {
  let now = 1_764_000_000_000;
  const memory = new MemoryLimiter(() => now);
  const answers = Array.from({ length: 20 }, () => memory.gcra("user123", PER_MINUTE));
  assert.deepEqual(
    answers.map((a) => [a.allowed ? 0 : 1, a.burst, a.remaining, a.retryAfterMs, a.resetAfterMs]),
    [...Array.from({ length: 16 }, (_, k) => [0, 16, 15 - k, 0, 2000 * (k + 1)]), ...Array(4).fill([1, 16, 0, 2000, 32_000])],
  );
  assert.deepEqual(memory.gcraReply("user123", PER_MINUTE, { tokens: 0 }), [0, 16, 0, -1, 32]);
  assert.deepEqual(memory.gcraState("user123"), { at: now, periodMs: 60_000, level: 960_000, expiresAt: now + 32_000 });
  now += 32_001;
  assert.equal(memory.gcraState("user123"), undefined);
});

/** A GET with the headers a test reads. */
async function get(url, user, cost) {
  const headers = { "x-user": user };
  if (cost !== undefined) headers["x-cost"] = String(cost);
  const response = await fetch(url, { headers });
  await response.text();
  return {
    status: response.status,
    policy: response.headers.get("ratelimit-policy"),
    ratelimit: response.headers.get("ratelimit"),
    retryAfter: response.headers.get("retry-after"),
  };
}

/** 3 tokens, one back a minute: RateLimit-Policy "default";q=3;w=180. */
const BUCKET = { maxBurst: 2, count: 1, periodMs: 60_000 };
const POLICY = '"default";q=3;w=180';

for (const backend of ["module", "twin"]) {
  for (const framework of FRAMEWORKS) {
    describe(`the gcra middleware, ${framework} on the ${backend}`, () => {
      let app;
      before(async () => {
        app = await startApp(framework, servers[backend].port, {}, BUCKET);
      });
      after(() => app.close());

      test("3 tokens: r 2, 1, 0 with t the seconds until the bucket is empty, then 429 with Retry-After", async () => {
        const user = `three-${framework}`;
        const answers = [];
        for (let i = 0; i < 5; i++) answers.push(await get(`${app.url}/`, user));
        assert.deepEqual(answers.slice(0, 3), [
          { status: 200, policy: POLICY, ratelimit: '"default";r=2;t=60', retryAfter: null },
          { status: 200, policy: POLICY, ratelimit: '"default";r=1;t=120', retryAfter: null },
          { status: 200, policy: POLICY, ratelimit: '"default";r=0;t=180', retryAfter: null },
        ]);
        for (const refused of answers.slice(3)) {
          assert.deepEqual(refused, { status: 429, policy: POLICY, ratelimit: '"default";r=0;t=180', retryAfter: "60" });
        }
        assert.equal(app.limiter.backend, backend);
      });

      test("cost feeds TOKENS: 0 asks, more than the bucket is 429 without Retry-After; a failed request is not refunded", async () => {
        const user = `cost-${framework}`;
        assert.deepEqual(await get(`${app.url}/`, user, 0), {
          status: 200,
          policy: POLICY,
          ratelimit: '"default";r=3;t=0',
          retryAfter: null,
        });
        assert.deepEqual(await get(`${app.url}/`, user, 4), {
          status: 429,
          policy: POLICY,
          ratelimit: '"default";r=3;t=0',
          retryAfter: null,
        });
        assert.deepEqual(await get(`${app.url}/`, user, 2), {
          status: 200,
          policy: POLICY,
          ratelimit: '"default";r=1;t=120',
          retryAfter: null,
        });
        assert.equal((await get(`${app.url}/fail`, user)).status, 500);
        // A token bucket has no refund: the failed request's token stays charged.
        const after = await get(`${app.url}/`, user);
        assert.deepEqual([after.status, after.ratelimit, after.retryAfter], [429, '"default";r=0;t=180', "60"]);
      });

      test("50 concurrent requests for one user from two app processes admit exactly the bucket", async () => {
        const bucket = { maxBurst: 9, count: 1, periodMs: 600_000 };
        const apps = await Promise.all(
          [0, 1].map(async () => {
            const args = [new URL("./app.mjs", import.meta.url).pathname, framework, String(servers[backend].port), JSON.stringify(bucket)];
            const child = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "inherit"] });
            const [line] = await once(child.stdout, "data");
            return { url: line.toString().trim(), child };
          }),
        );
        try {
          const user = `concurrent-${framework}-${backend}`;
          const responses = await Promise.all(Array.from({ length: 50 }, (_, i) => get(`${apps[i % 2].url}/`, user)));
          assert.equal(responses.filter((r) => r.status === 200).length, 10);
          assert.equal(responses.filter((r) => r.status === 429).length, 40);
        } finally {
          for (const { child } of apps) child.kill("SIGKILL");
        }
      });
    });
  }
}

/** A metrics sink that keeps what it is told. */
function counted() {
  const seen = { decisions: [], errors: [], roundTrips: [] };
  return {
    seen,
    metrics: {
      decision: (policy, outcome) => seen.decisions.push(`${policy} ${outcome}`),
      error: (cause) => seen.errors.push(cause),
      roundTrip: (operation) => seen.roundTrips.push(operation),
    },
  };
}

test("the gcra middleware in shadow mode: decided and charged, never refused, no headers; a would-be refusal logged and counted", async (t) => {
  const { client, close } = await factories["ioredis 6 (RESP3 default)"](servers.module.port);
  t.after(close);
  const log = recorder();
  const { seen, metrics } = counted();
  const limiter = new RateLimiter(client, { logger: log.logger, metrics, prefix: "shadow:" });
  const app = express();
  app.use(
    expressRateLimit(limiter, {
      name: "trial",
      gcra: { maxBurst: 0, count: 1, periodMs: 60_000 },
      key: (req) => req.get("x-user"),
      shadow: true,
    }),
  );
  app.get("/", (_req, res) => res.send("ok"));
  const url = await listen(t, app);
  const answers = [await get(url, "eve"), await get(url, "eve")];
  assert.deepEqual(answers, Array(2).fill({ status: 200, policy: null, ratelimit: null, retryAfter: null }));
  const warnings = log.lines.filter((line) => line.level === "warn");
  assert.equal(warnings.length, 1);
  const ms = Number(
    warnings[0].message.match(/^redis-ratelimit: shadow mode: trial would have denied this request \(retry after (\d+) ms\)$/)?.[1],
  );
  assert.ok(ms > 59_000 && ms <= 60_000, `retry after ${ms}`);
  assert.deepEqual(seen.decisions, ["trial allowed", "trial shadow_denied"]);
  assert.deepEqual(seen.roundTrips, ["gcra", "gcra"]);
});

test("the gcra middleware while Redis is unreachable: 503 failing closed, served without headers failing open, the fallback's bucket with its headers", async (t) => {
  const gone = await startServer();
  const { client, close } = await factories["ioredis 6 (RESP3 default)"](gone.port);
  client.on("error", () => {});
  t.after(close);
  const app = async (options) => {
    const { seen, metrics } = counted();
    const limiter = new RateLimiter(client, { logger: recorder().logger, metrics, timeoutMs: 100, ...options });
    const served = express();
    served.use(expressRateLimit(limiter, { name: "down", gcra: { maxBurst: 0, count: 1, periodMs: 60_000 }, key: () => "k" }));
    served.get("/", (_req, res) => res.send("ok"));
    return { seen, url: await listen(t, served) };
  };
  const [closed, open, fallback] = await Promise.all([app({}), app({ failOpen: true }), app({ fallback: { share: 1 } })]);
  await gone.stop();
  await once(client, "error");
  assert.deepEqual(await get(closed.url, "x"), { status: 503, policy: null, ratelimit: null, retryAfter: "1" });
  assert.deepEqual(closed.seen.decisions, ["down fail_closed"]);
  assert.deepEqual(closed.seen.errors, ["connection"]);
  assert.deepEqual(await get(open.url, "x"), { status: 200, policy: null, ratelimit: null, retryAfter: null });
  assert.deepEqual(open.seen.decisions, ["down fail_open"]);
  const policy = '"down";q=1;w=60';
  assert.deepEqual(await get(fallback.url, "x"), { status: 200, policy, ratelimit: '"down";r=0;t=60', retryAfter: null });
  assert.deepEqual(await get(fallback.url, "x"), { status: 429, policy, ratelimit: '"down";r=0;t=60', retryAfter: "60" });
  assert.deepEqual(fallback.seen.decisions, ["down fallback_allowed", "down fallback_denied"]);
});

test("gcra is exclusive with limits and keys, and takes no blockMs or refundWhen", async () => {
  const limiter = new RateLimiter({ send: async () => [0, 1, 0, -1, 1], serverFor: () => "server" }, { logger: recorder().logger });
  const request = () => ({ headers: {}, socket: { remoteAddress: "10.0.0.1" } });
  const run = (options) =>
    new Promise((resolve, reject) => {
      const res = { statusCode: 200, headersSent: false, setHeader() {}, end: resolve, once() {} };
      expressRateLimit(limiter, options)(request(), res, (error) => (error ? reject(error) : resolve()));
    });
  const gcra = { maxBurst: 0, count: 1, periodMs: 1000 };
  await assert.rejects(run({ gcra, limits: { windowMs: 1000, max: 1 } }), /one of `limits` \(and `key`\), `keys`, or `gcra` \(and `key`\)/);
  await assert.rejects(run({ gcra, keys: () => [] }), /one of `limits`/);
  await assert.rejects(run({ gcra, blockMs: 1000 }), /has no block and no refund/);
  await assert.rejects(run({ gcra, refundWhen: () => true }), /has no block and no refund/);
  await assert.rejects(run({ gcra: { ...gcra, periodMs: 0.5 } }), RateLimitInputError);
  await run({ gcra });
});

test("the fallback's one keyspace: buckets and logs share the LRU cap (maxKeys)", () => {
  let now = 1_764_000_000_000;
  const memory = new MemoryLimiter(() => now, 2);
  memory.gcra("a", PER_MINUTE);
  memory.check("b", { windowMs: 60_000, max: 5 });
  now += 1;
  memory.gcra("a", PER_MINUTE, { tokens: 0 }); // a question is a use too: "b" is now the least recently used
  memory.gcra("c", PER_MINUTE);
  assert.equal(memory.size, 2);
  assert.equal(memory.state("b"), undefined, "the least recently used key was dropped");
  assert.equal(memory.gcraState("a")?.level, 60_000);
  assert.equal(memory.gcraState("c")?.level, 60_000);
});

test("a server whose module predates GCRA (RATELIMIT.PEEK answers) is an older module: an error, and the server stays on the module", async () => {
  class ReplyError extends Error {
    name = "ReplyError";
  }
  const sent = [];
  const connection = {
    send: async (_key, args) => {
      sent.push(args[0]);
      if (args[0] === "RATELIMIT.PEEK") return [1, 0, 0, 0];
      throw new ReplyError(`ERR unknown command '${args[0]}', with args beginning with: `);
    },
    serverFor: () => "old:6379",
  };
  const limiter = new RateLimiter(connection, { logger: recorder().logger });
  await assert.rejects(
    limiter.gcra("k", PER_MINUTE),
    (error) => error instanceof RateLimitReplyError && /^the server's RATELIMIT module is older than this call needs/.test(error.message),
  );
  assert.deepEqual(sent, ["RATELIMIT.GCRA", "RATELIMIT.PEEK"]);
  assert.equal(limiter.backend, "module");
});
