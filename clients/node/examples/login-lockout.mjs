// A login lockout: 5 failed logins for a username in 15 minutes lock it out
// for an hour (every attempt answers 429 with Retry-After, even with the
// right password). A successful login is refunded, so only failures count.
// An administrator lifts a lockout, forgetting the failures it counted,
// with POST /admin/unlock/<username>.
import express from "express";
import { Redis } from "ioredis";
import { expressRateLimit, RateLimiter } from "redis-ratelimit";

const redis = new Redis(process.env.REDIS_URL ?? "redis://localhost:6379");
redis.on("error", () => {}); // the limiter logs an outage once, with its cause
const limiter = new RateLimiter(redis);

/** Yours checks a password hash from your user store. @type {(username: string, password: string) => boolean} */
const passwordIsRight = (username, password) => username === "alice" && password === "correct horse";

const app = express();
app.post(
  "/login",
  express.urlencoded({ extended: false }),
  expressRateLimit(limiter, {
    name: "login",
    limits: { windowMs: 15 * 60_000, max: 5 },
    blockMs: 60 * 60_000,
    key: (req) => req.body.username,
    refundWhen: (status) => status < 400, // only failed logins count
  }),
  (req, res) => {
    const right = passwordIsRight(req.body.username, req.body.password);
    res.status(right ? 200 : 401).send(right ? "welcome\n" : "wrong username or password\n");
  },
);
// Behind your administrators' authentication.
app.post("/admin/unlock/:username", async (req, res) => {
  const wasLocked = await limiter.unblock(`login:${req.params.username}`, { reset: true });
  res.json({ wasLocked });
});
app.listen(Number(process.env.PORT ?? 3000));
