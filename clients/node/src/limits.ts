// Arguments of RATELIMIT.CHECK/PEEK/UNDO, of their several-key forms
// (MCHECK/MPEEK/MUNDO) and of RATELIMIT.GCRA, validated before anything is
// sent so bad input fails here with a clear message and never reaches
// Redis; and the replies, read strictly.

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
  /**
   * A penalty: a check denied by a key's limits blocks that key for this
   * many ms (1 to 365 days); while blocked every check and peek of it is
   * denied, records nothing and does not extend the block. Peek accepts it
   * and changes nothing, so peek can take check's options.
   */
  blockMs?: number;
}

/** Options of a settlement (CHARGE, MCHARGE): no block, and a cost that may be above any max. */
export interface ChargeOptions {
  /** Units spent (default 1): 1 to 2^53, above any max if need be (a settlement is never denied). */
  cost?: number | undefined;
  /** As CallOptions' precision: 1 to the shortest window. */
  precision?: number | undefined;
}

/** CHARGE's reply, named. */
export interface Settlement {
  /** The most, over the limits, of the cost in the window after this charge less max; 0 when no limit is over. */
  over: number;
  /** The least, over the limits, of max less the cost in the window after this charge; 0 when over. */
  remaining: number;
  /** The wait until a request of cost 1 would fit every limit again; 0 if it would now. */
  retryAfterMs: number;
  /** The wait until the call's longest window holds nothing of this key. */
  resetAfterMs: number;
}

/** One key of a several-key call, with its own limits. */
export interface KeyLimits {
  key: string;
  limits: Limit | readonly Limit[];
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
/** The most keys one MCHECK/MPEEK/MUNDO takes. */
const MAX_KEYS = 16;

export class RateLimitInputError extends Error {
  override name = "RateLimitInputError";
}

/** An answer from Redis that is an error about the call itself (WRONGTYPE, a full log, an older module): thrown, never a policy. */
export class RateLimitReplyError extends Error {
  override name = "RateLimitReplyError";
}

/** The server's text for a command on a key of the other kind (a bucket given to the sliding window, or the reverse). */
export const WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value";

/** A reply that is not what the call's command answers: never read as a decision. */
export class UnexpectedReplyError extends Error {
  override name = "UnexpectedReplyError";
}

/**
 * 2^53: the largest max or cost this package takes, as the script twin
 * does (Lua's numbers are doubles, exact for every integer up to it). The
 * module takes up to 2^63 - 1, which a JS number cannot count exactly.
 */
export const EXACT = 2 ** 53;

/** The module's largest integer, 2^63 - 1: the most a refund may ask for (no double lies between 2^63 - 1024 and 2^63). */
const MAX_INT64 = 2 ** 63 - 1024;

/** An integer from `low` to `high` (at most 2^53, so every integer between them is a double). */
function requireInteger(value: unknown, what: string, low: number, high: number, shown = String(high)): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < low || value > high) {
    throw new RateLimitInputError(`${what} must be an integer from ${low} to ${shown}, got ${String(value)}`);
  }
  return value;
}

/** Checks limits as the module does (docs/commands.md, "Errors") and returns them as one array. */
export function validateLimits(limits: Limit | readonly Limit[]): readonly Limit[] {
  const list = Array.isArray(limits) ? (limits as readonly Limit[]) : [limits as Limit];
  if (list.length === 0 || list.length > MAX_PAIRS) {
    throw new RateLimitInputError(`give 1 to ${MAX_PAIRS} limits, got ${list.length}`);
  }
  const seen = new Set<number>();
  for (const limit of list) {
    requireInteger(limit?.windowMs, "windowMs", 1, MAX_WINDOW_MS);
    requireInteger(limit.max, "max", 1, EXACT, "9007199254740992 (2^53)");
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

/** Validates cost, precision and blockMs against the limits (every key's, for several keys); returns the cost. */
export function validateOptions(limits: readonly Limit[], options: CallOptions): number {
  const cost = options.cost ?? 1;
  requireInteger(cost, "cost", 1, smallestMax(limits));
  if (options.precision !== undefined) requireInteger(options.precision, "precision", 1, shortestWindow(limits));
  if (options.blockMs !== undefined) requireInteger(options.blockMs, "blockMs", 1, MAX_WINDOW_MS);
  return cost;
}

/**
 * Validates a settlement's options against the limits (every key's, for
 * several keys): cost 1 to 2^53 (above a max is fine), precision as a
 * check's, and no blockMs (a settlement never blocks). Returns the cost.
 */
export function validateChargeOptions(limits: readonly Limit[], options: ChargeOptions): number {
  const cost = options.cost ?? 1;
  requireInteger(cost, "cost", 1, EXACT, "9007199254740992 (2^53)");
  if (options.precision !== undefined) requireInteger(options.precision, "precision", 1, shortestWindow(limits));
  if ((options as CallOptions).blockMs !== undefined) throw new RateLimitInputError("a charge takes no blockMs: a settlement never blocks");
  return cost;
}

/** A reservation's estimate: the units its check reserves, 1 to the smallest max (of every key's limits). */
export function validateEstimate(limits: readonly Limit[], estimate: unknown): number {
  if (estimate === undefined) throw new RateLimitInputError("reserve needs { estimate }: the units to reserve, 1 to the smallest max");
  return requireInteger(estimate, "estimate", 1, smallestMax(limits));
}

/** A token bucket reservation's estimate: 1 to the bucket's maxBurst + 1 (more never fits). */
export function validateGcraEstimate(limit: GcraLimit, estimate: unknown): number {
  if (estimate === undefined) throw new RateLimitInputError("reserveGcra needs { estimate }: the tokens to reserve, 1 to maxBurst + 1");
  return requireInteger(estimate, "estimate", 1, limit.maxBurst + 1);
}

/** A token bucket settlement's actual tokens: 0 to 9e15 (GCRA's TOKENS). */
export function validateGcraActual(actual: unknown): number {
  return requireInteger(actual, "actual", 0, GCRA_MAX);
}

/** A settlement's actual units: 0 to 2^53. */
export function validateActual(actual: unknown): number {
  return requireInteger(actual, "actual", 0, EXACT, "9007199254740992 (2^53)");
}

/**
 * A refund's units (default 1): a positive integer up to the module's
 * 2^63 - 1 (the script twin takes as many; a refund removes at most what
 * the key holds).
 */
export function validateRefundCost(cost: unknown): number {
  if (cost === undefined) return 1;
  if (typeof cost !== "number" || !Number.isInteger(cost) || cost < 1 || cost > MAX_INT64) {
    throw new RateLimitInputError(`cost must be an integer from 1 to 9223372036854775807, got ${String(cost)}`);
  }
  return cost;
}

/** A several-key call's keys as given: 1 to 16, each at most once. */
export function validateKeys(keys: readonly unknown[]): readonly string[] {
  if (!Array.isArray(keys) || keys.length === 0 || keys.length > MAX_KEYS) {
    throw new RateLimitInputError(`give 1 to ${MAX_KEYS} keys, got ${Array.isArray(keys) ? keys.length : String(keys)}`);
  }
  const seen = new Set<string>();
  for (const key of keys) {
    validateKey(key);
    if (seen.has(key as string)) throw new RateLimitInputError(`key '${key as string}' is given more than once`);
    seen.add(key as string);
  }
  return keys as readonly string[];
}

/** A several-key call's keys and limits, each key's limits as one array. */
export function validateKeyLimits(entries: readonly KeyLimits[]): { keys: readonly string[]; limits: readonly (readonly Limit[])[] } {
  if (!Array.isArray(entries)) throw new RateLimitInputError(`give an array of { key, limits }, got ${String(entries)}`);
  const keys = validateKeys(entries.map((entry: KeyLimits | undefined) => entry?.key));
  return { keys, limits: entries.map((entry) => validateLimits(entry.limits)) };
}

/** A key is any string, as a Redis key name is (the empty one included, as the module takes it). */
export function validateKey(key: unknown): string {
  if (typeof key !== "string") {
    throw new RateLimitInputError(`key must be a string, got ${JSON.stringify(key) ?? String(key)}`);
  }
  return key;
}

/** An integer's exact decimal digits (String() abbreviates those above 2^53: 2 ** 60 prints as 1152921504606847000). */
export function digits(value: number): string {
  return Number.isSafeInteger(value) ? String(value) : BigInt(value).toString();
}

function pairArgs(limits: readonly Limit[]): string[] {
  return limits.flatMap((limit) => [digits(limit.windowMs), digits(limit.max)]);
}

function optionArgs(options: CallOptions): string[] {
  const args: string[] = [];
  if (options.cost !== undefined) args.push("COST", digits(options.cost));
  if (options.precision !== undefined) args.push("PRECISION", digits(options.precision));
  if (options.blockMs !== undefined) args.push("BLOCK", digits(options.blockMs));
  return args;
}

/** The module's arguments after the key: window max [...] [COST n] [PRECISION p] [BLOCK ms]. */
export function limitArgs(limits: readonly Limit[], options: CallOptions): string[] {
  return [...pairArgs(limits), ...optionArgs(options)];
}

/** MCHECK's arguments after its keys: each key's npairs window max [...], then the options. */
export function multiLimitArgs(limits: readonly (readonly Limit[])[], options: CallOptions): string[] {
  return [...limits.flatMap((list) => [String(list.length), ...pairArgs(list)]), ...optionArgs(options)];
}

/**
 * A reply integer (number, bigint or digits) as a number; undefined unless
 * it is at most 2^53 in size, where every integer is a double (a max or
 * cost of 2^53 answers a remaining of 2^53).
 */
function toInteger(value: unknown): number | undefined {
  if (typeof value === "bigint" || (typeof value === "string" && /^-?\d+$/.test(value))) {
    const exact = BigInt(value);
    return exact >= -BigInt(EXACT) && exact <= BigInt(EXACT) ? Number(exact) : undefined;
  }
  return typeof value === "number" && Number.isInteger(value) && Math.abs(value) <= EXACT ? value : undefined;
}

/**
 * Reads [allowed, remaining, retry_after_ms, reset_after_ms]. Anything else
 * is an error: a reply read as something else must never count as allowed.
 */
export function parseDecision(reply: unknown): Decision {
  const fields = Array.isArray(reply) && reply.length === 4 ? reply.map(toInteger) : [];
  const [allowed, remaining, retryAfterMs, resetAfterMs] = fields;
  if (allowed === undefined || remaining === undefined || retryAfterMs === undefined || resetAfterMs === undefined) {
    throw new UnexpectedReplyError(`unexpected reply to a rate-limit call: ${describe(reply)}`);
  }
  return { allowed: allowed === 1, remaining, retryAfterMs, resetAfterMs };
}

/**
 * Reads MCHECK/MPEEK's [allowed, remaining, retry_after_ms, reset_after_ms,
 * denied]: the decision, and the 0-based indexes of the keys that denied
 * (the reply's 1-based positions, each within the `keys` keys, ascending).
 */
export function parseMultiDecision(reply: unknown, keys: number): { decision: Decision; denied: number[] } {
  const denied = Array.isArray(reply) && reply.length === 5 && Array.isArray(reply[4]) ? reply[4].map(toInteger) : undefined;
  const valid = denied?.every(
    (position, i) => position !== undefined && position >= 1 && position <= keys && position > (denied[i - 1] ?? 0),
  );
  const decision = valid && denied ? parseDecision((reply as unknown[]).slice(0, 4)) : undefined;
  // A denial names at least one key and an allowed call none: anything else is not this reply.
  if (!decision || !denied || decision.allowed !== (denied.length === 0)) {
    throw new UnexpectedReplyError(`unexpected reply to a several-key rate-limit call: ${describe(reply)}`);
  }
  return { decision, denied: denied.map((position) => (position as number) - 1) };
}

/** Reads CHARGE's [over, remaining, retry_after_ms, reset_after_ms]: four integers, none negative, remaining 0 when over. */
export function parseSettlement(reply: unknown): Settlement {
  const fields = Array.isArray(reply) && reply.length === 4 ? reply.map(toInteger) : [];
  const [over, remaining, retryAfterMs, resetAfterMs] = fields;
  if (
    over === undefined ||
    remaining === undefined ||
    retryAfterMs === undefined ||
    resetAfterMs === undefined ||
    fields.some((field) => (field as number) < 0) ||
    (over > 0 && remaining !== 0)
  ) {
    throw new UnexpectedReplyError(`unexpected reply to a charge: ${describe(reply)}`);
  }
  return { over, remaining, retryAfterMs, resetAfterMs };
}

/**
 * Reads MCHARGE's [over, remaining, retry_after_ms, reset_after_ms,
 * over_keys]: the settlement, and the 0-based indexes of the keys now over
 * (the reply's 1-based positions, each within the `keys` keys, ascending).
 */
export function parseMultiSettlement(reply: unknown, keys: number): { settlement: Settlement; over: number[] } {
  const over = Array.isArray(reply) && reply.length === 5 && Array.isArray(reply[4]) ? reply[4].map(toInteger) : undefined;
  const valid = over?.every((position, i) => position !== undefined && position >= 1 && position <= keys && position > (over[i - 1] ?? 0));
  const settlement = valid && over ? parseSettlement((reply as unknown[]).slice(0, 4)) : undefined;
  // Some key is over exactly when the most over is above 0.
  if (!settlement || !over || settlement.over > 0 !== over.length > 0) {
    throw new UnexpectedReplyError(`unexpected reply to a several-key charge: ${describe(reply)}`);
  }
  return { settlement, over: over.map((position) => (position as number) - 1) };
}

/** MUNDO's reply: the units removed from each of the `keys` keys. */
export function parseCounts(reply: unknown, keys: number): number[] {
  const counts = Array.isArray(reply) && reply.length === keys ? reply.map(toInteger) : [];
  if (counts.length !== keys || counts.some((count) => count === undefined)) {
    throw new UnexpectedReplyError(`unexpected reply to RATELIMIT.MUNDO: ${describe(reply)}`);
  }
  return counts as number[];
}

export function parseCount(reply: unknown, command: string): number {
  const count = toInteger(reply);
  if (count === undefined) throw new UnexpectedReplyError(`unexpected reply to ${command}: ${describe(reply)}`);
  return count;
}

/**
 * A token bucket (GCRA, RATELIMIT.GCRA): `count` requests per `periodMs`
 * sustained, in bursts of up to `maxBurst + 1`.
 */
export interface GcraLimit {
  /** 0 or more: the bucket holds maxBurst + 1 tokens, the most one burst may take. */
  maxBurst: number;
  /** Tokens that drain per period (1 to 9e15). */
  count: number;
  /** The period in milliseconds (1 to 7,776,000,000, 90 days). */
  periodMs: number;
  /** Policy name in the RateLimit-Policy header (default: the middleware's name). */
  name?: string;
}

/** Options of a GCRA call. */
export interface GcraOptions {
  /** The request's weight (0 to 9e15, default 1); 0 asks without charging. More than the bucket never fits: a decision with retryAfterMs -1. */
  tokens?: number;
}

/** RATELIMIT.GCRA's reply, named, its waits in milliseconds. */
export interface GcraDecision {
  allowed: boolean;
  /** maxBurst + 1: the bucket's size. */
  burst: number;
  /** Whole tokens a request could take now (after this one, if allowed); never negative. */
  remaining: number;
  /** 0 when allowed; -1 when the request can never fit (more tokens than the bucket); else the wait until this same request fits. */
  retryAfterMs: number;
  /** The wait until the bucket is empty (after this request, if allowed): a full burst fits again then. */
  resetAfterMs: number;
}

/** Options of a GCRA settlement (gcraCharge, gcraRefund). */
export interface GcraSettleOptions {
  /** The tokens charged or refunded (0 to 9e15, default 1); 0 changes nothing and answers how the bucket stands. */
  tokens?: number;
}

/** A GCRA settlement's reply (RATELIMIT.GCRA ... CHARGE or REFUND), named, its waits in milliseconds: never limited. */
export interface GcraSettlement {
  /** Whole tokens the bucket holds above its size after it, rounded up (a debt); 0 when it fits. */
  over: number;
  /** maxBurst + 1: the bucket's size. */
  burst: number;
  /** Whole tokens a request could take now; 0 when full or over. */
  remaining: number;
  /** The wait until a request of 1 token fits; 0 if it fits now. */
  retryAfterMs: number;
  /** The wait until the bucket is empty. */
  resetAfterMs: number;
}

/** The most a count, a request's tokens or a full bucket ((maxBurst + 1) x periodMs) may be: 9e15, exact in a double. */
export const GCRA_MAX = 9_000_000_000_000_000;
/** The longest period: 90 days. */
const GCRA_MAX_PERIOD_MS = 7_776_000_000;

/** Checks a token bucket's limit as the module does (docs/gcra.md, "Errors"), naming the field. */
export function validateGcraLimit(limit: GcraLimit): GcraLimit {
  requireInteger(limit?.maxBurst, "maxBurst", 0, GCRA_MAX - 1);
  requireInteger(limit.count, "count", 1, GCRA_MAX);
  requireInteger(limit.periodMs, "periodMs", 1, GCRA_MAX_PERIOD_MS);
  // Exact: a product of integers is exact up to 2^53, and one above 2^53 rounds to at least 2^53.
  if ((limit.maxBurst + 1) * limit.periodMs > GCRA_MAX) {
    const capacity = (BigInt(limit.maxBurst) + 1n) * BigInt(limit.periodMs);
    throw new RateLimitInputError(`(maxBurst + 1) × periodMs must be at most ${GCRA_MAX}, got ${capacity}: lower maxBurst or periodMs`);
  }
  return limit;
}

/** A GCRA request's tokens (default 1). */
export function validateTokens(tokens: unknown): number {
  if (tokens === undefined) return 1;
  return requireInteger(tokens, "tokens", 0, GCRA_MAX);
}

/** A period in ms as the module reads it: seconds, with the fraction's trailing zeros dropped (60, 0.5, 1.25, 0.001). */
export function periodWord(periodMs: number): string {
  const seconds = Math.floor(periodMs / 1000);
  const ms = periodMs % 1000;
  return ms === 0 ? String(seconds) : `${seconds}.${String(ms).padStart(3, "0").replace(/0+$/, "")}`;
}

/** RATELIMIT.GCRA's arguments after the key: max_burst count period [TOKENS n] MS [CHARGE | REFUND]. */
export function gcraArgs(limit: GcraLimit, tokens: number | undefined, settle?: "charge" | "refund"): string[] {
  const args = [digits(limit.maxBurst), digits(limit.count), periodWord(limit.periodMs)];
  if (tokens !== undefined) args.push("TOKENS", digits(tokens));
  args.push("MS");
  if (settle) args.push(settle.toUpperCase());
  return args;
}

/** A GCRA settlement from the module's five fields (waits in ms): retry_after -1 means a token fits now. */
export function gcraSettlementOf([over, burst, remaining, retryAfter, resetAfter]: readonly number[]): GcraSettlement {
  return {
    over: over as number,
    burst: burst as number,
    remaining: remaining as number,
    retryAfterMs: retryAfter === -1 ? 0 : (retryAfter as number),
    resetAfterMs: resetAfter as number,
  };
}

/**
 * Reads RATELIMIT.GCRA ... CHARGE's or REFUND's [over, max_burst + 1,
 * remaining, retry_after, reset_after]; anything else is an error.
 */
export function parseGcraSettlement(reply: unknown): GcraSettlement {
  const fields = Array.isArray(reply) && reply.length === 5 ? reply.map(toInteger) : [];
  const [over, burst, remaining, retryAfter, resetAfter] = fields;
  const valid =
    over !== undefined &&
    over >= 0 &&
    burst !== undefined &&
    burst >= 1 &&
    remaining !== undefined &&
    remaining >= 0 &&
    retryAfter !== undefined &&
    retryAfter >= -1 &&
    resetAfter !== undefined &&
    resetAfter >= 0;
  if (!valid) throw new UnexpectedReplyError(`unexpected reply to RATELIMIT.GCRA (a settlement): ${describe(reply)}`);
  return gcraSettlementOf(fields as number[]);
}

/** A GCRA decision from the module's five fields (waits in ms): retry_after -1 means allowed, or never when limited. */
export function gcraDecisionOf([limited, burst, remaining, retryAfter, resetAfter]: readonly number[]): GcraDecision {
  const allowed = limited === 0;
  return {
    allowed,
    burst: burst as number,
    remaining: remaining as number,
    retryAfterMs: allowed ? 0 : (retryAfter as number),
    resetAfterMs: resetAfter as number,
  };
}

/**
 * Reads RATELIMIT.GCRA's [limited, max_burst + 1, remaining, retry_after,
 * reset_after]. Anything else is an error: a reply read as something else
 * must never count as allowed.
 */
export function parseGcraReply(reply: unknown): GcraDecision {
  const fields = Array.isArray(reply) && reply.length === 5 ? reply.map(toInteger) : [];
  const [limited, burst, remaining, retryAfter, resetAfter] = fields;
  const valid =
    (limited === 0 || limited === 1) &&
    burst !== undefined &&
    burst >= 1 &&
    remaining !== undefined &&
    remaining >= 0 &&
    retryAfter !== undefined &&
    retryAfter >= -1 &&
    (limited === 1 || retryAfter === -1) &&
    resetAfter !== undefined &&
    resetAfter >= 0;
  if (!valid) throw new UnexpectedReplyError(`unexpected reply to RATELIMIT.GCRA: ${describe(reply)}`);
  return gcraDecisionOf(fields as number[]);
}

function describe(reply: unknown): string {
  return JSON.stringify(reply, (_, value: unknown) => (typeof value === "bigint" ? String(value) : value)) ?? String(reply);
}
