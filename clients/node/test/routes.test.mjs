// Limits per route, several limits on one route, and the hooks that answer
// a refused request, for each framework.
import assert from "node:assert/strict";
import { test } from "node:test";
import express from "express";
import Fastify from "fastify";
import { expressRateLimit, fastifyHooks, fetchRateLimit, withRateLimit } from "redis-ratelimit";
import { listen, sharedLimiter } from "./servers.mjs";

const shared = sharedLimiter();

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

test("several keys per request (user + address): 429 names the key that refused, failures are refunded from every key", async (t) => {
  const limits = { user: { windowMs: 60_000, max: 2 }, ip: { windowMs: 60_000, max: 3 } };
  const keys = (header) => (req) => [
    { name: "user", key: `{t1}:user:${header(req, "x-user")}`, limits: limits.user },
    header(req, "x-ip") ? { name: "ip", key: `{t1}:ip:${header(req, "x-ip")}`, limits: limits.ip } : undefined,
  ];
  const app = express();
  app.use(expressRateLimit(shared.limiter, { name: "several", keys: keys((req, name) => req.get(name)) }));
  app.get("/", (_q, s) => s.send("ok"));
  app.get("/fail", (_q, s) => s.status(500).send("failed"));
  const url = await listen(t, app);
  const get = async (path, user, ip) => {
    const response = await fetch(`${url}${path}`, { headers: ip ? { "x-user": user, "x-ip": ip } : { "x-user": user } });
    await response.text();
    return response;
  };
  assert.deepEqual([(await get("/", "a", "x")).status, (await get("/", "a", "x")).status], [200, 200]);
  const byUser = await get("/", "a", "x");
  assert.equal(byUser.status, 429);
  assert.equal(byUser.headers.get("ratelimit-policy"), '"user";q=2;w=60, "ip";q=3;w=60');
  assert.match(byUser.headers.get("ratelimit"), /^"user";r=0;t=\d+$/);
  const retryAfter = Number(byUser.headers.get("retry-after"));
  assert.ok(retryAfter >= 1 && retryAfter <= 60, `Retry-After ${retryAfter}`);
  assert.equal((await get("/", "b", "x")).status, 200);
  const byAddress = await get("/", "c", "x");
  assert.equal(byAddress.status, 429);
  assert.match(byAddress.headers.get("ratelimit"), /^"ip";r=0;t=\d+$/, "the headline is the key that refused");
  assert.equal((await get("/", "c")).status, 200, "no address: the user's key alone decides, and c was not charged by the refusal");
  assert.equal((await get("/fail", "d", "y")).status, 500);
  const left = await shared.limiter.peekAll([
    { key: "several:{t1}:user:d", limits: limits.user },
    { key: "several:{t1}:ip:y", limits: limits.ip },
  ]);
  assert.equal(left.remaining, 2, "the failed request was refunded from both keys");
  assert.equal((await shared.limiter.peek("several:{t1}:ip:y", limits.ip)).remaining, 3);

  const fetchHandler = fetchRateLimit(
    shared.limiter,
    {
      name: "several-fetch",
      keys: keys((req, name) => req.headers.get(name)),
      onLimited: (_req, info) => Response.json({ denied: info.denied.map((d) => [d.name, d.index]), keys: info.keys }, { status: 429 }),
    },
    () => new Response("ok"),
  );
  const request = () => new Request("http://x/", { headers: { "x-user": "e", "x-ip": "z" } });
  for (let i = 0; i < 2; i++) assert.equal((await fetchHandler(request())).status, 200);
  const refused = await fetchHandler(request());
  assert.deepEqual(await refused.json(), {
    denied: [["user", 0]],
    keys: ["several-fetch:{t1}:user:e", "several-fetch:{t1}:ip:z"],
  });
  const both = fetchRateLimit(shared.limiter, { limits: limits.user, key: () => "k", keys: () => [] }, () => new Response("ok"));
  await assert.rejects(both(request()), /give the middleware `limits` \(and `key`\) or `keys`, not both/);
});
