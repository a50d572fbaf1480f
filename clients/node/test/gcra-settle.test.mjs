// Token budgets over a token bucket (issue 27): reserveGcra, settle by
// RATELIMIT.GCRA ... CHARGE (past full: a debt later requests wait out) or
// REFUND, and gcraCharge/gcraRefund of one's own. On the module and on the
// twin, with every client build (ioredis 5 and 6, node-redis 5 and 6, RESP2
// and RESP3); a denied reservation settling to nothing, a handle settled
// twice. Redis unreachable during a settlement (retried, then logged with
// its amount; back in time: recorded once; the fallback), an answer after
// its timeout (a second run undone), the fallback's exact rule on an
// injected clock, and the middleware's `gcra` with `settle` (Express and
// node:http; Fastify and Fetch over a streamed body settled at its end).
//
// A twin without GCRA's CHARGE and REFUND (before branch twingcra2, merged
// here) would skip the tests that settle on the twin, saying so.
import assert from "node:assert/strict";
import { Readable } from "node:stream";
import { after, before, describe, test } from "node:test";
import express from "express";
import Fastify from "fastify";
import { Redis } from "ioredis";
import {
  expressRateLimit,
  fastifyRateLimit,
  fetchRateLimit,
  MemoryLimiter,
  RateLimiter,
  RateLimitInputError,
  RateLimitUnavailableError,
  withRateLimit,
} from "redis-ratelimit";
import { clients, freePort, listen, recorder, startServer } from "./servers.mjs";

/** 1 token a second in bursts of 4: contract/corpus.jsonl's gcra-settle. */
const BUCKET = { maxBurst: 3, count: 1, periodMs: 1000 };

const servers = {};
/** Whether each server's backend settles a bucket (the twin before the merge of twingcra2 does not). */
const settles = {};
before(async () => {
  [servers.module, servers.twin] = await Promise.all([startServer(), startServer({ module: false })]);
  for (const backend of ["module", "twin"]) {
    const redis = new Redis({ host: "127.0.0.1", port: servers[backend].port });
    try {
      // A first call on a fresh server, on shared cores: given time.
      await new RateLimiter(redis, { logger: recorder().logger, timeoutMs: 5000 }).gcraCharge("{probe}", BUCKET, { tokens: 0 });
      settles[backend] = true;
    } catch (error) {
      if (!/unknown option/.test(error.message)) throw error;
      settles[backend] = false;
    } finally {
      redis.disconnect();
    }
  }
});
after(() => Promise.all(Object.values(servers).map((server) => server.stop())));

const OLD_TWIN = "the script twin on this branch has no GCRA CHARGE/REFUND yet (twin/ratelimit.lua, branch twingcra2): run after the merge";

/** A wait answered up to `slack` ms after the moment it is exact for. */
function assertWait(actual, exact, slack, what) {
  assert.ok(actual <= exact && actual >= exact - slack, `${what}: ${actual} ms, expected ${exact} - [0, ${slack}]`);
}

const factories = await clients();
for (const [build, open] of Object.entries(factories)) {
  for (const backend of ["module", "twin"]) {
    test(`reserveGcra and settle, gcraCharge and gcraRefund, ${build} on the ${backend}`, async (t) => {
      if (!settles[backend]) return t.skip(OLD_TWIN);
      const { client, close } = await open(servers[backend].port);
      t.after(close);
      const limiter = new RateLimiter(client, { logger: recorder().logger, prefix: `gs:${build}:` });
      const started = Date.now();
      const slack = () => Date.now() - started + 1;

      // More than the estimate: charged past full, never limited; the next requests wait the debt out.
      const reservation = await limiter.reserveGcra("g", BUCKET, { estimate: 2 });
      assert.deepEqual([reservation.allowed, reservation.burst, reservation.remaining, reservation.source], [true, 4, 2, "redis"]);
      assert.deepEqual([reservation.handle.keys, reservation.handle.estimate, reservation.handle.settled], [["g"], 2, false]);
      const settled = await limiter.settle(reservation.handle, 7);
      assert.deepEqual(
        { ...settled, bucket: { ...settled.bucket, retryAfterMs: 0, resetAfterMs: 0 } },
        {
          difference: 5,
          action: "charge",
          source: "redis",
          refunded: [],
          bucket: { over: 3, burst: 4, remaining: 0, retryAfterMs: 0, resetAfterMs: 0, source: "redis" },
        },
      );
      assertWait(settled.bucket.retryAfterMs, 4000, slack(), "until one token fits");
      assertWait(settled.bucket.resetAfterMs, 7000, slack(), "until empty");
      assert.equal(reservation.handle.settled, true);
      await assert.rejects(
        limiter.settle(reservation.handle, 7),
        (error) => error instanceof RateLimitInputError && /already settled/.test(error.message),
      );
      const waiting = await limiter.gcra("g", BUCKET);
      assert.deepEqual([waiting.allowed, waiting.remaining], [false, 0]);
      assertWait(waiting.retryAfterMs, 4000, slack(), "a debt drains before a request fits");
      // A denied reservation recorded nothing: it settles to nothing.
      const denied = await limiter.reserveGcra("g", BUCKET, { estimate: 1 });
      assert.equal(denied.allowed, false);
      assert.deepEqual(await limiter.settle(denied.handle, 4), { difference: 3, action: "none", source: "none", refunded: [] });

      // Less than the estimate: the rest refunded.
      const full = await limiter.reserveGcra("r", BUCKET, { estimate: 4 });
      assert.deepEqual([full.allowed, full.remaining], [true, 0]);
      const refunded = await limiter.settle(full.handle, 1);
      assert.deepEqual(
        [refunded.difference, refunded.action, refunded.source, refunded.refunded, refunded.charged],
        [-3, "refund", "redis", [], undefined],
      );
      assert.deepEqual([refunded.bucket.over, refunded.bucket.remaining, refunded.bucket.retryAfterMs], [0, 3, 0]);
      assertWait(refunded.bucket.resetAfterMs, 1000, slack(), "one token left");
      const exact = await limiter.reserveGcra("r", BUCKET, { estimate: 1 });
      assert.deepEqual(await limiter.settle(exact.handle, 1), { difference: 0, action: "none", source: "none", refunded: [] });

      // Settlements of one's own: a refund past what is held empties (and deletes) the key; TOKENS 0 changes nothing.
      const emptied = await limiter.gcraRefund("r", BUCKET, { tokens: 10 });
      assert.deepEqual(emptied, { over: 0, burst: 4, remaining: 4, retryAfterMs: 0, resetAfterMs: 0, source: "redis" });
      assert.deepEqual(await limiter.gcraCharge("none", BUCKET, { tokens: 0 }), emptied);
      assert.deepEqual(await limiter.gcraRefund("none", BUCKET), emptied);
      const charged = await limiter.gcraCharge("c", BUCKET, { tokens: 6 });
      assert.deepEqual([charged.over, charged.remaining], [2, 0]);
      const back = await limiter.gcraRefund("c", BUCKET, { tokens: 3 });
      assert.deepEqual([back.over, back.remaining], [0, 1]);
      assertWait(back.resetAfterMs, 3000, slack(), "three tokens left");
      await assert.rejects(limiter.gcraCharge("c", BUCKET, { tokens: 9e15 }), /would hold more than 9000000000000000 token-milliseconds/);
      // A log is no bucket.
      await limiter.check("log", { windowMs: 1000, max: 5 });
      await assert.rejects(limiter.gcraCharge("log", BUCKET), /WRONGTYPE/);
    });
  }
}

test("input: an estimate above the bucket, an actual above 9e15, no estimate", async (t) => {
  const redis = new Redis({ host: "127.0.0.1", port: servers.module.port });
  t.after(() => redis.disconnect());
  const limiter = new RateLimiter(redis, { logger: recorder().logger, prefix: "gsinput:" });
  await assert.rejects(limiter.reserveGcra("k", BUCKET, { estimate: 5 }), /estimate must be an integer from 1 to 4/);
  await assert.rejects(limiter.reserveGcra("k", BUCKET, {}), /reserveGcra needs \{ estimate \}/);
  await assert.rejects(limiter.reserveGcra("k", { ...BUCKET, count: 0 }, { estimate: 1 }), RateLimitInputError);
  await assert.rejects(limiter.gcraCharge("k", BUCKET, { tokens: -1 }), RateLimitInputError);
  const { handle } = await limiter.reserveGcra("k", BUCKET, { estimate: 1 });
  await assert.rejects(limiter.settle(handle, 9e15 + 2), /actual must be an integer from 0 to 9000000000000000/);
  assert.equal(handle.settled, false);
  assert.equal((await limiter.settle(handle, 0)).action, "refund");
});

class ReplyError extends Error {
  name = "ReplyError";
}

/** A Connection over ioredis that fails the first `failures` GCRA settlements (CHARGE or REFUND) as a refused connection would. */
function flaky(redis, failures) {
  const seen = { failed: 0 };
  return {
    seen,
    connection: {
      send: async (_key, args) => {
        if (args[0] === "RATELIMIT.GCRA" && /^(CHARGE|REFUND)$/.test(args.at(-1)) && seen.failed < failures) {
          seen.failed += 1;
          throw Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:1"), { code: "ECONNREFUSED" });
        }
        return redis.call(...args).catch((error) => {
          throw new ReplyError(error.message);
        });
      },
      serverFor: () => "flaky:6379",
    },
  };
}

/** What a bucket holds now, in whole tokens rounded up, read with TOKENS 0 (remaining of a 1000-token bucket of the same rate). */
async function held(limiter, key) {
  const { remaining } = await limiter.gcra(key, { ...BUCKET, maxBurst: 999 }, { tokens: 0 });
  return 1000 - remaining;
}

describe("Redis unreachable during a token bucket settlement", () => {
  test("retried within settleRetryMs, then logged with its amount and rejected; the reservation stands", async (t) => {
    const redis = new Redis({ host: "127.0.0.1", port: servers.module.port });
    t.after(() => redis.disconnect());
    const { seen, connection } = flaky(redis, 1000);
    const log = recorder();
    const limiter = new RateLimiter(connection, { logger: log.logger, prefix: "gsdown:", settleRetryMs: 300 });
    const { handle } = await limiter.reserveGcra("acme", BUCKET, { estimate: 2 });
    await assert.rejects(
      limiter.settle(handle, 5),
      (error) =>
        error instanceof RateLimitUnavailableError &&
        /\(charge of 3 units\) could not reach Redis within 300 ms \(ECONNREFUSED\)/.test(error.message),
    );
    assert.ok(seen.failed >= 3, `${seen.failed} attempts`);
    const lost = log.lines.filter((line) => line.level === "error" && line.message.includes("a settlement on"));
    assert.deepEqual(
      lost.map((line) => line.message),
      [
        "redis-ratelimit: a settlement on gsdown:acme (charge of 3 units) could not reach Redis within 300 ms (ECONNREFUSED); it was not recorded",
      ],
    );
    assert.deepEqual(lost[0].details, { keys: "gsdown:acme", action: "charge", units: "3", ms: "300", cause: "ECONNREFUSED" });
    assert.equal(await held(new RateLimiter(redis, { logger: recorder().logger }), "gsdown:acme"), 2, "the reservation stands");
  });

  test("back within settleRetryMs: recorded once", async (t) => {
    const redis = new Redis({ host: "127.0.0.1", port: servers.module.port });
    t.after(() => redis.disconnect());
    const { seen, connection } = flaky(redis, 2);
    const log = recorder();
    const limiter = new RateLimiter(connection, { logger: log.logger, prefix: "gsback:" });
    const { handle } = await limiter.reserveGcra("acme", BUCKET, { estimate: 4 });
    const settled = await limiter.settle(handle, 1);
    assert.deepEqual([settled.action, settled.source, settled.bucket.remaining], ["refund", "redis", 3]);
    assert.equal(seen.failed, 2);
    assert.equal(await held(limiter, "acme"), 1);
    assert.ok(!log.lines.some((line) => /a settlement on/.test(line.message)));
  });

  test("the fallback: a reservation made there is settled there; one whose settlement cannot reach Redis goes there, logged", async (t) => {
    const port = await freePort();
    const dead = new Redis({ host: "127.0.0.1", port, maxRetriesPerRequest: 0, enableOfflineQueue: false, lazyConnect: true });
    dead.on("error", () => {});
    t.after(() => dead.disconnect());
    const log = recorder();
    const limiter = new RateLimiter(dead, { logger: log.logger, fallback: { share: 1 }, settleRetryMs: 100 });
    const reservation = await limiter.reserveGcra("acme", BUCKET, { estimate: 2 });
    assert.deepEqual([reservation.allowed, reservation.remaining, reservation.source], [true, 2, "fallback"]);
    const settled = await limiter.settle(reservation.handle, 6);
    assert.deepEqual(
      [settled.action, settled.source, settled.bucket.over, settled.bucket.remaining, settled.bucket.source],
      ["charge", "fallback", 2, 0, "fallback"],
    );
    assert.equal((await limiter.gcra("acme", BUCKET)).allowed, false, "a debt in the fallback: limited");
    assert.ok(!log.lines.some((line) => /a settlement on/.test(line.message)), "a fallback settlement is no loss");
    assert.equal((await limiter.gcraRefund("acme", BUCKET, { tokens: 6 })).source, "fallback");

    const redis = new Redis({ host: "127.0.0.1", port: servers.module.port });
    t.after(() => redis.disconnect());
    const { connection } = flaky(redis, 1000);
    const flakyLimiter = new RateLimiter(connection, { logger: log.logger, fallback: { share: 1 }, settleRetryMs: 100, prefix: "gsfb:" });
    const { handle } = await flakyLimiter.reserveGcra("acme", BUCKET, { estimate: 3 });
    const refunded = await flakyLimiter.settle(handle, 0);
    assert.deepEqual([refunded.action, refunded.source, refunded.bucket.source], ["refund", "fallback", "fallback"]);
    assert.deepEqual(
      log.lines.filter((line) => line.message.includes("a settlement on")).map(({ level, message }) => ({ level, message })),
      [
        {
          level: "warn",
          message:
            "redis-ratelimit: a settlement on gsfb:acme (refund of 3 units) could not reach Redis within 100 ms (ECONNREFUSED); it was recorded in this process's fallback only",
        },
      ],
    );
    // gcraCharge without a fallback while Redis is unreachable: rejected, nothing recorded.
    await assert.rejects(new RateLimiter(dead, { logger: recorder().logger }).gcraCharge("acme", BUCKET), RateLimitUnavailableError);
  });

  test("failOpen and failClosed reservations recorded nothing: they settle to nothing", async (t) => {
    const port = await freePort();
    const dead = new Redis({ host: "127.0.0.1", port, maxRetriesPerRequest: 0, enableOfflineQueue: false, lazyConnect: true });
    dead.on("error", () => {});
    t.after(() => dead.disconnect());
    for (const failOpen of [true, false]) {
      const limiter = new RateLimiter(dead, { logger: recorder().logger, failOpen });
      const { handle, source } = await limiter.reserveGcra("acme", BUCKET, { estimate: 2 });
      assert.equal(source, failOpen ? "failOpen" : "failClosed");
      assert.deepEqual(await limiter.settle(handle, 4), { difference: 2, action: "none", source: "none", refunded: [] });
    }
  });
});

const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

test("a settlement answered after another try ran: the second is undone (a charge refunded), logged", async () => {
  const sent = [];
  let settlements = 0;
  const connection = {
    send: async (_key, args) => {
      sent.push(args.join(" "));
      if (args.at(-1) === "MS") return [0, 4, 2, -1, 2000];
      settlements += 1;
      if (settlements === 1) await pause(400);
      return args.at(-1) === "CHARGE" ? [1, 4, 0, 2000, 5000] : [0, 4, 1, -1, 3000];
    },
    serverFor: () => "slow:6379",
  };
  const log = recorder();
  const limiter = new RateLimiter(connection, { logger: log.logger, timeoutMs: 100 });
  const { handle } = await limiter.reserveGcra("k", BUCKET, { estimate: 2 });
  const settled = await limiter.settle(handle, 5);
  assert.deepEqual(settled.bucket, { over: 1, burst: 4, remaining: 0, retryAfterMs: 2000, resetAfterMs: 5000, source: "redis" });
  await pause(400);
  assert.deepEqual(sent, [
    "RATELIMIT.GCRA k 3 1 1 TOKENS 2 MS",
    "RATELIMIT.GCRA k 3 1 1 TOKENS 3 MS CHARGE",
    "RATELIMIT.GCRA k 3 1 1 TOKENS 3 MS CHARGE",
    "RATELIMIT.GCRA k 3 1 1 TOKENS 3 MS REFUND",
  ]);
  assert.ok(
    log.lines.some(
      (line) =>
        line.level === "warn" &&
        line.message === "redis-ratelimit: a settlement on k was answered after its timeout and ran twice; the second was undone",
    ),
  );
});

test("MemoryLimiter.gcraCharge and gcraRefund on an injected clock: a debt persists, drains, and a refund to empty deletes the key", () => {
  let clock = 1_700_000_000_000;
  const memory = new MemoryLimiter(() => clock);
  assert.equal(memory.gcra("g", BUCKET, { tokens: 2 }).remaining, 2);
  assert.deepEqual(memory.gcraCharge("g", BUCKET, { tokens: 5 }), {
    over: 3,
    burst: 4,
    remaining: 0,
    retryAfterMs: 4000,
    resetAfterMs: 7000,
  });
  assert.deepEqual(memory.gcraState("g"), { at: clock, periodMs: 1000, level: 7000, expiresAt: clock + 7000 });
  // A smaller burst does not cap it: the debt drains first.
  assert.deepEqual(memory.gcra("g", { ...BUCKET, maxBurst: 1 }), {
    allowed: false,
    burst: 2,
    remaining: 0,
    retryAfterMs: 6000,
    resetAfterMs: 7000,
  });
  clock += 3999;
  assert.deepEqual(memory.gcra("g", BUCKET), { allowed: false, burst: 4, remaining: 0, retryAfterMs: 1, resetAfterMs: 3001 });
  clock += 1;
  assert.equal(memory.gcra("g", BUCKET).allowed, true);
  assert.deepEqual(memory.gcraRefund("g", BUCKET, { tokens: 2 }), { over: 0, burst: 4, remaining: 2, retryAfterMs: 0, resetAfterMs: 2000 });
  assert.deepEqual(memory.gcraRefund("g", BUCKET, { tokens: 9 }), { over: 0, burst: 4, remaining: 4, retryAfterMs: 0, resetAfterMs: 0 });
  assert.equal(memory.gcraState("g"), undefined);
  assert.throws(() => memory.gcraCharge("j", { maxBurst: 0, count: 1, periodMs: 1 }, { tokens: 9e15 + 1 }), RateLimitInputError);
  assert.throws(() => memory.gcraReply("j", BUCKET, { charge: true, refund: true }), RateLimitInputError);
});

/** A handler that answers after `x-used` is known: res.locals.used (Express) or the request's header (node:http). */
const frameworks = {
  express(limiter) {
    const app = express();
    app.use(
      expressRateLimit(limiter, {
        name: "bucket",
        gcra: BUCKET,
        key: (req) => req.get("x-user"),
        cost: (req) => Number(req.get("x-estimate")),
        settle: (_req, res) => res.locals.used,
      }),
    );
    app.get("/fail", (_req, res) => res.status(500).end());
    app.get("/", (req, res) => {
      res.locals.used = Number(req.get("x-used"));
      res.end("ok");
    });
    return app;
  },
  http(limiter) {
    return withRateLimit(
      limiter,
      {
        name: "bucket",
        gcra: BUCKET,
        key: (req) => req.headers["x-user"],
        cost: (req) => Number(req.headers["x-estimate"]),
        settle: (req) => Number(req.headers["x-used"]),
      },
      (req, res) => {
        res.statusCode = req.url === "/fail" ? 500 : 200;
        res.end("ok");
      },
    );
  },
};

for (const [framework, build] of Object.entries(frameworks)) {
  for (const backend of ["module", "twin"]) {
    test(`the gcra middleware with settle, ${framework} on the ${backend}: reserved, then charged or refunded; a failed request settles at 0`, async (t) => {
      if (!settles[backend]) return t.skip(OLD_TWIN);
      const redis = new Redis({ host: "127.0.0.1", port: servers[backend].port });
      t.after(() => redis.disconnect());
      const log = recorder();
      const limiter = new RateLimiter(redis, { logger: log.logger, prefix: `gsmw:${framework}:` });
      const url = await listen(t, build(limiter));
      const get = (path, user, estimate, used) =>
        fetch(`${url}${path}`, { headers: { "x-user": user, "x-estimate": String(estimate), "x-used": String(used) } });
      const tokens = async (user) => 1000 - (await limiter.gcra(`bucket:${user}`, { ...BUCKET, maxBurst: 999 }, { tokens: 0 })).remaining;
      const eventually = async (user, want) => {
        let got;
        for (let i = 0; i < 100 && got !== want; i++) {
          got = await tokens(user);
          if (got !== want) await pause(10);
        }
        assert.equal(got, want, `${user}: ${want} tokens held`);
      };

      const first = await get("/", "ann", 2, 6);
      assert.equal(first.status, 200);
      assert.equal(first.headers.get("ratelimit"), '"bucket";r=2;t=2', "the headers show the bucket after the reservation");
      await eventually("ann", 6);
      const after = await get("/", "ann", 1, 1);
      assert.equal(after.status, 429, "a debt: the next request waits");
      const refunded = await get("/", "bob", 3, 1);
      assert.equal(refunded.status, 200);
      await eventually("bob", 1);
      assert.equal((await get("/fail", "cat", 3, 3)).status, 500);
      await eventually("cat", 0);
      assert.ok(!log.lines.some((line) => line.level === "error"), JSON.stringify(log.lines));
    });
  }
}

/**
 * Fastify and Fetch over a streamed body: the app streams `x-used` chunks of one token each and
 * reports what it streamed (counted per request) once the body has ended; /fail throws before answering.
 */
function streamedOptions(header, counted) {
  return {
    name: "bucket",
    gcra: BUCKET,
    key: (req) => header(req, "x-user"),
    cost: (req) => Number(header(req, "x-estimate")),
    settle: (req) => counted(req),
  };
}

const streamedFrameworks = {
  async fastify(limiter) {
    const app = Fastify();
    const streamed = new WeakMap();
    await app.register(fastifyRateLimit, {
      limiter,
      ...streamedOptions(
        (req, name) => req.headers[name],
        (req) => streamed.get(req.raw),
      ),
    });
    app.get("/fail", async () => {
      throw new Error("the handler failed");
    });
    app.get("/", (req, reply) => {
      streamed.set(req.raw, 0);
      const chunks = Number(req.headers["x-used"]);
      async function* body() {
        for (let i = 0; i < chunks; i++) {
          streamed.set(req.raw, streamed.get(req.raw) + 1);
          yield `data: ${i}\n\n`;
          await pause(5);
        }
      }
      return reply.type("text/event-stream").send(Readable.from(body()));
    });
    await app.listen({ port: 0, host: "127.0.0.1" });
    return { url: `http://127.0.0.1:${app.server.address().port}`, close: () => app.close() };
  },
  async fetch(limiter, t) {
    const streamed = new WeakMap();
    const handler = fetchRateLimit(
      limiter,
      streamedOptions(
        (req, name) => req.headers.get(name) ?? undefined,
        (req) => streamed.get(req),
      ),
      (req) => {
        if (new URL(req.url).pathname === "/fail") throw new Error("the handler failed");
        streamed.set(req, 0);
        const chunks = Number(req.headers.get("x-used"));
        const encoder = new TextEncoder();
        const body = new ReadableStream({
          async pull(controller) {
            const sent = streamed.get(req);
            if (sent === chunks) return controller.close();
            if (sent > 0) await pause(5);
            streamed.set(req, sent + 1);
            controller.enqueue(encoder.encode(`data: ${sent}\n\n`));
          },
        });
        return new Response(body, { headers: { "content-type": "text/event-stream" } });
      },
    );
    // Served on node:http, the body streamed as it comes.
    const url = await listen(t, async (req, res) => {
      const request = new Request(`http://${req.headers.host}${req.url}`, { method: req.method, headers: req.headers });
      let response;
      try {
        response = await handler(request);
      } catch {
        response = new Response("failed", { status: 500 });
      }
      res.writeHead(response.status, Object.fromEntries(response.headers));
      for await (const chunk of response.body) res.write(chunk);
      res.end();
    });
    return { url, close: () => undefined };
  },
};

for (const [framework, build] of Object.entries(streamedFrameworks)) {
  for (const backend of ["module", "twin"]) {
    test(`the gcra middleware with settle, ${framework} on the ${backend}: a streamed body settled at its end with what the app streamed; a failing handler refunded`, async (t) => {
      if (!settles[backend]) return t.skip(OLD_TWIN);
      const redis = new Redis({ host: "127.0.0.1", port: servers[backend].port });
      t.after(() => redis.disconnect());
      const log = recorder();
      const limiter = new RateLimiter(redis, { logger: log.logger, prefix: `gsstream:${framework}:` });
      const app = await build(limiter, t);
      t.after(() => app.close());
      const get = async (path, user, estimate, used) => {
        const response = await fetch(`${app.url}${path}`, {
          headers: { "x-user": user, "x-estimate": String(estimate), "x-used": String(used) },
        });
        return { status: response.status, body: await response.text(), ratelimit: response.headers.get("ratelimit") };
      };
      const streamedBody = (count) => Array.from({ length: count }, (_, i) => `data: ${i}\n\n`).join("");
      const tokens = async (user) => 1000 - (await limiter.gcra(`bucket:${user}`, { ...BUCKET, maxBurst: 999 }, { tokens: 0 })).remaining;
      const eventually = async (user, want) => {
        let got;
        for (let i = 0; i < 100 && got !== want; i++) {
          got = await tokens(user);
          if (got !== want) await pause(10);
        }
        assert.equal(got, want, `${user}: ${want} tokens held`);
      };

      // More than the estimate: 6 streamed on an estimate of 2, charged past full at the body's end.
      const first = await get("/", "ann", 2, 6);
      assert.deepEqual([first.status, first.body, first.ratelimit], [200, streamedBody(6), '"bucket";r=2;t=2']);
      await eventually("ann", 6);
      assert.equal((await get("/", "ann", 1, 1)).status, 429, "a debt: the next request waits");
      // Less than the estimate: 1 streamed on an estimate of 3, the rest refunded.
      const less = await get("/", "bob", 3, 1);
      assert.deepEqual([less.status, less.body], [200, streamedBody(1)]);
      await eventually("bob", 1);
      // A handler that fails: the reservation refunded whole.
      assert.equal((await get("/fail", "cat", 3, 3)).status, 500);
      await eventually("cat", 0);
      assert.ok(!log.lines.some((line) => line.level === "error"), JSON.stringify(log.lines));
    });
  }
}

test("the gcra middleware without settle reserves nothing: one GCRA call, no settlement", async (t) => {
  const sent = [];
  const limiter = new RateLimiter(
    {
      send: async (_key, args) => {
        sent.push(args.join(" "));
        return [0, 4, 3, -1, 1000];
      },
      serverFor: () => "server",
    },
    { logger: recorder().logger },
  );
  const url = await listen(
    t,
    withRateLimit(limiter, { gcra: BUCKET, key: () => "u" }, (_req, res) => {
      res.statusCode = 500;
      res.end("failed");
    }),
  );
  assert.equal((await fetch(url)).status, 500);
  await pause(50);
  assert.deepEqual(sent, ["RATELIMIT.GCRA default:u 3 1 1 MS"], "no refund of a bucket without settle");
});
