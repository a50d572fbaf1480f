// The client on every supported Redis client build, RESP2 and RESP3, on a
// server with the module and on one without (the script twin).
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { MemoryLimiter, RateLimiter, RateLimitInputError, RateLimitReplyError } from "redis-ratelimit";
import { cli, clients, pseudoRandom, recorder, startServer } from "./servers.mjs";

let withModule;
let withoutModule;
before(async () => {
  [withModule, withoutModule] = await Promise.all([startServer(), startServer({ module: false })]);
});
after(async () => {
  await Promise.all([withModule?.stop(), withoutModule?.stop()]);
});

/** A sequence touching every operation and option; its answers must be equal on both backends. */
async function sequence(limiter, key) {
  const answers = [];
  const limits = [
    { windowMs: 3_600_000, max: 7 },
    { windowMs: 7_200_000, max: 9 },
  ];
  for (let i = 0; i < 5; i++) answers.push(await limiter.check(key, limits, { cost: 2 }));
  answers.push(await limiter.peek(key, limits));
  answers.push(await limiter.undo(key, { cost: 3 }));
  answers.push(await limiter.check(key, limits, { precision: 1000 }));
  answers.push(await limiter.peek(`${key}:missing`, limits));
  answers.push(await limiter.undo(`${key}:missing`));
  return answers;
}

/** Times move between calls: they must agree within the time the sequence took. */
function assertSameAnswers(twin, module, slackMs) {
  assert.equal(twin.length, module.length);
  for (const [i, answer] of twin.entries()) {
    const expected = module[i];
    if (typeof expected === "number") {
      assert.equal(answer, expected, `answer ${i}`);
      continue;
    }
    assert.equal(answer.allowed, expected.allowed, `allowed of answer ${i}`);
    assert.equal(answer.remaining, expected.remaining, `remaining of answer ${i}`);
    assert.ok(Math.abs(answer.retryAfterMs - expected.retryAfterMs) <= slackMs, `retryAfterMs of answer ${i}`);
    assert.ok(Math.abs(answer.resetAfterMs - expected.resetAfterMs) <= slackMs, `resetAfterMs of answer ${i}`);
  }
}

const factories = await clients();
for (const [name, open] of Object.entries(factories)) {
  describe(name, () => {
    test("10 checks against 3 per minute: exactly 3 allowed, on the module and on the twin", async () => {
      for (const server of [withModule, withoutModule]) {
        const { client, close } = await open(server.port);
        try {
          const limiter = new RateLimiter(client, { logger: recorder().logger });
          const results = [];
          for (let i = 0; i < 10; i++) results.push(await limiter.check(`ten:${name}`, { windowMs: 60_000, max: 3 }));
          assert.deepEqual(
            results.map((r) => r.allowed),
            [true, true, true, false, false, false, false, false, false, false],
          );
          assert.deepEqual(
            results.slice(0, 3).map((r) => r.remaining),
            [2, 1, 0],
          );
          for (const denied of results.slice(3)) assert.ok(denied.retryAfterMs > 0 && denied.retryAfterMs <= 60_000);
          assert.ok(results.every((r) => r.source === "redis"));
          assert.equal(limiter.backend, server === withModule ? "module" : "twin");
        } finally {
          await close();
        }
      }
    });

    test("the twin is learned once, logged once, and answers as the module does", async () => {
      const module = await open(withModule.port);
      const twin = await open(withoutModule.port);
      try {
        const moduleLog = recorder();
        const twinLog = recorder();
        const started = Date.now();
        const expected = await sequence(new RateLimiter(module.client, { logger: moduleLog.logger }), `seq:${name}`);
        const twinLimiter = new RateLimiter(twin.client, { logger: twinLog.logger });
        const answers = await sequence(twinLimiter, `seq:${name}`);
        assertSameAnswers(answers, expected, Date.now() - started + 5);
        assert.equal(twinLimiter.backend, "twin");
        assert.deepEqual(
          twinLog.lines.map((line) => [line.level, line.message]),
          [["warn", `redis-ratelimit: ${twinLimiter.backends.keys().next().value} has no RATELIMIT module; using the Lua script twin`]],
        );
        assert.deepEqual(
          moduleLog.lines.map((line) => [line.level, line.details.backend]),
          [["info", "module"]],
        );
      } finally {
        await Promise.all([module.close(), twin.close()]);
      }
    });

    test("the twin survives SCRIPT FLUSH (NOSCRIPT, then EVAL)", async () => {
      const { client, close } = await open(withoutModule.port);
      try {
        const limiter = new RateLimiter(client, { logger: recorder().logger });
        assert.equal((await limiter.check(`flush:${name}`, { windowMs: 60_000, max: 2 })).remaining, 1);
        await cli(withoutModule.port, "SCRIPT", "FLUSH");
        assert.equal((await limiter.check(`flush:${name}`, { windowMs: 60_000, max: 2 })).remaining, 0);
        assert.equal((await limiter.check(`flush:${name}`, { windowMs: 60_000, max: 2 })).allowed, false);
      } finally {
        await close();
      }
    });
  });
}

test("bad input is refused before anything is sent; a wrong key type is an error, not a policy", async () => {
  const { client, close } = await factories["ioredis 6 (RESP3 default)"](withModule.port);
  try {
    const log = recorder();
    const limiter = new RateLimiter(client, { logger: log.logger, failOpen: true });
    await assert.rejects(limiter.check("k", { windowMs: 0, max: 1 }), RateLimitInputError);
    await assert.rejects(limiter.check("k", { windowMs: 1000, max: 5 }, { cost: 6 }), RateLimitInputError);
    await assert.rejects(limiter.check(42, { windowMs: 1000, max: 5 }), RateLimitInputError);
    await assert.rejects(
      limiter.check("k", [
        { windowMs: 1000, max: 5 },
        { windowMs: 1000, max: 6 },
      ]),
      RateLimitInputError,
    );
    await cli(withModule.port, "SET", "plain-string", "x");
    await assert.rejects(limiter.check("plain-string", { windowMs: 1000, max: 5 }), (error) => {
      assert.ok(error instanceof RateLimitReplyError);
      assert.match(error.message, /^WRONGTYPE/);
      return true;
    });
    assert.deepEqual(
      log.lines.filter((line) => line.level !== "info"),
      [],
      "a call error is the caller's to handle: not logged",
    );
  } finally {
    await close();
  }
});

test("the in-process fallback answers as the module does", async () => {
  const { client, close } = await factories["node-redis 6 (RESP3 default)"](withModule.port);
  try {
    const memory = new MemoryLimiter();
    const list = (limits) => (Array.isArray(limits) ? limits : [limits]);
    const inProcess = {
      check: async (key, limits, options) => memory.check(key, list(limits), options),
      peek: async (key, limits, options) => memory.peek(key, list(limits), options),
      undo: async (key, options = {}) => memory.undo(key, options.cost ?? 1),
    };
    const started = Date.now();
    const expected = await sequence(new RateLimiter(client, { logger: recorder().logger }), "seq:memory");
    assertSameAnswers(await sequence(inProcess, "seq:memory"), expected, Date.now() - started + 5);
  } finally {
    await close();
  }
});

test("the fallback holds at most maxKeys keys (default 10,000), dropping the least recently used", async () => {
  const limit = [{ windowMs: 60_000, max: 2 }];
  const memory = new MemoryLimiter(Date.now, 3);
  for (const key of ["a", "b", "c"]) memory.check(key, limit);
  memory.check("a", limit);
  memory.check("d", limit);
  assert.equal(memory.size, 3);
  assert.equal(memory.peek("b", limit).remaining, 2, "b, the least recently used, was dropped");
  assert.equal(memory.peek("a", limit).remaining, 0, "a, used again, was kept");
  const bounded = new MemoryLimiter();
  for (let i = 0; i <= 10_000; i++) bounded.check(`k${i}`, limit);
  assert.equal(bounded.size, 10_000);
  assert.equal(bounded.peek("k0", limit).remaining, 2, "the first key was dropped");
  assert.equal(bounded.peek("k10000", limit).remaining, 1);
  assert.throws(() => new MemoryLimiter(Date.now, 0), RateLimitInputError);

  // The limiter's fallback takes the cap as fallback.maxKeys.
  const refused = Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:1"), { code: "ECONNREFUSED" });
  const down = {
    send: async () => {
      throw refused;
    },
    serverFor: () => "server",
  };
  const limiter = new RateLimiter(down, { logger: recorder().logger, fallback: { share: 1, maxKeys: 2 }, retryAfterFailureMs: 0 });
  for (const key of ["a", "a", "b", "c"]) assert.equal((await limiter.check(key, limit)).source, "fallback");
  assert.equal((await limiter.peek("a", limit)).remaining, 2, "a dropped when c came");
  assert.equal((await limiter.peek("c", limit)).remaining, 1);
});

/** The same pseudo-random calls on every run. */
function randomCalls(seed, n) {
  const next = pseudoRandom(seed);
  const windows = [3_600_000, 7_200_000, 86_400_000];
  return Array.from({ length: n }, () => {
    const key = `fuzz:${next(4)}`;
    const pairs = windows.slice(next(3)).map((windowMs) => ({ windowMs, max: 5 + next(20) }));
    const cost = 1 + next(Math.min(...pairs.map((limit) => limit.max)));
    const kind = next(10);
    if (kind < 6) return ["check", key, pairs, { cost }];
    if (kind < 8) return ["peek", key, pairs, { cost }];
    return ["undo", key, { cost: 1 + next(6) }];
  });
}

test("the in-process fallback answers 300 random calls as the module does", async () => {
  const { client, close } = await factories["ioredis 6 (RESP3 default)"](withModule.port);
  try {
    const calls = randomCalls(0x9e3779b9, 300);
    const run = async (target, prefix) => {
      const answers = [];
      for (const [operation, key, ...rest] of calls) answers.push(await target[operation](`${prefix}${key}`, ...rest));
      return answers;
    };
    const memory = new MemoryLimiter();
    const inProcess = {
      check: async (key, limits, options) => memory.check(key, limits, options),
      peek: async (key, limits, options) => memory.peek(key, limits, options),
      undo: async (key, options) => memory.undo(key, options.cost),
    };
    const started = Date.now();
    const expected = await run(new RateLimiter(client, { logger: recorder().logger }), "random:");
    assertSameAnswers(await run(inProcess, "random:"), expected, Date.now() - started + 5);
    assert.ok(
      expected.some((answer) => answer.allowed === false),
      "the calls reach the limits",
    );
  } finally {
    await close();
  }
});

test("on every client build: WRONGTYPE rejects (no policy, no twin); NOPERM takes the policy, logged once, and the next call that passes is logged as back", async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  await cli(server.port, "SET", "plain-string", "x");
  await cli(server.port, "ACL", "SETUSER", "default", "-ratelimit.peek");
  // "NOPERM User default has no permissions to run the 'ratelimit.peek' command" (Redis 7.0: "this user has ...").
  const noperm = (await cli(server.port, "RATELIMIT.PEEK", "denied", "1000", "5")).trim();
  assert.match(noperm, /^NOPERM /);
  for (const [name, open] of Object.entries(factories)) {
    const { client, close } = await open(server.port);
    try {
      const log = recorder();
      const limiter = new RateLimiter(client, { logger: log.logger, failOpen: true, retryAfterFailureMs: 0 });
      const refused = (error) => error instanceof RateLimitReplyError && /^WRONGTYPE/.test(error.message);
      await assert.rejects(limiter.check("plain-string", { windowMs: 1000, max: 5 }), refused, name);
      assert.equal((await limiter.peek("denied", { windowMs: 1000, max: 5 })).source, "failOpen", name);
      const after = await limiter.check(`fine:${name}`, { windowMs: 1000, max: 5 });
      assert.deepEqual([after.source, limiter.backend], ["redis", "module"], name);
      const server = limiter.backends.keys().next().value;
      assert.deepEqual(
        log.lines.map((line) => [line.level, line.message]),
        [
          [
            "error",
            `redis-ratelimit: Redis at ${server} is unavailable (${noperm}); failing open (allowing every request) until it answers`,
          ],
          ["info", `redis-ratelimit: ${server} has the RATELIMIT module; using it`],
          ["warn", `redis-ratelimit: Redis at ${server} answers again; decisions are made there again`],
        ],
        name,
      );
    } finally {
      await close();
    }
  }
});

test("a reply integer that a JS number cannot hold exactly is an error, never rounded", async () => {
  // A Connection of one's own may answer bigints or strings (RESP3 big numbers, stringNumbers).
  const answering = (reply) => new RateLimiter({ send: async () => reply, serverFor: () => "server" }, { logger: recorder().logger });
  const limit = { windowMs: 1000, max: 5 };
  assert.deepEqual(await answering([1n, 4n, 0n, 1000n]).check("k", limit), {
    allowed: true,
    remaining: 4,
    retryAfterMs: 0,
    resetAfterMs: 1000,
    source: "redis",
  });
  assert.equal((await answering(["0", "0", "250", "1000"]).check("k", limit)).retryAfterMs, 250);
  for (const huge of [2n ** 60n, "9007199254740993"]) {
    await assert.rejects(answering([1, huge, 0, 0]).check("k", limit), /unexpected reply/);
  }
  await assert.rejects(answering(2n ** 60n).undo("k"), /unexpected reply/);
});
