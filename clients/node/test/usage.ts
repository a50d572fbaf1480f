// A typed usage file: `tsc --strict` must compile it against the installed
// package (test/types.test.mjs), as a TypeScript user would write it.

import http from "node:http";
import express from "express";
import Fastify from "fastify";
import { Redis } from "ioredis";
import { createClient } from "redis";
import {
  type Decision,
  expressRateLimit,
  FlexibleLimiter,
  fastifyRateLimit,
  fetchRateLimit,
  type KeyLimits,
  type Limit,
  type MultiResult,
  RateLimiter,
  RateLimitStore,
  type Result,
  withRateLimit,
} from "redis-ratelimit";

const limiter = new RateLimiter(new Redis(), { timeoutMs: 100, fallback: { share: 0.5 } });
const perMinute: Limit = { windowMs: 60_000, max: 10 };

async function decide(user: string): Promise<boolean> {
  const result: Result = await limiter.check(`api:${user}`, [perMinute, { windowMs: 3_600_000, max: 100 }], { cost: 2 });
  const decision: Decision = result;
  const refunded: number = await limiter.undo(`api:${user}`, { decision: result });
  return decision.allowed && refunded >= 0 && limiter.backend !== "mixed";
}

async function severalKeys(user: string, ip: string): Promise<string[]> {
  const keys: KeyLimits[] = [
    { key: `{t:7}:user:${user}`, limits: perMinute },
    { key: `{t:7}:ip:${ip}`, limits: [perMinute, { windowMs: 3_600_000, max: 1000 }] },
  ];
  const result: MultiResult = await limiter.checkAll(keys, { cost: 1, blockMs: 60_000 });
  const refunded: number[] = await limiter.undoAll(keys, { decision: result });
  const unblocked: boolean = await limiter.unblock(`{t:7}:user:${user}`);
  return unblocked && refunded.length > 0 ? [] : result.denied.map((denied) => `${denied.index}:${denied.key}`);
}

const app = express();
app.use(expressRateLimit(limiter, { limits: perMinute, key: (req) => req.get("x-user") }));
app.use(
  expressRateLimit(limiter, {
    name: "api",
    blockMs: 3_600_000,
    keys: (req) => [
      { name: "user", key: `{t:7}:user:${req.get("x-user")}`, limits: perMinute },
      req.ip ? { name: "ip", key: `{t:7}:ip:${req.ip}`, limits: perMinute } : undefined,
    ],
    onLimited: (_req, res, info) => res.status(429).json({ limitedBy: info.denied.map((denied) => denied.name) }),
  }),
);

const nodeRedisLimiter = new RateLimiter(createClient());
http.createServer(withRateLimit(nodeRedisLimiter, { limits: perMinute }, (_req, res) => res.end("ok")));

const fastify = Fastify();
void fastify.register(fastifyRateLimit, { limiter, limits: perMinute });

export const GET = fetchRateLimit(
  limiter,
  { limits: perMinute, key: (req) => req.headers.get("x-api-key") ?? undefined },
  () => new Response("ok"),
);

const store = new RateLimitStore(limiter);
const flexible = new FlexibleLimiter(limiter, { points: 5, duration: 60, blockDuration: 3600 });
void flexible.unblock("alice");
void flexible.consume("alice").then((res) => res.remainingPoints + res.msBeforeNext);
void store;
void decide;
void severalKeys;
