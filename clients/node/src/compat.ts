// The shapes of the two limiters Node users run today, so switching is a
// one-line change: an express-rate-limit Store, and rate-limiter-flexible's
// consume / reward / get / delete. README "Coming from" says what differs.

import type { RateLimiter, Result } from "./limiter.js";
import type { Limit } from "./limits.js";

/** What express-rate-limit expects back from Store.increment and Store.get. */
export interface ClientRateLimitInfo {
  totalHits: number;
  resetTime: Date | undefined;
}

/**
 * An express-rate-limit (7, 8) Store: `rateLimit({ windowMs, limit, store:
 * new RateLimitStore(limiter) })`. Each increment is one exact sliding-window
 * CHECK; a refused request is not recorded (totalHits reads limit + 1).
 */
export class RateLimitStore {
  /** express-rate-limit reads this: the counts live in Redis, shared by every process. */
  readonly localKeys = false;
  private limit: Limit | undefined;

  constructor(
    private readonly limiter: RateLimiter,
    private readonly fixed: { windowMs?: number; max?: number } = {},
  ) {}

  /** Called by express-rate-limit with its options; `limit` must be a number here (or pass `max` to the constructor). */
  init(options: { windowMs: number; limit?: unknown; max?: unknown }): void {
    const max = this.fixed.max ?? (typeof options.limit === "number" ? options.limit : options.max);
    if (typeof max !== "number") {
      throw new TypeError("RateLimitStore: express-rate-limit's limit is a function; pass { max } to new RateLimitStore(limiter, { max })");
    }
    this.limit = { windowMs: this.fixed.windowMs ?? options.windowMs, max };
  }

  async increment(key: string): Promise<ClientRateLimitInfo> {
    return this.info(await this.limiter.check(key, this.configured()));
  }

  async get(key: string): Promise<ClientRateLimitInfo> {
    return this.info(await this.limiter.peek(key, this.configured()));
  }

  async decrement(key: string): Promise<void> {
    await this.limiter.undo(key);
  }

  async resetKey(key: string): Promise<void> {
    await this.limiter.delete(key);
  }

  private configured(): Limit {
    if (!this.limit) throw new Error("RateLimitStore: init() has not been called (express-rate-limit calls it)");
    return this.limit;
  }

  private info(result: Result): ClientRateLimitInfo {
    const max = this.configured().max;
    const totalHits = result.allowed ? max - result.remaining : max + 1;
    const waitMs = result.allowed ? result.resetAfterMs : result.retryAfterMs;
    return { totalHits, resetTime: new Date(Date.now() + waitMs) };
  }
}

/** rate-limiter-flexible's RateLimiterRes fields. */
export interface FlexibleResult {
  remainingPoints: number;
  msBeforeNext: number;
  consumedPoints: number;
  isFirstInDuration: boolean;
}

/** rate-limiter-flexible's options that this package keeps. */
export interface FlexibleOptions {
  points: number;
  /** Seconds. */
  duration: number;
  keyPrefix?: string;
  /** Seconds a key is blocked once a consume is refused (sent as BLOCK; the block is stored with the key, atomically). */
  blockDuration?: number;
}

/**
 * rate-limiter-flexible's API over an exact sliding window: `points` per
 * `duration` seconds. consume() resolves, or rejects with a FlexibleResult
 * when refused (an Error when Redis refuses the call itself).
 */
export class FlexibleLimiter {
  private readonly limit: Limit;
  private readonly keyPrefix: string;
  private readonly blockMs: number | undefined;

  constructor(
    private readonly limiter: RateLimiter,
    options: FlexibleOptions,
  ) {
    this.limit = { windowMs: options.duration * 1000, max: options.points };
    this.keyPrefix = options.keyPrefix ?? "rlflx";
    // rate-limiter-flexible's blockDuration 0 means no block.
    this.blockMs = options.blockDuration ? options.blockDuration * 1000 : undefined;
  }

  async consume(key: string, points = 1): Promise<FlexibleResult> {
    const options = this.blockMs === undefined ? { cost: points } : { cost: points, blockMs: this.blockMs };
    const result = await this.limiter.check(this.keyOf(key), this.limit, options);
    const answer = this.flexible(result, points);
    if (!result.allowed) throw answer;
    return answer;
  }

  /** The state without consuming; null when the key has nothing counted. */
  async get(key: string): Promise<FlexibleResult | null> {
    const result = await this.limiter.peek(this.keyOf(key), this.limit);
    return result.remaining === this.limit.max ? null : this.flexible(result, 0);
  }

  /** Gives `points` back (the newest units counted). */
  async reward(key: string, points = 1): Promise<number> {
    return this.limiter.undo(this.keyOf(key), { cost: points });
  }

  /** Lifts a block, keeping what was consumed; true if the key was blocked. */
  async unblock(key: string): Promise<boolean> {
    return this.limiter.unblock(this.keyOf(key));
  }

  /** Forgets the key: what was consumed and its block. */
  async delete(key: string): Promise<boolean> {
    return this.limiter.delete(this.keyOf(key));
  }

  private keyOf(key: string): string {
    return `${this.keyPrefix}:${key}`;
  }

  private flexible(result: Result, points: number): FlexibleResult {
    const consumedPoints = this.limit.max - result.remaining;
    return {
      remainingPoints: result.remaining,
      msBeforeNext: result.allowed ? result.resetAfterMs : result.retryAfterMs,
      consumedPoints,
      isFirstInDuration: result.allowed && consumedPoints === points,
    };
  }
}
