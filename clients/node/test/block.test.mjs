// Penalties: BLOCK ms as blockMs (check, checkAll, the middleware) and
// FlexibleLimiter's blockDuration, and unblock, on every client build
// (RESP2 and RESP3) on the module and on the twin; the in-process fallback
// against the module on random calls with blocks (the fallback's block
// rules, case by case, are the corpus's: corpus.test.mjs).
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import express from "express";
import Fastify from "fastify";
import {
  expressRateLimit,
  FlexibleLimiter,
  fastifyHooks,
  fetchRateLimit,
  MemoryLimiter,
  RateLimiter,
  RateLimitInputError,
  withRateLimit,
} from "redis-ratelimit";
import { cli, clients, listen, pseudoRandom, recorder, startServer } from "./servers.mjs";

const BACKENDS = ["module", "twin"];
const HOUR = 3_600_000;
const LOGIN = { windowMs: 900_000, max: 5 };
const servers = {};
before(async () => {
  [servers.module, servers.twin] = await Promise.all([startServer(), startServer({ module: false })]);
});
after(() => Promise.all(Object.values(servers).map((server) => server.stop())));

const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** EXECs the server has run (INFO commandstats). */
async function execCount(port) {
  const match = (await cli(port, "INFO", "commandstats")).match(/cmdstat_exec:calls=(\d+)/);
  return match ? Number(match[1]) : 0;
}

const factories = await clients();
for (const [name, open] of Object.entries(factories)) {
  for (const backend of BACKENDS) {
    describe(`${name} on the ${backend}`, () => {
      test("a lockout (5 per 15 min, then 1 hour) holds and counts down; unblock lifts it and keeps the history", async () => {
        const { client, close } = await open(servers[backend].port);
        try {
          const limiter = new RateLimiter(client, { logger: recorder().logger });
          const key = `lockout:${name}`;
          const penalty = { blockMs: HOUR };
          for (let i = 0; i < 5; i++) assert.ok((await limiter.check(key, LOGIN, penalty)).allowed);
          const locked = await limiter.check(key, LOGIN, penalty);
          assert.deepEqual([locked.allowed, locked.remaining], [false, 0]);
          assert.ok(locked.retryAfterMs > HOUR - 1000 && locked.retryAfterMs <= HOUR, `retryAfterMs ${locked.retryAfterMs}`);
          assert.ok(locked.resetAfterMs >= locked.retryAfterMs);
          await pause(30);
          // Neither a further penalised check, nor one without BLOCK, nor a peek extends it or gets through.
          const again = await limiter.check(key, LOGIN, penalty);
          const plain = await limiter.check(key, LOGIN);
          const peeked = await limiter.peek(key, LOGIN, penalty);
          for (const blocked of [again, plain, peeked]) {
            assert.deepEqual([blocked.allowed, blocked.remaining], [false, 0]);
            assert.ok(
              blocked.retryAfterMs < locked.retryAfterMs && blocked.retryAfterMs > HOUR - 2000,
              `counting down: ${blocked.retryAfterMs}`,
            );
          }
          // A refund while blocked refunds; the block stays.
          assert.equal(await limiter.undo(key), 1);
          assert.equal((await limiter.peek(key, LOGIN)).allowed, false);
          assert.equal(await limiter.unblock(key), true);
          assert.equal(await limiter.unblock(key), false, "nothing left to lift");
          assert.equal(await limiter.unblock(`${key}:missing`), false);
          // The history stays: 4 of 5 still counted.
          const lifted = await limiter.peek(key, LOGIN);
          assert.deepEqual([lifted.allowed, lifted.remaining], [true, 1]);
          assert.ok((await limiter.check(key, LOGIN)).allowed);
          const byLimits = await limiter.check(key, LOGIN);
          assert.equal(byLimits.allowed, false);
          assert.ok(byLimits.retryAfterMs <= LOGIN.windowMs, "a refusal without blockMs starts no block");
          assert.equal(await limiter.delete(key), true);
          assert.equal((await limiter.peek(key, LOGIN)).remaining, 5, "delete forgets the history and the block");
          // Locked out again, and lifted with reset: the block and the failures it counted go; the answer is still "was it blocked".
          for (let i = 0; i < 6; i++) await limiter.check(key, LOGIN, penalty);
          assert.ok((await limiter.peek(key, LOGIN)).retryAfterMs > HOUR - 1000, "blocked");
          const execs = await execCount(servers[backend].port);
          assert.equal(await limiter.unblock(key, { reset: true }), true);
          assert.equal(await execCount(servers[backend].port), execs + 1, "UNBLOCK and DEL in one MULTI/EXEC");
          const fresh = await limiter.peek(key, LOGIN);
          assert.deepEqual([fresh.allowed, fresh.remaining], [true, 5], "reset forgets the failures");
          assert.equal(await limiter.unblock(key, { reset: true }), false, "nothing was blocked");
        } finally {
          await close();
        }
      });

      test("checkAll with blockMs blocks only the keys whose own limits refused; a block refuses every call naming the key", async () => {
        const { client, close } = await open(servers[backend].port);
        try {
          const limiter = new RateLimiter(client, { logger: recorder().logger, prefix: `mblock:${name}:` });
          const user = { key: "{t}:user", limits: { windowMs: 60_000, max: 2 } };
          const ip = { key: "{t}:ip", limits: { windowMs: 60_000, max: 10 } };
          const other = { key: "{t}:ip2", limits: { windowMs: 60_000, max: 10 } };
          for (let i = 0; i < 2; i++) assert.ok((await limiter.checkAll([user, ip], { blockMs: HOUR })).allowed);
          const refused = await limiter.checkAll([user, ip], { blockMs: HOUR });
          assert.deepEqual(refused.denied, [{ key: "{t}:user", index: 0 }]);
          assert.ok(refused.retryAfterMs > HOUR - 1000, "the wait is the block's");
          const elsewhere = await limiter.checkAll([other, user]);
          assert.deepEqual([elsewhere.allowed, elsewhere.denied], [false, [{ key: "{t}:user", index: 1 }]]);
          assert.ok(elsewhere.retryAfterMs > HOUR - 1000);
          assert.ok((await limiter.checkAll([ip, other], { blockMs: HOUR })).allowed, "the address allowed, so it was not blocked");
          assert.deepEqual((await limiter.peekAll([ip, user])).denied, [{ key: "{t}:user", index: 1 }]);
          assert.equal(await limiter.unblock("{t}:user"), true);
          assert.deepEqual(await limiter.undoAll([user, ip]), [1, 1]);
          assert.ok((await limiter.checkAll([user, ip])).allowed, "unblocked, and the refund freed the user");
        } finally {
          await close();
        }
      });
    });
  }
}

test("a login lockout over HTTP: 429 with Retry-After for the hour, counting down; unblock lifts it", async (t) => {
  const redis = await startServer();
  t.after(() => redis.stop());
  const { client, close } = await factories["ioredis 6 (RESP3 default)"](redis.port);
  t.after(close);
  const limiter = new RateLimiter(client, { logger: recorder().logger });
  const app = express();
  // The README's lockout: 5 failed logins in 15 minutes, then an hour; successful logins are refunded.
  app.post(
    "/login",
    express.urlencoded({ extended: false }),
    expressRateLimit(limiter, {
      name: "login",
      limits: LOGIN,
      blockMs: HOUR,
      key: (req) => req.body.username,
      refundWhen: (status) => status < 400,
    }),
    (req, res) => res.status(req.body.password === "right" ? 200 : 401).send("done"),
  );
  const url = await listen(t, app);
  const login = async (password) => {
    const response = await fetch(`${url}/login`, {
      method: "POST",
      body: new URLSearchParams({ username: "alice", password }),
    });
    await response.text();
    return response;
  };
  assert.equal((await login("right")).status, 200, "a successful login is refunded: it does not count");
  const failures = [];
  for (let i = 0; i < 5; i++) failures.push((await login("wrong")).status);
  assert.deepEqual(failures, [401, 401, 401, 401, 401]);
  const locked = await login("right");
  assert.equal(locked.status, 429, "the 6th attempt is refused, even with the right password");
  assert.equal(locked.headers.get("retry-after"), "3600");
  assert.match(locked.headers.get("ratelimit"), /^"login";r=0;t=3600$/);
  await pause(1100);
  const later = await login("right");
  assert.equal(later.status, 429);
  assert.equal(later.headers.get("retry-after"), "3599", "counting down");
  assert.equal(await limiter.unblock("login:alice"), true);
  const history = await limiter.peek("login:alice", LOGIN);
  assert.deepEqual([history.allowed, history.remaining], [false, 0], "the 5 failures still count after unblock");
  assert.ok(history.retryAfterMs <= LOGIN.windowMs);
  await limiter.delete("login:alice");
  assert.equal((await login("right")).status, 200, "delete forgets it all");
});

for (const backend of BACKENDS) {
  test(`every middleware answers a blocked request 429 with the block's Retry-After, on the ${backend}`, async (t) => {
    const { client, close } = await factories["node-redis 6 RESP2"](servers[backend].port);
    t.after(close);
    const limiter = new RateLimiter(client, { logger: recorder().logger });
    const options = (name) => ({ name, limits: { windowMs: 60_000, max: 1 }, blockMs: 120_000, key: () => "k" });
    const app = express();
    app.use(expressRateLimit(limiter, options(`express-${backend}`)));
    app.get("/", (_q, s) => s.send("ok"));
    const fetchHandler = fetchRateLimit(limiter, options(`fetch-${backend}`), () => new Response("ok"));
    const fastify = Fastify();
    fastify.get("/", fastifyHooks(limiter, options(`fastify-${backend}`)), async () => "ok");
    await fastify.listen({ port: 0, host: "127.0.0.1" });
    t.after(() => fastify.close());
    const urls = {
      express: await listen(t, app),
      "node:http": await listen(
        t,
        withRateLimit(limiter, options(`node-${backend}`), (_q, s) => s.end("ok")),
      ),
      fetch: await listen(t, async (req, res) => {
        const response = await fetchHandler(new Request(`http://x${req.url}`));
        res.writeHead(response.status, Object.fromEntries(response.headers)).end(await response.text());
      }),
      fastify: `http://127.0.0.1:${fastify.server.address().port}`,
    };
    for (const [framework, url] of Object.entries(urls)) {
      const answers = [];
      for (let i = 0; i < 3; i++) {
        const response = await fetch(url);
        await response.text();
        answers.push([response.status, response.headers.get("retry-after")]);
      }
      assert.deepEqual(
        answers,
        [
          [200, null],
          [429, "120"],
          [429, "120"],
        ],
        framework,
      );
    }
  });
}

test("FlexibleLimiter's blockDuration: consume rejects for the block with msBeforeNext counting down; unblock keeps what was consumed", async () => {
  const redis = await startServer();
  const { client, close } = await factories["node-redis 6 (RESP3 default)"](redis.port);
  try {
    const flexible = new FlexibleLimiter(new RateLimiter(client, { logger: recorder().logger }), {
      points: 3,
      duration: 60,
      blockDuration: 600,
    });
    await flexible.consume("bob", 3);
    const first = await flexible.consume("bob").then(
      () => assert.fail("refused"),
      (refused) => refused,
    );
    assert.ok(first.msBeforeNext > 599_000 && first.msBeforeNext <= 600_000, `msBeforeNext ${first.msBeforeNext}`);
    await pause(20);
    await assert.rejects(flexible.consume("bob"), (refused) => refused.msBeforeNext < first.msBeforeNext && refused.msBeforeNext > 598_000);
    assert.equal(await flexible.unblock("bob"), true);
    assert.equal((await flexible.get("bob")).consumedPoints, 3);
  } finally {
    await close();
    await redis.stop();
  }
});

test("blockMs is sent as BLOCK on check, peek, checkAll and peekAll, never on undo; bad values are refused before sending", async () => {
  const sent = [];
  const limiter = new RateLimiter(
    {
      send: async (_key, args) => {
        sent.push(args.join(" "));
        return args[0] === "RATELIMIT.CHECK" || args[0] === "RATELIMIT.PEEK"
          ? [0, 0, 5, 5]
          : args[0] === "RATELIMIT.UNBLOCK"
            ? 1
            : [0, 0, 5, 5, [1]];
      },
      serverFor: () => "server",
    },
    { logger: recorder().logger },
  );
  const limit = { windowMs: 1000, max: 5 };
  await limiter.check("k", limit, { cost: 2, blockMs: 60_000 });
  await limiter.peek("k", limit, { blockMs: 60_000 });
  await limiter.checkAll([{ key: "k", limits: limit }], { blockMs: 1, precision: 10 });
  await limiter.peekAll([{ key: "k", limits: [limit, { windowMs: 2000, max: 6 }] }], { blockMs: 31_536_000_000 });
  assert.equal(await limiter.unblock("k"), true);
  assert.deepEqual(sent, [
    "RATELIMIT.CHECK k 1000 5 COST 2 BLOCK 60000",
    "RATELIMIT.PEEK k 1000 5 BLOCK 60000",
    "RATELIMIT.MCHECK 1 k 1 1000 5 PRECISION 10 BLOCK 1",
    "RATELIMIT.MPEEK 1 k 2 1000 5 2000 6 BLOCK 31536000000",
    "RATELIMIT.UNBLOCK k",
  ]);
  for (const blockMs of [0, 31_536_000_001, 1.5, "60000"]) {
    await assert.rejects(
      limiter.check("k", limit, { blockMs }),
      (e) => e instanceof RateLimitInputError && /blockMs must be an integer from 1 to 31536000000/.test(e.message),
    );
  }
  assert.equal(sent.length, 5);
});

test("unblock with reset over a Connection without transaction(): UNBLOCK, then DEL; the answer is the UNBLOCK's", async () => {
  const sent = [];
  const connection = {
    send: async (_key, args) => {
      sent.push(args.join(" "));
      return 1;
    },
    serverFor: () => "server",
  };
  const limiter = new RateLimiter(connection, { logger: recorder().logger, prefix: "p:" });
  assert.equal(await limiter.unblock("login:alice", { reset: true }), true);
  assert.equal(await limiter.unblock("login:bob"), true);
  assert.deepEqual(sent, ["RATELIMIT.UNBLOCK p:login:alice", "DEL p:login:alice", "RATELIMIT.UNBLOCK p:login:bob"]);
});

/** The same pseudo-random calls with and without blocks, on one to three keys, on every run. */
function randomCalls(seed, n) {
  const next = pseudoRandom(seed);
  const names = ["{r}:a", "{r}:b", "{r}:c"];
  const entry = (key) => ({ key, limits: [{ windowMs: 3_600_000, max: 2 + next(4) }] });
  return Array.from({ length: n }, () => {
    const kind = next(12);
    const key = names[next(3)];
    const options = next(3) === 0 ? {} : { blockMs: [600_000, 7_200_000][next(2)] };
    if (kind < 4) return ["check", key, entry(key).limits, options];
    if (kind < 6) return ["peek", key, entry(key).limits, options];
    const keys = names.filter(() => next(2) === 0);
    if (keys.length === 0) keys.push(key);
    if (kind < 9) return ["checkAll", keys.map(entry), options];
    if (kind < 10) return ["peekAll", keys.map(entry), options];
    if (kind < 11) return ["undo", key, { cost: 1 + next(2) }];
    return ["unblock", key];
  });
}

/** Answers as plain values: decisions with the indexes that denied, counts, booleans. */
function plain(answer) {
  if (typeof answer !== "object") return answer;
  const { allowed, remaining, retryAfterMs, resetAfterMs } = answer.decision ?? answer;
  const denied = answer.denied?.map((d) => (typeof d === "number" ? d : d.index));
  return { allowed, remaining, retryAfterMs, resetAfterMs, ...(denied ? { denied } : {}) };
}

function assertSameAnswers(answers, expected, slackMs) {
  for (const [i, answer] of answers.entries()) {
    const [got, want] = [plain(answer), plain(expected[i])];
    if (typeof want !== "object") {
      assert.equal(got, want, `call ${i}`);
      continue;
    }
    assert.deepEqual([got.allowed, got.remaining, got.denied], [want.allowed, want.remaining, want.denied], `call ${i}`);
    assert.ok(
      Math.abs(got.retryAfterMs - want.retryAfterMs) <= slackMs,
      `retryAfterMs of call ${i}: ${got.retryAfterMs} vs ${want.retryAfterMs}`,
    );
    assert.ok(
      Math.abs(got.resetAfterMs - want.resetAfterMs) <= slackMs,
      `resetAfterMs of call ${i}: ${got.resetAfterMs} vs ${want.resetAfterMs}`,
    );
  }
}

async function run(target, calls) {
  const answers = [];
  for (const [operation, ...rest] of calls) answers.push(await target[operation](...rest));
  return answers;
}

test("300 random calls with blocks: the twin and the in-process fallback answer as the module does", async () => {
  const open = factories["ioredis 6 RESP2"];
  const [module, twin] = await Promise.all([open(servers.module.port), open(servers.twin.port)]);
  try {
    const calls = randomCalls(0x3c6ef372, 300);
    const options = { logger: recorder().logger, prefix: "random:" };
    const started = Date.now();
    const expected = await run(new RateLimiter(module.client, options), calls);
    const twinAnswers = await run(new RateLimiter(twin.client, options), calls);
    const memory = new MemoryLimiter();
    const inProcess = {
      check: async (key, limits, options) => memory.check(key, limits, options),
      peek: async (key, limits, options) => memory.peek(key, limits, options),
      checkAll: async (keys, options) => memory.checkAll(keys, options),
      peekAll: async (keys, options) => memory.peekAll(keys, options),
      undo: async (key, options) => memory.undo(key, options.cost),
      unblock: async (key) => memory.unblock(key),
    };
    const memoryAnswers = await run(inProcess, calls);
    const slack = Date.now() - started + 5;
    assertSameAnswers(twinAnswers, expected, slack);
    assertSameAnswers(memoryAnswers, expected, slack);
    assert.ok(
      expected.some((answer) => answer.retryAfterMs > 3_600_000),
      "some calls meet a block longer than the window",
    );
    assert.ok(expected.includes(true), "some unblock lifted a block");
  } finally {
    await Promise.all([module.close(), twin.close()]);
  }
});
