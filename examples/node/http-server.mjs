// An HTTP service limited per client with RATELIMIT.CHECK, as docs/clients.md
// shows it; `http.test.mjs` drives it with real requests (`make test`).
// Run it by hand: node http-server.mjs REDIS_PORT HTTP_PORT
import http from "node:http";
import { once } from "node:events";
import Redis from "ioredis";

// README:begin
// Wraps a node:http handler: one CHECK per request, the IETF RateLimit
// fields (draft-ietf-httpapi-ratelimit-headers-11), 429 with Retry-After,
// an explicit choice when Redis is unreachable, and a refund when the
// handler fails.
export function rateLimited(redis, options, handler) {
  const { limit = 10, windowMs = 60_000, failOpen = false, timeoutMs = 100 } = options;
  const policy = `"default";q=${limit};w=${Math.ceil(windowMs / 1000)}`;
  return async (req, res) => {
    const key = `api:${req.headers["x-api-key"] ?? req.socket.remoteAddress}`;
    let decision;
    try {
      decision = await withTimeout(
        redis.call("RATELIMIT.CHECK", key, windowMs, limit), timeoutMs);
    } catch {
      if (failOpen) return handler(req, res); // serve unlimited while Redis is down
      res.writeHead(503, { "Retry-After": "1" }).end("rate limiter unavailable\n");
      return;
    }
    const [allowed, remaining, retryAfterMs, resetAfterMs] = decision;
    // t: seconds until capacity returns (all of it if allowed, enough for
    // this request if denied).
    const waitMs = allowed === 1 ? resetAfterMs : retryAfterMs;
    res.setHeader("RateLimit-Policy", policy);
    res.setHeader("RateLimit", `"default";r=${remaining};t=${Math.ceil(waitMs / 1000)}`);
    if (allowed !== 1) {
      res.writeHead(429, { "Retry-After": String(Math.ceil(retryAfterMs / 1000)) });
      res.end("too many requests\n");
      return;
    }
    try {
      await handler(req, res);
    } catch {
      // Failed on our side: the client should not pay for it.
      await redis.call("RATELIMIT.UNDO", key).catch(() => {});
      res.writeHead(500).end("internal error\n");
    }
  };
}

function withTimeout(promise, ms) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer in ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// A client that fails fast instead of queueing while Redis is away.
export function limiterClient(port) {
  return new Redis({
    host: "127.0.0.1",
    port,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
  });
}
// README:end

if (import.meta.url === `file://${process.argv[1]}`) {
  const [redisPort, httpPort] = process.argv.slice(2).map(Number);
  const redis = limiterClient(redisPort);
  await once(redis, "ready");
  const hello = (req, res) => res.writeHead(200).end("hello\n");
  http.createServer(rateLimited(redis, { limit: 10 }, hello)).listen(httpPort, "127.0.0.1");
}
