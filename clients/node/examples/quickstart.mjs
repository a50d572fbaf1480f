import express from "express";
import { Redis } from "ioredis";
import { expressRateLimit, RateLimiter } from "redis-ratelimit";

const redis = new Redis(process.env.REDIS_URL ?? "redis://localhost:6379");
redis.on("error", () => {}); // the limiter logs an outage once, with its cause
const app = express();
app.use(expressRateLimit(new RateLimiter(redis), { limits: { windowMs: 60_000, max: 10 }, key: (req) => req.get("x-user-id") ?? req.ip }));
app.get("/", (_req, res) => res.send("hello\n"));
app.listen(Number(process.env.PORT ?? 3000));
