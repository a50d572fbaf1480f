// Every documented form, typed as a TypeScript user would write it:
// `tsc --strict` must compile this file against the installed package, with
// Express 5's types and with Express 4's (test/types.test.mjs).

import http from "node:http";
import express from "express";
import Fastify from "fastify";
import { Redis } from "ioredis";
import { register } from "prom-client";
import { createClient } from "redis";
import {
  type ChargeResult,
  type Decision,
  expressRateLimit,
  FlexibleLimiter,
  fastifyHooks,
  fastifyRateLimit,
  fetchRateLimit,
  type GcraDecision,
  type GcraLimit,
  type GcraReservation,
  type GcraResult,
  type GcraSettlement,
  type GcraSettleResult,
  gcraRateLimitHeaders,
  type KeyLimits,
  type Limit,
  type MemoryBucketState,
  MemoryLimiter,
  type Metrics,
  type MultiChargeResult,
  type MultiReservation,
  type MultiResult,
  prometheusMetrics,
  RateLimiter,
  RateLimitStore,
  RateLimitUnavailableError,
  type Reservation,
  type ReservationHandle,
  type Result,
  type Settlement,
  type SettleResult,
  withRateLimit,
} from "redis-ratelimit";

const redis = new Redis();
redis.on("error", () => {});
const limiter = new RateLimiter(redis, { timeoutMs: 100, fallback: { share: 0.5, maxKeys: 50_000 } });
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
  const result: MultiResult = await limiter.checkAll(keys, { cost: 1, blockMs: 60_000, perKeyRemaining: true });
  const each: number[] = result.perKeyRemaining;
  const refunded: number[] = await limiter.undoAll(keys, { decision: result });
  return refunded.length > 0 && each.length >= 0 ? [] : result.denied.map((denied) => `${denied.index}:${denied.key}`);
}

async function lift(user: string): Promise<boolean> {
  try {
    return await limiter.unblock(`login:${user}`, { reset: true });
  } catch (error) {
    if (error instanceof RateLimitUnavailableError) return false;
    throw error;
  }
}

const app = express();
// For every route.
app.use(expressRateLimit(limiter, { limits: perMinute, key: (req) => req.get("x-user-id") ?? req.ip }));
app.use(
  expressRateLimit(limiter, {
    name: "api",
    blockMs: 3_600_000,
    keys: (req) => [
      { name: "user", key: `{t:7}:user:${req.get("x-user-id")}`, limits: perMinute },
      req.ip ? { name: "ip", key: `{t:7}:ip:${req.ip}`, limits: perMinute } : undefined,
    ],
    onLimited: (_req, res, info) => res.status(429).json({ limitedBy: info.denied.map((denied) => denied.name) }),
  }),
);
// A route's own: the callbacks' req is Express's.
app.get("/x", expressRateLimit(limiter, { limits: perMinute, key: (req) => req.get("x-user-id") ?? "anon" }), (_req, res) => {
  res.send("ok");
});
app.post(
  "/login",
  express.urlencoded({ extended: false }),
  expressRateLimit(limiter, {
    name: "login",
    limits: { windowMs: 900_000, max: 5 },
    blockMs: 3_600_000,
    key: (req) => req.body.username,
    refundWhen: (status) => status < 400,
    onLimited: (_req, res, info) => res.status(429).set("x-limited-by", info.key).send("locked out"),
  }),
  (_req, res) => {
    res.send("in");
  },
);
app.get(
  "/search",
  expressRateLimit(limiter, {
    name: "search",
    keys: (req) => [
      { name: "user", key: `{s}:user:${req.get("x-user-id") ?? "anon"}`, limits: perMinute },
      { name: "tenant", key: `{s}:tenant:${req.params.tenant ?? "none"}`, limits: { windowMs: 60_000, max: 1000 } },
    ],
    shadow: true,
  }),
  (_req, res) => {
    res.send("found");
  },
);
// The callbacks' req is typed, not any: what Express's req lacks does not compile.
app.get(
  "/typed",
  // @ts-expect-error Property 'noSuchField' does not exist on type 'ExpressRequest'.
  expressRateLimit(limiter, { limits: perMinute, key: (req) => req.noSuchField }),
  (_req, res) => {
    res.send("ok");
  },
);
const router = express.Router();
router.get("/y", expressRateLimit(limiter, { limits: perMinute, key: (req) => req.get("x-api-key") }), (_req, res) => {
  res.send("ok");
});
app.use("/v1", router);

// node:http
const nodeRedis = createClient();
nodeRedis.on("error", () => {});
const nodeRedisLimiter = new RateLimiter(nodeRedis);
http.createServer(
  withRateLimit(
    nodeRedisLimiter,
    { limits: perMinute, key: (req) => String(req.headers["x-user-id"] ?? req.socket?.remoteAddress) },
    (_req, res) => res.end("ok"),
  ),
);

// Fastify: the plugin for every route, the hooks for one.
const fastify = Fastify();
void fastify.register(fastifyRateLimit, { limiter, limits: perMinute, key: (req) => String(req.headers["x-user-id"] ?? req.ip) });
fastify.get(
  "/z",
  { ...fastifyHooks(limiter, { limits: perMinute, key: (req) => req.headers["x-api-key"]?.toString() }) },
  async () => "ok",
);

// Fetch
export const GET = fetchRateLimit(
  limiter,
  { limits: perMinute, key: (req) => req.headers.get("x-api-key") ?? undefined },
  () => new Response("ok"),
);
export const POST = fetchRateLimit(
  limiter,
  { keys: (req) => [{ key: `user:${req.headers.get("x-user-id")}`, limits: perMinute }], shadow: true },
  async (req: Request) => new Response(await req.text()),
);

// Metrics: prom-client, or any sink of the three reports.
async function withMetrics(): Promise<RateLimiter> {
  return new RateLimiter(redis, { metrics: await prometheusMetrics(register) });
}
const sink: Metrics = { decision: () => {}, error: () => {}, roundTrip: () => {} };
void new RateLimiter(redis, { metrics: sink });

// The token bucket (GCRA): the client, every middleware, the headers, the fallback's engine.
const perUser: GcraLimit = { maxBurst: 15, count: 30, periodMs: 60_000 };
async function bucket(user: string): Promise<number> {
  const result: GcraResult = await limiter.gcra(`gcra:${user}`, perUser, { tokens: 2 });
  const decision: GcraDecision = result;
  const headers: Record<string, string> = gcraRateLimitHeaders(perUser, "api", decision);
  return decision.allowed ? decision.remaining + decision.burst : decision.retryAfterMs + Object.keys(headers).length;
}
app.use(expressRateLimit(limiter, { name: "bucket", gcra: perUser, key: (req) => req.get("x-user-id") ?? req.ip }));
app.get(
  "/upload",
  expressRateLimit(limiter, {
    gcra: (req) => (req.get("x-plan") === "pro" ? { ...perUser, count: 300 } : perUser),
    key: (req) => req.get("x-user-id") ?? "anon",
    cost: (req) => (Number(req.get("content-length") ?? 0) > 1_000_000 ? 5 : 1),
    shadow: true,
    onLimited: (_req, res, info) => res.status(429).json({ retryAfterMs: info.result.retryAfterMs }),
  }),
  (_req, res) => {
    res.send("ok");
  },
);
// @ts-expect-error gcra and limits exclude each other.
expressRateLimit(limiter, { gcra: perUser, limits: perMinute });
// @ts-expect-error a token bucket has no block.
expressRateLimit(limiter, { gcra: perUser, blockMs: 1000 });
// @ts-expect-error a token bucket has no refund.
expressRateLimit(limiter, { gcra: perUser, refundWhen: () => true });
http.createServer(
  withRateLimit(nodeRedisLimiter, { gcra: perUser, key: (req) => req.socket?.remoteAddress }, (_req, res) => res.end("ok")),
);
fastify.get("/g", { ...fastifyHooks(limiter, { gcra: perUser, key: (req) => req.headers["x-api-key"]?.toString() }) }, async () => "ok");
void fastify.register(fastifyRateLimit, { limiter, gcra: perUser, key: (req) => req.ip, cost: () => 1 });
export const PUT = fetchRateLimit(
  limiter,
  { gcra: perUser, key: (req) => req.headers.get("x-api-key") ?? undefined },
  () => new Response("ok"),
);
// @ts-expect-error Fetch needs a key: a Request carries no peer address.
fetchRateLimit(limiter, { gcra: perUser }, () => new Response("ok"));
const memory = new MemoryLimiter();
const inMemory: GcraDecision = memory.gcra("k", perUser, { tokens: 0 });
const held: MemoryBucketState | undefined = memory.gcraState("k");
void inMemory;
void held;
void bucket;

// Token budgets: reserve an estimate, settle the actual; a settlement of your own; the middleware's settle option.
const budget: Limit = { windowMs: 60_000, max: 10_000 };
async function spend(user: string, estimate: number, actual: () => Promise<number>): Promise<number> {
  const reservation: Reservation = await limiter.reserve(`tokens:${user}`, budget, { estimate });
  if (!reservation.allowed) return reservation.retryAfterMs;
  const handle: ReservationHandle = reservation.handle;
  const settled: SettleResult = await limiter.settle(handle, await actual());
  const several: MultiReservation = await limiter.reserve(
    [
      { key: `{t}:${user}`, limits: budget },
      { key: "{t}:all", limits: { windowMs: 60_000, max: 100_000 } },
    ],
    { estimate, perKeyRemaining: true },
  );
  const both: SettleResult = await limiter.settle(several.handle, 0);
  const own: ChargeResult = await limiter.charge(`tokens:${user}`, budget, { cost: 20_000 });
  const ownAll: MultiChargeResult = await limiter.chargeAll([{ key: `tokens:${user}`, limits: budget }], { cost: 5, precision: 10 });
  const inProcess: Settlement = memory.charge("k", budget, { cost: 3 });
  const charged = settled.charged?.over ?? 0;
  return charged + both.refunded.length + own.over + ownAll.overKeys.length + inProcess.remaining + handle.estimate;
}
// @ts-expect-error reserve needs an estimate.
void limiter.reserve("k", budget, {});
// @ts-expect-error a settlement never blocks.
void limiter.charge("k", budget, { blockMs: 1000 });
app.post(
  "/v1/chat/completions",
  expressRateLimit(limiter, {
    limits: budget,
    key: (req) => req.get("x-user"),
    cost: async (req) => Number(req.get("x-max-tokens") ?? 1000),
    settle: (_req, res) => (res.locals as Record<string, number | undefined>).totalTokens,
  }),
  (_req, res) => {
    res.end();
  },
);
http.createServer(
  withRateLimit(limiter, { limits: budget, cost: () => 100, settle: async (req) => Number(req.headers["x-used"] ?? 0) }, (_req, res) =>
    res.end("ok"),
  ),
);
void fastify.register(fastifyRateLimit, {
  limiter,
  limits: budget,
  key: (req) => req.ip,
  cost: 100,
  settle: (_req, reply) => reply.statusCode,
});
export const STREAM = fetchRateLimit(
  limiter,
  { limits: budget, key: (req) => req.headers.get("x-user") ?? undefined, cost: 100, settle: async () => 42 },
  () => new Response(new ReadableStream()),
);
void spend;

// Token budgets over a token bucket: reserveGcra and settle; gcraCharge and gcraRefund; the middleware's gcra with settle.
const tokenBucket: GcraLimit = { maxBurst: 9_999, count: 10_000, periodMs: 60_000 };
async function spendBucket(user: string, estimate: number, actual: number): Promise<number> {
  const reservation: GcraReservation = await limiter.reserveGcra(`bucket:${user}`, tokenBucket, { estimate });
  if (!reservation.allowed) return reservation.retryAfterMs;
  const settled: SettleResult = await limiter.settle(reservation.handle, actual);
  const charged: GcraSettleResult = await limiter.gcraCharge(`bucket:${user}`, tokenBucket, { tokens: 500 });
  const refunded: GcraSettleResult = await limiter.gcraRefund(`bucket:${user}`, tokenBucket, { tokens: 200 });
  const inProcess: GcraSettlement = memory.gcraCharge("k", tokenBucket, { tokens: 3 });
  const back: GcraSettlement = memory.gcraRefund("k", tokenBucket);
  return (settled.bucket?.over ?? 0) + charged.over + refunded.remaining + inProcess.retryAfterMs + back.resetAfterMs + reservation.burst;
}
// @ts-expect-error reserveGcra needs an estimate.
void limiter.reserveGcra("k", tokenBucket, {});
app.post(
  "/v1/completions",
  expressRateLimit(limiter, {
    gcra: tokenBucket,
    key: (req) => req.get("x-user"),
    cost: 1000,
    settle: (_req, res) => (res.locals as Record<string, number | undefined>).totalTokens,
  }),
  (_req, res) => {
    res.end();
  },
);
void spendBucket;

const store = new RateLimitStore(limiter);
const flexible = new FlexibleLimiter(limiter, { points: 5, duration: 60, blockDuration: 3600 });
void flexible.unblock("alice");
void flexible.consume("alice").then((res) => res.remainingPoints + res.msBeforeNext);
void store;
void decide;
void severalKeys;
void lift;
void withMetrics;
