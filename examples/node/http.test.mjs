// The HTTP example with real requests: node --test http.test.mjs
// (RATELIMIT_PORT names a server with the module; tests/examples.rs sets it).
import assert from "node:assert/strict";
import http from "node:http";
import net from "node:net";
import { once } from "node:events";
import { test } from "node:test";
import { limiterClient, rateLimited } from "./http-server.mjs";

const redisPort = Number(process.env.RATELIMIT_PORT);

async function connected() {
  const redis = limiterClient(redisPort);
  await once(redis, "ready");
  return redis;
}

function app(redis, options) {
  const handler = (req, res) => {
    if (req.url === "/fail") throw new Error("the handler failed");
    res.writeHead(200).end("ok\n");
  };
  const server = http.createServer(rateLimited(redis, options, handler));
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => resolve(server));
  });
}

async function get(server, path, apiKey) {
  const { port } = server.address();
  const response = await fetch(`http://127.0.0.1:${port}${path}`, {
    headers: { "x-api-key": apiKey },
  });
  await response.text();
  return response;
}

function fields(response) {
  const header = response.headers.get("ratelimit") ?? "";
  const number = (name) => Number(header.match(new RegExp(`;${name}=(\\d+)`))?.[1]);
  return { r: number("r"), t: number("t") };
}

async function closedPort() {
  const probe = net.createServer();
  await new Promise((resolve) => probe.listen(0, "127.0.0.1", resolve));
  const { port } = probe.address();
  await new Promise((resolve) => probe.close(resolve));
  return port;
}

test("30 requests against 10 a minute: 10 served, 20 refused, consistent fields", async () => {
  const redis = await connected();
  const server = await app(redis, { limit: 10, windowMs: 60_000 });
  const key = `http-${process.pid}-${Date.now()}`;
  const responses = [];
  for (let i = 0; i < 30; i++) responses.push(await get(server, "/", key));
  const served = responses.filter((r) => r.status === 200);
  const refused = responses.filter((r) => r.status === 429);
  assert.equal(served.length, 10);
  assert.equal(refused.length, 20);
  assert.deepEqual(responses.slice(0, 10).map((r) => r.status), Array(10).fill(200));
  for (const response of responses) {
    assert.equal(response.headers.get("ratelimit-policy"), '"default";q=10;w=60');
  }
  assert.deepEqual(served.map((r) => fields(r).r), [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]);
  for (const response of served) assert.equal(fields(response).t, 60);
  for (const response of refused) {
    const retryAfter = Number(response.headers.get("retry-after"));
    assert.ok(retryAfter >= 59 && retryAfter <= 60, `Retry-After ${retryAfter}`);
    assert.deepEqual(fields(response), { r: 0, t: retryAfter });
  }
  server.close();
  redis.disconnect();
});

test("a failed handler's request is refunded", async () => {
  const redis = await connected();
  const server = await app(redis, { limit: 10, windowMs: 60_000 });
  const key = `refund-${process.pid}-${Date.now()}`;
  for (let i = 0; i < 5; i++) assert.equal((await get(server, "/fail", key)).status, 500);
  const next = await get(server, "/", key);
  assert.equal(next.status, 200);
  assert.equal(fields(next).r, 9, "the five failed requests cost nothing");
  server.close();
  redis.disconnect();
});

test("Redis unreachable: fail closed answers 503, fail open serves, both within the timeout", async () => {
  const port = await closedPort();
  for (const [failOpen, status] of [[false, 503], [true, 200]]) {
    const redis = limiterClient(port);
    redis.on("error", () => {});
    const server = await app(redis, { limit: 10, failOpen, timeoutMs: 100 });
    const started = Date.now();
    const response = await get(server, "/", "anyone");
    assert.equal(response.status, status, `failOpen ${failOpen}`);
    assert.ok(Date.now() - started < 1000, "answered within the timeout");
    assert.equal(response.headers.get("ratelimit"), null, "no limit was decided");
    server.close();
    redis.disconnect();
  }
});
