// The token bucket (GCRA) as the core decides it (core/src/gcra.rs, docs/gcra.md
// "Exact arithmetic"), for the in-process fallback: a bucket of `burst`
// tokens that drains `count` tokens per `period` ms, kept in units of
// 1 / period of a token so that the drain is `count` units a millisecond,
// an integer. Every number the bounds allow is at most 9e15, below 2^53,
// so a double holds it exactly; the few products that can pass 2^53 are
// only compared against numbers below it (see levelAt), and divisions are
// done on exact multiples. Waits stay exact (units / count ms) until a
// reply rounds them.

/** The latest time a bucket holds: 2^42 - 1 ms, in the year 2109 (the core's LATEST). */
const LATEST = 2 ** 42 - 1;

/** A limit as the fallback decides it: `burst` (max_burst + 1) tokens, `count` per `period` ms. */
export interface GcraRule {
  burst: number;
  count: number;
  period: number;
}

/** What a key stores: the time of its last charge, that charge's period, the tokens it held then in 1 / period tokens (at least 1). */
export interface StoredBucket {
  at: number;
  period: number;
  level: number;
}

/** A wait of exactly `units / count` ms. */
export interface Wait {
  units: number;
  count: number;
}

/** The five fields of RATELIMIT.GCRA's reply, before units. */
export interface GcraVerdict {
  limited: boolean;
  /** max_burst + 1. */
  burst: number;
  /** Whole tokens a request could take now (after this one, if allowed). */
  remaining: number;
  /** The wait until this request fits; undefined if allowed, or if it never fits (more tokens than the bucket). */
  retry: Wait | undefined;
  /** The wait until the bucket is empty (after this request, if allowed). */
  reset: Wait;
  /** What an allowed request of at least one token stores, and when the key then expires. */
  charge: (StoredBucket & { expiresAt: number }) | undefined;
}

/** How a reply gives its waits: redis-cell's seconds (RATELIMIT.GCRA without MS) or milliseconds rounded up (with MS). */
export type GcraUnits = "seconds" | "ms";

/** The module's reply: [limited, max_burst + 1, remaining, retry_after (-1 if allowed or never), reset_after]. */
export type GcraReply = [number, number, number, number, number];

/** a / b rounded down, for integers below 2^53 (b > 0): exact, as a double division need not be. */
function floorDiv(a: number, b: number): number {
  return (a - (a % b)) / b;
}

/** a / b rounded up, for integers below 2^53 (b > 0). */
function ceilDiv(a: number, b: number): number {
  const rest = a % b;
  return (a - rest) / b + (rest > 0 ? 1 : 0);
}

/** Whole milliseconds, rounded down. */
function floorMs(wait: Wait): number {
  return floorDiv(wait.units, wait.count);
}

/** Whole milliseconds, rounded up: the first millisecond at which the wait is over. */
function ceilMs(wait: Wait): number {
  return ceilDiv(wait.units, wait.count);
}

/**
 * A wait as a reply gives it: with MS the milliseconds rounded up; else
 * redis-cell 0.5.0's seconds (the whole seconds, plus one if the rest
 * holds a whole millisecond), which is the whole milliseconds rounded up
 * to seconds.
 */
function inUnits(wait: Wait, units: GcraUnits): number {
  return units === "ms" ? ceilMs(wait) : ceilDiv(floorMs(wait), 1000);
}

/** The module's five integers for a verdict, its waits in `units` (core Decision::reply). */
export function gcraReply(verdict: GcraVerdict, units: GcraUnits): GcraReply {
  return [
    verdict.limited ? 1 : 0,
    verdict.burst,
    verdict.remaining,
    verdict.retry === undefined ? -1 : inUnits(verdict.retry, units),
    inUnits(verdict.reset, units),
  ];
}

/** The clock within the times a bucket holds, never earlier than the key's last charge: a clock stepping back frees nothing. */
function decisionTime(stored: StoredBucket | undefined, clock: number): number {
  const now = Math.min(Math.max(clock, 1), LATEST);
  return stored ? Math.max(now, stored.at) : now;
}

/**
 * What the bucket holds at `now` under `rule`, in 1 / rule.period tokens:
 * what it held after its last charge (the same units under the same
 * period, else its tokens, a partly drained one counted whole, in the new
 * period's units; at most a full bucket), less what drained since at the
 * rule's rate.
 */
function levelAt(stored: StoredBucket, now: number, rule: GcraRule): number {
  const held =
    stored.period === rule.period
      ? Math.min(stored.level, rule.burst * rule.period)
      : Math.min(ceilDiv(stored.level, stored.period), rule.burst) * rule.period;
  // May pass 2^53 (then inexact), but a product above 2^53 rounds to at least 2^53, above any level.
  const drained = (now - stored.at) * rule.count;
  return drained >= held ? 0 : held - drained;
}

/**
 * A request of `tokens` (0 asks without charging) under `rule` against
 * the key's bucket (undefined for a key that does not exist), at `clock`.
 */
export function decideGcra(stored: StoredBucket | undefined, clock: number, rule: GcraRule, tokens: number): GcraVerdict {
  const now = decisionTime(stored, clock);
  const level = stored ? levelAt(stored, now, rule) : 0;
  const room = rule.burst * rule.period - level;
  const wait = (units: number): Wait => ({ units, count: rule.count });
  // More tokens than a full bucket never fit.
  const need = tokens <= rule.burst ? tokens * rule.period : undefined;
  if (need !== undefined && need <= room) {
    const after = level + need;
    return {
      limited: false,
      burst: rule.burst,
      remaining: floorDiv(room - need, rule.period),
      retry: undefined,
      reset: wait(after),
      charge: need > 0 ? { at: now, period: rule.period, level: after, expiresAt: now + ceilDiv(after, rule.count) } : undefined,
    };
  }
  return {
    limited: true,
    burst: rule.burst,
    remaining: floorDiv(room, rule.period),
    retry: need === undefined ? undefined : wait(need - room),
    reset: wait(level),
    charge: undefined,
  };
}
