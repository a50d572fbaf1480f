// What every middleware shares: which limits and key apply to a request,
// the verdict, the IETF fields of draft-ietf-httpapi-ratelimit-headers-11,
// and the refund. The framework skins (express.ts, fastify.ts, node.ts,
// fetch.ts) only read requests and write responses.

import type { DeniedKey, GcraResult, RateLimiter, ReservationHandle, Result } from "./limiter.js";
import {
  type CallOptions,
  type GcraDecision,
  type GcraLimit,
  type KeyLimits,
  type Limit,
  RateLimitInputError,
  RateLimitReplyError,
} from "./limits.js";
import type { Outcome } from "./metrics.js";

export type Awaitable<T> = T | Promise<T>;

interface CommonOptions<Req> {
  /** Namespaces the keys of this middleware (`<name>:<key>`) and names its policy (default "default"). */
  name?: string;
  /**
   * Units a request costs (default 1), or `(req) => units` (may be async);
   * with `gcra`, the request's tokens (0 asks without charging); with a
   * `settle` option, the estimate reserved before the request.
   */
  cost?: number | ((req: Req) => Awaitable<number>);
  /** A penalty: a request refused by a key's limits blocks that key for this many ms (README "Penalties"). */
  blockMs?: number;
  /** Refund the request when the response has this status (default: status >= 500). */
  refundWhen?: (status: number) => boolean;
  /**
   * Rolls a limit out without enforcing it: every request is decided and
   * recorded as usual, but never refused and given no rate-limit headers;
   * one that would have been refused is logged (warning) and counted
   * (outcome "shadow_denied").
   */
  shadow?: boolean;
}

/** One key per request. */
export interface OneKeyOptions<Req> extends CommonOptions<Req> {
  /** The limits of this route: fixed, or chosen per request (null or undefined: not limited). */
  limits: Limit | readonly Limit[] | ((req: Req) => Limit | readonly Limit[] | null | undefined);
  /** Who is limited: user id, API key, address. Undefined skips the request. */
  key?: (req: Req) => Awaitable<string | undefined>;
  keys?: never;
  gcra?: never;
}

/** One subject of a request (a user, an address, a tenant) with its own limits. */
export interface RequestKey extends KeyLimits {
  /** Names its policy in the headers and in LimitedInfo.denied (default "<middleware name>-<position from 1>"). */
  name?: string;
}

/** Several keys per request, decided at once: allowed only if every key allows, then charged to every key. */
export interface SeveralKeysOptions<Req> extends CommonOptions<Req> {
  /** The request's keys, each with its limits (null or undefined entries are left out; none left: not limited). */
  keys: (req: Req) => Awaitable<readonly (RequestKey | null | undefined)[] | null | undefined>;
  limits?: never;
  key?: never;
  gcra?: never;
}

/**
 * One token bucket (GCRA) per request instead of sliding-window limits.
 * `cost` gives the request's tokens (with a `settle` option, the estimate
 * reserved with limiter.reserveGcra, settled by CHARGE or REFUND). No
 * block; no `refundWhen`: without `settle` nothing is refunded, with it a
 * failed request (status >= 500) settles at 0.
 */
export interface GcraKeyOptions<Req> extends Omit<CommonOptions<Req>, "blockMs" | "refundWhen"> {
  /** The bucket of this route: fixed, or chosen per request (null or undefined: not limited). */
  gcra: GcraLimit | ((req: Req) => GcraLimit | null | undefined);
  /** Who is limited: user id, API key, address. Undefined skips the request. */
  key?: (req: Req) => Awaitable<string | undefined>;
  limits?: never;
  keys?: never;
  blockMs?: never;
  refundWhen?: never;
}

export type MiddlewareOptions<Req> = OneKeyOptions<Req> | SeveralKeysOptions<Req> | GcraKeyOptions<Req>;

/**
 * The actual units a request spent, reported once its response has ended
 * (each framework's `settle` option returns it): a number from 0 to 2^53,
 * or undefined to keep the estimate.
 */
export type Actual = number | undefined;

/** A key that refused the request, with the name of its policy. */
export interface LimitedKey extends DeniedKey {
  name: string;
}

/** What a 429 (or 503) hook receives. */
export interface LimitedInfo {
  /** "limited": over the limit (429); "unavailable": Redis unreachable and failing closed (503). */
  reason: "limited" | "unavailable";
  /** The decision; under `gcra`, a GcraResult (with `burst`; retryAfterMs -1 for a request that can never fit). */
  result: Result | GcraResult;
  /** The key decided (the first one when there are several). */
  key: string;
  /** Every key decided, namespaced as stored. */
  keys: string[];
  /** The keys that refused the request, by their limits or by a block (empty when unavailable). */
  denied: LimitedKey[];
  /** The header fields the default answer sets. */
  headers: Record<string, string>;
}

export interface Verdict {
  pass: boolean;
  info: LimitedInfo;
  /** Refunds this request once (idempotent); safe to call in any response path. With a reservation: settles it at 0. */
  refund(): Promise<void>;
  refundWhen(status: number): boolean;
  /**
   * With a reservation (a `settle` option): settles it with the actual units
   * `report` gives (undefined: the estimate), once; the first of settle and
   * refund wins. Never rejects: a settlement that fails is logged, with its
   * amount (by the limiter; here when `report` throws or gives no valid count).
   */
  settle?: (report: () => Awaitable<Actual>) => Promise<void>;
}

function listOf(limits: Limit | readonly Limit[]): readonly Limit[] {
  return Array.isArray(limits) ? (limits as readonly Limit[]) : [limits as Limit];
}

function seconds(ms: number): number {
  return Math.ceil(ms / 1000);
}

/** The policy names of one key's limits: `name` for a single limit, `<name>-<seconds>s` each for several, unless a limit names itself. */
function policyNames(limits: readonly Limit[], name: string): string[] {
  return limits.map((limit) => limit.name ?? (limits.length === 1 ? name : `${name}-${seconds(limit.windowMs)}s`));
}

/** One key of a request as the middleware decides it. */
interface Subject {
  /** Namespaced, as stored. */
  key: string;
  name: string;
  limits: readonly Limit[];
}

/**
 * The key that binds: the one with the least remaining (the first of
 * them on a tie), where each key's own remaining is known; else the first
 * key that refused, or the first key.
 */
function bindingOf(denied: readonly DeniedKey[], perKeyRemaining: readonly number[]): number {
  if (perKeyRemaining.length === 0) return denied[0]?.index ?? 0;
  return perKeyRemaining.indexOf(Math.min(...perKeyRemaining));
}

/**
 * RateLimit-Policy lists every limit of every key; RateLimit reports the
 * least remaining over them (what the module answers) under the binding
 * key's policy (its first limit's name), with t the seconds until capacity
 * returns: all of it when allowed, enough for this request when refused
 * (the rest of a block, while one runs). Retry-After on refusals.
 */
function headersOf(subjects: readonly Subject[], binding: number, result: Result): Record<string, string> {
  const named = subjects.map((subject) => policyNames(subject.limits, subject.name));
  const policy = subjects
    .flatMap((subject, i) => subject.limits.map((limit, j) => `"${named[i]?.[j]}";q=${limit.max};w=${seconds(limit.windowMs)}`))
    .join(", ");
  const waitMs = result.allowed ? result.resetAfterMs : result.retryAfterMs;
  const headers: Record<string, string> = {
    "RateLimit-Policy": policy,
    RateLimit: `"${named[binding]?.[0]}";r=${result.remaining};t=${seconds(waitMs)}`,
  };
  if (!result.allowed) headers["Retry-After"] = String(Math.max(1, seconds(result.retryAfterMs)));
  return headers;
}

/** The header fields for one key's limits and its result (README "Middleware"). */
export function rateLimitHeaders(limits: readonly Limit[], name: string, result: Result): Record<string, string> {
  return headersOf([{ key: name, name, limits }], 0, result);
}

/** ceil(a / b) for integers, exactly (a product of two bounds may pass 2^53). */
function ceilDivExact(a: bigint, b: bigint): bigint {
  return (a + b - 1n) / b;
}

/**
 * The header fields for a token bucket and its result: RateLimit-Policy
 * `"<name>";q=<burst>;w=<seconds to refill a full bucket>`, RateLimit
 * `"<name>";r=<remaining>;t=<seconds until the bucket is empty>`, and
 * Retry-After on a refusal (none for a request that can never fit).
 */
export function gcraRateLimitHeaders(limit: GcraLimit, name: string, result: GcraDecision): Record<string, string> {
  const burst = BigInt(limit.maxBurst) + 1n;
  const refill = ceilDivExact(burst * BigInt(limit.periodMs), BigInt(limit.count) * 1000n);
  const headers: Record<string, string> = {
    "RateLimit-Policy": `"${name}";q=${burst};w=${refill}`,
    RateLimit: `"${name}";r=${result.remaining};t=${seconds(result.resetAfterMs)}`,
  };
  if (!result.allowed && result.retryAfterMs !== -1) headers["Retry-After"] = String(seconds(result.retryAfterMs));
  return headers;
}

/** How a request was decided, as counted (ratelimit_decisions_total{outcome}). */
function outcomeOf(result: Result | GcraResult, shadow: boolean): Outcome {
  if (result.source === "failOpen") return "fail_open";
  if (result.source === "failClosed") return "fail_closed";
  if (!result.allowed && shadow) return "shadow_denied";
  if (result.source === "fallback") return result.allowed ? "fallback_allowed" : "fallback_denied";
  return result.allowed ? "allowed" : "denied";
}

/** The request's keys with their limits and policy names; undefined when it is not limited. */
async function subjectsOf<Req>(
  options: OneKeyOptions<Req> | SeveralKeysOptions<Req>,
  req: Req,
  fallbackKey: (req: Req) => string | undefined,
): Promise<Subject[] | undefined> {
  const name = options.name ?? "default";
  if (options.keys && (options.limits || options.key)) {
    throw new TypeError("redis-ratelimit: give the middleware `limits` (and `key`) or `keys`, not both");
  }
  if (options.keys) {
    const given = (await options.keys(req)) ?? [];
    const subjects = given.flatMap((entry, i) =>
      entry ? [{ key: `${name}:${entry.key}`, name: entry.name ?? `${name}-${i + 1}`, limits: listOf(entry.limits) }] : [],
    );
    return subjects.length > 0 ? subjects : undefined;
  }
  const chosen = typeof options.limits === "function" ? options.limits(req) : options.limits;
  if (!chosen) return undefined;
  const id = options.key ? await options.key(req) : fallbackKey(req);
  return id === undefined ? undefined : [{ key: `${name}:${id}`, name, limits: listOf(chosen) }];
}

/**
 * One key: check and undo; several: checkAll (with each key's own
 * remaining, to name the binding one) and undoAll.
 */
async function decide(
  limiter: RateLimiter,
  subjects: readonly Subject[],
  options: CallOptions,
  reserve: boolean,
): Promise<{ result: Result; denied: DeniedKey[]; binding: number; undo: () => Promise<unknown>; handle?: ReservationHandle }> {
  const cost = options.cost === undefined ? {} : { cost: options.cost };
  const [only] = subjects;
  if (reserve) {
    const { cost: estimate = 1, ...rest } = options;
    if (subjects.length === 1 && only) {
      const result = await limiter.reserve(only.key, only.limits, { ...rest, estimate });
      const denied = result.allowed || result.source === "failClosed" ? [] : [{ key: only.key, index: 0 }];
      return { result, denied, binding: 0, undo: async () => undefined, handle: result.handle };
    }
    const result = await limiter.reserve(subjects, { ...rest, estimate, perKeyRemaining: true });
    const binding = bindingOf(result.denied, result.perKeyRemaining);
    return { result, denied: result.denied, binding, undo: async () => undefined, handle: result.handle };
  }
  if (subjects.length === 1 && only) {
    const result = await limiter.check(only.key, only.limits, options);
    const denied = result.allowed || result.source === "failClosed" ? [] : [{ key: only.key, index: 0 }];
    return { result, denied, binding: 0, undo: () => limiter.undo(only.key, { ...cost, decision: result }) };
  }
  const result = await limiter.checkAll(subjects, { ...options, perKeyRemaining: true });
  const binding = bindingOf(result.denied, result.perKeyRemaining);
  return { result, denied: result.denied, binding, undo: () => limiter.undoAll(subjects, { ...cost, decision: result }) };
}

function logShadowDenial(limiter: RateLimiter, policy: string, result: Result | GcraResult): void {
  limiter.logger.warn(`redis-ratelimit: shadow mode: ${policy} would have denied this request (retry after ${result.retryAfterMs} ms)`, {
    policy,
  });
}

/**
 * The answer every middleware gives a decided request: refused unless
 * allowed, 503 while failing closed, no headers while failing open or in
 * shadow mode (where a would-be refusal is logged), counted under `policy`.
 */
function verdictOf(
  limiter: RateLimiter,
  shadow: boolean,
  policy: string,
  result: Result | GcraResult,
  info: Omit<LimitedInfo, "reason" | "headers">,
  headers: () => Record<string, string>,
  refund: () => Promise<void>,
  refundWhen: (status: number) => boolean,
): Verdict {
  limiter.metrics?.decision(policy, outcomeOf(result, shadow));
  if (shadow) {
    // Not in force for clients: no refusal and no headers; an outage is the policy's to count, not a would-be refusal.
    if (!result.allowed && result.source !== "failClosed") logShadowDenial(limiter, policy, result);
    return { pass: true, info: { reason: "limited", ...info, headers: {} }, refund, refundWhen };
  }
  if (result.source === "failClosed") {
    const retryAfter = { "Retry-After": String(Math.max(1, seconds(result.retryAfterMs))) };
    return { pass: false, info: { reason: "unavailable", ...info, headers: retryAfter }, refund, refundWhen: () => false };
  }
  // Failing open serves without claiming a quota nobody counted.
  return {
    pass: result.allowed,
    info: { reason: "limited", ...info, headers: result.source === "failOpen" ? {} : headers() },
    refund,
    refundWhen,
  };
}

/**
 * A reservation's settle(): settles it once with what `report` gives (the
 * first of settle and a refund, which reports 0, wins). A settlement that
 * cannot reach Redis is logged by the limiter, with its amount; one the
 * server refuses (a call error, raised by settle) and a report that fails
 * are logged here, and the reservation stands.
 */
function settlerOf(limiter: RateLimiter, handle: ReservationHandle): (report: () => Awaitable<Actual>) => Promise<void> {
  let done = false;
  return async (report) => {
    if (done) return;
    done = true;
    let reported = false;
    try {
      const actual = await report();
      reported = true;
      await limiter.settle(handle, actual ?? handle.estimate);
    } catch (error) {
      if (error instanceof RateLimitInputError || !reported) {
        // The app's report failed: the reservation stands as reserved.
        const keys = handle.keys.join(", ");
        const cause = error instanceof Error ? error.message : String(error);
        limiter.logger.error(
          `redis-ratelimit: settling ${keys} failed: the app's settle gave no count of units (${cause}); the ${handle.estimate} units reserved stand`,
          { keys, units: String(handle.estimate), cause },
        );
      } else if (error instanceof RateLimitReplyError) {
        // Refused by the server (an older module, WRONGTYPE): the response is gone, no caller to raise it to.
        const keys = handle.keys.join(", ");
        limiter.logger.error(`redis-ratelimit: the settlement of a request on ${keys} was refused (${error.message})`, {
          keys,
          cause: error.message,
        });
      }
    }
  };
}

/** A request under a token bucket: one GCRA call, no refund; with `reserve`, a reservation settled by CHARGE or REFUND. */
async function judgeGcra<Req>(
  limiter: RateLimiter,
  options: GcraKeyOptions<Req>,
  req: Req,
  fallbackKey: (req: Req) => string | undefined,
  reserve: boolean,
): Promise<Verdict | undefined> {
  const given = options as MiddlewareOptions<Req>;
  if (given.limits !== undefined || given.keys !== undefined) {
    throw new TypeError("redis-ratelimit: give the middleware one of `limits` (and `key`), `keys`, or `gcra` (and `key`)");
  }
  if (given.blockMs !== undefined || given.refundWhen !== undefined) {
    throw new TypeError("redis-ratelimit: a token bucket (`gcra`) has no block and no refund: drop `blockMs` and `refundWhen`");
  }
  const limit = typeof options.gcra === "function" ? options.gcra(req) : options.gcra;
  if (!limit) return undefined;
  const id = options.key ? await options.key(req) : fallbackKey(req);
  if (id === undefined) return undefined;
  const name = options.name ?? "default";
  const key = `${name}:${id}`;
  const policy = limit.name ?? name;
  const cost = typeof options.cost === "function" ? await options.cost(req) : options.cost;
  const reservation = reserve ? await limiter.reserveGcra(key, limit, { estimate: cost ?? 1 }) : undefined;
  const result = reservation ?? (await limiter.gcra(key, limit, cost === undefined ? {} : { tokens: cost }));
  const denied = result.allowed || result.source === "failClosed" ? [] : [{ key, index: 0, name: policy }];
  const settle = reservation && settlerOf(limiter, reservation.handle);
  const verdict = verdictOf(
    limiter,
    options.shadow === true,
    policy,
    result,
    { result, key, keys: [key], denied },
    () => gcraRateLimitHeaders(limit, policy, result),
    async () => settle?.(() => 0),
    settle ? (status: number) => status >= 500 : () => false,
  );
  return settle ? { ...verdict, settle } : verdict;
}

/**
 * Decides one request; undefined when this request is not limited. With
 * `reserve` (the framework's `settle` option is given), the cost is an
 * estimate reserved with limiter.reserve, and the verdict's settle() (or a
 * refund, which settles at 0) settles it once.
 */
export async function judge<Req>(
  limiter: RateLimiter,
  options: MiddlewareOptions<Req>,
  req: Req,
  fallbackKey: (req: Req) => string | undefined,
  reserve = false,
): Promise<Verdict | undefined> {
  if (options.gcra !== undefined) return judgeGcra(limiter, options, req, fallbackKey, reserve);
  const subjects = await subjectsOf(options, req, fallbackKey);
  if (!subjects) return undefined;
  const cost = typeof options.cost === "function" ? await options.cost(req) : options.cost;
  const callOptions: CallOptions = {
    ...(cost === undefined ? {} : { cost }),
    ...(options.blockMs === undefined ? {} : { blockMs: options.blockMs }),
  };
  const { result, denied, binding, undo, handle } = await decide(limiter, subjects, callOptions, reserve);
  const bound = subjects[binding] as Subject;
  const policy = policyNames(bound.limits, bound.name)[0] as string;
  let refunded = false;
  // A settlement that fails is logged by the limiter, with its amount; the response has gone.
  const settle = handle ? settlerOf(limiter, handle) : undefined;
  const refund = async () => {
    if (settle) return settle(() => 0);
    if (refunded || !result.allowed) return;
    refunded = true;
    // A refund that fails is already reported to the logger; the response has gone.
    await undo().catch(() => undefined);
  };
  const keys = subjects.map((subject) => subject.key);
  const info = { result, key: keys[0] as string, keys, denied: denied.map((d) => ({ ...d, name: subjects[d.index]?.name ?? "" })) };
  const refundWhen = options.refundWhen ?? ((status: number) => status >= 500);
  const verdict = verdictOf(
    limiter,
    options.shadow === true,
    policy,
    result,
    info,
    () => headersOf(subjects, binding, result),
    refund,
    refundWhen,
  );
  return settle ? { ...verdict, settle } : verdict;
}

export function statusOf(info: LimitedInfo): number {
  return info.reason === "limited" ? 429 : 503;
}

export function bodyOf(info: LimitedInfo): string {
  return info.reason === "limited" ? "Too Many Requests\n" : "Rate limiter unavailable\n";
}
