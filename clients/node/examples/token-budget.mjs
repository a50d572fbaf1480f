// A token budget in front of an OpenAI-style streaming API: 10,000 tokens a
// minute per user (the x-user header). Each request reserves its max_tokens
// before it goes upstream, streams the answer through as it comes, and is
// settled with the usage.total_tokens of the stream's last chunk: tokens
// not used are given back, tokens used beyond the estimate are charged
// (recorded even past the budget, so the next requests wait).
import express from "express";
import { Redis } from "ioredis";
import { expressRateLimit, RateLimiter } from "redis-ratelimit";

const redis = new Redis(process.env.REDIS_URL ?? "redis://localhost:6379");
redis.on("error", () => {}); // the limiter logs an outage once, with its cause
const limiter = new RateLimiter(redis);
const upstream = process.env.UPSTREAM_URL ?? "https://api.openai.com";

const app = express();
app.post(
  "/v1/chat/completions",
  express.json(),
  expressRateLimit(limiter, {
    name: "tokens",
    limits: { windowMs: 60_000, max: 10_000 },
    key: (req) => req.get("x-user") ?? req.ip,
    cost: (req) => Math.min(Math.max(Number(req.body.max_tokens) || 1000, 1), 10_000), // the estimate
    settle: (_req, res) => res.locals.totalTokens, // the actual, once the stream has ended
  }),
  async (req, res) => {
    const answer = await fetch(`${upstream}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: req.get("authorization") ?? "" },
      body: JSON.stringify({ ...req.body, stream: true, stream_options: { include_usage: true } }),
    });
    res.status(answer.status).type(answer.headers.get("content-type") ?? "text/event-stream");
    const reader = answer.body?.getReader();
    const decoder = new TextDecoder();
    let pending = "";
    for (let read = await reader?.read(); read && !read.done; read = await reader?.read()) {
      res.write(read.value);
      const lines = (pending + decoder.decode(read.value, { stream: true })).split("\n");
      pending = lines.pop() ?? "";
      for (const line of lines) {
        if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
        const usage = JSON.parse(line.slice("data: ".length)).usage;
        if (usage) res.locals.totalTokens = usage.total_tokens;
      }
    }
    res.end();
  },
);
app.listen(Number(process.env.PORT ?? 3000));
