// Several keys in one atomic decision (checkAll / peekAll / undoAll) on
// every client build, RESP2 and RESP3, on the module (MCHECK/MPEEK/MUNDO)
// and on the twin (its mcheck/mpeek/mundo), which answer alike; the
// in-process fallback answering as the module does; bad input refused
// before anything is sent.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { MemoryLimiter, RateLimiter, RateLimitInputError } from "redis-ratelimit";
import { clients, pseudoRandom, recorder, startServer } from "./servers.mjs";

const BACKENDS = ["module", "twin"];
const servers = {};
before(async () => {
  [servers.module, servers.twin] = await Promise.all([startServer(), startServer({ module: false })]);
});
after(() => Promise.all(Object.values(servers).map((server) => server.stop())));

/** A request of user `user` from address `ip` in one tenant: 2, 3 and 4 a minute, one hash tag. */
function request(prefix, user, ip) {
  return [
    { key: `{${prefix}}:user:${user}`, limits: { windowMs: 60_000, max: 2 } },
    { key: `{${prefix}}:ip:${ip}`, limits: { windowMs: 60_000, max: 3 } },
    {
      key: `{${prefix}}:tenant`,
      limits: [
        { windowMs: 60_000, max: 4 },
        { windowMs: 3_600_000, max: 100 },
      ],
    },
  ];
}

/** What each key has recorded, read with peek: the units used in its minute. */
async function used(limiter, prefix, subject, max) {
  return max - (await limiter.peek(`{${prefix}}:${subject}`, { windowMs: 60_000, max })).remaining;
}

const factories = await clients();
for (const [name, open] of Object.entries(factories)) {
  for (const backend of BACKENDS) {
    describe(`${name} on the ${backend}`, () => {
      test("user + IP + tenant: any one denial charges no key, the denying keys are named, a refund covers every key", async () => {
        const { client, close } = await open(servers[backend].port);
        try {
          const limiter = new RateLimiter(client, { logger: recorder().logger });
          const p = `t:${name}`;
          const deniedKeys = (result) => result.denied.map((d) => [d.index, d.key]);
          const a1 = await limiter.checkAll(request(p, "a", "x"));
          assert.deepEqual([a1.allowed, a1.remaining, a1.retryAfterMs, a1.denied, a1.source], [true, 1, 0, [], "redis"]);
          assert.ok(a1.resetAfterMs > 3_590_000 && a1.resetAfterMs <= 3_600_000, "the longest window of any key");
          assert.equal((await limiter.checkAll(request(p, "a", "x"))).remaining, 0);
          const a3 = await limiter.checkAll(request(p, "a", "x"));
          assert.deepEqual([a3.allowed, a3.remaining, deniedKeys(a3)], [false, 0, [[0, `{${p}}:user:a`]]]);
          assert.ok(a3.retryAfterMs > 0 && a3.retryAfterMs <= 60_000);
          assert.ok((await limiter.checkAll(request(p, "b", "x"))).allowed);
          const c = await limiter.checkAll(request(p, "c", "x"));
          assert.deepEqual(deniedKeys(c), [[1, `{${p}}:ip:x`]], "the address is full; the user and the tenant are not");
          assert.ok((await limiter.checkAll(request(p, "c", "y"))).allowed);
          const d = await limiter.checkAll(request(p, "d", "z"));
          assert.deepEqual(deniedKeys(d), [[2, `{${p}}:tenant`]]);
          const all = await limiter.peekAll(request(p, "a", "x"));
          assert.deepEqual(
            [all.allowed, deniedKeys(all)],
            [
              false,
              [
                [0, `{${p}}:user:a`],
                [1, `{${p}}:ip:x`],
                [2, `{${p}}:tenant`],
              ],
            ],
          );
          // Only the 4 allowed requests were recorded, each in all three of its keys.
          const counts = {
            "user:a": await used(limiter, p, "user:a", 2),
            "user:b": await used(limiter, p, "user:b", 2),
            "user:c": await used(limiter, p, "user:c", 2),
            "user:d": await used(limiter, p, "user:d", 2),
            "ip:x": await used(limiter, p, "ip:x", 3),
            "ip:y": await used(limiter, p, "ip:y", 3),
            "ip:z": await used(limiter, p, "ip:z", 3),
            tenant: await used(limiter, p, "tenant", 4),
          };
          assert.deepEqual(counts, { "user:a": 2, "user:b": 1, "user:c": 1, "user:d": 0, "ip:x": 3, "ip:y": 1, "ip:z": 0, tenant: 4 });
          // The handler of c's request failed: refund it from the same keys.
          assert.deepEqual(await limiter.undoAll(request(p, "c", "y")), [1, 1, 1]);
          assert.deepEqual([await used(limiter, p, "user:c", 2), await used(limiter, p, "tenant", 4)], [0, 3]);
          assert.ok((await limiter.checkAll(request(p, "d", "z"))).allowed, "the refund freed the tenant");
          assert.equal(limiter.backend, backend);
        } finally {
          await close();
        }
      });

      test("COST and PRECISION apply to every key; undoAll takes keys and COST", async () => {
        const { client, close } = await open(servers[backend].port);
        try {
          const limiter = new RateLimiter(client, { logger: recorder().logger, prefix: `cost:${name}:` });
          const keys = [
            { key: "{c}:a", limits: { windowMs: 60_000, max: 10 } },
            { key: "{c}:b", limits: { windowMs: 30_000, max: 6 } },
          ];
          assert.equal((await limiter.checkAll(keys, { cost: 4, precision: 1000 })).remaining, 2);
          const denied = await limiter.checkAll(keys, { cost: 4 });
          assert.deepEqual(
            denied.denied.map((d) => d.key),
            ["{c}:b"],
            "keys are reported as given, without the prefix",
          );
          assert.deepEqual(await limiter.undoAll(["{c}:a", "{c}:b"], { cost: 3 }), [3, 3]);
          assert.equal((await limiter.peekAll(keys, { cost: 5 })).remaining, 5);
        } finally {
          await close();
        }
      });
    });
  }
}

test("bad several-key input is refused before anything is sent", async () => {
  const sent = [];
  const limiter = new RateLimiter(
    { send: async (_key, args) => sent.push(args), serverFor: () => "server" },
    { logger: recorder().logger },
  );
  const limit = { windowMs: 1000, max: 5 };
  const refusals = [
    [[], /give 1 to 16 keys, got 0/],
    [Array.from({ length: 17 }, (_, i) => ({ key: `k${i}`, limits: limit })), /give 1 to 16 keys, got 17/],
    [
      [
        { key: "a", limits: limit },
        { key: "a", limits: limit },
      ],
      /key 'a' is given more than once/,
    ],
    [[{ key: 42, limits: limit }], /key must be a string/],
    [[{ key: "a", limits: [] }], /give 1 to 8 limits, got 0/],
    [[{ key: "a" }], /windowMs must be an integer/],
  ];
  for (const [keys, message] of refusals)
    await assert.rejects(limiter.checkAll(keys), (e) => e instanceof RateLimitInputError && message.test(e.message));
  const two = [
    { key: "a", limits: { windowMs: 1000, max: 5 } },
    { key: "b", limits: { windowMs: 100, max: 2 } },
  ];
  await assert.rejects(limiter.checkAll(two, { cost: 3 }), /cost must be an integer from 1 to 2/);
  await assert.rejects(limiter.peekAll(two, { precision: 101 }), /precision must be an integer from 1 to 100/);
  await assert.rejects(limiter.undoAll(["a", "a"]), /key 'a' is given more than once/);
  await assert.rejects(limiter.undoAll(["a"], { cost: 0 }), /cost must be an integer from 1 to 9223372036854775807/);
  assert.deepEqual(sent, []);
});

test("a several-key reply that is not MCHECK's is an error, never an allowed request", async () => {
  const answering = (reply) => new RateLimiter({ send: async () => reply, serverFor: () => "server" }, { logger: recorder().logger });
  const keys = [
    { key: "a", limits: { windowMs: 1000, max: 5 } },
    { key: "b", limits: { windowMs: 1000, max: 5 } },
  ];
  const ok = await answering([0n, 0n, 10n, 20n, [2n]]).checkAll(keys);
  assert.deepEqual(ok.denied, [{ key: "b", index: 1 }]);
  for (const reply of [
    [1, 4, 0, 0],
    [1, 4, 0, 0, [1]],
    [0, 0, 5, 5, []],
    [0, 0, 5, 5, [3]],
    [0, 0, 5, 5, [2, 1]],
    [0, 0, 5, 5, "1"],
  ]) {
    await assert.rejects(answering(reply).checkAll(keys), /unexpected reply to a several-key rate-limit call/, JSON.stringify(reply));
  }
  await assert.rejects(answering([1, 2, 3]).undoAll(["a", "b"]), /unexpected reply to RATELIMIT.MUNDO/);
});

/** The same pseudo-random several-key calls on every run. */
function randomCalls(seed, n) {
  const next = pseudoRandom(seed);
  const windows = [3_600_000, 7_200_000, 86_400_000];
  const names = ["{r}:a", "{r}:b", "{r}:c", "{r}:d"];
  return Array.from({ length: n }, () => {
    const keys = names.filter(() => next(2) === 0);
    if (keys.length === 0) keys.push(names[next(4)]);
    const entries = keys.map((key) => ({ key, limits: windows.slice(next(3)).map((windowMs) => ({ windowMs, max: 3 + next(12) })) }));
    const cost = 1 + next(Math.min(...entries.flatMap((entry) => entry.limits.map((limit) => limit.max))));
    const kind = next(10);
    if (kind < 6) return ["checkAll", entries, { cost }];
    if (kind < 8) return ["peekAll", entries, { cost }];
    return ["undoAll", keys, { cost: 1 + next(4) }];
  });
}

test("the in-process fallback answers 300 random several-key calls as the module does", async () => {
  const { client, close } = await factories["ioredis 6 (RESP3 default)"](servers.module.port);
  try {
    const calls = randomCalls(0x2545f491, 300);
    const memory = new MemoryLimiter();
    const inProcess = {
      checkAll: async (keys, options) => memory.checkAll(keys, options),
      peekAll: async (keys, options) => memory.peekAll(keys, options),
      undoAll: async (keys, options) => keys.map((key) => memory.undo(key, options.cost)),
    };
    const limiter = new RateLimiter(client, { logger: recorder().logger });
    const started = Date.now();
    const expected = [];
    for (const [operation, ...rest] of calls) expected.push(await limiter[operation](...rest));
    const slack = Date.now() - started + 5;
    for (const [i, [operation, ...rest]] of calls.entries()) {
      const answer = await inProcess[operation](...rest);
      const want = expected[i];
      if (operation === "undoAll") {
        assert.deepEqual(answer, want, `call ${i}`);
        continue;
      }
      const { decision, denied } = answer;
      assert.deepEqual(
        [decision.allowed, decision.remaining, denied],
        [want.allowed, want.remaining, want.denied.map((d) => d.index)],
        `call ${i}`,
      );
      assert.ok(Math.abs(decision.retryAfterMs - want.retryAfterMs) <= slack, `retryAfterMs of call ${i}`);
      assert.ok(Math.abs(decision.resetAfterMs - want.resetAfterMs) <= slack, `resetAfterMs of call ${i}`);
    }
    assert.ok(
      expected.some((answer) => answer.allowed === false && answer.denied.length > 1),
      "calls reach the limits of several keys",
    );
  } finally {
    await close();
  }
});

test("while Redis is unreachable, several keys take the failure policy: closed, open, fallback (which names the keys)", async (t) => {
  const gone = await startServer();
  const { client, close } = await factories["ioredis 6 (RESP3 default)"](gone.port);
  t.after(close);
  await gone.stop();
  const keys = [
    { key: "u", limits: { windowMs: 60_000, max: 4 } },
    { key: "i", limits: { windowMs: 60_000, max: 10 } },
  ];
  const quiet = { logger: recorder().logger, timeoutMs: 100 };
  const closed = await new RateLimiter(client, quiet).checkAll(keys);
  assert.deepEqual([closed.allowed, closed.source, closed.denied], [false, "failClosed", []]);
  const open = await new RateLimiter(client, { ...quiet, failOpen: true }).checkAll(keys, { cost: 2 });
  assert.deepEqual([open.allowed, open.source, open.remaining], [true, "failOpen", 2]);
  const fallback = new RateLimiter(client, { ...quiet, fallback: { share: 0.5 } });
  const answers = [];
  for (let i = 0; i < 3; i++) answers.push(await fallback.checkAll(keys));
  assert.deepEqual(
    answers.map((a) => [a.allowed, a.source, a.denied.map((d) => d.key)]),
    [
      [true, "fallback", []],
      [true, "fallback", []],
      [false, "fallback", ["u"]],
    ],
  );
  assert.deepEqual(await fallback.undoAll(keys, { decision: answers[0] }), [1, 1]);
  assert.ok((await fallback.checkAll(keys)).allowed, "refunded in the fallback");
});

test("the twin answers several-key calls as the module does", async () => {
  const open = factories["node-redis 6 RESP2"];
  const [module, twin] = await Promise.all([open(servers.module.port), open(servers.twin.port)]);
  try {
    const calls = randomCalls(0x68e31da4, 150);
    const run = async (limiter) => {
      const answers = [];
      for (const [operation, ...rest] of calls) answers.push(await limiter[operation](...rest));
      return answers;
    };
    const started = Date.now();
    const expected = await run(new RateLimiter(module.client, { logger: recorder().logger, prefix: "same:" }));
    const twinLimiter = new RateLimiter(twin.client, { logger: recorder().logger, prefix: "same:" });
    const answers = await run(twinLimiter);
    const slack = Date.now() - started + 5;
    assert.equal(twinLimiter.backend, "twin");
    for (const [i, answer] of answers.entries()) {
      const want = expected[i];
      if (Array.isArray(want)) {
        assert.deepEqual(answer, want, `call ${i}`);
        continue;
      }
      assert.deepEqual([answer.allowed, answer.remaining, answer.denied], [want.allowed, want.remaining, want.denied], `call ${i}`);
      assert.ok(Math.abs(answer.retryAfterMs - want.retryAfterMs) <= slack, `retryAfterMs of call ${i}`);
      assert.ok(Math.abs(answer.resetAfterMs - want.resetAfterMs) <= slack, `resetAfterMs of call ${i}`);
    }
  } finally {
    await Promise.all([module.close(), twin.close()]);
  }
});
