// One small app per framework, limited by the package as its README shows:
// GET / answers 200, GET /fail fails in the handler. Run as a program
// (node app.mjs FRAMEWORK REDIS_PORT) it serves on a free port and prints it,
// for the tests with two app processes.
import { once } from "node:events";
import http from "node:http";
import express from "express";
import Fastify from "fastify";
import Redis from "ioredis";
import { expressRateLimit, fastifyRateLimit, fetchRateLimit, RateLimiter, withRateLimit } from "redis-ratelimit";

export const LIMIT = { windowMs: 60_000, max: 10 };
const userOf = (header) => header ?? "anonymous";

function listen(server) {
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

const apps = {
  async express(limiter) {
    const app = express();
    app.use(expressRateLimit(limiter, { limits: LIMIT, key: (req) => userOf(req.get("x-user")) }));
    app.get("/", (_req, res) => res.send("ok"));
    app.get("/fail", () => {
      throw new Error("the handler failed");
    });
    app.use((_error, _req, res, _next) => res.status(500).send("failed"));
    return listen(http.createServer(app));
  },
  async fastify(limiter) {
    const app = Fastify();
    await app.register(fastifyRateLimit, { limiter, limits: LIMIT, key: (req) => userOf(req.headers["x-user"]) });
    app.get("/", async () => "ok");
    app.get("/fail", async () => {
      throw new Error("the handler failed");
    });
    await app.listen({ port: 0, host: "127.0.0.1" });
    return app.server;
  },
  async node(limiter) {
    const handler = (req, res) => {
      if (req.url === "/fail") throw new Error("the handler failed");
      res.end("ok");
    };
    return listen(http.createServer(withRateLimit(limiter, { limits: LIMIT, key: (req) => userOf(req.headers["x-user"]) }, handler)));
  },
  async fetch(limiter) {
    const handler = fetchRateLimit(limiter, { limits: LIMIT, key: (req) => userOf(req.headers.get("x-user") ?? undefined) }, (req) => {
      if (new URL(req.url).pathname === "/fail") throw new Error("the handler failed");
      return new Response("ok");
    });
    return listen(http.createServer(fetchBridge(handler)));
  },
};

/** Serves a Fetch handler on node:http, as Hono's node adapter or Next.js would; a throw becomes 500. */
function fetchBridge(handler) {
  return async (req, res) => {
    const request = new Request(`http://${req.headers.host}${req.url}`, { method: req.method, headers: req.headers });
    let response;
    try {
      response = await handler(request);
    } catch {
      response = new Response("failed", { status: 500 });
    }
    res.writeHead(response.status, Object.fromEntries(response.headers));
    res.end(Buffer.from(await response.arrayBuffer()));
  };
}

export const FRAMEWORKS = Object.keys(apps);

/** An app for `framework` on a limiter over its own ioredis client; close() stops both. */
export async function startApp(framework, redisPort, limiterOptions = {}) {
  const redis = new Redis({ host: "127.0.0.1", port: redisPort, maxRetriesPerRequest: 0, enableOfflineQueue: false });
  redis.on("error", () => {}); // as the README's examples: the limiter logs an outage once, with its cause
  // Without an offline queue, calls before the connection is up fail (and take the failure policy).
  await once(redis, "ready");
  const limiter = new RateLimiter(redis, { logger: { info() {}, warn() {}, error() {} }, ...limiterOptions });
  const server = await apps[framework](limiter);
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    limiter,
    redis,
    close: async () => {
      server.closeAllConnections?.();
      await new Promise((resolve) => server.close(resolve));
      redis.disconnect();
    },
  };
}

if (process.argv[1] === new URL(import.meta.url).pathname) {
  // The tests that run apps as processes count exact admissions; a long timeout keeps a loaded machine from turning some into 503s.
  const app = await startApp(process.argv[2], Number(process.argv[3]), { timeoutMs: 5000 });
  process.stdout.write(`${app.url}\n`);
}
