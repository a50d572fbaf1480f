// The shapes users switch from: an express-rate-limit Store, and
// rate-limiter-flexible's consume / reward / get / delete.
import assert from "node:assert/strict";
import http from "node:http";
import { test } from "node:test";
import express from "express";
import { rateLimit } from "express-rate-limit";
import { FlexibleLimiter, RateLimitStore } from "redis-ratelimit";
import { sharedLimiter } from "./servers.mjs";

const shared = sharedLimiter();

test("express-rate-limit with RateLimitStore: 30 requests at limit 10 give 10 × 200 and 20 × 429", async (t) => {
  const app = express();
  app.use(
    rateLimit({ windowMs: 60_000, limit: 10, standardHeaders: "draft-8", legacyHeaders: false, store: new RateLimitStore(shared.limiter) }),
  );
  app.get("/", (_req, res) => res.send("ok"));
  const listening = http.createServer(app).listen(0, "127.0.0.1");
  await new Promise((resolve) => listening.once("listening", resolve));
  t.after(() => listening.close());
  const statuses = [];
  let last;
  for (let i = 0; i < 30; i++) {
    last = await fetch(`http://127.0.0.1:${listening.address().port}/`);
    await last.text();
    statuses.push(last.status);
  }
  assert.deepEqual(statuses, [...Array(10).fill(200), ...Array(20).fill(429)]);
  assert.match(last.headers.get("ratelimit"), /r=0/);
});

test("FlexibleLimiter: consume resolves then rejects with the wait, reward refunds, get and delete", async () => {
  const flexible = new FlexibleLimiter(shared.limiter, { points: 5, duration: 60 });
  assert.equal(await flexible.get("alice"), null);
  const first = await flexible.consume("alice", 2);
  assert.deepEqual([first.remainingPoints, first.consumedPoints, first.isFirstInDuration], [3, 2, true]);
  await flexible.consume("alice", 3);
  await assert.rejects(flexible.consume("alice"), (refused) => {
    assert.equal(refused.remainingPoints, 0);
    assert.ok(refused.msBeforeNext > 0 && refused.msBeforeNext <= 60_000);
    return true;
  });
  assert.equal(await flexible.reward("alice", 2), 2);
  assert.equal((await flexible.get("alice")).remainingPoints, 2);
  assert.equal(await flexible.delete("alice"), true);
  assert.equal(await flexible.get("alice"), null);
});
