// Prometheus metrics (prom-client) and a limit rolled out in shadow mode:
// every request is decided and counted, none refused; GET /metrics serves
// ratelimit_decisions_total, ratelimit_errors_total and
// ratelimit_redis_duration_seconds.
import express from "express";
import { Redis } from "ioredis";
import { register } from "prom-client";
import { expressRateLimit, prometheusMetrics, RateLimiter } from "redis-ratelimit";

const redis = new Redis(process.env.REDIS_URL ?? "redis://localhost:6379");
redis.on("error", () => {}); // the limiter logs an outage once, with its cause
const limiter = new RateLimiter(redis, { metrics: await prometheusMetrics(register) });

const app = express();
app.get("/metrics", async (_req, res) => {
  res.type(register.contentType).send(await register.metrics());
});
app.use(expressRateLimit(limiter, { name: "api", limits: { windowMs: 60_000, max: 10 }, key: (req) => req.get("x-user-id") ?? req.ip }));
app.use(
  expressRateLimit(limiter, {
    name: "api-next",
    limits: { windowMs: 60_000, max: 5 },
    key: (req) => req.get("x-user-id") ?? req.ip,
    shadow: true,
  }),
);
app.get("/", (_req, res) => res.send("hello\n"));
app.listen(Number(process.env.PORT ?? 3000));
