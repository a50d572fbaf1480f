// What every middleware shares: which limits and key apply to a request,
// the verdict, the IETF fields of draft-ietf-httpapi-ratelimit-headers-11,
// and the refund. The framework skins (express.ts, fastify.ts, node.ts,
// fetch.ts) only read requests and write responses.

import type { RateLimiter, Result } from "./limiter.js";
import type { Limit } from "./limits.js";

export type Awaitable<T> = T | Promise<T>;

export interface MiddlewareOptions<Req> {
  /** The limits of this route: fixed, or chosen per request (null or undefined: not limited). */
  limits: Limit | readonly Limit[] | ((req: Req) => Limit | readonly Limit[] | null | undefined);
  /** Who is limited: user id, API key, address. Undefined skips the request. */
  key?: (req: Req) => Awaitable<string | undefined>;
  /** Namespaces the keys of this middleware and names its policy (default "default"). */
  name?: string;
  /** Units a request costs (default 1). */
  cost?: number | ((req: Req) => number);
  /** Refund the request when the response has this status (default: status >= 500). */
  refundWhen?: (status: number) => boolean;
}

/** What a 429 (or 503) hook receives. */
export interface LimitedInfo {
  /** "limited": over the limit (429); "unavailable": Redis unreachable and failing closed (503). */
  reason: "limited" | "unavailable";
  result: Result;
  key: string;
  /** The header fields the default answer sets. */
  headers: Record<string, string>;
}

export interface Verdict {
  pass: boolean;
  info: LimitedInfo;
  /** Refunds this request once (idempotent); safe to call in any response path. */
  refund(): Promise<void>;
  refundWhen(status: number): boolean;
}

function listOf(limits: Limit | readonly Limit[]): readonly Limit[] {
  return Array.isArray(limits) ? (limits as readonly Limit[]) : [limits as Limit];
}

function seconds(ms: number): number {
  return Math.ceil(ms / 1000);
}

function policyNames(limits: readonly Limit[], name: string): string[] {
  return limits.map((limit) => limit.name ?? (limits.length === 1 ? name : `${name}-${seconds(limit.windowMs)}s`));
}

/**
 * RateLimit-Policy lists every limit; RateLimit reports the least remaining
 * over them (what the module answers) under the first policy's name, with
 * t the seconds until capacity returns: all of it when allowed, enough for
 * this request when refused. Retry-After on refusals.
 */
export function rateLimitHeaders(limits: readonly Limit[], name: string, result: Result): Record<string, string> {
  const names = policyNames(limits, name);
  const policy = limits.map((limit, i) => `"${names[i]}";q=${limit.max};w=${seconds(limit.windowMs)}`).join(", ");
  const waitMs = result.allowed ? result.resetAfterMs : result.retryAfterMs;
  const headers: Record<string, string> = {
    "RateLimit-Policy": policy,
    RateLimit: `"${names[0]}";r=${result.remaining};t=${seconds(waitMs)}`,
  };
  if (!result.allowed) headers["Retry-After"] = String(Math.max(1, seconds(result.retryAfterMs)));
  return headers;
}

/** Decides one request; undefined when this request is not limited. */
export async function judge<Req>(
  limiter: RateLimiter,
  options: MiddlewareOptions<Req>,
  req: Req,
  fallbackKey: (req: Req) => string | undefined,
): Promise<Verdict | undefined> {
  const chosen = typeof options.limits === "function" ? options.limits(req) : options.limits;
  if (!chosen) return undefined;
  const id = options.key ? await options.key(req) : fallbackKey(req);
  if (id === undefined) return undefined;
  const limits = listOf(chosen);
  const name = options.name ?? "default";
  const key = `${name}:${id}`;
  const cost = typeof options.cost === "function" ? options.cost(req) : options.cost;
  const result = await limiter.check(key, limits, cost === undefined ? {} : { cost });
  let refunded = false;
  const refund = async () => {
    if (refunded || !result.allowed) return;
    refunded = true;
    // A refund that fails is already reported to the logger; the response has gone.
    await limiter.undo(key, cost === undefined ? { decision: result } : { cost, decision: result }).catch(() => undefined);
  };
  if (result.source === "failClosed") {
    return {
      pass: false,
      info: { reason: "unavailable", result, key, headers: { "Retry-After": String(Math.max(1, seconds(result.retryAfterMs))) } },
      refund,
      refundWhen: () => false,
    };
  }
  // Failing open serves without claiming a quota nobody counted.
  const headers = result.source === "failOpen" ? {} : rateLimitHeaders(limits, name, result);
  const refundWhen = options.refundWhen ?? ((status: number) => status >= 500);
  return { pass: result.allowed, info: { reason: "limited", result, key, headers }, refund, refundWhen };
}

export function statusOf(info: LimitedInfo): number {
  return info.reason === "limited" ? 429 : 503;
}

export function bodyOf(info: LimitedInfo): string {
  return info.reason === "limited" ? "Too Many Requests\n" : "Rate limiter unavailable\n";
}
