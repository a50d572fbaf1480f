// Limits per route, several limits on one route, and the hooks that answer
// a refused request, for each framework.
import assert from "node:assert/strict";
import http from "node:http";
import { test } from "node:test";
import express from "express";
import Fastify from "fastify";
import { expressRateLimit, fastifyHooks, fetchRateLimit, withRateLimit } from "redis-ratelimit";
import { sharedLimiter } from "./servers.mjs";

const shared = sharedLimiter();

async function listen(t, handler) {
  const listening = http.createServer(handler).listen(0, "127.0.0.1");
  await new Promise((resolve) => listening.once("listening", resolve));
  t.after(() => {
    listening.closeAllConnections();
    listening.close();
  });
  return `http://127.0.0.1:${listening.address().port}`;
}

async function statuses(url, n, headers = {}) {
  const out = [];
  for (let i = 0; i < n; i++) {
    const response = await fetch(url, { headers });
    await response.text();
    out.push(response.status);
  }
  return out;
}

test("express: each route its own limits and keys; two limits on one route name two policies", async (t) => {
  const app = express();
  const perUser = (req) => req.get("x-user");
  app.post("/login", expressRateLimit(shared.limiter, { name: "login", limits: { windowMs: 900_000, max: 2 }, key: perUser }), (_q, s) =>
    s.send("in"),
  );
  const search = expressRateLimit(shared.limiter, {
    name: "search",
    limits: [
      { windowMs: 1_000, max: 3 },
      { windowMs: 60_000, max: 20, name: "search-minute" },
    ],
    key: perUser,
  });
  app.get("/search", search, (_q, s) => s.send("found"));
  const url = await listen(t, app);
  const login = [];
  for (let i = 0; i < 3; i++) login.push((await fetch(`${url}/login`, { method: "POST", headers: { "x-user": "bob" } })).status);
  assert.deepEqual(login, [200, 200, 429]);
  const response = await fetch(`${url}/search`, { headers: { "x-user": "bob" } });
  assert.equal(response.status, 200, "the login limit does not touch search");
  assert.equal(response.headers.get("ratelimit-policy"), '"search-1s";q=3;w=1, "search-minute";q=20;w=60');
  assert.equal(response.headers.get("ratelimit"), '"search-1s";r=2;t=60');
  assert.deepEqual(await statuses(`${url}/search`, 3, { "x-user": "bob" }), [200, 200, 429]);
});

test("onLimited answers refused requests: express, node:http, fetch, and fastify per route", async (t) => {
  const limits = { windowMs: 60_000, max: 1 };
  const onLimitedNode = (_req, res, info) => {
    res.statusCode = 418;
    res.setHeader("x-wait", String(info.result.retryAfterMs > 0));
    res.end(info.reason);
  };
  const app = express();
  app.use(expressRateLimit(shared.limiter, { name: "hook-express", limits, key: () => "k", onLimited: onLimitedNode }));
  app.get("/", (_q, s) => s.send("ok"));
  const node = withRateLimit(shared.limiter, { name: "hook-node", limits, key: () => "k", onLimited: onLimitedNode }, (_q, s) =>
    s.end("ok"),
  );
  const fetchHandler = fetchRateLimit(
    shared.limiter,
    {
      name: "hook-fetch",
      limits,
      key: () => "k",
      onLimited: (_req, info) => new Response(info.reason, { status: 418, headers: info.headers }),
    },
    () => new Response("ok"),
  );
  const fastify = Fastify();
  const hooks = fastifyHooks(shared.limiter, {
    name: "hook-fastify",
    limits,
    key: () => "k",
    onLimited: (_req, reply) => reply.code(418).send("limited"),
  });
  fastify.get("/limited", hooks, async () => "ok");
  fastify.get("/free", async () => "ok");
  await fastify.listen({ port: 0, host: "127.0.0.1" });
  t.after(() => fastify.close());
  const fastifyUrl = `http://127.0.0.1:${fastify.server.address().port}`;

  assert.deepEqual(await statuses(await listen(t, app), 2), [200, 418]);
  assert.deepEqual(await statuses(await listen(t, node), 2), [200, 418]);
  const fetchUrl = await listen(t, async (req, res) => {
    const response = await fetchHandler(new Request(`http://x${req.url}`));
    res.writeHead(response.status, Object.fromEntries(response.headers)).end(await response.text());
  });
  assert.deepEqual(await statuses(fetchUrl, 2), [200, 418]);
  assert.deepEqual(await statuses(`${fastifyUrl}/limited`, 2), [200, 418]);
  assert.deepEqual(await statuses(`${fastifyUrl}/free`, 3), [200, 200, 200], "the hooks limit only their route");
});
