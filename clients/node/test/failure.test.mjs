// Redis unreachable: fail closed within the timeout, fail open, the
// in-process fallback holding its share, one line as Redis goes down (its
// cause named) and one as it is back, recovery without a restart, and late
// answers refunded (contract/transport.json has the rest).
import assert from "node:assert/strict";
import net from "node:net";
import { test } from "node:test";
import Redis from "ioredis";
import { RateLimiter } from "redis-ratelimit";
import { startApp } from "./app.mjs";
import { recorder, startServer } from "./servers.mjs";

const LIMIT = { windowMs: 60_000, max: 10 };

/** A port that accepts connections and never answers: Redis hung, not gone. */
async function silentPort(t) {
  const sockets = new Set();
  const server = net.createServer((socket) => sockets.add(socket));
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  t.after(() => {
    for (const socket of sockets) socket.destroy();
    server.close();
  });
  return server.address().port;
}

test("a hung Redis: fail closed answers within the timeout, and the cause is logged", async (t) => {
  const port = await silentPort(t);
  // The guide's client settings (offline queue on): the per-call timeout is what bounds the wait.
  const redis = new Redis({ host: "127.0.0.1", port, lazyConnect: false });
  t.after(() => redis.disconnect());
  const log = recorder();
  const limiter = new RateLimiter(redis, { timeoutMs: 150, logger: log.logger });
  const started = Date.now();
  const result = await limiter.check("hung", LIMIT);
  const elapsed = Date.now() - started;
  assert.equal(result.allowed, false);
  assert.equal(result.source, "failClosed");
  assert.ok(elapsed < 1500, `answered after ${elapsed} ms`);
  assert.deepEqual(log.lines, [
    {
      level: "error",
      message: `redis-ratelimit: Redis at 127.0.0.1:${port} is unavailable (timeout: no answer within 150 ms); failing closed (denying every request) until it answers`,
      details: {
        server: `127.0.0.1:${port}`,
        cause: "timeout: no answer within 150 ms",
        policy: "failing closed (denying every request)",
      },
    },
  ]);
});

test("Redis stopped then back: closed, open and fallback policies over HTTP, then recovery without restart", async (t) => {
  let redis = await startServer();
  const port = redis.port;
  t.after(() => redis.stop());
  const closed = await startApp("express", port, { retryAfterFailureMs: 100 });
  const open = await startApp("express", port, { failOpen: true, retryAfterFailureMs: 100 });
  const log = recorder();
  const fallback = await startApp("express", port, { fallback: { share: 0.5 }, retryAfterFailureMs: 100, logger: log.logger });
  t.after(() => Promise.all([closed.close(), open.close(), fallback.close()]));
  const status = async (app, user) => (await fetch(`${app.url}/`, { headers: { "x-user": user } })).status;

  assert.equal(await status(closed, "u"), 200);
  await redis.stop();

  assert.equal(await status(closed, "u"), 503);
  assert.equal(await status(open, "u"), 200);
  const shares = [];
  for (let i = 0; i < 12; i++) shares.push(await status(fallback, "share"));
  // Half of max 10 in this process while Redis is away.
  assert.deepEqual(shares, [...Array(5).fill(200), ...Array(7).fill(429)]);
  // One line as Redis goes down, however many requests meet it down; its cause named (the clients reconnect, so refused).
  assert.deepEqual(
    log.lines.map((line) => [line.level, line.message]),
    [
      [
        "error",
        `redis-ratelimit: Redis at 127.0.0.1:${port} is unavailable (ECONNREFUSED); deciding in this process (fallback, share 0.5) until it answers`,
      ],
    ],
  );

  redis = await startServer({ port });
  // The clients reconnect on their own; the limiters try Redis again after retryAfterFailureMs.
  for (const app of [closed, open, fallback]) {
    let answer;
    for (let i = 0; i < 100; i++) {
      answer = await app.limiter.check("recovered", LIMIT);
      if (answer.source === "redis") break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    assert.equal(answer.source, "redis");
  }
  assert.equal(await status(closed, "back"), 200);
  assert.deepEqual(log.lines.at(-1), {
    level: "warn",
    message: `redis-ratelimit: Redis at 127.0.0.1:${port} answers again; decisions are made there again`,
    details: { server: `127.0.0.1:${port}` },
  });
});

test("calls that time out while the client reconnects are never sent later (no charge for a refused request)", async (t) => {
  const { createClient } = await import("redis");
  let redis = await startServer();
  const port = redis.port;
  t.after(() => redis.stop());
  // Each client with its default options: an offline queue that would send a queued command once reconnected.
  const builds = {
    ioredis: async () => {
      const client = new Redis({ host: "127.0.0.1", port });
      return { client, close: () => client.disconnect() };
    },
    "node-redis": async () => {
      const client = createClient({ socket: { host: "127.0.0.1", port } });
      client.on("error", () => undefined);
      await client.connect();
      return { client, close: () => client.destroy() };
    },
  };
  const limiters = {};
  for (const [name, build] of Object.entries(builds)) {
    const { client, close } = await build();
    t.after(close);
    limiters[name] = new RateLimiter(client, { timeoutMs: 100, retryAfterFailureMs: 0, logger: recorder().logger });
    assert.equal((await limiters[name].peek(name, LIMIT)).source, "redis");
  }
  await redis.stop();
  // Once the clients saw the connection close (a command written just before is resent on reconnect by ioredis: README).
  await new Promise((resolve) => setTimeout(resolve, 200));
  for (const [name, limiter] of Object.entries(limiters)) {
    for (let i = 0; i < 3; i++) assert.equal((await limiter.check(name, LIMIT)).source, "failClosed", name);
  }
  redis = await startServer({ port });
  const remaining = {};
  for (const [name, limiter] of Object.entries(limiters)) {
    let answer;
    for (let i = 0; i < 100 && answer?.source !== "redis"; i++) {
      answer = await limiter.peek(name, LIMIT);
      if (answer.source !== "redis") await new Promise((resolve) => setTimeout(resolve, 50));
    }
    assert.equal(answer.source, "redis", name);
    remaining[name] = answer.remaining;
  }
  // Nothing refused was charged once the clients reconnected.
  assert.deepEqual(remaining, { ioredis: LIMIT.max, "node-redis": LIMIT.max });
});

test("a check or checkAll answered after its timeout (Redis hung, then back) is refunded from its keys: the caller was given the policy's answer", async (t) => {
  const redis = await startServer();
  t.after(() => {
    process.kill(redis.pid, "SIGCONT");
    return redis.stop();
  });
  const client = new Redis({ host: "127.0.0.1", port: redis.port });
  t.after(() => client.disconnect());
  const log = recorder();
  const limiter = new RateLimiter(client, { timeoutMs: 100, logger: log.logger });
  const several = [
    { key: "{late}:user", limits: LIMIT },
    { key: "{late}:ip", limits: LIMIT },
  ];
  const calls = [
    ["late", () => limiter.check("late", LIMIT), () => limiter.peek("late", LIMIT)],
    ["{late}:user, {late}:ip", () => limiter.checkAll(several), () => limiter.peekAll(several)],
  ];
  for (const [keys, check, peek] of calls) {
    assert.equal((await check()).remaining, 9);
    process.kill(redis.pid, "SIGSTOP");
    assert.equal((await check()).source, "failClosed");
    process.kill(redis.pid, "SIGCONT");
    const refunded = () =>
      log.lines.some(
        (line) =>
          line.level === "warn" &&
          line.message === `redis-ratelimit: a check on ${keys} was answered after its timeout; its charge was refunded`,
      );
    for (let i = 0; i < 100 && !refunded(); i++) await new Promise((resolve) => setTimeout(resolve, 50));
    assert.ok(refunded(), `the late charge on ${keys} was refunded and logged`);
    // Past retryAfterFailureMs, Redis decides again: only the first check is counted (in every key: remaining is their least).
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const after = await peek();
    assert.deepEqual([after.source, after.remaining], ["redis", 9], keys);
  }
});

/** A connection that fails as a refused connection does. */
function refusedError() {
  return Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:1"), { code: "ECONNREFUSED" });
}

test("down is logged once as the server goes down, whatever the causes that follow while it is down", async () => {
  const failures = [refusedError(), Object.assign(new Error("read ECONNRESET"), { code: "ECONNRESET" }), refusedError()];
  const connection = {
    send: async () => {
      throw failures.shift();
    },
    serverFor: () => "stub:1",
  };
  const log = recorder();
  const limiter = new RateLimiter(connection, { logger: log.logger, retryAfterFailureMs: 0 });
  for (let i = 0; i < 3; i++) assert.equal((await limiter.check("k", LIMIT)).source, "failClosed");
  assert.deepEqual(
    log.lines.map((line) => [line.level, line.message]),
    [["error", "redis-ratelimit: Redis at stub:1 is unavailable (ECONNREFUSED); failing closed (denying every request) until it answers"]],
  );
});

test("a late answer whose refund fails is logged, with the refund's cause", async () => {
  let answer;
  const connection = {
    send: async (_key, [command]) => {
      if (command === "RATELIMIT.CHECK") return new Promise((resolve) => (answer = () => resolve([1, 9, 0, 60_000])));
      throw refusedError();
    },
    serverFor: () => "stub:1",
  };
  const log = recorder();
  const limiter = new RateLimiter(connection, { logger: log.logger, timeoutMs: 50 });
  assert.equal((await limiter.check("k", LIMIT)).source, "failClosed");
  answer();
  for (let i = 0; i < 100 && log.lines.length < 3; i++) await new Promise((resolve) => setTimeout(resolve, 10));
  assert.deepEqual(
    log.lines.map((line) => [line.level, line.message]),
    [
      [
        "error",
        "redis-ratelimit: Redis at stub:1 is unavailable (timeout: no answer within 50 ms); failing closed (denying every request) until it answers",
      ],
      ["info", "redis-ratelimit: stub:1 has the RATELIMIT module; using it"],
      ["error", "redis-ratelimit: a check on k was answered after its timeout; its refund failed (ECONNREFUSED)"],
    ],
  );
});
