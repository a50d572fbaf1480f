// One small app per framework, limited by the package as its README shows:
// GET / answers 200, GET /fail fails in the handler. The limit is LIMIT (a
// sliding window), or with `gcra` a token bucket whose request tokens are
// the x-cost header. Run as a program (node app.mjs FRAMEWORK REDIS_PORT
// [gcra as JSON]) it serves on a free port and prints it, for the tests
// with two app processes.
import { once } from "node:events";
import http from "node:http";
import express from "express";
import Fastify from "fastify";
import Redis from "ioredis";
import { expressRateLimit, fastifyRateLimit, fetchRateLimit, RateLimiter, withRateLimit } from "redis-ratelimit";

export const LIMIT = { windowMs: 60_000, max: 10 };
const userOf = (header) => header ?? "anonymous";

/** The middleware's options: LIMIT, or a token bucket weighed by x-cost; `header(req, name)` reads a request's header field. */
function limitOptions(gcra, header) {
  const key = (req) => userOf(header(req, "x-user"));
  if (!gcra) return { limits: LIMIT, key };
  return { gcra, key, cost: (req) => Number(header(req, "x-cost") ?? 1) };
}

function listen(server) {
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

const apps = {
  async express(limiter, gcra) {
    const app = express();
    app.use(
      expressRateLimit(
        limiter,
        limitOptions(gcra, (req, name) => req.get(name)),
      ),
    );
    app.get("/", (_req, res) => res.send("ok"));
    app.get("/fail", () => {
      throw new Error("the handler failed");
    });
    app.use((_error, _req, res, _next) => res.status(500).send("failed"));
    return listen(http.createServer(app));
  },
  async fastify(limiter, gcra) {
    const app = Fastify();
    await app.register(fastifyRateLimit, { limiter, ...limitOptions(gcra, (req, name) => req.headers[name]) });
    app.get("/", async () => "ok");
    app.get("/fail", async () => {
      throw new Error("the handler failed");
    });
    await app.listen({ port: 0, host: "127.0.0.1" });
    return app.server;
  },
  async node(limiter, gcra) {
    const handler = (req, res) => {
      if (req.url === "/fail") throw new Error("the handler failed");
      res.end("ok");
    };
    return listen(
      http.createServer(
        withRateLimit(
          limiter,
          limitOptions(gcra, (req, name) => req.headers[name]),
          handler,
        ),
      ),
    );
  },
  async fetch(limiter, gcra) {
    const options = limitOptions(gcra, (req, name) => req.headers.get(name) ?? undefined);
    const handler = fetchRateLimit(limiter, options, (req) => {
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

/** An app for `framework` on a limiter over its own ioredis client (limited by `gcra` if given, else LIMIT); close() stops both. */
export async function startApp(framework, redisPort, limiterOptions = {}, gcra = undefined) {
  const redis = new Redis({ host: "127.0.0.1", port: redisPort, maxRetriesPerRequest: 0, enableOfflineQueue: false });
  redis.on("error", () => {}); // as the README's examples: the limiter logs an outage once, with its cause
  // Without an offline queue, calls before the connection is up fail (and take the failure policy).
  await once(redis, "ready");
  const limiter = new RateLimiter(redis, { logger: { info() {}, warn() {}, error() {} }, ...limiterOptions });
  const server = await apps[framework](limiter, gcra);
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
  const gcra = process.argv[4] ? JSON.parse(process.argv[4]) : undefined;
  const app = await startApp(process.argv[2], Number(process.argv[3]), { timeoutMs: 5000 }, gcra);
  process.stdout.write(`${app.url}\n`);
}
