// A token bucket (GCRA): 30 requests a minute per API key, in bursts of up
// to 16; a batch takes one token per item (more than 16 never fits: 429
// without Retry-After). GET /quota reads what is left without spending it.
import express from "express";
import { Redis } from "ioredis";
import { expressRateLimit, RateLimiter } from "redis-ratelimit";

const redis = new Redis(process.env.REDIS_URL ?? "redis://localhost:6379");
redis.on("error", () => {}); // the limiter logs an outage once, with its cause
const limiter = new RateLimiter(redis);
const perKey = { maxBurst: 15, count: 30, periodMs: 60_000 };

const app = express();
app.get("/quota", async (req, res) => {
  // tokens: 0 asks without charging; the middleware's keys are "<name>:<key>".
  const key = `api:${req.get("x-api-key") ?? req.ip}`;
  const { remaining, resetAfterMs } = await limiter.gcra(key, perKey, { tokens: 0 });
  res.json({ remaining, resetAfterMs });
});
app.use(
  expressRateLimit(limiter, {
    name: "api",
    gcra: perKey,
    key: (req) => req.get("x-api-key") ?? req.ip,
    cost: (req) => Math.max(1, Number.parseInt(req.get("x-items") ?? "1", 10) || 1),
  }),
);
app.get("/", (_req, res) => res.send("hello\n"));
app.post("/batch", (req, res) => res.send(`${req.get("x-items") ?? 1} items\n`));
app.listen(Number(process.env.PORT ?? 3000));
