// Arguments of RATELIMIT.CHECK/PEEK/UNDO, validated before anything is sent
// so bad input fails here with a clear message and never reaches Redis.

/** "At most `max` units of cost in any `windowMs` milliseconds." */
export interface Limit {
  windowMs: number;
  max: number;
  /** Policy name in the RateLimit-Policy header (default: the middleware's name for one limit, "<name>-<seconds>s" for several). */
  name?: string;
}

/** Options of one call. */
export interface CallOptions {
  /** Units this request costs (default 1, at most the smallest max). */
  cost?: number;
  /** Requests within the same `precision` ms share one entry (1 to the shortest window; default exact). */
  precision?: number;
}

/** The module's reply, named. */
export interface Decision {
  allowed: boolean;
  /** The least, over the limits, of max minus the cost in its window after this call. */
  remaining: number;
  /** 0 if allowed; else the exact wait after which this same request would pass every limit. */
  retryAfterMs: number;
  /** Wait until the call's longest window holds nothing of this key. */
  resetAfterMs: number;
}

const MAX_WINDOW_MS = 31_536_000_000;
const MAX_PAIRS = 8;

export class RateLimitInputError extends Error {
  override name = "RateLimitInputError";
}

function requireInteger(value: unknown, what: string, low: number, high: number): number {
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < low || value > high) {
    throw new RateLimitInputError(`${what} must be an integer from ${low} to ${high}, got ${String(value)}`);
  }
  return value;
}

/** Checks limits as the module does (README "Errors") and returns them as one array. */
export function validateLimits(limits: Limit | readonly Limit[]): readonly Limit[] {
  const list = Array.isArray(limits) ? (limits as readonly Limit[]) : [limits as Limit];
  if (list.length === 0 || list.length > MAX_PAIRS) {
    throw new RateLimitInputError(`give 1 to ${MAX_PAIRS} limits, got ${list.length}`);
  }
  const seen = new Set<number>();
  for (const limit of list) {
    requireInteger(limit?.windowMs, "windowMs", 1, MAX_WINDOW_MS);
    requireInteger(limit.max, "max", 1, Number.MAX_SAFE_INTEGER);
    if (seen.has(limit.windowMs)) throw new RateLimitInputError(`window ${limit.windowMs} is given twice`);
    seen.add(limit.windowMs);
  }
  return list;
}

export function smallestMax(limits: readonly Limit[]): number {
  return Math.min(...limits.map((limit) => limit.max));
}

export function shortestWindow(limits: readonly Limit[]): number {
  return Math.min(...limits.map((limit) => limit.windowMs));
}

export function longestWindow(limits: readonly Limit[]): number {
  return Math.max(...limits.map((limit) => limit.windowMs));
}

/** Validates cost and precision against the limits; returns the cost. */
export function validateOptions(limits: readonly Limit[], options: CallOptions): number {
  const cost = options.cost ?? 1;
  requireInteger(cost, "cost", 1, smallestMax(limits));
  if (options.precision !== undefined) requireInteger(options.precision, "precision", 1, shortestWindow(limits));
  return cost;
}

export function validateKey(key: unknown): string {
  if (typeof key !== "string" || key.length === 0) {
    throw new RateLimitInputError(`key must be a non-empty string, got ${JSON.stringify(key)}`);
  }
  return key;
}

/** The module's arguments after the key: window max [...] [COST n] [PRECISION p]. */
export function limitArgs(limits: readonly Limit[], options: CallOptions): string[] {
  const args = limits.flatMap((limit) => [String(limit.windowMs), String(limit.max)]);
  if (options.cost !== undefined) args.push("COST", String(options.cost));
  if (options.precision !== undefined) args.push("PRECISION", String(options.precision));
  return args;
}

/** A reply integer (number, bigint or digits) as a number; undefined unless a number holds it exactly (up to 2^53 - 1). */
function toInteger(value: unknown): number | undefined {
  const number = typeof value === "bigint" || (typeof value === "string" && /^-?\d+$/.test(value)) ? Number(value) : value;
  return typeof number === "number" && Number.isSafeInteger(number) ? number : undefined;
}

/**
 * Reads [allowed, remaining, retry_after_ms, reset_after_ms]. Anything else
 * is an error: a reply read as something else must never count as allowed.
 */
export function parseDecision(reply: unknown): Decision {
  const fields = Array.isArray(reply) && reply.length === 4 ? reply.map(toInteger) : [];
  const [allowed, remaining, retryAfterMs, resetAfterMs] = fields;
  if (allowed === undefined || remaining === undefined || retryAfterMs === undefined || resetAfterMs === undefined) {
    throw new Error(`unexpected reply to a rate-limit call: ${describe(reply)}`);
  }
  return { allowed: allowed === 1, remaining, retryAfterMs, resetAfterMs };
}

export function parseCount(reply: unknown): number {
  const count = toInteger(reply);
  if (count === undefined) throw new Error(`unexpected reply to RATELIMIT.UNDO: ${describe(reply)}`);
  return count;
}

function describe(reply: unknown): string {
  return JSON.stringify(reply, (_, value: unknown) => (typeof value === "bigint" ? String(value) : value)) ?? String(reply);
}
